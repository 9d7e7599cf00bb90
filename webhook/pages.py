"""Server-rendered pages: the overview, a project's history, one deployment with its live log."""

from __future__ import annotations

import time
from typing import Any

from flask import (
    Blueprint,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from redis import Redis
from redis.exceptions import RedisError
from werkzeug.wrappers import Response

from webhook import audit, people, rights, services
from webhook.auth import action_required, link_grants, signin_required
from workers import deploylog, notifications, routes, targets
from workers.audit import Action
from workers.config import Settings
from workers.control import NotCancelable, cancel
from workers.deployments import Deployment, DeploymentStore, State, UnknownDeployment
from workers.intake import Intake
from workers.links import PARAMETER
from workers.operations import OperationError, manual_deploy, rollback
from workers.outbox import recorded
from workers.review_requests import ReviewDesk
from workers.reviews import ReviewStore, environment_of

pages = Blueprint("pages", __name__)

HISTORY_PAGE = 100


def _settings() -> Settings:
    return services.current().settings


def _redis() -> Redis:
    return services.current().redis


def _deployment_or_404(deployment_id: str) -> Deployment:
    try:
        return DeploymentStore(_redis()).get(deployment_id)
    except UnknownDeployment:
        abort(404)


def _viewable(deployment_id: str) -> Deployment:
    """A signed link sees its own deployment; a person sees the deployments of projects they may
    view (others do not exist for them); everyone else signs in."""
    if link_grants(deployment_id):
        return _deployment_or_404(deployment_id)
    if people.current() is None:
        if request.args.get(PARAMETER):
            abort(403, description="this link is not valid (expired, changed, or for another deployment)")
        abort(redirect(url_for("auth.login", next=request.full_path.rstrip("?"))))
    record = _deployment_or_404(deployment_id)
    rights.require_view(record.project)
    return record


def _actionable(deployment_id: str) -> Deployment:
    """The deployment, when the person may deploy, roll back and cancel in its environment."""
    record = _deployment_or_404(deployment_id)
    rights.require_act(record.project, record.environment)
    return record


@pages.get("/healthz")
def healthz() -> tuple[Response, int]:
    try:
        _redis().ping()
    except RedisError:
        return jsonify(ok=False, redis="unreachable"), 503
    return jsonify(ok=True, redis="ok"), 200


@pages.get("/")
@signin_required
def overview() -> str:
    settings = _settings()
    store = DeploymentStore(_redis())
    rows = []
    for name in rights.visible(people.current()):
        project = settings.projects[name]
        for environment in project.environments.values():
            latest = store.history(project.name, environment.name, limit=1)
            live = store.live(project.name, environment.name)
            rows.append((project, environment, latest[0] if latest else None, live))
    return render_template("index.html", rows=rows)


@pages.get(routes.PROJECT)
@signin_required
def project_history(project: str) -> str:
    configured = _settings().projects.get(project)
    if configured is None:
        abort(404)
    rights.require_view(project)
    wanted_state = request.args.get("state", "")
    state = State(wanted_state) if wanted_state in {s.value for s in State} else None
    reviews = ReviewStore(_redis()).all(project) if configured.review is not None else []
    environments = [(project, name) for name in configured.environments]
    environments += [(project, app.environment) for app in reviews]
    deployments = DeploymentStore(_redis()).query(
        environments, state=state, sha=request.args.get("sha", "")[:64], limit=HISTORY_PAGE
    )
    lives = {name: DeploymentStore(_redis()).live(project, name) for name in configured.environments}
    return render_template(
        "project.html",
        project=configured,
        deployments=deployments,
        lives=lives,
        reviews=[app.public(configured) for app in reviews],
        state=wanted_state,
        states=[s.value for s in State],
    )


@pages.get(routes.DEPLOYMENT)
def deployment(deployment_id: str) -> str:
    record = _viewable(deployment_id)
    redis = _redis()
    store = DeploymentStore(redis)
    live = store.live(record.project, record.environment)
    return render_template(
        "deployment.html",
        deployment=record,
        steps=store.steps(deployment_id),
        hosts=targets.hosts(redis, deployment_id),
        log=deploylog.read(redis, deployment_id),
        statuses=recorded(redis, deployment_id),
        notices=notifications.recorded(redis, deployment_id),
        live=live,
        access=request.args.get(PARAMETER, ""),
        needed_role=_needed_role(record),
    )


def _needed_role(record: Deployment) -> str:
    project = _settings().projects.get(record.project)
    environment = project.environments.get(record.environment) if project else None
    return "Maintainer" if environment is not None and environment.protected else "Developer"


@pages.get(routes.DEPLOYMENT + "/log")
def log_lines(deployment_id: str) -> tuple[Response, int]:
    """Lines after ``after``, the state and each host's progress: what the page's live log polls."""
    record = _viewable(deployment_id)
    after = request.args.get("after", "-")
    if after != "-" and not deploylog.valid_entry_id(after):
        abort(400, description="after must be a log entry id")
    lines = deploylog.read(_redis(), deployment_id, after=after, count=2000)
    body: dict[str, Any] = {
        "state": str(record.state),
        "lines": [{"id": line.id, "at": line.at, "kind": line.kind, "text": line.text} for line in lines],
        "hosts": [host.public() for host in targets.hosts(_redis(), deployment_id)],
    }
    return jsonify(body), 200


@pages.post(routes.DEPLOYMENT + "/cancel")
@action_required
def cancel_action(deployment_id: str) -> Response:
    record = _actionable(deployment_id)
    try:
        state = cancel(_settings(), _redis(), deployment_id, audit.actor().name)
        flash("Canceled." if state is State.CANCELED else "Asked the worker to stop; it ends within seconds.")
        audit.log(Action.CANCEL, record.project, record.environment, deployment_id, f"was {record.state}")
    except NotCancelable as exc:
        flash(str(exc))
    return redirect(url_for("pages.deployment", deployment_id=deployment_id))


@pages.post(routes.PROJECT + "/reviews/<int:iid>/stop")
@action_required
def stop_review_action(project: str, iid: int) -> Response:
    configured = _settings().projects.get(project)
    if configured is None:
        abort(404)
    rights.require_view(project)
    if environment_of(_settings(), _redis(), project, f"review/{iid}") is not None:
        rights.require_act(project, f"review/{iid}")
    desk = ReviewDesk(_settings(), _redis(), _intake())
    if desk.request_stop(configured, iid, "manual", audit.actor().name):
        audit.log(Action.REVIEW_STOP, project, f"review/{iid}")
        flash(f"Stopping review/{iid}: a worker runs review.stop and removes its directories.")
    else:
        flash(f"No live review app for merge request !{iid}.")
    return redirect(url_for("pages.project_history", project=project))


@pages.post(routes.DEPLOYMENT + "/redeploy")
@action_required
def redeploy_action(deployment_id: str) -> Response:
    record = _actionable(deployment_id)
    project, environment = _environment_of(record)
    queued = manual_deploy(
        _intake(), project, environment, audit.actor().name, ref=record.ref, sha=record.sha
    )
    audit.log(Action.DEPLOY, record.project, record.environment, queued.id, f"redeploy of {record.id}")
    return redirect(url_for("pages.deployment", deployment_id=queued.id))


@pages.post(routes.DEPLOYMENT + "/rollback")
@action_required
def rollback_action(deployment_id: str) -> Response:
    record = _actionable(deployment_id)
    project, environment = _environment_of(record)
    try:
        queued = rollback(_intake(), project, environment, record, audit.actor().name)
    except OperationError as exc:
        flash(str(exc))
        return redirect(url_for("pages.deployment", deployment_id=deployment_id))
    audit.log(Action.ROLLBACK, record.project, record.environment, queued.id, f"to {record.id}")
    return redirect(url_for("pages.deployment", deployment_id=queued.id))


def _environment_of(record: Deployment) -> tuple[Any, Any]:
    project = _settings().projects.get(record.project)
    environment = environment_of(_settings(), _redis(), record.project, record.environment)
    if project is None or environment is None:
        abort(409, description="this deployment's project or environment is no longer configured")
    return project, environment


def _intake() -> Intake:
    return services.current().intake


@pages.app_template_filter("age")
def age(timestamp: float) -> str:
    if not timestamp:
        return "–"
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


@pages.app_template_filter("clock")
def clock(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp)) if timestamp else ""
