"""The one subprocess runner: operator-written shell commands in their own process group.

Each step gets a new session so a timeout or a cancel can signal the whole group, grandchildren
included; ``subprocess.run(timeout=…)`` would only kill the shell and leave its children running.
With ``run_as`` a root worker drops to that user (its primary group, no supplementary groups).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from workers.errors import RunStopped

KILL_GRACE = 5.0
"""Seconds between TERM and KILL, so a step can clean up before it is killed."""

DRAIN_AFTER_EXIT = 1.0
"""Seconds to keep reading once the shell exits, for output a background child still writes."""

PASSED_VARIABLES = ("PATH", "HOME", "LANG", "TZ")
"""The worker's own variables a step may see; ``LC_*`` is added too. Nothing else leaks in."""

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class RunAsError(RunStopped):
    """Steps cannot run as the configured user from this worker."""


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None
    duration: float
    timed_out: bool = False
    canceled: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.canceled


def scrubbed_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """An allowlist of the worker's variables, then the project's ``env`` and pushdeploy's own."""
    env = {k: v for k, v in base.items() if k in PASSED_VARIABLES or k.startswith("LC_")}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra)
    return env


def switch_to(user: str | None) -> pwd.struct_passwd | None:
    """The account a step must switch to, or None when it runs as the worker itself.

    Raises:
        RunAsError: the user does not exist, or the worker is not root and is someone else.
    """
    if user is None:
        return None
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise RunAsError(f"run_as: no user {user!r} on this host") from None
    if os.geteuid() == 0:
        return account
    if account.pw_uid == os.geteuid():
        return None  # already that user: setgroups() would need root for nothing
    raise RunAsError(f"run_as needs the worker to run as root (it runs as uid {os.geteuid()})")


def hand_over(path: Path, user: str | None) -> None:
    """Make a release directory the step user's own, so its build can write there."""
    account = switch_to(user)
    if account is None:
        return
    os.chown(path, account.pw_uid, account.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            # Never follow a symlink from the repository: it may point anywhere on the host.
            os.chown(os.path.join(root, name), account.pw_uid, account.pw_gid, follow_symlinks=False)


def run(
    command: str,
    cwd: Path,
    env: Mapping[str, str],
    deadline: float,
    on_line: Callable[[str], None],
    should_stop: Callable[[], bool] = lambda: False,
    on_start: Callable[[int], None] = lambda _pgid: None,
    on_tick: Callable[[], None] = lambda: None,
    user: str | None = None,
) -> Outcome:
    """Run ``command`` with ``/bin/sh -c`` until it exits, the deadline passes, or ``should_stop``.

    Output (stdout and stderr merged) is passed to ``on_line`` a line at a time. With ``user``
    the step runs as that user, with ``HOME``, ``USER`` and ``LOGNAME`` set to its account.

    Raises:
        RunAsError: ``user`` cannot be switched to (see :func:`switch_to`).
    """
    account = switch_to(user)
    env = dict(env)
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    started = time.monotonic()
    process = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
        user=account.pw_uid if account else None,
        group=account.pw_gid if account else None,
        extra_groups=[] if account else None,
    )
    assert process.stdout is not None
    on_start(process.pid)  # the process group id, so a dead worker's step can still be ended
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    pending = b""
    timed_out = canceled = False
    exited_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and process.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_AFTER_EXIT:
                break
            if exited_at is None and time.time() >= deadline:
                timed_out = True
                break
            on_tick()  # at least every 0.2 s: lets the caller flush buffered output while a step is quiet
            if exited_at is None and should_stop():
                canceled = True
                break
            if not selector.select(timeout=0.2):
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                if exited_at is None:
                    process.wait()
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                on_line(raw.decode("utf-8", "replace").rstrip("\r"))
            if len(pending) > 65536:  # a very long line without a newline: pass it on in pieces
                on_line(pending.decode("utf-8", "replace"))
                pending = b""
    except BaseException:
        kill_group(process)  # on_line or should_stop failed (a Redis outage): never leave the step running
        raise
    finally:
        selector.close()
        if timed_out or canceled:
            kill_group(process)
        if pending:
            on_line(pending.decode("utf-8", "replace"))
        process.stdout.close()
    exit_code = process.wait()
    return Outcome(exit_code, time.monotonic() - started, timed_out=timed_out, canceled=canceled)


def kill_group(process: subprocess.Popen[bytes], grace: float = KILL_GRACE) -> None:
    """TERM the step's whole process group, then KILL whatever is left after ``grace`` seconds."""
    pgid = process.pid  # start_new_session makes the shell its group's leader
    _signal_group(pgid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if process.poll() is not None and not group_alive(pgid):
            return
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)
    process.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
