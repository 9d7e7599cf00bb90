"""Delivery policies: who makes us read a body, how much of it, and which deliveries count.

The raw-socket tests run the app as deployed, under gunicorn, and look at what crosses the wire.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from redis import Redis

from tests.conftest import REDIS_URL
from tests.e2e.conftest import GITLAB_TOKEN, Stack, make_stack
from tests.fakegitlab import FakeGitLab
from tests.helpers import SECRET_TOKEN, GitRepo, git, push_body, signed_headers
from webhook.app import create_app
from workers import defaults
from workers.config import Settings

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_a_polled_project_without_tokens_refuses_every_delivery(
    make_settings: Callable[..., Settings], redis: Redis, git_repo: GitRepo
) -> None:
    settings = make_settings(trigger="poll", secret_token=None, signing_token=None)
    client = create_app(settings, redis, drain=False).test_client()
    written = redis.dbsize()  # the layout version, written at start
    body = push_body(git("rev-parse", "HEAD", cwd=git_repo.work))
    answer = client.post("/hooks/gitlab/sample-app", data=body, headers=signed_headers(body, None, None))
    assert answer.status_code == 401
    assert "takes no webhooks" in answer.get_json()["error"]
    assert redis.dbsize() == written


def test_a_signed_replay_with_a_fresh_idempotency_key_is_still_a_duplicate(
    make_settings: Callable[..., Settings], redis: Redis, git_repo: GitRepo
) -> None:
    client = create_app(make_settings(), redis, drain=False).test_client()
    body = push_body(git("rev-parse", "HEAD", cwd=git_repo.work))
    headers = signed_headers(body, delivery="signed-once")
    first = client.post("/hooks/gitlab/sample-app", data=body, headers=headers)
    replay = client.post(
        "/hooks/gitlab/sample-app", data=body, headers={**headers, "Idempotency-Key": "fresh"}
    )
    assert first.status_code == 202
    assert replay.get_json() == {"duplicate": True, "deployment": first.get_json()["deployment"]}


# -- under real gunicorn, over a raw socket: what is read, and when -------------------------------


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``pushdeploy web`` as deployed (gunicorn, sync workers) with the default body limit."""
    root = tmp_path_factory.mktemp("gunicorn")
    repo = GitRepo(root / "repo")
    repo.commit({"app.txt": "v1\n"}, "first")
    with FakeGitLab({"tools/sample-app": 42}, token=GITLAB_TOKEN) as gitlab:
        web = make_stack(root, gitlab, repo, REDIS_URL)
        try:
            web.start_web()
            yield web
        finally:
            web.stop()


def address(stack: Stack) -> tuple[str, int]:
    host, port = stack.base_url.removeprefix("http://").split(":")
    return host, int(port)


def request_head(content_length: int | None, token: str, extra: tuple[str, ...] = ()) -> bytes:
    lines = [
        "POST /hooks/gitlab/sample-app HTTP/1.1",
        "Host: pushdeploy.test",
        "Content-Type: application/json",
        "X-Gitlab-Event: Push Hook",
        f"X-Gitlab-Token: {token}",
        *([f"Content-Length: {content_length}"] if content_length is not None else []),
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(conn: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_20_mb_body_with_a_wrong_token_is_refused_before_a_byte_of_it_is_sent(
    gunicorn: Stack, redis: Redis
) -> None:
    """Only the headers go out: the 401 comes back while the declared 20 MB were never sent."""
    with socket.create_connection(address(gunicorn), timeout=5) as conn:
        started = time.monotonic()
        conn.sendall(request_head(20_000_000, "wrong-token"))
        status, body = read_answer(conn)
        elapsed = time.monotonic() - started
    assert status == 401
    assert json.loads(body) == {"error": "invalid X-Gitlab-Token"}
    assert elapsed < 2.0


def test_with_the_right_token_the_same_delivery_waits_for_its_body(gunicorn: Stack, redis: Redis) -> None:
    """The contrast that makes the test above mean something: a valid token is followed by a read."""
    with socket.create_connection(address(gunicorn), timeout=1.5) as conn:
        conn.sendall(request_head(20_000_000, SECRET_TOKEN))
        with pytest.raises(TimeoutError):
            conn.recv(1)


def big_push(sha: str, size: int) -> bytes:
    """GitLab's documented Push Hook for our project, its 20 commits (GitLab's cap) adding many files."""
    payload = json.loads((SAMPLES / "push_hook.json").read_bytes())
    payload["project"].update(id=42, path_with_namespace="tools/sample-app")
    payload.update(project_id=42, ref="refs/heads/main", after=sha, checkout_sha=sha, total_commits_count=20)
    template = payload["commits"][0]
    name = "assets/generated/batch-{:02d}/file-{:06d}-with-a-longish-name.json"
    files = size // 20 // len(name.format(0, 0)) + 1  # each path also takes quotes and a comma
    payload["commits"] = [
        {
            **template,
            "id": sha if n == 19 else f"{n:040x}",
            "message": f"generated change {n}",
            "added": [name.format(n, i) for i in range(files)],
            "modified": [],
            "removed": [],
        }
        for n in range(20)
    ]
    return json.dumps(payload).encode()


def test_a_5_mb_signed_push_with_long_file_lists_is_accepted(gunicorn: Stack, redis: Redis) -> None:
    sha = git("rev-parse", "HEAD", cwd=gunicorn.repo.work)
    body = big_push(sha, 5_000_000)
    assert len(body) > 5_000_000
    answer = requests.post(
        f"{gunicorn.base_url}/hooks/gitlab/sample-app", data=body, headers=signed_headers(body), timeout=30
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["deployment"]


def test_a_chunked_body_over_the_default_limit_is_413(gunicorn: Stack, redis: Redis) -> None:
    """No Content-Length to check first: reading stops one byte past 25 MiB.

    The client sends 2 KiB past the limit and waits, without ending the body: gunicorn hands over
    a byte past the limit only once it holds a little more (its reads are 1 KiB at least).
    """
    limit = defaults.MAX_BODY_BYTES
    assert limit == 25 * 1024 * 1024
    piece = b" " * 65536
    with socket.create_connection(address(gunicorn), timeout=20) as conn:
        conn.sendall(request_head(None, SECRET_TOKEN, ("Transfer-Encoding: chunked",)))
        sent = 0
        while sent < limit + 2048:
            data = piece[: min(len(piece), limit + 2048 - sent)]
            conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            sent += len(data)
        status, body = read_answer(conn)
    assert status == 413
    assert json.loads(body) == {"error": f"payload larger than {limit} bytes"}
