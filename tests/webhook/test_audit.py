"""The audit log through the web tier (Flask test client, real Redis): each action's entry, who and
from where, attribution on the deployments, and reading it in the API and on the page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis

from tests.helpers import ADMIN_TOKEN, csrf_token
from webhook.app import create_app
from workers import audit, schema
from workers.audit import Query
from workers.config import Settings, load
from workers.deployments import Deployment, DeploymentStore, State

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SHA = "ab" * 20


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings, redis: Redis) -> FlaskClient:
    return create_app(settings, redis).test_client()


def add(redis: Redis, deployment_id: str, state: State, created_at: float = 100.0) -> Deployment:
    deployment = Deployment(
        deployment_id,
        "sample-app",
        "production",
        "refs/heads/main",
        SHA,
        pusher="alice",
        state=state,
        created_at=created_at,
        release=deployment_id,
    )
    DeploymentStore(redis).create(deployment)
    return deployment


def entries(redis: Redis, **query: Any) -> list[dict[str, Any]]:
    return [e.public() for e in audit.read(redis, Query(**query), 500)[0]]


def sign_in(client: FlaskClient, token: str = ADMIN_TOKEN, **environ: str) -> Any:
    form = client.get("/login/admin", environ_base=environ).get_data(as_text=True)
    return client.post(
        "/login/admin", data={"token": token, "csrf_token": csrf_token(form)}, environ_base=environ
    )


def test_sign_ins_that_fail_and_succeed_are_logged_with_the_address(
    client: FlaskClient, redis: Redis
) -> None:
    assert sign_in(client, "wrong").status_code == 200
    assert sign_in(client).status_code == 302
    newest, oldest = entries(redis)
    assert (oldest["action"], oldest["who"], oldest["via"], oldest["from"]) == (
        "sign_in_failed",
        "admin",
        "admin_token",
        "127.0.0.1",
    )
    assert oldest["detail"] == "wrong admin token" and "wrong" not in str(newest)
    assert (newest["action"], newest["who"], newest["via"]) == ("sign_in", "admin", "admin_token")


def test_page_actions_are_logged_and_the_deployments_say_who(client: FlaskClient, redis: Redis) -> None:
    add(redis, "d1", State.SUCCEEDED, 100.0)
    add(redis, "d2", State.SUCCEEDED, 200.0)
    add(redis, "q1", State.QUEUED, 300.0)
    DeploymentStore(redis).mark_live(DeploymentStore(redis).get("d2"))
    sign_in(client)
    token = csrf_token(client.get("/deployments/d1").get_data(as_text=True))

    rolled = client.post("/deployments/d1/rollback", data={"csrf_token": token})
    rollback_id = rolled.headers["Location"].rsplit("/", 1)[1]
    redeployed = client.post("/deployments/d2/redeploy", data={"csrf_token": token})
    redeploy_id = redeployed.headers["Location"].rsplit("/", 1)[1]
    assert client.post("/deployments/q1/cancel", data={"csrf_token": token}).status_code == 302

    logged = {e["action"]: e for e in entries(redis) if e["action"] != "sign_in"}
    assert set(logged) == {"rollback", "deploy", "cancel"}
    assert (logged["rollback"]["deployment"], logged["rollback"]["detail"]) == (rollback_id, "to d1")
    assert logged["deploy"]["deployment"] == redeploy_id
    assert (logged["cancel"]["deployment"], logged["cancel"]["detail"]) == ("q1", "was queued")
    for entry in logged.values():
        assert (entry["who"], entry["via"], entry["project"], entry["environment"]) == (
            "admin",
            "admin_token",
            "sample-app",
            "production",
        )

    store = DeploymentStore(redis)
    assert store.get(rollback_id).triggered_by == "rollback by admin"
    assert store.get(redeploy_id).triggered_by == "deploy by admin"
    assert store.get("q1").canceled_by == "admin"
    assert store.get("d1").triggered_by == "push by alice"
    history = client.get("/projects/sample-app").get_data(as_text=True)
    assert "rollback by admin" in history and "deploy by admin" in history and "push by alice" in history
    assert "canceled by admin" in history
    assert "rollback by admin" in client.get(f"/deployments/{rollback_id}").get_data(as_text=True)
    assert "by admin" in client.get("/").get_data(as_text=True)


def test_api_actions_are_logged_via_the_admin_token(client: FlaskClient, redis: Redis) -> None:
    add(redis, "d1", State.SUCCEEDED, 100.0)
    add(redis, "q1", State.QUEUED, 300.0)
    deployed = client.post(
        "/api/v1/projects/sample-app/environments/production/deployments", json={"ref": "main"}, headers=AUTH
    ).get_json()["deployment"]
    rolled = client.post("/api/v1/deployments/d1/rollback", headers=AUTH).get_json()["deployment"]
    assert client.post("/api/v1/deployments/q1/cancel", headers=AUTH).status_code == 200
    logged = {e["action"]: e for e in entries(redis)}
    assert logged["deploy"]["deployment"] == deployed and logged["deploy"]["detail"] == "ref main"
    assert logged["rollback"]["deployment"] == rolled
    assert logged["cancel"]["deployment"] == "q1"
    assert all(e["via"] == "admin_token" and e["who"] == "admin" for e in logged.values())
    record = client.get(f"/api/v1/deployments/{deployed}", headers=AUTH).get_json()
    assert (record["requested_by"], record["triggered_by"], record["pusher"]) == (
        "admin",
        "deploy by admin",
        "",
    )
    assert client.get("/api/v1/deployments/q1", headers=AUTH).get_json()["canceled_by"] == "admin"


def test_by_is_kept_as_a_claim_next_to_the_admin_token(client: FlaskClient, redis: Redis) -> None:
    answer = client.post(
        "/api/v1/projects/sample-app/environments/production/deployments", json={"by": "alice"}, headers=AUTH
    )
    record = DeploymentStore(redis).get(answer.get_json()["deployment"])
    assert (record.requested_by, record.triggered_by) == (
        "admin (says alice)",
        "deploy by admin (says alice)",
    )
    assert entries(redis, action="deploy")[0]["detail"].endswith("says alice")


def test_reads_with_the_admin_token_are_noted_once_per_address(client: FlaskClient, redis: Redis) -> None:
    for _ in range(3):
        assert client.get("/api/v1/deployments", headers=AUTH).status_code == 200
    other = {"REMOTE_ADDR": "192.0.2.9"}
    assert client.get("/api/v1/deployments", headers=AUTH, environ_base=other).status_code == 200
    used = entries(redis, action="admin_token")
    assert [(e["from"], e["detail"]) for e in used] == [
        ("192.0.2.9", "GET /api/v1/deployments"),
        ("127.0.0.1", "GET /api/v1/deployments"),
    ]
    assert redis.ttl(schema.audit_admin_use("127.0.0.1")) > 0  # the marker expires: bounded


def test_the_client_address_is_believed_from_trusted_proxies_only(client: FlaskClient, redis: Redis) -> None:
    spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.50"}
    sign_in(client, "wrong", REMOTE_ADDR="127.0.0.1")  # no header: the peer itself
    form = client.get("/login/admin").get_data(as_text=True)
    client.post("/login/admin", data={"token": "x", "csrf_token": csrf_token(form)}, headers=spoofed)
    client.post(
        "/login/admin",
        data={"token": "x", "csrf_token": csrf_token(form)},
        headers=spoofed,
        environ_base={"REMOTE_ADDR": "192.0.2.77"},  # not a proxy we trust: its header is ignored
    )
    assert [e["from"] for e in entries(redis)] == ["192.0.2.77", "203.0.113.50", "127.0.0.1"]


def test_the_api_reads_the_log_with_filters_and_a_cursor(client: FlaskClient, redis: Redis) -> None:
    add(redis, "d1", State.SUCCEEDED)
    for _ in range(3):
        client.post("/api/v1/deployments/d1/rollback", headers=AUTH)
    client.post("/api/v1/projects/sample-app/environments/production/deployments", headers=AUTH)
    first = client.get("/api/v1/audit?action=rollback&limit=2", headers=AUTH).get_json()
    assert [e["action"] for e in first["entries"]] == ["rollback", "rollback"] and first["next"]
    second = client.get(
        f"/api/v1/audit?action=rollback&limit=2&cursor={first['next']}", headers=AUTH
    ).get_json()
    assert len(second["entries"]) == 1 and second["next"] is None
    ids = {e["id"] for e in first["entries"] + second["entries"]}
    assert len(ids) == 3
    scoped = client.get("/api/v1/audit?project=sample-app&environment=production&who=admin", headers=AUTH)
    assert {e["action"] for e in scoped.get_json()["entries"]} == {"rollback", "deploy"}
    assert client.get("/api/v1/audit?environment=staging", headers=AUTH).get_json()["entries"] == []
    assert client.get("/api/v1/audit?until=1", headers=AUTH).get_json()["entries"] == []
    assert len(client.get("/api/v1/audit?since=1", headers=AUTH).get_json()["entries"]) >= 4
    for bad in ("cursor=abc", "action=explode", "project=../x", "limit=0", "since=soon"):
        answer = client.get(f"/api/v1/audit?{bad}", headers=AUTH)
        assert answer.status_code == 400 and answer.get_json()["error"], bad
    assert client.get("/api/v1/audit").status_code == 401


def test_the_audit_page_is_for_those_who_may_read_it(client: FlaskClient, redis: Redis) -> None:
    add(redis, "d1", State.SUCCEEDED)
    client.post("/api/v1/deployments/d1/rollback", headers=AUTH)
    stranger = client.get("/audit")
    assert stranger.status_code == 302 and "/login" in stranger.headers["Location"]
    sign_in(client)
    page = client.get("/audit").get_data(as_text=True)
    assert "rollback" in page and "sign_in" in page and "127.0.0.1" in page
    only = client.get("/audit?action=sign_in").get_data(as_text=True)
    assert "<td>rollback</td>" not in only and "<td>sign_in</td>" in only
    assert client.get("/audit?cursor=nonsense").status_code == 400


def test_the_audit_page_pages_with_a_cursor(client: FlaskClient, redis: Redis) -> None:
    sign_in(client)
    for _ in range(60):
        audit.record(redis, 90, audit.Entry(at=1.0, who="bob", action="deploy"))
    page = client.get("/audit?who=bob").get_data(as_text=True)
    assert page.count("<td>bob</td>") == 50 and "Older entries" in page
    following = page.split('rel="next" href="')[1].split('"')[0].replace("&amp;", "&")
    rest = client.get(following).get_data(as_text=True)
    assert rest.count("<td>bob</td>") == 10 and "Older entries" not in rest


def test_a_reloaded_configuration_is_logged_once(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    settings = make_settings()
    create_app(settings, redis, drain=False)
    create_app(settings, redis, drain=False)  # a second process, same file: nothing
    text = settings.path.read_text() + "\n"
    settings.path.write_text(text.replace("[server]\n", "[server]\naudit_days = 30\n"))
    create_app(load(settings.path, environ={}), redis, drain=False)
    reloads = entries(redis, action="config_reload")
    assert len(reloads) == 1 and reloads[0]["who"].startswith("web on ")


def test_where_every_hop_is_trusted_the_left_most_is_the_client(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    """Behind an Ingress that alone reaches the pod (``0.0.0.0/0``): the address it passes on."""
    settings = make_settings(server={"trusted_proxies": ["0.0.0.0/0", "::/0"]})
    client = create_app(settings, redis).test_client()
    form = client.get("/login/admin").get_data(as_text=True)
    for forwarded in ("198.51.100.1", "not-an-address", ""):
        client.post(
            "/login/admin",
            data={"token": "x", "csrf_token": csrf_token(form)},
            headers={"X-Forwarded-For": forwarded} if forwarded else {},
            environ_base={"REMOTE_ADDR": "10.1.2.3"},
        )
    assert [e["from"] for e in entries(redis)] == ["10.1.2.3", "10.1.2.3", "198.51.100.1"]
