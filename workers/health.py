"""The health check after a deployment: poll a URL until it answers 2xx or the time is up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from workers.config import HealthCheck

POLL_INTERVAL = 1.0
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    detail: str  # the last answer or error, for the log and the reason
    attempts: int


def check(
    health: HealthCheck,
    deadline: float,
    on_attempt: Callable[[str], None] = lambda _line: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Verdict:
    """Poll until a 2xx, ``health.timeout`` seconds, the deployment's deadline or a cancel."""
    end = min(time.time() + health.timeout, deadline)
    attempts = 0
    detail = "no answer yet"
    session = requests.Session()
    try:
        while True:
            attempts += 1
            remaining = end - time.time()
            try:
                answer = session.get(
                    health.url, timeout=max(0.5, min(REQUEST_TIMEOUT, remaining)), allow_redirects=False
                )
                detail = f"HTTP {answer.status_code}"
                if 200 <= answer.status_code < 300:
                    on_attempt(f"health check {attempts}: {detail}")
                    return Verdict(True, detail, attempts)
            except requests.RequestException as exc:
                detail = type(exc).__name__
            on_attempt(f"health check {attempts}: {detail}")
            if time.time() + POLL_INTERVAL >= end or should_stop():
                return Verdict(False, detail, attempts)
            time.sleep(POLL_INTERVAL)
    finally:
        session.close()
