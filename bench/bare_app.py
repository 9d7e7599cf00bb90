"""The yardstick for the accept path: Flask that only checks a Standard Webhooks HMAC and answers 202.

It is what a user could write in twenty lines instead of pushdeploy. Run under the very same
gunicorn settings, the gap between it and pushdeploy is what pushdeploy's own work costs.
Deliberately independent of pushdeploy's code (``hmac`` and ``base64`` only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

from flask import Flask, Response, jsonify, request

TOLERANCE = 5 * 60


def create_app(signing_token: str | None = None) -> Flask:
    """gunicorn's entry point: ``bench.bare_app:create_app()``, key from ``BENCH_SIGNING_TOKEN``."""
    token = signing_token or os.environ["BENCH_SIGNING_TOKEN"]
    key = base64.b64decode(token.removeprefix("whsec_"))
    app = Flask(__name__)

    @app.post("/hooks/gitlab/<project>")
    def receive(project: str) -> tuple[Response, int]:
        body = request.get_data()
        msg_id = request.headers.get("webhook-id", "")
        timestamp = request.headers.get("webhook-timestamp", "")
        if not msg_id or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE:
            return jsonify(error="invalid signature"), 401
        expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        for entry in request.headers.get("webhook-signature", "").split(" "):
            version, _, encoded = entry.partition(",")
            if version == "v1" and hmac.compare_digest(base64.b64encode(expected).decode(), encoded):
                return jsonify(accepted=True), 202
        return jsonify(error="invalid signature"), 401

    return app
