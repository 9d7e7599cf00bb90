"""Data written by the release at 83260a9 (layout 1) reads back the same after today's migration.

The fixture (``tests/fixtures/schema_v1``) was made by running that release; these tests load it
into the test database, migrate it as a starting web process or worker would, and read it through
today's stores: everything still reads back as the old release wrote it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.registry import StartedJobRegistry

from tests.fakegitlab import FakeGitLab
from tests.fixtures import schema_v1
from tests.fixtures.schema_v1 import redisjson, repo
from tests.helpers import use_engine
from webhook.app import create_app
from workers import defaults, deploylog, migrations, schema
from workers.config import load
from workers.deployments import DeploymentStore, Runtime, State
from workers.forge import forge_for
from workers.intake import Intake, Push, seen_deployment
from workers.lanes import Lane
from workers.outbox import DUE_KEY, Courier, recorded, statuses_key

FIXTURE = schema_v1.expected()
FINAL_STATES = {State.SUCCEEDED: "success", State.FAILED: "failed", State.CANCELED: "canceled"}


@pytest.fixture
def raw(redis: Redis) -> Redis:
    schema_v1.load(redis)
    return redis


@pytest.fixture
def loaded(raw: Redis) -> Redis:
    """The fixture after the migration every process runs at start."""
    assert migrations.version(raw) == 1
    assert migrations.ensure(raw) == 1
    assert migrations.version(raw) == schema.VERSION
    return raw


def test_the_fixture_holds_every_kind_of_deployment_an_upgrade_meets() -> None:
    states = {state: [d.label for d in FIXTURE.in_state(state)] for state in State}
    assert states == {
        State.QUEUED: ["S4", "A5", "W6"],
        State.RUNNING: ["S2"],
        State.SUCCEEDED: ["W1", "W2", "W5", "A1", "A3", "A4", "S1"],
        State.FAILED: ["W3"],
        State.CANCELED: ["W4", "A2", "S3"],
    }
    deployments = FIXTURE.deployments
    assert deployments["W4"].record["reason"] == f"superseded by {deployments['W5'].id}"
    assert deployments["S3"].record["reason"] == f"superseded by {deployments['S4'].id}"
    assert deployments["A2"].record["reason"] == "canceled by alice"
    assert deployments["A4"].record["reuse_release"] == deployments["A1"].id
    assert {d.label for d in deployments.values() if d.queued_job} == {"A5", "W6"}
    assert deployments["W6"].queued_job.startswith(f"{deployments['W6'].id}-")  # drained from the journal
    staging = FIXTURE.lanes[("web", "staging")]
    assert (staging.holder, staging.waiting) == (deployments["S2"].id, deployments["S4"].id)
    assert set(FIXTURE.undelivered()) == {
        deployments[label].id for label in ("W1", "S2", "S3", "S4", "A5", "W6")
    }


def test_every_key_comes_back_with_its_type_value_and_ttl(raw: Redis) -> None:
    started = time.monotonic()
    original = {_name(e): e for e in redisjson.read(schema_v1.DUMP)["keys"]}
    restored = {_name(e): e for e in redisjson.dump(raw)["keys"]}
    elapsed_ms = (time.monotonic() - started) * 1000 + 1000

    assert len(restored) == FIXTURE.key_count
    assert set(restored) == set(original)
    for name, entry in original.items():
        again = restored[name]
        assert (again["type"], again["value"]) == (entry["type"], entry["value"]), name
        if entry["ttl_ms"] is None:
            assert again["ttl_ms"] is None, name
        else:
            assert entry["ttl_ms"] - elapsed_ms <= again["ttl_ms"] <= entry["ttl_ms"], name


def test_records_steps_and_logs_read_back_as_written(loaded: Redis) -> None:
    store = DeploymentStore(loaded)
    for deployment in FIXTURE.deployments.values():
        public = store.get(deployment.id).public()
        assert {k: public[k] for k in deployment.record} == deployment.record, deployment.label
        added = {k: v for k, v in public.items() if k not in deployment.record}
        assert all(v in ("", None) for k, v in added.items() if k != "triggered_by"), (
            deployment.label,
            added,
        )
        # Attribution added since reads as empty on old records; triggered_by derives from the rest.
        assert (public["requested_by"], public["canceled_by"]) == ("", ""), deployment.label
        assert [asdict(s) for s in store.steps(deployment.id)] == deployment.steps, deployment.label
        lines = [asdict(line) for line in deploylog.read(loaded, deployment.id)]
        assert lines == deployment.log, deployment.label
    failed = FIXTURE.deployments["W3"]
    [build] = store.steps(failed.id)
    assert (build.phase, build.exit_code) == ("build", 3)
    assert "error: app.txt:1: unexpected end of input" in build.tail


def test_the_running_deployment_keeps_its_worker_fields(loaded: Redis) -> None:
    running = FIXTURE.deployments["S2"]
    extra = running.extra_fields
    assert DeploymentStore(loaded).runtime(running.id) == Runtime(
        extra["host"], extra["step_pgid"], extra["lane_token"]
    )
    assert extra["step_pgid"].isdigit()
    assert extra["lane_token"] == FIXTURE.lanes[("web", "staging")].token
    queue = Queue(defaults.DEPLOY_QUEUE, connection=loaded)
    assert running.id in StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)


def test_statuses_and_what_is_left_to_deliver(loaded: Redis) -> None:
    for deployment in FIXTURE.deployments.values():
        got = [
            {"state": str(r.status.state), "description": r.status.description, "delivered": r.delivered}
            for r in recorded(loaded, deployment.id)
        ]
        assert got == deployment.statuses, deployment.label
        assert (loaded.zscore(DUE_KEY, deployment.id) is not None) == deployment.outbox_due, deployment.label
    first = FIXTURE.deployments["W1"]  # its first POST got a 503: all five entries wait
    assert FIXTURE.undelivered()[first.id] == ["pending", "running", "success"]
    kinds = [json.loads(raw).get("kind", "status") for raw in loaded.lrange(statuses_key(first.id), 0, -1)]
    assert kinds == ["status", "status", "deployment", "status", "deployment"] and first.statuses_sent == 0
    assert _text(loaded.hget(f"pd:dep:{first.id}", "status_attempts")) == "1"


def test_lanes_histories_and_live_markers(loaded: Redis) -> None:
    store = DeploymentStore(loaded)
    for (project, environment), lane in FIXTURE.lanes.items():
        real = Lane(loaded, project, environment)
        assert real.holder() == lane.holder
        assert _text(loaded.get(real.lock_key)) == lane.token
        assert _text(loaded.get(real.waiting_key)) == lane.waiting
        assert [d.id for d in store.history(project, environment)] == lane.history[::-1]
        assert store.live(project, environment) == lane.live
    live = FIXTURE.lanes[("api", "production")].live
    assert (live["deployment"], live["release"]) == (
        FIXTURE.deployments["A4"].id,
        FIXTURE.deployments["A1"].id,
    )
    assert loaded.pttl(Lane(loaded, "web", "staging").lock_key) > 0  # held, as by a worker mid-deploy


def test_queued_jobs_are_still_queued_with_their_arguments(loaded: Redis) -> None:
    jobs = Queue(defaults.DEPLOY_QUEUE, connection=loaded).get_jobs()
    assert {
        job.id: {"args": list(job.args), "func_name": job.func_name} for job in jobs
    } == FIXTURE.queued_jobs
    for job in jobs:
        assert job.get_status(refresh=False) == "queued"
        assert job.timeout == 2 * 120 + defaults.JOB_TIMEOUT_MARGIN


def test_delivery_ids_are_still_claimed(loaded: Redis, tmp_path: Path, redis_url: str) -> None:
    """Each version 1 key moved into its project's hash and sorted set; a resend is still a duplicate."""
    settings = load(
        schema_v1.write_config(tmp_path, redis_url, tmp_path / "data", tmp_path / "repos"), environ={}
    )
    intake = Intake(loaded, settings.server.public_url)
    for delivery, deployment_id in FIXTURE.seen.items():
        record = next(d.record for d in FIXTURE.deployments.values() if d.id == deployment_id)
        project = record["project"]
        assert seen_deployment(loaded, project, delivery) == deployment_id
        assert not loaded.exists(schema.seen_v1(project, delivery))
        first_seen = loaded.zscore(schema.seen_at(project), delivery)
        assert record["created_at"] - 5 <= first_seen <= time.time()
        configured = settings.projects[project]
        push = Push(record["ref"], record["sha"], "resend", delivery)
        resend = intake.accept(configured, configured.environments[record["environment"]], push)
        assert (resend.deployment_id, resend.duplicate) == (deployment_id, True)


def test_kept_deployments_are_counted_by_state(loaded: Redis) -> None:
    store = DeploymentStore(loaded)
    for project, environment in FIXTURE.lanes:
        tally = {state.value: 0 for state in State}
        for deployment in FIXTURE.deployments.values():
            if (deployment.record["project"], deployment.record["environment"]) == (project, environment):
                tally[deployment.state] += 1
        assert store.kept([(project, environment)]) == {(project, environment): tally}


def test_the_migration_runs_once_however_many_processes_start_together(raw: Redis) -> None:
    """Web processes and workers starting at once: one migrates, the rest wait, then find it done."""
    found: list[int] = []
    threads = [threading.Thread(target=lambda: found.append(migrations.ensure(raw))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(found) == [1] + [schema.VERSION] * 5
    assert migrations.ensure(raw) == schema.VERSION  # and again: nothing to do


def test_an_older_release_refuses_a_newer_layout_and_changes_nothing(
    raw: Redis, tmp_path: Path, redis_url: str
) -> None:
    raw.set(schema.VERSION_KEY, str(schema.VERSION + 1))
    before = redisjson.dump(raw)["keys"]
    with pytest.raises(migrations.SchemaError, match="newer than this release"):
        migrations.ensure(raw)
    path = schema_v1.write_config(tmp_path, redis_url, tmp_path / "data", tmp_path / "repos")
    worker = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "worker", "--burst", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 1
    assert f"layout version {schema.VERSION + 1}, newer than this release's {schema.VERSION}" in worker.stderr
    assert "Traceback" not in worker.stderr
    with pytest.raises(migrations.SchemaError):
        create_app(load(path, environ={}), raw, drain=False)
    after = redisjson.dump(raw)["keys"]
    assert [_name(e) for e in after] == [_name(e) for e in before]


def test_the_config_and_repositories_make_again(tmp_path: Path, redis_url: str) -> None:
    assert repo.make(tmp_path / "repos") == FIXTURE.shas
    path = schema_v1.write_config(
        tmp_path, redis_url, tmp_path / "data", tmp_path / "repos", "http://gitlab.test"
    )
    settings = load(path, environ={})
    environments = {(p.name, e.name) for p in settings.projects.values() for e in p.environments.values()}
    assert environments == set(FIXTURE.lanes)


def _name(entry: dict[str, object]) -> bytes:
    key = entry["key"]
    assert isinstance(key, str | dict)
    return redisjson.decode(key)


def _text(raw: bytes | None) -> str:
    return raw.decode() if raw else ""


def test_after_the_upgrade_work_in_flight_finishes_and_every_status_arrives(
    loaded: Redis, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an upgraded worker does with the old release's day: the running deployment whose
    worker died ends "worker lost" and hands its lane to the one waiting; queued jobs run; the
    undelivered statuses reach GitLab; every deployment ends once."""
    shas = repo.make(tmp_path / "repos")
    with FakeGitLab({"acme/web": 1, "acme/api": 2}, token="fixture-gitlab-token-0a7d") as gitlab:
        for name in ("web", "api"):
            gitlab.use_repository(tmp_path / "repos" / f"{name}.git")
        path = schema_v1.write_config(tmp_path, redis_url, tmp_path / "data", tmp_path / "repos", gitlab.url)
        use_engine(load(path, environ={}), loaded, monkeypatch)
        queue = Queue(defaults.DEPLOY_QUEUE, connection=loaded)

        StartedJobRegistry(queue=queue).cleanup()  # as a worker's maintenance: S2's worker is long dead
        SimpleWorker([queue], connection=loaded).work(burst=True)
        courier = Courier(loaded, forge_for(load(path, environ={}).gitlab), delays=(0.0,))
        for _ in range(50):
            if not courier.deliver_due():
                break

        store = DeploymentStore(loaded)
        ended = {label: store.get(d.id) for label, d in FIXTURE.deployments.items()}
        assert (ended["S2"].state, ended["S2"].reason) == (State.FAILED, "worker lost (AbandonedJobError)")
        for label in ("S4", "A5", "W6"):
            assert ended[label].state is State.SUCCEEDED, (label, ended[label].reason)
        assert all(d.state.terminal for d in ended.values())
        assert loaded.zcard(DUE_KEY) == 0  # every outbox delivered, the old ones included
        owed = {d.label for d in FIXTURE.deployments.values() if d.outbox_due}  # GitLab had the rest
        assert owed == {"W1", "S2", "S3", "S4", "A5", "W6"}
        for label in owed:
            deployment = ended[label]
            posted = [
                s for s in gitlab.statuses(deployment.sha) if s["name"] == f"deploy/{deployment.environment}"
            ]
            assert FINAL_STATES[deployment.state] in {s["state"] for s in posted}, label
        assert Lane(loaded, "web", "staging").holder() == ""
        assert store.live("web", "staging")["deployment"] == ended["S4"].id
        assert shas  # the same repositories the old release deployed from
