"""Redis clients with timeouts chosen per tier, so nothing ever hangs on a dead Redis."""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from workers import defaults


def web_redis(url: str, timeout: float = defaults.REDIS_WEB_TIMEOUT) -> Redis:
    """For the request path: short timeouts and no retries, so an outage is a fast 503."""
    return Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def worker_redis(url: str) -> Redis:
    """For workers: patient, with retries, since a deployment can outlive a Redis blip.

    ``socket_timeout`` stays unset because RQ's dequeue blocks on the socket for long periods.
    """
    return Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=10, base=0.5), 5),
        health_check_interval=30,
    )
