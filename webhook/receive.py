"""``POST /hooks/gitlab/<project>``: the hot path, answered in front of Flask as plain WSGI.

Every delivery runs verify → events → intake and nothing else. Flask's request machinery
(contexts, session, routing, response object) costs about 190 µs of CPU per request on the
benchmark machine, as much as the HMAC check, the strict JSON parse and the classification
together; on a CPU-bound web tier that is throughput the deployments' own work needs. So this
middleware answers the hook path itself and hands every other path to Flask unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from werkzeug.datastructures import EnvironHeaders
from werkzeug.wsgi import get_content_length

from webhook import events, metrics
from webhook.errors import InvalidToken, PayloadTooLarge, QueueUnavailable, UnknownProject, WebhookError
from webhook.journal import Journal, Record
from webhook.verify import check_envelope, verify_signature, verify_token
from workers.config import OnRedisDown, Project, Settings
from workers.deployments import new_id
from workers.intake import Accepted, Intake
from workers.project_ids import ProjectIds
from workers.review_requests import ReviewDesk
from workers.routes import deployment_url

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PATH_PREFIX = "/hooks/gitlab/"
ALLOW = "OPTIONS, POST"

STATUS_LINES = {
    200: "200 OK",
    202: "202 Accepted",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    413: "413 Payload Too Large",
    415: "415 Unsupported Media Type",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}

Answer = tuple[int, dict[str, Any]]


class HookEndpoint:
    """WSGI middleware: answers ``/hooks/gitlab/<project>``, passes everything else to ``app``."""

    def __init__(
        self,
        app: WSGIApplication,
        settings: Settings,
        intake: Intake,
        journal: Journal,
        logger: logging.Logger,
        project_ids: ProjectIds,
    ) -> None:
        self.app = app
        self.settings = settings
        self.intake = intake
        self.journal = journal
        self.log = logger
        self.project_ids = project_ids
        self.reviews = ReviewDesk(settings, intake.redis, intake)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        project = path[len(PATH_PREFIX) :] if path.startswith(PATH_PREFIX) else ""
        if not project or "/" in project:
            return self.app(environ, start_response)
        method = str(environ.get("REQUEST_METHOD", "")).upper()
        extra: list[tuple[str, str]] = []
        if method == "OPTIONS":
            start_response("200 OK", [("Allow", ALLOW), ("Content-Length", "0")])
            return [b""]
        if method != "POST":
            status, body = 405, {"error": "method not allowed; GitLab delivers with POST"}
            extra.append(("Allow", ALLOW))
        else:
            try:
                status, body = self.receive(project, environ)
            except WebhookError as error:
                metrics.refused(error.code, error.status_code)
                status, body = error.status_code, {"error": error.detail}
            except Exception:
                self.log.exception("delivery for %s failed", project)
                status, body = 500, {"error": "internal error"}
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *extra]
        start_response(STATUS_LINES[status], headers)
        return [data]

    def receive(self, project: str, environ: WSGIEnvironment) -> Answer:
        """The SPEC's checks in its order; raises :class:`WebhookError` for each refusal."""
        settings = self.settings
        headers = EnvironHeaders(environ)
        limit = settings.server.max_body_bytes
        length = get_content_length(environ)
        check_envelope(headers, length, limit)
        configured = settings.projects.get(project)
        if configured is None:
            raise UnknownProject()
        if not configured.signing_keys and not configured.secret_tokens:
            raise InvalidToken(
                "this project takes no webhooks (it has no secret_token or signing_token)", "no_tokens"
            )
        if configured.secret_tokens:
            # Before the body: a caller without the token never makes us read (or wait for) one.
            verify_token(headers, configured.secret_tokens)
        body = read_body(environ, length, limit)
        if configured.signing_keys:
            verify_signature(headers, body, configured.signing_keys, time.time())
        payload = events.parse(body)
        events.check_project(payload, configured, self.project_ids.resolve)
        decision = events.classify(
            headers,
            payload,
            configured,
            events.delivery_key(headers, signed=bool(configured.signing_keys)),
        )
        if isinstance(decision, events.Ignored):
            metrics.delivered("ignored")
            return 200, {"ignored": decision.reason}
        if isinstance(decision, events.StopReview):
            return self.stop_review(configured, decision)
        try:
            if isinstance(decision, events.DeployReview):
                accepted = self.reviews.accept(
                    configured, decision.environment, decision.push, decision.review
                )
            else:
                accepted = self.intake.accept(configured, decision.environment, decision.push)
            outcome = "duplicate" if accepted.duplicate else "accepted"
        except RedisError:
            accepted = self.keep_for_later(configured.name, decision)
            outcome = "journaled"
        metrics.delivered(outcome)
        if accepted.duplicate:
            return 200, {"duplicate": True, "deployment": accepted.deployment_id}
        url = deployment_url(settings.server.public_url, accepted.deployment_id)
        return 202, {"deployment": accepted.deployment_id, "url": url}

    def stop_review(self, project: Project, decision: events.StopReview) -> Answer:
        """Close or merge: 202 ``{"stopping": "review/<iid>"}`` (also when no app was live: nothing to do)."""
        outcome = "accepted"
        try:
            self.reviews.request_stop(project, decision.iid, decision.reason)
        except RedisError:
            self._journal(Record.stop(project.name, decision.iid, decision.reason))
            outcome = "journaled"
        metrics.delivered(outcome)
        return 202, {"stopping": f"review/{decision.iid}"}

    def keep_for_later(self, project: str, decision: events.Deploy) -> Accepted:
        """Redis is unreachable: journal the delivery on local disk (or answer 503 if so configured)."""
        deployment_id = new_id()
        review = decision.review if isinstance(decision, events.DeployReview) else None
        record = Record.of(deployment_id, project, decision.environment.name, decision.push, review)
        self._journal(record)
        return Accepted(deployment_id, duplicate=False)

    def _journal(self, record: Record) -> None:
        """Append ``record``, or raise :class:`QueueUnavailable` (503) when the operator prefers that or
        the journal cannot be written."""
        what = record.deployment_id or f"the stop of {record.environment}"
        if self.settings.server.on_redis_down is not OnRedisDown.JOURNAL:
            self.log.warning("Redis unavailable: delivery for %s answered 503", record.project)
            raise QueueUnavailable()
        try:
            self.journal.append(record)
        except OSError:
            self.log.error("Redis unavailable, journal unwritable: delivery for %s lost", record.project)
            raise QueueUnavailable() from None
        self.log.warning("Redis unavailable: delivery %s for %s journaled", what, record.project)


READ_CHUNK = 64 * 1024
"""Bytes asked of the server per read of a chunked body: memory grows with what arrives, not the limit."""


def read_body(environ: WSGIEnvironment, length: int | None, limit: int) -> bytes:
    """The body, never more than ``limit`` bytes of it (413 beyond).

    With a Content-Length (already checked against the limit) exactly that many bytes are read.
    A chunked body has none: it is read piece by piece and reading stops one byte past the
    limit, which tells "at" from "over". Without either, or when the server did not terminate
    the stream, there is nothing that can be read safely.
    """
    stream = environ["wsgi.input"]
    if length is not None:
        return bytes(stream.read(length)) if length else b""
    if not environ.get("wsgi.input_terminated"):
        return b""
    body = bytearray()
    while len(body) <= limit:
        piece = stream.read(min(READ_CHUNK, limit + 1 - len(body)))
        if not piece:
            return bytes(body)
        body += piece
    raise PayloadTooLarge(f"payload larger than {limit} bytes")
