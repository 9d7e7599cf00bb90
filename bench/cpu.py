"""How much of the machine something else used while we measured.

This machine may be shared (other sessions' test runs start their own servers): a round that
another process slowed down is not a measurement of ours. :class:`CpuMeter` reads ``/proc`` to
tell the CPU time of the processes under test (and of Redis and this harness) from everybody
else's, so a noisy round can be flagged and run again instead of silently skewing a median.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

NOISY = 0.10
"""A round during which other processes used more than this share of all cores is run again."""


def _machine() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9])
    # Interrupt time is left out of "busy": loopback traffic we cause is handled there, and no
    # process is charged for it. Steal (another VM on the host) counts as someone else's.
    return user + nice + system + steal, user + nice + system + idle + iowait + irq + softirq + steal


def wait_for_quiet(limit: float = 0.10, window: float = 1.0, timeout: float = 30.0) -> float:
    """Wait until the whole machine is at most ``limit`` busy over ``window``; returns the wait.

    A receiver that answers before its work is done (adnanh/webhook starts its command after the
    202) leaves that work running past its round: the next round must not start under it.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        busy, total = _machine()
        time.sleep(window)
        busy2, total2 = _machine()
        if (busy2 - busy) / max(1, total2 - total) <= limit:
            break
    return round(time.monotonic() - started, 1)


def _process_jiffies(pgids: set[int], pids: set[int]) -> int:
    """utime + stime (+ reaped children's) of every process in ``pgids`` or ``pids``."""
    found = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = text.rsplit(")", 1)[1].split()
        pid, pgid = int(entry.name), int(fields[2])
        if pgid in pgids or pid in pids:
            found += sum(int(x) for x in fields[11:15])
    return found


@dataclass
class CpuShare:
    ours: float  # share of all cores used by the processes under test, Redis and the harness
    foreign: float  # share used by everything else

    @property
    def noisy(self) -> bool:
        return self.foreign > NOISY


class CpuMeter:
    """``start()`` … ``stop()`` around a measurement; processes are named by group and pid."""

    def __init__(self, pgids: Iterable[int], pids: Iterable[int] = ()) -> None:
        self.pgids = set(pgids)
        self.pids = {os.getpid(), *pids}
        self._start = (0, 0, 0)

    def start(self) -> None:
        busy, total = _machine()
        self._start = (busy, total, _process_jiffies(self.pgids, self.pids))

    def stop(self) -> CpuShare:
        busy, total = _machine()
        ours = _process_jiffies(self.pgids, self.pids)
        spent = max(1, total - self._start[1])
        ours_delta = max(0, ours - self._start[2])
        foreign = max(0, busy - self._start[0] - ours_delta)
        return CpuShare(round(ours_delta / spent, 3), round(foreign / spent, 3))
