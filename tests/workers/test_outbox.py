"""The status outbox: every status arrives, in order, once; refusals are shown, not retried forever."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from tests.fakegitlab import FakeGitLab
from tests.helpers import wait_for
from workers.config import GitLabSettings
from workers.deployments import Deployment, DeploymentStore
from workers.forge import CommitStatus, GitLabForge, StatusState
from workers.outbox import DUE_KEY, Courier, enqueue_status, recorded
from workers.secrets import Secret

TOKEN = "outbox-token-canary-77aa"
SHA = "2e" * 20


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab({"tools/sample-app": 42}, token=TOKEN) as fake:
        yield fake


def courier(redis: Redis, fake: FakeGitLab, token: str = TOKEN) -> Courier:
    forge = GitLabForge(GitLabSettings(fake.url, Secret(token), 2.0), max_retries=0)
    return Courier(redis, forge, delays=(0.05, 0.1))


def queue(redis: Redis, deployment_id: str, *states: StatusState, sha: str = SHA) -> None:
    DeploymentStore(redis).create(
        Deployment(deployment_id, "sample-app", "production", "refs/heads/main", sha)
    )
    for state in states:
        status = CommitStatus(
            "tools/sample-app",
            sha,
            state,
            "main",
            "deploy/production",
            f"http://pushdeploy.test/deployments/{deployment_id}",
            state.value,
        )
        enqueue_status(redis, deployment_id, status)


def drain(c: Courier, redis: Redis, timeout: float = 20.0) -> None:
    def empty() -> bool:
        c.deliver_due()
        return redis.zcard(DUE_KEY) == 0

    wait_for(empty, timeout=timeout, interval=0.05, what="the outbox to drain")


def test_statuses_arrive_in_order_once(redis: Redis, gitlab: FakeGitLab) -> None:
    queue(redis, "d1", StatusState.PENDING, StatusState.RUNNING, StatusState.SUCCESS)
    drain(courier(redis, gitlab), redis)
    assert [s["state"] for s in gitlab.statuses(sha=SHA)] == ["pending", "running", "success"]
    assert all(r.delivered for r in recorded(redis, "d1"))


def test_5xx_then_429_still_delivers_everything_in_order_once(redis: Redis, gitlab: FakeGitLab) -> None:
    gitlab.fail_next(5, 503)
    gitlab.fail_next(1, 429, headers={"Retry-After": "1"})
    queue(redis, "d1", StatusState.PENDING, StatusState.RUNNING, StatusState.FAILED)
    drain(courier(redis, gitlab), redis)
    assert [s["state"] for s in gitlab.statuses(sha=SHA)] == ["pending", "running", "failed"]
    assert gitlab.pending_faults == 0


def test_a_refused_token_is_recorded_on_the_deployment_and_not_retried_forever(
    redis: Redis, gitlab: FakeGitLab
) -> None:
    queue(redis, "d1", StatusState.PENDING, StatusState.RUNNING)
    drain(courier(redis, gitlab, token="not-the-token"), redis)
    problem = DeploymentStore(redis).get("d1").status_problem
    assert "401" in problem and "api scope" in problem
    assert gitlab.statuses() == []
    posts = [r for r in gitlab.requests if r["method"] == "POST"]
    assert len(posts) == 2  # one try per status, then it is shown, not hammered


def test_a_status_added_while_delivering_is_not_lost(redis: Redis, gitlab: FakeGitLab) -> None:
    queue(redis, "d1", StatusState.PENDING)
    c = courier(redis, gitlab)
    c.deliver_due()
    enqueue_status(
        redis,
        "d1",
        CommitStatus(
            "tools/sample-app",
            SHA,
            StatusState.RUNNING,
            "main",
            "deploy/production",
            "http://pushdeploy.test/deployments/d1",
            "run",
        ),
    )
    drain(c, redis)
    assert [s["state"] for s in gitlab.statuses(sha=SHA)] == ["pending", "running"]


def test_two_couriers_deliver_each_status_once(redis: Redis, gitlab: FakeGitLab) -> None:
    for index in range(10):
        sha = f"{index:02d}" * 20
        queue(redis, f"d{index}", StatusState.PENDING, StatusState.RUNNING, StatusState.SUCCESS, sha=sha)
    couriers = [courier(redis, gitlab), courier(redis, gitlab)]
    threads = [c.start() for c in couriers]
    wait_for(lambda: redis.zcard(DUE_KEY) == 0, timeout=30, what="both couriers to drain the outbox")
    for c in couriers:
        c.stop()
    for t in threads:
        t.join(timeout=5)
    for index in range(10):
        assert [s["state"] for s in gitlab.statuses(sha=f"{index:02d}" * 20)] == [
            "pending",
            "running",
            "success",
        ]


def test_the_courier_thread_waits_out_a_gitlab_outage(redis: Redis, gitlab: FakeGitLab) -> None:
    c = courier(redis, gitlab)
    gitlab.stop()
    queue(redis, "d1", StatusState.PENDING)
    thread = threading.Thread(target=c.run, daemon=True)
    thread.start()
    time.sleep(0.5)
    assert redis.zcard(DUE_KEY) == 1  # still waiting, nothing dropped
    c.stop()
    thread.join(timeout=5)
