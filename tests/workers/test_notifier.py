"""The notifier sends through Apprise to a real HTTP receiver: once, retried, and never a secret."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from redis import Redis

from tests.chat import ChatReceiver
from tests.helpers import ADMIN_TOKEN, SECRET_TOKEN, wait_for
from workers import schema
from workers.config import NotifyEvent, Settings
from workers.deployments import Deployment, DeploymentStore, State
from workers.notifications import Delivery, announce, recorded
from workers.notifier import Notifier, send_test

PATH_CANARY = "chat-path-canary-5be1f0"


@pytest.fixture
def chat() -> Iterator[ChatReceiver]:
    receiver = ChatReceiver()
    yield receiver
    receiver.close()


def failed(redis: Redis, number: int = 1) -> Deployment:
    deployment = Deployment(
        f"20261202100000{number:03d}-feed{number:02d}",
        "sample-app",
        "production",
        "refs/heads/main",
        "5d" * 20,
        pusher="bob",
        state=State.FAILED,
        reason="deploy step 1 `./go` exited with 1",
        started_at=100.0,
        finished_at=104.0,
    )
    DeploymentStore(redis).create(deployment)
    return deployment


def drain(notifier: Notifier, redis: Redis, timeout: float = 20.0) -> None:
    def empty() -> bool:
        notifier.deliver_due()
        return redis.zcard(schema.NOTIFY_DUE) == 0

    wait_for(empty, timeout=timeout, interval=0.05, what="the notifications to go out")


def test_a_notification_reaches_the_chat_once_as_apprise_json(
    redis: Redis, make_settings: Callable[..., Settings], chat: ChatReceiver
) -> None:
    settings = make_settings(notify={"urls": [chat.url(PATH_CANARY)]})
    deployment = failed(redis)
    assert announce(redis, settings, deployment, NotifyEvent.FAILED)
    notifier = Notifier(redis, settings, delays=(0.05,))
    drain(notifier, redis)
    notifier.deliver_due()  # nothing is due any more: nothing is sent again
    [message] = chat.delivered()
    assert message.path == f"/{PATH_CANARY}"
    assert message.payload["type"] == "failure"
    assert message.payload["title"] == "sample-app/production: deployment failed"
    assert "deploy step 1 `./go` exited with 1" in message.payload["message"]
    [notice] = recorded(redis, deployment.id)
    assert notice.delivery is Delivery.SENT and notice.tries == 0


def test_a_chat_answering_500_three_times_gets_the_message_once(
    redis: Redis, make_settings: Callable[..., Settings], chat: ChatReceiver
) -> None:
    settings = make_settings(notify={"urls": [chat.url(PATH_CANARY)]})
    deployment = failed(redis)
    announce(redis, settings, deployment, NotifyEvent.FAILED)
    chat.fail_next(3)
    drain(Notifier(redis, settings, delays=(0.05, 0.1, 0.1, 0.1)), redis)
    assert len(chat.refused()) == 3
    assert len(chat.delivered()) == 1
    [notice] = recorded(redis, deployment.id)
    assert (notice.delivery, notice.tries) == (Delivery.SENT, 3)


def test_a_chat_that_never_takes_it_is_given_up_and_the_problem_names_no_secret(
    redis: Redis, make_settings: Callable[..., Settings], chat: ChatReceiver
) -> None:
    settings = make_settings(notify={"urls": [chat.url(PATH_CANARY)]})
    deployment = failed(redis)
    announce(redis, settings, deployment, NotifyEvent.FAILED)
    chat.fail_next(100)
    drain(Notifier(redis, settings, delays=(0.05, 0.05)), redis)
    assert len(chat.refused()) == 3 and chat.delivered() == []
    [notice] = recorded(redis, deployment.id)
    assert notice.delivery is Delivery.GAVE_UP
    assert f"json://127.0.0.1:{chat.port}/…" in notice.problem
    assert "500" in notice.problem
    assert PATH_CANARY not in notice.problem


def test_a_retry_skips_the_urls_that_already_have_the_message(
    redis: Redis, make_settings: Callable[..., Settings], chat: ChatReceiver
) -> None:
    other = ChatReceiver()
    try:
        settings = make_settings(notify={"urls": [chat.url("a"), other.url("b")]})
        announce(redis, settings, failed(redis), NotifyEvent.FAILED)
        other.fail_next(2)
        drain(Notifier(redis, settings, delays=(0.05, 0.05, 0.05)), redis)
        assert len(chat.delivered()) == 1
        assert len(other.delivered()) == 1 and len(other.refused()) == 2
    finally:
        other.close()


def test_a_notification_whose_deployment_was_pruned_is_dropped(
    redis: Redis, make_settings: Callable[..., Settings], chat: ChatReceiver
) -> None:
    settings = make_settings(notify={"urls": [chat.url()]})
    deployment = failed(redis)
    announce(redis, settings, deployment, NotifyEvent.FAILED)
    redis.delete(*schema.deployment_keys(deployment.id))
    Notifier(redis, settings).deliver_due()
    assert redis.zcard(schema.NOTIFY_DUE) == 0 and chat.posts == []
    assert not redis.exists(schema.notices(deployment.id))  # not brought back by the notifier


def test_no_message_holds_a_token(
    redis: Redis, make_settings: Callable[..., Settings], chat: ChatReceiver
) -> None:
    settings = make_settings(notify={"urls": [chat.url(PATH_CANARY)], "on": ["started", "failed"]})
    deployment = failed(redis)
    deployment.reason = (
        f"deploy step 1 `echo {SECRET_TOKEN} {ADMIN_TOKEN} {chat.url(PATH_CANARY)}` exited with 1"
    )
    announce(redis, settings, deployment, NotifyEvent.STARTED)
    announce(redis, settings, deployment, NotifyEvent.FAILED)
    drain(Notifier(redis, settings), redis)
    assert len(chat.delivered()) == 2
    for message in chat.delivered():
        for canary in (SECRET_TOKEN, ADMIN_TOKEN, PATH_CANARY):
            assert canary not in message.text


def test_send_test_reports_each_url_without_its_secrets(
    make_settings: Callable[..., Settings], chat: ChatReceiver
) -> None:
    chat.fail_next(1)
    settings = make_settings(notify={"urls": [chat.url(PATH_CANARY), chat.url("second")]})
    first, second = send_test(settings, "sample-app")
    assert not first.ok and "500" in first.detail
    assert second.ok
    assert PATH_CANARY not in f"{first}{second}"
    [message] = chat.delivered()
    assert message.payload["title"] == "pushdeploy: test notification"
    assert message.payload["type"] == "info"


def test_a_notification_this_release_cannot_read_is_dropped_not_retried_forever(
    redis: Redis, make_settings: Callable[..., Settings], chat: ChatReceiver
) -> None:
    import json

    settings = make_settings(notify={"urls": [chat.url()]})
    newer, broken = failed(redis, 1), failed(redis, 2)
    announce(redis, settings, newer, NotifyEvent.FAILED)
    stored = json.loads(redis.hget(schema.notices(newer.id), "failed") or b"{}")
    redis.hset(schema.notices(newer.id), "failed", json.dumps({**stored, "added_later": 1}))
    redis.hset(schema.notices(broken.id), "failed", b"{not json")
    redis.zadd(schema.NOTIFY_DUE, {f"{broken.id}:failed": 0})
    drain(Notifier(redis, settings), redis)
    assert len(chat.delivered()) == 1  # the newer release's notification, its extra field ignored
    assert [n.delivery for n in recorded(redis, newer.id)] == [Delivery.SENT]
    assert recorded(redis, broken.id) == []  # the page shows nothing rather than failing
