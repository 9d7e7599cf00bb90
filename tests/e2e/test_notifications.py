"""Notifications from real worker processes, through Apprise's json:// service, to a real receiver.

A failure sends one message; the next success sends ``recovered``; a receiver answering 500 three
times still gets each message once and the deployment does not notice; a worker SIGKILLed while a
message is pending leaves it to the next worker, which delivers it once. No message, and no line of
any process's log, holds a token or the notification URL's secret path.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import requests
from redis import Redis

from tests.chat import ChatReceiver
from tests.e2e.conftest import GITLAB_TOKEN, Stack
from tests.e2e.test_metrics import sample
from tests.faults.harness import deliver, wait_state
from tests.helpers import ADMIN_TOKEN, SECRET_TOKEN, SIGNING_TOKEN, wait_for
from workers import schema

pytestmark = pytest.mark.e2e

PATH_CANARY = "chat-hook-canary-b81d3f"
BUILD_OK = "#!/bin/sh\necho building\n"
BUILD_FAIL = f"#!/bin/sh\necho 'token {SECRET_TOKEN} leaked?'\nexit 3\n"
CANARIES = (SECRET_TOKEN, ADMIN_TOKEN, GITLAB_TOKEN, SIGNING_TOKEN, PATH_CANARY)


@pytest.fixture
def chat() -> Iterator[ChatReceiver]:
    receiver = ChatReceiver()
    yield receiver
    receiver.close()


def started(stack: object, chat: ChatReceiver) -> Stack:
    made: Stack = stack(notify={"urls": [chat.url(PATH_CANARY)]})  # type: ignore[operator]
    made.start_web()
    made.start_worker()
    return made


def push(made: Stack, files: dict[str, str], title: str) -> str:
    sha = made.repo.commit(files, title)
    answer = deliver(made, sha, message=f"{title}\n\nThe body of the commit message.")
    assert answer.status_code == 202, answer.text
    return str(answer.json()["deployment"])


def delivered(chat: ChatReceiver, count: int, made: Stack, timeout: float = 60) -> None:
    def enough() -> bool:
        made.assert_running()
        return len(chat.delivered()) >= count

    try:
        wait_for(enough, timeout=timeout, what=f"{count} message(s) at the chat")
    except AssertionError:
        raise AssertionError(f"{len(chat.delivered())} delivered; logs:\n{made.log_text()}") from None


def test_a_failure_then_a_recovery_through_500s_reach_the_chat_once_each(
    stack: object, redis: Redis, chat: ChatReceiver
) -> None:
    made = started(stack, chat)
    bad = push(made, {"build.sh": BUILD_FAIL}, "Break the build")
    assert wait_state(redis, bad, ("failed",), 60, made) == "failed"
    delivered(chat, 1, made)
    [failure] = chat.delivered()
    assert failure.payload["type"] == "failure"
    assert failure.payload["title"] == "sample-app/production: deployment failed"
    body = failure.payload["message"]
    assert "build step 1 `./build.sh` exited with 3" in body
    assert "Break the build on main" in body and "Triggered by: alice (push)" in body
    assert f"{made.base_url}/deployments/{bad}" in body

    chat.fail_next(3)
    good = push(made, {"build.sh": BUILD_OK}, "Mend the build")
    assert wait_state(redis, good, ("succeeded", "failed"), 60, made) == "succeeded"
    delivered(chat, 2, made)
    time.sleep(2)  # nothing more arrives: each message once
    assert len(chat.delivered()) == 2 and len(chat.refused()) == 3
    recovery = chat.delivered()[1]
    assert (recovery.payload["type"], recovery.payload["title"]) == (
        "success",
        "sample-app/production: recovered",
    )
    record = made.api(f"/deployments/{good}")
    assert (record["state"], record["reason"]) == ("succeeded", "")  # the 500s changed nothing here
    assert record["commit_title"] == "Mend the build"
    [notice] = record["notifications"]
    assert (notice["event"], notice["delivery"], notice["tries"]) == ("recovered", "sent", 3)

    metrics = requests.get(f"{made.base_url}/metrics", timeout=5).text
    assert sample(metrics, "pushdeploy_notifications_total", outcome="sent") == 2
    assert sample(metrics, "pushdeploy_notifications_total", outcome="retry") == 3
    assert sample(metrics, "pushdeploy_notify_outbox") == 0

    for post in chat.posts:
        for canary in CANARIES:
            assert canary not in post.text, canary
    assert PATH_CANARY not in made.log_text()


def test_a_notification_pending_when_its_worker_is_killed_is_delivered_once_by_the_next(
    stack: object, redis: Redis, chat: ChatReceiver
) -> None:
    made = started(stack, chat)
    chat.fail_next(10_000)
    bad = push(made, {"build.sh": BUILD_FAIL}, "Break it before the kill")
    assert wait_state(redis, bad, ("failed",), 60, made) == "failed"
    wait_for(lambda: len(chat.refused()) >= 2, timeout=30, what="the notifier to be retrying")
    time.sleep(0.5)  # between tries (the next is 2 s after the second): no send under way
    worker = made.processes.pop("worker-1")  # dead on purpose: not a failure of the stack
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    member = f"{bad}:failed"
    assert redis.zscore(schema.NOTIFY_DUE, member) is not None  # still owed, in Redis

    chat.fail_next(0)
    made.start_worker("worker-2")
    delivered(chat, 1, made, timeout=90)
    time.sleep(3)
    [message] = chat.delivered()
    assert message.payload["type"] == "failure" and "Break it before the kill" in message.payload["message"]
    assert redis.zscore(schema.NOTIFY_DUE, member) is None
    [notice] = made.api(f"/deployments/{bad}")["notifications"]
    assert notice["delivery"] == "sent" and notice["tries"] >= 2
