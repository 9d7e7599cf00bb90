"""Personal API tokens: shown once, kept as hashes, expiring, revocable, acting with current rights."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from tests import people
from tests.fakegitlab import FakeGitLab
from tests.helpers import ADMIN_TOKEN, GitRepo, admin_sign_in, session_csrf
from webhook.app import create_app
from webhook.tokens import TokenRefused, TokenStore, expiry
from workers import audit as audit_store
from workers import schema
from workers.audit import Query
from workers.config import load

PUBLIC_URL = "http://pushdeploy.test"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGitLab]:
    made = people.gitlab().start()
    people.arrange(made, PUBLIC_URL)
    yield made
    made.stop()


@pytest.fixture
def client(tmp_path: Path, redis: Redis, redis_url: str, git_repo: GitRepo, fake: FakeGitLab) -> FlaskClient:
    config = people.write(
        tmp_path / "pushdeploy.toml", redis_url, tmp_path / "data", fake.url, PUBLIC_URL, git_repo.url,
        token_max_days=30,
    )  # fmt: skip
    return create_app(load(config, environ={}), redis, drain=False).test_client()


def signed_in(client: FlaskClient, fake: FakeGitLab, role: str) -> FlaskClient:
    with client.session_transaction() as session:
        session["person"] = {"username": role, "id": fake.people.users[role]["id"]}
    return client


def create(client: FlaskClient, **body: object) -> dict[str, object]:
    answer = client.post("/api/v1/tokens", json=body, headers={"X-CSRF-Token": session_csrf(client)})
    assert answer.status_code == 201, answer.get_json()
    assert answer.headers["Cache-Control"] == "no-store"
    data: dict[str, object] = answer.get_json()
    return data


def test_a_token_is_shown_once_and_stored_only_as_its_hash(
    client: FlaskClient, fake: FakeGitLab, redis: Redis
) -> None:
    signed_in(client, fake, "developer")
    made = create(client, name="ci")
    token = str(made["token"])
    assert re.fullmatch(r"pdt_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", token)
    assert made["name"] == "ci" and made["owner"] == "developer" and made["last_used_at"] is None
    expires = datetime.fromisoformat(str(made["expires_at"]).replace("Z", "+00:00"))
    assert abs((expires - datetime.now(UTC)) - timedelta(days=30)) < timedelta(minutes=1)  # 90, capped at 30
    listed = client.get("/api/v1/tokens").get_json()["tokens"]
    assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]
    everything = b"".join(
        b"".join(redis.hgetall(key).values()) if redis.type(key) == b"hash" else b""
        for key in redis.keys("pd:*")
    )
    assert token.encode() not in everything
    assert hashlib.sha256(token.encode()).hexdigest().encode() in everything


def test_a_token_acts_with_its_owners_current_rights(
    client: FlaskClient, fake: FakeGitLab, redis: Redis
) -> None:
    signed_in(client, fake, "developer")
    token = str(create(client, name="script")["token"])
    client.delete_cookie("pushdeploy_session")
    auth = {"Authorization": f"Bearer {token}"}
    deploy = "/api/v1/projects/sample-app/environments/staging/deployments"
    assert client.post(deploy, json={"sha": "ab" * 20}, headers=auth).status_code == 202
    fake.people.set_member(people.SAMPLE_ID, "developer", 20)  # demoted to Reporter in GitLab
    try:
        redis.delete(schema.rights(fake.people.users["developer"]["id"]))  # the five minutes passed
        assert client.post(deploy, json={"sha": "ab" * 20}, headers=auth).status_code == 403
        assert client.get("/api/v1/deployments", headers=auth).status_code == 200
    finally:
        fake.people.set_member(people.SAMPLE_ID, "developer", 30)
    used = client.get("/api/v1/tokens", headers=auth).get_json()["tokens"][0]
    assert used["last_used_at"] is not None


def test_revoked_and_expired_tokens_stop_working(client: FlaskClient, fake: FakeGitLab, redis: Redis) -> None:
    signed_in(client, fake, "reporter")
    made = create(client, name="laptop")
    auth = {"Authorization": f"Bearer {made['token']}"}
    assert client.get("/api/v1/deployments", headers=auth).status_code == 200
    answer = client.delete(f"/api/v1/tokens/{made['id']}", headers={"X-CSRF-Token": session_csrf(client)})
    assert answer.status_code == 204
    assert client.get("/api/v1/deployments", headers=auth).status_code == 401
    assert (
        client.delete(
            f"/api/v1/tokens/{made['id']}", headers={"X-CSRF-Token": session_csrf(client)}
        ).status_code
        == 404
    )

    record, token = TokenStore(redis).create(
        "reporter", fake.people.users["reporter"]["id"], "old", time.time() + 1
    )
    assert client.get("/api/v1/deployments", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    time.sleep(1.2)
    assert client.get("/api/v1/deployments", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert redis.ttl(schema.api_token(record.id)) != -1  # the record expires with the token


def test_a_near_miss_token_is_refused(client: FlaskClient, fake: FakeGitLab) -> None:
    signed_in(client, fake, "reporter")
    token = str(create(client, name="x")["token"])
    client.delete_cookie("pushdeploy_session")
    for wrong in (token[:-1] + ("A" if token[-1] != "A" else "B"), token + "x", "pdt_", ADMIN_TOKEN + "x"):
        answer = client.get("/api/v1/deployments", headers={"Authorization": f"Bearer {wrong}"})
        assert answer.status_code == 401


def test_one_person_cannot_see_or_revoke_anothers_tokens(client: FlaskClient, fake: FakeGitLab) -> None:
    signed_in(client, fake, "developer")
    mine = create(client, name="mine")
    signed_in(client, fake, "maintainer")
    assert client.get("/api/v1/tokens").get_json() == {"tokens": []}
    assert (
        client.delete(
            f"/api/v1/tokens/{mine['id']}", headers={"X-CSRF-Token": session_csrf(client)}
        ).status_code
        == 404
    )


def test_what_may_create_tokens(client: FlaskClient, fake: FakeGitLab) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answer = client.post("/api/v1/tokens", json={"name": "x"}, headers=admin)
    assert answer.status_code == 403 and "sign in with GitLab" in answer.get_json()["error"]
    signed_in(client, fake, "developer")
    token = create(client, name="x")["token"]
    client.delete_cookie("pushdeploy_session")
    by_token = client.post("/api/v1/tokens", json={"name": "y"}, headers={"Authorization": f"Bearer {token}"})
    assert by_token.status_code == 403  # a leaked token cannot renew itself


def test_the_session_needs_the_csrf_header_for_unsafe_methods(client: FlaskClient, fake: FakeGitLab) -> None:
    signed_in(client, fake, "developer")
    assert client.get("/api/v1/tokens").status_code == 200
    for headers in ({}, {"X-CSRF-Token": "wrong"}):
        answer = client.post("/api/v1/tokens", json={"name": "x"}, headers=headers)
        assert answer.status_code == 400 and "X-CSRF-Token" in answer.get_json()["error"]
        deploy = client.post("/api/v1/projects/sample-app/environments/staging/deployments", headers=headers)
        assert deploy.status_code == 400
    assert client.get("/api/v1/tokens").get_json() == {"tokens": []}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "name is required"),
        ({"name": ""}, "name must be"),
        ({"name": "x" * 101}, "name must be"),
        ({"name": "x", "expires_at": "yesterday"}, "expires_at must be"),
        ({"name": "x", "expires_at": "2020-01-01"}, "in the past"),
        ({"name": "x", "expires_at": "2999-01-01"}, "more than 30 days"),
        ({"name": "x", "scopes": ["api"]}, "unknown field"),
    ],
)
def test_bad_requests(client: FlaskClient, fake: FakeGitLab, body: dict[str, object], message: str) -> None:
    signed_in(client, fake, "developer")
    answer = client.post("/api/v1/tokens", json=body, headers={"X-CSRF-Token": session_csrf(client)})
    assert answer.status_code == 400 and message in answer.get_json()["error"]


def test_expiry_takes_a_date_or_a_time() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
    assert expiry(None, 365, now) == now + 90 * 86400
    assert expiry("2026-12-03", 365, now) == datetime(2026, 12, 3, 23, 59, 59, 999999, tzinfo=UTC).timestamp()
    assert expiry("2026-12-03T10:00:00Z", 365, now) == datetime(2026, 12, 3, 10, tzinfo=UTC).timestamp()
    with pytest.raises(TokenRefused):
        expiry("2027-12-03", 365, now)


def test_the_tokens_page_creates_shows_once_and_revokes(client: FlaskClient, fake: FakeGitLab) -> None:
    signed_in(client, fake, "developer")
    assert b"You have no tokens" in client.get("/tokens").data
    refused = client.post("/tokens", data={"name": "x"})  # no CSRF field: nothing happens
    assert refused.status_code == 400 and client.get("/api/v1/tokens").get_json() == {"tokens": []}
    page = client.post(
        "/tokens", data={"csrf_token": session_csrf(client), "name": "deploy-bot", "expires_at": ""}
    )
    shown = re.search(rb'id="token-value">(pdt_[^<]+)<', page.data)
    assert page.status_code == 200 and shown is not None
    assert page.headers["Cache-Control"] == "no-store"
    assert shown.group(1) not in client.get("/tokens").data  # once
    token_id = client.get("/api/v1/tokens").get_json()["tokens"][0]["id"]
    revoked = client.post(
        f"/tokens/{token_id}/revoke", data={"csrf_token": session_csrf(client)}, follow_redirects=True
    )
    assert b"Token revoked" in revoked.data and b"You have no tokens" in revoked.data


def test_the_admin_session_has_no_tokens_page(client: FlaskClient) -> None:
    assert admin_sign_in(client).status_code == 302
    assert client.get("/tokens").status_code == 403


def test_the_admin_session_needs_the_csrf_header_but_the_admin_bearer_does_not(
    client: FlaskClient, redis: Redis
) -> None:
    deploy = "/api/v1/projects/sample-app/environments/staging/deployments"
    assert admin_sign_in(client).status_code == 302
    assert client.get("/api/v1/deployments").status_code == 200
    assert client.post(deploy, json={"sha": "ab" * 20}).status_code == 400
    csrf = session_csrf(client)
    assert client.post(deploy, json={"sha": "ab" * 20}, headers={"X-CSRF-Token": csrf}).status_code == 202
    client.delete_cookie("pushdeploy_session")
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert client.post(deploy, json={"sha": "ab" * 20}, headers=bearer).status_code == 202


def test_tokens_made_and_revoked_are_audited(client: FlaskClient, fake: FakeGitLab, redis: Redis) -> None:
    signed_in(client, fake, "developer")
    made = create(client, name="ci")
    assert (
        client.delete(
            f"/api/v1/tokens/{made['id']}", headers={"X-CSRF-Token": session_csrf(client)}
        ).status_code
        == 204
    )
    page = client.post("/tokens", data={"csrf_token": session_csrf(client), "name": "laptop"})
    assert page.status_code == 200
    entries, _ = audit_store.read(redis, Query(), 10)
    found = [(e.action, e.who, e.via, e.detail) for e in reversed(entries)]
    laptop = client.get("/api/v1/tokens").get_json()["tokens"][0]["id"]
    assert found == [
        ("token_created", "developer", "session", f"ci ({made['id']})"),
        ("token_revoked", "developer", "session", made["id"]),
        ("token_created", "developer", "session", f"laptop ({laptop})"),
    ]
    assert all(str(made["token"]) not in repr(e) for e in entries)
