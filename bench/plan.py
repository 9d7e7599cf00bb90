"""How much of each scenario a run does: the full form for docs/benchmarks.md, the smoke form for CI."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RepoShape:
    label: str
    files: int
    depth: int  # commits of history already in the warm mirror


@dataclass(frozen=True)
class Plan:
    name: str
    gunicorn_workers: int
    wrk_threads: int
    wrk_connections: int
    accept_warmup: float
    accept_duration: float
    accept_rounds: int
    noisy_retries: int  # extra tries of an accept round that other processes disturbed
    max_rps: int  # signed deliveries made per second of wrk run: more than any target serves
    pushes: int  # push → running
    overhead_pushes: int
    overhead_shapes: tuple[RepoShape, ...]
    burst_environments: int
    burst_deliveries: int
    burst_workers: int
    burst_timeout: float
    settle: float  # seconds between sequential pushes, so the worker is idle again
    breakdown_calls: int
    growth_environments: int  # one project, one branch and environment each
    growth_deliveries: int
    growth_keep: int  # server.keep_deployments
    growth_workers: int
    growth_timeout: float  # for every deployment to end once all deliveries are in
    growth_api_requests: int  # one environment's list, and a tenth as many of every environment's
    growth_page_requests: int
    growth_scrapes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Plan(
    name="full",
    gunicorn_workers=3,
    wrk_threads=2,
    wrk_connections=32,
    accept_warmup=2.0,
    accept_duration=10.0,
    accept_rounds=3,
    noisy_retries=3,
    max_rps=8000,
    pushes=100,
    overhead_pushes=10,
    overhead_shapes=(
        RepoShape("1 file", 1, 10),
        RepoShape("100 files", 100, 10),
        RepoShape("10,000 files", 10_000, 10),
        RepoShape("100 files, 1,000 commits", 100, 1_000),
        RepoShape("100 files, 10,000 commits", 100, 10_000),
    ),
    burst_environments=50,
    burst_deliveries=1000,
    burst_workers=2,
    burst_timeout=300.0,
    settle=0.1,
    breakdown_calls=300,
    growth_environments=100,
    growth_deliveries=20_000,
    growth_keep=100,
    growth_workers=2,
    growth_timeout=1800.0,
    growth_api_requests=200,
    growth_page_requests=100,
    growth_scrapes=50,
)

SMOKE = Plan(
    name="smoke",
    gunicorn_workers=2,
    wrk_threads=1,
    wrk_connections=4,
    accept_warmup=0.0,
    accept_duration=1.0,
    accept_rounds=1,
    noisy_retries=0,
    max_rps=8000,
    pushes=3,
    overhead_pushes=2,
    overhead_shapes=(RepoShape("1 file", 1, 3), RepoShape("100 files", 100, 3)),
    burst_environments=3,
    burst_deliveries=12,
    burst_workers=1,
    burst_timeout=60.0,
    settle=0.05,
    breakdown_calls=50,
    growth_environments=5,
    growth_deliveries=200,
    growth_keep=10,
    growth_workers=1,
    growth_timeout=120.0,
    growth_api_requests=20,
    growth_page_requests=10,
    growth_scrapes=10,
)
