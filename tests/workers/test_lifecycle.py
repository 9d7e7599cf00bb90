"""Every way a deployment ends goes through one lifecycle, and every ending leaves the same traces.

Each path is driven for real (a real RQ worker, real git, real steps, a real HTTP health check
target) and then checked alike: one terminal state, one final status, the finished counter
counted once with that state, history pruned to ``keep_deployments``, and the lane handed on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from redis import Redis
from rq import Queue, SimpleWorker, Worker
from rq.exceptions import AbandonedJobError

from tests.helpers import GitRepo, Health, use_engine, wait_for
from workers import defaults, lanes, schema, telemetry
from workers.config import Settings
from workers.control import cancel
from workers.deployments import Deployment, DeploymentStore, State, new_id
from workers.intake import Intake, Push
from workers.lanes import Lane
from workers.outbox import recorded
from workers.recovery import horse_killed, job_failed

KEEP = 3
FINAL = {State.SUCCEEDED: "success", State.FAILED: "failed", State.CANCELED: "canceled"}


@pytest.fixture
def health() -> Iterator[Health]:
    target = Health()
    yield target
    target.close()


@dataclass
class Env:
    settings: Settings
    redis: Redis
    repo: GitRepo

    @property
    def store(self) -> DeploymentStore:
        return DeploymentStore(self.redis)

    def accept(self, files: dict[str, str] | None = None) -> str:
        project = self.settings.projects["sample-app"]
        sha = self.repo.commit(files or {"app.txt": str(time.time())})
        push = Push("refs/heads/main", sha, "alice", "")
        return (
            Intake(self.redis, self.settings.server.public_url)
            .accept(project, project.environments["production"], push)
            .deployment_id
        )

    def work(self) -> None:
        SimpleWorker([Queue(defaults.DEPLOY_QUEUE, connection=self.redis)], connection=self.redis).work(
            burst=True
        )

    def waiter_when_running(self, deployment_id: str) -> dict[str, str]:
        """Once ``deployment_id`` runs, put a newer deployment in its lane's waiting slot."""
        found: dict[str, str] = {}

        def wait_then_claim() -> None:
            wait_for(
                lambda: self.store.runtime(deployment_id).lane_token != "", what="it to run", interval=0.02
            )
            waiter = Deployment(new_waiter_id(), "sample-app", "production", "refs/heads/main", "a" * 40)
            self.store.create(waiter)
            assert Lane(self.redis, "sample-app", "production").claim(waiter.id).verdict is lanes.Verdict.WAIT
            found["id"] = waiter.id

        threading.Thread(target=wait_then_claim, daemon=True).start()
        return found


def new_waiter_id() -> str:
    return new_id(time.time() + 3600)  # newer than everything the test made


@pytest.fixture
def env(
    make_settings: Callable[..., Settings],
    redis: Redis,
    git_repo: GitRepo,
    monkeypatch: pytest.MonkeyPatch,
    health: Health,
    request: pytest.FixtureRequest,
) -> Env:
    overrides = getattr(request, "param", {})
    settings = make_settings(
        server={"keep_deployments": KEEP},
        build=overrides.get("build", ["sleep 0.5"]),  # long enough for a test to see it running
        deploy=["true"],
        timeout=overrides.get("timeout", 60),
        health_check={"url": health.url, "timeout": 1},
    )
    use_engine(settings, redis, monkeypatch)
    made = Env(settings, redis, git_repo)
    for index in range(KEEP + 2):  # ended history beyond keep_deployments, statuses all delivered
        old = Deployment(
            new_id(time.time() - 100 + index), "sample-app", "production", "refs/heads/main", "b" * 40
        )
        made.store.create(old)
        made.store.transition(old.id, State.CANCELED, "old")
    return made


def assert_ended_once(env: Env, deployment_id: str, state: State, lane_held: bool, waiter: str = "") -> None:
    ended = env.store.get(deployment_id)
    assert ended.state is state, ended.reason
    assert env.redis.hget(schema.record(deployment_id), schema.ENDING_FIELD) is None  # the ending completed
    finals = [r.status.state for r in recorded(env.redis, deployment_id) if r.status.state in FINAL.values()]
    assert finals == [FINAL[state]]
    expected = {str(state): 1}
    if lane_held and waiter:
        after = env.store.get(waiter)
        if after.state.terminal:  # handed on, and the same worker already ran it
            expected[str(after.state)] = expected.get(str(after.state), 0) + 1
        else:  # handed on: its job is queued
            jobs = Queue(defaults.DEPLOY_QUEUE, connection=env.redis).get_jobs()
            assert [job.args[0] for job in jobs] == [waiter]
    assert telemetry.counters(env.redis, "finished") == expected
    history = env.store.history("sample-app", "production", limit=1000)
    assert deployment_id in {d.id for d in history}
    assert len([d for d in history if d.state.terminal]) <= KEEP
    assert Lane(env.redis, "sample-app", "production").holder() == ""  # nothing left to time out


def run_with_waiter(env: Env, deployment_id: str) -> str:
    waiter = env.waiter_when_running(deployment_id)
    env.work()
    return waiter["id"]


def test_success(env: Env, health: Health) -> None:
    deployment_id = env.accept()
    waiter = run_with_waiter(env, deployment_id)
    assert_ended_once(env, deployment_id, State.SUCCEEDED, lane_held=True, waiter=waiter)
    assert env.store.live("sample-app", "production")["deployment"] == deployment_id


@pytest.mark.parametrize("env", [{"build": ["sleep 0.5; exit 3"]}], indirect=True)
def test_failed_step(env: Env) -> None:
    deployment_id = env.accept()
    waiter = run_with_waiter(env, deployment_id)
    assert_ended_once(env, deployment_id, State.FAILED, lane_held=True, waiter=waiter)
    assert "exited with 3" in env.store.get(deployment_id).reason


def test_failed_health_check_with_rollback(env: Env, health: Health) -> None:
    first = env.accept()
    env.work()
    env.redis.delete(telemetry.counter_key("finished"))
    health.code = 500
    second = env.accept()
    waiter = run_with_waiter(env, second)
    assert_ended_once(env, second, State.FAILED, lane_held=True, waiter=waiter)
    assert "rolled back to" in env.store.get(second).reason
    assert env.store.live("sample-app", "production")["deployment"] == first


@pytest.mark.parametrize("env", [{"build": ["sleep 30"], "timeout": 2}], indirect=True)
def test_timeout(env: Env) -> None:
    deployment_id = env.accept()
    waiter = run_with_waiter(env, deployment_id)
    assert_ended_once(env, deployment_id, State.FAILED, lane_held=True, waiter=waiter)
    assert "ran out of time" in env.store.get(deployment_id).reason


def test_cancel_while_queued(env: Env) -> None:
    deployment_id = env.accept()
    assert cancel(env.settings, env.redis, deployment_id, "operator") is State.CANCELED
    assert_ended_once(env, deployment_id, State.CANCELED, lane_held=False)
    env.work()  # its job finds it ended and does nothing
    assert telemetry.counters(env.redis, "finished") == {"canceled": 1}


@pytest.mark.parametrize("env", [{"build": ["sleep 30"]}], indirect=True)
def test_cancel_while_running(env: Env) -> None:
    deployment_id = env.accept()
    waiter = env.waiter_when_running(deployment_id)

    def cancel_when_waiting() -> None:
        wait_for(lambda: "id" in waiter, what="the waiter")
        cancel(env.settings, env.redis, deployment_id, "operator")

    threading.Thread(target=cancel_when_waiting, daemon=True).start()
    env.work()
    assert_ended_once(env, deployment_id, State.CANCELED, lane_held=True, waiter=waiter["id"])


def test_superseded(env: Env) -> None:
    older = env.accept()
    newer = env.accept()
    env.work()
    ended = env.store.get(older)
    assert ended.reason == f"superseded by {newer}"
    assert env.store.get(newer).state is State.SUCCEEDED
    finals = [r.status.state for r in recorded(env.redis, older) if r.status.state in FINAL.values()]
    assert finals == ["canceled"]
    assert telemetry.counters(env.redis, "finished") == {"canceled": 1, "succeeded": 1}
    history = env.store.history("sample-app", "production", limit=1000)
    assert len([d for d in history if d.state.terminal]) <= KEEP


def test_worker_lost(env: Env) -> None:
    """A whole worker died: another worker's maintenance calls the job's failure callback."""
    deployment_id = env.accept()
    claim = Lane(env.redis, "sample-app", "production").claim(deployment_id)
    env.store.transition(deployment_id, State.RUNNING, lane_token=claim.token)
    waiter = env.waiter_when_running(deployment_id)
    wait_for(lambda: "id" in waiter, what="the waiter")
    job = Queue(defaults.DEPLOY_QUEUE, connection=env.redis).fetch_job(deployment_id)
    assert job is not None
    job_failed(job, env.redis, AbandonedJobError, AbandonedJobError(), None)
    job_failed(job, env.redis, AbandonedJobError, AbandonedJobError(), None)  # told twice: ends once
    Queue(defaults.DEPLOY_QUEUE, connection=env.redis).remove(deployment_id)
    assert_ended_once(env, deployment_id, State.FAILED, lane_held=True, waiter=waiter["id"])
    assert env.store.get(deployment_id).reason == "worker lost (AbandonedJobError)"


@pytest.mark.parametrize("env", [{"build": ["kill -9 $PPID; sleep 30"]}], indirect=True)
def test_work_horse_killed(env: Env) -> None:
    """The process running the deployment dies: its own worker notices at once."""
    deployment_id = env.accept()
    waiter = env.waiter_when_running(deployment_id)
    queue = Queue(defaults.DEPLOY_QUEUE, connection=env.redis)
    worker = Worker([queue], connection=env.redis, work_horse_killed_handler=horse_killed)
    worker.work(burst=True, max_jobs=1)
    wait_for(lambda: "id" in waiter, what="the waiter")
    assert_ended_once(env, deployment_id, State.FAILED, lane_held=True, waiter=waiter["id"])
    assert env.store.get(deployment_id).reason.startswith("worker lost (work-horse signal 9)")


def steal_lane(env: Env) -> None:
    """What an expired lock looks like to its old holder: another deployment holds the lane now."""
    env.redis.set(Lane(env.redis, "sample-app", "production").lock_key, "someone-else:token")


@pytest.mark.parametrize("env", [{"build": ["sleep 1"]}], indirect=True)
def test_a_lane_lost_during_the_build_stops_before_current_is_switched(env: Env) -> None:
    deployment_id = env.accept()

    def steal_when_running() -> None:
        wait_for(lambda: env.store.runtime(deployment_id).lane_token != "", what="it to run", interval=0.02)
        steal_lane(env)

    threading.Thread(target=steal_when_running, daemon=True).start()
    env.work()
    ended = env.store.get(deployment_id)
    assert ended.state is State.FAILED
    assert ended.reason.startswith("lost the environment's lane")
    assert "before switching current" in ended.reason
    assert not (env.settings.server.data_dir / "projects/sample-app/production/current").exists()
    assert Lane(env.redis, "sample-app", "production").holder() == "someone-else"  # not released by us


@pytest.mark.parametrize("env", [{"build": ["sleep 30"]}], indirect=True)
def test_a_lease_lost_mid_step_kills_the_step(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "RENEW_EVERY", 0.2)
    deployment_id = env.accept()

    def steal_when_running() -> None:
        wait_for(lambda: env.store.runtime(deployment_id).lane_token != "", what="it to run", interval=0.02)
        time.sleep(0.5)
        steal_lane(env)

    threading.Thread(target=steal_when_running, daemon=True).start()
    started = time.monotonic()
    env.work()
    assert time.monotonic() - started < 15  # the 30 s step was killed, not waited for
    ended = env.store.get(deployment_id)
    assert (ended.state, ended.reason.startswith("lost the environment's lane")) == (State.FAILED, True)
    assert [s.phase for s in env.store.steps(deployment_id)] == ["build"]
    assert not (env.settings.server.data_dir / "projects/sample-app/production/current").exists()
