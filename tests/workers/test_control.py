"""Cancel and supersede, run through a real RQ worker against real Redis and git."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from tests.helpers import GitRepo, use_engine, wait_for
from workers import defaults
from workers.config import Settings
from workers.control import NotCancelable, cancel
from workers.deployments import DeploymentStore, State
from workers.intake import Intake, Push
from workers.lanes import Lane
from workers.outbox import recorded


def accept(redis: Redis, settings: Settings, sha: str) -> str:
    project = settings.projects["sample-app"]
    environment = project.environments["production"]
    return (
        Intake(redis, settings.server.public_url)
        .accept(project, environment, Push("refs/heads/main", sha, "alice", ""))
        .deployment_id
    )


def work(redis: Redis) -> None:
    SimpleWorker([Queue(defaults.DEPLOY_QUEUE, connection=redis)], connection=redis).work(burst=True)


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    made = make_settings(build=["sleep 0"], deploy=[])
    use_engine(made, redis, monkeypatch)
    return made


def test_queued_pushes_behind_a_running_one_collapse_to_the_newest(
    settings: Settings, redis: Redis, git_repo: GitRepo
) -> None:
    store = DeploymentStore(redis)
    running = accept(redis, settings, git_repo.commit({"app.txt": "0"}))
    store.transition(running, State.RUNNING)  # as if a worker elsewhere had started it
    claim = Lane(redis, "sample-app", "production").claim(running)
    time.sleep(0.01)
    later = []
    for index in range(1, 10):
        later.append(accept(redis, settings, git_repo.commit({"app.txt": str(index)})))
        time.sleep(0.002)

    work(redis)
    newest = later[-1]
    for deployment_id in later[:-1]:
        ended = store.get(deployment_id)
        assert (ended.state, ended.reason) == (State.CANCELED, f"superseded by {newest}")
        assert [r.status.state for r in recorded(redis, deployment_id)] == ["pending", "canceled"]
    assert store.get(newest).state is State.QUEUED  # waiting for the lane

    released = Lane(redis, "sample-app", "production").release(claim.token)
    assert released.waiting == newest
    from workers.intake import enqueue_job

    enqueue_job(
        Queue(defaults.DEPLOY_QUEUE, connection=redis),
        newest,
        settings.environment("sample-app", "production"),
        f"{newest}-again",
    )
    work(redis)
    assert store.get(newest).state is State.SUCCEEDED


def test_cancel_a_queued_deployment(settings: Settings, redis: Redis, git_repo: GitRepo) -> None:
    deployment_id = accept(redis, settings, git_repo.commit({"app.txt": "x"}))
    assert cancel(settings, redis, deployment_id, "operator") is State.CANCELED
    work(redis)  # its job finds it canceled and does nothing
    ended = DeploymentStore(redis).get(deployment_id)
    assert (ended.state, ended.reason) == (State.CANCELED, "canceled by operator")
    assert [r.status.state for r in recorded(redis, deployment_id)] == ["pending", "canceled"]
    with pytest.raises(NotCancelable):
        cancel(settings, redis, deployment_id, "operator")


def test_cancel_a_running_deployment_kills_its_step(
    make_settings: Callable[..., Settings],
    redis: Redis,
    git_repo: GitRepo,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
) -> None:
    settings = make_settings(build=["sleep 600 & echo $! > ../../sleeper.pid; wait"], deploy=[])
    use_engine(settings, redis, monkeypatch)
    deployment_id = accept(redis, settings, git_repo.commit({"app.txt": "x"}))
    worker = subprocess.Popen(
        [sys.executable, "-m", "webhook.cli", "--config", str(settings.path), "worker", "--burst"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = DeploymentStore(redis)
    wait_for(
        lambda: (
            store.steps(deployment_id) == []
            and store.get(deployment_id).state is State.RUNNING
            and (settings.server.data_dir / "projects/sample-app/production/sleeper.pid").exists()
        ),
        timeout=20,
        what="the build step to start",
    )
    pid = int((settings.server.data_dir / "projects/sample-app/production/sleeper.pid").read_text())

    assert cancel(settings, redis, deployment_id, "alice") is State.RUNNING
    assert worker.wait(timeout=30) == 0

    ended = store.get(deployment_id)
    assert (ended.state, ended.reason) == (State.CANCELED, "canceled by alice")
    assert not (settings.server.data_dir / "projects/sample-app/production/current").exists()
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)
    assert [r.status.state for r in recorded(redis, deployment_id)] == ["pending", "running", "canceled"]
