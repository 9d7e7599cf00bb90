"""Redis down at delivery time: a verified push is journaled and answered 202, then deployed once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from redis import Redis

from tests.helpers import GitRepo, git, push_body, signed_headers
from webhook.app import create_app
from webhook.drainer import Drainer
from webhook.journal import Journal
from workers.config import Settings
from workers.connection import web_redis
from workers.deployments import DeploymentStore, State
from workers.intake import Intake


def test_a_push_while_redis_is_down_is_journaled_and_deployed_later(
    make_settings: Callable[..., Settings], redis: Redis, git_repo: GitRepo
) -> None:
    settings = make_settings()
    sha = git("rev-parse", "HEAD", cwd=git_repo.work)
    down = create_app(settings, web_redis("redis://127.0.0.1:1/0"), drain=False).test_client()
    body = push_body(sha)
    started = time.monotonic()
    answers = [
        down.post("/hooks/gitlab/sample-app", data=body, headers=signed_headers(body, delivery=f"d-{i}"))
        for i in range(3)
    ]
    resent = down.post("/hooks/gitlab/sample-app", data=body, headers=signed_headers(body, delivery="d-0"))
    assert time.monotonic() - started < 2.0
    assert [a.status_code for a in answers] == [202, 202, 202]
    ids = [a.get_json()["deployment"] for a in answers]
    assert answers[0].get_json()["url"] == f"http://pushdeploy.test/deployments/{ids[0]}"
    assert Journal(settings.server.data_dir).pending()

    # Redis is back: the drainer moves the journal in; the resent delivery stays one deployment.
    moved = Drainer(settings, Journal(settings.server.data_dir), Intake(redis, settings.server.public_url))
    assert moved.drain_once() == 4
    store = DeploymentStore(redis)
    assert [store.get(i).state for i in ids] == [State.QUEUED] * 3
    assert len(store.history("sample-app", "production", limit=10)) == 3
    assert resent.status_code == 202


def test_503_instead_when_the_operator_prefers(
    make_settings: Callable[..., Settings], git_repo: GitRepo
) -> None:
    settings = make_settings(server={"on_redis_down": "503"})
    sha = git("rev-parse", "HEAD", cwd=git_repo.work)
    down = create_app(settings, web_redis("redis://127.0.0.1:1/0"), drain=False).test_client()
    body = push_body(sha)
    assert down.post("/hooks/gitlab/sample-app", data=body, headers=signed_headers(body)).status_code == 503
    assert not Journal(settings.server.data_dir).pending()


def test_a_journal_line_written_before_review_apps_is_still_deployed(
    make_settings: Callable[..., Settings], redis: Redis, git_repo: GitRepo
) -> None:
    settings = make_settings()
    sha = git("rev-parse", "HEAD", cwd=git_repo.work)
    journal = Journal(settings.server.data_dir)
    journal.directory.mkdir(parents=True, mode=0o700)
    old = {  # the fields a journal line had before merge request events were journaled too
        "deployment_id": "20261101120000000-abc123", "created_at": time.time(), "project": "sample-app",
        "environment": "production", "ref": "refs/heads/main", "sha": sha, "pusher": "alice",
        "delivery_key": "d-old",
    }  # fmt: skip
    journal.active.write_text(json.dumps(old) + "\n")

    drainer = Drainer(settings, journal, Intake(redis, settings.server.public_url))
    assert drainer.drain_once() == 1
    deployment = DeploymentStore(redis).get(old["deployment_id"])
    assert (deployment.state, deployment.sha, deployment.trigger) == (State.QUEUED, sha, "push")
