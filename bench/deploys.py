"""Scenarios "push_to_running" and "overhead": sequential pushes through the whole stack.

Each push moves the branch in the remote to a commit the mirror has not seen (so every deployment
fetches incrementally, as after a real push), sends GitLab's delivery, and waits for the
``running`` and ``success`` statuses to reach the fake GitLab before the next push.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from redis import Redis

from bench.plan import Plan, RepoShape
from bench.procs import HarnessError
from bench.repos import linear_repo, move
from bench.stack import Stack, project_table, start_stack
from workers import schema

WAIT = 120.0


def deploy_once(stack: Stack, project: str, gitlab_project: str, repo: Path, sha: str) -> dict[str, float]:
    """Push ``sha`` to main and follow it to ``success``; milliseconds from the delivery's sending."""
    move(repo, {"main": sha})
    sent = stack.push(project, gitlab_project, "main", sha)
    if sent.status != 202:
        raise HarnessError(f"push of {sha[:12]} answered {sent.status}, not 202")
    pending = stack.gitlab.wait_status(sha, "pending", WAIT, stack.processes)
    running = stack.gitlab.wait_status(sha, "running", WAIT, stack.processes)
    success = stack.gitlab.wait_status(sha, "success", WAIT, stack.processes)
    record = {k.decode(): v.decode() for k, v in stack.redis.hgetall(schema.record(sent.deployment)).items()}
    return {
        "accept_ms": ms(sent.answered - sent.sent),
        "pending_ms": ms(pending - sent.sent),
        # When the worker's job marked the deployment running (before it queued the status).
        "started_ms": ms(float(record["started_at"]) - sent.sent_wall),
        "running_ms": ms(running - sent.sent),
        "success_ms": ms(success - sent.sent),
        # The worker's own view: record created (at accept) to finished, without the status courier.
        "engine_ms": ms(float(record["finished_at"]) - float(record["created_at"])),
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: with 100 samples, p99 is the second-slowest."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def run_push_to_running(plan: Plan, workdir: Path, redis: Redis, redis_url: str) -> dict[str, Any]:
    repo = workdir / "remote.git"
    base, pushes = linear_repo(repo, files=10, depth=10, extra=plan.pushes)
    projects = {"latency-app": project_table("bench/latency", str(repo))}
    gitlab_projects = {"bench/latency": 42}
    with start_stack(workdir, redis, redis_url, projects, gitlab_projects, plan.gunicorn_workers, 1) as stack:
        cold = deploy_once(stack, "latency-app", "bench/latency", repo, base)
        samples = []
        meter = stack.meter()
        meter.start()
        for sha in pushes:
            time.sleep(plan.settle)
            samples.append(deploy_once(stack, "latency-app", "bench/latency", repo, sha))
        cpu = meter.stop()
    running = [s["running_ms"] for s in samples]
    return {
        "pushes": len(samples),
        "workers": 1,
        "repository": "10 files, 10 commits of history",
        "running_median_ms": round(statistics.median(running), 2),
        "running_p99_ms": percentile(running, 0.99),
        "accept_median_ms": round(statistics.median(s["accept_ms"] for s in samples), 2),
        "pending_median_ms": round(statistics.median(s["pending_ms"] for s in samples), 2),
        "started_median_ms": round(statistics.median(s["started_ms"] for s in samples), 2),
        "success_median_ms": round(statistics.median(s["success_ms"] for s in samples), 2),
        "cold_first_deployment": cold,
        "cpu_share": {"ours": cpu.ours, "foreign": cpu.foreign},
        "samples": samples,
    }


def run_overhead(plan: Plan, workdir: Path, redis: Redis, redis_url: str) -> dict[str, Any]:
    repos: dict[str, tuple[RepoShape, Path, str, list[str]]] = {}
    for number, shape in enumerate(plan.overhead_shapes):
        repo = workdir / f"repo-{number}.git"
        started = time.monotonic()
        base, pushes = linear_repo(repo, files=shape.files, depth=shape.depth, extra=plan.overhead_pushes)
        print(f"  overhead: made {shape.label} in {time.monotonic() - started:.1f} s", flush=True)
        repos[f"repo-{number}"] = (shape, repo, base, pushes)
    projects = {name: project_table(f"bench/{name}", str(repo)) for name, (_, repo, _, _) in repos.items()}
    gitlab_projects = {f"bench/{name}": 100 + n for n, name in enumerate(repos)}
    shapes: list[dict[str, Any]] = []
    with start_stack(workdir, redis, redis_url, projects, gitlab_projects, plan.gunicorn_workers, 1) as stack:
        meter = stack.meter()
        meter.start()
        for name, (shape, repo, base, pushes) in repos.items():
            cold = deploy_once(stack, name, f"bench/{name}", repo, base)  # clones the mirror: now warm
            samples = []
            for sha in pushes:
                time.sleep(plan.settle)
                samples.append(deploy_once(stack, name, f"bench/{name}", repo, sha))
            median = statistics.median(s["success_ms"] for s in samples)
            shapes.append(
                {
                    "label": shape.label,
                    "files": shape.files,
                    "depth": shape.depth,
                    "success_median_ms": round(median, 2),
                    "engine_median_ms": round(statistics.median(s["engine_ms"] for s in samples), 2),
                    "cold_success_ms": cold["success_ms"],
                    "samples": samples,
                }
            )
            print(f"  overhead {shape.label}: push → success median {median:.0f} ms", flush=True)
        cpu = meter.stop()
    baseline = shapes[0]["success_median_ms"]
    for shape_result in shapes:
        shape_result["added_ms"] = round(shape_result["success_median_ms"] - baseline, 2)
    return {
        "pushes_per_shape": plan.overhead_pushes,
        "workers": 1,
        "build": "true",
        "deploy": "true",
        "noop_median_ms": baseline,
        "cpu_share": {"ours": cpu.ours, "foreign": cpu.foreign},
        "shapes": shapes,
    }
