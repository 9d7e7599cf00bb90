"""JSON API under ``/api/v1``: bearer ``admin_token`` (read endpoints; operations come later)."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request
from redis import Redis

from workers.config import Settings
from workers.control import NotCancelable, cancel
from workers.deployments import DeploymentStore, UnknownDeployment

api = Blueprint("api", __name__, url_prefix="/api/v1")


@api.before_request
def authenticate() -> tuple[Response, int] | None:
    settings: Settings = current_app.extensions["pushdeploy.settings"]
    admin = settings.server.admin_token
    if admin is None:
        return jsonify(error="the API is disabled: set server.admin_token"), 401
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), admin.reveal().encode()):
        return jsonify(error="missing or wrong bearer token"), 401
    return None


@api.get("/deployments/<deployment_id>")
def show(deployment_id: str) -> tuple[Response, int]:
    redis: Redis = current_app.extensions["pushdeploy.redis"]
    store = DeploymentStore(redis)
    try:
        record = store.get(deployment_id)
    except UnknownDeployment:
        return jsonify(error="no such deployment"), 404
    data = record.public()
    data["steps"] = [vars(step) for step in store.steps(deployment_id)]
    return jsonify(data), 200


@api.post("/deployments/<deployment_id>/cancel")
def cancel_deployment(deployment_id: str) -> tuple[Response, int]:
    """202 when a running deployment was asked to stop, 200 when a queued one ended, 409 when over."""
    settings: Settings = current_app.extensions["pushdeploy.settings"]
    redis: Redis = current_app.extensions["pushdeploy.redis"]
    try:
        state = cancel(settings, redis, deployment_id, "api")
    except UnknownDeployment:
        return jsonify(error="no such deployment"), 404
    except NotCancelable as exc:
        return jsonify(error=f"deployment already {exc.state}", state=str(exc.state)), 409
    return jsonify(deployment=deployment_id, state=str(state)), 200 if state.value == "canceled" else 202
