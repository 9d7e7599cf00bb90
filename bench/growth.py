"""Scenario "growth": what a long busy life leaves in Redis, and what reading it then costs.

One project with N environments on N branches (each environment deploys its own branch), server
``keep_deployments = K``. Every delivery is a distinct push: the branches move forward commit by
commit, one round of pushes across all environments after another, so latest-wins supersedes most
of them. Once every deployment has ended, every key in the database is counted and sized by kind,
and the operator's reads are timed on that history: the API's list, the ``/`` page and ``/metrics``.
Kept history should stay within a small constant times K per environment however many pushes came.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from redis import Redis
from rq import Queue
from rq.registry import StartedJobRegistry

from bench.deploys import percentile
from bench.plan import Plan
from bench.procs import HarnessError
from bench.repos import Branch, branchy_repo, move
from bench.stack import ADMIN_TOKEN, Stack, project_table, send_round, start_stack
from workers import defaults, schema
from workers.deployments import TERMINAL, State
from workers.outbox import DUE_KEY

PROJECT = "growth-app"
GITLAB_PROJECT = "bench/growth"
SENDERS = 8
SCAN_BATCH = 1000
OPEN = {state.value for state in State if state not in TERMINAL}

KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("deployment records", re.compile(r"pd:dep:[^:]+")),
    ("step lists", re.compile(r"pd:dep:[^:]+:steps")),
    ("log streams", re.compile(r"pd:dep:[^:]+:log")),
    ("status outboxes", re.compile(r"pd:dep:[^:]+:statuses")),
    ("cancel flags", re.compile(r"pd:dep:[^:]+:cancel")),
    ("other per-deployment keys", re.compile(r"pd:dep:.*")),
    ("seen delivery ids", re.compile(r"pd:seen:.*")),
    ("environment keys (history, live, lane)", re.compile(r"pd:env:.*")),
    ("RQ jobs", re.compile(r"rq:job:.*")),
    ("RQ job results", re.compile(r"rq:results:.*")),
    ("RQ job executions", re.compile(r"rq:executions?:.*")),
    ("RQ queues, registries, workers", re.compile(r"rq:.*")),
    ("other pushdeploy keys (outbox, metrics)", re.compile(r"pd:.*")),
)
"""Each key's kind: the first pattern that matches all of it; unmatched keys count as "other"."""


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.fullmatch(name):
            return kind
    return "other"


def environments_table(branches: list[Branch], repo: Path) -> dict[str, Any]:
    table = project_table(
        GITLAB_PROJECT, str(repo), environments={b.name: {"branch": b.name} for b in branches}
    )
    del table["branch"], table["environment"]
    return table


def kept_states(redis: Redis, names: list[str]) -> tuple[Counter[str], list[int]]:
    """States of every deployment still in the histories, and each history's length."""
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.zrange(schema.history(PROJECT, name), 0, -1)
    histories = [[raw.decode() for raw in ids] for ids in pipe.execute()]
    pipe = redis.pipeline(transaction=False)
    for ids in histories:
        for deployment_id in ids:
            pipe.hget(schema.record(deployment_id), "state")
    states = Counter((raw or b"missing").decode() for raw in pipe.execute())
    return states, [len(ids) for ids in histories]


def unfinished(redis: Redis, names: list[str], finals: list[str]) -> str:
    """What still runs, waits or is owed ('' when nothing): the order is the cheapest check first."""
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.hget(schema.live(PROJECT, name), "sha")
    behind = sum((raw or b"").decode() != sha for raw, sha in zip(pipe.execute(), finals, strict=True))
    if behind:
        return f"{behind} environment(s) not yet live on their last commit"
    states, _ = kept_states(redis, names)
    open_states = sum(n for state, n in states.items() if state in OPEN)
    if open_states:
        return f"{open_states} deployment(s) not ended"
    queue = Queue(defaults.DEPLOY_QUEUE, connection=redis)
    jobs = queue.count + StartedJobRegistry(queue=queue).count
    if jobs:
        return f"{jobs} RQ job(s) queued or started"
    owed = redis.zcard(DUE_KEY)
    return f"{owed} deployment(s) with statuses not yet delivered" if owed else ""


def wait_ended(stack: Stack, names: list[str], finals: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while left := unfinished(stack.redis, names, finals):
        if time.monotonic() > deadline:
            raise HarnessError(f"after {timeout:.0f} s: {left}")
        stack.processes.check()
        time.sleep(1.0)


def census(redis: Redis) -> dict[str, dict[str, int]]:
    """Every key of the database by kind: how many, and ``MEMORY USAGE`` (all nested values) summed."""
    found: dict[str, dict[str, int]] = {}
    names = [raw.decode() for raw in redis.scan_iter(count=SCAN_BATCH)]
    for start in range(0, len(names), SCAN_BATCH):
        batch = names[start : start + SCAN_BATCH]
        pipe = redis.pipeline(transaction=False)
        for name in batch:
            pipe.memory_usage(name, samples=0)
        for name, size in zip(batch, pipe.execute(), strict=True):
            tally = found.setdefault(kind_of(name), {"keys": 0, "bytes": 0})
            tally["keys"] += 1
            tally["bytes"] += int(size or 0)  # a key that expired meanwhile counts as 0 bytes
    return found


def timed_gets(
    session: requests.Session, urls: list[str], headers: dict[str, str] | None = None
) -> list[float]:
    """Each GET's time in ms, one after another; anything but 200 is a harness failure."""
    times = []
    for url in urls:
        started = time.perf_counter()
        answer = session.get(url, headers=headers, timeout=120, allow_redirects=False)
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise HarnessError(f"GET {url} answered {answer.status_code}")
    return times


def summary(times: list[float]) -> dict[str, Any]:
    return {
        "requests": len(times),
        "median_ms": round(statistics.median(times), 2),
        "p99_ms": round(percentile(times, 0.99), 2),
        "max_ms": round(max(times), 2),
    }


def operator_reads(stack: Stack, plan: Plan, names: list[str]) -> dict[str, Any]:
    """The API's list (one environment, then all), ``/`` signed in, and ``/metrics``, each timed."""
    base = stack.base_url
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    one = [
        f"{base}/api/v1/deployments?project={PROJECT}&environment={names[i % len(names)]}&limit=50"
        for i in range(plan.growth_api_requests)
    ]
    every = [f"{base}/api/v1/deployments?limit=50"] * max(1, plan.growth_api_requests // 10)
    with requests.Session() as api, requests.Session() as operator, requests.Session() as prometheus:
        api_one = timed_gets(api, one, bearer)
        api_all = timed_gets(api, every, bearer)
        form = operator.get(f"{base}/login/admin", timeout=30).text  # the form's CSRF token, as a browser
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        signed_in = operator.post(
            f"{base}/login/admin",
            data={"token": ADMIN_TOKEN, "next": "/", "csrf_token": token.group(1) if token else ""},
            allow_redirects=False,
            timeout=30,
        )
        if signed_in.status_code != 302 or not operator.cookies:
            raise HarnessError(f"signing in answered {signed_in.status_code}, no session")
        page = timed_gets(operator, [f"{base}/"] * plan.growth_page_requests)
        scrapes = timed_gets(prometheus, [f"{base}/metrics"] * plan.growth_scrapes)
        size = len(prometheus.get(f"{base}/metrics", timeout=120).content)
    return {
        "api_list_environment": summary(api_one),
        "api_list_all": summary(api_all),
        "overview_page": summary(page),
        "metrics_scrape": {**summary(scrapes), "bytes": size},
    }


def per_environment(kinds: dict[str, dict[str, int]], environments: int) -> dict[str, dict[str, float]]:
    """Each kind's keys and bytes divided by the environments, in :data:`KINDS`' order."""
    order = [kind for kind, _ in KINDS] + ["other"]
    return {
        kind: {
            "keys": round(kinds[kind]["keys"] / environments, 1),
            "bytes": round(kinds[kind]["bytes"] / environments),
        }
        for kind in order
        if kind in kinds
    }


def run(plan: Plan, workdir: Path, redis: Redis, redis_url: str) -> dict[str, Any]:
    names = [f"env-{n:03d}" for n in range(plan.growth_environments)]
    per_branch = plan.growth_deliveries // len(names)
    repo = workdir / "remote.git"
    _root, branches = branchy_repo(repo, files=10, branches=names, per_branch=per_branch)
    memory_before = int(redis.info("memory")["used_memory"])
    with (
        start_stack(
            workdir,
            redis,
            redis_url,
            {PROJECT: environments_table(branches, repo)},
            {GITLAB_PROJECT: 42},
            plan.gunicorn_workers,
            plan.growth_workers,
            server={"keep_deployments": plan.growth_keep},
        ) as stack,
        ThreadPoolExecutor(SENDERS) as pool,
    ):
        sessions = threading.local()
        started = time.perf_counter()
        # The first deployment alone clones the project's mirror, as in the burst scenario.
        first = branches[0].commits[0]
        move(repo, {names[0]: first})
        sent = send_round(stack, pool, sessions, PROJECT, GITLAB_PROJECT, [(names[0], first)])
        wait_ended(stack, names[:1], [first], plan.growth_timeout)
        for index in range(per_branch):
            heads = {b.name: b.commits[index] for b in branches if (b.name, index) != (names[0], 0)}
            move(repo, heads)
            sent += send_round(stack, pool, sessions, PROJECT, GITLAB_PROJECT, list(heads.items()))
        all_sent = time.perf_counter()
        wait_ended(stack, names, [b.commits[-1] for b in branches], plan.growth_timeout)
        ended = time.perf_counter()
        time.sleep(1.0)  # the last work-horses exit and RQ notes their jobs
        states, lengths = kept_states(redis, names)
        kinds = census(redis)
        memory_after = int(redis.info("memory")["used_memory"])
        reads = operator_reads(stack, plan, names)
    answers = Counter(str(s.status) for s in sent)
    if set(answers) != {"202"}:
        raise HarnessError(f"not every delivery was accepted: {dict(answers)}")
    total_keys = sum(t["keys"] for t in kinds.values())
    total_bytes = sum(t["bytes"] for t in kinds.values())
    return {
        "environments": len(names),
        "project_layout": "one project, each environment on its own branch",
        "deliveries": len(sent),
        "keep_deployments": plan.growth_keep,
        "workers": plan.growth_workers,
        "senders": SENDERS,
        "answers": dict(answers),
        "send_s": round(all_sent - started, 1),
        "all_ended_s": round(ended - started, 1),
        "kept_states": dict(states),
        "history_length": {"max": max(lengths), "mean": round(sum(lengths) / len(lengths), 1)},
        "keys_total": total_keys,
        "keys_per_environment": round(total_keys / len(names), 1),
        "memory_usage_bytes_total": total_bytes,
        "memory_usage_bytes_per_environment": round(total_bytes / len(names)),
        "used_memory_delta_per_environment": round((memory_after - memory_before) / len(names)),
        "kinds": kinds,
        "kinds_per_environment": per_environment(kinds, len(names)),
        **reads,
    }
