"""Beyond one machine: workers with separate data directories share one Redis (through Sentinel)
and still deploy each environment one push at a time."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.e2e.conftest import ROOT
from tests.helpers import GitRepo, project_config, wait_for, write_config
from webhook.launcher import redis_server_binary
from workers.config import load
from workers.connection import connect, web_redis
from workers.deployments import DeploymentStore, State
from workers.intake import Intake, Push

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    """A real Redis master and a real Sentinel watching it (redis-server --sentinel)."""
    binary, _source = redis_server_binary()
    master_port, sentinel_port = free_port(), free_port()
    (tmp_path / "master").mkdir()
    (tmp_path / "sentinel").mkdir()
    conf = tmp_path / "sentinel" / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path / 'sentinel'}\n"
        f"sentinel monitor pushdeploy 127.0.0.1 {master_port} 1\n"
    )
    processes = [
        subprocess.Popen(
            [
                binary,
                "--port",
                str(master_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(tmp_path / "master"),
            ],
            stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL),
    ]
    try:
        sentinel = Redis(port=sentinel_port)
        wait_for(lambda: _knows_master(sentinel), timeout=20, what="the sentinel to know its master")
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/pushdeploy/0"
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def _knows_master(sentinel: Redis) -> bool:
    try:
        return bool(sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "pushdeploy"))
    except Exception:
        return False


def test_sentinel_urls_reach_the_master(sentinel_url: str) -> None:
    client = connect(sentinel_url)
    client.set("pushdeploy:probe", "ok")
    assert web_redis(sentinel_url).get("pushdeploy:probe") == b"ok"


def test_two_workers_on_separate_data_dirs_deploy_one_at_a_time(tmp_path: Path, sentinel_url: str) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = GitRepo(tmp_path / "repo")
    shas = [repo.commit({"app.txt": f"v{i}\n"}) for i in range(4)]
    configs = []
    for host in ("host-a", "host-b"):
        config = {
            "server": {"redis_url": sentinel_url, "data_dir": str(tmp_path / host)},
            "projects": {"sample-app": project_config(repo.url, build=["sleep 1"], deploy=[])},
        }
        configs.append(write_config(tmp_path / f"{host}.toml", config))
    settings = load(configs[0], environ={})
    project = settings.projects["sample-app"]
    environment = project.environments["production"]
    intake = Intake(web_redis(sentinel_url), settings.server.public_url)
    ids = []
    for index, sha in enumerate(shas):
        ids.append(
            intake.accept(
                project, environment, Push("refs/heads/main", sha, "alice", f"d{index}")
            ).deployment_id
        )
        time.sleep(0.05)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "webhook.cli", "--config", str(path), "worker", "--burst"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for path in configs
    ]
    try:
        store = DeploymentStore(connect(sentinel_url))

        wait_for(lambda: store.get(ids[-1]).state.terminal, timeout=60, what="the newest push to finish")
    finally:
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
    ended = [store.get(i) for i in ids]
    assert ended[-1].state is State.SUCCEEDED
    ran = sorted((d.started_at, d.finished_at) for d in ended if d.started_at)
    for (_start, end), (next_start, _end) in itertools.pairwise(ran):
        assert next_start >= end, "two deployments of one environment overlapped"
    built_on = {
        host
        for host in ("host-a", "host-b")
        if (tmp_path / host / "projects/sample-app/production/releases").is_dir()
    }
    assert built_on  # the releases are on whichever host built them
