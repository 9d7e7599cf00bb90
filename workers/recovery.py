"""When a worker dies mid-deployment: end the deployment ``failed`` ("worker lost"), once.

Two ways RQ tells us: a killed work-horse is noticed by its own worker at once
(``work_horse_killed_handler``); a whole worker killed is noticed by another worker's maintenance
pass, which calls the job's failure callback with ``AbandonedJobError`` (heartbeat TTL plus the
maintenance interval: under two minutes with our settings). We do not re-run the deployment: its
steps are the operator's commands and may not be safe to repeat; a new push or a redeploy is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from typing import Any

from redis import Redis
from rq.job import Job

from workers import steps
from workers.config import Settings
from workers.deploylog import DeploymentLog, Masker
from workers.deployments import DeploymentStore, InvalidTransition, State, UnknownDeployment
from workers.forge import StatusState
from workers.lanes import Lane
from workers.queueing import enqueue_job, report

log = logging.getLogger(__name__)

WORKER_LOST = "worker lost"


def job_failed(job: Job, connection: Redis, exc_type: Any, exc_value: Any, traceback: Any) -> None:
    """RQ failure callback: also runs for jobs abandoned by a dead worker."""
    from workers.pipeline import worker_settings

    deployment_id = str(job.args[0]) if job.args else ""
    if deployment_id:
        recover(
            worker_settings(),
            connection,
            deployment_id,
            f"{WORKER_LOST} ({getattr(exc_type, '__name__', exc_type)})",
        )


def horse_killed(job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
    """RQ ``work_horse_killed_handler``: the process running the deployment died (OOM, SIGKILL)."""
    from workers.pipeline import worker_settings

    deployment_id = str(job.args[0]) if job.args else ""
    if deployment_id:
        how = f"signal {os.WTERMSIG(ret_val)}" if os.WIFSIGNALED(ret_val) else f"exit {ret_val}"
        recover(worker_settings(), job.connection, deployment_id, f"{WORKER_LOST} (work-horse {how})")


def recover(settings: Settings, redis: Redis, deployment_id: str, reason: str) -> bool:
    """End a deployment whose worker died; free its lane for the one waiting. False if already ended."""
    store = DeploymentStore(redis)
    try:
        deployment = store.get(deployment_id)
    except UnknownDeployment:
        return False
    if deployment.state.terminal:
        return False
    raw = redis.hgetall(f"pd:dep:{deployment_id}")
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    _kill_leftover_step(fields)
    try:
        ended = store.transition(deployment_id, State.FAILED, reason)
    except InvalidTransition:
        return False
    deplog = DeploymentLog(redis, deployment_id, Masker(settings.all_secrets()))
    deplog.info(f"deployment failed: {reason}; `current` was left as it was, a complete release")
    deplog.flush()
    report(redis, settings, ended, StatusState.FAILED, reason)
    environment = settings.projects.get(ended.project)
    env = environment.environments.get(ended.environment) if environment else None
    if env is not None:
        released = Lane(redis, ended.project, ended.environment).release_for(deployment_id)
        if released.waiting:
            from rq import Queue

            from workers import defaults

            queue = Queue(defaults.DEPLOY_QUEUE, connection=redis)
            enqueue_job(queue, released.waiting, env, f"{released.waiting}-{os.urandom(3).hex()}")
    log.warning("deployment %s: %s", deployment_id, reason)
    return True


def _kill_leftover_step(fields: dict[str, str]) -> None:
    """A dead horse leaves its step's process group running: end it, when it is on this host."""
    pgid = fields.get("step_pgid", "")
    if not pgid.isdigit() or fields.get("host") != socket.gethostname():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(int(pgid), signal.SIGTERM)
    if steps.group_alive(int(pgid)):
        import time

        time.sleep(steps.KILL_GRACE)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pgid), signal.SIGKILL)
