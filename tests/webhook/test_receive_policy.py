"""Delivery policies: a project without tokens takes no webhooks; signed replays stay duplicates."""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis

from tests.helpers import GitRepo, git, push_body, signed_headers
from webhook.app import create_app
from workers.config import Settings


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
