"""SIGKILL a worker (and its work-horse) mid-deployment, and a work-horse alone, again and again.

Two workers run; a killed worker is replaced at once, so two are always alive and the survivor's
RQ maintenance collects the dead one's job. Each fault hits a deployment of its own environment
(one lane each), so the slow dead-worker detection (about 90 s) of one fault overlaps the next.

Must hold, for every fault: the deployment is terminal within 2 minutes of the kill, GitLab gets
exactly one terminal status for it (in order, nothing twice), no process of any step's group
survives, the environment's lane is free again, and ``current`` always names a complete release
(one whose last build step wrote its marker), checked continuously while the faults happen.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from rq import Worker

from tests.e2e.conftest import Stack
from tests.e2e.processes import children, cmdline_of, group_members, strays
from tests.faults.harness import (
    TERMINAL,
    TERMINAL_STATUSES,
    push,
    record,
    record_figures,
    scaled,
    state,
    status_problems,
    status_states,
    wait_state,
)
from tests.helpers import GitRepo, project_config

pytestmark = [pytest.mark.fault, pytest.mark.e2e]

KILLS_PER_KIND = scaled(2, 20)
RECOVERY_LIMIT = 120.0
MARKER = ".release-complete"
STEP = "echo $$ >> ../../step-pgids; "
BUILD = [STEP + "sleep 1.5", STEP + f"sleep 1.5; echo complete > {MARKER}"]
DEPLOY = [STEP + "sleep 1.5"]
KILL_WINDOW = (0.05, 4.2)
"""Seconds after the deployment starts running: fetch, export, both build steps, switch, deploy."""


@dataclass
class Fault:
    kind: str  # "worker" (the worker and its horse) or "horse" (the work-horse alone)
    environment: str
    branch: str
    sha: str
    deployment: str
    delay: float
    killed_at: float = 0.0
    pids: tuple[int, ...] = ()
    missed: bool = False  # the deployment had already ended when the kill came


class CurrentWatcher(threading.Thread):
    """Samples every environment's ``current`` until stopped: it must always name a complete release."""

    def __init__(self, roots: list[Path]) -> None:
        super().__init__(name="current-watcher", daemon=True)
        self.roots = roots
        self.samples = 0
        self.bad: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            for root in self.roots:
                link = root / "current"
                try:
                    target = os.readlink(link)
                except FileNotFoundError:
                    continue  # before the environment's first deployment
                self.samples += 1
                release = (root / target).resolve()
                if not (release / MARKER).is_file():
                    self.bad.append(f"{link} -> {target} at {time.time():.3f}")


def running_worker(redis: Redis, job_id: str) -> Worker | None:
    for worker in Worker.all(connection=redis):
        if worker.get_current_job_id() == job_id:
            return worker
    return None


def horses(worker_pid: int) -> list[int]:
    return [pid for pid in children(worker_pid) if b"python" in cmdline_of(pid).split(b"\0")[0]]


def test_sigkilled_workers_and_horses_end_each_deployment_once(
    fault_stack: Callable[..., Stack], redis: Redis, git_repo: GitRepo
) -> None:
    seed = int(os.environ.get("PUSHDEPLOY_FAULT_SEED") or time.time())
    rng = random.Random(seed)
    kinds = [kind for _ in range(KILLS_PER_KIND) for kind in ("worker", "horse")]
    names = [f"e{index:02d}" for index in range(len(kinds))]
    stack: Stack = fault_stack(
        projects={
            "sample-app": project_config(
                git_repo.url,
                environment=None,
                branch=None,
                build=BUILD,
                deploy=DEPLOY,
                timeout=120,
                environments={name: {"branch": f"b-{name}"} for name in names},
            )
        }
    )
    repo = git_repo
    roots = [stack.data_dir / "projects" / "sample-app" / name for name in names]
    stack.start_web()
    serial = iter(range(1, 1000))
    for _ in range(2):
        stack.start_worker(f"worker-{next(serial)}")

    # A first, clean deployment per environment, so `current` exists before any fault.
    baseline: dict[str, tuple[str, str]] = {}
    for name in names:
        sha = repo.commit({"app.txt": f"{name} baseline\n"}, f"{name} baseline", branch=f"b-{name}")
        baseline[name] = (sha, push(stack, sha, f"b-{name}"))
    for _sha, deployment in baseline.values():
        assert wait_state(redis, deployment, TERMINAL, 120, stack) == "succeeded", record(redis, deployment)

    watcher = CurrentWatcher(roots)
    watcher.start()
    faults: list[Fault] = []
    started = time.monotonic()
    try:
        for kind, name in zip(kinds, names, strict=True):
            branch = f"b-{name}"
            sha = repo.commit({"app.txt": f"{name} fault\n"}, f"{name} fault", branch=branch)
            fault = Fault(kind, name, branch, sha, push(stack, sha, branch), rng.uniform(*KILL_WINDOW))
            faults.append(fault)
            wait_state(redis, fault.deployment, ("running", *TERMINAL), 60, stack)
            time.sleep(fault.delay)
            worker = running_worker(redis, fault.deployment)
            victims = horses(worker.pid) if worker is not None else []
            if worker is None or not victims or state(redis, fault.deployment) != "running":
                fault.missed = True
                continue
            if kind == "worker":
                victims = [worker.pid, *victims]
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            fault.killed_at = time.time()
            fault.pids = tuple(victims)
            if kind == "worker":
                dead = next(n for n, p in stack.processes.items() if p.pid == worker.pid)
                stack.processes.pop(dead).wait(timeout=10)
                stack.start_worker(f"worker-{next(serial)}")  # two alive again

        injected = [f for f in faults if not f.missed]
        recovery: dict[str, float] = {}
        deadline = time.monotonic() + RECOVERY_LIMIT + 30
        while time.monotonic() < deadline and len(recovery) < len(injected):
            for fault in injected:
                if fault.deployment not in recovery and state(redis, fault.deployment) in TERMINAL:
                    finished = float(record(redis, fault.deployment)["finished_at"])
                    recovery[fault.deployment] = finished - fault.killed_at
            stack.assert_running()
            time.sleep(0.25)
    finally:
        watcher.stopping.set()
        watcher.join(timeout=5)

    ended = {f.deployment: record(redis, f.deployment) for f in faults}
    late = [
        f"{f.kind} {f.deployment}: {ended[f.deployment].get('state')}"
        for f in injected
        if f.deployment not in recovery
    ]
    slow = {d: round(s, 1) for d, s in recovery.items() if s > RECOVERY_LIMIT}

    # Statuses: wait (bounded) until each fault's terminal status arrived, then look for repeats.
    def final_arrived() -> bool:
        return all(
            any(s in TERMINAL_STATUSES for s in status_states(stack, f.sha, f"deploy/{f.environment}"))
            for f in faults
        )

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not final_arrived():
        time.sleep(0.5)
    time.sleep(3)  # a duplicate would arrive now
    status_errors = {}
    for fault in faults:
        expected = {"succeeded": "success", "failed": "failed", "canceled": "canceled"}.get(
            ended[fault.deployment].get("state", "")
        )
        problems = status_problems(status_states(stack, fault.sha, f"deploy/{fault.environment}"), expected)
        if problems:
            status_errors[f"{fault.kind} {fault.deployment}"] = problems
    for name, (sha, deployment) in baseline.items():
        problems = status_problems(status_states(stack, sha, f"deploy/{name}"), "success")
        if problems:
            status_errors[f"baseline {deployment}"] = problems
    lost = sum(
        1
        for f in faults
        if not any(s in TERMINAL_STATUSES for s in status_states(stack, f.sha, f"deploy/{f.environment}"))
    )

    # No process of any step's group survives; nothing is left running in the releases.
    pgids = {
        int(pgid)
        for root in roots
        if (root / "step-pgids").exists()
        for pgid in (root / "step-pgids").read_text().split()
    }
    orphans = {pgid: group_members(pgid) for pgid in pgids if group_members(pgid)}
    leftovers = strays(stack.data_dir)

    # Every lane is free: one more push per environment deploys.
    again = {}
    for fault in faults:
        sha = repo.commit({"app.txt": f"{fault.environment} after\n"}, "after", branch=fault.branch)
        again[fault.environment] = push(stack, sha, fault.branch)
    afterwards = {name: wait_state(redis, d, TERMINAL, 90, stack) for name, d in again.items()}

    reasons = {f.deployment: ended[f.deployment].get("reason", "") for f in injected}
    by_kind = {
        kind: [recovery.get(f.deployment, float("inf")) for f in injected if f.kind == kind]
        for kind in ("worker", "horse")
    }
    record_figures(
        "kill_workers",
        {
            "seed": seed,
            "faults_injected": len(injected),
            "worker_kills": sum(1 for f in injected if f.kind == "worker"),
            "horse_kills": sum(1 for f in injected if f.kind == "horse"),
            "missed_kills": sum(1 for f in faults if f.missed),
            "deployments": len(faults) + len(baseline) + len(again),
            "not_terminal": len(late),
            "statuses_lost": lost,
            "status_errors": len(status_errors),
            "max_recovery_s": round(max(recovery.values(), default=0.0), 2),
            "max_recovery_worker_s": round(max(by_kind["worker"], default=0.0), 2),
            "max_recovery_horse_s": round(max(by_kind["horse"], default=0.0), 2),
            "orphan_groups": len(orphans),
            "current_samples": watcher.samples,
            "current_incomplete": len(watcher.bad),
            "lanes_stuck": sum(1 for s in afterwards.values() if s != "succeeded"),
            "duration_s": round(time.monotonic() - started, 1),
            "recovery_s": {d: round(s, 2) for d, s in recovery.items()},
            "reasons": reasons,
        },
    )
    assert len(injected) >= len(faults) // 2, f"too many kills came after their deployment ended: {faults}"
    assert not late, f"not terminal {RECOVERY_LIMIT} s after the kill: {late}\n{stack.log_text()[-6000:]}"
    assert not slow, f"recovered later than {RECOVERY_LIMIT} s: {slow}"
    for fault in injected:
        assert ended[fault.deployment]["state"] == "failed", ended[fault.deployment]
        assert ended[fault.deployment]["reason"].startswith("worker lost"), ended[fault.deployment]
    assert lost == 0 and not status_errors, status_errors
    assert not orphans, f"step processes survived their deployment: {orphans}"
    assert not leftovers, f"processes still running in the data directory: {leftovers}"
    assert watcher.samples > 0 and not watcher.bad, watcher.bad[:10]
    assert all(s == "succeeded" for s in afterwards.values()), afterwards
