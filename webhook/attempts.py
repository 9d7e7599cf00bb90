"""Sign-in attempts, counted per address and per account: guessing the admin token stays slow.

A fixed one-minute window per subject, as a Redis counter that expires: every web node shares it,
and nothing is kept once the minute is over.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from workers import defaults, schema

WINDOW = 60


@dataclass(frozen=True)
class Refusal:
    retry_after: int
    """Seconds until the window that refused ends."""
    first: bool
    """The first refusal of its window: the one worth an audit entry."""


def attempt(redis: Redis, subjects: dict[str, str], limit: int = defaults.SIGN_IN_LIMIT) -> Refusal | None:
    """Count one attempt for each ``kind → subject``; a refusal when any is over ``limit`` this minute."""
    keys = [schema.sign_in_attempts(kind, subject) for kind, subject in subjects.items()]
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.incr(key)
            pipe.expire(key, WINDOW, nx=True)
            pipe.ttl(key)
        replies = pipe.execute()
    over = [(int(replies[i * 3]), max(1, int(replies[i * 3 + 2]))) for i in range(len(keys))]
    over = [(count, wait) for count, wait in over if count > limit]
    if not over:
        return None
    return Refusal(max(wait for _, wait in over), any(count == limit + 1 for count, _ in over))
