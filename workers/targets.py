"""Remote hosts an environment deploys to (``targets``), and each host's progress in a deployment.

A target is ``ssh://user@host[:port]/absolute/path``; every part ends up in an ssh or rsync command
line, so each is checked against a narrow pattern here, once, when the config is loaded. Progress
is a Redis hash per deployment (:func:`workers.schema.hosts`): the API, the page and the CLI read it
while the rollout writes it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from redis import Redis

from workers import schema
from workers.errors import EngineError

USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\Z")
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}\Z){LABEL}(\.{LABEL})*\Z")
PATH_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+\Z")
"""Plain absolute paths only: no spaces, no quoting games, no ``..`` (checked apart)."""

DEFAULT_PORT = 22


class TargetError(EngineError, ValueError):
    """A ``targets`` entry cannot be used; the message says which part is wrong."""


@dataclass(frozen=True)
class Target:
    """One host's release directory, reached over SSH."""

    user: str
    host: str
    port: int
    path: str

    @property
    def name(self) -> str:
        """How people see the host: in the log, the record, the page and the status."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return shown if self.port == DEFAULT_PORT else f"{shown}:{self.port}"

    @property
    def url_host(self) -> str:
        """The host as it goes into a URL's authority (``{host}`` in ``health_check.url``)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def __str__(self) -> str:
        return f"ssh://{self.user}@{self.name}{self.path}"


def parse_target(value: str) -> Target:
    """Read ``ssh://user@host[:port]/absolute/path``.

    Raises:
        TargetError: naming the part that is wrong.
    """
    parts = urlsplit(value)
    if parts.scheme != "ssh" or not parts.netloc:
        raise TargetError("must look like ssh://user@host[:port]/absolute/path")
    if parts.query or parts.fragment or parts.password is not None:
        raise TargetError("takes no password, query or fragment: the key is ssh_key")
    user = parts.username or ""
    if not USER_RE.match(user):
        raise TargetError("needs a user (ssh://deploy@host/…) of lowercase letters, digits, '_', '.', '-'")
    host = parts.hostname or ""
    if not _valid_host(host):
        raise TargetError(f"host {host!r} is not a host name or an IP address")
    try:
        port = DEFAULT_PORT if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise TargetError("port must be a number from 1 to 65535")
    path = parts.path.rstrip("/")
    if not PATH_RE.match(path) or any(p in (".", "..") for p in path.split("/")):
        raise TargetError("path must be absolute and plain (letters, digits, '.', '_', '-'), not '/'")
    return Target(user, host, port, path)


def _valid_host(host: str) -> bool:
    if HOSTNAME_RE.match(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Rollout:
    """How many hosts switch at a time; ``batch == 0`` means all at once."""

    batch: int = 1

    def batches(self, targets: tuple[Target, ...]) -> list[tuple[Target, ...]]:
        size = self.batch or len(targets) or 1
        return [targets[i : i + size] for i in range(0, len(targets), size)]


class HostState(StrEnum):
    PENDING = "pending"
    SHIPPED = "shipped"
    LIVE = "live"
    FAILED = "failed"
    ROLLED_BACK = "rolled back"


@dataclass(frozen=True)
class HostProgress:
    host: str
    state: HostState
    detail: str = ""

    def public(self) -> dict[str, Any]:
        return {"host": self.host, "state": str(self.state), "detail": self.detail}


def record_hosts(redis: Redis, deployment_id: str, targets: tuple[Target, ...]) -> None:
    """Start the table: every host ``pending``, in ``targets`` order."""
    redis.hset(
        schema.hosts(deployment_id),
        mapping={t.name: _encode(i, HostState.PENDING, "") for i, t in enumerate(targets)},
    )


def set_host(
    redis: Redis, deployment_id: str, index: int, target: Target, state: HostState, detail: str = ""
) -> None:
    redis.hset(schema.hosts(deployment_id), target.name, _encode(index, state, detail))


def hosts(redis: Redis, deployment_id: str) -> list[HostProgress]:
    """Each host's progress in ``targets`` order; empty for a deployment without targets."""
    found = []
    for name, raw in redis.hgetall(schema.hosts(deployment_id)).items():
        data = json.loads(raw)
        found.append((int(data["i"]), HostProgress(_text(name), HostState(data["state"]), data["detail"])))
    return [progress for _, progress in sorted(found, key=lambda pair: pair[0])]


def _encode(index: int, state: HostState, detail: str) -> str:
    return json.dumps({"i": index, "state": str(state), "detail": detail})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
