"""Sign-in attempt counters in real Redis: a fixed minute per subject, shared by every web node."""

from __future__ import annotations

from redis import Redis

from webhook import attempts
from workers import schema


def test_the_limit_holds_per_subject_and_says_when_to_retry(redis: Redis) -> None:
    subjects = {"address": "192.0.2.1", "account": "admin"}
    assert all(attempts.attempt(redis, subjects, limit=3) is None for _ in range(3))
    first = attempts.attempt(redis, subjects, limit=3)
    assert first is not None and first.first and 1 <= first.retry_after <= 60
    again = attempts.attempt(redis, subjects, limit=3)
    assert again is not None and not again.first
    # Another address is refused by the account's count alone; a fresh account and address are not.
    other = attempts.attempt(redis, {"address": "192.0.2.2", "account": "admin"}, limit=3)
    assert other is not None
    assert attempts.attempt(redis, {"address": "192.0.2.3", "account": "alice"}, limit=3) is None


def test_counters_expire_with_their_minute(redis: Redis) -> None:
    attempts.attempt(redis, {"address": "192.0.2.1"})
    key = schema.sign_in_attempts("address", "192.0.2.1")
    assert 0 < redis.ttl(key) <= attempts.WINDOW
    attempts.attempt(redis, {"address": "192.0.2.1"})
    assert redis.get(key) == b"2" and redis.ttl(key) <= attempts.WINDOW  # the window is not pushed back
