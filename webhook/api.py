"""JSON API under ``/api/v1``: deployments, logs, deploy, rollback, cancel, personal tokens, audit.

A caller is a person (:mod:`webhook.people`): ``Authorization: Bearer`` with the admin token or a
personal token, or the browser's session with its CSRF token in ``X-CSRF-Token`` for unsafe
methods. What they may do follows :mod:`webhook.rights`. Errors are JSON ``{"error": "..."}`` with
400 (bad input), 401 (no or wrong token), 403 (not allowed), 404 (no such thing, or one the caller
may not see), 409 (not possible in the current state) or 503 (GitLab cannot say what the caller
may do). ``/api/v1/openapi.json`` describes it all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context
from flask_wtf.csrf import CSRFError
from redis import Redis
from werkzeug.exceptions import HTTPException

from webhook import audit, people, rights, services
from webhook.auth import csrf
from webhook.openapi import document
from webhook.tokens import TokenRefused, TokenStore, expiry
from workers import audit as audit_log
from workers import deploylog, notifications, routes, targets
from workers.audit import Action
from workers.config import NAME_RE, Environment, Project, Settings, review_iid
from workers.control import NotCancelable, cancel
from workers.deployments import Deployment, DeploymentStore, State, UnknownDeployment
from workers.intake import Intake
from workers.operations import NotRollbackable, OperationError, manual_deploy, rollback
from workers.review_requests import ReviewDesk
from workers.reviews import ReviewStore, environment_of
from workers.routes import deployment_url

api = Blueprint("api", __name__, url_prefix=routes.API_PREFIX)
csrf.exempt(api)  # a bearer token is no ambient credential; session calls are checked in authenticate()

FOLLOW_LIMIT = 600.0
"""Seconds one ``?follow=1`` response streams before the client reconnects with ``after``."""

MAX_LIMIT = 500


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _settings() -> Settings:
    return services.current().settings


def _redis() -> Redis:
    return services.current().redis


@api.before_request
def authenticate() -> tuple[Response, int] | None:
    if request.endpoint == "api.openapi":
        return None
    settings = _settings()
    if settings.server.admin_token is None and settings.auth.gitlab_oauth is None:
        return jsonify(error="the API is disabled: set server.admin_token or [auth] gitlab_oauth"), 401
    person = people.current()
    if person is None:
        return jsonify(error="missing or wrong bearer token"), 401
    if not person.by_bearer:  # the browser's session: cookies are sent by any site
        csrf.protect()  # raises CSRFError (400) for an unsafe method without X-CSRF-Token
    elif person.is_admin and request.method in ("GET", "HEAD"):
        audit.admin_read()  # actions are logged as themselves
    return None


@api.errorhandler(CSRFError)
def csrf_refused(error: CSRFError) -> tuple[Response, int]:
    why = "a request with the browser's session needs its CSRF token in X-CSRF-Token"
    return jsonify(error=f"{error.description} ({why})"), 400


@api.errorhandler(ApiError)
def api_error(error: ApiError) -> tuple[Response, int]:
    return jsonify(error=str(error)), error.status


OPERATION_STATUS: dict[type[OperationError], int] = {NotRollbackable: 409, NotCancelable: 409}
"""How the API answers the engine's refusals; any other OperationError is a bad request (400)."""


@api.errorhandler(OperationError)
def operation_error(error: OperationError) -> tuple[Response, int]:
    return jsonify(error=str(error)), OPERATION_STATUS.get(type(error), 400)


@api.errorhandler(HTTPException)
def http_error(error: HTTPException) -> tuple[Response, int]:
    return jsonify(error=error.description or error.name), error.code or 500


@api.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document(_settings()))


@api.get("/deployments")
def list_deployments() -> Response:
    settings = _settings()
    project = request.args.get("project", "")
    environment = request.args.get("environment", "")
    for name, value in (("project", project), ("environment", environment)):
        if value and not NAME_RE.match(value) and not (name == "environment" and review_iid(value)):
            raise ApiError(400, f"{name} is not a valid name")
    visible = set(rights.visible(people.current()))
    if project and project not in visible:
        raise ApiError(404, f"no project {project!r}")
    pairs = [
        (p.name, e)
        for p in settings.projects.values()
        if p.name in visible and (not project or p.name == project)
        for e in p.environments
        if not environment or e == environment
    ]
    if review_iid(environment):  # a review app's environment, review/<iid>
        pairs += [
            (p.name, environment) for p in settings.projects.values() if not project or p.name == project
        ]
    state_text = request.args.get("state", "")
    if state_text and state_text not in {s.value for s in State}:
        raise ApiError(400, "state must be one of " + ", ".join(s.value for s in State))
    limit = _int_arg("limit", 50, 1, MAX_LIMIT)
    since, until = _float_arg("since", 0.0), _float_arg("until", float("inf"))
    sha = request.args.get("sha", "")
    if sha and not all(c in "0123456789abcdefABCDEF" for c in sha):
        raise ApiError(400, "sha must be hex")
    found = DeploymentStore(_redis()).query(
        pairs, State(state_text) if state_text else None, sha[:64], since, until, limit
    )
    return jsonify(deployments=[_public(d) for d in found])


@api.get("/deployments/<deployment_id>")
def show(deployment_id: str) -> Response:
    deployment = _get(deployment_id)
    data = _public(deployment)
    data["steps"] = [vars(step) for step in DeploymentStore(_redis()).steps(deployment_id)]
    data["hosts"] = [host.public() for host in targets.hosts(_redis(), deployment_id)]
    data["notifications"] = [notice.public() for notice in notifications.recorded(_redis(), deployment_id)]
    return jsonify(data)


@api.get("/deployments/<deployment_id>/log")
def log(deployment_id: str) -> Response:
    _get(deployment_id)
    after = request.args.get("after", "-")
    if after != "-" and not deploylog.valid_entry_id(after):
        raise ApiError(400, "after must be a log entry id such as 1795704150321-0")
    redis = _redis()
    follow = request.args.getlist("follow")
    if follow not in ([], ["0"], ["1"]):
        raise ApiError(400, "follow must be 0 or 1")
    if follow != ["1"]:
        lines = deploylog.read(redis, deployment_id, after=after)
        return jsonify(lines=[_line(line) for line in lines], state=str(_get(deployment_id).state))
    return Response(
        stream_with_context(_follow(redis, deployment_id, after)), mimetype="application/x-ndjson"
    )


def _follow(redis: Redis, deployment_id: str, after: str) -> Iterator[str]:
    """NDJSON lines as they are written, then one ``{"state": ...}`` line when the deployment ends."""
    store = DeploymentStore(redis)
    end = time.monotonic() + FOLLOW_LIMIT
    while time.monotonic() < end:
        for line in deploylog.read(redis, deployment_id, after=after, count=1000):
            after = line.id
            yield json.dumps(_line(line)) + "\n"
        state = store.get(deployment_id).state
        if state.terminal:
            for line in deploylog.read(redis, deployment_id, after=after):
                yield json.dumps(_line(line)) + "\n"
            yield json.dumps({"state": str(state)}) + "\n"
            return
        time.sleep(0.5)
    yield json.dumps({"state": str(store.get(deployment_id).state), "reconnect_after": after}) + "\n"


@api.post("/projects/<project>/environments/<environment>/deployments")
def deploy(project: str, environment: str) -> tuple[Response, int]:
    configured, env = _environment(project, environment)
    _may_act(project, environment)
    body = _json_body()
    unknown = set(body) - {"ref", "sha", "by"}
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
    ref, sha, said = body.get("ref", ""), body.get("sha", ""), body.get("by", "")
    if not all(isinstance(value, str) for value in (ref, sha, said)):
        raise ApiError(400, "ref, sha and by must be strings")
    if len(said) > 255:
        raise ApiError(400, "by must be at most 255 characters")
    who = _requester(said)
    queued = manual_deploy(_intake(), configured, env, who, ref, sha)
    audit.log(Action.DEPLOY, project, environment, queued.id, _detail(ref or queued.ref, sha, said))
    return jsonify(deployment=queued.id, url=deployment_url(_settings().server.public_url, queued.id)), 202


def _requester(said: str) -> str:
    """Who a deployment records as requested by: the acting identity, never free text alone.

    ``by`` is accepted only with the admin token (one shared credential: the caller may say who
    they are), and kept next to it as a claim: ``admin (says alice)``.
    """
    person = audit.actor()
    if said and not person.admin:
        raise ApiError(400, "by is accepted only with the admin token: the deployment records who you are")
    return f"{person.name} (says {said})" if said else person.name


def _detail(ref: str, sha: str, said: str = "") -> str:
    parts = [f"ref {ref}" if ref else "", f"sha {sha[:12]}" if sha else "", f"says {said}" if said else ""]
    return ", ".join(p for p in parts if p)


@api.post("/deployments/<deployment_id>/rollback")
def rollback_to(deployment_id: str) -> tuple[Response, int]:
    target = _get(deployment_id)
    configured, env = _environment(target.project, target.environment)
    _may_act(target.project, target.environment)
    queued = rollback(_intake(), configured, env, target, audit.actor().name)
    audit.log(Action.ROLLBACK, target.project, target.environment, queued.id, f"to {target.id}")
    return jsonify(deployment=queued.id, url=deployment_url(_settings().server.public_url, queued.id)), 202


@api.post("/projects/<project>/environments/<environment>/rollback")
def rollback_previous(project: str, environment: str) -> tuple[Response, int]:
    """Roll back to the newest successful deployment before the live one."""
    configured, env = _environment(project, environment)
    _may_act(project, environment)
    store = DeploymentStore(_redis())
    live = store.live(project, environment).get("deployment", "")
    candidates = store.query([(project, environment)], State.SUCCEEDED, limit=MAX_LIMIT)
    older = [d for d in candidates if d.id != live and d.sha != store.live(project, environment).get("sha")]
    if not older:
        raise ApiError(409, "there is no earlier successful deployment to roll back to")
    queued = rollback(_intake(), configured, env, older[0], audit.actor().name)
    audit.log(Action.ROLLBACK, project, environment, queued.id, f"to {older[0].id}")
    return jsonify(
        deployment=queued.id, url=deployment_url(_settings().server.public_url, queued.id), to=older[0].id
    ), 202


@api.post("/deployments/<deployment_id>/cancel")
def cancel_deployment(deployment_id: str) -> tuple[Response, int]:
    """200 when a queued deployment ended, 202 when a running one was asked to stop, 409 when over."""
    target = _get(deployment_id)
    _may_act(target.project, target.environment)
    try:
        state = cancel(_settings(), _redis(), deployment_id, audit.actor().name)
    except NotCancelable as exc:
        return jsonify(error=f"deployment already {exc.state}", state=str(exc.state)), 409
    audit.log(Action.CANCEL, target.project, target.environment, deployment_id, f"was {target.state}")
    return jsonify(deployment=deployment_id, state=str(state)), 200 if state is State.CANCELED else 202


@api.get("/audit")
def audit_entries() -> Response:
    """Newest first; ``cursor`` (the previous page's ``next``) continues where a page ended."""
    if not audit.may_read():
        raise ApiError(403, "reading the audit log needs Maintainer rights or the admin token")
    values = {name: request.args.get(name, "") for name in ("project", "environment", "action", "who")}
    for name in ("project", "environment"):
        if values[name] and not NAME_RE.match(values[name]):
            raise ApiError(400, f"{name} is not a valid name")
    if values["action"] and values["action"] not in {a.value for a in Action}:
        raise ApiError(400, "action must be one of " + ", ".join(a.value for a in Action))
    if len(values["who"]) > 255:
        raise ApiError(400, "who must be at most 255 characters")
    cursor = request.args.get("cursor", "")
    if cursor and not audit_log.valid_cursor(cursor):
        raise ApiError(400, "cursor must be the next value of an earlier page")
    query = audit_log.Query(
        **values, since=_float_arg("since", 0.0), until=_float_arg("until", 0.0), scope=audit.scope()
    )
    entries, following = audit_log.read(_redis(), query, _int_arg("limit", 50, 1, MAX_LIMIT), cursor)
    return jsonify(entries=[e.public() for e in entries], next=following or None)


@api.get("/projects/<project>/reviews")
def list_reviews(project: str) -> Response:
    """The project's review apps, live and recently stopped, most recently deployed first."""
    configured = _project(project)
    if not rights.may_view(project):
        raise ApiError(404, f"no project {project!r}")
    apps = ReviewStore(_redis()).all(project)
    return jsonify(reviews=[app.public(configured) for app in apps])


@api.post("/projects/<project>/reviews/<iid>/stop")
def stop_review(project: str, iid: str) -> tuple[Response, int]:
    """202 while the app stops (a worker runs ``review.stop``), 404 when no app of it is live."""
    configured = _project(project)
    if not rights.may_view(project):
        raise ApiError(404, f"no project {project!r}")
    name = f"review/{iid}"
    if not review_iid(name) or environment_of(_settings(), _redis(), project, name) is None:
        raise ApiError(404, f"no live review app for merge request !{iid}")
    _may_act(project, name)
    desk = ReviewDesk(_settings(), _redis(), _intake())
    if not desk.request_stop(configured, int(iid), "manual", audit.actor().name):
        raise ApiError(404, f"no live review app for merge request !{iid}")
    audit.log(Action.REVIEW_STOP, project, name)
    return jsonify(stopping=name), 202


def _project(project: str) -> Project:
    configured = _settings().projects.get(project)
    if configured is None:
        raise ApiError(404, f"no project {project!r}")
    return configured


def _get(deployment_id: str) -> Deployment:
    """The deployment, if the caller may see its project (else it does not exist for them)."""
    try:
        found = DeploymentStore(_redis()).get(deployment_id)
    except UnknownDeployment:
        raise ApiError(404, "no such deployment") from None
    if not rights.may_view(found.project):
        raise ApiError(404, "no such deployment")
    return found


def _environment(project: str, environment: str) -> tuple[Project, Environment]:
    configured = _settings().projects.get(project)
    env = configured.environments.get(environment) if configured else None
    if configured is None or env is None or not rights.may_view(project):
        raise ApiError(404, f"no environment {project}/{environment}")
    return configured, env


def _may_act(project: str, environment: str) -> None:
    if not rights.may_act(project, environment):
        env = environment_of(_settings(), _redis(), project, environment)
        role = "Maintainer" if env is not None and env.protected else "Developer"
        raise ApiError(403, f"deploy, rollback and cancel in {project}/{environment} need {role} or above")


# -- personal API tokens ---------------------------------------------------------------------


@api.get("/tokens")
def list_tokens() -> Response:
    owner = _token_owner()
    return jsonify(tokens=[record.public() for record in TokenStore(_redis()).owned_by(owner)])


@api.post("/tokens")
def create_token() -> tuple[Response, int]:
    """A new personal token, shown in this answer only."""
    person = people.current()
    owner = _token_owner()
    assert person is not None
    if person.via is people.Via.TOKEN:
        raise ApiError(403, "a personal token cannot create tokens: sign in with GitLab to create one")
    body = _json_body()
    unknown = set(body) - {"name", "expires_at"}
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
    name = body.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "name is required: a string that says what the token is for")
    try:
        record, token = TokenStore(_redis()).create(
            person.username, owner, name, expiry(body.get("expires_at"), _settings().auth.token_max_days)
        )
    except TokenRefused as exc:
        raise ApiError(400, str(exc)) from None
    audit.log(Action.TOKEN_CREATED, detail=f"{record.name} ({record.id})")
    answer = jsonify({**record.public(), "token": token})
    answer.headers["Cache-Control"] = "no-store"  # the token must not stay in a cache
    return answer, 201


@api.delete("/tokens/<token_id>")
def revoke_token(token_id: str) -> tuple[str, int]:
    if not TokenStore(_redis()).revoke(_token_owner(), token_id):
        raise ApiError(404, "you have no such token")
    audit.log(Action.TOKEN_REVOKED, detail=token_id)
    return "", 204


def _token_owner() -> int:
    """The GitLab user id of the caller: tokens belong to people, and the admin token is nobody."""
    person = people.current()
    if person is None or person.user_id is None:
        raise ApiError(403, "personal tokens belong to GitLab users: sign in with GitLab to manage them")
    return person.user_id


def _intake() -> Intake:
    return services.current().intake


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if body is None and request.get_data():
        raise ApiError(400, "the body must be a JSON object")
    if body is not None and not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body or {}


def _public(deployment: Deployment) -> dict[str, Any]:
    data = deployment.public()
    data["url"] = deployment_url(_settings().server.public_url, deployment.id)
    return data


def _line(line: deploylog.LogLine) -> dict[str, Any]:
    return {"id": line.id, "at": line.at, "kind": line.kind, "text": line.text}


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    if name not in request.args:
        return default
    text = request.args[name]
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}")
    return int(text)


def _float_arg(name: str, default: float) -> float:
    if name not in request.args:
        return default
    text = request.args[name]
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a Unix time in seconds") from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise ApiError(400, f"{name} must be a Unix time in seconds")
    return value
