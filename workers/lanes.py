"""One lane per project environment: one deployment at a time, and the latest push wins.

A lane is a Redis lock with a fencing token and an expiry that the running deployment renews,
plus a one-deployment waiting slot. Deciding "run, wait or be superseded" and "release and hand
over to the waiting one" are each a single Lua script, so no interleaving of workers on any number
of machines can lose a waiting deployment or run two at once.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from enum import StrEnum

from redis import Redis

from workers import schema

LOCK_TTL_MS = 60_000
"""A lane's lock outlives a dead worker by at most this long."""

RENEW_EVERY = 15.0
"""Seconds between renewals: four chances before the lock would expire."""

_CLAIM = """
local newest = redis.call('ZREVRANGE', KEYS[3], 0, 0)[1]
if newest and newest ~= ARGV[1] then
  return {'superseded', newest}
end
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
  return {'run', ''}
end
local previous = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], ARGV[1])
if previous == ARGV[1] then previous = false end
return {'wait', previous or ''}
"""

_RELEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and string.sub(holder, 1, string.len(ARGV[1])) ~= ARGV[1] then
  return {0, ''}
end
redis.call('DEL', KEYS[1])
local waiting = redis.call('GET', KEYS[2])
if waiting then redis.call('DEL', KEYS[2]) end
return {1, waiting or ''}
"""

_TAKE_STALLED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local waiting = redis.call('GET', KEYS[2])
if waiting then redis.call('DEL', KEYS[2]) end
return waiting
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class Verdict(StrEnum):
    RUN = "run"
    WAIT = "wait"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    token: str
    other: str  # WAIT: the older waiting deployment it displaced; SUPERSEDED: the newer one


@dataclass(frozen=True)
class Release:
    released: bool
    waiting: str  # the deployment to start next, or ""


class Lane:
    def __init__(self, redis: Redis, project: str, environment: str) -> None:
        self.redis = redis
        self.lock_key = schema.lock(project, environment)
        self.waiting_key = schema.waiting(project, environment)
        self.history_key = schema.history(project, environment)

    def claim(self, deployment_id: str) -> Claim:
        """Run now, wait for the running one, or step aside for a newer push."""
        token = f"{deployment_id}:{secrets.token_hex(8)}"
        verdict, other = self.redis.eval(
            _CLAIM, 3, self.lock_key, self.waiting_key, self.history_key, deployment_id, token, LOCK_TTL_MS
        )
        return Claim(Verdict(_text(verdict)), token, _text(other))

    def release(self, token: str) -> Release:
        """Free the lane if ``token`` still holds it (or it expired); returns who waits to go next."""
        released, waiting = self.redis.eval(_RELEASE, 2, self.lock_key, self.waiting_key, token)
        return Release(bool(released), _text(waiting))

    def release_for(self, deployment_id: str) -> Release:
        """Free the lane if ``deployment_id`` holds it: for a deployment whose worker died."""
        return self.release(f"{deployment_id}:")

    def take_stalled(self) -> str:
        """Take a deployment waiting on a lane nobody holds (its holder died unnoticed), or ""."""
        return _text(self.redis.eval(_TAKE_STALLED, 2, self.lock_key, self.waiting_key))

    def renew(self, token: str) -> bool:
        return bool(self.redis.eval(_RENEW, 1, self.lock_key, token, LOCK_TTL_MS))

    def holder(self) -> str:
        """The deployment id holding the lane, or ""."""
        raw = self.redis.get(self.lock_key)
        return _text(raw).split(":", 1)[0] if raw else ""

    def keep_alive(self, token: str) -> Renewal:
        return Renewal(self, token)


class Renewal:
    """Renews a held lane in a thread until stopped; a failed renewal means the lane was lost."""

    def __init__(self, lane: Lane, token: str) -> None:
        self.lane = lane
        self.token = token
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lane-renewal", daemon=True)

    def __enter__(self) -> Renewal:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(RENEW_EVERY):
            try:
                if not self.lane.renew(self.token):
                    self.lost.set()
                    return
            except Exception:  # noqa: S112 (a Redis blip: try again next round, the TTL covers several misses)
                continue


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
