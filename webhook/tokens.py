"""Personal API tokens: shown once, kept only as a SHA-256, acting with their owner's current rights.

A token reads ``pdt_<id>_<secret>``: the id finds its record without a scan, the 256-bit secret
makes it unguessable, and only the SHA-256 of the whole token is stored (a slow hash buys nothing
against a random secret of that size). The comparison is constant-time. A record expires in Redis
at the token's own expiry, and each person holds at most :data:`MAX_PER_PERSON`, so what is kept
stays bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

from redis import Redis

from workers import defaults, schema

PREFIX = "pdt_"
TOKEN_RE = re.compile(r"^pdt_([0-9a-f]{16})_[A-Za-z0-9_-]{43}\Z")
MAX_PER_PERSON = 50
"""Live tokens one person may hold: a forgotten loop creating tokens cannot fill Redis."""
NAME_LIMIT = 100
LAST_USED_EVERY = 60
"""Seconds between two writes of a token's last-used time (a busy CI job need not write each call)."""


class TokenRefused(ValueError):
    """A token cannot be created as asked; the message says why (for a 400)."""


@dataclass(frozen=True)
class TokenRecord:
    """What is kept about one token (never the token itself)."""

    id: str
    name: str
    owner: str
    owner_id: int
    created_at: float
    expires_at: float
    last_used_at: float | None

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "last_used_at": _iso(self.last_used_at) if self.last_used_at else None,
        }


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def expiry(expires_at: object, max_days: int, now: float | None = None) -> float:
    """When a token asked to expire at ``expires_at`` (ISO date or time; None: the default) expires.

    Raises:
        TokenRefused: not a date, in the past, or further than ``max_days`` away.
    """
    now = time.time() if now is None else now
    if expires_at is None or expires_at == "":
        return now + min(defaults.TOKEN_DAYS, max_days) * 86400
    if not isinstance(expires_at, str):
        raise TokenRefused("expires_at must be a date (2026-12-31) or an ISO 8601 time")
    try:
        if len(expires_at) == 10:  # a date, as GitLab's own tokens take: the end of that day, UTC
            stamp = datetime.combine(date.fromisoformat(expires_at), datetime.max.time(), UTC).timestamp()
        else:
            parsed = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
            stamp = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    except ValueError:
        raise TokenRefused("expires_at must be a date (2026-12-31) or an ISO 8601 time") from None
    if stamp <= now:
        raise TokenRefused("expires_at is in the past")
    if stamp > now + max_days * 86400 + 86400:  # a date's end of day may pass the limit by hours
        raise TokenRefused(f"expires_at is more than {max_days} days away (auth.token_max_days)")
    return stamp


class TokenStore:
    """Personal API tokens in Redis, keyed as :mod:`workers.schema` says."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def create(self, owner: str, owner_id: int, name: str, expires_at: float) -> tuple[TokenRecord, str]:
        """A new token for ``owner``: its record, and the token itself (to show once).

        Raises:
            TokenRefused: a bad name, or the owner holds :data:`MAX_PER_PERSON` tokens already.
        """
        name = name.strip()
        if not name or len(name) > NAME_LIMIT or any(ord(c) < 32 for c in name):
            raise TokenRefused(f"name must be 1 to {NAME_LIMIT} printable characters")
        index = schema.person_tokens(owner_id)
        self.redis.zremrangebyscore(index, "-inf", time.time())
        if self.redis.zcard(index) >= MAX_PER_PERSON:
            raise TokenRefused(f"you hold {MAX_PER_PERSON} tokens already: revoke one first")
        token_id = secrets.token_hex(8)
        token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        record = TokenRecord(token_id, name, owner, owner_id, time.time(), expires_at, None)
        key = schema.api_token(token_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(
                key,
                mapping={
                    "name": name,
                    "owner": owner,
                    "owner_id": owner_id,
                    "digest": _digest(token),
                    "created_at": record.created_at,
                    "expires_at": expires_at,
                },
            )
            pipe.expireat(key, int(expires_at) + 1)
            pipe.zadd(index, {token_id: expires_at})
            pipe.execute()
        latest = self.redis.zrange(index, -1, -1, withscores=True)
        self.redis.expireat(index, int(latest[0][1]) + 1 if latest else int(expires_at) + 1)
        return record, token

    def owned_by(self, owner_id: int) -> list[TokenRecord]:
        """The owner's live tokens, newest first."""
        index = schema.person_tokens(owner_id)
        self.redis.zremrangebyscore(index, "-inf", time.time())
        found = [self.get(i.decode()) for i in self.redis.zrange(index, 0, -1)]
        return sorted((r for r in found if r is not None), key=lambda r: r.created_at, reverse=True)

    def get(self, token_id: str) -> TokenRecord | None:
        data = {k.decode(): v.decode() for k, v in self.redis.hgetall(schema.api_token(token_id)).items()}
        if "digest" not in data or float(data["expires_at"]) <= time.time():
            return None
        last = data.get("last_used_at")
        return TokenRecord(
            token_id,
            data["name"],
            data["owner"],
            int(data["owner_id"]),
            float(data["created_at"]),
            float(data["expires_at"]),
            float(last) if last else None,
        )

    def revoke(self, owner_id: int, token_id: str) -> bool:
        """Delete one of the owner's tokens; False when the owner has no such token."""
        record = self.get(token_id) if re.fullmatch(r"[0-9a-f]{16}", token_id) else None
        if record is None or record.owner_id != owner_id:
            return False
        with self.redis.pipeline() as pipe:
            pipe.delete(schema.api_token(token_id))
            pipe.zrem(schema.person_tokens(owner_id), token_id)
            pipe.execute()
        return True

    def authenticate(self, token: str) -> TokenRecord | None:
        """The record of a live token presented in full, or None; notes when it was last used."""
        match = TOKEN_RE.match(token)
        if match is None:
            return None
        key = schema.api_token(match.group(1))
        stored = self.redis.hget(key, "digest")
        if stored is None or not hmac.compare_digest(stored.decode(), _digest(token)):
            return None
        record = self.get(match.group(1))
        if record is None:
            return None
        now = time.time()
        if record.last_used_at is None or now - record.last_used_at >= LAST_USED_EVERY:
            with self.redis.pipeline() as pipe:  # a revoke in between leaves a remnant that expires
                pipe.hset(key, "last_used_at", now)
                pipe.expireat(key, int(record.expires_at) + 1)
                pipe.execute()
        return record
