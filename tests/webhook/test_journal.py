"""The journal on real disk, drained into real Redis through the real intake."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis

from webhook.drainer import Drainer
from webhook.journal import Journal, Record
from workers.config import Settings
from workers.deployments import DeploymentStore, State, new_id
from workers.intake import Intake

SHA = "cd" * 20


def record(delivery_key: str, deployment_id: str | None = None) -> Record:
    return Record(
        deployment_id or new_id(),
        1.0,
        "sample-app",
        "production",
        "refs/heads/main",
        SHA,
        "alice",
        delivery_key,
    )


def test_records_are_appended_privately_and_drained_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    first, second = record("k1"), record("k2")
    journal.append(first)
    journal.append(second)
    assert stat.S_IMODE(os.stat(journal.active).st_mode) == 0o600
    seen: list[Record] = []
    assert journal.drain(seen.append) == 2
    assert seen == [first, second]
    assert not journal.pending()


def test_a_failing_handler_keeps_the_file_for_the_next_drain(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(record("k1"))

    def down(_record: Record) -> None:
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError):
        journal.drain(down)
    journal.append(record("k2"))  # new deliveries go to a fresh file meanwhile
    seen: list[Record] = []
    assert journal.drain(seen.append) == 2
    assert [r.delivery_key for r in seen] == ["k1", "k2"]


def test_concurrent_drainers_hand_each_record_over_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for index in range(200):
        journal.append(record(f"k{index}"))
    seen: list[str] = []
    lock = threading.Lock()

    def handle(item: Record) -> None:
        with lock:
            seen.append(item.delivery_key)

    threads = [threading.Thread(target=Journal(tmp_path).drain, args=(handle,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    Journal(tmp_path).drain(handle)
    assert sorted(seen) == sorted(f"k{index}" for index in range(200))


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def test_drained_deliveries_become_deployments_once(settings: Settings, redis: Redis) -> None:
    journal = Journal(settings.server.data_dir)
    drainer = Drainer(settings, journal, Intake(redis, settings.server.public_url))
    kept = [record(f"key-{index}") for index in range(5)]
    for item in kept:
        journal.append(item)
    journal.append(record("key-0"))  # GitLab sent one twice while Redis was down
    assert drainer.drain_once() == 6
    store = DeploymentStore(redis)
    for item in kept:
        deployment = store.get(item.deployment_id)
        assert (deployment.state, deployment.sha, deployment.created_at) == (State.QUEUED, SHA, 1.0)
    assert len(store.history("sample-app", "production", limit=50)) == 5

    journal.append(kept[0])  # a record drained before (the drainer died before deleting its file)
    drainer.drain_once()
    assert len(store.history("sample-app", "production", limit=50)) == 5
