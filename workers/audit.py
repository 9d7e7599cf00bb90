"""The audit log: who did what, to which deployment, from where — kept in one Redis stream.

A stream because its ids are times: retention is one ``MINID`` trim on every write, a time range
is an id range, and the id of the last entry shown is the cursor for the next page. The web tier
fills in who and from where (:mod:`webhook.audit`); this module only stores and reads, so a worker
can log a configuration reload too.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from redis import Redis

from workers import defaults, schema


class Action(StrEnum):
    SIGN_IN = "sign_in"
    SIGN_IN_FAILED = "sign_in_failed"
    SIGN_OUT = "sign_out"
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    CANCEL = "cancel"
    TOKEN_CREATED = "token_created"  # noqa: S105
    TOKEN_REVOKED = "token_revoked"  # noqa: S105
    ADMIN_TOKEN = "admin_token"  # noqa: S105
    """A read with the admin token (actions taken with it are logged as themselves, ``via`` it)."""
    CONFIG_RELOAD = "config_reload"
    REVIEW_STOP = "review_stop"
    """A review app stopped by hand (page or API)."""


@dataclass(frozen=True)
class Entry:
    at: float
    who: str
    action: str
    project: str = ""
    environment: str = ""
    deployment: str = ""
    # ``from`` is a Python keyword: the attribute is ``address``, the field everywhere else ``from``.
    address: str = ""
    via: str = ""
    detail: str = ""
    id: str = ""

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"] = data.pop("address")
        return data


FIELD_LIMIT = 255
"""Characters kept of any one field: entries are small whatever a caller passes."""


def record(redis: Redis, days: int, entry: Entry) -> str:
    """Append one entry and drop those older than ``days``; returns the entry's id."""
    data = {k: v[:FIELD_LIMIT] for k, v in _fields(entry) if v}
    data["at"] = repr(entry.at)
    cutoff_ms = int((time.time() - days * 86400) * 1000)
    with redis.pipeline(transaction=False) as pipe:
        # Exact MINID: the retention is what it says, and a trim that finds nothing old costs nothing.
        pipe.xadd(schema.AUDIT, data, minid=cutoff_ms, approximate=False)
        pipe.xtrim(schema.AUDIT, maxlen=defaults.AUDIT_MAX_ENTRIES, approximate=True)
        added = pipe.execute()[0]
    return _text(added)


def _fields(entry: Entry) -> Iterator[tuple[str, str]]:
    for item in fields(Entry):
        if item.name not in ("at", "id"):
            yield item.name, str(getattr(entry, item.name))


@dataclass(frozen=True)
class Scope:
    """What one reader may see: the entries of ``projects``, and the entries with no project
    (sign-ins, tokens) that ``who`` made."""

    projects: frozenset[str]
    who: str

    def allows(self, entry: Entry) -> bool:
        return entry.project in self.projects if entry.project else entry.who == self.who


@dataclass(frozen=True)
class Query:
    project: str = ""
    environment: str = ""
    action: str = ""
    who: str = ""
    since: float = 0.0
    until: float = 0.0
    """0: up to now."""
    scope: Scope | None = None
    """None: every entry (the admin token)."""

    def matches(self, entry: Entry) -> bool:
        if self.scope is not None and not self.scope.allows(entry):
            return False
        return all(
            not wanted or wanted == found
            for wanted, found in (
                (self.project, entry.project),
                (self.environment, entry.environment),
                (self.action, entry.action),
                (self.who, entry.who),
            )
        )


SCAN_LIMIT = 5000
"""Entries one page may look at: a rare filter answers a partial page and a cursor, never a long scan."""


def read(redis: Redis, query: Query, limit: int, cursor: str = "") -> tuple[list[Entry], str]:
    """Newest first, matching ``query``, after ``cursor``: the page and the next cursor ("" at the end)."""
    high = f"({cursor}" if cursor else (_ms(query.until) if query.until else "+")
    low = _ms(query.since) if query.since else "-"
    found: list[Entry] = []
    scanned = 0
    while len(found) < limit and scanned < SCAN_LIMIT:
        batch = redis.xrevrange(schema.AUDIT, max=high, min=low, count=min(500, SCAN_LIMIT - scanned))
        if not batch:
            return found, ""
        for raw_id, raw in batch:
            scanned += 1
            entry = _entry(_text(raw_id), raw)
            high = f"({entry.id}"
            if query.matches(entry):
                found.append(entry)
                if len(found) == limit:
                    return found, entry.id
    return found, high[1:] if scanned >= SCAN_LIMIT else ""


def valid_cursor(text: str) -> bool:
    ms, dash, seq = text.partition("-")
    digits = ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()
    return bool(dash) and digits and len(ms) <= 19 and len(seq) <= 19  # within a stream id's 64 bits


def _ms(seconds: float) -> str:
    return str(int(min(seconds * 1000, LAST_MS)))  # compared as floats: 1e308 s is no overflow


LAST_MS = 2**63 - 1
"""Milliseconds beyond any stream id a clock will write: a far-future ``until`` means "up to now"."""


def _entry(entry_id: str, raw: dict[Any, Any]) -> Entry:
    data = {_text(k): _text(v) for k, v in raw.items()}
    names = {item.name for item in fields(Entry)} - {"at", "id"}
    known = {"who": "", "action": ""} | {k: v for k, v in data.items() if k in names}  # empty: not stored
    try:
        at = float(data.get("at", ""))
    except ValueError:
        at = int(entry_id.partition("-")[0]) / 1000
    return Entry(at=at, id=entry_id, **known)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def config_loaded(redis: Redis, days: int, path: Path, who: str) -> bool:
    """Log ``config_reload`` when this configuration differs from the one last loaded.

    Every web and worker process loads the configuration at start; comparing digests in Redis
    (SET with GET) makes one entry per change, not one per process. Returns whether it logged.
    """
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return False
    before = redis.set(schema.AUDIT_CONFIG, digest, get=True)
    if before is None or _text(before) == digest:
        return False  # the first start is not a reload; the same file again is not one either
    record(
        redis,
        days,
        Entry(at=time.time(), who=who, action=Action.CONFIG_RELOAD, detail=f"{path.name} {digest[:12]}"),
    )
    return True
