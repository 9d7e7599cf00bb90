"""Security headers on every answer: pages run only our own scripts and are never framed.

The Content-Security-Policy allows scripts, styles, images and fetches from this origin only (no
inline script: the pages' behaviour lives in ``static/*.js``), forbids framing (the pages carry
cancel and rollback buttons), and ``Referrer-Policy: same-origin`` keeps a signed link in the
address bar from leaking to another site through the ``Referer`` header.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.wrappers import Response

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",  # for browsers older than frame-ancestors
}


def init_app(app: Flask) -> None:
    app.after_request(_secure)


def _secure(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response
