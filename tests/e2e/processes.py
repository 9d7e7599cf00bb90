"""Looking at real processes through /proc: groups, children, memory, and strays left behind.

Shared by the end-to-end tests (tests/e2e) and the fault tests (tests/faults).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for pid in pids():
        fields = _stat_fields(pid)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(pid)
    return members


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (zombies included)."""
    found = []
    for candidate in pids():
        fields = _stat_fields(candidate)
        if fields and int(fields[1]) == pid:
            found.append(candidate)
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree, at one moment."""
    parent_of: dict[int, int] = {}
    for candidate in pids():
        fields = _stat_fields(candidate)
        if fields and fields[0] != "Z":
            parent_of[candidate] = int(fields[1])
    below: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parent_of.items():
            if parent == current and child not in below:
                below.append(child)
                frontier.append(child)
    return below


def tree_rss(root: int) -> int:
    """Resident memory of a process and its Python descendants (not the step's own commands)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"python" not in cmdline.split(b"\0")[0]:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(entry.name) == root or int(fields.get("PPid", "0").strip()) == root:
            total += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    return total


def cwd_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def environ_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def cmdline_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def strays(root: Path, marker: bytes | None = None) -> list[int]:
    """Our own leftovers: processes working under ``root``, or whose environment holds ``marker``.

    Steps run in their own sessions and RQ work-horses in their own groups, so stopping a stack's
    process groups can leave them behind; they are recognised by their working directory (a step
    runs in a release under the test's temporary directory) or by an environment variable that
    only this test's processes carry (``PUSHDEPLOY_CONFIG=<the test's config>``).
    """
    prefix = str(root.resolve())
    me = os.getpid()
    found = []
    for pid in pids():
        if pid == me:
            continue
        fields = _stat_fields(pid)
        if not fields or fields[0] == "Z":
            continue
        if cwd_of(pid).startswith(prefix) or (marker is not None and marker in environ_of(pid)):
            found.append(pid)
    return found


def kill_strays(root: Path, marker: bytes | None = None, attempts: int = 5) -> list[int]:
    """SIGKILL the processes :func:`strays` finds, by pid; returns those that were killed."""
    killed: list[int] = []
    for _ in range(attempts):
        found = strays(root, marker)
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.2)
    return killed
