"""Real processes for end-to-end tests: gunicorn, pushdeploy workers and a fake GitLab."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fakegitlab import FakeGitLab
from tests.helpers import ADMIN_TOKEN, GitRepo, project_config, wait_for, write_config

ROOT = Path(__file__).resolve().parents[2]
GITLAB_TOKEN = "gitlab-token-canary-93ad17"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """A running pushdeploy: config on disk, gunicorn, workers, and the GitLab they talk to."""

    config: Path
    base_url: str
    data_dir: Path
    gitlab: FakeGitLab
    repo: GitRepo
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    """Variables added to every process's environment (after the PUSHDEPLOY_* of the test's own)."""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHDEPLOY_")}
        env["PUSHDEPLOY_CONFIG"] = str(self.config)
        env["PYTHONPATH"] = str(ROOT)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.logs.parent / "metrics")
        env.update(self.extra_env)
        return env

    def start_web(self, workers: int = 2) -> None:
        from webhook.launcher import web_argv

        (self.logs.parent / "metrics").mkdir(exist_ok=True)
        argv = web_argv(self.base_url.removeprefix("http://"), workers)
        self._spawn("web", argv)
        wait_for(self._healthy, timeout=30, what="gunicorn to answer /healthz")

    def start_worker(self, name: str = "worker-1") -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "webhook.cli", "worker", "--name", f"{name}-{os.getpid()}"]
        return self._spawn(name, argv)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        out = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv, env=self.env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = process
        return process

    def assert_running(self) -> None:
        """Fail fast, with the logs, when a process died instead of waiting out a timeout."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}; logs:\n{self.log_text()}")

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def api(self, path: str) -> Any:
        answer = requests.get(
            f"{self.base_url}/api/v1{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5
        )
        answer.raise_for_status()
        return answer.json()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log_text(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.logs.glob("*.log"))
        )


def make_stack(
    root: Path,
    gitlab: FakeGitLab,
    repo: GitRepo,
    redis_url: str,
    *,
    server: dict[str, Any] | None = None,
    gitlab_config: dict[str, Any] | None = None,
    projects: dict[str, dict[str, Any]] | None = None,
    extra_env: dict[str, str] | None = None,
    auth: dict[str, Any] | None = None,
    **project: Any,
) -> Stack:
    """Write a config under ``root`` and return its (not yet started) Stack.

    ``project`` overrides the keys of the one project ``sample-app``; ``projects`` replaces the
    whole ``[projects]`` table instead. ``server`` and ``gitlab_config`` override keys of theirs.
    """
    port = free_port()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    config = {
        "server": {
            "public_url": f"http://127.0.0.1:{port}",
            "redis_url": redis_url,
            "data_dir": str(root / "data"),
            "admin_token": ADMIN_TOKEN,
            **(server or {}),
        },
        "gitlab": {"url": gitlab.url, "token": GITLAB_TOKEN, "timeout": 5, **(gitlab_config or {})},
        "projects": projects if projects is not None else {"sample-app": project_config(repo.url, **project)},
    }
    if auth is not None:
        config["auth"] = auth
    path = write_config(root / "pushdeploy.toml", config)
    base_url = f"http://127.0.0.1:{port}"
    gitlab.use_repository(repo.url)  # GitLab knows the commits we push; it answers 404 for others
    return Stack(path, base_url, root / "data", gitlab, repo, logs, extra_env=dict(extra_env or {}))


@pytest.fixture
def stack(tmp_path: Path, redis: Any, redis_url: str, git_repo: GitRepo) -> Iterator[Callable[..., Stack]]:
    """Start a stack with project overrides; every process is stopped at the end.

    ``redis_url`` (optional) points the stack at another Redis than the tests' shared one.
    """
    started: list[Stack] = []
    gitlab = FakeGitLab({"tools/sample-app": 42}, token=GITLAB_TOKEN).start()

    def make(redis_url: str = redis_url, **project: Any) -> Stack:
        made = make_stack(tmp_path, gitlab, git_repo, redis_url, **project)
        started.append(made)
        return made

    yield make
    for made in started:
        made.stop()
    gitlab.stop()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

@pytest.fixture
def browser() -> object:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package: chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()
