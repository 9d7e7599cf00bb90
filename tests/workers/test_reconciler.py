"""The reconciler against a real git remote (and GitLab's branches API on the fake GitLab)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from tests.fakegitlab import FakeGitLab
from tests.helpers import GitRepo, git, use_engine
from workers import defaults
from workers.config import Settings
from workers.deployments import DeploymentStore, State
from workers.intake import Intake, Push
from workers.reconciler import MISSED, POLLED, Reconciler


def work(settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every queued job with a real RQ worker in this process, on this config."""
    use_engine(settings, redis, monkeypatch)
    SimpleWorker([Queue(defaults.DEPLOY_QUEUE, connection=redis)], connection=redis).work(burst=True)


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


def test_a_push_of_four_branches_which_gitlab_announces_to_no_hook_is_deployed(
    make_settings: Callable[..., Settings], git_repo: GitRepo, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GitLab sends no push hook at all when one push updates more than 3 branches."""
    settings = make_settings()
    project, env = settings.projects["sample-app"], settings.environment("sample-app", "production")
    for branch in ("docs", "staging", "hotfix"):
        git_repo.commit({"notes.txt": f"{branch}\n"}, branch, branch=branch)
    deployed = git_repo.commit({"app.txt": "v1\n"}, "deployed through the webhook")
    Intake(redis, settings.server.public_url).accept(
        project, env, Push("refs/heads/main", deployed, "alice", "")
    )
    work(settings, redis, monkeypatch)
    assert Reconciler(settings, redis).check(project, env).verdict == "in sync"

    branches = ("docs", "staging", "hotfix", "main")
    for branch in branches:  # four existing branches get a commit each, then one push sends them all
        git("checkout", "--quiet", branch, cwd=git_repo.work)
        (git_repo.work / "app.txt").write_text(f"v2 on {branch}\n")
        git("commit", "--quiet", "--all", "-m", f"v2 on {branch}", cwd=git_repo.work)
    before = {b: git("rev-parse", b, cwd=git_repo.bare) for b in branches}
    git("push", "--quiet", "origin", *branches, cwd=git_repo.work)
    after = {b: git("rev-parse", b, cwd=git_repo.bare) for b in branches}
    assert all(after[b] != before[b] for b in branches)  # 4 updates > push_event_hooks_limit (3)
    head = after["main"]
    assert DeploymentStore(redis).history("sample-app", "production", limit=1)[0].sha == deployed

    finding = Reconciler(settings, redis).check(project, env, grace=0)
    assert (finding.verdict, finding.head) == ("queued", head)
    work(settings, redis, monkeypatch)

    done = DeploymentStore(redis).get(finding.detail)
    assert (done.state, done.sha, done.trigger) == (State.SUCCEEDED, head, MISSED)
    current = settings.server.data_dir / "projects" / "sample-app" / "production" / "current"
    assert os.readlink(current) == f"releases/{done.id}"
    assert (current / "app.txt").read_text() == "v2 on main\n"
