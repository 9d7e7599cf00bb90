"""Sign-in attempts, counted per address and per account: guessing the admin token stays slow.

A fixed one-minute window per subject, as a Redis counter that expires: every web node shares it,
and nothing is kept once the minute is over. Every attempt is counted before it is judged (so a
burst cannot outrun the count); a GitLab sign-in that succeeds is then given back (:func:`forgive`),
so a team behind one address can all sign in at nine o'clock.
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


# DECR only while the window's counter exists: a missing key would come back as -1 with no expiry.
_GIVE_BACK = """
for _, key in ipairs(KEYS) do
  if redis.call('exists', key) == 1 and tonumber(redis.call('get', key)) > 0 then
    redis.call('decr', key)
  end
end
return 0
"""


def forgive(redis: Redis, subjects: dict[str, str]) -> None:
    """Take back one counted attempt for each ``kind → subject``: it turned out to be a sign-in.

    If the minute ended meanwhile, the give-back lands in the next one (which did not count it): at
    most one attempt per sign-in. Only GitLab sign-ins are given back: the admin-token form's count
    never is."""
    keys = [schema.sign_in_attempts(kind, subject) for kind, subject in subjects.items()]
    if keys:
        redis.eval(_GIVE_BACK, len(keys), *keys)
