"""``POST /hooks/gitlab/<project>``: the thin Flask adapter over verify → events → intake."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from redis.exceptions import RedisError
from werkzeug.exceptions import RequestEntityTooLarge

from webhook import events, metrics
from webhook.errors import InvalidToken, PayloadTooLarge, QueueUnavailable, UnknownProject, WebhookError
from webhook.verify import check_envelope, verify_signature, verify_token
from workers.config import Settings
from workers.deployments import new_id
from workers.journal import Record
from workers.queueing import Accepted, Intake, deployment_url

hooks = Blueprint("hooks", __name__)


@hooks.post("/hooks/gitlab/<project>")
def receive(project: str) -> tuple[Response, int]:
    settings: Settings = current_app.extensions["pushdeploy.settings"]
    limit = settings.server.max_body_bytes
    check_envelope(request.headers, request.content_length, limit)
    configured = settings.projects.get(project)
    if configured is None:
        raise UnknownProject()
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"payload larger than {limit} bytes") from None
    # A chunked body has no Content-Length to check up front, and werkzeug's reader stops quietly
    # at the limit: one more byte from the (server-terminated) raw input tells "at" from "over".
    chunked_over = request.content_length is None and len(body) >= limit and request.input_stream.read(1)
    if len(body) > limit or chunked_over:
        raise PayloadTooLarge(f"payload larger than {limit} bytes")
    if not configured.signing_keys and not configured.secret_tokens:
        raise InvalidToken(
            "this project takes no webhooks (it has no secret_token or signing_token)", "no_tokens"
        )
    if configured.signing_keys:
        verify_signature(request.headers, body, configured.signing_keys, time.time())
    if configured.secret_tokens:
        verify_token(request.headers, configured.secret_tokens)
    payload = events.parse(body)
    events.check_project(payload, configured)
    decision = events.classify(
        request.headers,
        payload,
        configured,
        events.delivery_key(request.headers, signed=bool(configured.signing_keys)),
    )
    if isinstance(decision, events.Ignored):
        metrics.delivered("ignored")
        return jsonify(ignored=decision.reason), 200
    intake: Intake = current_app.extensions["pushdeploy.intake"]
    try:
        accepted = intake.accept(configured, decision.environment, decision.push)
        outcome = "duplicate" if accepted.duplicate else "accepted"
    except RedisError:
        accepted = keep_for_later(settings, configured.name, decision)
        outcome = "journaled"
    metrics.delivered(outcome)
    if accepted.duplicate:
        return jsonify(duplicate=True, deployment=accepted.deployment_id), 200
    url = deployment_url(settings.server.public_url, accepted.deployment_id)
    return jsonify(deployment=accepted.deployment_id, url=url), 202


def keep_for_later(settings: Settings, project: str, decision: events.Deploy) -> Accepted:
    """Redis is unreachable: journal the delivery on local disk (or answer 503 if so configured)."""
    if settings.server.on_redis_down != "journal":
        current_app.logger.warning("Redis unavailable: delivery for %s answered 503", project)
        raise QueueUnavailable()
    deployment_id, push = new_id(), decision.push
    record = Record(
        deployment_id,
        time.time(),
        project,
        decision.environment.name,
        push.ref,
        push.sha,
        push.pusher,
        push.delivery_key,
    )
    try:
        current_app.extensions["pushdeploy.journal"].append(record)
    except OSError:
        current_app.logger.error(
            "Redis unavailable and the journal unwritable: delivery for %s lost", project
        )
        raise QueueUnavailable() from None
    current_app.logger.warning("Redis unavailable: delivery %s for %s journaled", deployment_id, project)
    return Accepted(deployment_id, duplicate=False)


@hooks.errorhandler(WebhookError)
def refused(error: WebhookError) -> tuple[Response, int]:
    metrics.refused(error.code, error.status_code)
    body: dict[str, Any] = {"error": error.detail}
    return jsonify(body), error.status_code
