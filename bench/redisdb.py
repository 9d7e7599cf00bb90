"""The benchmark's own Redis database: never the tests' (15), flushed before and after each scenario."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from redis import Redis

from bench.procs import HarnessError

DEFAULT_URL = "redis://127.0.0.1:6379/9"
TEST_DB = 15


def bench_url(explicit: str | None) -> str:
    return explicit or os.environ.get("PUSHDEPLOY_BENCH_REDIS_URL") or DEFAULT_URL


def connect(url: str) -> Redis:
    """A client for ``url`` after checking it is a loopback Redis and not the tests' database."""
    parts = urlsplit(url)
    db = int((parts.path or "/0").lstrip("/") or 0)
    if db == TEST_DB:
        raise HarnessError("Redis database 15 belongs to the test suite; give the benchmark another one")
    if parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise HarnessError(f"the benchmark only uses a Redis on this machine, not {parts.hostname}")
    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except OSError as exc:
        raise HarnessError(f"no Redis answers at {url}: {exc}") from None
    except Exception as exc:  # redis' ConnectionError is no OSError
        raise HarnessError(f"no Redis answers at {url}: {exc}") from None
    return client


def server_version(client: Redis) -> str:
    return str(client.info("server").get("redis_version", "unknown"))


def server_pid(client: Redis) -> int:
    """Redis' own CPU belongs to the measurement (pushdeploy's accept path uses it)."""
    return int(client.info("server").get("process_id", 0))
