"""``POST /hooks/gitlab/<project>``: the thin Flask adapter over verify → events → intake."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from redis.exceptions import RedisError
from werkzeug.exceptions import RequestEntityTooLarge

from webhook import events, metrics
from webhook.errors import PayloadTooLarge, QueueUnavailable, UnknownProject, WebhookError
from webhook.verify import check_envelope, verify_signature, verify_token
from workers.config import Settings
from workers.queueing import Intake, deployment_url

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
    if configured.signing_keys:
        verify_signature(request.headers, body, configured.signing_keys, time.time())
    if configured.secret_tokens:
        verify_token(request.headers, configured.secret_tokens)
    payload = events.parse(body)
    events.check_project(payload, configured)
    decision = events.classify(request.headers, payload, configured, events.delivery_key(request.headers))
    if isinstance(decision, events.Ignored):
        metrics.delivered("ignored")
        return jsonify(ignored=decision.reason), 200
    intake: Intake = current_app.extensions["pushdeploy.intake"]
    try:
        accepted = intake.accept(configured, decision.environment, decision.push)
    except RedisError:
        current_app.logger.warning("Redis unavailable: delivery for %s answered 503", project)
        raise QueueUnavailable() from None
    if accepted.duplicate:
        metrics.delivered("duplicate")
        return jsonify(duplicate=True, deployment=accepted.deployment_id), 200
    metrics.delivered("accepted")
    url = deployment_url(settings.server.public_url, accepted.deployment_id)
    return jsonify(deployment=accepted.deployment_id, url=url), 202


@hooks.errorhandler(WebhookError)
def refused(error: WebhookError) -> tuple[Response, int]:
    metrics.refused(error.code, error.status_code)
    body: dict[str, Any] = {"error": error.detail}
    return jsonify(body), error.status_code
