"""Rollout to 1, 3 and 10 loopback hosts (real sshd each) of a 10,000-file release.

Per host count: a first deployment (every file sent) and an incremental one (one file changed),
each timed from the rollout's first connection to the deployment's end (the local fetch and export
are the same for every count and left out), with the bytes rsync reports it sent to each host. The
worker runs in this process (an RQ SimpleWorker), as in the tests; batch is "all".

Every "host" shares this machine's cores with the worker, so wall time here is bounded below by the
CPU the hosts need. Both sides are counted: the hosts' (each sshd's own CPU and its reaped sessions':
rsync receivers, shells, ``cp``, ``find``) and the worker's (this process and its reaped children:
git, ssh, rsync senders; the whole job, fetch and export included, but not the ssh master
connections, which detach). The hosts' CPU over the cores is a floor no schedule here could beat.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker

from bench.plan import Plan
from bench.procs import HarnessError
from bench.repos import linear_repo, move
from tests.helpers import project_config, write_config
from tests.sshd import HAVE_SSHD, SKIP_REASON, SshHost, descendants, health_port, ssh_hosts
from workers import defaults, engine
from workers.config import load
from workers.deploylog import read
from workers.deployments import DeploymentStore, State
from workers.intake import Intake, Push
from workers.targets import hosts

HOST_COUNTS = (1, 3, 10)
FULL_FILES = 10_000
SMOKE_HOST_COUNTS = (1, 2)
SMOKE_FILES = 50


def run(plan: Plan, workdir: Path, redis: Redis, redis_url: str) -> dict[str, Any]:
    if not HAVE_SSHD:
        raise HarnessError(SKIP_REASON)
    smoke = plan.name == "smoke"
    files = SMOKE_FILES if smoke else FULL_FILES
    counts = SMOKE_HOST_COUNTS if smoke else HOST_COUNTS
    rows = [one_count(count, files, workdir / f"hosts-{count}", redis, redis_url) for count in counts]
    one, most = rows[0]["first_seconds"], rows[-1]
    return {
        "files": files,
        "cores": os.cpu_count() or 1,
        "rows": rows,
        "most_vs_one": round(most["first_seconds"] / one, 2) if one else None,
        "most_floor_vs_one": round(most["first_floor_seconds"] / one, 2) if one else None,
    }


def one_count(count: int, files: int, workdir: Path, redis: Redis, redis_url: str) -> dict[str, Any]:
    (workdir / "client").mkdir(parents=True)
    redis.flushdb()
    bare = workdir / "repo.git"
    base, (change,) = linear_repo(bare, files, 1, 1)
    # The hosts' logins skip a developer's ~/.bashrc: a target's deploy user has /bin/sh
    with ssh_hosts(workdir / "hosts", count, workdir / "client" / "id_ed25519") as started:
        known = workdir / "known_hosts"
        known.write_text("".join(h.known_hosts_line() + "\n" for h in started))
        project = project_config(
            str(bare),
            build=[],
            deploy=["true"],
            targets=[h.target for h in started],
            ssh_key=f"file:{workdir / 'client' / 'id_ed25519'}",
            known_hosts=f"file:{known}",
            rollout={"batch": "all"},
            health_check={"url": f"http://{{host}}:{health_port(started[0])}/", "timeout": 30},
            timeout=600,
        )
        config = write_config(
            workdir / "pushdeploy.toml",
            {
                "server": {"redis_url": redis_url, "data_dir": str(workdir / "data")},
                "projects": {"sample-app": project},
            },
        )
        settings = load(config, environ={})
        engine.install(engine.Engine.build(settings, redis))  # as `pushdeploy worker` does
        first = deploy(redis, settings, base, started)
        move(bare, {"main": change})
        second = deploy(redis, settings, change, started)
    release = workdir / "data" / "projects" / "sample-app" / "production" / "releases" / first["release"]
    release_bytes = sum(p.stat().st_size for p in release.rglob("*") if p.is_file())
    cores = os.cpu_count() or 1
    row: dict[str, Any] = {"hosts": count, "release_bytes": release_bytes}
    for name, done in (("first", first), ("incremental", second)):
        row |= {
            f"{name}_seconds": done["seconds"],
            f"{name}_bytes_per_host": done["bytes"],
            f"{name}_phases": done["phases"],
            f"{name}_host_cpu_seconds": done["host_cpu"],
            f"{name}_worker_cpu_seconds": done["worker_cpu"],
            f"{name}_floor_seconds": round(done["host_cpu"] / cores, 2),
        }
    row["incremental_share"] = round(second["bytes"] / release_bytes, 5) if release_bytes else None
    return row


def deploy(redis: Redis, settings: Any, sha: str, targets: list[SshHost]) -> dict[str, Any]:
    project = settings.projects["sample-app"]
    environment = next(iter(project.environments.values()))
    accepted = Intake(redis, settings.server.public_url).accept(
        project, environment, Push("refs/heads/main", sha, "bench", "")
    )
    hosts_before, worker_before = hosts_cpu(targets), worker_cpu()
    started = time.monotonic()
    SimpleWorker([Queue(defaults.DEPLOY_QUEUE, connection=redis)], connection=redis).work(burst=True)
    elapsed = time.monotonic() - started
    worker_used = worker_cpu() - worker_before
    settle(targets)  # the connections' sshd processes end once the worker closed them: then they count
    hosts_used = hosts_cpu(targets) - hosts_before
    done = DeploymentStore(redis).get(accepted.deployment_id)
    if done.state is not State.SUCCEEDED:
        raise HarnessError(f"deployment {done.id} {done.state}: {done.reason}")
    lines = read(redis, done.id)
    connect = next(line.at for line in lines if line.text.startswith("connect to "))
    ship = next(line.at for line in lines if line.text.startswith("ship releases/"))
    shipped = max(line.at for line in lines if ": shipped, " in line.text)
    live = max(line.at for line in lines if ": health check " in line.text and ": HTTP 2" in line.text)
    sent = [int(p.detail.split()[0]) for p in hosts(redis, done.id)]
    return {
        "seconds": round(done.finished_at - connect, 2),
        "job_seconds": round(elapsed, 2),
        "bytes": round(sum(sent) / len(sent)),
        "release": done.release,
        "phases": {
            "connect": round(ship - connect, 2),
            "ship": round(shipped - ship, 2),
            "switch_deploy_health": round(live - shipped, 2),
            "prune_and_end": round(done.finished_at - live, 2),
        },
        "host_cpu": round(hosts_used, 2),
        "worker_cpu": round(worker_used, 2),
    }


TICKS = os.sysconf("SC_CLK_TCK")


def hosts_cpu(targets: list[SshHost]) -> float:
    """CPU seconds of every host's sshd and the sessions it has reaped (rsync, shells, cp, find)."""
    total = 0
    for host in targets:
        assert host.process is not None
        with open(f"/proc/{host.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total / TICKS


def worker_cpu() -> float:
    """CPU seconds of this process (the worker, its threads) and its reaped children (git, ssh, rsync)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def settle(targets: list[SshHost], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(descendants(h.process.pid) for h in targets if h.process is not None):
            return
        time.sleep(0.05)
