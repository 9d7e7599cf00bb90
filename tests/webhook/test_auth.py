"""Sign-in and forms: CSRF on every post (refused posts change nothing), the session cookie's flags
and rotation, sign-in attempts limited per address and per account, the API with a browser session."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask.testing import FlaskClient
from redis import Redis

from tests.helpers import ADMIN_TOKEN, csrf_token, push_body, signed_headers
from webhook.app import create_app
from workers import audit
from workers.audit import Query
from workers.config import Settings
from workers.deployments import Deployment, DeploymentStore, State

SHA = "ab" * 20


@pytest.fixture
def client(make_settings: Callable[..., Settings], redis: Redis) -> FlaskClient:
    return create_app(make_settings(), redis).test_client()


def add(redis: Redis, deployment_id: str, state: State) -> None:
    DeploymentStore(redis).create(
        Deployment(
            deployment_id, "sample-app", "production", "refs/heads/main", SHA, state=state, release="r"
        )
    )


def sign_in(client: FlaskClient) -> None:
    form = client.get("/login/admin").get_data(as_text=True)
    assert (
        client.post("/login/admin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_token(form)}).status_code
        == 302
    )


def snapshot(redis: Redis) -> dict[bytes, object]:
    """Every key with its content: what "changes nothing" is checked against."""
    found: dict[bytes, object] = {}
    for key in redis.scan_iter():
        kind = redis.type(key)
        if kind == b"hash":
            found[key] = redis.hgetall(key)
        elif kind == b"zset":
            found[key] = redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            found[key] = redis.lrange(key, 0, -1)
        elif kind == b"string":
            found[key] = redis.get(key)
        elif kind == b"stream":
            found[key] = redis.xrange(key)
        else:
            found[key] = kind
    return found


def test_a_post_without_a_valid_csrf_token_answers_400_and_changes_nothing(
    client: FlaskClient, redis: Redis
) -> None:
    add(redis, "live1", State.SUCCEEDED)
    add(redis, "old1", State.SUCCEEDED)
    add(redis, "q1", State.QUEUED)
    sign_in(client)
    before = snapshot(redis)
    for path in (
        "/deployments/q1/cancel",
        "/deployments/old1/rollback",
        "/deployments/old1/redeploy",
        "/logout",
    ):
        for data in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
            answer = client.post(path, data=data)
            assert answer.status_code == 400, (path, data)
            assert "expired" in answer.get_data(as_text=True)
    assert snapshot(redis) == before  # no deployment, no cancel, no audit entry, no queue job
    assert client.get("/").status_code == 200  # and the logout did not happen either


def test_a_token_from_another_session_is_refused(
    client: FlaskClient, make_settings: Callable[..., Settings], redis: Redis
) -> None:
    add(redis, "q1", State.QUEUED)
    other = create_app(make_settings(), redis).test_client()
    sign_in(other)
    theirs = csrf_token(other.get("/deployments/q1").get_data(as_text=True))
    sign_in(client)
    assert client.post("/deployments/q1/cancel", data={"csrf_token": theirs}).status_code == 400
    assert DeploymentStore(redis).get("q1").state is State.QUEUED


def test_the_login_form_needs_its_csrf_token_too(client: FlaskClient, redis: Redis) -> None:
    assert client.post("/login/admin", data={"token": ADMIN_TOKEN}).status_code == 400
    assert client.get("/").status_code == 302  # not signed in
    assert audit.read(redis, Query(), 10)[0] == []


def test_the_session_is_replaced_at_sign_in(client: FlaskClient) -> None:
    form = client.get("/login/admin").get_data(as_text=True)
    before = csrf_token(form)
    client.post("/login/admin", data={"token": ADMIN_TOKEN, "csrf_token": before})
    after = csrf_token(client.get("/").get_data(as_text=True))
    assert after != before  # nothing chosen before sign-in survives it
    assert client.post("/logout", data={"csrf_token": before}).status_code == 400


def test_the_session_cookie_flags(make_settings: Callable[..., Settings], redis: Redis) -> None:
    for public_url, secure in (("http://pushdeploy.test", False), ("https://pushdeploy.test", True)):
        client = create_app(make_settings(server={"public_url": public_url}), redis).test_client()
        answer = client.get("/login/admin")  # its form sets the session (the CSRF token)
        cookie = answer.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert ("Secure" in cookie) is secure, public_url


def test_sign_in_attempts_are_limited_per_address(client: FlaskClient, redis: Redis) -> None:
    form = client.get("/login/admin").get_data(as_text=True)
    data = {"token": "guess", "csrf_token": csrf_token(form)}
    for _ in range(20):
        assert client.post("/login/admin", data=data).status_code == 200
    refused = client.post("/login/admin", data=data)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 and refused.mimetype == "text/html"
    data["token"] = ADMIN_TOKEN  # even the right token waits: the limit is on attempts
    assert client.post("/login/admin", data=data).status_code == 429
    assert client.get("/").status_code == 302
    failed = audit.read(redis, Query(action="sign_in_failed"), 100)[0]
    assert [e.detail for e in failed].count("rate limited") == 1  # one entry per window, not per request


def test_the_account_limit_holds_across_addresses(client: FlaskClient) -> None:
    form = client.get("/login/admin").get_data(as_text=True)
    data = {"token": "guess", "csrf_token": csrf_token(form)}
    for i in range(20):
        assert (
            client.post("/login/admin", data=data, environ_base={"REMOTE_ADDR": f"192.0.2.{i}"}).status_code
            == 200
        )
    answer = client.post("/login/admin", data=data, environ_base={"REMOTE_ADDR": "198.51.100.1"})
    assert answer.status_code == 429 and "Retry-After" in answer.headers


def test_the_api_takes_the_browser_session_with_the_csrf_header(client: FlaskClient, redis: Redis) -> None:
    add(redis, "q1", State.QUEUED)
    add(redis, "q2", State.QUEUED)
    sign_in(client)
    assert client.get("/api/v1/deployments").status_code == 200  # reads need no CSRF token
    assert client.post("/api/v1/deployments/q1/cancel").status_code == 400
    assert client.post("/api/v1/deployments/q1/cancel", headers={"X-CSRF-Token": "forged"}).status_code == 400
    assert DeploymentStore(redis).get("q1").state is State.QUEUED
    token = csrf_token(client.get("/").get_data(as_text=True))
    answer = client.post("/api/v1/deployments/q1/cancel", headers={"X-CSRF-Token": token})
    assert answer.status_code == 200 and DeploymentStore(redis).get("q1").state is State.CANCELED


def test_the_webhook_and_bearer_api_need_no_csrf_token(client: FlaskClient, redis: Redis) -> None:
    add(redis, "q1", State.QUEUED)
    body = push_body(SHA)
    assert client.post("/hooks/gitlab/sample-app", data=body, headers=signed_headers(body)).status_code == 202
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert client.post("/api/v1/deployments/q1/cancel", headers=bearer).status_code == 200
