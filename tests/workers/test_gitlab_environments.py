"""Opt-in GitLab environments: a GitLab deployment follows ours from running to its end."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from tests.fakegitlab import FakeGitLab
from tests.helpers import GitRepo, git, use_engine, wait_for
from workers import defaults
from workers.config import Settings
from workers.deployments import Deployment, DeploymentStore
from workers.forge import StatusState, forge_for
from workers.intake import Intake, Push
from workers.outbox import DUE_KEY, Courier
from workers.statuses import report

TOKEN = "gitlab-env-token-canary-3b1f"


@pytest.fixture
def gitlab(git_repo: GitRepo) -> Iterator[FakeGitLab]:
    with FakeGitLab({"tools/sample-app": 42}, token=TOKEN) as fake:
        fake.use_repository(git_repo.url)
        yield fake


def run(settings: Settings, redis: Redis, sha: str, monkeypatch: pytest.MonkeyPatch) -> None:
    use_engine(settings, redis, monkeypatch)
    project = settings.projects["sample-app"]
    Intake(redis, settings.server.public_url).accept(
        project, project.environments["production"], Push("refs/heads/main", sha, "alice", "")
    )
    SimpleWorker([Queue(defaults.DEPLOY_QUEUE, connection=redis)], connection=redis).work(burst=True)
    courier = Courier(redis, forge_for(settings.gitlab), delays=(0.05,))

    def drained() -> bool:
        courier.deliver_due()
        return redis.zcard(DUE_KEY) == 0

    wait_for(drained, timeout=20, what="the outbox to drain")


def drain(settings: Settings, redis: Redis) -> None:
    courier = Courier(redis, forge_for(settings.gitlab), delays=(0.05,))

    def drained() -> bool:
        courier.deliver_due()
        return bool(redis.zcard(DUE_KEY) == 0)

    wait_for(drained, timeout=20, what="the outbox to drain")


def test_a_gitlab_deployment_is_created_running_and_updated_to_success(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    gitlab: FakeGitLab,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(gitlab={"url": gitlab.url, "token": TOKEN}, gitlab_environments=True, build=[])
    sha = git_repo.commit({"app.txt": "x\n"})
    run(settings, redis, sha, monkeypatch)
    [deployment] = gitlab.deployments
    assert (deployment["environment"], deployment["sha"], deployment["ref"]) == ("production", sha, "main")
    assert deployment["history"] == ["running", "success"]
    assert [s["state"] for s in gitlab.statuses(sha=sha)] == ["pending", "running", "success"]


def test_a_failed_deployment_fails_on_gitlab_too(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    gitlab: FakeGitLab,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(
        gitlab={"url": gitlab.url, "token": TOKEN}, gitlab_environments=True, build=["exit 1"]
    )
    run(settings, redis, git_repo.commit({"app.txt": "x\n"}), monkeypatch)
    assert gitlab.deployments[0]["history"] == ["running", "failed"]


def test_without_the_option_no_gitlab_deployment_is_made(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    gitlab: FakeGitLab,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(gitlab={"url": gitlab.url, "token": TOKEN}, build=[])
    run(settings, redis, git_repo.commit({"app.txt": "x\n"}), monkeypatch)
    assert gitlab.deployments == []


def test_a_tag_deployment_reaches_gitlab_as_the_tag(
    make_settings: Callable[..., Settings], git_repo: GitRepo, redis: Redis, gitlab: FakeGitLab
) -> None:
    settings = make_settings(gitlab={"url": gitlab.url, "token": TOKEN}, gitlab_environments=True, build=[])
    sha = git_repo.commit({"app.txt": "v1.2.0\n"})
    git("tag", "v1.2.0", sha, cwd=git_repo.work)
    git("push", "--quiet", "origin", "v1.2.0", cwd=git_repo.work)
    deployment = Deployment("d-tag", "sample-app", "production", "refs/tags/v1.2.0", sha, started_at=1.0)
    DeploymentStore(redis).create(deployment)
    report(redis, settings, deployment, StatusState.RUNNING, "Deploying")
    report(redis, settings, deployment, StatusState.SUCCESS, "Deployed")
    drain(settings, redis)
    [made] = gitlab.deployments
    assert (made["ref"], made["tag"], made["history"]) == ("v1.2.0", True, ["running", "success"])
    assert [(s["ref"], s["state"]) for s in gitlab.statuses(sha=sha)] == [
        ("v1.2.0", "running"),
        ("v1.2.0", "success"),
    ]
