"""Numeric GitLab ids of projects configured by path, so that a renamed project still matches.

A delivery names its project by id and by path. The path changes when a project is renamed or
moved to another group; the id never does. For a project configured by its path, the id is asked
of GitLab once (``GET /projects/:path``: GitLab answers an old path with a redirect to the
project's id) and kept in Redis, for every web process and node, and in this process.

Asking GitLab happens at web start and when a delivery's path differs from the configured one,
never on the accept path of a matching delivery. A GitLab that is down or slow delays such a
delivery by at most :data:`RESOLVE_TIMEOUT` and is asked again only after :data:`RESOLVE_RETRY`
seconds, by one process of all those that share the Redis. A delivery that comes while that
question is out waits for its answer, in this process or through Redis, within the same bound.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import gitlab
import gitlab.exceptions
import requests
from redis import Redis
from redis.exceptions import RedisError

from workers import schema
from workers.config import GitLabSettings, Project
from workers.forge import ForgeError, translate

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT = 2.0
"""Seconds a delivery may wait for GitLab to name a project's id; a longer GitLab timeout is cut to this."""

RESOLVE_RETRY = 60
"""Seconds between two questions to GitLab about one path while it fails (down, 404, 403)."""

KEEP_ID = 24 * 3600
"""Seconds a resolved id is kept in Redis: a path can be given to another project later, rarely."""


id_key = schema.project_id
asking_key = schema.project_id_asking


def numeric_id(gitlab_project: str) -> int | None:
    """The id when the config gives one (``15`` or ``"15"``), else None (a path)."""
    return int(gitlab_project) if gitlab_project.isascii() and gitlab_project.isdigit() else None


@dataclass(frozen=True)
class RemoteProject:
    """What GitLab says about a project: its id, and its path now (after any rename or move)."""

    id: int
    path: str


def lookup(client: gitlab.Gitlab, path: str) -> RemoteProject:
    """Ask GitLab for the project at ``path`` (an old path too: GitLab redirects it to the id).

    Raises:
        ForgeError: GitLab refused (404 for a path it does not know, or one the token cannot see)
            or did not answer.
    """
    try:
        found = client.projects.get(path)
    except (gitlab.exceptions.GitlabError, requests.RequestException) as exc:
        raise translate(exc) from None
    return RemoteProject(int(found.id), str(found.path_with_namespace))


class ProjectIds:
    """The ids of path-configured projects: in this process, in Redis, or from GitLab, in that order."""

    def __init__(
        self,
        redis: Redis,
        settings: GitLabSettings | None,
        timeout: float = RESOLVE_TIMEOUT,
        retry: float = RESOLVE_RETRY,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.timeout = min(timeout, settings.timeout) if settings else timeout
        self.retry = retry
        self._known: dict[str, int] = {}
        self._next_try: dict[str, float] = {}
        self._asking: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._client: gitlab.Gitlab | None = None

    def resolve(self, project: Project) -> int | None:
        """The id of ``project``'s GitLab project, or None while it cannot be known."""
        configured = numeric_id(project.gitlab_project)
        if configured is not None:
            return configured
        path = project.gitlab_project.lower()
        known = self._known.get(path)
        if known is not None:
            return known
        stored = self._stored(path)
        if stored is not None or self.settings is None:
            return stored
        with self._lock:  # who asks is decided here, so no delivery slips between claim and ask
            asking = self._asking.get(path)
            if asking is None:
                if time.monotonic() < self._next_try.get(path, 0.0):
                    return None
                mine = self._asking[path] = threading.Event()
        if asking is not None:  # this process asks already (at web start): wait for that answer
            asking.wait(self.timeout)
            return self._known.get(path)
        if not self._claim(path):  # another process asks: its answer comes through Redis
            self._done(path, mine)
            return self._wait_stored(path)
        return self._ask_bounded(path, mine)

    def warm(self, projects: Iterable[Project]) -> threading.Thread | None:
        """Resolve every path-configured project in the background, so that no delivery waits for it."""
        paths = [p for p in projects if numeric_id(p.gitlab_project) is None]
        if self.settings is None or not paths:
            return None
        thread = threading.Thread(target=self._resolve_all, args=(paths,), name="project-ids", daemon=True)
        thread.start()
        return thread

    def _resolve_all(self, projects: list[Project]) -> None:
        for project in projects:
            self.resolve(project)

    def _stored(self, path: str) -> int | None:
        try:
            value = self.redis.get(id_key(path))
        except RedisError:
            return None
        if value is None:
            return None
        self._known[path] = int(value)
        return self._known[path]

    def _claim(self, path: str) -> bool:
        """Whether this process asks GitLab now: no other one did within :data:`RESOLVE_RETRY`."""
        self._next_try[path] = time.monotonic() + self.retry
        try:
            return bool(self.redis.set(asking_key(path), "1", nx=True, ex=max(int(self.retry), 1)))
        except RedisError:
            return True  # this process's own pace still holds

    def _ask_bounded(self, path: str, done: threading.Event) -> int | None:
        """Ask in a thread and wait at most ``timeout``: a late answer still fills the cache."""

        def ask() -> None:
            try:
                self._ask(path)
            finally:
                self._done(path, done)

        threading.Thread(target=ask, name="project-id", daemon=True).start()
        done.wait(self.timeout)
        return self._known.get(path)

    def _done(self, path: str, asking: threading.Event) -> None:
        with self._lock:
            if self._asking.get(path) is asking:
                del self._asking[path]
        asking.set()

    def _wait_stored(self, path: str) -> int | None:
        """Another process asks GitLab: wait (at most ``timeout``) for the id it stores in Redis."""
        deadline = time.monotonic() + self.timeout
        while True:
            found = self._stored(path)
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def _ask(self, path: str) -> None:
        try:
            found = lookup(self._gitlab(), path)
        except ForgeError as exc:
            log.warning("project id of %s: not resolved (%s); asking again in %d s", path, exc, self.retry)
            return
        except Exception:
            log.exception("project id of %s: not resolved", path)
            return
        self._known[path] = found.id
        if found.path.lower() != path:
            log.warning("GitLab project %s is now %s (id %d): matched by id", path, found.path, found.id)
        with contextlib.suppress(RedisError):  # known in this process; another one asks for itself
            self.redis.set(id_key(path), found.id, ex=KEEP_ID)

    def _gitlab(self) -> gitlab.Gitlab:
        if self._client is None:
            assert self.settings is not None
            self._client = gitlab.Gitlab(
                self.settings.url,
                private_token=self.settings.token.reveal(),
                timeout=self.timeout,
                retry_transient_errors=False,  # one short try; the next comes after RESOLVE_RETRY
                user_agent="pushdeploy",
            )
        return self._client
