"""Accepting a push: one round trip for a new delivery, all of it or nothing, duplicates refused.

Real Redis (db 15, flushed), real RQ. Round trips are counted on a real connection whose class
only tallies what it sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue
from rq.job import Job

from workers import defaults
from workers.config import Settings
from workers.deployments import Deployment, DeploymentStore, UnknownDeployment, history_key, key
from workers.forge import StatusState
from workers.outbox import DUE_KEY, recorded
from workers.pipeline import Runner
from workers.queueing import Intake, Push, seen_key

SHA = "4b" * 20


class CountingConnection(Connection):
    """A real connection that counts round trips: each send is answered before the next."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted(redis_url: str, redis: Redis) -> Redis:
    CountingConnection.sends = 0
    return Redis.from_url(redis_url, connection_class=CountingConnection)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def accept(
    intake: Intake, settings: Settings, delivery: str = "d-1", pusher: str = "ada", **journaled: Any
) -> Any:
    project = settings.projects["sample-app"]
    push = Push(ref="refs/heads/main", sha=SHA, pusher=pusher, delivery_key=delivery)
    return intake.accept(project, project.environments["production"], push, **journaled)


def queued(redis: Redis) -> list[str]:
    return Queue(defaults.DEPLOY_QUEUE, connection=redis).job_ids


def test_a_new_delivery_is_one_round_trip(settings: Settings, counted: Redis) -> None:
    intake = Intake(counted, settings.server.public_url)
    accept(intake, settings, "warm-up")  # the pool's first connection says HELLO/SELECT once
    CountingConnection.sends = 0
    accepted = accept(intake, settings)
    assert not accepted.duplicate
    assert CountingConnection.sends == 1


def test_a_duplicate_is_two_round_trips_and_leaves_one_job(settings: Settings, counted: Redis) -> None:
    intake = Intake(counted, settings.server.public_url)
    first = accept(intake, settings)
    CountingConnection.sends = 0
    again = accept(intake, settings)
    assert again.duplicate and again.deployment_id == first.deployment_id
    assert CountingConnection.sends == 2
    assert queued(counted) == [first.deployment_id]
    assert counted.zcard(history_key("sample-app", "production")) == 1


def test_claim_record_history_status_and_job_are_written_together(settings: Settings, redis: Redis) -> None:
    accepted = accept(Intake(redis, settings.server.public_url), settings, pusher="ada lovelace")
    deployment = DeploymentStore(redis).get(accepted.deployment_id)
    assert (deployment.sha, deployment.pusher, deployment.delivery_id) == (SHA, "ada lovelace", "d-1")
    assert (deployment.previous_sha, deployment.release, deployment.started_at) == ("", "", 0.0)
    assert redis.get(seen_key("sample-app", "d-1")) == accepted.deployment_id.encode()
    assert redis.ttl(seen_key("sample-app", "d-1")) > 24 * 3600
    score = redis.zscore(history_key("sample-app", "production"), accepted.deployment_id)
    assert score == pytest.approx(deployment.created_at)
    assert [r.status.state for r in recorded(redis, accepted.deployment_id)] == [StatusState.PENDING]
    assert redis.zscore(DUE_KEY, accepted.deployment_id) is not None
    assert queued(redis) == [accepted.deployment_id]
    assert Job.fetch(accepted.deployment_id, connection=redis).args == (accepted.deployment_id,)


def test_a_record_leaves_out_only_empty_optional_fields(settings: Settings, redis: Redis) -> None:
    intake = Intake(redis, settings.server.public_url)
    project = settings.projects["sample-app"]
    deployment = Deployment("20261126120000000-abcdef", "sample-app", "production", "refs/heads/main", "")
    intake.enqueue(project, project.environments["production"], deployment)
    fields = {k.decode() for k in redis.hgetall(key(deployment.id))}
    assert {"id", "project", "environment", "ref", "sha", "state", "created_at"} <= fields
    assert not fields & {"previous_sha", "reason", "started_at", "finished_at", "release"}
    assert DeploymentStore(redis).get(deployment.id) == deployment
    assert recorded(redis, deployment.id) == []  # a ref is resolved (and reported) by the worker


def test_deliveries_without_an_id_are_never_duplicates(settings: Settings, redis: Redis) -> None:
    intake = Intake(redis, settings.server.public_url)
    first, second = accept(intake, settings, ""), accept(intake, settings, "")
    assert not first.duplicate and not second.duplicate
    assert len(queued(redis)) == 2
    assert not redis.keys(seen_key("sample-app", "*"))


def test_delivery_ids_are_per_project(make_settings: Callable[..., Settings], redis: Redis) -> None:
    settings = make_settings()
    intake = Intake(redis, settings.server.public_url)
    accept(intake, settings, "shared")
    redis.delete(seen_key("sample-app", "shared"))
    redis.set(seen_key("other-app", "shared"), "20261126120000000-000000")
    assert not accept(intake, settings, "shared").duplicate


def test_a_transaction_cut_midway_keeps_nothing_so_the_resend_deploys(
    settings: Settings, redis: Redis, redis_url: str
) -> None:
    """Redis never runs a transaction it did not receive whole: no claim is left to refuse the resend."""
    broken = Redis.from_url(redis_url, socket_timeout=0.5)
    intake = Intake(broken, settings.server.public_url)
    original = broken.connection_pool.get_connection

    def dropping(*args: Any, **kwargs: Any) -> Any:
        connection = original(*args, **kwargs)
        connection.connect()
        connection._sock.close()  # the socket dies before the transaction is sent
        return connection

    broken.connection_pool.get_connection = dropping  # type: ignore[method-assign]
    broken.connection_pool.connection_kwargs["retry_on_error"] = []
    with pytest.raises((RedisConnectionError, OSError)):
        accept(intake, settings, "cut")
    assert redis.get(seen_key("sample-app", "cut")) is None
    assert queued(redis) == []
    resend = accept(Intake(redis, settings.server.public_url), settings, "cut")
    assert not resend.duplicate and queued(redis) == [resend.deployment_id]


def test_a_journaled_delivery_drained_twice_is_one_deployment(settings: Settings, redis: Redis) -> None:
    intake = Intake(redis, settings.server.public_url)
    answered = time.time() - 30
    first = accept(intake, settings, deployment_id="20261126120000000-aaaaaa", created_at=answered)
    again = accept(intake, settings, deployment_id="20261126120000000-aaaaaa", created_at=answered)
    assert not first.duplicate and again.duplicate
    assert queued(redis) == ["20261126120000000-aaaaaa"]
    assert DeploymentStore(redis).get(first.deployment_id).created_at == pytest.approx(answered)


def test_a_worker_discards_a_job_without_a_record(settings: Settings, redis: Redis) -> None:
    """The job queued beside a refused claim, should a worker take it before it is deleted."""
    with pytest.raises(UnknownDeployment):
        DeploymentStore(redis).get("20261126120000000-bbbbbb")
    assert Runner(settings, redis).run("20261126120000000-bbbbbb") == "discarded"
