"""Release directories and the ``current`` symlink: atomic switches, pruning, and safe paths."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from workers.deployments import new_id
from workers.releases import Releases


@pytest.fixture
def releases(tmp_path: Path) -> Releases:
    store = Releases(tmp_path / "data", "sample-app", "production")
    store.prepare()
    return store


def make(releases: Releases, *ids: str) -> None:
    for release_id in ids:
        path = releases.path(release_id)
        path.mkdir()
        (path / "RELEASE").write_text(release_id)


def served(releases: Releases) -> str:
    """What a web server following ``current`` would read."""
    return (releases.current_link / "RELEASE").read_text()


def test_releases_live_under_their_project_and_environment(tmp_path: Path, releases: Releases) -> None:
    root = tmp_path / "data" / "projects" / "sample-app" / "production"
    assert releases.releases == root / "releases" and releases.releases.is_dir()
    assert releases.current_link == root / "current"
    assert releases.path("20261126143512-3f9a1c") == root / "releases" / "20261126143512-3f9a1c"


def test_no_current_before_the_first_switch(releases: Releases) -> None:
    assert releases.current() is None
    assert releases.all() == []


def test_switch_points_current_and_returns_the_previous(releases: Releases) -> None:
    make(releases, "r1", "r2")
    assert releases.switch("r1") is None
    assert releases.current() == "r1" and served(releases) == "r1"
    assert releases.switch("r2") == "r1"
    assert releases.current() == "r2" and served(releases) == "r2"
    assert releases.switch("r1") == "r2"  # a rollback is a switch back
    assert served(releases) == "r1"


def test_current_is_a_relative_link_so_the_data_dir_can_move(tmp_path: Path, releases: Releases) -> None:
    make(releases, "r1")
    releases.switch("r1")
    assert releases.current_link.is_symlink()
    assert not os.path.isabs(os.readlink(releases.current_link))
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    assert (moved / "projects" / "sample-app" / "production" / "current" / "RELEASE").read_text() == "r1"


def test_switch_to_a_missing_release_leaves_current_alone(releases: Releases) -> None:
    make(releases, "r1")
    releases.switch("r1")
    with pytest.raises(FileNotFoundError):
        releases.switch("r2")
    assert served(releases) == "r1"


def test_switch_recovers_from_a_crash_between_link_and_rename(releases: Releases) -> None:
    make(releases, "r1", "r2")
    releases.switch("r1")
    os.symlink("releases/r1", releases.root / ".current-r2")  # left over by a killed worker
    assert releases.switch("r2") == "r1"
    assert served(releases) == "r2"
    assert [p.name for p in releases.root.iterdir() if p.name.startswith(".current")] == []


def test_switch_is_atomic_for_readers(releases: Releases) -> None:
    ids = ["r1", "r2", "r3"]
    make(releases, *ids)
    releases.switch("r1")
    stop = threading.Event()
    seen: set[str] = set()
    failures: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                seen.add(served(releases))
                if not releases.current_link.resolve(strict=True).is_dir():
                    failures.append("current resolved to something that is not a directory")
            except OSError as exc:
                failures.append(repr(exc))
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for turn in range(200):
            releases.switch(ids[turn % 3])
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert reads > 0 and seen <= set(ids)
    assert served(releases) == ids[199 % 3]
    assert sorted(p.name for p in releases.root.iterdir()) == ["current", "releases"]


def test_prune_keeps_the_newest(releases: Releases) -> None:
    ids = [f"2026112614351{n}-abcdef" for n in range(8)]
    make(releases, *reversed(ids))  # creation order on disk does not matter: ids sort by time
    removed = releases.prune(keep=3, protect=set())
    assert removed == ids[:5]
    assert releases.all() == ids[5:]
    assert sorted(p.name for p in releases.releases.iterdir()) == ids[5:]


def test_prune_keeps_the_newest_even_within_one_second(releases: Releases) -> None:
    start = 1_700_000_000.0
    ids = [new_id(start + n * 0.01) for n in range(6)]  # six deployments in 60 ms
    make(releases, *ids)
    assert releases.all() == ids
    assert releases.prune(keep=2, protect=set()) == ids[:4]
    assert releases.all() == ids[4:]


def test_prune_never_removes_a_protected_release(releases: Releases) -> None:
    ids = [f"r{n}" for n in range(1, 7)]
    make(releases, *ids)
    releases.switch("r1")  # rolled back to the oldest release: it is live and must survive
    removed = releases.prune(keep=3, protect={"r1", "r6"})
    assert "r1" not in removed and "r6" not in removed
    assert releases.all() == ["r1", "r5", "r6"]  # keep counts the protected; the rest are the newest
    assert served(releases) == "r1"


def test_prune_with_fewer_releases_than_keep_removes_nothing(releases: Releases) -> None:
    make(releases, "r1", "r2")
    assert releases.prune(keep=5, protect=set()) == []
    assert releases.all() == ["r1", "r2"]


def test_all_ignores_hidden_directories_and_files(releases: Releases) -> None:
    make(releases, "r1")
    (releases.releases / ".tmp-export").mkdir()
    (releases.releases / "notes.txt").write_text("not a release")
    assert releases.all() == ["r1"]
    assert releases.prune(keep=2, protect=set()) == []
    assert (releases.releases / ".tmp-export").is_dir()


@pytest.mark.parametrize(
    "release_id", ["", "..", ".", "../r1", "../../etc", "/etc", "r1/..", "r1\n", "r 1", "r1;rm", "~"]
)
def test_unsafe_release_ids_are_refused(tmp_path: Path, releases: Releases, release_id: str) -> None:
    make(releases, "r1")
    releases.switch("r1")
    (tmp_path / "data" / "sentinel").write_text("keep me")
    for action in (releases.path, releases.switch, releases.remove):
        with pytest.raises(ValueError, match="unsafe release id"):
            action(release_id)
    assert (tmp_path / "data" / "sentinel").read_text() == "keep me"
    assert served(releases) == "r1" and releases.all() == ["r1"]


@pytest.mark.parametrize(
    ("project", "environment"),
    [
        ("../etc", "production"),
        ("sample-app", "../../x"),
        ("a/b", "production"),
        ("sample-app", ""),
        (".hidden", "production"),
        ("sample-app", "prod\n"),
        ("-rf", "production"),
    ],
)
def test_unsafe_names_are_refused(tmp_path: Path, project: str, environment: str) -> None:
    with pytest.raises(ValueError, match="unsafe name"):
        Releases(tmp_path / "data", project, environment)
    assert not (tmp_path / "data").exists()


def test_remove_deletes_only_that_release(releases: Releases) -> None:
    make(releases, "r1", "r2")
    releases.remove("r1")
    releases.remove("r9")  # already gone: not an error
    assert releases.all() == ["r2"]
