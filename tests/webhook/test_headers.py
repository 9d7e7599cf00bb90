"""Security headers on every page: every GET route of the app is walked, signed in and not."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask
from redis import Redis

from tests.helpers import ADMIN_TOKEN, csrf_token
from webhook.app import create_app
from webhook.people import SESSION_PERSON
from workers.config import Settings
from workers.deployments import Deployment, DeploymentStore, State

VALUES = {
    "project": "sample-app",
    "environment": "production",
    "deployment_id": "d1",
    "filename": "style.css",
    "iid": "5",
    "token_id": "0123456789abcdef",
}


def get_routes(app: Flask) -> list[str]:
    paths = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or set()):
            continue
        path = rule.rule
        for name in rule.arguments:
            path = re.sub(rf"<(?:[a-z]+:)?{name}>", VALUES[name], path)
        paths.append(path)
    return paths


def test_every_page_sends_the_security_headers(make_settings: Callable[..., Settings], redis: Redis) -> None:
    DeploymentStore(redis).create(
        Deployment("d1", "sample-app", "production", "refs/heads/main", "ab" * 20, state=State.SUCCEEDED)
    )
    app = create_app(make_settings(), redis)
    paths = get_routes(app)
    assert {
        "/",
        "/login",
        "/login/admin",
        "/tokens",
        "/audit",
        "/projects/sample-app",
        "/deployments/d1",
        "/healthz",
        "/metrics",
    } <= set(paths)
    stranger, operator = app.test_client(), app.test_client()
    form = operator.get("/login/admin").get_data(as_text=True)
    operator.post("/login/admin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_token(form)})
    html = 0
    for client in (stranger, operator):
        for path in paths:
            answer = client.get(path)
            assert answer.status_code < 500, path
            headers = answer.headers
            assert headers.get("X-Content-Type-Options") == "nosniff", path
            policy = headers.get("Content-Security-Policy", "")
            assert "default-src 'none'" in policy and "unsafe-inline" not in policy, path
            if answer.mimetype != "text/html" and not answer.location:
                continue  # a badge keeps its own stricter policy (no scripts at all, sandboxed)
            assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, path
            assert headers.get("Referrer-Policy") == "same-origin", path
            html += answer.mimetype == "text/html"
    assert html >= 8  # the pages themselves were among them, not only redirects and JSON
    person = app.test_client()  # a GitLab user's own page (the admin token holds no tokens)
    with person.session_transaction() as session:
        session[SESSION_PERSON] = {"username": "dev", "id": 7}
    answer = person.get("/tokens")
    assert answer.status_code == 200 and 'name="csrf_token"' in answer.get_data(as_text=True)
    policy = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy


def test_no_template_has_inline_script_or_handlers() -> None:
    from pathlib import Path

    import webhook

    for template in (Path(webhook.__file__).parent / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template.name
        assert not re.search(r"\son[a-z]+\s*=", text), template.name
        assert "style=" not in text, template.name  # style-src 'self' too
