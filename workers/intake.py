"""Intake, the hot path: duplicate check, deployment record, ``pending`` status and RQ job.

One Redis round trip: a transaction holding one script, which claims the delivery id and writes
the record and its outbox entry, and the job that RQ's own ``enqueue(pipeline=…)`` adds. Claim,
record and job are written together or not at all, so a crash or a Redis outage mid-way leaves
nothing behind that a resend of the delivery would trip on. A duplicate costs a second round trip:
the job queued beside the refused claim is deleted (a worker that takes it first finds no record
and discards it). That job always has an id no other job has, so the deletion can only ever
touch it: a fresh deployment id, or for a journaled delivery (whose id was given out while Redis
was down, and may already have a job) the id with a random suffix.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Callback, Queue
from rq.job import Job

from workers import defaults, outbox, schema
from workers.config import Environment, Project
from workers.deployments import Deployment, new_id
from workers.forge import StatusState
from workers.links import LinkSigner
from workers.statuses import commit_status


@dataclass(frozen=True)
class Push:
    """What a verified delivery asks for; every field was type-checked by the caller."""

    ref: str
    sha: str
    pusher: str
    delivery_key: str  # Idempotency-Key, webhook-id or X-Gitlab-Event-UUID; "" when none was sent
    trigger: str = "push"
    commit_title: str = ""  # the head commit's, when the delivery carries it (else git tells the worker)
    commit_author: str = ""


@dataclass(frozen=True)
class Accepted:
    deployment_id: str
    duplicate: bool


log = logging.getLogger(__name__)

REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}\Z")


_ACCEPT = """
-- KEYS: seen, seen at, version 1 seen key, record, history, statuses, outbox due, outbox wake, kept
-- ARGV: deployment id, window in seconds ('0': no delivery id to claim), created_at, pending
--       status ('' for none), delivery id, then the record's fields and values.
-- Writes what DeploymentStore.add and outbox.enqueue_status write; returns the deployment that
-- already holds the delivery id or the record (nothing written), else false.
if redis.call('EXISTS', KEYS[4]) == 1 then
  return ARGV[1]
end
if ARGV[2] ~= '0' then
  local now, window = tonumber(ARGV[3]), tonumber(ARGV[2])
  local first = redis.call('ZSCORE', KEYS[2], ARGV[5])
  if first and tonumber(first) > now - window then
    return redis.call('HGET', KEYS[1], ARGV[5]) or ARGV[1]
  end
  local before = redis.call('GET', KEYS[3])
  if before then
    return before
  end
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - window, 'LIMIT', 0, 32)
  if #expired > 0 then
    redis.call('ZREM', KEYS[2], unpack(expired))
    redis.call('HDEL', KEYS[1], unpack(expired))
  end
  redis.call('ZADD', KEYS[2], now, ARGV[5])
  redis.call('HSET', KEYS[1], ARGV[5], ARGV[1])
end
redis.call('HSET', KEYS[4], unpack(ARGV, 6))
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[9], 'queued', 1)
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[6], ARGV[4])
  redis.call('ZADD', KEYS[7], ARGV[3], ARGV[1])
  redis.call('LPUSH', KEYS[8], '1')
  redis.call('LTRIM', KEYS[8], 0, 0)
end
return false
"""


def seen_deployment(redis: Redis, project: str, delivery_key: str) -> str | None:
    """The deployment a delivery id created while it is remembered, or None."""
    raw = redis.hget(schema.seen(project), delivery_key)
    return raw.decode() if isinstance(raw, bytes) else raw


def job_timeout(environment: Environment) -> int:
    """RQ's timeout outlasts ours: the deployment's own budget, a rollback's, and a margin.

    So our own deadline is what ends a slow deployment, and RQ only ever kills a stuck worker.
    """
    return 2 * environment.timeout + defaults.JOB_TIMEOUT_MARGIN


def enqueue_job(
    queue: Queue, deployment_id: str, environment: Environment, job_id: str, pipe: Pipeline | None = None
) -> Job:
    """The RQ job of a deployment: its only argument is the deployment id.

    A finished job is deleted at once (``result_ttl=0``): the deployment's record is what is kept,
    and an hour of job and result hashes per push was two thirds of Redis's memory on a busy
    repository. A job that failed (a bug, not a failed deployment) stays a week for diagnosis.
    """
    return queue.enqueue_call(
        "workers.pipeline.run_deployment",
        args=(deployment_id,),
        job_id=job_id,
        timeout=job_timeout(environment),
        result_ttl=0,
        failure_ttl=7 * 24 * 3600,
        description=f"deploy {environment.project}/{environment.name} ({deployment_id})",
        on_failure=Callback("workers.recovery.job_failed"),
        pipeline=pipe,
    )


class Intake:
    """Turns accepted pushes into queued deployments. One per process: it keeps its RQ queue."""

    def __init__(
        self,
        redis: Redis,
        public_url: str,
        queue_name: str = defaults.DEPLOY_QUEUE,
        signer: LinkSigner | None = None,
    ) -> None:
        self.redis = redis
        self.public_url = public_url
        self.signer = signer
        self.queue = Queue(queue_name, connection=redis)

    def accept(
        self,
        project: Project,
        environment: Environment,
        push: Push,
        deployment_id: str = "",
        created_at: float = 0.0,
    ) -> Accepted:
        """Queue a push; a journaled one comes with the id and time it was answered with."""
        # A journaled id may already have a job (drained before, then the drainer stopped): this
        # attempt's job gets an id of its own, so refusing it can never delete that one.
        job_id = f"{deployment_id}-{os.urandom(3).hex()}" if deployment_id else ""
        deployment_id = deployment_id or new_id()
        deployment = Deployment(
            id=deployment_id,
            project=project.name,
            environment=environment.name,
            ref=push.ref,
            sha=push.sha,
            pusher=push.pusher,
            delivery_id=push.delivery_key,
            trigger=push.trigger,
            commit_title=push.commit_title,
            commit_author=push.commit_author,
            created_at=created_at or time.time(),
        )
        holder = self.enqueue(project, environment, deployment, push.delivery_key, job_id)
        return Accepted(holder, duplicate=True) if holder else Accepted(deployment_id, duplicate=False)

    def enqueue(
        self,
        project: Project,
        environment: Environment,
        deployment: Deployment,
        delivery_key: str = "",
        job_id: str = "",
    ) -> str:
        """Claim ``delivery_key``, write record, ``pending`` status and job in one transaction.

        Returns "" when queued, or the deployment that already holds the delivery id or the record
        (and nothing of this one is kept). ``job_id`` must be new (default: the deployment's id).
        """
        with self.redis.pipeline() as pipe:
            pipe.multi()
            job = self.add(pipe, project, environment, deployment, delivery_key, job_id or deployment.id)
            raw = pipe.execute()[0]
        if not raw:
            return ""
        try:
            with self.redis.pipeline() as pipe:  # never started: out of its queue, and its hash gone
                self.queue.remove(job, pipeline=pipe)
                pipe.delete(job.key)
                pipe.execute()
        except RedisError as exc:  # harmless: its worker finds no record, or one that runs only once
            log.warning("duplicate delivery: its unused job %s stays queued (%s)", job.id, type(exc).__name__)
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def add(
        self,
        pipe: Pipeline,
        project: Project,
        environment: Environment,
        deployment: Deployment,
        delivery_key: str,
        job_id: str,
    ) -> Job:
        """Put :meth:`enqueue`'s transaction on ``pipe``: the accept script's call, then RQ's job."""
        pending = ""
        if deployment.sha:  # a ref is resolved by the worker, which reports pending then
            status = commit_status(
                self.public_url,
                project,
                environment,
                deployment,
                StatusState.PENDING,
                "Queued for deployment",
                self.signer,
            )
            pending = outbox.entry(status)
        keys = (
            schema.seen(project.name),
            schema.seen_at(project.name),
            schema.seen_v1(project.name, delivery_key),
            schema.record(deployment.id),
            schema.history(deployment.project, deployment.environment),
            schema.statuses(deployment.id),
            schema.OUTBOX_DUE,
            schema.OUTBOX_WAKE,
            schema.kept(deployment.project, deployment.environment),
        )
        window = defaults.SEEN_DELIVERY_TTL if delivery_key else 0
        fields = [part for pair in deployment.to_redis().items() for part in pair]
        pipe.eval(
            _ACCEPT,
            len(keys),
            *keys,
            deployment.id,
            window,
            deployment.created_at,
            pending,
            delivery_key,
            *fields,
        )
        return enqueue_job(self.queue, deployment.id, environment, job_id, pipe)
