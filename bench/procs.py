"""Child processes for a benchmark: each in its own process group, all stopped together.

Everything a scenario starts goes through :class:`Processes`, so a ``finally`` can stop every
server and worker (and their children, such as RQ work-horses) however the scenario ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE = 10.0


class HarnessError(Exception):
    """A benchmark could not be set up or did not finish; the message says which part and why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without any pushdeploy or Redis override, so only the bench config counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHDEPLOY_") and k != "REDIS_URL"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Processes:
    """Starts children in new sessions (process groups) and stops them all: TERM, then KILL."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as out:
            child = subprocess.Popen(list(argv), env=dict(env), cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.children[name] = child
        return child

    @property
    def pgids(self) -> set[int]:
        """Each child leads its own process group (its pid), which its children inherit."""
        return {child.pid for child in self.children.values()}

    def check(self) -> None:
        """Fail fast, naming the log, when a child died instead of waiting out a timeout."""
        for name, child in self.children.items():
            if child.poll() is not None:
                raise HarnessError(f"{name} exited with {child.returncode}; see {self.logs / f'{name}.log'}")

    def stop(self, name: str) -> None:
        child = self.children.pop(name, None)
        if child is not None:
            _stop_group([child])

    def stop_all(self) -> None:
        children, self.children = list(self.children.values()), {}
        _stop_group(children)


def _stop_group(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(child, signal.SIGKILL)
            child.wait()
        # A worker's work-horse or a step may outlive its leader: sweep the group once more.
        _signal_group(child, signal.SIGKILL)


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05,
               check: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        if predicate():
            return
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.RequestException:
        return False
