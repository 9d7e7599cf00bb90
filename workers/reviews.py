"""Review apps: what is known of each merge request's app, and the environment it deploys as.

A review app is environment ``review/<iid>`` of its project. Its settings are not in the config
file: they are those of the environment whose branch the merge request targets (kept in the app's
record when it is accepted) with the ``[review]`` table's steps. Everything that looks an
environment up by name (the runner, the lifecycle, the statuses) goes through
:func:`environment_of`, so a review app is deployed, reported and recovered like any other.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.client import Pipeline

from workers import defaults, schema
from workers.config import Environment, Project, Settings, review_iid


class AppState(StrEnum):
    LIVE = "live"  # deployed, or being deployed
    STOPPING = "stopping"  # a stop was asked for; the stop job has not finished
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReviewApp:
    """One merge request's review app, as its record has it."""

    project: str
    iid: int
    base: str
    branch: str
    title: str
    sha: str
    deployment: str
    state: AppState
    reason: str
    updated_at: float
    note_id: str

    @property
    def environment(self) -> str:
        return f"review/{self.iid}"

    def public(self, project: Project | None = None) -> dict[str, Any]:
        """As the API and pages show it (no note id: it is GitLab's business)."""
        url = project.review.app_url(self.iid) if project is not None and project.review else ""
        return {
            "iid": self.iid,
            "environment": self.environment,
            "target_environment": self.base,
            "branch": self.branch,
            "title": self.title,
            "sha": self.sha,
            "deployment": self.deployment,
            "state": str(self.state),
            "reason": self.reason,
            "updated_at": self.updated_at,
            "url": url,
        }


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _app(project: str, iid: int, raw: Mapping[Any, Any]) -> ReviewApp | None:
    data = {_text(k): _text(v) for k, v in raw.items()}
    if not data.get("base"):
        return None
    try:
        state = AppState(data.get("state") or AppState.LIVE)
    except ValueError:
        state = AppState.LIVE
    return ReviewApp(
        project=project,
        iid=iid,
        base=data["base"],
        branch=data.get("branch", ""),
        title=data.get("title", ""),
        sha=data.get("sha", ""),
        deployment=data.get("deployment", ""),
        state=state,
        reason=data.get("reason", ""),
        updated_at=float(data.get("updated_at") or 0.0),
        note_id=data.get("note_id", ""),
    )


KEEP_SECONDS = defaults.REVIEW_KEEP_DAYS * 86400
STOP_ASKED = "stop_asked_at"
"""The app record's field: when its stop was last asked for (kept for a journaled event's order)."""

_STOPPED = """
-- KEYS[1]: the app's record. ARGV: seconds to keep, then every key of its environment.
if redis.call('HGET', KEYS[1], 'state') ~= 'stopping' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'stopped')
redis.call('EXPIRE', KEYS[1], ARGV[1])
for i = 2, #ARGV do redis.call('EXPIRE', ARGV[i], ARGV[1]) end
return 1
"""


class ReviewStore:
    """The review apps' records: one hash per merge request and one sorted set per project."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def get(self, project: str, iid: int) -> ReviewApp | None:
        return _app(project, iid, self.redis.hgetall(schema.review(project, iid)))

    def all(self, project: str) -> list[ReviewApp]:
        """Every known app of ``project``, most recently deployed first; forgotten ones are dropped."""
        iids = [int(_text(raw)) for raw in self.redis.zrevrange(schema.reviews(project), 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for iid in iids:
                pipe.hgetall(schema.review(project, iid))
            found = pipe.execute()
        apps, gone = [], []
        for iid, raw in zip(iids, found, strict=True):
            app = _app(project, iid, raw)
            if app is None:
                gone.append(iid)
            else:
                apps.append(app)
        if gone:
            self.redis.zrem(schema.reviews(project), *gone)
        return apps

    def live(self, project: str) -> list[ReviewApp]:
        return [app for app in self.all(project) if app.state is AppState.LIVE]

    def record(
        self,
        pipe: Pipeline,
        project: str,
        iid: int,
        fields: Mapping[str, str],
        now: float | None = None,
    ) -> None:
        """A deployment of the app was accepted: it is live, and the most recently updated."""
        now = time.time() if now is None else now
        key = schema.review(project, iid)
        pipe.hset(key, mapping={**fields, "state": str(AppState.LIVE), "reason": "", "updated_at": str(now)})
        pipe.persist(key)
        pipe.zadd(schema.reviews(project), {str(iid): now})

    def changed_at(self, project: str, iid: int) -> float:
        """When the newest event applied to the merge request's app arrived (a deployment accepted, a
        stop asked, even with no app); 0 when none is known."""
        raw = self.redis.hmget(schema.review(project, iid), ["updated_at", STOP_ASKED])
        return max(float(_text(value) or 0.0) for value in raw)

    def note_stop(self, project: str, iid: int) -> None:
        """A close or merge for a merge request with no app: remembered as long as a stopped app's
        record, so that an older open drained from a journal later does not deploy it."""
        key = schema.review(project, iid)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, STOP_ASKED, str(time.time()))
            pipe.expire(key, KEEP_SECONDS, nx=True)
            pipe.execute()

    def mark(self, project: str, iid: int, state: AppState, reason: str = "") -> None:
        key = schema.review(project, iid)
        fields = {"state": str(state), "reason": reason}
        if state is AppState.STOPPING:
            fields[STOP_ASKED] = str(time.time())
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=fields)
            if state is AppState.STOPPED:
                pipe.expire(key, KEEP_SECONDS)
            pipe.execute()

    def stopped(self, project: str, iid: int) -> bool:
        """``stopping`` → ``stopped``, unless the merge request was reopened meanwhile (then False).

        Its record, its environment's keys and its deployments' then expire after
        :data:`~workers.defaults.REVIEW_KEEP_DAYS`: forgotten merge requests leave nothing behind.
        """
        environment = f"review/{iid}"
        ids = [_text(raw) for raw in self.redis.zrange(schema.history(project, environment), 0, -1)]
        held = (schema.lock, schema.waiting)  # the lane: its holder and its waiting one handle those
        keys = [make(project, environment) for make in schema.ENVIRONMENT_KEYS if make not in held]
        keys += [key for deployment_id in ids for key in schema.deployment_keys(deployment_id)]
        done = self.redis.eval(_STOPPED, 1, schema.review(project, iid), KEEP_SECONDS, *keys)
        return bool(done)

    def keep(self, project: str, iid: int) -> None:
        """A stopped app deploys again (reopened): its keys no longer expire."""
        environment = f"review/{iid}"
        ids = [_text(raw) for raw in self.redis.zrange(schema.history(project, environment), 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for make in schema.ENVIRONMENT_KEYS:
                pipe.persist(make(project, environment))
            for deployment_id in ids:
                for key in schema.deployment_keys(deployment_id):
                    pipe.persist(key)
            pipe.execute()

    def set_deployment(self, project: str, iid: int, deployment_id: str) -> None:
        """The app's newest deployment: the one whose outbox carries what its stop tells GitLab."""
        self.redis.hset(schema.review(project, iid), "deployment", deployment_id)

    def set_note(self, project: str, iid: int, note_id: str) -> None:
        key = schema.review(project, iid)
        if self.redis.exists(key):  # a record that expired meanwhile is not brought back as a stub
            self.redis.hset(key, "note_id", note_id)

    def note_id(self, project: str, iid: int) -> str:
        return _text(self.redis.hget(schema.review(project, iid), "note_id"))


def environment_of(settings: Settings, redis: Redis, project: str, name: str) -> Environment | None:
    """The environment ``name`` of ``project``: a configured one, or a known review app's."""
    configured = settings.projects.get(project)
    if configured is None:
        return None
    environment = configured.environments.get(name)
    if environment is not None or configured.review is None:
        return environment
    iid = review_iid(name)
    if not iid:
        return None
    base = _text(redis.hget(schema.review(project, iid), "base"))
    target = configured.environments.get(base)
    return configured.review_environment(target, iid) if target is not None else None


STATE_WORDS = {
    "pending": "queued",
    "running": "deploying",
    "success": "live",
    "failed": "failed",
    "canceled": "canceled",
}


def note_body(environment: Environment, sha: str, state: str, page: str, reason: str = "") -> str:
    """The merge request's note: the app's address, the commit, the deployment's page and state.

    Markdown as GitLab renders it; nothing from the payload except what GitLab itself shows.
    """
    words = STATE_WORDS.get(state, state)
    app = environment.review_url if state != "stopped" else f"~~{environment.review_url}~~"
    lines = [f"**Review app** `{environment.name}`: {words}", "", f"- App: {app}"]
    if sha:
        lines.append(f"- Commit: {sha[:12]}")
    if page:
        lines.append(f"- Deployment: {page}")
    if reason:
        lines.append(f"- Why: {reason}")
    lines += ["", "<sub>Kept up to date by pushdeploy: this note is edited in place.</sub>"]
    return "\n".join(lines)
