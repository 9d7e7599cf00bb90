"""Why a delivery was refused; each carries the HTTP status it is answered with.

::

    WebhookError
    ├── PayloadTooLarge        413
    ├── UnsupportedMediaType   415
    ├── UnknownProject         404
    ├── InvalidToken           401  (X-Gitlab-Token missing or not matching; needs no body)
    ├── InvalidSignature       401  (unsigned; Standard Webhooks headers partial, malformed, stale
    │                                or not matching)
    ├── InvalidPayload         400  (not strict JSON, or a used field has the wrong type)
    ├── ProjectMismatch        403  (the payload names another GitLab project, by path and by id)
    └── QueueUnavailable       503  (Redis did not answer in time)

Messages are fixed texts plus configured names: never a token, a signature or a digest.
"""

from __future__ import annotations


class WebhookError(Exception):
    """``code`` is a short, fixed label for metrics (``signature_stale``), never payload text."""

    status_code = 400
    reason = "bad request"
    code = "bad_request"

    def __init__(self, detail: str | None = None, code: str | None = None) -> None:
        self.detail = detail or self.reason
        self.code = code or type(self).code
        super().__init__(self.detail)


class PayloadTooLarge(WebhookError):
    status_code = 413
    reason = "payload too large"
    code = "too_large"


class UnsupportedMediaType(WebhookError):
    status_code = 415
    reason = "content type must be application/json"
    code = "content_type"


class UnknownProject(WebhookError):
    status_code = 404
    reason = "unknown project"
    code = "unknown_project"


class InvalidSignature(WebhookError):
    status_code = 401
    reason = "invalid signature"
    code = "signature"


class InvalidToken(WebhookError):
    status_code = 401
    reason = "invalid X-Gitlab-Token"
    code = "token"


class InvalidPayload(WebhookError):
    status_code = 400
    reason = "invalid payload"
    code = "payload"


class ProjectMismatch(WebhookError):
    status_code = 403
    reason = "payload is for another GitLab project"
    code = "project_mismatch"


class QueueUnavailable(WebhookError):
    status_code = 503
    reason = "deployment queue unavailable; try again"
    code = "queue_unavailable"
