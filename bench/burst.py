"""Scenario "burst": many deliveries for many environments at once; how soon is everything live?

One project with N environments on N branches (each environment deploys its own branch). After
every environment is live once (warm mirror, releases in place), the branches move forward
commit by commit: each round pushes the next commit of every branch at once, in parallel across
environments and in order within one, as GitLab would deliver a burst of pushes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from redis import Redis

from bench.plan import Plan
from bench.procs import HarnessError
from bench.repos import Branch, branchy_repo, move
from bench.stack import Sent, Stack, project_table, send_round, start_stack
from workers import schema
from workers.deployments import TERMINAL, State

PROJECT = "burst-app"
GITLAB_PROJECT = "bench/burst"
SENDERS = 8


def environments_config(branches: list[Branch]) -> dict[str, Any]:
    table = project_table(GITLAB_PROJECT, "", environments={b.name: {"branch": b.name} for b in branches})
    del table["branch"], table["environment"]
    return table


def live_shas(redis: Redis, names: list[str]) -> list[str]:
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.hget(schema.live(PROJECT, name), "sha")
    return [(raw or b"").decode() for raw in pipe.execute()]


def wait_live(stack: Stack, names: list[str], wanted: list[str], timeout: float, since: float) -> float:
    """Poll the live records until each environment serves its wanted sha; returns when (perf_counter).

    A failed deployment would leave its environment behind for good: that ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        if live_shas(stack.redis, names) == wanted:
            return time.perf_counter()
        if time.monotonic() > deadline:
            behind = sum(a != b for a, b in zip(live_shas(stack.redis, names), wanted, strict=True))
            raise HarnessError(f"{behind} of {len(names)} environments not live after {timeout:.0f} s")
        stack.processes.check()
        with stack.gitlab.arrived:  # statuses at GitLab: no extra load on Redis while timing
            failed = any(state == "failed" for _, state in stack.gitlab.arrivals)
        if failed:
            reasons = [
                r.get("reason", "")
                for items in deployments_since(stack.redis, names, since).values()
                for r in items
                if r.get("state") == State.FAILED
            ]
            raise HarnessError(f"{len(reasons)} deployment(s) failed, e.g.: {(reasons or [''])[0][:300]}")
        time.sleep(0.02)


def deployments_since(redis: Redis, names: list[str], since: float) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for name in names:
        ids = [raw.decode() for raw in redis.zrangebyscore(schema.history(PROJECT, name), since, "+inf")]
        pipe = redis.pipeline(transaction=False)
        for deployment_id in ids:
            pipe.hgetall(schema.record(deployment_id))
        found[name] = [{k.decode(): v.decode() for k, v in raw.items()} for raw in pipe.execute()]
    return found


def run(plan: Plan, workdir: Path, redis: Redis, redis_url: str) -> dict[str, Any]:
    names = [f"env-{n:02d}" for n in range(plan.burst_environments)]
    per_branch = plan.burst_deliveries // len(names)
    repo = workdir / "remote.git"
    root, branches = branchy_repo(repo, files=10, branches=names, per_branch=per_branch)
    table = environments_config(branches)
    table["repo_url"] = str(repo)
    with (
        start_stack(
            workdir,
            redis,
            redis_url,
            {PROJECT: table},
            {GITLAB_PROJECT: 42},
            plan.gunicorn_workers,
            plan.burst_workers,
        ) as stack,
        ThreadPoolExecutor(SENDERS) as pool,
    ):
        sessions = threading.local()
        warm_started = time.perf_counter()
        # The first deployment alone clones the project's mirror; then all the others.
        warm = send_round(stack, pool, sessions, PROJECT, GITLAB_PROJECT, [(names[0], root)])
        wait_live(stack, names[:1], [root], plan.burst_timeout, 0)
        warm += send_round(
            stack, pool, sessions, PROJECT, GITLAB_PROJECT, [(name, root) for name in names[1:]]
        )
        wait_live(stack, names, [root] * len(names), plan.burst_timeout, 0)
        warm_seconds = time.perf_counter() - warm_started
        time.sleep(1.0)  # let the warm-up's last statuses and work-horses finish
        since = time.time()
        meter = stack.meter()
        meter.start()
        started = time.perf_counter()
        sent: list[Sent] = []
        for round_index in range(per_branch):
            heads = {b.name: b.commits[round_index] for b in branches}
            move(repo, heads)
            sent += send_round(stack, pool, sessions, PROJECT, GITLAB_PROJECT, list(heads.items()))
        all_sent = time.perf_counter()
        finals = [b.commits[-1] for b in branches]
        live_at = wait_live(stack, names, finals, plan.burst_timeout, since)
        cpu = meter.stop()
        reported = [
            stack.gitlab.wait_status(sha, "success", plan.burst_timeout, stack.processes) for sha in finals
        ]
        records = settle(stack, names, since, plan.burst_timeout)
    ran = {
        name: sum(1 for r in items if float(r.get("started_at") or 0) > 0) for name, items in records.items()
    }
    states = Counter(r["state"] for items in records.values() for r in items)
    return {
        "environments": len(names),
        "deliveries": len(sent),
        "workers": plan.burst_workers,
        "senders": SENDERS,
        "answers": dict(Counter(str(s.status) for s in sent)),
        "warmup_s": round(warm_seconds, 2),
        "warmup_answers": dict(Counter(str(s.status) for s in warm)),
        "send_s": round(all_sent - started, 3),
        "all_live_s": round(live_at - started, 3),
        "all_success_reported_s": round(max(reported) - started, 3),
        "deployments_recorded": sum(len(items) for items in records.values()),
        "deployments_ran": sum(ran.values()),
        "max_ran_per_environment": max(ran.values()),
        "ran_per_environment": dict(Counter(ran.values())),
        "states": dict(states),
        "cpu_share": {"ours": cpu.ours, "foreign": cpu.foreign},
    }


def settle(stack: Stack, names: list[str], since: float, timeout: float) -> dict[str, list[dict[str, str]]]:
    """Wait until every deployment of the burst has ended (superseded ones included)."""
    deadline = time.monotonic() + timeout
    while True:
        records = deployments_since(stack.redis, names, since)
        if all(State(r["state"]) in TERMINAL for items in records.values() for r in items):
            return records
        if time.monotonic() > deadline:
            raise HarnessError("some deployments of the burst never ended")
        stack.processes.check()
        time.sleep(0.1)
