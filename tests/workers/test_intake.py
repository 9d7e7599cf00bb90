"""Accepting a push: one round trip for a new delivery, all of it or nothing, duplicates refused.

Real Redis (db 15, flushed), real RQ. Round trips are counted on a real connection whose class
only tallies what it sends.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue
from rq.job import Job, JobStatus

from workers import defaults, schema
from workers.config import Settings
from workers.deployments import Deployment, DeploymentStore, State, UnknownDeployment
from workers.engine import Engine
from workers.forge import StatusState
from workers.intake import Accepted, Intake, Push, seen_deployment
from workers.outbox import DUE_KEY, recorded
from workers.pipeline import Runner

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
    assert counted.zcard(schema.history("sample-app", "production")) == 1


def test_claim_record_history_status_and_job_are_written_together(settings: Settings, redis: Redis) -> None:
    accepted = accept(Intake(redis, settings.server.public_url), settings, pusher="ada lovelace")
    deployment = DeploymentStore(redis).get(accepted.deployment_id)
    assert (deployment.sha, deployment.pusher, deployment.delivery_id) == (SHA, "ada lovelace", "d-1")
    assert (deployment.previous_sha, deployment.release, deployment.started_at) == ("", "", 0.0)
    assert seen_deployment(redis, "sample-app", "d-1") == accepted.deployment_id
    assert redis.zscore(schema.seen_at("sample-app"), "d-1") == pytest.approx(deployment.created_at)
    score = redis.zscore(schema.history("sample-app", "production"), accepted.deployment_id)
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
    fields = {k.decode() for k in redis.hgetall(schema.record(deployment.id))}
    assert {"id", "project", "environment", "ref", "sha", "state", "created_at"} <= fields
    assert not fields & {"previous_sha", "reason", "started_at", "finished_at", "release"}
    assert DeploymentStore(redis).get(deployment.id) == deployment
    assert recorded(redis, deployment.id) == []  # a ref is resolved (and reported) by the worker


def test_deliveries_without_an_id_are_never_duplicates(settings: Settings, redis: Redis) -> None:
    intake = Intake(redis, settings.server.public_url)
    first, second = accept(intake, settings, ""), accept(intake, settings, "")
    assert not first.duplicate and not second.duplicate
    assert len(queued(redis)) == 2
    assert not redis.exists(schema.seen("sample-app"), schema.seen_at("sample-app"))


def test_delivery_ids_are_per_project(make_settings: Callable[..., Settings], redis: Redis) -> None:
    settings = make_settings()
    intake = Intake(redis, settings.server.public_url)
    accept(intake, settings, "shared")
    redis.delete(schema.seen("sample-app"), schema.seen_at("sample-app"))
    redis.hset(schema.seen("other-app"), "shared", "20261126120000000-000000")
    redis.zadd(schema.seen_at("other-app"), {"shared": time.time()})
    assert not accept(intake, settings, "shared").duplicate


class WithoutExec:
    """A TCP proxy to Redis that forwards a transaction without its EXEC, then hangs up.

    Redis has then received MULTI and every queued command of the accept, and must drop them all.
    """

    EXEC = b"*1\r\n$4\r\nEXEC\r\n"

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.withheld = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        back = threading.Thread(target=self.copy, args=(upstream, client), daemon=True)
        back.start()
        with client, upstream:
            while data := client.recv(65536):
                if self.EXEC in data:
                    upstream.sendall(data.replace(self.EXEC, b""))
                    time.sleep(0.2)  # let Redis queue everything before the hang-up
                    self.withheld.set()
                    break
                upstream.sendall(data)

    @staticmethod
    def copy(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    def close(self) -> None:
        self.listener.close()


def test_a_transaction_without_its_exec_keeps_nothing_so_the_resend_deploys(
    settings: Settings, redis: Redis
) -> None:
    """Claim, record and job are one transaction: no claim is left behind to refuse the resend."""
    options = redis.connection_pool.connection_kwargs
    proxy = WithoutExec((options["host"], options["port"]))
    cut = Redis(port=proxy.port, db=options.get("db", 0), socket_timeout=1.0, retry_on_error=[])
    cut.connection_pool.connection_kwargs["retry"] = None
    try:
        with pytest.raises((RedisConnectionError, RedisTimeoutError, OSError)):
            accept(Intake(cut, settings.server.public_url), settings, "cut")
        assert proxy.withheld.is_set()
    finally:
        proxy.close()
    assert seen_deployment(redis, "sample-app", "cut") is None
    assert redis.zcard(schema.history("sample-app", "production")) == 0
    assert queued(redis) == []
    resend = accept(Intake(redis, settings.server.public_url), settings, "cut")
    assert not resend.duplicate and queued(redis) == [resend.deployment_id]


def test_a_journaled_delivery_drained_twice_is_one_deployment(settings: Settings, redis: Redis) -> None:
    intake = Intake(redis, settings.server.public_url)
    answered = time.time() - 30
    first = accept(intake, settings, deployment_id="20261126120000000-aaaaaa", created_at=answered)
    again = accept(intake, settings, deployment_id="20261126120000000-aaaaaa", created_at=answered)
    assert not first.duplicate and again.duplicate
    [job_id] = queued(redis)
    assert Job.fetch(job_id, connection=redis).args == ("20261126120000000-aaaaaa",)
    assert DeploymentStore(redis).get(first.deployment_id).created_at == pytest.approx(answered)


def test_a_journaled_delivery_without_an_id_is_refused_once_its_record_exists(
    settings: Settings, redis: Redis
) -> None:
    intake = Intake(redis, settings.server.public_url)
    first = accept(intake, settings, "", deployment_id="20261126120000000-cccccc")
    DeploymentStore(redis).transition(first.deployment_id, State.RUNNING)
    again = accept(intake, settings, "", deployment_id="20261126120000000-cccccc")
    assert again.duplicate
    assert DeploymentStore(redis).get(first.deployment_id).state is State.RUNNING  # not reset to queued
    assert len(queued(redis)) == 1


def test_refusing_a_pruned_deliverys_resend_leaves_its_old_job_alone(
    settings: Settings, redis: Redis
) -> None:
    """The record is gone (pruned), the claim is not: the refused attempt must not revive the old job."""
    intake = Intake(redis, settings.server.public_url)
    first = accept(intake, settings, "kept-claim", deployment_id="20261126120000000-dddddd")
    [job_id] = queued(redis)
    job = Job.fetch(job_id, connection=redis)
    Queue(defaults.DEPLOY_QUEUE, connection=redis).remove(job)
    job.set_status(JobStatus.FAILED)
    redis.delete(schema.record(first.deployment_id))
    again = accept(intake, settings, "kept-claim", deployment_id="20261126120000000-dddddd")
    assert again.duplicate and again.deployment_id == first.deployment_id
    assert queued(redis) == []
    assert Job.fetch(job_id, connection=redis).get_status() == JobStatus.FAILED


class FailingCleanup(Connection):
    """A real connection that fails the round trip removing a job, as if Redis went away just then."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        packed = b"".join(command) if isinstance(command, list) else bytes(command)
        if b"LREM" in packed:
            raise RedisConnectionError("Redis went away")
        super().send_packed_command(command, check_health)


def test_a_duplicate_is_still_a_duplicate_when_its_cleanup_fails(
    settings: Settings, redis: Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    intake = Intake(redis, settings.server.public_url)
    first = accept(intake, settings, "twice")
    flaky = Redis.from_url(redis_url, connection_class=FailingCleanup, retry_on_error=[])
    again = accept(Intake(flaky, settings.server.public_url), settings, "twice")
    assert again.duplicate and again.deployment_id == first.deployment_id
    assert "stays queued" in caplog.text
    assert len(queued(redis)) == 2  # the unused one is discarded by the worker that takes it


def test_a_worker_discards_a_job_without_a_record(settings: Settings, redis: Redis) -> None:
    """The job queued beside a refused claim, should a worker take it before it is deleted."""
    with pytest.raises(UnknownDeployment):
        DeploymentStore(redis).get("20261126120000000-bbbbbb")
    assert Runner(Engine.build(settings, redis)).run("20261126120000000-bbbbbb") == "discarded"


def test_a_delivery_id_is_remembered_for_its_window_then_forgotten(settings: Settings, redis: Redis) -> None:
    """One hash and one sorted set per project hold the ids: expired ones go as new ones come."""
    intake = Intake(redis, settings.server.public_url)
    project, environment = settings.projects["sample-app"], settings.environment("sample-app", "production")
    window = defaults.SEEN_DELIVERY_TTL
    old = time.time() - window - 10
    first = intake.accept(project, environment, Push("refs/heads/main", SHA, "a", "old-id"), created_at=old)
    again = intake.accept(project, environment, Push("refs/heads/main", SHA, "a", "old-id"))
    assert not first.duplicate and not again.duplicate  # past the window: a new delivery
    recent = intake.accept(project, environment, Push("refs/heads/main", SHA, "a", "recent-id"))
    assert intake.accept(project, environment, Push("refs/heads/main", SHA, "a", "recent-id")) == Accepted(
        recent.deployment_id, duplicate=True
    )
    for index in range(40):
        intake.accept(
            project, environment, Push("refs/heads/main", SHA, "a", f"stale-{index}"), created_at=old
        )
    intake.accept(project, environment, Push("refs/heads/main", SHA, "a", "newest"))
    remembered = {k.decode() for k in redis.hkeys(schema.seen("sample-app"))}
    assert {"old-id", "recent-id", "newest"} <= remembered
    assert len(remembered) <= 3 + 40 - 32  # each accept drops up to 32 expired ids
    assert redis.zcard(schema.seen_at("sample-app")) == len(remembered)


def test_a_version_1_delivery_key_still_counts_as_seen(settings: Settings, redis: Redis) -> None:
    """During an upgrade an older web node may still write one string key per delivery id."""
    redis.set(schema.seen_v1("sample-app", "from-v1"), "20261126120000000-000001", ex=3600)
    intake = Intake(redis, settings.server.public_url)
    assert accept(intake, settings, "from-v1") == Accepted("20261126120000000-000001", duplicate=True)
