"""Shared fixtures: a real Redis database (flushed), real git repositories, real config files."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from bench.redisdb import bench_url
from tests.helpers import GitRepo, project_config, write_config
from tests.parallel import check_disjoint, per_worker
from workers.config import Settings, load

SERIAL_REDIS_URL = os.environ.get("PUSHDEPLOY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REDIS_URL = per_worker(SERIAL_REDIS_URL)
"""Flushed by every test that uses it: under pytest-xdist each worker has its own (tests/parallel.py)."""

check_disjoint(tests=SERIAL_REDIS_URL, benchmark=bench_url(None))


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def redis() -> Iterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.commit({"build.sh": "#!/bin/sh\necho building $PUSHDEPLOY_SHA\n", "app.txt": "v1\n"}, "first")
    return repo


@pytest.fixture
def make_settings(tmp_path: Path, git_repo: GitRepo, redis_url: str) -> Callable[..., Settings]:
    """Write a real config file and load it; keyword arguments override the project's keys."""

    def make(
        gitlab: dict[str, Any] | None = None, server: dict[str, Any] | None = None, **project: Any
    ) -> Settings:
        config: dict[str, Any] = {
            "server": {
                "public_url": "http://pushdeploy.test",
                "redis_url": redis_url,
                "data_dir": str(tmp_path / "data"),
                "admin_token": "admin-token-canary-51c2e8",
                **(server or {}),
            },
            "projects": {"sample-app": project_config(project.pop("repo_url", git_repo.url), **project)},
        }
        if gitlab:
            config["gitlab"] = gitlab
        path = write_config(tmp_path / "pushdeploy.toml", config)
        return load(path, environ={})

    return make
