"""``POST /hooks/gitlab/<project>`` as GitLab sees it: every answer of the SPEC, in its order.

The real app from ``create_app(settings, redis)`` with a real Redis (db 15, flushed) and real RQ;
nothing is mocked. Redis outages are real too: a port nothing listens on, and a socket that
accepts connections but never answers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from redis import Redis
from rq import Queue
from rq.job import Job
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from tests.fakegitlab import FakeGitLab
from tests.helpers import (
    ADMIN_TOKEN,
    SECRET_TOKEN,
    SIGNING_TOKEN,
    GitRepo,
    git,
    project_config,
    push_body,
    signed_headers,
    write_config,
)
from tests.workers.test_project_ids import silent_server
from webhook import services
from webhook.app import create_app
from webhook.verify import sign
from workers import defaults, schema
from workers.config import Settings, load
from workers.connection import web_redis
from workers.deployments import DeploymentStore, State, UnknownDeployment
from workers.secrets import SigningKey

HOOK = "/hooks/gitlab/sample-app"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SIGNING_KEY_BYTES = SigningKey(SIGNING_TOKEN).key
OTHER_SIGNING_TOKEN = "whsec_" + base64.b64encode(b"rotated-signing-key-of-32-bytes!").decode()
SECOND_SECRET_TOKEN = "hook-secret-rotated-2d94e1"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def sha(git_repo: GitRepo) -> str:
    return git("rev-parse", "HEAD", cwd=git_repo.work)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings, redis: Redis) -> Flask:
    return create_app(settings, redis)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def client_for(settings: Settings, redis: Redis) -> FlaskClient:
    return create_app(settings, redis).test_client()


def post(client: FlaskClient, body: bytes, headers: dict[str, str], path: str = HOOK) -> TestResponse:
    return client.post(path, data=body, headers=headers)


def queue(redis: Redis) -> Queue:
    return Queue(defaults.DEPLOY_QUEUE, connection=redis)


def deployment_keys(redis: Redis) -> list[bytes]:
    return [k for k in redis.scan_iter("pd:dep:*") if k.count(b":") == 2]


def nothing_was_queued(redis: Redis) -> bool:
    return queue(redis).count == 0 and not deployment_keys(redis) and not list(redis.scan_iter("rq:job:*"))


def sample(name: str) -> tuple[bytes, dict[str, str]]:
    body = (SAMPLES / f"{name}.json").read_bytes()
    headers: dict[str, str] = json.loads((SAMPLES / f"{name}.headers.json").read_text())
    return body, headers


def authenticate(body: bytes, headers: dict[str, str]) -> dict[str, str]:
    """Add what GitLab adds when both a secret token and a signing token are set."""
    msg_id = headers["Idempotency-Key"]
    ts = int(time.time())
    return {
        **headers,
        "X-Gitlab-Token": SECRET_TOKEN,
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(SigningKey(SIGNING_TOKEN), msg_id, ts, body),
    }


# -- 202: an accepted push -----------------------------------------------------------------------


def test_a_signed_push_to_the_branch_answers_202_with_the_deployment_and_its_url(
    client: FlaskClient, redis: Redis, sha: str
) -> None:
    body = push_body(sha)
    headers = signed_headers(body)
    started = time.monotonic()
    response = post(client, body, headers)
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.get_data(as_text=True)
    answer = response.get_json()
    deployment_id = answer["deployment"]
    assert answer == {
        "deployment": deployment_id,
        "url": f"http://pushdeploy.test/deployments/{deployment_id}",
    }
    assert elapsed < 1.0  # "within milliseconds": nothing slow happens in the request

    record = DeploymentStore(redis).get(deployment_id)
    assert record.state is State.QUEUED
    assert (record.project, record.environment) == ("sample-app", "production")
    assert (record.ref, record.sha, record.pusher) == ("refs/heads/main", sha, "alice")
    assert record.delivery_id == headers["Idempotency-Key"]


def test_the_answer_is_small_json(client: FlaskClient, sha: str) -> None:
    body = push_body(sha)
    response = post(client, body, signed_headers(body))
    assert response.content_type == "application/json"
    assert response.headers["Content-Length"] == str(len(response.get_data()))
    assert len(response.get_data()) < 160


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_the_hook_are_405_with_allow(client: FlaskClient, redis: Redis, method: str) -> None:
    response = client.open(HOOK, method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "OPTIONS, POST"
    if method != "HEAD":
        assert "error" in response.get_json()
    assert nothing_was_queued(redis)


def test_options_on_the_hook_answers_what_it_allows(client: FlaskClient) -> None:
    response = client.options(HOOK)
    assert response.status_code == 200
    assert response.headers["Allow"] == "OPTIONS, POST"
    assert response.get_data() == b""


@pytest.mark.parametrize("path", ["/hooks/gitlab/", "/hooks/gitlab/sample-app/extra", "/hooks/gitlab"])
def test_paths_beside_the_hook_are_flasks_404(client: FlaskClient, sha: str, path: str) -> None:
    body = push_body(sha)
    assert post(client, body, signed_headers(body), path=path).status_code == 404


def test_the_rest_of_the_app_is_served_by_flask_behind_the_hook(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/openapi.json").status_code == 200


def test_an_unexpected_error_is_a_logged_500_without_details(
    app: Flask, redis: Redis, sha: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("canary-internal-detail")

    monkeypatch.setattr(services.of(app).intake, "accept", broken)
    body = push_body(sha)
    response = post(app.test_client(), body, signed_headers(body))
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error"}
    assert "canary-internal-detail" in caplog.text  # in the log, for the operator; never in the answer


def test_the_queued_job_carries_only_the_deployment_id(client: FlaskClient, redis: Redis, sha: str) -> None:
    body = push_body(sha)
    deployment_id = post(client, body, signed_headers(body)).get_json()["deployment"]
    job = Job.fetch(deployment_id, connection=redis)
    assert job.args == (deployment_id,)
    assert job.kwargs == {}
    assert job.func_name == "workers.pipeline.run_deployment"
    assert job.origin == defaults.DEPLOY_QUEUE
    assert queue(redis).job_ids == [deployment_id]


def redis_contents(redis: Redis) -> Iterator[tuple[bytes, bytes]]:
    """Every key and every stored value, type-aware, with RQ's zlib-compressed job data unpacked."""
    for key in redis.scan_iter("*"):
        kind = redis.type(key)
        values: list[Any]
        if kind == b"string":
            values = [redis.get(key)]
        elif kind == b"hash":
            values = [item for pair in redis.hgetall(key).items() for item in pair]
        elif kind == b"list":
            values = redis.lrange(key, 0, -1)
        elif kind == b"set":
            values = list(redis.smembers(key))
        elif kind == b"zset":
            values = [member for member, _ in redis.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            values = [item for _, fields in redis.xrange(key) for pair in fields.items() for item in pair]
        else:
            values = [redis.dump(key)]
        for value in values:
            raw = value if isinstance(value, bytes) else str(value).encode()
            yield key, raw
            unpacked = b""
            with contextlib.suppress(zlib.error):
                unpacked = zlib.decompress(raw)
            if unpacked:
                yield key, unpacked


def secret_forms() -> list[bytes]:
    forms: list[bytes] = []
    for secret in (SECRET_TOKEN, SIGNING_TOKEN, ADMIN_TOKEN):
        forms += [secret.encode(), base64.b64encode(secret.encode())]
    forms += [
        SIGNING_TOKEN.removeprefix("whsec_").encode(),
        SIGNING_KEY_BYTES,
        SIGNING_KEY_BYTES.hex().encode(),
    ]
    return forms


def test_no_token_or_key_is_stored_anywhere_in_redis(client: FlaskClient, redis: Redis, sha: str) -> None:
    body = push_body(sha)
    headers = signed_headers(body)
    assert post(client, body, headers).status_code == 202
    assert post(client, body, headers).status_code == 200  # the duplicate path writes nothing secret either
    contents = list(redis_contents(redis))
    assert any(b"run_deployment" in value for _, value in contents), "the job data was not unpacked"
    submitted = headers["webhook-signature"].removeprefix("v1,").encode()
    for key, value in contents:
        for form in [*secret_forms(), submitted]:
            assert form not in value, f"{key!r} holds a secret"
            assert form not in key


def test_gitlabs_documented_push_deploys(make_settings: Callable[..., Settings], redis: Redis) -> None:
    """The sample is also what GitLab's "Test" button sends: it deploys like any push."""
    settings = make_settings(gitlab_project="mike/diaspora", branch="master")
    body, headers = sample("push_hook")
    response = post(client_for(settings, redis), body, authenticate(body, headers))
    assert response.status_code == 202, response.get_json()
    record = DeploymentStore(redis).get(response.get_json()["deployment"])
    assert record.sha == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    assert record.pusher == "jsmith"


def test_gitlabs_documented_push_matches_by_numeric_project_id(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    settings = make_settings(gitlab_project=15, branch="master")
    body, headers = sample("push_hook")
    assert post(client_for(settings, redis), body, authenticate(body, headers)).status_code == 202


# -- duplicates ----------------------------------------------------------------------------------


def test_the_same_delivery_twice_is_one_deployment(client: FlaskClient, redis: Redis, sha: str) -> None:
    body = push_body(sha)
    first = post(client, body, signed_headers(body, delivery="delivery-1"))
    assert first.status_code == 202
    deployment_id = first.get_json()["deployment"]
    again = post(client, body, signed_headers(body, delivery="delivery-1"))
    assert again.status_code == 200
    assert again.get_json() == {"duplicate": True, "deployment": deployment_id}
    assert queue(redis).job_ids == [deployment_id]
    assert len(deployment_keys(redis)) == 1


def test_delivery_ids_are_remembered_at_least_24_hours(client: FlaskClient, redis: Redis, sha: str) -> None:
    body = push_body(sha)
    assert post(client, body, signed_headers(body, delivery="delivery-ttl")).status_code == 202
    first_seen = redis.zscore(schema.seen_at("sample-app"), "delivery-ttl")
    redis.zadd(schema.seen_at("sample-app"), {"delivery-ttl": first_seen - 24 * 3600})  # a day ago
    again = post(client, body, signed_headers(body, delivery="delivery-ttl"))
    assert again.status_code == 200 and again.get_json()["duplicate"] is True


def test_a_resend_with_a_new_signature_and_timestamp_is_still_a_duplicate(
    client: FlaskClient, redis: Redis, sha: str
) -> None:
    """GitLab's "Resend Request" keeps the Idempotency-Key but signs afresh."""
    body = push_body(sha)
    first = post(client, body, signed_headers(body, delivery="resend-1", timestamp=int(time.time()) - 100))
    again = post(client, body, signed_headers(body, delivery="resend-1"))
    assert again.get_json() == {"duplicate": True, "deployment": first.get_json()["deployment"]}


def test_concurrent_replays_make_exactly_one_deployment(app: Flask, redis: Redis, sha: str) -> None:
    body = push_body(sha)
    headers = signed_headers(body, delivery="replayed")
    statuses: list[int] = []
    ids: list[str] = []
    lock = threading.Lock()

    def deliver() -> None:
        response = post(app.test_client(), body, headers)
        with lock:
            statuses.append(response.status_code)
            ids.append(response.get_json()["deployment"])

    threads = [threading.Thread(target=deliver) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(statuses) == [200] * 29 + [202]
    assert len(set(ids)) == 1
    assert queue(redis).count == 1


def test_without_idempotency_key_the_webhook_id_dedupes(
    make_settings: Callable[..., Settings], redis: Redis, sha: str
) -> None:
    client = client_for(make_settings(secret_token=None), redis)
    body = push_body(sha)
    first = signed_headers(body, secret_token=None, delivery="msg-only-id")
    del first["Idempotency-Key"], first["X-Gitlab-Event-UUID"]
    deployment_id = post(client, body, first).get_json()["deployment"]
    second = signed_headers(body, secret_token=None, delivery="msg-only-id")
    del second["Idempotency-Key"]
    assert post(client, body, second).get_json() == {"duplicate": True, "deployment": deployment_id}


def test_token_only_deliveries_without_idempotency_key_dedupe_on_the_event_uuid(
    make_settings: Callable[..., Settings], redis: Redis, sha: str
) -> None:
    client = client_for(make_settings(signing_token=None), redis)
    body = push_body(sha)
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Token": SECRET_TOKEN,
    }
    headers["X-Gitlab-Event-UUID"] = "event-uuid-1"
    first = post(client, body, headers)
    assert first.status_code == 202
    again = post(client, body, headers)
    assert again.get_json() == {"duplicate": True, "deployment": first.get_json()["deployment"]}
    assert queue(redis).count == 1


def test_delivery_ids_are_per_project(
    tmp_path: Path, git_repo: GitRepo, redis: Redis, redis_url: str
) -> None:
    config = {
        "server": {"public_url": "http://pushdeploy.test", "redis_url": redis_url, "data_dir": str(tmp_path)},
        "projects": {
            "sample-app": project_config(git_repo.url),
            "other-app": project_config(git_repo.url, gitlab_project="tools/other-app"),
        },
    }
    settings = load(write_config(tmp_path / "two.toml", config), environ={})
    client = client_for(settings, redis)
    sha = git("rev-parse", "HEAD", cwd=git_repo.work)
    body_a, body_b = push_body(sha), push_body(sha, project="tools/other-app")
    a = post(client, body_a, signed_headers(body_a, delivery="shared-key"))
    b = post(client, body_b, signed_headers(body_b, delivery="shared-key"), path="/hooks/gitlab/other-app")
    assert (a.status_code, b.status_code) == (202, 202)
    assert a.get_json()["deployment"] != b.get_json()["deployment"]


def test_deliveries_without_any_key_are_each_deployed(
    make_settings: Callable[..., Settings], redis: Redis, sha: str
) -> None:
    client = client_for(make_settings(signing_token=None), redis)
    body = push_body(sha)
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Token": SECRET_TOKEN,
    }
    assert post(client, body, headers).status_code == 202
    assert post(client, body, headers).status_code == 202
    assert queue(redis).count == 2


# -- 413 and 415: the envelope -------------------------------------------------------------------


@pytest.fixture
def small_client(make_settings: Callable[..., Settings], redis: Redis) -> FlaskClient:
    return client_for(make_settings(server={"max_body_bytes": 2048}), redis)


def padded_push(sha: str, size: int) -> bytes:
    payload = json.loads(push_body(sha))
    payload["padding"] = ""
    payload["padding"] = "x" * (size - len(json.dumps(payload).encode()))
    body = json.dumps(payload).encode()
    assert len(body) == size
    return body


def test_a_body_over_the_limit_is_413(small_client: FlaskClient, redis: Redis, sha: str) -> None:
    body = padded_push(sha, 2049)
    response = post(small_client, body, signed_headers(body))
    assert response.status_code == 413
    assert "error" in response.get_json()
    assert nothing_was_queued(redis)


def test_a_body_at_the_limit_is_accepted(small_client: FlaskClient, sha: str) -> None:
    body = padded_push(sha, 2048)
    assert post(small_client, body, signed_headers(body)).status_code == 202


def test_size_is_checked_before_content_type_and_project(small_client: FlaskClient) -> None:
    big = b"x" * 5000
    assert post(small_client, big, {"Content-Type": "text/plain"}).status_code == 413
    assert (
        post(small_client, big, {"Content-Type": "application/json"}, path="/hooks/gitlab/nope").status_code
        == 413
    )


def test_a_chunked_body_over_the_limit_is_413(small_client: FlaskClient, sha: str) -> None:
    """A chunked upload has no Content-Length to check up front: the limit applies while reading."""
    body = padded_push(sha, 4096)
    response = small_client.post(
        HOOK,
        input_stream=io.BytesIO(body),
        headers={**signed_headers(body), "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413


def test_a_chunked_body_within_the_limit_is_accepted(small_client: FlaskClient, sha: str) -> None:
    body = push_body(sha)
    response = small_client.post(
        HOOK,
        input_stream=io.BytesIO(body),
        headers={**signed_headers(body), "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 202


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml", "text/json"]
)
def test_a_non_json_content_type_is_415(
    client: FlaskClient, redis: Redis, sha: str, content_type: str | None
) -> None:
    body = push_body(sha)
    headers = signed_headers(body)
    if content_type is None:
        del headers["Content-Type"]
    else:
        headers["Content-Type"] = content_type
    response = post(client, body, headers)
    assert response.status_code == 415
    assert nothing_was_queued(redis)


def test_json_with_a_charset_is_accepted(client: FlaskClient, sha: str) -> None:
    body = push_body(sha)
    headers = {**signed_headers(body), "Content-Type": "application/json; charset=utf-8"}
    assert post(client, body, headers).status_code == 202


def test_content_type_is_checked_before_the_project(client: FlaskClient, sha: str) -> None:
    body = push_body(sha)
    headers = {**signed_headers(body), "Content-Type": "text/plain"}
    assert post(client, body, headers, path="/hooks/gitlab/no-such-project").status_code == 415


# -- 404: unknown project ------------------------------------------------------------------------


def test_an_unknown_project_is_404(client: FlaskClient, redis: Redis, sha: str) -> None:
    body = push_body(sha)
    response = post(client, body, signed_headers(body), path="/hooks/gitlab/no-such-project")
    assert response.status_code == 404
    assert response.get_json() == {"error": "unknown project"}
    assert nothing_was_queued(redis)


def test_the_project_is_looked_up_before_the_signature(client: FlaskClient) -> None:
    response = post(client, b"{}", {"Content-Type": "application/json"}, path="/hooks/gitlab/no-such-project")
    assert response.status_code == 404


# -- 401: signature ------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_signature_header_is_401(client: FlaskClient, redis: Redis, sha: str, missing: str) -> None:
    body = push_body(sha)
    headers = signed_headers(body)
    del headers[missing]
    response = post(client, body, headers)
    assert response.status_code == 401
    expected = "unsigned delivery" if missing == "webhook-signature" else f"malformed signature: no {missing}"
    assert response.get_json()["error"].startswith(expected)
    assert nothing_was_queued(redis)


def test_a_signature_with_another_key_is_401(client: FlaskClient, redis: Redis, sha: str) -> None:
    body = push_body(sha)
    response = post(client, body, signed_headers(body, signing_token=OTHER_SIGNING_TOKEN))
    assert response.status_code == 401
    assert response.get_json() == {"error": "signature does not match"}
    assert nothing_was_queued(redis)


@pytest.mark.parametrize("skew", [-301, 301, -3600])
def test_a_stale_or_future_timestamp_is_401(client: FlaskClient, sha: str, skew: int) -> None:
    body = push_body(sha)
    response = post(client, body, signed_headers(body, timestamp=int(time.time()) + skew))
    assert response.status_code == 401


@pytest.mark.parametrize("skew", [-290, 290])
def test_a_timestamp_within_five_minutes_is_accepted(client: FlaskClient, sha: str, skew: int) -> None:
    body = push_body(sha)
    assert post(client, body, signed_headers(body, timestamp=int(time.time()) + skew)).status_code == 202


def test_a_body_changed_after_signing_is_401(client: FlaskClient, redis: Redis, sha: str) -> None:
    body = push_body(sha)
    headers = signed_headers(body)
    reserialized = json.dumps(json.loads(body), indent=1).encode()
    assert post(client, reserialized, headers).status_code == 401
    assert post(client, body.replace(b"alice", b"mallory"), headers).status_code == 401
    assert nothing_was_queued(redis)


@pytest.mark.parametrize(
    "signature",
    ["v1", "v1,", "v1,!!!", "v1a,abc", ",", "v1,\u00e9", " ".join(["v1,AAAA"] * 10_000)],
)
def test_a_malformed_signature_is_401_never_500(client: FlaskClient, sha: str, signature: str) -> None:
    body = push_body(sha)
    headers = {**signed_headers(body), "webhook-signature": signature}
    assert post(client, body, headers).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b'{"after": NaN, "after": 1}',
        b"[" * 50_000,
        b"\xff\xfe\x00garbage",
    ],
)
def test_the_signature_is_checked_before_the_body_is_parsed(
    client: FlaskClient, redis: Redis, body: bytes
) -> None:
    """A bad signature on a body that is not even JSON answers 401, not 400: verify before parse."""
    headers = signed_headers(body, signing_token=OTHER_SIGNING_TOKEN)
    response = post(client, body, headers)
    assert response.status_code == 401
    assert nothing_was_queued(redis)


def test_an_unsigned_delivery_for_another_project_is_401_not_403(client: FlaskClient, sha: str) -> None:
    body = push_body(sha, project="someone/else")
    headers = signed_headers(body, signing_token=None)  # token only, and the project requires a signature
    assert post(client, body, headers).status_code == 401


@pytest.mark.parametrize("signing_token", [SIGNING_TOKEN, OTHER_SIGNING_TOKEN])
def test_either_rotated_signing_key_is_accepted(
    make_settings: Callable[..., Settings], redis: Redis, sha: str, signing_token: str
) -> None:
    client = client_for(make_settings(signing_token=[OTHER_SIGNING_TOKEN, SIGNING_TOKEN]), redis)
    body = push_body(sha)
    assert post(client, body, signed_headers(body, signing_token=signing_token)).status_code == 202


# -- 401: token ----------------------------------------------------------------------------------


@pytest.fixture
def token_only(make_settings: Callable[..., Settings], redis: Redis) -> FlaskClient:
    return client_for(make_settings(signing_token=None), redis)


@pytest.fixture
def signing_only(make_settings: Callable[..., Settings], redis: Redis) -> FlaskClient:
    return client_for(make_settings(secret_token=None), redis)


def test_a_token_only_project_accepts_its_token(token_only: FlaskClient, sha: str) -> None:
    body = push_body(sha)
    assert post(token_only, body, signed_headers(body, signing_token=None)).status_code == 202


@pytest.mark.parametrize("token", [None, "", "wrong", SECRET_TOKEN + "x", SECRET_TOKEN.upper(), "t\u00f8ken"])
def test_a_missing_or_wrong_token_is_401(
    token_only: FlaskClient, redis: Redis, sha: str, token: str | None
) -> None:
    body = push_body(sha)
    headers = signed_headers(body, signing_token=None, secret_token=None)
    if token is not None:
        headers["X-Gitlab-Token"] = token
    response = post(token_only, body, headers)
    assert response.status_code == 401
    assert nothing_was_queued(redis)


class WatchedStream(io.BytesIO):
    """A request body that remembers whether the app read any of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_caller_without_the_token_never_makes_us_read_the_body(
    app: Flask, redis: Redis, sha: str, token: str | None
) -> None:
    """The token needs no body: checked first, even on a project that also requires a signature."""
    body = push_body(sha)
    stream = WatchedStream(body)
    headers = signed_headers(body, secret_token=token)
    response = app.test_client().post(HOOK, input_stream=stream, headers=headers, content_length=len(body))
    assert response.status_code == 401
    assert "X-Gitlab-Token" in response.get_json()["error"]
    assert stream.bytes_read == 0
    assert nothing_was_queued(redis)


def test_the_token_is_checked_before_the_signature(client: FlaskClient, sha: str) -> None:
    body = push_body(sha)
    headers = signed_headers(body, signing_token=OTHER_SIGNING_TOKEN, secret_token="wrong")
    assert post(client, body, headers).get_json() == {"error": "invalid X-Gitlab-Token"}


def test_a_signing_only_project_reads_the_body_for_its_signature(
    make_settings: Callable[..., Settings], redis: Redis, sha: str
) -> None:
    app = create_app(make_settings(secret_token=None), redis)
    body = push_body(sha)
    stream = WatchedStream(body)
    headers = signed_headers(body, secret_token=None)
    response = app.test_client().post(HOOK, input_stream=stream, headers=headers, content_length=len(body))
    assert response.status_code == 202
    assert stream.bytes_read == len(body)


def refusals(reason: str) -> float:
    value = REGISTRY.get_sample_value("pushdeploy_verification_failures_total", {"reason": reason})
    return value or 0.0


def test_an_unsigned_delivery_says_the_project_requires_signatures_and_why_gitlab_may_not_sign(
    client: FlaskClient, redis: Redis, sha: str
) -> None:
    body = push_body(sha)
    before = refusals("unsigned")
    response = post(client, body, signed_headers(body, signing_token=None))  # the right token, no signature
    assert response.status_code == 401
    reason = response.get_json()["error"]
    assert reason.startswith("unsigned delivery: this project requires signed deliveries")
    assert "GitLab 19.0" in reason and "webhook_signing_token" in reason
    assert SECRET_TOKEN not in reason
    assert refusals("unsigned") == before + 1  # its own label: an operator tells it from a forgery
    assert nothing_was_queued(redis)


def test_a_wrong_token_on_an_invalid_body_is_401_not_400(token_only: FlaskClient) -> None:
    headers = {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong"}
    assert post(token_only, b"{not json", headers).status_code == 401


def test_a_signing_only_project_needs_no_token(signing_only: FlaskClient, sha: str) -> None:
    body = push_body(sha)
    assert post(signing_only, body, signed_headers(body, secret_token=None)).status_code == 202


def test_a_signing_only_project_still_refuses_a_bad_signature(signing_only: FlaskClient, sha: str) -> None:
    body = push_body(sha)
    headers = signed_headers(body, signing_token=OTHER_SIGNING_TOKEN, secret_token=SECRET_TOKEN)
    assert post(signing_only, body, headers).status_code == 401


def test_with_both_configured_both_are_required(client: FlaskClient, redis: Redis, sha: str) -> None:
    body = push_body(sha)
    no_token = signed_headers(body, secret_token=None)
    wrong_token = signed_headers(body, secret_token="wrong")
    no_signature = signed_headers(body, signing_token=None)
    for headers in (no_token, wrong_token, no_signature):
        assert post(client, body, headers).status_code == 401
    assert nothing_was_queued(redis)


@pytest.mark.parametrize("token", [SECRET_TOKEN, SECOND_SECRET_TOKEN])
def test_either_rotated_secret_token_is_accepted(
    make_settings: Callable[..., Settings], redis: Redis, sha: str, token: str
) -> None:
    client = client_for(
        make_settings(signing_token=None, secret_token=[SECRET_TOKEN, SECOND_SECRET_TOKEN]), redis
    )
    body = push_body(sha)
    assert post(client, body, signed_headers(body, signing_token=None, secret_token=token)).status_code == 202


# -- 400: invalid JSON (after authentication) ----------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"",
        b"[]",
        b'"a string"',
        b'{"ref": "refs/heads/main", "ref": "refs/heads/evil"}',
        b'{"project_id": NaN}',
        b'{"total_commits_count": 1e999}',
        b'{"a": "\xff"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_authenticated_invalid_json_is_400(client: FlaskClient, redis: Redis, body: bytes) -> None:
    response = post(client, body, signed_headers(body))
    assert response.status_code == 400
    assert "error" in response.get_json()
    assert nothing_was_queued(redis)


def test_authenticated_payload_with_wrong_field_types_is_400(
    client: FlaskClient, redis: Redis, sha: str
) -> None:
    for change in (
        {"ref": 5},
        {"after": None},
        {"checkout_sha": ["x"]},
        {"commits": "x"},
        {"user_username": 1},
    ):
        payload = {**json.loads(push_body(sha)), **change}
        body = json.dumps(payload).encode()
        assert post(client, body, signed_headers(body)).status_code == 400, change
    assert nothing_was_queued(redis)


def test_a_non_hex_checkout_sha_is_400(client: FlaskClient, redis: Redis) -> None:
    body = push_body("--upload-pack=touch /tmp/canary")
    assert post(client, body, signed_headers(body)).status_code == 400
    body = push_body("a" * 40 + "\n")
    assert post(client, body, signed_headers(body)).status_code == 400
    assert nothing_was_queued(redis)


def test_an_unpaired_surrogate_in_the_pusher_is_400_not_500(
    client: FlaskClient, redis: Redis, sha: str
) -> None:
    """json.loads turns "\\ud800" into text that Redis cannot store: refused before it gets there."""
    body = push_body(sha).replace(b'"alice"', b'"\\ud800"')
    response = post(client, body, signed_headers(body))
    assert response.status_code == 400
    assert nothing_was_queued(redis)


def test_json_is_parsed_before_the_project_is_compared(client: FlaskClient) -> None:
    body = b'{"project": {"path_with_namespace": "someone/else"}, "x": NaN}'
    assert post(client, body, signed_headers(body)).status_code == 400


# -- 403: another GitLab project -----------------------------------------------------------------


@pytest.mark.parametrize("project", ["someone/else", "tools/sample-app-2", "TOOLS/sample-app/"])
def test_a_payload_for_another_gitlab_project_is_403(
    client: FlaskClient, redis: Redis, sha: str, project: str
) -> None:
    payload = json.loads(push_body(sha, project=project))
    payload["project"]["id"] = payload["project_id"] = 999
    body = json.dumps(payload).encode()
    response = post(client, body, signed_headers(body))
    assert response.status_code == 403
    assert response.get_json() == {
        "error": f"payload is for GitLab project {project!r} (id 999), "
        "not the configured 'tools/sample-app'; "
        "if it is this project, renamed or moved, set gitlab_project = 999 (its id)"
    }
    assert nothing_was_queued(redis)


@pytest.mark.parametrize("path", ["Tools/Sample-App", "TOOLS/SAMPLE-APP"])
def test_the_path_matches_ignoring_case_as_gitlab_paths_do(client: FlaskClient, sha: str, path: str) -> None:
    body = push_body(sha, project=path)
    assert post(client, body, signed_headers(body)).status_code == 202


# -- the project's id: renamed and moved projects -------------------------------------------------

GITLAB_TOKEN = "gitlab-token-canary-4e1f0a"


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab({"tools/sample-app": 42}, token=GITLAB_TOKEN) as fake:
        yield fake


def with_gitlab(make_settings: Callable[..., Settings], url: str) -> Settings:
    return make_settings(gitlab={"url": url, "token": GITLAB_TOKEN, "timeout": 10})


def project_lookups(gitlab: FakeGitLab) -> list[str]:
    return [r["path"] for r in gitlab.requests if r["path"].startswith("/api/v4/projects/")]


def test_a_renamed_project_still_matches_by_the_id_gitlab_gives_for_its_old_path(
    make_settings: Callable[..., Settings], redis: Redis, gitlab: FakeGitLab, sha: str
) -> None:
    gitlab.rename_project("tools/sample-app", "platform/sample-app-renamed")
    client = client_for(with_gitlab(make_settings, gitlab.url), redis)
    body = push_body(sha, project="platform/sample-app-renamed")  # id 42, as before the rename
    response = post(client, body, signed_headers(body))
    assert response.status_code == 202, response.get_json()
    assert redis.get("pd:gitlab:project-id:tools/sample-app") == b"42"  # shared by every web process
    # The old path answered with GitLab's redirect to the id: asked once, however many deliveries.
    assert project_lookups(gitlab) == ["/api/v4/projects/tools%2Fsample-app", "/api/v4/projects/42"]
    again = push_body(sha, project="platform/sample-app-renamed")
    assert post(client, again, signed_headers(again)).status_code in (200, 202)
    assert len(project_lookups(gitlab)) == 2


def test_another_project_is_403_naming_both_paths_and_its_id_with_gitlab_known(
    make_settings: Callable[..., Settings], redis: Redis, gitlab: FakeGitLab, sha: str
) -> None:
    client = client_for(with_gitlab(make_settings, gitlab.url), redis)
    payload = json.loads(push_body(sha, project="someone/else"))
    payload["project"]["id"] = payload["project_id"] = 77
    body = json.dumps(payload).encode()
    response = post(client, body, signed_headers(body))
    assert response.status_code == 403
    reason = response.get_json()["error"]
    assert "'someone/else' (id 77)" in reason and "'tools/sample-app'" in reason
    assert "set gitlab_project = 77" in reason
    assert nothing_was_queued(redis)


def test_a_gitlab_that_never_answers_delays_a_mismatch_2_s_at_most_and_is_asked_once(
    make_settings: Callable[..., Settings], redis: Redis, sha: str
) -> None:
    with silent_server() as (port, accepted):
        client = client_for(with_gitlab(make_settings, f"http://127.0.0.1:{port}"), redis)
        body = push_body(sha, project="platform/sample-app-renamed")
        for _ in range(3):
            started = time.monotonic()
            assert post(client, body, signed_headers(body)).status_code == 403
            assert time.monotonic() - started < 2.5
        matching = push_body(sha)
        started = time.monotonic()
        assert post(client, matching, signed_headers(matching)).status_code == 202
        assert time.monotonic() - started < 1.0  # a matching path never waits for GitLab
        time.sleep(0.3)
        assert len(accepted) == 1  # web start and three mismatches: one question in RESOLVE_RETRY


def test_the_project_is_compared_before_the_event_is_classified(client: FlaskClient, sha: str) -> None:
    body = push_body(sha, branch="other", project="someone/else")
    assert post(client, body, signed_headers(body, event="Note Hook")).status_code == 403


def test_gitlabs_documented_push_to_a_project_configured_for_another_path_is_403(
    client: FlaskClient, redis: Redis
) -> None:
    body, headers = sample("push_hook")
    assert post(client, body, authenticate(body, headers)).status_code == 403


# -- 200: ignored, with a reason, never 4xx ------------------------------------------------------


def ignored_payloads(sha: str) -> dict[str, tuple[bytes, str]]:
    deletion = json.loads(push_body(sha))
    deletion.update(before=sha, after="0" * 40, checkout_sha=None, commits=[], total_commits_count=0)
    return {
        "other branch": (push_body(sha, branch="feature/login"), "Push Hook"),
        "skip deploy": (push_body(sha, message="docs only [skip deploy]"), "Push Hook"),
        "deploy skip": (push_body(sha, message="[deploy skip] typo"), "Push Hook"),
        "deletion": (json.dumps(deletion).encode(), "Push Hook"),
        "merge request": (push_body(sha), "Merge Request Hook"),
        "note": (push_body(sha), "Note Hook"),
        "tag push": (push_body(sha).replace(b"refs/heads/main", b"refs/tags/v1.0.0"), "Tag Push Hook"),
        "tag ref as push": (push_body(sha).replace(b"refs/heads/main", b"refs/tags/main"), "Push Hook"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "other branch",
        "skip deploy",
        "deploy skip",
        "deletion",
        "merge request",
        "note",
        "tag push",
        "tag ref as push",
    ],
)
def test_valid_deliveries_that_do_not_deploy_are_200_with_a_reason(
    client: FlaskClient, redis: Redis, sha: str, case: str
) -> None:
    body, event = ignored_payloads(sha)[case]
    response = post(client, body, signed_headers(body, event=event))
    assert response.status_code == 200
    answer = response.get_json()
    assert list(answer) == ["ignored"]
    assert isinstance(answer["ignored"], str) and answer["ignored"]
    assert nothing_was_queued(redis)


def test_gitlabs_documented_tag_push_is_ignored(make_settings: Callable[..., Settings], redis: Redis) -> None:
    settings = make_settings(gitlab_project="jsmith/example", branch="master")
    body, headers = sample("tag_push_hook")
    response = post(client_for(settings, redis), body, authenticate(body, headers))
    assert response.status_code == 200
    assert "Tag Push Hook" in response.get_json()["ignored"]
    assert nothing_was_queued(redis)


def test_a_skip_marker_in_an_older_commit_still_deploys(client: FlaskClient, sha: str) -> None:
    payload = json.loads(push_body(sha))
    payload["commits"].insert(0, {"id": "f" * 40, "message": "wip [skip deploy]"})
    body = json.dumps(payload).encode()
    assert post(client, body, signed_headers(body)).status_code == 202


# -- no secret ever comes back -------------------------------------------------------------------


def digests_of(body: bytes, headers: dict[str, str]) -> list[bytes]:
    """Every HMAC a careless error message might echo: over the signed content and over the body."""
    forms: list[bytes] = []
    signed_content = (
        f"{headers.get('webhook-id', '')}.{headers.get('webhook-timestamp', '')}.".encode() + body
    )
    for key in (SIGNING_KEY_BYTES, SIGNING_TOKEN.encode(), SECRET_TOKEN.encode()):
        for content in (signed_content, body):
            digest = hmac.new(key, content, hashlib.sha256).digest()
            forms += [base64.b64encode(digest), digest.hex().encode(), base64.urlsafe_b64encode(digest)]
    if "webhook-signature" in headers:
        for entry in headers["webhook-signature"].split(" "):
            forms.append(entry.partition(",")[2].encode())
    return [f for f in forms if len(f) >= 8]


def test_no_rejection_echoes_a_token_key_signature_or_digest(
    client: FlaskClient, small_client: FlaskClient, token_only: FlaskClient, sha: str
) -> None:
    good = push_body(sha)
    near_miss = signed_headers(good, signing_token=OTHER_SIGNING_TOKEN)  # a digest the attacker wants
    cases: list[tuple[FlaskClient, bytes, dict[str, str], str, int]] = [
        (small_client, b"x" * 5000, signed_headers(b"x" * 5000), HOOK, 413),
        (client, good, {**signed_headers(good), "Content-Type": "text/plain"}, HOOK, 415),
        (client, good, signed_headers(good), "/hooks/gitlab/nope", 404),
        (client, good, near_miss, HOOK, 401),
        (client, good.replace(b"alice", b"eve"), signed_headers(good), HOOK, 401),
        (client, good, signed_headers(good, timestamp=int(time.time()) - 3600), HOOK, 401),
        (client, good, signed_headers(good, secret_token=SECRET_TOKEN[:-2] + "zz"), HOOK, 401),
        (
            token_only,
            good,
            signed_headers(good, signing_token=None, secret_token=SECRET_TOKEN[:8]),
            HOOK,
            401,
        ),
        (client, good, signed_headers(good, signing_token=None), HOOK, 401),  # unsigned
        (client, good, {**near_miss, "webhook-id": ""}, HOOK, 401),  # partial: malformed
        (client, b"not json", signed_headers(b"not json"), HOOK, 400),
        (client, push_body(sha, project="x/y"), signed_headers(push_body(sha, project="x/y")), HOOK, 403),
    ]
    for app_client, body, headers, path, status in cases:
        response = post(app_client, body, headers, path=path)
        assert response.status_code == status, (path, status, response.get_data(as_text=True))
        exposed = response.get_data() + str(response.headers).encode()
        assert b"Traceback" not in exposed
        forbidden = [*secret_forms(), *digests_of(body, headers), *digests_of(body, near_miss)]
        forbidden += [SECRET_TOKEN[i : i + 8].encode() for i in range(len(SECRET_TOKEN) - 7)]
        for form in forbidden:
            assert form not in exposed, f"{status} answer exposes {form!r}"


# -- Redis unavailable: 503 fast, and /healthz says so ---------------------------------------------


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP port that accepts connections (kernel backlog) but never reads or answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    server.close()


def refused_url() -> str:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("where", ["port 1", "refused", "blackhole"])
def test_redis_unreachable_answers_503_within_a_second(
    make_settings: Callable[..., Settings], sha: str, blackhole: str, where: str
) -> None:
    url = {"port 1": "redis://127.0.0.1:1/0", "refused": refused_url(), "blackhole": blackhole}[where]
    settings = make_settings(server={"on_redis_down": "503"})
    client = create_app(settings, web_redis(url), drain=False).test_client()
    body = push_body(sha)
    started = time.monotonic()
    response = post(client, body, signed_headers(body))
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.get_json() == {"error": "deployment queue unavailable; try again"}
    assert elapsed < 1.0, f"{where}: answered after {elapsed:.2f} s"


@pytest.mark.parametrize("where", ["port 1", "blackhole"])
def test_redis_unreachable_without_a_delivery_key_is_503_too(
    make_settings: Callable[..., Settings], sha: str, blackhole: str, where: str
) -> None:
    url = {"port 1": "redis://127.0.0.1:1/0", "blackhole": blackhole}[where]
    settings = make_settings(signing_token=None, server={"on_redis_down": "503"})
    client = create_app(settings, web_redis(url), drain=False).test_client()
    body = push_body(sha)
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Token": SECRET_TOKEN,
    }
    started = time.monotonic()
    assert post(client, body, headers).status_code == 503
    assert time.monotonic() - started < 1.0


def test_rejections_do_not_need_redis(settings: Settings, sha: str) -> None:
    """Bad deliveries and ignored pushes are answered even while Redis is down."""
    client = create_app(settings, web_redis("redis://127.0.0.1:1/0")).test_client()
    body = push_body(sha)
    assert post(client, body, signed_headers(body, secret_token="wrong")).status_code == 401
    other = push_body(sha, branch="dev")
    assert post(client, other, signed_headers(other)).status_code == 200


def test_healthz_is_200_with_redis(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["ok"] is True


@pytest.mark.parametrize("where", ["port 1", "blackhole"])
def test_healthz_is_503_without_redis_and_answers_fast(
    settings: Settings, blackhole: str, where: str
) -> None:
    url = {"port 1": "redis://127.0.0.1:1/0", "blackhole": blackhole}[where]
    client = create_app(settings, web_redis(url)).test_client()
    started = time.monotonic()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["ok"] is False
    assert time.monotonic() - started < 1.0


# -- through a real HTTP server: header bytes as GitLab sends them -------------------------------


@pytest.fixture
def serve(redis: Redis) -> Iterator[Callable[[Settings], int]]:
    """The app behind werkzeug's real WSGI server: real header decoding (PEP 3333), real chunking."""
    started: list[tuple[Any, threading.Thread]] = []

    def start(settings: Settings) -> int:
        server = make_server("127.0.0.1", 0, create_app(settings, redis))
        # serve_forever() selects, then accepts: should the connection vanish in between (a client
        # reset), a blocking accept() would hang shutdown(). A timeout makes it return instead.
        server.socket.settimeout(1.0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        return int(server.server_port)

    yield start
    for server, thread in started:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture
def served(make_settings: Callable[..., Settings], serve: Callable[[Settings], int]) -> int:
    return serve(make_settings(signing_token=None, secret_token="s\u00e9cret-\u00fc-token"))


def raw_post(port: int, body: bytes, header_lines: list[bytes], chunked: bool = False) -> tuple[int, bytes]:
    if chunked:
        framing = [b"Transfer-Encoding: chunked"]
        pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        framing = [f"Content-Length: {len(body)}".encode()]
        payload = body
    request = b"\r\n".join(
        [
            f"POST {HOOK} HTTP/1.1".encode(),
            b"Host: 127.0.0.1",
            b"Content-Type: application/json",
            *framing,
            b"X-Gitlab-Event: Push Hook",
            f"Idempotency-Key: {uuid.uuid4()}".encode(),
            b"Connection: close",
            *header_lines,
            b"",
            b"",
        ]
    )
    response = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            conn.sendall(request + payload)
            while chunk := conn.recv(65536):
                response += chunk
        except (ConnectionResetError, BrokenPipeError):
            # A server that refuses a body closes with the rest unread, and the kernel answers the
            # client with a reset: the response may already be here, or may be lost with it.
            pass
    assert response.startswith(b"HTTP/"), f"no HTTP response (got {response[:80]!r})"
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


def test_a_non_ascii_secret_token_sent_as_utf8_bytes_is_accepted(served: int, redis: Redis, sha: str) -> None:
    """GitLab sends the token's UTF-8 bytes; gunicorn and werkzeug hand them over as latin-1 text."""
    body = push_body(sha)
    status, answer = raw_post(served, body, [b"X-Gitlab-Token: " + "s\u00e9cret-\u00fc-token".encode()])
    assert status == 202, answer
    assert queue(redis).count == 1


def test_a_wrong_non_ascii_token_over_http_is_401(served: int, redis: Redis, sha: str) -> None:
    body = push_body(sha)
    status, _ = raw_post(served, body, [b"X-Gitlab-Token: " + "s\u00e9cret-\u00fd-token".encode()])
    assert status == 401
    status, _ = raw_post(served, body, [b"X-Gitlab-Token: \xff\xfe"])
    assert status == 401
    assert nothing_was_queued(redis)


# -- a Redis that fails between the duplicate claim and the job ----------------------------------


class CuttingProxy:
    """A TCP proxy to the real Redis that drops the connection when it sees ``MULTI`` go by.

    That is the moment between the two round trips of ``Intake.accept``: the delivery id has been
    claimed, the record and job not yet written. A real fault at a real point, no mocks.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.1)  # so the accept loop notices close()
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.stopped = threading.Event()
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and b"MULTI" in data.upper():
                    self.cut.set()
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.stopped.set()
        self.acceptor.join(timeout=5)
        self.listener.close()


def test_a_delivery_answered_503_midway_is_deployed_when_gitlab_resends_it(
    make_settings: Callable[..., Settings],
    redis: Redis,
    redis_url: str,
    sha: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(server={"on_redis_down": "503"})
    host, port = (
        redis.connection_pool.connection_kwargs["host"],
        redis.connection_pool.connection_kwargs["port"],
    )
    proxy = CuttingProxy((host, port))
    try:
        db = redis.connection_pool.connection_kwargs.get("db", 0)
        flaky = create_app(settings, web_redis(f"redis://127.0.0.1:{proxy.port}/{db}")).test_client()
        body = push_body(sha)
        headers = signed_headers(body, delivery="resent-after-503")
        first = post(flaky, body, headers)
        assert proxy.cut.is_set()
        assert first.status_code == 503
    finally:
        proxy.close()
    # Redis is back; GitLab resends the same delivery (same Idempotency-Key, fresh signature).
    time.sleep(0.6)
    resend = post(client_for(settings, redis), body, signed_headers(body, delivery="resent-after-503"))
    answer = resend.get_json()
    try:
        DeploymentStore(redis).get(answer["deployment"])
    except UnknownDeployment:
        pytest.fail(f"resend answered {resend.status_code} {answer} but no such deployment exists")
    assert queue(redis).count == 1


@pytest.fixture
def served_small(make_settings: Callable[..., Settings], serve: Callable[[Settings], int]) -> int:
    return serve(make_settings(signing_token=None, server={"max_body_bytes": 2048}))


TOKEN_LINE = b"X-Gitlab-Token: " + SECRET_TOKEN.encode()


def test_a_chunked_upload_over_the_limit_is_413_over_http(served_small: int, redis: Redis, sha: str) -> None:
    status, _ = raw_post(served_small, padded_push(sha, 4096), [TOKEN_LINE], chunked=True)
    assert status == 413
    assert nothing_was_queued(redis)


def test_a_chunked_upload_that_is_json_then_padding_over_the_limit_is_413(
    served_small: int, redis: Redis, sha: str
) -> None:
    """Cut at the limit, this body would still be a complete JSON document: it must not deploy."""
    body = push_body(sha) + b" " * 4096
    status, _ = raw_post(served_small, body, [TOKEN_LINE], chunked=True)
    assert status == 413
    assert nothing_was_queued(redis)


def test_a_chunked_upload_of_exactly_the_limit_is_accepted_over_http(served_small: int, sha: str) -> None:
    status, answer = raw_post(served_small, padded_push(sha, 2048), [TOKEN_LINE], chunked=True)
    assert status == 202, answer


def test_a_small_chunked_upload_is_accepted_over_http(served_small: int, sha: str) -> None:
    status, answer = raw_post(served_small, push_body(sha), [TOKEN_LINE], chunked=True)
    assert status == 202, answer
