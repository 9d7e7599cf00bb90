"""The web and worker processes run the installed pushdeploy, never code in the directory they start from.

An application repository often holds a ``webhook/`` or ``workers/`` folder, and so does a checkout of
an older pushdeploy. Started from such a directory, ``python -m`` (and gunicorn, which puts its working
directory first on ``sys.path``) would import that code instead. These tests start the real commands
from a directory of decoy packages that leave a canary file when imported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from redis import Redis

from tests.helpers import GitRepo, push_body, signed_headers, wait_for
from webhook.launcher import free_port
from workers.config import Settings
from workers.deployments import DeploymentStore, State

PUSHDEPLOY = Path(sys.executable).parent / "pushdeploy"
DECOY = 'import pathlib\nwith pathlib.Path({canary!r}).open("a") as f:\n    f.write(__name__ + "\\n")\n'


@dataclass
class Decoys:
    directory: Path
    canary: Path

    def imported(self) -> list[str]:
        return self.canary.read_text().split() if self.canary.exists() else []


@pytest.fixture
def decoys(tmp_path: Path) -> Decoys:
    """A directory with ``webhook``, ``workers`` and ``gunicorn`` packages that report their import."""
    decoys = Decoys(tmp_path / "application-repo", tmp_path / "canary.txt")
    for package in ("webhook", "workers", "gunicorn"):
        (decoys.directory / package).mkdir(parents=True)
        (decoys.directory / package / "__init__.py").write_text(DECOY.format(canary=str(decoys.canary)))
    return decoys


def clean_env(settings: Settings) -> dict[str, str]:
    """The test runner's environment without anything that would point Python or pushdeploy elsewhere."""
    dropped = ("PUSHDEPLOY_", "PYTHONPATH", "PYTHONSAFEPATH", "PROMETHEUS_MULTIPROC_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PUSHDEPLOY_CONFIG"] = str(settings.path)
    return env


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a command in its own process group, logging to a file; stop the group afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{len(started)}.log").open("wb")
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        started.append(process)
        return process

    yield run
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def healthy(base: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, f"exited with {process.returncode}"
    try:
        return requests.get(f"{base}/healthz", timeout=1).json() == {"ok": True, "redis": "ok"}
    except (requests.RequestException, ValueError):
        return False


def push(base: str, sha: str) -> str:
    body = push_body(sha)
    answer = requests.post(
        f"{base}/hooks/gitlab/sample-app", data=body, headers=signed_headers(body), timeout=5
    )
    assert answer.status_code == 202, answer.text
    deployment: str = answer.json()["deployment"]
    return deployment


def test_the_decoys_are_what_python_m_imports_from_their_directory(
    decoys: Decoys, make_settings: Callable[..., Settings]
) -> None:
    """The control: run the way ``up`` used to start its worker, the decoy wins."""
    env = clean_env(make_settings())
    subprocess.run(
        [sys.executable, "-m", "webhook.cli", "--help"], cwd=decoys.directory, env=env, capture_output=True
    )
    assert "webhook" in decoys.imported()


@pytest.mark.e2e
def test_pushdeploy_web_started_among_decoys_serves_the_installed_app(
    decoys: Decoys,
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    start: Callable[..., subprocess.Popen[bytes]],
) -> None:
    settings = make_settings()
    base = f"http://127.0.0.1:{free_port()}"
    web = start(
        [str(PUSHDEPLOY), "web", "--bind", base.removeprefix("http://"), "--workers", "1"],
        decoys.directory,
        clean_env(settings),
    )
    wait_for(lambda: healthy(base, web), timeout=30, what="pushdeploy web to answer /healthz")

    deployment = push(base, git_repo.commit({"app.txt": "v2\n"}))

    assert DeploymentStore(redis).get(deployment).state is State.QUEUED
    assert decoys.imported() == []


@pytest.mark.e2e
def test_pushdeploy_up_started_among_decoys_runs_the_installed_web_and_worker(
    decoys: Decoys,
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    start: Callable[..., subprocess.Popen[bytes]],
) -> None:
    settings = make_settings()
    base = f"http://127.0.0.1:{free_port()}"
    up = start(
        [str(PUSHDEPLOY), "up", "--bind", base.removeprefix("http://")], decoys.directory, clean_env(settings)
    )
    wait_for(lambda: healthy(base, up), timeout=30, what="pushdeploy up to answer /healthz")
    sha = git_repo.commit({"app.txt": "v2\n"})

    deployment = push(base, sha)

    store = DeploymentStore(redis)
    done = wait_for(
        lambda: store.get(deployment).state in (State.SUCCEEDED, State.FAILED) and store.get(deployment),
        timeout=60,
        what="the worker started by up to run the deployment",
    )
    assert (done.state, done.sha) == (State.SUCCEEDED, sha)
    assert decoys.imported() == []
