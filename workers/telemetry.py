"""Engine measurements kept in Redis, so ``/metrics`` on any web node sees every worker on every host.

Workers add to counters and histogram buckets with ``HINCRBY``/``HINCRBYFLOAT``; the web tier's
collector reads them at scrape time. In-process prometheus_client metrics would be per worker
process and per host, and a scrape of one web node would miss the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from redis import Redis
from redis.client import Pipeline

from workers import schema

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""Seconds: from a no-op step (tens of ms) to a long build (an hour)."""

class Phase(StrEnum):
    """The parts of a deployment whose durations are measured (``pushdeploy_phase_duration_seconds``)."""

    FETCH = "fetch"
    EXPORT = "export"
    BUILD = "build"
    SHIP = "ship"
    DEPLOY = "deploy"
    HEALTH_CHECK = "health_check"
    ROLLBACK = "rollback"
    TOTAL = "total"


PHASES = tuple(Phase)

histogram_key = schema.histogram
counter_key = schema.counter


def observe(pipe: Pipeline | Redis, name: str, label: str, seconds: float) -> None:
    """Add one observation to a cumulative histogram (Prometheus ``le`` buckets)."""
    target = histogram_key(name, label)
    for bound in BUCKETS:
        if seconds <= bound:
            pipe.hincrby(target, f"le:{bound}", 1)
    pipe.hincrby(target, "count", 1)
    pipe.hincrbyfloat(target, "sum", max(0.0, seconds))


def count(pipe: Pipeline | Redis, name: str, label: str, amount: int = 1) -> None:
    pipe.hincrby(counter_key(name), label, amount)


@dataclass(frozen=True)
class Histogram:
    label: str
    buckets: list[tuple[float, int]]  # cumulative counts per upper bound
    count: int
    total: float


def histograms(redis: Redis, name: str, labels: Iterable[str]) -> list[Histogram]:
    pipe = redis.pipeline(transaction=False)
    wanted = list(labels)
    for label in wanted:
        pipe.hgetall(histogram_key(name, label))
    found = []
    for label, raw in zip(wanted, pipe.execute(), strict=True):
        data = {k.decode(): v.decode() for k, v in raw.items()}
        found.append(
            Histogram(
                label,
                [(b, int(data.get(f"le:{b}", 0))) for b in BUCKETS],
                int(data.get("count", 0)),
                float(data.get("sum", 0.0)),
            )
        )
    return found


def counters(redis: Redis, name: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(counter_key(name)).items()}
