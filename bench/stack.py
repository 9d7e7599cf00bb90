"""A running pushdeploy for the end-to-end scenarios: gunicorn, workers, Redis and a timed fake GitLab.

The fake GitLab is the test suite's (a real HTTP server in this process); :class:`TimedGitLab`
only adds the moment each status arrived, on the same clock the deliveries are sent by.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from redis import Redis
from rq import Worker

from bench.cpu import CpuMeter
from bench.payloads import SECRET_TOKEN, SIGNING_TOKEN, delivery_headers, push_body
from bench.procs import HarnessError, Processes, answers, clean_env, free_port, wait_until
from bench.redisdb import server_pid
from tests.fakegitlab import FakeGitLab
from tests.helpers import write_config
from webhook.launcher import web_argv

GITLAB_TOKEN = "bench-gitlab-token-2b7c"  # noqa: S105 - the fake GitLab's, like the test suite's
ADMIN_TOKEN = "bench-admin-token-6e91"  # noqa: S105


class TimedGitLab(FakeGitLab):
    """The fake GitLab, noting when each accepted status first arrived (``time.perf_counter``)."""

    def __init__(self, projects: dict[str, int]) -> None:
        super().__init__(projects, token=GITLAB_TOKEN)
        self.arrivals: dict[tuple[str, str], float] = {}
        self.arrived = threading.Condition()

    def _post_status(
        self, given: str, project_id: int, project_path: str, sha: str, params: dict[str, Any]
    ) -> Any:
        arrived = time.perf_counter()
        response = super()._post_status(given, project_id, project_path, sha, params)
        if response.status == 201:
            with self.arrived:
                self.arrivals.setdefault((sha, str(params.get("state"))), arrived)
                self.arrived.notify_all()
        return response

    def wait_status(self, sha: str, state: str, timeout: float, processes: Processes) -> float:
        """When the ``state`` status for ``sha`` arrived; waits for it (checking the children live)."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while (sha, state) not in self.arrivals:
                processes.check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"no {state} status for {sha[:12]} within {timeout:.0f} s")
                self.arrived.wait(min(left, 0.5))
            return self.arrivals[(sha, state)]


@dataclass(frozen=True)
class Sent:
    """One delivery: when it left, when it was answered (``perf_counter``), how, and its deployment."""

    sha: str
    sent: float
    sent_wall: float  # time.time() at sending, to compare with the record's own timestamps
    answered: float
    status: int
    deployment: str


@dataclass
class Stack:
    """What a scenario talks to; :func:`start_stack` builds it, ``processes.stop_all`` ends it."""

    processes: Processes
    gitlab: TimedGitLab
    redis: Redis
    base_url: str
    config: Path
    session: requests.Session = field(default_factory=requests.Session)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop gunicorn, the workers (and any work-horse) and the fake GitLab."""
        try:
            self.processes.stop_all()
        finally:
            self.gitlab.stop()
            self.session.close()

    def meter(self) -> CpuMeter:
        """Counts gunicorn, the workers (their work-horses and steps), Redis and us as "ours"."""
        return CpuMeter(self.processes.pgids, {server_pid(self.redis)})

    def push(
        self,
        project: str,
        gitlab_project: str,
        branch: str,
        sha: str,
        session: requests.Session | None = None,
    ) -> Sent:
        """Send one signed push, as GitLab would after ``sha`` reached ``branch``."""
        body = push_body(sha, branch, gitlab_project)
        headers = delivery_headers(body)
        sent_wall, sent = time.time(), time.perf_counter()
        answer = (session or self.session).post(
            f"{self.base_url}/hooks/gitlab/{project}", data=body, headers=headers, timeout=30
        )
        answered = time.perf_counter()
        deployment = answer.json().get("deployment", "") if answer.status_code in (200, 202) else ""
        return Sent(sha, sent, sent_wall, answered, answer.status_code, str(deployment))


def project_table(gitlab_project: str, repo_url: str, **overrides: Any) -> dict[str, Any]:
    """A project as the README configures one, with a no-op build and deploy."""
    table: dict[str, Any] = {
        "gitlab_project": gitlab_project,
        "repo_url": repo_url,
        "secret_token": SECRET_TOKEN,
        "signing_token": SIGNING_TOKEN,
        "branch": "main",
        "environment": "production",
        "build": ["true"],
        "deploy": ["true"],
        "timeout": 300,
    }
    table.update(overrides)
    return table


def write_stack_config(
    workdir: Path,
    redis_url: str,
    port: int,
    projects: dict[str, dict[str, Any]],
    gitlab_url: str | None,
    server: dict[str, Any] | None = None,
) -> Path:
    """The configuration file; ``server`` adds to (or overrides) the ``[server]`` table."""
    config: dict[str, Any] = {
        "server": {
            "public_url": f"http://127.0.0.1:{port}",
            "redis_url": redis_url,
            "data_dir": str(workdir / "data"),
            "admin_token": ADMIN_TOKEN,
            **(server or {}),
        },
        "projects": projects,
    }
    if gitlab_url:
        config["gitlab"] = {"url": gitlab_url, "token": GITLAB_TOKEN, "timeout": 10}
    workdir.mkdir(parents=True, exist_ok=True)
    return write_config(workdir / "pushdeploy.toml", config)


def start_web(
    processes: Processes,
    name: str,
    config: Path,
    port: int,
    workers: int,
    app: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """``pushdeploy web``'s own gunicorn command line with ``workers`` sync workers; returns its URL.

    ``app`` swaps in another WSGI app under exactly the same settings (the bare yardstick).
    """
    argv = web_argv(f"127.0.0.1:{port}", workers)
    if app is not None:
        argv[-1] = app
    processes.spawn(name, argv, clean_env({"PUSHDEPLOY_CONFIG": str(config), **(env or {})}))
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/healthz"), 30, f"{name} to answer", check=processes.check)
    return base


def start_stack(
    workdir: Path,
    redis: Redis,
    redis_url: str,
    projects: dict[str, dict[str, Any]],
    gitlab_projects: dict[str, int],
    web_workers: int,
    workers: int,
    server: dict[str, Any] | None = None,
) -> Stack:
    """gunicorn with ``web_workers``, ``workers`` pushdeploy workers, and a fake GitLab; all started.

    ``server`` holds extra ``[server]`` settings (``keep_deployments`` for the growth scenario).

    Use it as a context manager: leaving the block stops everything it started.
    """
    processes = Processes(workdir / "logs")
    gitlab = TimedGitLab(gitlab_projects)
    for table in projects.values():
        gitlab.use_repository(table["repo_url"])  # the commits GitLab knows: it refuses others
    gitlab.start()
    try:
        port = free_port()
        config = write_stack_config(workdir, redis_url, port, projects, gitlab.url, server)
        base = start_web(processes, f"{workdir.name}-web", config, port, web_workers)
        env = clean_env({"PUSHDEPLOY_CONFIG": str(config)})
        for index in range(workers):
            argv = [sys.executable, "-m", "webhook.cli", "worker", "--name", f"bench-{workdir.name}-{index}"]
            processes.spawn(f"{workdir.name}-worker-{index}", argv, env)
        wait_until(
            lambda: len(Worker.all(connection=redis)) >= workers,
            30,
            "the workers to register",
            check=processes.check,
        )
    except BaseException:
        processes.stop_all()
        gitlab.stop()
        raise
    return Stack(processes, gitlab, redis, base, config)


def send_round(
    stack: Stack,
    pool: ThreadPoolExecutor,
    sessions: threading.local,
    project: str,
    gitlab_project: str,
    pushes: list[tuple[str, str]],
) -> list[Sent]:
    """One delivery per (branch, sha), in parallel, each sender thread on a session of its own."""

    def send(item: tuple[str, str]) -> Sent:
        if not hasattr(sessions, "session"):
            sessions.session = requests.Session()
        branch, sha = item
        return stack.push(project, gitlab_project, branch, sha, session=sessions.session)

    return list(pool.map(send, pushes))
