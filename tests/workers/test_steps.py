"""The step runner with real processes: output, exit codes, a scrubbed environment, and group kills."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from workers.steps import KILL_GRACE, Outcome, run, scrubbed_environment

CANARY = "worker-secret-canary-4b7e21"


class Step:
    """One finished step: its outcome, the lines it printed, and the pids it reported."""

    def __init__(self, outcome: Outcome, lines: list[str], elapsed: float) -> None:
        self.outcome, self.lines, self.elapsed = outcome, lines, elapsed

    def pid(self, label: str) -> int:
        """The pid a step printed as ``<label> <pid>``."""
        for line in self.lines:
            if line.startswith(f"{label} "):
                return int(line.split()[1])
        raise AssertionError(f"the step never printed {label!r}: {self.lines}")


@pytest.fixture
def step(tmp_path: Path) -> Iterator[Callable[..., Step]]:
    started: list[Step] = []

    def start(
        command: str,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_line: Callable[[str], None] | None = None,
    ) -> Step:
        lines: list[str] = []

        def collect(line: str) -> None:
            lines.append(line)
            if on_line:
                on_line(line)

        begin = time.monotonic()
        outcome = run(
            command,
            tmp_path,
            env if env is not None else scrubbed_environment(os.environ, {}),
            time.time() + timeout,
            collect,
            should_stop,
        )
        result = Step(outcome, lines, time.monotonic() - begin)
        started.append(result)
        return result

    yield start
    # Leave nothing behind even when an assertion failed: only groups our own steps created.
    for result in started:
        for line in result.lines:
            if line.startswith("group "):
                _kill_group(int(line.split()[1]))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def living_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies, found by scanning /proc (no psutil)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            found.append(int(entry.name))
    return found


def assert_group_gone(pgid: int, *pids: int) -> None:
    # SIGKILL is asynchronous: give the kernel a moment to finish the deaths it was asked for.
    deadline = time.monotonic() + 2.0
    while living_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert living_members(pgid) == []
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


# -- output and exit codes --------------------------------------------------------


def test_stdout_and_stderr_lines_arrive_in_order(step: Callable[..., Step]) -> None:
    result = step("echo one; echo two >&2; echo three; echo four >&2; printf 'no newline at end'")
    assert result.lines == ["one", "two", "three", "four", "no newline at end"]
    assert result.outcome.ok and result.outcome.exit_code == 0


def test_crlf_and_invalid_utf8_are_readable(step: Callable[..., Step]) -> None:
    result = step(r"printf 'windows\r\nbad \377 byte\nunicode ✓\n'")
    assert result.lines == ["windows", "bad \ufffd byte", "unicode ✓"]


@pytest.mark.parametrize(
    ("command", "code"), [("true", 0), ("exit 3", 3), ("false", 1), ("kill -KILL $$", -9)]
)
def test_exit_codes(step: Callable[..., Step], command: str, code: int) -> None:
    outcome = step(command).outcome
    assert outcome.exit_code == code
    assert outcome.ok is (code == 0)
    assert not outcome.timed_out and not outcome.canceled


def test_missing_command_fails_with_a_message(step: Callable[..., Step]) -> None:
    result = step("no-such-command-pushdeploy --version")
    assert result.outcome.exit_code == 127
    assert any("no-such-command-pushdeploy" in line and "not found" in line for line in result.lines)


def test_step_runs_in_its_directory_without_stdin(step: Callable[..., Step], tmp_path: Path) -> None:
    result = step("pwd; cat; echo after-cat", timeout=5)
    assert result.lines == [str(tmp_path), "after-cat"]
    assert result.elapsed < 3


# -- environment ------------------------------------------------------------------


def test_scrubbed_environment_passes_only_the_allowlist_and_extras(step: Callable[..., Step]) -> None:
    base = {
        "PATH": os.environ["PATH"],
        "HOME": "/home/deploy",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "LC_TIME": "C",
        "TZ": "UTC",
        "GITLAB_TOKEN": CANARY,
        "PUSHDEPLOY_ADMIN_TOKEN": CANARY,
        "AWS_SECRET_ACCESS_KEY": CANARY,
        "SSH_AUTH_SOCK": "/tmp/agent.sock",
        "PYTHONPATH": "/tmp/evil",
        "LD_PRELOAD": "/tmp/evil.so",
    }
    extra = {"APP_ENV": "production", "PUSHDEPLOY_SHA": "a" * 40}
    # /proc/$$/environ is what the kernel handed the step, before the shell adds anything.
    result = step("tr '\\0' '\\n' < /proc/$$/environ", env=scrubbed_environment(base, extra))
    seen = dict(line.split("=", 1) for line in result.lines)
    assert seen == {
        "PATH": os.environ["PATH"],
        "HOME": "/home/deploy",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "LC_TIME": "C",
        "TZ": "UTC",
        "APP_ENV": "production",
        "PUSHDEPLOY_SHA": "a" * 40,
    }
    assert not any(CANARY in line for line in result.lines)


def test_canary_in_the_worker_environment_is_invisible_to_steps(
    step: Callable[..., Step], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITLAB_TOKEN", CANARY)
    result = step('env; echo "token=${GITLAB_TOKEN:-unset}"', env=scrubbed_environment(os.environ, {}))
    assert "token=unset" in result.lines
    assert not any(CANARY in line for line in result.lines)


def test_a_default_path_is_supplied_and_extras_win(step: Callable[..., Step]) -> None:
    env = scrubbed_environment({"HOME": "/home/deploy"}, {"HOME": "/srv/app"})
    result = step('echo "$PATH"; echo "$HOME"; command -v sh', env=env)
    assert result.lines[:2] == ["/usr/local/bin:/usr/bin:/bin", "/srv/app"]
    assert result.outcome.ok


# -- deadline and cancel kill the whole process group -------------------------------


def test_deadline_kills_the_step_and_a_background_grandchild(step: Callable[..., Step]) -> None:
    result = step("echo group $$; sleep 600 & echo grandchild $!; sleep 600", timeout=0.5)
    outcome = result.outcome
    assert outcome.timed_out and not outcome.ok and not outcome.canceled
    assert outcome.exit_code is not None and outcome.exit_code < 0
    assert result.elapsed < KILL_GRACE  # everyone obeyed TERM: no waiting for the KILL
    assert_group_gone(result.pid("group"), result.pid("grandchild"))


def test_deadline_kills_a_grandchild_that_ignores_term(step: Callable[..., Step]) -> None:
    command = (
        "echo group $$; "
        "sh -c 'trap \"\" TERM; echo stubborn $$; exec sleep 600' & "
        "sleep 600 & echo sleeper $!; "
        "trap '' TERM; sleep 600"
    )
    result = step(command, timeout=0.5)
    assert result.outcome.timed_out
    assert KILL_GRACE <= result.elapsed < KILL_GRACE + 5  # TERM, the grace, then KILL
    assert_group_gone(result.pid("group"), result.pid("stubborn"), result.pid("sleeper"))


def test_should_stop_cancels_and_kills_the_group(step: Callable[..., Step]) -> None:
    ready = threading.Event()
    result = step(
        "echo group $$; sleep 600 & echo grandchild $!; echo ready; sleep 600",
        should_stop=ready.is_set,
        on_line=lambda line: ready.set() if line == "ready" else None,
    )
    outcome = result.outcome
    assert outcome.canceled and not outcome.timed_out and not outcome.ok
    assert result.elapsed < KILL_GRACE
    assert result.lines[-1] == "ready"
    assert_group_gone(result.pid("group"), result.pid("grandchild"))


def test_a_failing_log_writer_does_not_leave_the_step_running(tmp_path: Path) -> None:
    pids: dict[str, int] = {}

    def write(line: str) -> None:
        label, pid = line.split()
        pids[label] = int(pid)
        if label == "grandchild":
            raise ConnectionError("Redis went away")

    try:
        with pytest.raises(ConnectionError):
            run(
                "echo group $$; sleep 600 & echo grandchild $!; sleep 600",
                tmp_path,
                scrubbed_environment(os.environ, {}),
                time.time() + 30,
                write,
            )
        assert_group_gone(pids["group"], pids["grandchild"])
    finally:
        _kill_group(pids["group"])


def test_a_step_that_finishes_before_its_deadline_is_not_timed_out(step: Callable[..., Step]) -> None:
    outcome = step("sleep 0.2; echo done", timeout=5).outcome
    assert outcome.ok and not outcome.timed_out and 0.2 <= outcome.duration < 3


def test_a_background_daemon_does_not_hold_the_step_open(step: Callable[..., Step]) -> None:
    result = step("echo group $$; sleep 600 & echo daemon $!; (sleep 0.2; echo late) & echo early")
    assert result.outcome.ok
    assert result.elapsed < 5
    assert result.lines[-2:] == ["early", "late"]  # output written just after the shell exits is kept
    _kill_group(result.pid("group"))


# -- large output --------------------------------------------------------------------


def test_long_line_without_newline_is_delivered_whole_in_pieces(step: Callable[..., Step]) -> None:
    result = step("head -c 300000 /dev/zero | tr '\\0' x; echo; echo next")
    assert result.outcome.ok
    assert result.lines[-1] == "next"
    pieces = result.lines[:-1]
    assert "".join(pieces) == "x" * 300_000
    assert len(pieces) > 1 and max(len(p) for p in pieces) <= 2 * 65536


def test_twenty_megabytes_of_output_completes_without_deadlock(tmp_path: Path) -> None:
    count = 0
    last = ""

    def tally(line: str) -> None:
        nonlocal count, last
        count += 1
        last = line

    line = "0123456789" * 10  # 100 bytes + newline
    result = run(
        f"yes {line} | head -n 200000; yes {line} | head -n 10000 >&2; echo end",
        tmp_path,
        scrubbed_environment(os.environ, {}),
        time.time() + 50,
        tally,
    )
    assert result.ok and not result.timed_out
    assert count == 210_001
    assert last == "end"
    assert result.duration < 30
