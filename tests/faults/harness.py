"""Helpers shared by the fault tests: the profile, deliveries, waiting on Redis, and the figures.

The profile comes from ``PUSHDEPLOY_FAULT_PROFILE``: ``short`` (the default, a few minutes, run by
CI with the rest of the suite) or ``long`` (the counts the issue asks for: 20 kills of each kind, …).
Every test writes its figures to ``test-artifacts/faults/<name>.json`` and prints them on one line.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, TypeVar

import requests
from redis import Redis

from tests.e2e.conftest import ROOT, Stack
from tests.helpers import ADMIN_TOKEN, push_body, signed_headers

T = TypeVar("T")

PROFILE = os.environ.get("PUSHDEPLOY_FAULT_PROFILE", "short").strip().lower() or "short"
if PROFILE not in ("short", "long"):
    raise RuntimeError(f"PUSHDEPLOY_FAULT_PROFILE must be short or long, not {PROFILE!r}")
LONG = PROFILE == "long"

ARTIFACTS = ROOT / "test-artifacts" / "faults"
TERMINAL = ("succeeded", "failed", "canceled")
TERMINAL_STATUSES = ("success", "failed", "canceled", "skipped")


def scaled(short: T, long: T) -> T:
    """The value for the running profile."""
    return long if LONG else short


def record_figures(name: str, figures: dict[str, Any]) -> Path:
    """Write ``figures`` to test-artifacts/faults/NAME.json and print them on one line (see ``-s``)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = {"test": name, "profile": PROFILE, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data.update(figures)
    path = ARTIFACTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    shown = " ".join(f"{k}={_short(v)}" for k, v in figures.items() if not isinstance(v, list | dict))
    print(f"\nFAULTS {name} [{PROFILE}]: {shown}", flush=True)
    return path


def _short(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def deliver(
    stack: Stack,
    sha: str,
    branch: str = "main",
    project: str = "sample-app",
    timeout: float = 5,
    **body: Any,
) -> requests.Response:
    """POST one signed push delivery to the stack's webhook."""
    payload = push_body(sha, branch=branch, **body)
    return requests.post(
        f"{stack.base_url}/hooks/gitlab/{project}",
        data=payload,
        headers=signed_headers(payload),
        timeout=timeout,
    )


def push(stack: Stack, sha: str, branch: str = "main") -> str:
    """Deliver a push and return the deployment id of its 202."""
    answer = deliver(stack, sha, branch)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["deployment"])


def api(stack: Stack, method: str, path: str, timeout: float = 10, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kwargs.pop("headers", {})}
    url = f"{stack.base_url}/api/v1{path}"
    return requests.request(method, url, headers=headers, timeout=timeout, **kwargs)


def record(redis: Redis, deployment_id: str) -> dict[str, str]:
    raw = redis.hgetall(f"pd:dep:{deployment_id}")
    return {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}


def state(redis: Redis, deployment_id: str) -> str:
    value = redis.hget(f"pd:dep:{deployment_id}", "state")
    return value.decode() if value else ""


def wait_state(
    redis: Redis, deployment_id: str, wanted: tuple[str, ...], timeout: float, stack: Stack | None = None
) -> str:
    """Poll the record until its state is one of ``wanted``; returns it (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = state(redis, deployment_id)
        if current in wanted:
            return current
        if stack is not None:
            stack.assert_running()
        time.sleep(0.1)
    now = state(redis, deployment_id)
    raise AssertionError(f"{deployment_id} still {now!r} after {timeout} s, not one of {wanted}")


def status_states(stack: Stack, sha: str, name: str) -> list[str]:
    return [s["state"] for s in stack.gitlab.statuses(sha=sha, name=name)]


def status_problems(states: list[str], expected_terminal: str | None = None) -> list[str]:
    """What is wrong with one commit's statuses for one name: order, repeats, a missing end."""
    problems = []
    terminal = [s for s in states if s in TERMINAL_STATUSES]
    if len(terminal) != 1:
        problems.append(f"{len(terminal)} terminal statuses")
    if len(set(states)) != len(states):
        problems.append("a state posted twice")
    order = ["pending", "running", *TERMINAL_STATUSES]
    positions = [order.index(s) if s in order else -1 for s in states]
    if positions != sorted(positions) or -1 in positions:
        problems.append("out of order")
    if expected_terminal and terminal and terminal[-1] != expected_terminal:
        problems.append(f"ended {terminal[-1]}, not {expected_terminal}")
    return [f"{p} ({states})" for p in problems]


def new_key() -> str:
    return str(uuid.uuid4())
