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


def test_a_forgiven_attempt_is_given_back_within_its_window_and_never_below_nothing(redis: Redis) -> None:
    subjects = {"address": "192.0.2.1", "account": "alice"}
    for _ in range(3):
        assert attempts.attempt(redis, subjects, limit=3) is None
        attempts.forgive(redis, subjects)  # each a sign-in that succeeded
    assert attempts.attempt(redis, subjects, limit=3) is None  # still room: nothing was used up
    key = schema.sign_in_attempts("address", "192.0.2.1")
    assert redis.get(key) == b"1" and 0 < redis.ttl(key) <= attempts.WINDOW
    attempts.forgive(redis, subjects)
    attempts.forgive(redis, subjects)  # more than was counted
    assert redis.get(key) == b"0" and 0 < redis.ttl(key) <= attempts.WINDOW
    stranger = schema.sign_in_attempts("address", "192.0.2.9")
    attempts.forgive(redis, {"address": "192.0.2.9"})  # no window open: nothing is made
    assert not redis.exists(stranger)
