"""wrk, driven by ``wrk.lua``: bounded loopback load, its summary read back as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.payloads import WrkInputs
from bench.procs import HarnessError

SCRIPT = Path(__file__).with_name("wrk.lua")


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    binary = wrk_binary()
    if binary is None:
        return "not installed"
    # wrk prints its version only in its usage text, and exits 1.
    text = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return text.splitlines()[0].split(" Copyright")[0] if text else "unknown"


@dataclass
class LoadResult:
    """One wrk run: what it sent, how fast it was answered, and with which statuses."""

    requests: int
    duration_s: float
    rps: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    errors: dict[str, int]
    wrapped: int
    connections: int
    threads: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_wrk(url: str, inputs: WrkInputs, duration: float, connections: int, threads: int,
            timeout: float = 5.0) -> LoadResult:
    """Load ``url`` for ``duration`` seconds; every request is a new, validly signed delivery."""
    binary = wrk_binary()
    if binary is None:
        raise HarnessError("wrk is not installed")
    host = urlsplit(url).hostname
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise HarnessError(f"refusing to load {url}: benchmarks only target loopback")
    argv = [binary, "--threads", str(threads), "--connections", str(connections),
            "--duration", f"{max(1, round(duration))}s", "--timeout", f"{timeout:.0f}s",
            "--script", str(SCRIPT), url, "--",
            str(inputs.deliveries), str(inputs.body), str(inputs.headers), str(threads)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise HarnessError(f"wrk failed (exit {done.returncode}): {(done.stderr or done.stdout)[-800:]}")
    raw = json.loads(line.removeprefix("BENCH_RESULT "))
    seconds = raw["duration_us"] / 1e6
    latency = {name: round(value / 1000, 3) for name, value in raw["latency_us"].items()}
    return LoadResult(
        requests=raw["requests"],
        duration_s=round(seconds, 3),
        rps=round(raw["requests"] / seconds, 1) if seconds else 0.0,
        latency_ms=latency,
        statuses=raw["statuses"],
        errors=raw["errors"],
        wrapped=raw["wrapped"],
        connections=connections,
        threads=threads,
    )
