"""The audit log's store: entries in a Redis stream, pruned by age and count, read a page at a time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis import Redis

from workers import audit, defaults, schema
from workers.audit import Action, Entry, Query


def entry(action: Action = Action.DEPLOY, **fields: str) -> Entry:
    return Entry(at=time.time(), who=fields.pop("who", "admin"), action=str(action), **fields)


def test_an_entry_keeps_every_field_and_reads_back_newest_first(redis: Redis) -> None:
    audit.record(
        redis, 90, entry(project="app", environment="production", deployment="d1", address="10.0.0.7")
    )
    audit.record(
        redis, 90, entry(Action.CANCEL, project="app", deployment="d1", via="admin_token", detail="x")
    )
    found, following = audit.read(redis, Query(), 10)
    assert following == ""
    assert [e.action for e in found] == ["cancel", "deploy"]
    newest, oldest = found
    assert (newest.via, newest.detail, newest.deployment) == ("admin_token", "x", "d1")
    public = oldest.public()
    assert public["from"] == "10.0.0.7" and "address" not in public
    assert (public["project"], public["environment"], public["who"]) == ("app", "production", "admin")
    assert public["at"] == pytest.approx(time.time(), abs=5) and public["id"]


def test_entries_older_than_the_retention_are_pruned_on_write(redis: Redis) -> None:
    old_ms = int((time.time() - 3 * 86400) * 1000)
    for i in range(3):  # written as if three days ago (ids are times)
        redis.xadd(
            schema.AUDIT, {"who": "old", "action": "deploy", "at": str(old_ms / 1000)}, id=f"{old_ms}-{i}"
        )
    audit.record(redis, 90, entry(who="kept"))
    assert redis.xlen(schema.AUDIT) == 4  # within 90 days: all kept
    audit.record(redis, 2, entry(who="new"))  # a retention of two days: the three-day-old ones go
    found, _ = audit.read(redis, Query(), 500)
    assert [e.who for e in found] == ["new", "kept"]


def test_the_log_has_a_hard_cap_whatever_the_age(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "AUDIT_MAX_ENTRIES", 100)
    for _ in range(400):
        audit.record(redis, 90, entry(Action.SIGN_IN_FAILED))
    assert redis.xlen(schema.AUDIT) < 300  # approximate trimming keeps whole nodes, never the flood


def test_filters_and_the_cursor_walk_every_match_once(redis: Redis) -> None:
    for i in range(25):
        audit.record(
            redis, 90, entry(Action.DEPLOY if i % 2 else Action.CANCEL, project=f"p{i % 3}", who=f"u{i % 5}")
        )
    seen: list[str] = []
    cursor = ""
    while True:
        page, cursor = audit.read(redis, Query(action="deploy"), 4, cursor)
        seen += [e.id for e in page]
        assert all(e.action == "deploy" for e in page)
        if not cursor:
            break
    assert len(seen) == 12 == len(set(seen))
    assert seen == sorted(seen, key=lambda i: tuple(map(int, i.split("-"))), reverse=True)
    both, _ = audit.read(redis, Query(project="p1", who="u1"), 50)
    assert both and all((e.project, e.who) == ("p1", "u1") for e in both)


def test_since_and_until_select_a_time_range(redis: Redis) -> None:
    for i, offset in enumerate((3600 * 5, 3600 * 3, 3600)):
        ms = int((time.time() - offset) * 1000)
        redis.xadd(schema.AUDIT, {"who": f"w{i}", "action": "deploy", "at": str(ms / 1000)}, id=f"{ms}-0")
    now = time.time()
    page, _ = audit.read(redis, Query(since=now - 4 * 3600, until=now - 2 * 3600), 10)
    assert [e.who for e in page] == ["w1"]
    assert audit.read(redis, Query(since=1.4e308), 10) == ([], "")  # beyond any id: nothing, no error
    assert len(audit.read(redis, Query(until=1.4e308), 10)[0]) == 3


def test_cursors_are_stream_ids_only() -> None:
    assert audit.valid_cursor("1795704150321-0")
    for bad in ("", "-", "abc-1", "1-", "+", "1795704150321-0 ", "１-0"):
        assert not audit.valid_cursor(bad)


def test_a_changed_configuration_is_one_reload_entry_whatever_the_processes(
    redis: Redis, tmp_path: Path
) -> None:
    config = tmp_path / "pushdeploy.toml"
    config.write_text("[server]\n")
    assert not audit.config_loaded(redis, 90, config, "web on a")  # the first start is no reload
    assert not audit.config_loaded(redis, 90, config, "web on b")  # nor the same file elsewhere
    config.write_text("[server]\naudit_days = 30\n")
    assert audit.config_loaded(redis, 90, config, "web on a")
    assert not audit.config_loaded(redis, 90, config, "worker on b")
    found, _ = audit.read(redis, Query(action="config_reload"), 10)
    assert [(e.who, e.action) for e in found] == [("web on a", "config_reload")]
    assert found[0].detail.startswith("pushdeploy.toml ")
