"""Redis goes away: restarted (SIGTERM, AOF on) while deployments run, and stopped while deliveries
arrive. Each test runs its own private redis-server in a temporary directory, never the shared one.

Must hold: deployments running through restarts still end and their statuses still arrive; while
Redis is down each verified delivery is answered 202 with a deployment id (journaled on disk), or
503 with ``on_redis_down = "503"``; once Redis is back every journaled id exists within 30 s, and no
delivery key produced two deployments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from redis import Redis
from redis.exceptions import RedisError

from tests.e2e.conftest import Stack, free_port
from tests.faults.harness import (
    TERMINAL,
    TERMINAL_STATUSES,
    new_key,
    push,
    record_figures,
    scaled,
    status_problems,
    status_states,
)
from tests.helpers import GitRepo, project_config, push_body, signed_headers
from webhook.launcher import redis_server_argv, redis_server_binary

pytestmark = [pytest.mark.fault, pytest.mark.e2e]

RESTARTS = scaled(2, 8)
DELIVERIES = 100
RESENT = 10


@dataclass
class PrivateRedis:
    """A redis-server of our own, with AOF, on a free loopback port; restartable on the same data."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary, _source = redis_server_binary()
        self.process = subprocess.Popen(
            redis_server_argv(binary, self.port, self.directory),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.answers():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"private redis-server did not start: {(self.directory / 'redis.log').read_text()}"
        )

    def answers(self) -> bool:
        try:
            with Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=0.5) as client:
                return bool(client.ping())
        except (RedisError, OSError):
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """Request it before ``fault_stack``: torn down after the stack, so workers stop against a live Redis."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


def test_deployments_end_and_report_through_redis_restarts(
    private_redis: PrivateRedis, fault_stack: Callable[..., Stack], git_repo: GitRepo
) -> None:
    seed = int(os.environ.get("PUSHDEPLOY_FAULT_SEED") or time.time())
    rng = random.Random(seed)
    names = ["e1", "e2", "e3"]
    stack: Stack = fault_stack(
        redis_url=private_redis.url,
        projects={
            "sample-app": project_config(
                git_repo.url,
                environment=None,
                branch=None,
                build=["sleep 1", "sleep 1"],
                deploy=["sleep 0.5"],
                timeout=120,
                environments={name: {"branch": f"b-{name}"} for name in names},
            )
        },
    )
    stack.start_web()
    stack.start_worker("worker-1")
    stack.start_worker("worker-2")
    client = Redis.from_url(private_redis.url)
    pushed: list[tuple[str, str, str]] = []  # (environment, sha, deployment)
    downtime: list[float] = []
    started = time.monotonic()
    for round_ in range(RESTARTS):
        for name in names:
            sha = git_repo.commit({"app.txt": f"{name} {round_}\n"}, f"{name} {round_}", branch=f"b-{name}")
            pushed.append((name, sha, push(stack, sha, f"b-{name}")))
        time.sleep(rng.uniform(0.5, 2.5))  # somewhere in fetch, build or deploy
        down = time.monotonic()
        private_redis.stop(signal.SIGTERM)
        time.sleep(rng.uniform(0.5, 3.0))
        private_redis.start()
        downtime.append(time.monotonic() - down)
        time.sleep(rng.uniform(0.5, 4.0))

    states: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(states) < len(pushed):
        for _name, _sha, deployment in pushed:
            value = client.hget(f"pd:dep:{deployment}", "state")
            if value and value.decode() in TERMINAL:
                states[deployment] = value.decode()
        stack.assert_running()
        time.sleep(0.25)
    ended_in = time.monotonic() - started

    def arrived() -> bool:
        return all(
            any(s in TERMINAL_STATUSES for s in status_states(stack, sha, f"deploy/{name}"))
            for name, sha, _d in pushed
        )

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not arrived():
        time.sleep(0.25)
    time.sleep(2)
    expected = {"succeeded": "success", "failed": "failed", "canceled": "canceled"}
    problems = {
        deployment: status_problems(
            status_states(stack, sha, f"deploy/{name}"), expected.get(states.get(deployment, ""))
        )
        for name, sha, deployment in pushed
    }
    problems = {d: p for d, p in problems.items() if p}
    lost = sum(
        1
        for name, sha, _d in pushed
        if not any(s in TERMINAL_STATUSES for s in status_states(stack, sha, f"deploy/{name}"))
    )
    record_figures(
        "redis_restarts",
        {
            "seed": seed,
            "faults_injected": len(downtime),
            "max_downtime_s": round(max(downtime), 2),
            "deployments": len(pushed),
            "not_terminal": len(pushed) - len(states),
            "succeeded": sum(1 for s in states.values() if s == "succeeded"),
            "failed": sum(1 for s in states.values() if s == "failed"),
            "canceled": sum(1 for s in states.values() if s == "canceled"),
            "statuses_lost": lost,
            "status_errors": len(problems),
            "all_ended_s": round(ended_in, 1),
            "problems": problems,
            "not_succeeded": {
                d: (client.hget(f"pd:dep:{d}", "reason") or b"").decode()
                for d, s in states.items()
                if s != "succeeded"
            },
        },
    )
    for deployment, ended in states.items():
        if ended == "failed":
            print(f"\n{deployment} failed; its log:")
            for _id, fields in client.xrange(f"pd:dep:{deployment}:log"):
                print("   ", fields.get(b"t", b"").decode("utf-8", "replace"))
            print(stack.log_text()[-8000:])
    assert len(states) == len(pushed), f"not terminal: {set(d for *_x, d in pushed) - set(states)}"
    assert lost == 0 and not problems, problems
    assert set(states.values()) <= {"succeeded", "canceled"}, states  # a Redis restart fails nothing
    reasons = {
        d: (client.hget(f"pd:dep:{d}", "reason") or b"").decode()
        for d, s in states.items()
        if s == "canceled"
    }
    assert all(r.startswith("superseded by") for r in reasons.values()), reasons  # only by a newer push


@pytest.mark.parametrize("on_redis_down", ["journal", "503"])
def test_deliveries_while_redis_is_down_are_all_accounted_for_once(
    private_redis: PrivateRedis, fault_stack: Callable[..., Stack], git_repo: GitRepo, on_redis_down: str
) -> None:
    stack: Stack = fault_stack(
        redis_url=private_redis.url, server={"on_redis_down": on_redis_down}, build=[], deploy=["true"]
    )
    stack.start_web()
    stack.start_worker()
    client = Redis.from_url(private_redis.url)
    sha = git_repo.commit({"app.txt": "while down\n"}, "while down")
    assert requests.get(f"{stack.base_url}/healthz", timeout=5).status_code == 200

    private_redis.stop(signal.SIGTERM)
    keys = [new_key() for _ in range(DELIVERIES)]
    answers: list[tuple[str, int, dict[str, object], float]] = []
    session = requests.Session()
    for key in keys + keys[:RESENT]:  # GitLab's manual "resend" of ten of them, still during the outage
        body = push_body(sha)
        began = time.monotonic()
        answer = session.post(
            f"{stack.base_url}/hooks/gitlab/sample-app",
            data=body,
            headers=signed_headers(body, delivery=key),
            timeout=10,
        )
        took = time.monotonic() - began
        answers.append(
            (key, answer.status_code, answer.json() if answer.content.startswith(b"{") else {}, took)
        )
    restarted = time.monotonic()
    private_redis.start()

    first_ids = {key: str(body.get("deployment", "")) for key, _s, body, _t in answers[:DELIVERIES]}
    codes = sorted({status for _k, status, _b, _t in answers})
    slowest = max(took for *_x, took in answers)
    found: set[str] = set()
    deadline = restarted + 30
    while time.monotonic() < deadline and on_redis_down == "journal" and len(found) < DELIVERIES:
        found = {d for d in first_ids.values() if d and client.exists(f"pd:dep:{d}")}
        time.sleep(0.25)
    drained_in = time.monotonic() - restarted
    time.sleep(3)  # a second drain, or a second web process's drainer, would add duplicates now
    by_key: dict[str, list[str]] = {}
    for raw in client.scan_iter("pd:dep:*", count=1000):
        name = raw.decode()
        if name.count(":") != 2:
            continue  # :steps, :log, :statuses ...
        delivery = (client.hget(name, "delivery_id") or b"").decode()
        by_key.setdefault(delivery, []).append(name.rsplit(":", 1)[1])
    twice = {key: ids for key, ids in by_key.items() if len(ids) > 1}
    ended = {d: (client.hget(f"pd:dep:{d}", "state") or b"").decode() for d in found}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(s in TERMINAL for s in ended.values()):
        time.sleep(0.5)
        ended = {d: (client.hget(f"pd:dep:{d}", "state") or b"").decode() for d in found}
    record_figures(
        f"redis_down_{on_redis_down}",
        {
            "deliveries": len(answers),
            "distinct_deliveries": DELIVERIES,
            "answer_codes": ",".join(map(str, codes)),
            "slowest_answer_s": round(slowest, 3),
            "accounted_for": len(found),
            "lost": DELIVERIES - len(found) if on_redis_down == "journal" else 0,
            "deployed_twice": len(twice),
            "drained_in_s": round(drained_in, 1),
            "not_terminal": sum(1 for s in ended.values() if s not in TERMINAL),
        },
    )
    assert slowest < 1.0, f"an answer took {slowest:.2f} s while Redis was down"
    if on_redis_down == "503":
        assert codes == [503], codes
        assert not by_key, f"deployments appeared for deliveries answered 503: {by_key}"
        assert not (stack.data_dir / "journal").exists() or not any((stack.data_dir / "journal").iterdir())
        return
    assert codes == [202], [(k, s, b) for k, s, b, _t in answers if s != 202][:5]
    assert all(first_ids.values()), "a 202 without a deployment id"
    assert len(found) == DELIVERIES, f"{DELIVERIES - len(found)} journaled deliveries missing after 30 s"
    assert not twice, f"a delivery key produced two deployments: {twice}"
    assert set(by_key) == set(keys), "deployments whose delivery key was never sent, or keys without one"
    assert all(s in TERMINAL for s in ended.values()), ended
