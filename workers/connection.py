"""Redis clients with timeouts chosen per tier, so nothing ever hangs on a dead Redis.

``redis_url`` may name a plain server (``redis://``, ``rediss://``, ``unix://``) or a Redis
Sentinel setup, ``redis+sentinel://[:password@]host:port[,host:port…]/service[/db]``: the client
then asks the sentinels for the current master of ``service`` and follows failovers, through
redis-py's own Sentinel support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from workers import defaults

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    hosts: list[tuple[str, int]]
    service: str
    db: int
    password: str | None
    tls: bool


def parse_sentinel(url: str) -> SentinelTarget:
    """Read a ``redis+sentinel://`` URL.

    Raises:
        ValueError: the URL names no sentinel host or no service.
    """
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError("not a redis+sentinel:// URL")
    netloc = parts.netloc.rpartition("@")[2]
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise ValueError("a sentinel host is empty")
        hosts.append((host.strip("[]"), int(port) if port else SENTINEL_PORT))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("the URL must name the Sentinel service: redis+sentinel://host:26379/mymaster")
    db = int(path[1]) if len(path) > 1 else 0
    password = unquote(parts.password) if parts.password else None
    return SentinelTarget(hosts, unquote(path[0]), db, password, parts.scheme.startswith("rediss"))


def connect(url: str, **options: Any) -> Redis:
    """A client for ``url`` with ``options`` (timeouts, retries) for the server connections."""
    if urlsplit(url).scheme not in SENTINEL_SCHEMES:
        return Redis.from_url(url, **options)
    target = parse_sentinel(url)
    sentinel_options = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(target.hosts, sentinel_kwargs=sentinel_options, **options)
    client: Redis = sentinel.master_for(
        target.service, db=target.db, password=target.password, ssl=target.tls
    )
    return client


def web_redis(url: str, timeout: float = defaults.REDIS_WEB_TIMEOUT) -> Redis:
    """For the request path: short timeouts and no retries, so an outage is a fast 503."""
    return connect(
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
    return connect(
        url,
        socket_connect_timeout=5,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=10, base=0.5), 5),
        health_check_interval=30,
    )
