"""Deployment records in real Redis and the one state machine they follow."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from redis import Redis

from workers import deployments, schema
from workers.deployments import (
    TRANSITIONS,
    Deployment,
    DeploymentStore,
    InvalidTransition,
    State,
    StepResult,
    UnknownDeployment,
    new_id,
)
from workers.releases import ID_CHARS

SHA = "0123456789abcdef0123456789abcdef01234567"

PATHS: dict[State, list[State]] = {
    State.QUEUED: [],
    State.RUNNING: [State.RUNNING],
    State.SUCCEEDED: [State.RUNNING, State.SUCCEEDED],
    State.FAILED: [State.RUNNING, State.FAILED],
    State.CANCELED: [State.CANCELED],
}
"""How to bring a new record into each state through allowed moves only."""

ALLOWED = {
    (State.QUEUED, State.RUNNING),
    (State.QUEUED, State.CANCELED),
    (State.QUEUED, State.FAILED),
    (State.RUNNING, State.SUCCEEDED),
    (State.RUNNING, State.FAILED),
    (State.RUNNING, State.CANCELED),
}


@pytest.fixture
def store(redis: Redis) -> DeploymentStore:
    return DeploymentStore(redis)


@pytest.fixture
def create(store: DeploymentStore) -> Callable[..., Deployment]:
    def make(deployment_id: str | None = None, **fields: object) -> Deployment:
        values: dict[str, object] = {
            "id": deployment_id or new_id(),
            "project": "sample-app",
            "environment": "production",
            "ref": "refs/heads/main",
            "sha": SHA,
        }
        values.update(fields)
        deployment = Deployment(**values)  # type: ignore[arg-type]
        store.create(deployment)
        return deployment

    return make


def test_a_record_round_trips(store: DeploymentStore, create: Callable[..., Deployment]) -> None:
    created = create(previous_sha="f" * 40, pusher="alice", delivery_id="d-1", trigger="manual")
    loaded = store.get(created.id)
    assert loaded == created
    assert loaded.state is State.QUEUED
    assert (loaded.started_at, loaded.finished_at, loaded.duration) == (0.0, 0.0, None)
    assert loaded.branch == "main"
    assert loaded.public()["state"] == "queued"


def test_unknown_deployment(store: DeploymentStore) -> None:
    with pytest.raises(UnknownDeployment):
        store.get("20260101000000-000000")
    with pytest.raises(UnknownDeployment):
        store.transition("20260101000000-000000", State.RUNNING)


def test_the_transition_table_is_the_documented_one() -> None:
    documented = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert documented == ALLOWED
    assert {s for s in State if s.terminal} == {State.SUCCEEDED, State.FAILED, State.CANCELED}


@pytest.mark.parametrize("current", list(State))
@pytest.mark.parametrize("wanted", list(State))
def test_every_move_is_allowed_or_refused(
    store: DeploymentStore, create: Callable[..., Deployment], current: State, wanted: State
) -> None:
    deployment = create()
    for state in PATHS[current]:
        store.transition(deployment.id, state)
    before = store.get(deployment.id)
    assert before.state is current
    if (current, wanted) in ALLOWED:
        after = store.transition(deployment.id, wanted)
        assert after.state is wanted and store.get(deployment.id).state is wanted
    else:
        with pytest.raises(InvalidTransition) as caught:
            store.transition(deployment.id, wanted, reason="should not stick")
        assert (caught.value.current, caught.value.wanted) == (current, wanted)
        assert str(caught.value) == f"deployment {deployment.id} cannot go from {current} to {wanted}"
        assert store.get(deployment.id) == before  # a refused move changes nothing


@pytest.mark.parametrize(
    ("path", "wanted"),
    [
        ([State.RUNNING, State.SUCCEEDED], State.RUNNING),
        ([], State.SUCCEEDED),
        ([State.CANCELED], State.RUNNING),
        ([State.RUNNING, State.FAILED], State.SUCCEEDED),
        ([State.RUNNING], State.QUEUED),
    ],
)
def test_moves_the_state_machine_forbids_are_refused(
    store: DeploymentStore, create: Callable[..., Deployment], path: list[State], wanted: State
) -> None:
    deployment = create()
    for state in path:
        store.transition(deployment.id, state)
    with pytest.raises(InvalidTransition):
        store.transition(deployment.id, wanted)


def test_timestamps_are_set_by_the_transitions(
    store: DeploymentStore, create: Callable[..., Deployment]
) -> None:
    deployment = create()
    before_start = time.time()
    running = store.transition(deployment.id, State.RUNNING)
    assert before_start <= running.started_at <= time.time()
    assert running.finished_at == 0.0
    time.sleep(0.05)
    before_end = time.time()
    done = store.transition(deployment.id, State.SUCCEEDED)
    assert before_end <= done.finished_at <= time.time()
    assert done.started_at == running.started_at
    loaded = store.get(deployment.id)
    assert (loaded.started_at, loaded.finished_at) == (done.started_at, done.finished_at)
    assert loaded.duration is not None and 0.05 <= loaded.duration < 5


def test_a_canceled_queued_deployment_never_started(
    store: DeploymentStore, create: Callable[..., Deployment]
) -> None:
    first, second = create(), create()
    canceled = store.transition(first.id, State.CANCELED, reason=f"superseded by {second.id}")
    loaded = store.get(first.id)
    assert loaded == canceled
    assert (loaded.state, loaded.reason) == (State.CANCELED, f"superseded by {second.id}")
    assert loaded.started_at == 0.0 and loaded.finished_at > 0
    assert loaded.duration is None


def test_transition_records_extra_fields(store: DeploymentStore, create: Callable[..., Deployment]) -> None:
    deployment = create()
    store.transition(deployment.id, State.RUNNING, previous_sha="e" * 40)
    store.update(deployment.id, release=deployment.id)
    failed = store.transition(deployment.id, State.FAILED, reason="build step 1 `make` exited with 2")
    loaded = store.get(deployment.id)
    assert loaded == failed
    assert (loaded.previous_sha, loaded.release, loaded.reason) == (
        "e" * 40,
        deployment.id,
        "build step 1 `make` exited with 2",
    )


def race(redis_url: str, moves: list[tuple[str, State]]) -> tuple[list[State], list[InvalidTransition]]:
    """Run the moves at the same moment from separate connections; return winners and losers."""
    barrier = threading.Barrier(len(moves))
    won: list[State] = []
    lost: list[InvalidTransition] = []
    errors: list[BaseException] = []

    def attempt(deployment_id: str, wanted: State) -> None:
        client = Redis.from_url(redis_url)
        try:
            barrier.wait()
            store = DeploymentStore(client)
            store.transition(deployment_id, wanted)
            won.append(wanted)
        except InvalidTransition as exc:
            lost.append(exc)
        except Exception as exc:  # surfaced below, not lost in a thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=attempt, args=move) for move in moves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return won, lost


def test_only_one_worker_can_start_a_deployment(
    store: DeploymentStore, create: Callable[..., Deployment], redis_url: str
) -> None:
    for _ in range(20):
        deployment = create()
        won, lost = race(redis_url, [(deployment.id, State.RUNNING)] * 4)
        assert won == [State.RUNNING]
        assert len(lost) == 3
        assert all(exc.current is State.RUNNING for exc in lost)
        assert store.get(deployment.id).state is State.RUNNING


def test_finishing_races_have_exactly_one_outcome(
    store: DeploymentStore, create: Callable[..., Deployment], redis_url: str
) -> None:
    for _ in range(20):
        deployment = create()
        store.transition(deployment.id, State.RUNNING)
        won, lost = race(redis_url, [(deployment.id, State.SUCCEEDED), (deployment.id, State.CANCELED)])
        assert len(won) == 1 and len(lost) == 1
        assert store.get(deployment.id).state is won[0]


def test_history_is_newest_first_per_environment(
    store: DeploymentStore, create: Callable[..., Deployment], redis: Redis
) -> None:
    now = time.time()
    ids = [create(f"2026112614000{n}-abcdef", created_at=now + n).id for n in range(5)]
    create("20261126140009-abcdef", environment="staging", created_at=now + 9)
    assert [d.id for d in store.history("sample-app", "production")] == ids[::-1]
    assert [d.id for d in store.history("sample-app", "production", limit=2)] == ids[::-1][:2]
    assert [d.id for d in store.history("sample-app", "staging")] == ["20261126140009-abcdef"]
    assert store.history("other-app", "production") == []
    redis.delete(f"pd:dep:{ids[4]}")  # a record pruned while its id is still listed
    assert [d.id for d in store.history("sample-app", "production")] == ids[3::-1]


def test_many_keeps_positions_for_missing_records(
    store: DeploymentStore, create: Callable[..., Deployment]
) -> None:
    first = create()
    found = store.many([first.id, "20260101000000-000000"])
    assert found == [first, None]


def test_steps_round_trip_in_order(store: DeploymentStore, create: Callable[..., Deployment]) -> None:
    deployment = create()
    results = [
        StepResult("build", 1, "make build", 0, 1.25, tail=["built"]),
        StepResult(
            "build",
            2,
            "make test",
            None,
            60.0,
            truncated=True,
            timed_out=True,
            tail=["line ✓", 'with `quotes` and "json"'],
        ),
        StepResult("deploy", 1, "systemctl --user restart app", 1, 0.5),
    ]
    for result in results:
        store.add_step(deployment.id, result)
    assert store.steps(deployment.id) == results
    assert store.steps(create().id) == []


def test_live_marks_what_serves(store: DeploymentStore, create: Callable[..., Deployment]) -> None:
    assert store.live("sample-app", "production") == {}
    deployment = create(release="20261126140000-abcdef")
    store.mark_live(deployment)
    assert store.live("sample-app", "production") == {
        "sha": SHA,
        "deployment": deployment.id,
        "release": "20261126140000-abcdef",
    }
    assert store.live("sample-app", "staging") == {}


def test_branch_is_the_short_name(create: Callable[..., Deployment]) -> None:
    assert create(ref="refs/heads/feature/x").branch == "feature/x"
    assert create(ref="refs/tags/v1.2").branch == "v1.2"


def test_new_ids_sort_by_time_and_are_safe_in_paths_and_urls() -> None:
    assert new_id(1_700_000_000.25).startswith("20231114221320250-")
    moments = [1_700_000_000, 1_700_000_000.001, 1_700_000_000.5, 1_700_000_000.999, 1_700_000_001]
    for _ in range(50):  # the random part never decides the order of ids made at different times
        ids = [new_id(moment) for moment in moments]
        assert ids == sorted(ids)
    assert all(set(i) <= ID_CHARS for i in ids)
    assert len({new_id(1_700_000_000) for _ in range(100)}) > 90


def test_triggered_by_says_how_and_who() -> None:
    def made(**fields: str) -> Deployment:
        return Deployment("d", "p", "e", "refs/heads/main", "", **fields)  # type: ignore[arg-type]

    assert made(pusher="alice").triggered_by == "push by alice"
    assert made(trigger="manual", requested_by="bob").triggered_by == "deploy by bob"
    assert made(trigger="rollback to d0", requested_by="carol").triggered_by == "rollback by carol"
    assert made(trigger="manual", pusher="operator (web)").triggered_by == "deploy by operator (web)"  # older
    assert made(trigger="poll", pusher="pushdeploy").triggered_by == "poll by pushdeploy"
    assert made(trigger="manual").triggered_by == "deploy"
    public = made(trigger="manual", requested_by="bob", canceled_by="dave").public()
    assert (public["requested_by"], public["canceled_by"], public["triggered_by"]) == (
        "bob",
        "dave",
        "deploy by bob",
    )


def test_a_deployment_still_ending_is_not_pruned_until_its_ending_completes_or_its_ender_died(
    store: DeploymentStore, redis: Redis
) -> None:
    """Another ending's prune can run between this one's terminal transition and its final status:
    deleting it then let the status, log and courier bring back part of its keys (a ghost record)."""
    made = [Deployment(new_id(time.time() - 10 + i), "sample-app", "production", "refs/heads/main", "a" * 40)
            for i in range(3)]  # fmt: skip
    for deployment in made:
        store.create(deployment)
    ending_since = time.time()
    store.transition(made[0].id, State.CANCELED, "superseded", **{schema.ENDING_FIELD: ending_since})
    for deployment in made[1:]:
        store.transition(deployment.id, State.CANCELED, "superseded")

    assert store.prune_history("sample-app", "production", 1) == [made[1].id]  # not the one ending
    assert store.get(made[0].id).state is State.CANCELED
    later = ending_since + deployments.ENDING_GRACE + 1  # its ender died mid-ending: let it go then
    assert store.prune_history("sample-app", "production", 1, now=later) == [made[0].id]

    store.create(again := Deployment(new_id(), "sample-app", "production", "refs/heads/main", "b" * 40))
    store.transition(again.id, State.FAILED, "x", **{schema.ENDING_FIELD: time.time()})
    store.ended(again.id)  # the ending completed
    assert redis.hget(schema.record(again.id), schema.ENDING_FIELD) is None
    assert store.prune_history("sample-app", "production", 0) == [again.id, made[2].id]  # newest first
