"""How a deployment ends, whichever way it ends: one place for everything an ending owes.

An ending is the state transition (refused when the deployment already ended, so every deployment
ends exactly once), its last log line, the finished counter and durations, the ``live`` marker of
a success, the final commit status into the outbox, its notification (``failed``, ``recovered``…)
into the notification outbox, the history pruned to ``keep_deployments``,
and the lane handed on to the deployment waiting for it. The pipeline, the recovery of a dead
worker, cancel and supersede all end deployments through :func:`end`; the lane's waiting
deployment is started only through :func:`start_waiting`.
"""

from __future__ import annotations

import logging
import os
import time

from redis import Redis
from rq import Queue

from workers import defaults, notifications, schema, telemetry
from workers.config import NotifyEvent, Settings
from workers.deploylog import DeploymentLog, Masker
from workers.deployments import Deployment, DeploymentStore, InvalidTransition, State, UnknownDeployment
from workers.forge import StatusState
from workers.intake import enqueue_job
from workers.lanes import Lane
from workers.reviews import environment_of
from workers.statuses import report

log = logging.getLogger(__name__)

FINAL_STATUS = {
    State.SUCCEEDED: StatusState.SUCCESS,
    State.FAILED: StatusState.FAILED,
    State.CANCELED: StatusState.CANCELED,
}


def end(
    settings: Settings,
    redis: Redis,
    deployment_id: str,
    state: State,
    reason: str = "",
    *,
    note: str = "",
    lane_token: str = "",
) -> Deployment | None:
    """End a deployment in ``state``; None when it had already ended (nothing else is done then).

    ``note`` replaces the default last log line. ``lane_token`` is the lane hold to give up: the
    runner's fenced token, or ``"<id>:"`` for whatever hold that deployment had (a dead worker's).
    A deployment that never held its lane passes none.
    """
    store = DeploymentStore(redis)
    try:
        # Marked as ending in the same transaction: pruning leaves it alone until store.ended().
        final = store.transition(deployment_id, state, reason, **{schema.ENDING_FIELD: time.time()})
    except (InvalidTransition, UnknownDeployment):
        return None
    deplog = DeploymentLog(redis, deployment_id, Masker(settings.all_secrets()))
    deplog.info(note or f"deployment {state}" + (f": {reason}" if reason else ""))
    deplog.flush()
    _measure(redis, final)
    if state is State.SUCCEEDED:
        store.mark_live(final)
    report(redis, settings, final, FINAL_STATUS[state], reason or "Deployed")
    notify(settings, redis, final)
    store.ended(deployment_id)
    store.prune_history(final.project, final.environment, settings.server.keep_deployments)
    if lane_token:
        hand_over(settings, redis, final.project, final.environment, lane_token)
    return final


def notify(
    settings: Settings, redis: Redis, deployment: Deployment, event: NotifyEvent | None = None
) -> None:
    """Queue a deployment's notification (its ending's, by default); a problem here never fails it."""
    try:
        if event is None:
            notifications.announce_end(redis, settings, deployment)
        else:
            notifications.announce(redis, settings, deployment, event)
    except Exception:
        log.exception("deployment %s: its notification could not be queued", deployment.id)


def hand_over(settings: Settings, redis: Redis, project: str, environment: str, token: str) -> str:
    """Free the lane ``token`` holds and start the deployment that waited for it; returns its id or ""."""
    released = Lane(redis, project, environment).release(token)
    if released.waiting:
        start_waiting(settings, redis, project, environment, released.waiting)
    return released.waiting


def start_waiting(
    settings: Settings, redis: Redis, project: str, environment: str, deployment_id: str
) -> None:
    """Queue the job of a deployment that waited for its lane (its first job ended with "waiting").

    The job id has a suffix of its own: the deployment's first job may still be in RQ's registries.
    """
    env = environment_of(settings, redis, project, environment)
    if env is None:
        end(
            settings,
            redis,
            deployment_id,
            State.FAILED,
            "project or environment no longer in the configuration",
        )
        return
    queue = Queue(defaults.DEPLOY_QUEUE, connection=redis)
    enqueue_job(queue, deployment_id, env, f"{deployment_id}-{os.urandom(3).hex()}")


def _measure(redis: Redis, final: Deployment) -> None:
    with redis.pipeline(transaction=False) as pipe:
        telemetry.count(pipe, "finished", str(final.state))
        if final.started_at:
            telemetry.observe(pipe, "phase", telemetry.Phase.TOTAL, final.finished_at - final.started_at)
        if final.state is State.SUCCEEDED:
            telemetry.observe(pipe, "push_to_live", "all", final.finished_at - final.created_at)
        pipe.execute()
