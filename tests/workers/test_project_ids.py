"""Numeric ids of path-configured projects: asked of a real (fake) GitLab once, shared through Redis."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from redis import Redis

from tests.fakegitlab import FakeGitLab
from tests.helpers import wait_for
from workers.config import GitLabSettings, Project, Settings
from workers.connection import web_redis
from workers.project_ids import ProjectIds, asking_key, id_key, lookup, numeric_id
from workers.secrets import Secret

GITLAB_TOKEN = "gitlab-token-canary-0b7c55"


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab({"tools/sample-app": 42, "tools/other": 43}, token=GITLAB_TOKEN) as fake:
        yield fake


def settings_for(url: str, timeout: float = 10.0) -> GitLabSettings:
    return GitLabSettings(url, Secret(GITLAB_TOKEN), timeout)


@pytest.fixture
def project_at(make_settings: Callable[..., Settings]) -> Callable[[str | int], Project]:
    def make(gitlab_project: str | int) -> Project:
        return make_settings(gitlab_project=gitlab_project).projects["sample-app"]

    return make


def lookups(gitlab: FakeGitLab) -> list[str]:
    return [r["path"] for r in gitlab.requests if r["path"].startswith("/api/v4/projects/")]


@pytest.mark.parametrize(
    ("configured", "expected"), [("15", 15), ("tools/app", None), ("\u0661\u0665", None), ("", None)]
)
def test_only_ascii_digits_are_a_numeric_id(configured: str, expected: int | None) -> None:
    assert numeric_id(configured) == expected


def test_a_numeric_id_is_used_as_configured_without_asking(
    redis: Redis, gitlab: FakeGitLab, project_at: Callable[[str | int], Project]
) -> None:
    ids = ProjectIds(redis, settings_for(gitlab.url))
    assert ids.resolve(project_at(15)) == 15
    assert lookups(gitlab) == []


def test_a_path_is_asked_once_then_every_process_reads_it_from_redis(
    redis: Redis, gitlab: FakeGitLab, project_at: Callable[[str | int], Project]
) -> None:
    project = project_at("Tools/Sample-App")
    assert ProjectIds(redis, settings_for(gitlab.url)).resolve(project) == 42
    assert redis.get(id_key("tools/sample-app")) == b"42"
    assert 0 < redis.ttl(id_key("tools/sample-app")) <= 24 * 3600
    another_process = ProjectIds(redis, settings_for(gitlab.url))
    assert another_process.resolve(project) == 42
    assert lookups(gitlab) == ["/api/v4/projects/tools%2Fsample-app"]  # GitLab paths ignore case


def test_an_old_path_follows_gitlabs_redirect_to_the_renamed_project(gitlab: FakeGitLab) -> None:
    gitlab.rename_project("tools/sample-app", "platform/sample-app")
    client = ProjectIds(Redis(), settings_for(gitlab.url))._gitlab()
    found = lookup(client, "tools/sample-app")
    assert (found.id, found.path) == (42, "platform/sample-app")
    assert [(r["path"], r["status"]) for r in gitlab.requests] == [
        ("/api/v4/projects/tools%2Fsample-app", 301),
        ("/api/v4/projects/42", 200),
    ]


def test_an_old_path_takes_no_writes_as_gitlab_refuses_them_for_moved_projects(gitlab: FakeGitLab) -> None:
    """Why the id matters beyond matching: GitLab answers 405 to a POST addressed by an old path."""
    gitlab.rename_project("tools/sample-app", "platform/sample-app")
    answer = requests.post(
        f"{gitlab.url}/api/v4/projects/tools%2Fsample-app/statuses/{'a' * 40}",
        json={"state": "pending"},
        headers={"PRIVATE-TOKEN": GITLAB_TOKEN},
        timeout=5,
    )
    assert answer.status_code == 405
    assert answer.json() == {"message": "Non GET methods are not allowed for moved projects"}


def test_a_path_gitlab_does_not_know_is_asked_again_only_after_the_retry_interval(
    redis: Redis, gitlab: FakeGitLab, project_at: Callable[[str | int], Project]
) -> None:
    project = project_at("tools/not-there")
    ids = ProjectIds(redis, settings_for(gitlab.url), retry=1)
    assert ids.resolve(project) is None
    assert ids.resolve(project) is None
    assert ProjectIds(redis, settings_for(gitlab.url), retry=1).resolve(project) is None  # another process
    assert len(lookups(gitlab)) == 1
    gitlab.projects["tools/not-there"] = 44
    time.sleep(1.1)
    assert ids.resolve(project) == 44
    assert len(lookups(gitlab)) == 2


def test_a_gitlab_that_never_answers_costs_at_most_the_timeout(
    redis: Redis, project_at: Callable[[str | int], Project]
) -> None:
    with silent_port() as port:
        ids = ProjectIds(redis, settings_for(f"http://127.0.0.1:{port}", timeout=30), timeout=0.5)
        started = time.monotonic()
        assert ids.resolve(project_at("tools/sample-app")) is None
        assert time.monotonic() - started < 1.0
        assert redis.exists(asking_key("tools/sample-app"))  # the others do not ask either


def test_without_redis_the_id_is_still_resolved_and_kept_in_the_process(
    gitlab: FakeGitLab, project_at: Callable[[str | int], Project]
) -> None:
    with silent_port() as port:  # a Redis that hangs, as the web tier's client sees it
        ids = ProjectIds(web_redis(f"redis://127.0.0.1:{port}/0"), settings_for(gitlab.url))
        assert ids.resolve(project_at("tools/other")) == 43
        assert ids.resolve(project_at("tools/other")) == 43
    assert len(lookups(gitlab)) == 1


def test_without_a_gitlab_section_only_redis_is_read(
    redis: Redis, project_at: Callable[[str | int], Project]
) -> None:
    ids = ProjectIds(redis, None)
    assert ids.resolve(project_at("tools/sample-app")) is None
    redis.set(id_key("tools/sample-app"), 42)
    assert ids.resolve(project_at("tools/sample-app")) == 42


def test_warming_resolves_every_path_configured_project_in_the_background(
    redis: Redis, gitlab: FakeGitLab, project_at: Callable[[str | int], Project]
) -> None:
    ids = ProjectIds(redis, settings_for(gitlab.url))
    thread = ids.warm([project_at("tools/sample-app"), project_at(7)])
    assert thread is not None
    wait_for(lambda: redis.get(id_key("tools/sample-app")) == b"42", timeout=10, what="the warm-up")
    assert lookups(gitlab) == ["/api/v4/projects/tools%2Fsample-app"]
    assert ProjectIds(redis, None).warm([project_at("tools/sample-app")]) is None


def test_a_delivery_during_the_warm_up_waits_for_its_answer(
    redis: Redis, gitlab: FakeGitLab, project_at: Callable[[str | int], Project]
) -> None:
    ids = ProjectIds(redis, settings_for(gitlab.url))
    with gitlab.lock:  # GitLab is busy until the warm-up has started asking
        thread = ids.warm([project_at("tools/sample-app")])
        time.sleep(0.2)
    assert ids.resolve(project_at("tools/sample-app")) == 42
    assert thread is not None
    thread.join(5)
    assert len(lookups(gitlab)) == 1


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port that accepts connections and never answers: a GitLab (or Redis) hanging on every request.

    Yields the port and the connections accepted so far. Only the accepting thread closes the
    listener: closed from another thread, a descriptor number could be reused by the next test's
    server while this thread still accepts on it, and steal that server's connections.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        with listener:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    with silent_server() as (port, _):
        yield port


def test_a_delivery_that_comes_while_the_warm_up_claims_its_lookup_waits_for_that_answer(
    redis: Redis, gitlab: FakeGitLab, project_at: Callable[[str | int], Project]
) -> None:
    """Seen under load: between the web start's claim (a Redis round trip) and its lookup, a delivery
    found nobody asking and its own claim taken, and was refused 403 for a renamed project."""

    class SlowRedisClaim(ProjectIds):
        def _claim(self, path: str) -> bool:
            time.sleep(0.3)  # a Redis answering slowly, as on a loaded machine
            return super()._claim(path)

    project = project_at("tools/sample-app")
    ids = SlowRedisClaim(redis, settings_for(gitlab.url))
    warming = ids.warm([project])
    assert warming is not None
    time.sleep(0.05)  # the warm-up is inside its claim now
    assert ids.resolve(project) == 42  # waited for the warm-up's answer, did not give up
    warming.join(5)
    assert lookups(gitlab) == ["/api/v4/projects/tools%2Fsample-app"]  # asked once


def test_a_process_that_finds_another_asking_waits_for_the_id_it_stores(
    redis: Redis, gitlab: FakeGitLab, project_at: Callable[[str | int], Project]
) -> None:
    project = project_at("tools/sample-app")
    redis.set(asking_key("tools/sample-app"), "1", ex=60)  # another web process asks GitLab now
    threading.Timer(0.3, lambda: redis.set(id_key("tools/sample-app"), 42)).start()  # and stores it
    assert ProjectIds(redis, settings_for(gitlab.url)).resolve(project) == 42
    assert lookups(gitlab) == []  # this one did not ask
