"""Which notifications a deployment queues, what they say, and that each event is queued once."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis

from tests.helpers import ADMIN_TOKEN, SECRET_TOKEN
from workers import schema
from workers.config import ConfigError, NotifyEvent, Settings
from workers.deployments import Deployment, State
from workers.notifications import Delivery, Kind, announce, announce_end, compose, queue, recorded

URL_CANARY = "notify-url-canary-0c9e4d"
URL = f"json://127.0.0.1:9/hooks/{URL_CANARY}"


def ended(state: State, number: int, reason: str = "") -> Deployment:
    return Deployment(
        f"2026120209{number:05d}-abc{number:03d}",
        "sample-app",
        "production",
        "refs/heads/main",
        "9f3c2a1be0" + "0" * 30,
        pusher="alice",
        state=state,
        reason=reason,
        created_at=1000.0,
        started_at=1001.0,
        finished_at=1073.0,
        commit_title="Fix the cart total",
        commit_author="Alice Liddell",
    )


def settings_with(make_settings: Callable[..., Settings], **notify: Any) -> Settings:
    return make_settings(notify={"urls": [URL], **notify})


def test_a_failure_then_the_next_success_send_failed_then_recovered_once(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    settings = settings_with(make_settings)  # default on: failed and recovered
    assert announce_end(redis, settings, ended(State.SUCCEEDED, 1)) is None
    assert announce_end(redis, settings, ended(State.FAILED, 2)) is NotifyEvent.FAILED
    assert announce_end(redis, settings, ended(State.CANCELED, 3)) is None  # changes nothing
    assert announce_end(redis, settings, ended(State.SUCCEEDED, 4)) is NotifyEvent.RECOVERED
    assert announce_end(redis, settings, ended(State.SUCCEEDED, 5)) is None
    queued = redis.zrange(schema.NOTIFY_DUE, 0, -1)
    assert sorted(queued) == sorted(
        [f"{ended(State.FAILED, 2).id}:failed".encode(), f"{ended(State.SUCCEEDED, 4).id}:recovered".encode()]
    )
    [failed] = recorded(redis, ended(State.FAILED, 2).id)
    assert (failed.kind, failed.delivery, failed.sent_to) == (Kind.FAILURE, Delivery.PENDING, [])


def test_with_succeeded_and_recovered_a_recovery_sends_one_message_recovered(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    settings = settings_with(make_settings, on=["succeeded", "recovered", "failed"])
    events = [
        announce_end(redis, settings, ended(state, n))
        for n, state in enumerate([State.FAILED, State.SUCCEEDED, State.SUCCEEDED])
    ]
    assert events == [NotifyEvent.FAILED, NotifyEvent.RECOVERED, NotifyEvent.SUCCEEDED]
    assert redis.zcard(schema.NOTIFY_DUE) == 3


def test_only_succeeded_configured_sends_succeeded_for_a_recovery(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    settings = settings_with(make_settings, on=["succeeded"])
    assert announce_end(redis, settings, ended(State.FAILED, 1)) is None
    assert announce_end(redis, settings, ended(State.SUCCEEDED, 2)) is NotifyEvent.SUCCEEDED


def test_each_event_of_a_deployment_is_queued_once(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    settings = settings_with(make_settings, on=["started", "canceled"])
    deployment = ended(State.CANCELED, 1)
    assert announce(redis, settings, deployment, NotifyEvent.STARTED)
    assert not announce(redis, settings, deployment, NotifyEvent.STARTED)
    assert not queue(redis, deployment.id, compose(settings, deployment, NotifyEvent.STARTED))
    assert announce_end(redis, settings, deployment) is NotifyEvent.CANCELED
    assert [n.event for n in recorded(redis, deployment.id)] == ["started", "canceled"]
    assert [n.kind for n in recorded(redis, deployment.id)] == [Kind.INFO, Kind.WARNING]


def test_no_urls_no_notification(redis: Redis, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert announce_end(redis, settings, ended(State.FAILED, 1)) is None
    assert redis.zcard(schema.NOTIFY_DUE) == 0


def test_the_message_says_what_happened_and_holds_no_token(make_settings: Callable[..., Settings]) -> None:
    settings = settings_with(make_settings)
    reason = f"build step 1 `curl -H 'X: {SECRET_TOKEN}' {URL}` exited with 2"
    notice = compose(settings, ended(State.FAILED, 7, reason), NotifyEvent.FAILED)
    assert notice.title == "sample-app/production: deployment failed"
    for part in (
        "sample-app → production: failed: build step 1",
        "Commit: 9f3c2a1b Fix the cart total (Alice Liddell) on main",
        "Triggered by: alice (push)",
        "Duration: 1 min 12 s",
        "http://pushdeploy.test/deployments/2026120209",
    ):
        assert part in notice.body
    assert "9f3c2a1be" not in notice.body  # the 8-character sha only
    for canary in (SECRET_TOKEN, ADMIN_TOKEN, URL_CANARY):
        assert canary not in notice.title + notice.body
    assert notice.kind is Kind.FAILURE


def test_server_wide_notify_and_a_projects_own_table_replacing_it(
    make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    from tests.helpers import write_config
    from workers.config import load

    base = make_settings()
    config = {
        "notify": {"urls": ["env:CHAT_URL"], "on": ["failed"]},
        "server": {"redis_url": base.server.redis_url, "data_dir": str(tmp_path / "d")},
        "projects": {
            "plain": {
                "gitlab_project": "a/plain",
                "repo_url": "https://example.org/a/plain.git",
                "secret_token": SECRET_TOKEN,
            },
            "own": {
                "gitlab_project": "a/own",
                "repo_url": "https://example.org/a/own.git",
                "secret_token": SECRET_TOKEN,
                "notify": {"urls": [URL]},
            },
        },
    }
    settings = load(write_config(tmp_path / "n.toml", config), environ={"CHAT_URL": "ntfy://ops-alerts"})
    assert [u.reveal() for u in settings.notify_for("plain").urls] == ["ntfy://ops-alerts"]
    assert settings.notify_for("plain").on == {NotifyEvent.FAILED}
    own = settings.notify_for("own")
    assert [u.reveal() for u in own.urls] == [URL]
    assert own.on == {NotifyEvent.FAILED, NotifyEvent.RECOVERED}  # the whole table replaced: default on
    assert URL_CANARY not in repr(settings)


@pytest.mark.parametrize(
    ("notify", "key", "words"),
    [
        ({"urls": ["nosuch://x/y"]}, "notify.urls[0]", "Apprise cannot send"),
        ({"urls": ["not a url"]}, "notify.urls[0]", "not an Apprise URL"),
        ({"urls": [URL], "on": ["failed", "exploded"]}, "notify.on[1]", "'exploded' is not an event"),
        ({"urls": [URL], "on": "failed"}, "notify.on", "must be a list"),
        ({"urls": [URL], "channel": "x"}, "notify.channel", "unknown key"),
        ({"urls": [42]}, "notify.urls", "a string or a list of strings"),
    ],
)
def test_a_bad_notify_table_is_named_and_never_repeats_a_url(
    make_settings: Callable[..., Settings], notify: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(notify=notify)
    [problem] = caught.value.problems
    assert problem.key == f"projects.sample-app.{key}"
    assert words in problem.message
    assert "x/y" not in problem.message


def test_a_url_apprise_refuses_is_not_quoted_in_the_processs_log(
    make_settings: Callable[..., Settings],
) -> None:
    """Apprise explains a bad URL by quoting it; a process logging everything to its root logger
    (as gunicorn or a worker may be set up) never sees those lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    before = root.level
    root.setLevel(logging.DEBUG)
    try:
        with pytest.raises(ConfigError) as caught:
            make_settings(notify={"urls": [f"slack://{URL_CANARY}"]})
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
    assert "Apprise cannot send to this slack:// URL" in str(caught.value)
    assert URL_CANARY not in stream.getvalue() + str(caught.value)
