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

from workers import engine, lifecycle, steps
from workers.config import Settings
from workers.deployments import DeploymentStore, Runtime, State, UnknownDeployment
from workers.reviews import environment_of
from workers.rollout import end_remote_steps

log = logging.getLogger(__name__)

WORKER_LOST = "worker lost"


def job_failed(job: Job, connection: Redis, exc_type: Any, exc_value: Any, traceback: Any) -> None:
    """RQ failure callback: also runs for jobs abandoned by a dead worker."""
    deployment_id = str(job.args[0]) if job.args else ""
    if deployment_id:
        recover(
            engine.current(connection).settings,
            connection,
            deployment_id,
            f"{WORKER_LOST} ({getattr(exc_type, '__name__', exc_type)})",
        )


def horse_killed(job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
    """RQ ``work_horse_killed_handler``: the process running the deployment died (OOM, SIGKILL)."""
    deployment_id = str(job.args[0]) if job.args else ""
    if deployment_id:
        how = f"signal {os.WTERMSIG(ret_val)}" if os.WIFSIGNALED(ret_val) else f"exit {ret_val}"
        recover(
            engine.current(job.connection).settings,
            job.connection,
            deployment_id,
            f"{WORKER_LOST} (work-horse {how})",
        )


def recover(settings: Settings, redis: Redis, deployment_id: str, reason: str) -> bool:
    """End a deployment whose worker died; free its lane for the one waiting. False if already ended."""
    store = DeploymentStore(redis)
    try:
        deployment = store.get(deployment_id)
    except UnknownDeployment:
        return False
    if deployment.state.terminal:
        return False
    _kill_leftover_step(store.runtime(deployment_id))
    _end_remote_steps(settings, redis, deployment.project, deployment.environment, deployment_id)
    ended = lifecycle.end(
        settings,
        redis,
        deployment_id,
        State.FAILED,
        reason,
        note=f"deployment failed: {reason}; `current` was left as it was, a complete release",
        lane_token=f"{deployment_id}:",
    )
    if ended is None:
        return False
    log.warning("deployment %s: %s", deployment_id, reason)
    return True


def _end_remote_steps(
    settings: Settings, redis: Redis, project: str, environment: str, deployment_id: str
) -> None:
    """A dead worker's steps on its targets keep running too: end them over SSH."""
    env = environment_of(settings, redis, project, environment)
    if env is None or not env.targets:
        return
    try:
        ended = end_remote_steps(env, redis, deployment_id, os.environ)
    except Exception:  # recovery must still end the deployment
        log.exception("deployment %s: could not end its steps on the targets", deployment_id)
        return
    if ended:
        log.warning("deployment %s: ended its steps left running on %s", deployment_id, ", ".join(ended))


def _kill_leftover_step(runtime: Runtime) -> None:
    """A dead horse leaves its step's process group running: end it, when it is on this host."""
    pgid = runtime.step_pgid
    if not pgid.isdigit() or runtime.host != socket.gethostname():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(int(pgid), signal.SIGTERM)
    if steps.group_alive(int(pgid)):
        import time

        time.sleep(steps.KILL_GRACE)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pgid), signal.SIGKILL)
