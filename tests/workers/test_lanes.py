"""Lanes: one deployment per environment at a time, the newest push wins, nothing waits forever."""

from __future__ import annotations

import threading

from redis import Redis

from workers.deployments import Deployment, DeploymentStore
from workers.lanes import Lane, Verdict


def record(redis: Redis, deployment_id: str, created_at: float) -> None:
    DeploymentStore(redis).create(
        Deployment(deployment_id, "app", "prod", "refs/heads/main", "a" * 40, created_at=created_at)
    )


def test_the_first_claim_runs_and_a_newer_one_waits(redis: Redis) -> None:
    lane = Lane(redis, "app", "prod")
    record(redis, "d1", 1.0)
    first = lane.claim("d1")
    record(redis, "d2", 2.0)
    second = lane.claim("d2")
    assert first.verdict is Verdict.RUN
    assert second.verdict is Verdict.WAIT and second.other == ""
    assert lane.holder() == "d1"
    assert lane.release(first.token).waiting == "d2"
    assert lane.claim("d2").verdict is Verdict.RUN


def test_a_newer_waiting_push_displaces_the_older_one(redis: Redis) -> None:
    lane = Lane(redis, "app", "prod")
    record(redis, "d1", 1.0)
    lane.claim("d1")
    record(redis, "d2", 2.0)
    assert lane.claim("d2").verdict is Verdict.WAIT
    record(redis, "d3", 3.0)
    displaced = lane.claim("d3")
    assert (displaced.verdict, displaced.other) == (Verdict.WAIT, "d2")


def test_an_older_push_is_superseded_by_the_newest(redis: Redis) -> None:
    lane = Lane(redis, "app", "prod")
    record(redis, "d1", 1.0)
    record(redis, "d2", 2.0)
    claim = lane.claim("d1")
    assert (claim.verdict, claim.other) == (Verdict.SUPERSEDED, "d2")


def test_a_stale_token_cannot_release_someone_elses_lane(redis: Redis) -> None:
    lane = Lane(redis, "app", "prod")
    record(redis, "d1", 1.0)
    claim = lane.claim("d1")
    assert not lane.release("d1:not-the-token").released
    assert lane.holder() == "d1"
    assert lane.renew(claim.token)
    assert lane.release(claim.token).released


def test_a_dead_holders_lane_is_freed_by_deployment_id(redis: Redis) -> None:
    lane = Lane(redis, "app", "prod")
    record(redis, "d1", 1.0)
    lane.claim("d1")
    record(redis, "d2", 2.0)
    lane.claim("d2")
    assert not lane.release_for("d9").released
    assert lane.release_for("d1").waiting == "d2"


def test_a_waiting_push_on_an_expired_lane_is_found(redis: Redis) -> None:
    lane = Lane(redis, "app", "prod")
    record(redis, "d1", 1.0)
    lane.claim("d1")
    record(redis, "d2", 2.0)
    lane.claim("d2")
    assert lane.take_stalled() == ""  # still held
    redis.delete(lane.lock_key)  # the holder's worker died and its lock expired
    assert lane.take_stalled() == "d2"
    assert lane.take_stalled() == ""


def test_racing_claims_never_run_two_at_once(redis: Redis) -> None:
    record(redis, "d1", 1.0)
    verdicts: list[Verdict] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        verdicts.append(Lane(Redis(connection_pool=redis.connection_pool), "app", "prod").claim("d1").verdict)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verdicts.count(Verdict.RUN) == 1
