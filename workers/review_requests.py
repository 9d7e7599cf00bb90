"""What the web tier asks of review apps: deploy a merge request, stop an app, keep within limits.

Deploying goes through the intake like a push (same duplicate check, record, status and job);
stopping queues the stop job (:mod:`workers.review_stop`) on the deploy queue, so the app's steps
run on a worker, never in a request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

from redis import Redis
from rq import Queue

from workers import defaults
from workers.config import Environment, Project, Settings
from workers.control import cancel
from workers.deployments import DeploymentStore, State
from workers.intake import Accepted, Intake, Push
from workers.operations import OperationError
from workers.reviews import AppState, ReviewApp, ReviewStore

log = logging.getLogger(__name__)

STOP_JOB = "workers.review_stop.stop_review"
STOP_REASONS = {
    "closed": "the merge request was closed",
    "merged": "the merge request was merged",
    "evicted": "more review apps were live than review.max allows: the least recently updated stopped",
    "expired": "no deployment for longer than review.ttl",
    "manual": "stopped by hand",
}
"""Why an app stops, by the code the stop job is given (its only other arguments: project and iid)."""


@dataclass(frozen=True)
class ReviewRequest:
    """A merge request to deploy, type-checked by the caller."""

    iid: int
    base: str  # the environment of the target branch
    branch: str  # the source branch
    title: str


class ReviewDesk:
    def __init__(self, settings: Settings, redis: Redis, intake: Intake) -> None:
        self.settings = settings
        self.redis = redis
        self.intake = intake
        self.store = ReviewStore(redis)
        self.queue = Queue(defaults.DEPLOY_QUEUE, connection=redis)

    def accept(
        self,
        project: Project,
        environment: Environment,
        push: Push,
        request: ReviewRequest,
        deployment_id: str = "",
        created_at: float = 0.0,
    ) -> Accepted:
        """Record the app as live and most recently updated, queue its deployment, keep within ``max``.

        The record is written first: a worker may take the job the moment it is queued, and it finds
        the app's environment (the target branch's settings) through that record. ``deployment_id``
        and ``created_at``: those a journaled delivery was answered with.
        """
        before = self.store.get(project.name, request.iid)
        if before is not None and before.state is not AppState.LIVE:
            self.store.keep(project.name, request.iid)  # reopened: what was set to expire stays
        fields = {"base": request.base, "branch": request.branch, "title": request.title, "sha": push.sha}
        with self.redis.pipeline() as pipe:
            self.store.record(pipe, project.name, request.iid, fields)
            pipe.execute()
        accepted = self.intake.accept(project, environment, push, deployment_id, created_at)
        if accepted.duplicate:
            return accepted
        self.store.set_deployment(project.name, request.iid, accepted.deployment_id)
        self.evict(project, keep=request.iid)
        return accepted

    def request_stop(self, project: Project, iid: int, reason: str, who: str = "") -> bool:
        """Queue the stop of ``review/<iid>``; False when there is no such live app."""
        if reason not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {reason!r}")
        app = self.store.get(project.name, iid)
        if app is None:
            self.store.note_stop(project.name, iid)
            return False
        if app.state is AppState.STOPPED:
            return False
        why = STOP_REASONS[reason] + (f" ({who})" if who else "")  # who stopped it, shown with the app
        self.store.mark(project.name, iid, AppState.STOPPING, why)
        self.cancel_deployments(project, iid, who or f"review app stop ({reason})")
        self.queue.enqueue_call(
            STOP_JOB,
            args=(project.name, iid, reason, who[:255]),
            timeout=2 * defaults.DEPLOY_TIMEOUT,
            result_ttl=0,
            failure_ttl=7 * 24 * 3600,
            description=f"stop {project.name}/review/{iid} ({reason})",
        )
        return True

    def cancel_deployments(self, project: Project, iid: int, who: str) -> None:
        """Cancel the app's queued and running deployments now: a worker busy running one would
        otherwise take the stop job only after it (the stop job cancels again, in case)."""
        store = DeploymentStore(self.redis)
        for deployment in store.history(project.name, f"review/{iid}", limit=20):
            if deployment.state in (State.QUEUED, State.RUNNING):
                with contextlib.suppress(OperationError):
                    cancel(self.settings, self.redis, deployment.id, who)

    def evict(self, project: Project, keep: int = 0) -> list[int]:
        """Stop the least recently updated live apps beyond ``max`` (never ``keep``, just deployed)."""
        if project.review is None:
            return []
        live = self.store.live(project.name)  # most recent first
        beyond = [app for app in live[project.review.max :] if app.iid != keep]
        for app in beyond:
            self.request_stop(project, app.iid, "evicted")
        return [app.iid for app in beyond]

    def expire(self, project: Project, now: float | None = None) -> list[int]:
        """Stop live apps not deployed for ``ttl`` days."""
        if project.review is None:
            return []
        now = time.time() if now is None else now
        idle = [
            a for a in self.store.live(project.name) if now - a.updated_at > project.review.ttl_days * 86400
        ]
        for app in idle:
            self.request_stop(project, app.iid, "expired")
        return [app.iid for app in idle]

    def apps(self, project: Project) -> list[ReviewApp]:
        return self.store.all(project.name)
