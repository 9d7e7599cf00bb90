"""Rollout to 1, 3 and 10 loopback hosts (real sshd each) of a 10,000-file release.

Per host count: a first deployment (every file sent) and an incremental one (one file changed),
each timed from the rollout's first connection to the deployment's end (the local fetch and export
are the same for every count and left out), with the bytes rsync reports it sent to each host. The
worker runs in this process (an RQ SimpleWorker), as in the tests; batch is "all".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker

from bench.plan import Plan
from bench.procs import HarnessError
from bench.repos import linear_repo, move
from tests.helpers import project_config, write_config
from tests.sshd import HAVE_SSHD, SKIP_REASON, health_port, ssh_hosts
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
    single = rows[0]["first_seconds"]
    return {
        "files": files,
        "rows": rows,
        "most_vs_one": round(rows[-1]["first_seconds"] / single, 2) if single else None,
    }


def one_count(count: int, files: int, workdir: Path, redis: Redis, redis_url: str) -> dict[str, Any]:
    (workdir / "client").mkdir(parents=True)
    redis.flushdb()
    bare = workdir / "repo.git"
    base, (change,) = linear_repo(bare, files, 1, 1)
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
        first = deploy(redis, settings, base)
        move(bare, {"main": change})
        second = deploy(redis, settings, change)
    release = workdir / "data" / "projects" / "sample-app" / "production" / "releases" / first["release"]
    release_bytes = sum(p.stat().st_size for p in release.rglob("*") if p.is_file())
    return {
        "hosts": count,
        "first_seconds": first["seconds"],
        "first_bytes_per_host": first["bytes"],
        "incremental_seconds": second["seconds"],
        "incremental_bytes_per_host": second["bytes"],
        "release_bytes": release_bytes,
        "incremental_share": round(second["bytes"] / release_bytes, 5) if release_bytes else None,
    }


def deploy(redis: Redis, settings: Any, sha: str) -> dict[str, Any]:
    project = settings.projects["sample-app"]
    environment = next(iter(project.environments.values()))
    accepted = Intake(redis, settings.server.public_url).accept(
        project, environment, Push("refs/heads/main", sha, "bench", "")
    )
    started = time.monotonic()
    SimpleWorker([Queue(defaults.DEPLOY_QUEUE, connection=redis)], connection=redis).work(burst=True)
    elapsed = time.monotonic() - started
    done = DeploymentStore(redis).get(accepted.deployment_id)
    if done.state is not State.SUCCEEDED:
        raise HarnessError(f"deployment {done.id} {done.state}: {done.reason}")
    lines = read(redis, done.id)
    connect = next(line.at for line in lines if line.text.startswith("connect to "))
    sent = [int(p.detail.split()[0]) for p in hosts(redis, done.id)]
    return {
        "seconds": round(done.finished_at - connect, 2),
        "job_seconds": round(elapsed, 2),
        "bytes": round(sum(sent) / len(sent)),
        "release": done.release,
    }
