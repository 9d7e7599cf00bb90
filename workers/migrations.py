"""Bring Redis to the layout this release writes, once, on start; refuse a layout newer than it.

Every web process and worker calls :func:`ensure` before it reads or writes anything. The first
to find an older layout migrates it under a Redis lock while the others wait, and writes the new
version last, so a migration that dies half-way is simply run again (each step is idempotent).
Records, logs, statuses, lanes and queued RQ jobs keep their keys and formats across version 2:
only delivery ids and the per-state counts are new, so deployments in flight carry on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

from workers import defaults, schema
from workers.deployments import Deployment, State
from workers.errors import EngineError

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 600
"""Seconds a migrating process holds the lock at most: a crashed one frees it for the next."""
WAIT_FOR_LOCK = 900
"""Seconds a starting process waits for another one's migration before it gives up."""
RETRY_INTERVAL = 2.0
"""Seconds between tries of a web process that started while Redis was down."""


class SchemaError(EngineError):
    """Redis holds a layout this release cannot use; the message says what to do."""


def version(redis: Redis) -> int:
    """The layout version in Redis: 0 for an empty database, 1 for data written before versions."""
    raw = redis.get(schema.VERSION_KEY)
    if raw is not None:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if not text.isdigit():
            raise SchemaError(f"Redis key {schema.VERSION_KEY} holds {text[:20]!r}, not a layout version")
        return int(text)
    return 1 if next(iter(redis.scan_iter(match=f"{schema.PREFIX}:*", count=1000)), None) else 0


def ensure(redis: Redis) -> int:
    """Migrate to :data:`schema.VERSION` if needed; returns the version found before.

    Raises:
        SchemaError: the layout is newer than this release (it would corrupt it), or another
            process's migration did not finish in time.
        RedisError: Redis cannot be reached.
    """
    found = version(redis)
    if found == schema.VERSION:
        return found
    _refuse_newer(found)
    lock = redis.lock(schema.MIGRATION_LOCK, timeout=LOCK_TIMEOUT, blocking_timeout=WAIT_FOR_LOCK)
    if not lock.acquire():
        raise SchemaError(
            f"another pushdeploy process has been migrating Redis for over {WAIT_FOR_LOCK} s; "
            f"look at its log, or delete {schema.MIGRATION_LOCK} if it died"
        )
    try:
        found = version(redis)  # someone else may have done it while we waited
        _refuse_newer(found)
        for step in range(max(found, 1), schema.VERSION):
            started = time.monotonic()
            MIGRATIONS[step](redis)
            log.warning(
                "Redis layout migrated from version %d to %d in %.2f s",
                step,
                step + 1,
                time.monotonic() - started,
            )
        redis.set(schema.VERSION_KEY, str(schema.VERSION))
    finally:
        lock.release()
    return found


def ensure_later(redis: Redis, on_refused: Callable[[SchemaError], None]) -> threading.Thread:
    """For a process that started while Redis was down: :func:`ensure` as soon as Redis answers."""

    def run() -> None:
        while True:
            try:
                ensure(redis)
                return
            except SchemaError as exc:
                on_refused(exc)
                return
            except RedisError:
                time.sleep(RETRY_INTERVAL)

    thread = threading.Thread(target=run, name="schema-check", daemon=True)
    thread.start()
    return thread


def _refuse_newer(found: int) -> None:
    if found > schema.VERSION:
        raise SchemaError(
            f"Redis holds pushdeploy data in layout version {found}, newer than this release's "
            f"{schema.VERSION}: a newer pushdeploy has used this Redis. Starting this older one would "
            "corrupt that data, so it stops here and changes nothing: run the newer release, or give "
            "this one another Redis database (server.redis_url)."
        )


# -- version 1 → 2 ----------------------------------------------------------------------------


def _v1_to_v2(redis: Redis) -> None:
    _move_delivery_ids(redis)
    _count_kept(redis)


def _move_delivery_ids(redis: Redis) -> None:
    """One string key per delivery id (``pd:seen:<project>:<id>``, 48 h expiry) → the project's hash
    and sorted set, with the time each was first seen (worked out from its remaining expiry)."""
    now = time.time()
    prefix = f"{schema.PREFIX}:seen:"
    for raw in redis.scan_iter(match=f"{prefix}*", count=1000, _type="string"):
        name = raw.decode()
        project, _, delivery = name.removeprefix(prefix).partition(":")
        if not delivery:
            continue
        value, ttl_ms = redis.get(name), redis.pttl(name)
        if value is None:
            continue  # expired meanwhile
        left = ttl_ms / 1000 if ttl_ms > 0 else defaults.SEEN_DELIVERY_TTL
        first_seen = now - max(0.0, defaults.SEEN_DELIVERY_TTL - left)
        with redis.pipeline() as pipe:
            pipe.hsetnx(schema.seen(project), delivery, value)
            pipe.zadd(schema.seen_at(project), {delivery: first_seen}, nx=True)
            pipe.delete(name)
            pipe.execute()


def _count_kept(redis: Redis) -> None:
    """Count each environment's kept deployments by state, which version 1 only knew by reading all."""
    suffix = ":history"
    for raw in redis.scan_iter(match=f"{schema.PREFIX}:env:*{suffix}", count=1000, _type="zset"):
        name = raw.decode()
        project, _, environment = (
            name.removeprefix(f"{schema.PREFIX}:env:").removesuffix(suffix).partition(":")
        )
        ids = [i.decode() for i in redis.zrange(name, 0, -1)]
        tally = {state.value: 0 for state in State}
        for start in range(0, len(ids), 500):
            with redis.pipeline(transaction=False) as pipe:
                for deployment_id in ids[start : start + 500]:
                    pipe.hgetall(schema.record(deployment_id))
                for fields in pipe.execute():
                    if fields:
                        tally[Deployment.from_redis(fields).state.value] += 1
        with redis.pipeline() as pipe:
            pipe.delete(schema.kept(project, environment))
            pipe.hset(schema.kept(project, environment), mapping=tally)
            pipe.execute()


MIGRATIONS: dict[int, Callable[[Redis], None]] = {1: _v1_to_v2}
"""Step ``n`` turns layout ``n`` into ``n + 1``."""
