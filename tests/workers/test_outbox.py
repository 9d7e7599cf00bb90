"""The status outbox: every status arrives, in order, once; refusals are shown, not retried forever."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from tests.fakegitlab import FakeGitLab
from tests.helpers import wait_for
from workers import deploylog, schema
from workers.config import GitLabSettings
from workers.deployments import Deployment, DeploymentStore, State
from workers.forge import CommitStatus, DeploymentUpdate, GitLabForge, StatusState
from workers.outbox import DUE_KEY, Courier, enqueue_status, recorded
from workers.secrets import Secret

TOKEN = "outbox-token-canary-77aa"
SHA = "2e" * 20


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab({"tools/sample-app": 42}, token=TOKEN) as fake:
        fake.add_commit(SHA, "main")
        yield fake


def courier(redis: Redis, fake: FakeGitLab, token: str = TOKEN, timeout: float = 2.0) -> Courier:
    forge = GitLabForge(GitLabSettings(fake.url, Secret(token), timeout), max_retries=0)
    return Courier(redis, forge, delays=(0.05, 0.1))


def queue(redis: Redis, deployment_id: str, *states: StatusState, sha: str = SHA) -> None:
    if not redis.exists(schema.record(deployment_id)):
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


def test_statuses_reach_a_project_renamed_after_it_was_configured(redis: Redis, gitlab: FakeGitLab) -> None:
    """GitLab refuses writes to a moved project's old path (405): they go to its id, asked once."""
    gitlab.rename_project("tools/sample-app", "platform/sample-app")
    queue(redis, "d1", StatusState.PENDING, StatusState.RUNNING, StatusState.SUCCESS)
    drain(courier(redis, gitlab), redis)
    assert [s["state"] for s in gitlab.statuses(sha=SHA)] == ["pending", "running", "success"]
    lookups = [r for r in gitlab.requests if r["method"] == "GET" and "sample-app" in r["path"]]
    assert len(lookups) == 1  # the old path, followed to the id once; the posts use the id
    assert DeploymentStore(redis).get("d1").status_problem == ""


def test_a_refused_token_is_recorded_on_the_deployment_and_not_retried_forever(
    redis: Redis, gitlab: FakeGitLab
) -> None:
    queue(redis, "d1", StatusState.PENDING, StatusState.RUNNING)
    drain(courier(redis, gitlab, token="not-the-token"), redis)
    problem = DeploymentStore(redis).get("d1").status_problem
    assert "401" in problem and "api scope" in problem
    assert gitlab.statuses() == []
    assert len(gitlab.requests) == 2  # one try per status (the project lookup, refused), then shown


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
        gitlab.add_commit(sha, "main")
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


def log_lines(redis: Redis, deployment_id: str) -> list[str]:
    return [line.text for line in deploylog.read(redis, deployment_id)]


def test_a_pipeline_started_between_running_and_success_does_not_capture_our_statuses(
    redis: Redis, gitlab: FakeGitLab
) -> None:
    c = courier(redis, gitlab)
    queue(redis, "d1", StatusState.PENDING, StatusState.RUNNING)
    drain(c, redis)
    scheduled = gitlab.start_pipeline(SHA, "main")  # a schedule, or a maintainer's manual run
    queue(redis, "d1", StatusState.SUCCESS)
    drain(c, redis)
    [ours, theirs] = gitlab.pipelines(sha=SHA, ref="main")
    assert ours["jobs"] == {"deploy/production": "success"}
    assert (theirs["id"], theirs["jobs"]) == (scheduled, {})
    assert {s["pipeline_id"] for s in gitlab.statuses(sha=SHA)} == {ours["id"]}


def test_a_pending_that_landed_unseen_still_pins_its_pipeline(redis: Redis, gitlab: FakeGitLab) -> None:
    gitlab.stall_next(1, 1.5)  # applied, answered too late: the retry is told "already pending"
    c = courier(redis, gitlab, timeout=0.5)
    queue(redis, "d1", StatusState.PENDING)
    drain(c, redis)
    gitlab.start_pipeline(SHA, "main")
    queue(redis, "d1", StatusState.RUNNING, StatusState.SUCCESS)
    drain(c, redis)
    [ours, theirs] = gitlab.pipelines(sha=SHA, ref="main")
    assert (ours["jobs"], theirs["jobs"]) == ({"deploy/production": "success"}, {})


def test_a_deleted_pipeline_is_left_once_and_the_log_says_so(redis: Redis, gitlab: FakeGitLab) -> None:
    c = courier(redis, gitlab)
    queue(redis, "d1", StatusState.PENDING)
    drain(c, redis)
    [gone] = gitlab.pipelines()
    gitlab.delete_pipeline(gone["id"])
    queue(redis, "d1", StatusState.RUNNING, StatusState.SUCCESS)
    drain(c, redis)
    [now] = gitlab.pipelines()
    assert now["jobs"] == {"deploy/production": "success"}
    [said] = [line for line in log_lines(redis, "d1") if str(gone["id"]) in line]
    assert "no longer exists" in said and "newest pipeline of main" in said
    assert DeploymentStore(redis).get("d1").status_problem == ""
    posts = [r for r in gitlab.requests if r["method"] == "POST"]
    assert [r["status"] for r in posts] == [201, 404, 201, 201]  # one try pinned, then unpinned


def test_a_403_on_a_protected_branch_is_said_once_and_not_repeated(redis: Redis, gitlab: FakeGitLab) -> None:
    gitlab.protected_refs.add("main")
    queue(redis, "d1", StatusState.PENDING, StatusState.RUNNING, StatusState.SUCCESS)
    drain(courier(redis, gitlab), redis)
    [said] = [line for line in log_lines(redis, "d1") if "403" in line]
    assert "Maintainer" in said and "unprotect main" in said
    assert "403" in DeploymentStore(redis).get("d1").status_problem
    assert len([r for r in gitlab.requests if r["method"] == "POST"]) == 1
    assert all(r.delivered for r in recorded(redis, "d1"))  # done with, not retried forever


def deployment_update(state: str) -> DeploymentUpdate:
    return DeploymentUpdate("tools/sample-app", SHA, "main", "production", state)


def test_a_gitlab_deployment_whose_create_landed_unseen_is_found_not_made_twice(
    redis: Redis, gitlab: FakeGitLab
) -> None:
    earlier = GitLabForge(GitLabSettings(gitlab.url, Secret(TOKEN), 2.0)).post_deployment(
        deployment_update("success"), ""
    )  # someone else's, before ours: never taken for ours
    queue(redis, "d1")
    gitlab.stall_next(1, 1.5, route="deployments")
    enqueue_status(redis, "d1", deployment_update("running"))
    enqueue_status(redis, "d1", deployment_update("success"))
    drain(courier(redis, gitlab, timeout=0.5), redis)
    assert [(str(d["id"]), d["history"]) for d in gitlab.deployments][1:] == [
        (str(gitlab.deployments[1]["id"]), ["running", "success"])
    ]
    assert len(gitlab.deployments) == 2 and str(gitlab.deployments[0]["id"]) == earlier
    assert gitlab.deployments[0]["history"] == ["success"]
    assert DeploymentStore(redis).get("d1").status_problem == ""


def test_a_final_deployment_update_that_landed_late_is_not_recorded_as_refused(
    redis: Redis, gitlab: FakeGitLab
) -> None:
    queue(redis, "d1")
    enqueue_status(redis, "d1", deployment_update("running"))
    c = courier(redis, gitlab, timeout=0.5)
    drain(c, redis)
    gitlab.stall_next(1, 1.5, route="deployments")
    enqueue_status(redis, "d1", deployment_update("success"))
    drain(c, redis)
    assert [d["history"] for d in gitlab.deployments] == [["running", "success"]]
    assert DeploymentStore(redis).get("d1").status_problem == ""


def test_deployments_pruning_skipped_while_statuses_were_owed_go_once_gitlab_has_them(
    redis: Redis, gitlab: FakeGitLab
) -> None:
    """Pruning never drops a deployment whose statuses GitLab does not have yet; the courier prunes
    it once they are delivered, so a burst ended while GitLab lagged leaves no extra history."""
    store = DeploymentStore(redis)
    ids = [f"2026120200000{index:04d}-abcdef" for index in range(6)]
    for deployment_id in ids:
        queue(redis, deployment_id, StatusState.PENDING, StatusState.CANCELED)
        store.transition(deployment_id, State.CANCELED, "superseded")
    assert store.prune_history("sample-app", "production", 2) == []  # every one still owes GitLab
    c = Courier(redis, GitLabForge(GitLabSettings(gitlab.url, Secret(TOKEN), 2.0)), keep_deployments=2)
    drain(c, redis)
    assert [d.id for d in store.history("sample-app", "production", limit=10)] == ids[-2:][::-1]
    assert store.kept([("sample-app", "production")])[("sample-app", "production")]["canceled"] == 2
