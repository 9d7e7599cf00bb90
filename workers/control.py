"""Stopping deployments: cancel on request, supersede by a newer push, and read the cancel flag.

A queued deployment is canceled at once. A running one gets a flag its worker looks at between
and during steps; the worker then signals the step's process group and ends the deployment.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue

from workers import defaults, lifecycle, schema
from workers.config import Settings
from workers.deployments import Deployment, DeploymentStore, State
from workers.operations import OperationError

CANCEL_TTL = 24 * 3600


cancel_key = schema.cancel


def cancel_requested(redis: Redis, deployment_id: str) -> str:
    """Who asked to cancel the deployment, or ""."""
    raw = redis.get(cancel_key(deployment_id))
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")


class NotCancelable(OperationError):
    """The deployment already ended; ``state`` says how."""

    def __init__(self, deployment_id: str, state: State) -> None:
        self.state = state
        super().__init__(f"deployment {deployment_id} already ended: {state}")


def cancel(settings: Settings, redis: Redis, deployment_id: str, who: str) -> State:
    """Cancel a queued deployment now, or ask a running one to stop; returns the state it is in.

    Raises:
        NotCancelable: it already succeeded, failed or was canceled.
        UnknownDeployment: there is no such deployment.
    """
    store = DeploymentStore(redis)
    deployment = store.get(deployment_id)
    if deployment.state is State.QUEUED:
        reason = f"canceled by {who}"
        if lifecycle.end(
            settings, redis, deployment_id, State.CANCELED, reason, note=f"{reason} before it started"
        ):
            store.update(deployment_id, canceled_by=who[:255])
            return State.CANCELED
        deployment = store.get(deployment_id)  # it started meanwhile: ask its worker below
    if deployment.state is State.RUNNING:
        redis.set(cancel_key(deployment_id), who, ex=CANCEL_TTL)
        store.update(deployment_id, canceled_by=who[:255])
        return State.RUNNING
    raise NotCancelable(deployment_id, deployment.state)


def supersede(settings: Settings, redis: Redis, deployment_id: str, newer: str) -> bool:
    """End a waiting deployment because a newer push replaced it; False if it was no longer queued."""
    ended = lifecycle.end(
        settings,
        redis,
        deployment_id,
        State.CANCELED,
        f"superseded by {newer}",
        note=f"superseded by {newer}: the newest push wins",
    )
    return ended is not None


def supersede_older(settings: Settings, redis: Redis, newest: Deployment) -> int:
    """End every queued deployment older than ``newest`` in its environment, and drop their jobs.

    Without this a burst of pushes costs one RQ job run per push just to learn it was superseded;
    with it, the push that claims the lane clears the rest in one pass.
    """
    older = redis.zrangebyscore(schema.history(newest.project, newest.environment), "-inf", newest.created_at)
    ids = [raw.decode() for raw in older if raw.decode() != newest.id]
    queue = Queue(defaults.DEPLOY_QUEUE, connection=redis)
    ended = 0
    for deployment in DeploymentStore(redis).many(ids):
        if deployment is None or deployment.state is not State.QUEUED:
            continue
        if supersede(settings, redis, deployment.id, newest.id):
            queue.remove(deployment.id)
            ended += 1
    return ended
