"""Deployment records in Redis and the one state machine they follow.

A deployment is a Redis hash (``pd:dep:<id>``) plus a list of its step results and a stream of its
log lines. Records are our own, not RQ's results, because RQ forgets results after minutes and a
deployment's history must outlive them.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from workers import schema
from workers.errors import RecordError


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELED})
TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.CANCELED, State.FAILED}),
    State.RUNNING: frozenset({State.SUCCEEDED, State.FAILED, State.CANCELED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELED: frozenset(),
}


class InvalidTransition(RecordError):
    """A deployment was asked to move to a state its current state does not lead to."""

    def __init__(self, deployment_id: str, current: State, wanted: State) -> None:
        self.deployment_id, self.current, self.wanted = deployment_id, current, wanted
        super().__init__(f"deployment {deployment_id} cannot go from {current} to {wanted}")


class UnknownDeployment(RecordError, KeyError):
    """No record exists under that id (never created, or pruned from history)."""


ENDING_GRACE = 600.0
"""Seconds a deployment whose ending has not completed is kept from pruning: an ending takes
milliseconds, so only a worker that died in the middle of one leaves the mark that long."""


def new_id(now: float | None = None) -> str:
    """Sortable, URL-, path- and RQ-safe: ``20261126143512345-3f9a1c``.

    Milliseconds are part of the stamp so that ids made within one second still sort in creation
    order: release directories are named by id and pruned oldest first.
    """
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return f"{stamp}{int(now * 1000) % 1000:03d}-{secrets.token_hex(3)}"


ID_RE = re.compile(r"[0-9]{17}-[0-9a-f]{6}")
"""What :func:`new_id` makes (``fullmatch``): tells a deployment id from a project's name."""


@dataclass
class Deployment:
    id: str
    project: str
    environment: str
    ref: str
    sha: str
    previous_sha: str = ""
    pusher: str = ""
    delivery_id: str = ""
    trigger: str = "push"
    state: State = State.QUEUED
    reason: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float = 0.0
    finished_at: float = 0.0
    release: str = ""
    status_problem: str = ""
    reuse_release: str = ""  # a rollback's kept release: switched to without fetching or building
    requested_by: str = ""  # who asked for a manual deploy or a rollback (pushes: ``pusher``)
    canceled_by: str = ""  # who canceled it, when someone did
    recipe: str = ""  # where the steps came from: "repo@<short sha>" or "server" ("" before it is known)
    effective_steps: str = ""  # JSON of the steps this deployment runs (workers.recipe.Steps.public)
    commit_title: str = ""
    """The head commit's first line, from the delivery or (manual deploys, long pushes) from git."""
    commit_author: str = ""

    def to_redis(self) -> dict[str, str]:
        """The fields a new record is written with: empty ones are left out, ``from_redis`` restores them.

        Field by field (``dataclasses.asdict`` deep-copies), and only what is set: every field is a
        command argument redis-py encodes on the accept path.
        """
        values = ((name, getattr(self, name)) for name in self.__dataclass_fields__)
        return {name: str(v) for name, v in values if name in _REQUIRED or (v != "" and v != 0.0)}

    @classmethod
    def from_redis(cls, raw: Mapping[Any, bytes | str]) -> Deployment:
        data = {_text(k): _text(v) for k, v in raw.items()}
        known: dict[str, Any] = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for stamp in ("created_at", "started_at", "finished_at"):
            known[stamp] = float(known.get(stamp) or 0.0)
        known["state"] = State(known.get("state", "queued"))
        return cls(**known)

    @property
    def branch(self) -> str:
        return self.ref.removeprefix("refs/heads/").removeprefix("refs/tags/")

    @property
    def duration(self) -> float | None:
        if not self.started_at:
            return None
        return (self.finished_at or time.time()) - self.started_at

    @property
    def triggered_by(self) -> str:
        """``push by X``, ``deploy by Y``, ``rollback by Z``: how it started and who started it.

        Records written before ``requested_by`` existed kept the operator's name in ``pusher``."""
        if self.trigger == "manual":
            kind = "deploy"
        elif self.trigger.startswith("rollback"):
            kind = "rollback"
        else:
            kind = self.trigger
        who = self.pusher if kind == "push" else (self.requested_by or self.pusher)
        return f"{kind} by {who}" if who else kind

    def public(self) -> dict[str, Any]:
        """The record as shown by the API and pages."""
        data = asdict(self)
        data["state"] = str(self.state)
        data["triggered_by"] = self.triggered_by
        data["effective_steps"] = self.steps_run()
        return data

    def steps_run(self) -> dict[str, Any] | None:
        """The effective steps as an object, or None before the recipe was read."""
        if not self.effective_steps:
            return None
        found: dict[str, Any] = json.loads(self.effective_steps)
        return found


_REQUIRED = frozenset(
    f.name for f in fields(Deployment) if f.default is MISSING and f.default_factory is MISSING
)
"""Fields without a default: always written, even empty (a manual deploy's ``sha`` before it resolves)."""


@dataclass
class StepResult:
    """What one build or deploy command did: shown on the page and quoted on failure."""

    phase: str
    index: int
    command: str
    exit_code: int | None
    duration: float
    truncated: bool = False
    timed_out: bool = False
    tail: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Runtime:
    """Where a running deployment runs: its worker's host and the process group of its step."""

    host: str
    step_pgid: str
    lane_token: str


COMMIT_TEXT_LIMIT = 255
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def commit_text(text: str) -> str:
    """A commit's title or author as we keep it: its first line, no control characters, bounded.

    It comes from a push payload or a repository, and is shown on pages, in a terminal and in chats.
    """
    first = text.strip().splitlines()[0] if text.strip() else ""
    return CONTROL_RE.sub(" ", first).strip()[:COMMIT_TEXT_LIMIT]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class DeploymentStore:
    """Reads and writes deployment records; every state change goes through :meth:`transition`."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def add(self, deployment: Deployment, pipe: Pipeline) -> None:
        """Queue the commands that create a record on ``pipe`` (the caller's transaction)."""
        pipe.hset(schema.record(deployment.id), mapping=deployment.to_redis())
        pipe.zadd(
            schema.history(deployment.project, deployment.environment), {deployment.id: deployment.created_at}
        )
        pipe.hincrby(schema.kept(deployment.project, deployment.environment), str(deployment.state), 1)

    def create(self, deployment: Deployment) -> None:
        pipe = self.redis.pipeline()
        self.add(deployment, pipe)
        pipe.execute()

    def get(self, deployment_id: str) -> Deployment:
        raw = self.redis.hgetall(schema.record(deployment_id))
        if not raw:
            raise UnknownDeployment(deployment_id)
        return Deployment.from_redis(raw)

    def transition(
        self, deployment_id: str, wanted: State, reason: str = "", **fields: str | float
    ) -> Deployment:
        """Move a deployment to ``wanted`` atomically, refusing moves the state machine forbids.

        Raises:
            InvalidTransition: the record is in a state that does not lead to ``wanted``.
            UnknownDeployment: there is no such record.
        """
        record_key = schema.record(deployment_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(record_key)
                    raw = pipe.hgetall(record_key)
                    if not raw:
                        raise UnknownDeployment(deployment_id)
                    current = Deployment.from_redis(raw)
                    if wanted not in TRANSITIONS[current.state]:
                        raise InvalidTransition(deployment_id, current.state, wanted)
                    now = time.time()
                    update: dict[str, str] = {k: str(v) for k, v in fields.items()}
                    update["state"] = str(wanted)
                    if reason:
                        update["reason"] = reason
                    if wanted is State.RUNNING:
                        update["started_at"] = str(now)
                    if wanted.terminal:
                        update["finished_at"] = str(now)
                    pipe.multi()
                    pipe.hset(record_key, mapping=update)
                    kept = schema.kept(current.project, current.environment)
                    pipe.hincrby(kept, str(current.state), -1)
                    pipe.hincrby(kept, str(wanted), 1)
                    pipe.execute()
                    return Deployment.from_redis({**{_text(k): _text(v) for k, v in raw.items()}, **update})
                except WatchError:
                    continue

    def runtime(self, deployment_id: str) -> Runtime:
        """The record's runtime fields, written by the worker that runs it ("" where unset)."""
        raw = self.redis.hmget(schema.record(deployment_id), *schema.RUNTIME_FIELDS)
        host, pgid, token = (_text(v) if v is not None else "" for v in raw)
        return Runtime(host, pgid, token)

    def update(self, deployment_id: str, **fields: str | float) -> None:
        """Set informational fields that are not state (release dir, status problem)."""
        self.redis.hset(schema.record(deployment_id), mapping={k: str(v) for k, v in fields.items()})

    def add_step(self, deployment_id: str, step: StepResult) -> None:
        self.redis.rpush(schema.steps(deployment_id), json.dumps(asdict(step)))

    def steps(self, deployment_id: str) -> list[StepResult]:
        return [
            StepResult(**json.loads(raw)) for raw in self.redis.lrange(schema.steps(deployment_id), 0, -1)
        ]

    def history(self, project: str, environment: str, limit: int = 50) -> list[Deployment]:
        ids = self.redis.zrevrange(schema.history(project, environment), 0, limit - 1)
        return [d for d in self.many(_text(i) for i in ids) if d is not None]

    def query(
        self,
        environments: Iterable[tuple[str, str]],
        state: State | None = None,
        sha: str = "",
        since: float = 0.0,
        until: float = float("inf"),
        limit: int = 50,
    ) -> list[Deployment]:
        """Newest first across the given (project, environment) pairs, filtered by state, sha prefix, time.

        Each environment's history is read newest first, a page at a time, and only until it has
        given ``limit`` matches: a list costs what it shows, not the length of the histories.
        """
        found: list[Deployment] = []
        page = max(limit, 100)
        for project, environment in environments:
            history, start, matched = schema.history(project, environment), 0, 0
            while matched < limit:
                ids = self.redis.zrevrangebyscore(history, until, since, start=start, num=page)
                for deployment in self.many(_text(i) for i in ids):
                    if deployment is None or (state is not None and deployment.state is not state):
                        continue
                    if sha and not deployment.sha.startswith(sha.lower()):
                        continue
                    found.append(deployment)
                    matched += 1
                if len(ids) < page:
                    break
                start += page
        found.sort(key=lambda d: (d.created_at, d.id), reverse=True)
        return found[:limit]

    def ended(self, deployment_id: str) -> None:
        """Its ending is complete (final status and notification queued): it may be pruned now."""
        self.redis.hdel(schema.record(deployment_id), schema.ENDING_FIELD)

    def prune_history(self, project: str, environment: str, keep: int, now: float | None = None) -> list[str]:
        """Delete ended deployments beyond the newest ``keep``, with their steps, logs and outboxes.

        Each record is read whole (its state and its ending mark at one instant), and the outbox
        after it: an ending marks the record in its terminal transaction and queues the final status
        before it removes the mark, so a record seen ended and unmarked already shows as owed."""
        history = schema.history(project, environment)
        old = [_text(i) for i in self.redis.zrevrange(history, keep, -1)]
        if not old:
            return []
        now = time.time() if now is None else now
        with self.redis.pipeline(transaction=False) as pipe:
            for deployment_id in old:
                pipe.hgetall(schema.record(deployment_id))
            raws = pipe.execute()
        due = self.redis.zmscore(schema.OUTBOX_DUE, old)  # after the records: see above
        removed = []
        with self.redis.pipeline(transaction=False) as pipe:
            for deployment_id, raw, pending in zip(old, raws, due, strict=True):
                deployment = Deployment.from_redis(raw) if raw else None
                since = float(_text(raw.get(schema.ENDING_FIELD.encode(), raw.get(schema.ENDING_FIELD))) or 0)
                if deployment is not None and not deployment.state.terminal:
                    continue  # never drop one that may still run
                if pending is not None:
                    continue  # nor one whose statuses GitLab does not have yet
                if since and now - since < ENDING_GRACE:
                    continue  # nor one still ending (an ender that died meanwhile lets go after the grace)
                pipe.delete(*schema.deployment_keys(deployment_id))
                pipe.zrem(history, deployment_id)
                if deployment is not None:
                    pipe.hincrby(schema.kept(project, environment), str(deployment.state), -1)
                removed.append(deployment_id)
            pipe.execute()
        return removed

    def kept(self, environments: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, int]]:
        """How many kept deployments each environment has, by state: counted as they change."""
        wanted = list(environments)
        with self.redis.pipeline(transaction=False) as pipe:
            for project, environment in wanted:
                pipe.hgetall(schema.kept(project, environment))
            replies = pipe.execute()
        return {
            env: {str(state): max(0, int(raw.get(state.value.encode(), 0))) for state in State}
            for env, raw in zip(wanted, replies, strict=True)
        }

    def many(self, ids: Iterable[str]) -> list[Deployment | None]:
        pipe = self.redis.pipeline(transaction=False)
        id_list = list(ids)
        for deployment_id in id_list:
            pipe.hgetall(schema.record(deployment_id))
        return [Deployment.from_redis(raw) if raw else None for raw in pipe.execute()]

    def mark_live(self, deployment: Deployment) -> None:
        self.redis.hset(
            schema.live(deployment.project, deployment.environment),
            mapping={"sha": deployment.sha, "deployment": deployment.id, "release": deployment.release},
        )

    def live(self, project: str, environment: str) -> dict[str, str]:
        raw = self.redis.hgetall(schema.live(project, environment))
        return {_text(k): _text(v) for k, v in raw.items()}
