"""``pushdeploy notify test``, run as a real process against a real local chat receiver."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chat import ChatReceiver
from workers.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PATH_CANARY = "notify-cli-canary-3e7a90"


@pytest.fixture
def chat() -> Iterator[ChatReceiver]:
    receiver = ChatReceiver()
    yield receiver
    receiver.close()


def notify_test(settings: Settings, project: str = "sample-app") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook.cli", "notify", "test", project, "-c", str(settings.path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_notify_test_sends_and_reports_each_url(
    make_settings: Callable[..., Settings], chat: ChatReceiver
) -> None:
    settings = make_settings(notify={"urls": [chat.url(PATH_CANARY)], "on": ["failed"]})
    done = notify_test(settings)
    assert done.returncode == 0, done.stderr
    assert f"[0] json://127.0.0.1:{chat.port}/…: sent" in done.stdout
    [message] = chat.delivered()
    assert message.payload["title"] == "pushdeploy: test notification"
    assert "sample-app" in message.payload["message"]
    assert PATH_CANARY not in done.stdout + done.stderr


def test_notify_test_exits_1_naming_the_url_that_failed(
    make_settings: Callable[..., Settings], chat: ChatReceiver
) -> None:
    chat.fail_next(1)
    settings = make_settings(notify={"urls": [chat.url(PATH_CANARY), chat.url("fine")]})
    done = notify_test(settings)
    assert done.returncode == 1
    assert "[0]" in done.stdout and "FAILED" in done.stdout and "500" in done.stdout
    assert "[1]" in done.stdout and done.stdout.rstrip().endswith("sent")
    assert "1 of 2 URL(s) did not take the test message" in done.stderr
    assert PATH_CANARY not in done.stdout + done.stderr


def test_notify_test_without_urls_or_project_says_so(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    done = notify_test(settings)
    assert done.returncode == 1 and "no notification URLs" in done.stderr
    assert notify_test(settings, "nope").returncode == 2
