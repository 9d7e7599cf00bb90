"""Fixtures for the fault tests: stacks with every option, and nothing left running afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import GITLAB_TOKEN, Stack, make_stack
from tests.e2e.processes import kill_strays
from tests.fakegitlab import FakeGitLab
from tests.helpers import GitRepo


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    fake = FakeGitLab({"tools/sample-app": 42}, token=GITLAB_TOKEN).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fault_stack(
    tmp_path: Path, redis: Any, redis_url: str, git_repo: GitRepo, gitlab: FakeGitLab
) -> Iterator[Callable[..., Stack]]:
    """``fault_stack(**options)`` builds a Stack (see tests.e2e.conftest.make_stack for the options).

    At the end every process of every stack is stopped, and any step, work-horse or git process
    they left behind (their own sessions and groups survive a group kill) is killed by pid.
    """
    started: list[Stack] = []

    def make(*, redis_url: str = redis_url, root: Path | None = None, **options: Any) -> Stack:
        made = make_stack(root or tmp_path, gitlab, git_repo, redis_url, **options)
        started.append(made)
        return made

    try:
        yield make
    finally:
        for made in started:
            made.stop()
        for made in started:
            kill_strays(made.data_dir.parent, f"PUSHDEPLOY_CONFIG={made.config}".encode())
