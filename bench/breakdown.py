"""Scenario "accept_breakdown": what each stage of accepting one delivery costs, in this process.

The wrk figures say how fast the whole path is; these say where the time goes, so a change to
the accept path can be aimed and checked. Each stage runs the product's own function on the
same 7 KB delivery against the benchmark's Redis; figures are microseconds per call (the median
of several batches).
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis

from bench import bare_app
from bench.payloads import SIGNING_TOKEN, delivery_headers, push_body
from bench.plan import Plan
from bench.stack import project_table, write_stack_config
from webhook import events
from webhook.app import create_app
from webhook.verify import verify_signature, verify_token
from workers.config import load
from workers.connection import web_redis
from workers.deployments import Deployment, new_id
from workers.intake import Intake, Push

NOTE = ("in-process (werkzeug's test client, no gunicorn; pushdeploy's hook is answered by its WSGI "
        "endpoint in front of Flask, the bare app by Flask); the request figures exclude signing")

PROJECT = "bench-app"
GITLAB_PROJECT = "bench/accept"
SHA = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"


def per_call_us(call: Callable[[], object], calls: int, batches: int = 5) -> float:
    """The best of ``batches`` mean times of one call, in microseconds (noise only ever adds)."""
    results = []
    for _ in range(batches):
        started = time.perf_counter_ns()
        for _ in range(calls):
            call()
        results.append((time.perf_counter_ns() - started) / calls / 1000)
    return round(min(results), 1)


def run(plan: Plan, workdir: Path, bench_redis: Redis, redis_url: str) -> dict[str, Any]:
    calls = plan.breakdown_calls
    config = write_stack_config(workdir, redis_url, 8000,
                                {PROJECT: project_table(GITLAB_PROJECT, str(workdir / "unused.git"))}, None)
    settings = load(config, environ={})
    project = settings.projects[PROJECT]
    environment = project.environments["production"]
    redis = web_redis(redis_url)
    intake = Intake(redis, settings.server.public_url)
    body = push_body(SHA, "main", GITLAB_PROJECT)
    headers = delivery_headers(body)
    payload = events.parse(body)
    now = time.time()

    def classify() -> object:
        events.check_project(payload, project)
        return events.classify(headers, payload, project, events.delivery_key(headers))

    def accept() -> object:
        push = Push(ref="refs/heads/main", sha=SHA, pusher="bench", delivery_key=uuid.uuid4().hex)
        return intake.accept(project, environment, push)

    def build_transaction() -> None:
        # What Intake.enqueue puts on its pipeline, without sending it: the CPU side of the round trip.
        deployment = Deployment(id=new_id(), project=PROJECT, environment="production", ref="refs/heads/main",
                                sha=SHA, pusher="bench", delivery_id=uuid.uuid4().hex)
        with redis.pipeline() as pipe:
            pipe.multi()
            intake.add(pipe, project, environment, deployment, deployment.delivery_id, deployment.id)
            pipe.reset()

    # No journal drainer thread in this process: it would outlive the measurement.
    extra = {"drain": False} if "drain" in inspect.signature(create_app).parameters else {}
    app = create_app(settings, redis, **extra)
    client = app.test_client()
    bare_client = bare_app.create_app(SIGNING_TOKEN).test_client()

    def full_request(target: Any, path: str) -> Callable[[], object]:
        def call() -> object:
            answer = target.post(path, data=body, headers=delivery_headers(body))
            if answer.status_code != 202:
                raise RuntimeError(f"{path} answered {answer.status_code}")
            return answer
        return call

    sign_cost = per_call_us(lambda: delivery_headers(body), calls)
    stages = {
        "hmac_verify": per_call_us(lambda: verify_signature(headers, body, project.signing_keys, now), calls),
        "token_check": per_call_us(lambda: verify_token(headers, project.secret_tokens), calls),
        "json_loads_plain": per_call_us(lambda: json.loads(body), calls),
        "strict_parse": per_call_us(lambda: events.parse(body), calls),
        "project_check_and_classify": per_call_us(classify, calls),
        "redis_round_trip": per_call_us(redis.ping, calls),
        "build_transaction_unsent": per_call_us(build_transaction, calls),
        "intake_accept": per_call_us(accept, calls),
        "pushdeploy_request": round(per_call_us(full_request(client, f"/hooks/gitlab/{PROJECT}"), calls)
                                          - sign_cost, 1),
        "bare_flask_request": round(per_call_us(full_request(bare_client, f"/hooks/gitlab/{PROJECT}"), calls)
                                    - sign_cost, 1),
    }
    redis.close()
    bench_redis.flushdb()
    return {"calls_per_batch": calls, "unit": "µs per call", "stages_us": stages,
            "note": NOTE}

