"""The reconciler against a real git remote (and GitLab's branches API on the fake GitLab)."""

from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis

from tests.fakegitlab import FakeGitLab
from tests.helpers import GitRepo
from workers.config import Settings
from workers.deployments import DeploymentStore, State
from workers.reconciler import MISSED, POLLED, Reconciler


def test_a_head_without_a_deployment_is_deployed_after_the_grace_period(
    make_settings: Callable[..., Settings], git_repo: GitRepo, redis: Redis
) -> None:
    settings = make_settings(server={"reconcile_grace": 1})
    head = git_repo.commit({"app.txt": "pushed while the hook was down\n"})
    reconciler = Reconciler(settings, redis)
    env = settings.environment("sample-app", "production")
    project = settings.projects["sample-app"]

    first = reconciler.check(project, env)
    assert (first.verdict, first.head) == ("drift", head)
    time.sleep(1.1)
    second = reconciler.check(project, env)
    assert second.verdict == "queued"
    queued = DeploymentStore(redis).get(second.detail)
    assert (queued.sha, queued.trigger, queued.state) == (head, MISSED, State.QUEUED)
    assert reconciler.check(project, env).verdict == "in sync"  # never twice for one head


def test_polling_projects_deploy_without_waiting(
    make_settings: Callable[..., Settings], git_repo: GitRepo, redis: Redis
) -> None:
    settings = make_settings(trigger="poll", poll_interval=10, secret_token=None, signing_token=None)
    head = git_repo.commit({"app.txt": "polled\n"})
    [finding] = Reconciler(settings, redis).run(only_due=True)
    assert finding.verdict == "queued"
    assert DeploymentStore(redis).get(finding.detail).trigger == POLLED
    assert Reconciler(settings, redis).run(only_due=True) == []  # not due again within its interval
    assert DeploymentStore(redis).get(finding.detail).sha == head


def test_the_gitlab_api_is_asked_first(make_settings: Callable[..., Settings], redis: Redis) -> None:
    with FakeGitLab({"tools/sample-app": 42}, token="reconcile-token") as gitlab:
        gitlab.branch_heads["main"] = "ef" * 20
        settings = make_settings(
            gitlab={"url": gitlab.url, "token": "reconcile-token"}, repo_url="/nonexistent.git"
        )
        finding = Reconciler(settings, redis).check(
            settings.projects["sample-app"], settings.environment("sample-app", "production"), grace=0
        )
    assert (finding.verdict, finding.head) == ("queued", "ef" * 20)


def test_an_unreadable_head_is_reported_not_guessed(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    settings = make_settings(repo_url="/nonexistent.git")
    finding = Reconciler(settings, redis).check(
        settings.projects["sample-app"], settings.environment("sample-app", "production")
    )
    assert finding.verdict == "unknown"
