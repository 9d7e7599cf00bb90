"""The JSON API with the Flask test client over real Redis: auth, queries, operations, errors."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient
from redis import Redis

from tests.helpers import ADMIN_TOKEN
from webhook.app import create_app
from workers.config import Settings
from workers.deploylog import DeploymentLog, Masker
from workers.deployments import Deployment, DeploymentStore, State

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def client(make_settings: Callable[..., Settings], redis: Redis) -> FlaskClient:
    return create_app(make_settings(), redis).test_client()


def add(
    redis: Redis, deployment_id: str, state: State, sha: str, created_at: float, release: str = ""
) -> None:
    DeploymentStore(redis).create(
        Deployment(
            deployment_id,
            "sample-app",
            "production",
            "refs/heads/main",
            sha,
            state=state,
            created_at=created_at,
            release=release,
        )
    )


def test_every_endpoint_wants_the_bearer_token(client: FlaskClient) -> None:
    for method, path in [
        ("get", "/api/v1/deployments"),
        ("get", "/api/v1/deployments/x"),
        ("post", "/api/v1/deployments/x/cancel"),
        ("post", "/api/v1/projects/sample-app/environments/production/deployments"),
    ]:
        assert getattr(client, method)(path).status_code == 401
        wrong = getattr(client, method)(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.get_json() == {"error": "missing or wrong bearer token"}
    assert client.get("/api/v1/openapi.json").status_code == 200  # the description itself is public


def test_list_filters_by_state_sha_and_time(client: FlaskClient, redis: Redis) -> None:
    add(redis, "d1", State.SUCCEEDED, "aa" * 20, 100.0)
    add(redis, "d2", State.FAILED, "bb" * 20, 200.0)
    add(redis, "d3", State.SUCCEEDED, "cc" * 20, 300.0)

    def ids(query: str) -> list[str]:
        answer = client.get(f"/api/v1/deployments{query}", headers=AUTH)
        assert answer.status_code == 200, answer.get_json()
        return [d["id"] for d in answer.get_json()["deployments"]]

    assert ids("") == ["d3", "d2", "d1"]
    assert ids("?state=succeeded") == ["d3", "d1"]
    assert ids("?sha=bbbb") == ["d2"]
    assert ids("?since=150&until=250") == ["d2"]
    assert ids("?limit=1") == ["d3"]
    assert client.get("/api/v1/deployments?state=bogus", headers=AUTH).status_code == 400
    assert client.get("/api/v1/deployments?limit=0", headers=AUTH).status_code == 400
    assert client.get("/api/v1/deployments?project=nope", headers=AUTH).status_code == 404


def test_show_and_log(client: FlaskClient, redis: Redis) -> None:
    add(redis, "d1", State.SUCCEEDED, "aa" * 20, 100.0)
    log = DeploymentLog(redis, "d1", Masker([]))
    log.step("build 1: $ make")
    log.output("ok")
    log.flush()
    shown = client.get("/api/v1/deployments/d1", headers=AUTH).get_json()
    assert shown["state"] == "succeeded" and shown["url"] == "http://pushdeploy.test/deployments/d1"
    lines = client.get("/api/v1/deployments/d1/log", headers=AUTH).get_json()["lines"]
    assert [line["text"] for line in lines] == ["build 1: $ make", "ok"]
    streamed = client.get("/api/v1/deployments/d1/log?follow=1", headers=AUTH).get_data(as_text=True)
    records = [json.loads(line) for line in streamed.splitlines()]
    assert records[-1] == {"state": "succeeded"} and records[1]["text"] == "ok"
    assert client.get("/api/v1/deployments/nope", headers=AUTH).status_code == 404


def test_deploy_a_sha_or_a_ref(client: FlaskClient, redis: Redis) -> None:
    answer = client.post(
        "/api/v1/projects/sample-app/environments/production/deployments",
        json={"sha": "AB" * 20},
        headers=AUTH,
    )
    assert answer.status_code == 202
    queued = DeploymentStore(redis).get(answer.get_json()["deployment"])
    assert (queued.sha, queued.trigger, queued.state) == ("ab" * 20, "manual", State.QUEUED)
    by_ref = client.post(
        "/api/v1/projects/sample-app/environments/production/deployments", json={"ref": "main"}, headers=AUTH
    )
    assert by_ref.status_code == 202
    assert (
        client.post(
            "/api/v1/projects/sample-app/environments/production/deployments",
            json={"sha": "xyz"},
            headers=AUTH,
        ).status_code
        == 400
    )
    assert (
        client.post(
            "/api/v1/projects/sample-app/environments/production/deployments",
            json={"ref": "--upload-pack=touch /tmp/x"},
            headers=AUTH,
        ).status_code
        == 400
    )
    assert (
        client.post(
            "/api/v1/projects/nope/environments/production/deployments", json={}, headers=AUTH
        ).status_code
        == 404
    )


def test_rollback_to_a_success_and_refuse_a_failure(client: FlaskClient, redis: Redis) -> None:
    add(redis, "d1", State.SUCCEEDED, "aa" * 20, 100.0, release="d1")
    add(redis, "d2", State.FAILED, "bb" * 20, 200.0)
    answer = client.post("/api/v1/deployments/d1/rollback", headers=AUTH)
    assert answer.status_code == 202
    queued = DeploymentStore(redis).get(answer.get_json()["deployment"])
    assert (queued.sha, queued.reuse_release, queued.trigger) == ("aa" * 20, "d1", "rollback to d1")
    assert client.post("/api/v1/deployments/d2/rollback", headers=AUTH).status_code == 409


def test_rollback_to_the_previous_success(client: FlaskClient, redis: Redis) -> None:
    store = DeploymentStore(redis)
    assert (
        client.post("/api/v1/projects/sample-app/environments/production/rollback", headers=AUTH).status_code
        == 409
    )
    add(redis, "d1", State.SUCCEEDED, "aa" * 20, 100.0, release="d1")
    add(redis, "d2", State.SUCCEEDED, "bb" * 20, 200.0, release="d2")
    store.mark_live(store.get("d2"))
    answer = client.post("/api/v1/projects/sample-app/environments/production/rollback", headers=AUTH)
    assert answer.status_code == 202 and answer.get_json()["to"] == "d1"


def test_cancel_answers(client: FlaskClient, redis: Redis) -> None:
    add(redis, "d1", State.QUEUED, "aa" * 20, 100.0)
    add(redis, "d2", State.RUNNING, "bb" * 20, 200.0)
    add(redis, "d3", State.SUCCEEDED, "cc" * 20, 300.0)
    assert client.post("/api/v1/deployments/d1/cancel", headers=AUTH).get_json() == {
        "deployment": "d1",
        "state": "canceled",
    }
    assert client.post("/api/v1/deployments/d2/cancel", headers=AUTH).status_code == 202
    assert redis.get("pd:dep:d2:cancel") == b"admin"
    assert client.post("/api/v1/deployments/d3/cancel", headers=AUTH).status_code == 409
    assert client.post("/api/v1/deployments/d9/cancel", headers=AUTH).status_code == 404


def test_a_deployment_shows_its_commits_title_author_and_notifications(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    from workers.config import NotifyEvent
    from workers.notifications import announce

    settings = make_settings(notify={"urls": ["json://127.0.0.1:9/hooks/api-canary-2f1d"]})
    client = create_app(settings, redis).test_client()
    add(redis, "d1", State.FAILED, "aa" * 20, 100.0)
    DeploymentStore(redis).update("d1", commit_title="Fix the cart total", commit_author="Alice Liddell")
    announce(redis, settings, DeploymentStore(redis).get("d1"), NotifyEvent.FAILED)
    shown = client.get("/api/v1/deployments/d1", headers=AUTH).get_json()
    assert (shown["commit_title"], shown["commit_author"]) == ("Fix the cart total", "Alice Liddell")
    assert shown["notifications"] == [
        {
            "event": "failed",
            "type": "failure",
            "title": "sample-app/production: deployment failed",
            "delivery": "pending",
            "tries": 0,
            "problem": "",
        }
    ]
    [listed] = client.get("/api/v1/deployments", headers=AUTH).get_json()["deployments"]
    assert listed["commit_title"] == "Fix the cart total" and "notifications" not in listed
    assert "api-canary-2f1d" not in json.dumps(shown)
