"""A deployment's statuses stay in one GitLab pipeline while GitLab starts others for its commit.

The real deployment job runs in a thread (a real RQ SimpleWorker) and a real courier thread posts
its statuses to the fake GitLab; the test starts a pipeline for the same sha and ref, as a schedule
or a maintainer would, while the build is running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from tests.fakegitlab import FakeGitLab
from tests.helpers import GitRepo, use_engine, wait_for
from workers import defaults, deploylog
from workers.config import Settings
from workers.deployments import DeploymentStore, State
from workers.forge import forge_for
from workers.intake import Intake, Push
from workers.outbox import DUE_KEY, Courier

TOKEN = "status-pipelines-token-canary-5d0e"
NAME = "deploy/production"


@pytest.fixture
def gitlab(git_repo: GitRepo) -> Iterator[FakeGitLab]:
    with FakeGitLab({"tools/sample-app": 42}, token=TOKEN) as fake:
        fake.use_repository(git_repo.url)
        yield fake


@pytest.fixture
def courier(redis: Redis, gitlab: FakeGitLab) -> Iterator[Callable[[Settings], Courier]]:
    started: list[tuple[Courier, threading.Thread]] = []

    def start(settings: Settings) -> Courier:
        own = Redis.from_url(settings.server.redis_url)  # a thread of its own, a client of its own
        made = Courier(own, forge_for(settings.gitlab), delays=(0.05,))
        started.append((made, made.start()))
        return made

    yield start
    for made, thread in started:
        made.stop()
        thread.join(timeout=5)


def deploy(settings: Settings, redis: Redis, sha: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Accept a push of ``sha`` and run the deployment job with a real RQ worker, in this thread."""
    use_engine(settings, redis, monkeypatch)
    project = settings.projects["sample-app"]
    accepted = Intake(redis, settings.server.public_url).accept(
        project, project.environments["production"], Push("refs/heads/main", sha, "alice", "")
    )
    SimpleWorker([Queue(defaults.DEPLOY_QUEUE, connection=redis)], connection=redis).work(burst=True)
    return accepted.deployment_id


def states_in(gitlab: FakeGitLab, sha: str) -> list[dict[str, str]]:
    return [p["jobs"] for p in gitlab.pipelines(sha=sha, ref="main")]


def test_a_pipeline_started_mid_deployment_does_not_capture_our_later_statuses(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    gitlab: FakeGitLab,
    courier: Callable[[Settings], Courier],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    go = tmp_path / "go"
    settings = make_settings(
        gitlab={"url": gitlab.url, "token": TOKEN}, build=[f"while [ ! -e {go} ]; do sleep 0.05; done"]
    )
    sha = git_repo.commit({"app.txt": "v2\n"})
    courier(settings)
    started: list[int] = []

    def schedule_while_building() -> None:
        try:
            wait_for(lambda: states_in(gitlab, sha) == [{NAME: "running"}], timeout=30, what="running")
            started.append(gitlab.start_pipeline(sha, "main"))  # a schedule fires while we build
        finally:
            go.touch()  # the build ends either way; the assertions below say what went wrong

    scheduler = threading.Thread(target=schedule_while_building, daemon=True)
    scheduler.start()
    deployment_id = deploy(settings, redis, sha, monkeypatch)
    scheduler.join(timeout=5)
    [scheduled] = started
    assert DeploymentStore(redis).get(deployment_id).state is State.SUCCEEDED
    wait_for(lambda: redis.zcard(DUE_KEY) == 0, timeout=30, what="the outbox to drain")
    [ours, theirs] = gitlab.pipelines(sha=sha, ref="main")
    assert ours["jobs"] == {NAME: "success"}  # never left running
    assert (theirs["id"], theirs["jobs"]) == (scheduled, {})
    assert [s["state"] for s in gitlab.statuses(sha=sha)] == ["pending", "running", "success"]


def test_a_protected_branch_refusal_is_said_once_in_the_log(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    gitlab: FakeGitLab,
    courier: Callable[[Settings], Courier],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gitlab.protected_refs.add("main")
    settings = make_settings(gitlab={"url": gitlab.url, "token": TOKEN}, build=[])
    courier(settings)
    deployment_id = deploy(settings, redis, git_repo.commit({"a": "1\n"}), monkeypatch)
    wait_for(lambda: redis.zcard(DUE_KEY) == 0, timeout=30, what="the outbox to drain")
    record = DeploymentStore(redis).get(deployment_id)
    assert record.state is State.SUCCEEDED  # GitLab refusing statuses never fails a deployment
    said = [line.text for line in deploylog.read(redis, deployment_id) if "403 Forbidden" in line.text]
    assert len(said) == 1 and "Maintainer" in said[0] and "unprotect main" in said[0]
    assert [r["status"] for r in gitlab.requests if r["method"] == "POST"] == [403]
