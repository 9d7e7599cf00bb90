"""The status outbox: commit statuses wait here until GitLab has them, apart from the deploy job.

A deployment appends the statuses it wants (``pending``, ``running``, then a terminal one) to its
own list and marks itself due in a sorted set. A courier thread in each worker process delivers
each deployment's list in order, retrying with backoff, so a deployment's outcome never waits on
GitLab and a GitLab outage never loses a final status.

What GitLab told us about a deployment is kept on its record, beside the outbox's progress: the
pipeline its first accepted status landed in (every later status is pinned to it, so a pipeline
started meanwhile for the same sha and ref never captures them and the first one is never left
``running``), and the GitLab deployment it created (found again, not made twice, when a create
timed out after it had landed).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from workers import defaults, schema, telemetry
from workers.deploylog import DeploymentLog, Masker
from workers.deployments import DeploymentStore, UnknownDeployment
from workers.forge import (
    CommitStatus,
    DeploymentUpdate,
    EnvironmentAction,
    Forge,
    ForgeRejected,
    Outcome,
    PipelineGone,
    ReviewNote,
    TransientForgeError,
)
from workers.reviews import ReviewStore
from workers.sender import Sender

log = logging.getLogger(__name__)

DUE_KEY = schema.OUTBOX_DUE
WAKE_KEY = schema.OUTBOX_WAKE
LOCK_TTL_MS = 120_000
SENT_FIELD = schema.SENT_FIELD
ATTEMPT_FIELD = schema.ATTEMPT_FIELD
PROBLEM_FIELD = schema.PROBLEM_FIELD
FORGE_DEPLOYMENT_FIELD = schema.FORGE_DEPLOYMENT_FIELD
FORGE_DEPLOYMENT_MARK_FIELD = schema.FORGE_DEPLOYMENT_MARK_FIELD
PIPELINE_FIELD = schema.PIPELINE_FIELD
FORBIDDEN_FIELD = schema.FORBIDDEN_FIELD
"""Set when GitLab answered a status with 403: said once in the log, the rest are not posted."""


def forbidden_advice(ref: str) -> str:
    """What a 403 from the statuses API means and what to do about it, for the deployment log."""
    return (
        f"GitLab refused this deployment's commit status with 403 Forbidden, so its statuses are not "
        f"shown on GitLab (the deployment itself goes on). The token's user may create statuses only "
        f"as a Developer or above, and on a protected branch or tag ({ref}) only when it may push or "
        f"merge there (GitLab's update_pipeline right). Give the token's user the Maintainer role, or "
        f"allow its role to push or merge to {ref}, or unprotect {ref}."
    )


statuses_key = schema.statuses


Entry = CommitStatus | DeploymentUpdate | ReviewNote | EnvironmentAction


def entry(status: Entry) -> str:
    """How a status is kept in an outbox list."""
    return json.dumps(status.to_dict())


def enqueue_status(
    pipe: Pipeline | Redis,
    deployment_id: str,
    status: Entry,
    now: float | None = None,
) -> None:
    """Add a status (or a GitLab deployment update) to a deployment's outbox, on the caller's pipeline."""
    pipe.rpush(statuses_key(deployment_id), entry(status))
    pipe.zadd(DUE_KEY, {deployment_id: now if now is not None else time.time()})
    pipe.lpush(WAKE_KEY, "1")
    pipe.ltrim(WAKE_KEY, 0, 0)


@dataclass(frozen=True)
class StatusRecord:
    status: CommitStatus
    delivered: bool


def recorded(redis: Redis, deployment_id: str) -> list[StatusRecord]:
    """The statuses a deployment asked for, and which of them GitLab has."""
    raw = redis.lrange(statuses_key(deployment_id), 0, -1)
    sent = int(redis.hget(schema.record(deployment_id), SENT_FIELD) or 0)
    entries = [(json.loads(item), index < sent) for index, item in enumerate(raw)]
    return [StatusRecord(CommitStatus.from_dict(data), done) for data, done in entries if "kind" not in data]


class Courier(Sender):
    """Delivers due outboxes; several couriers (one per worker process) can run side by side."""

    name = "status-courier"
    wake_key = WAKE_KEY

    def __init__(
        self,
        redis: Redis,
        forge: Forge,
        delays: tuple[float, ...] = defaults.STATUS_RETRY_DELAYS,
        keep_deployments: int | None = None,
    ) -> None:
        """With ``keep_deployments``, an ended deployment whose last status GitLab now has is
        pruned with its environment's history (pruning skipped it while statuses were owed)."""
        self.redis = redis
        self.forge = forge
        self.delays = delays
        self.keep = keep_deployments
        self.stopping = threading.Event()

    def deliver_due(self, now: float | None = None) -> int:
        """One pass over due outboxes; returns how many deployments it worked on."""
        now = time.time() if now is None else now
        due = self.redis.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=20)
        worked = 0
        for raw_id in due:
            deployment_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            lock = schema.outbox_lock(deployment_id)
            token = secrets.token_hex(8)
            if not self.redis.set(lock, token, nx=True, px=LOCK_TTL_MS):
                continue  # another courier has it
            try:
                self.deliver(deployment_id)
                worked += 1
            finally:
                if self.redis.get(lock) == token.encode():
                    self.redis.delete(lock)
        return worked

    def deliver(self, deployment_id: str) -> None:
        """Post this deployment's undelivered statuses in order; reschedule on a transient error."""
        record = schema.record(deployment_id)
        while True:
            sent = int(self.redis.hget(record, SENT_FIELD) or 0)
            raw = self.redis.lindex(statuses_key(deployment_id), sent)
            if raw is None:
                if self._close(deployment_id, sent):
                    self._prune_after(deployment_id)
                    return
                continue
            data = json.loads(raw)
            try:
                if data.get("kind") == "deployment":
                    outcome = self._deliver_deployment(record, DeploymentUpdate.from_dict(data))
                elif data.get("kind") == "note":
                    outcome = self._deliver_note(ReviewNote.from_dict(data))
                elif data.get("kind") == "environment":
                    self.forge.environment(EnvironmentAction.from_dict(data))
                    outcome = Outcome.POSTED
                else:
                    outcome = self._deliver_status(deployment_id, record, CommitStatus.from_dict(data))
            except TransientForgeError as exc:
                telemetry.count(self.redis, "status_posts", "retry")
                attempts = int(self.redis.hincrby(record, ATTEMPT_FIELD, 1))
                delay = exc.retry_after or self.delays[min(attempts - 1, len(self.delays) - 1)]
                self.redis.zadd(DUE_KEY, {deployment_id: time.time() + delay})
                log.info(
                    "%s for %s: %s; retry in %.0f s",
                    data.get("state") or data.get("status"),
                    deployment_id,
                    exc,
                    delay,
                )
                return
            except ForgeRejected as exc:
                # A configuration problem: show it on the deployment and skip this status.
                self.redis.hset(record, mapping={PROBLEM_FIELD: str(exc)})
                log.warning(
                    "%s for %s refused: %s", data.get("state") or data.get("status"), deployment_id, exc
                )
                if exc.status_code == 403 and "kind" not in data:
                    self._forbidden(deployment_id, str(data.get("ref", "")))
                outcome = Outcome.REFUSED
            telemetry.count(self.redis, "status_posts", outcome)
            self.redis.hset(record, mapping={SENT_FIELD: str(sent + 1), ATTEMPT_FIELD: "0"})
            log.debug("outbox entry %d for %s: %s", sent, deployment_id, outcome)

    def _deliver_status(self, deployment_id: str, record: str, status: CommitStatus) -> Outcome:
        """Post a commit status into the deployment's pipeline; the first one accepted pins it."""
        if self.redis.hexists(record, FORBIDDEN_FIELD):
            return Outcome.SKIPPED  # GitLab refused this deployment's statuses (403): said once, not repeated
        retrying = int(self.redis.hget(record, ATTEMPT_FIELD) or 0) > 0
        pinned = int(self.redis.hget(record, PIPELINE_FIELD) or 0) or None
        try:
            posted = self.forge.post_status(status, retrying=retrying, pipeline_id=pinned)
        except PipelineGone as gone:
            self.redis.hdel(record, PIPELINE_FIELD)
            self._log(
                deployment_id,
                f"GitLab pipeline {gone.pipeline_id}, which held this deployment's statuses, no longer "
                f"exists (deleted?): {status.state} and the statuses after it go to the newest "
                f"pipeline of {status.ref} instead",
            )
            posted = self.forge.post_status(status, retrying=retrying)
        if posted.pipeline_id and posted.pipeline_id != pinned:
            self.redis.hset(record, PIPELINE_FIELD, str(posted.pipeline_id))
        return posted.outcome

    def _deliver_deployment(self, record: str, update: DeploymentUpdate) -> Outcome:
        """Create the GitLab deployment once (found again if a create landed unseen), then update it."""
        forge_id = (self.redis.hget(record, FORGE_DEPLOYMENT_FIELD) or b"").decode()
        if not forge_id:
            mark = self.redis.hget(record, FORGE_DEPLOYMENT_MARK_FIELD)
            if mark is None:
                # Before the first create: what is there already is not ours.
                self.redis.hset(
                    record, FORGE_DEPLOYMENT_MARK_FIELD, str(self.forge.last_deployment_id(update))
                )
            else:
                # A create was tried before, and may have landed although its answer never came.
                forge_id = self.forge.find_deployment(update, int(mark))
                if forge_id:
                    self.redis.hset(record, FORGE_DEPLOYMENT_FIELD, forge_id)
        created = self.forge.post_deployment(update, forge_id)
        self.redis.hset(record, FORGE_DEPLOYMENT_FIELD, created)
        return Outcome.POSTED

    def _deliver_note(self, note: ReviewNote) -> Outcome:
        """Edit the merge request's note in place (its id is on the review app's record)."""
        reviews = ReviewStore(self.redis)
        known = reviews.note_id(note.owner, note.iid)
        note_id = self.forge.post_note(note, known)
        if note_id and note_id != known:
            reviews.set_note(note.owner, note.iid, note_id)
        return Outcome.POSTED

    def _forbidden(self, deployment_id: str, ref: str) -> None:
        """Say once, in the deployment's log, why GitLab refuses its statuses and what to do."""
        if self.redis.hsetnx(schema.record(deployment_id), FORBIDDEN_FIELD, "1"):
            self._log(deployment_id, forbidden_advice(ref))

    def _log(self, deployment_id: str, text: str) -> None:
        DeploymentLog(self.redis, deployment_id, Masker(())).info(text)

    def _prune_after(self, deployment_id: str) -> None:
        if self.keep is None:
            return
        store = DeploymentStore(self.redis)
        try:
            deployment = store.get(deployment_id)
        except UnknownDeployment:
            return
        if deployment.state.terminal:
            store.prune_history(deployment.project, deployment.environment, self.keep)

    def _close(self, deployment_id: str, sent: int) -> bool:
        """Drop the deployment from the due set unless a status was appended meanwhile."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(statuses_key(deployment_id))
                if int(pipe.llen(statuses_key(deployment_id))) != sent:
                    pipe.reset()
                    return False
                pipe.multi()
                pipe.zrem(DUE_KEY, deployment_id)
                pipe.execute()
                return True
            except WatchError:
                return False
