"""The status outbox: commit statuses wait here until GitLab has them, apart from the deploy job.

A deployment appends the statuses it wants (``pending``, ``running``, then a terminal one) to its
own list and marks itself due in a sorted set. A courier thread in each worker process delivers
each deployment's list in order, retrying with backoff, so a deployment's outcome never waits on
GitLab and a GitLab outage never loses a final status.
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
from redis.exceptions import RedisError, WatchError

from workers import defaults, telemetry
from workers.deployments import OUTBOX_DUE_KEY, PREFIX, key
from workers.forge import CommitStatus, DeploymentUpdate, Forge, ForgeRejected, TransientForgeError

log = logging.getLogger(__name__)

DUE_KEY = OUTBOX_DUE_KEY
WAKE_KEY = f"{PREFIX}:outbox:wake"
LOCK_TTL_MS = 120_000
SENT_FIELD = "statuses_sent"
ATTEMPT_FIELD = "status_attempts"
PROBLEM_FIELD = "status_problem"
FORGE_DEPLOYMENT_FIELD = "gitlab_deployment_id"


def statuses_key(deployment_id: str) -> str:
    return f"{PREFIX}:dep:{deployment_id}:statuses"


def entry(status: CommitStatus | DeploymentUpdate) -> str:
    """How a status is kept in an outbox list."""
    return json.dumps(status.to_dict())


def enqueue_status(
    pipe: Pipeline | Redis,
    deployment_id: str,
    status: CommitStatus | DeploymentUpdate,
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
    sent = int(redis.hget(key(deployment_id), SENT_FIELD) or 0)
    entries = [(json.loads(item), index < sent) for index, item in enumerate(raw)]
    return [StatusRecord(CommitStatus.from_dict(data), done) for data, done in entries if "kind" not in data]


class Courier:
    """Delivers due outboxes; several couriers (one per worker process) can run side by side."""

    def __init__(
        self, redis: Redis, forge: Forge, delays: tuple[float, ...] = defaults.STATUS_RETRY_DELAYS
    ) -> None:
        self.redis = redis
        self.forge = forge
        self.delays = delays
        self.stopping = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="status-courier", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if not self.deliver_due():
                    self.redis.blpop([WAKE_KEY], timeout=1)
            except RedisError as exc:
                log.warning("status courier: Redis unavailable (%s); retrying", type(exc).__name__)
                self.stopping.wait(1.0)
            except Exception:
                log.exception("status courier: unexpected error; retrying")
                self.stopping.wait(1.0)

    def deliver_due(self, now: float | None = None) -> int:
        """One pass over due outboxes; returns how many deployments it worked on."""
        now = time.time() if now is None else now
        due = self.redis.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=20)
        worked = 0
        for raw_id in due:
            deployment_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            lock = f"{PREFIX}:outbox:lock:{deployment_id}"
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
        record = key(deployment_id)
        while True:
            sent = int(self.redis.hget(record, SENT_FIELD) or 0)
            raw = self.redis.lindex(statuses_key(deployment_id), sent)
            if raw is None:
                if self._close(deployment_id, sent):
                    return
                continue
            data = json.loads(raw)
            status: CommitStatus | DeploymentUpdate
            try:
                if data.get("kind") == "deployment":
                    status = DeploymentUpdate.from_dict(data)
                    forge_id = self.redis.hget(record, FORGE_DEPLOYMENT_FIELD) or b""
                    created = self.forge.post_deployment(status, forge_id.decode())
                    self.redis.hset(record, FORGE_DEPLOYMENT_FIELD, created)
                    outcome = "posted"
                else:
                    status = CommitStatus.from_dict(data)
                    retrying = int(self.redis.hget(record, ATTEMPT_FIELD) or 0) > 0
                    outcome = self.forge.post_status(status, retrying=retrying)
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
                outcome = "refused"
            telemetry.count(self.redis, "status_posts", outcome)
            self.redis.hset(record, mapping={SENT_FIELD: str(sent + 1), ATTEMPT_FIELD: "0"})
            log.debug("outbox entry %d for %s: %s", sent, deployment_id, outcome)

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
