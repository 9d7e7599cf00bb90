"""Steps that live with the code: a pushed ``.pushdeploy.toml`` run by real gunicorn and RQ workers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT, Stack
from tests.e2e.test_end_to_end import final_status, push

pytestmark = pytest.mark.e2e

RECIPE = """\
build = "echo built by the recipe at $PUSHDEPLOY_SHA > from-recipe.txt"
deploy = ["echo deployed by the recipe"]
timeout = 30
[env]
GREETING = "hello from git"
"""


def show(stack: Stack, deployment_id: str) -> str:
    """``pushdeploy show`` as an operator runs it, against the stack's server."""
    shown = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "show", deployment_id],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=stack.env(),
        timeout=60,
        check=False,
    )
    assert shown.returncode in (0, 1), shown.stderr  # 1: the deployment failed
    return shown.stdout


def test_a_pushed_recipe_runs_and_a_refused_one_fails_before_any_step(stack: object) -> None:
    made: Stack = stack(build=["echo server build"], deploy=["echo server deploy"])  # type: ignore[operator]
    made.start_web()
    made.start_worker()

    sha = made.repo.commit({".pushdeploy.toml": RECIPE, "app.txt": "one\n"}, "steps with the code")
    deployment_id = push(made, sha)["deployment"]
    assert final_status(made, sha)[-1] == "success"

    record = made.api(f"/deployments/{deployment_id}")
    assert record["recipe"] == f"repo@{sha[:8]}"
    assert record["effective_steps"]["build"] == [
        "echo built by the recipe at $PUSHDEPLOY_SHA > from-recipe.txt"
    ]
    assert record["effective_steps"]["env"] == ["GREETING"]
    assert record["effective_steps"]["timeout"] == 30
    assert [s["command"] for s in record["steps"]] == [
        "echo built by the recipe at $PUSHDEPLOY_SHA > from-recipe.txt",
        "echo deployed by the recipe",
    ]
    current = made.data_dir / "projects" / "sample-app" / "production" / "current"
    assert (current / "from-recipe.txt").read_text() == f"built by the recipe at {sha}\n"
    shown = show(made, deployment_id)
    assert f"  recipe:   .pushdeploy.toml at {sha[:8]}\n" in shown
    assert "    build: echo built by the recipe at $PUSHDEPLOY_SHA > from-recipe.txt" in shown

    refused = made.repo.commit({".pushdeploy.toml": 'build = "make"\nrun_as = "root"\n'}, "asks for root")
    refused_id = push(made, refused)["deployment"]
    assert final_status(made, refused)[-1] == "failed"

    description = made.gitlab.statuses(sha=refused)[-1]["description"]
    assert (
        description
        == ".pushdeploy.toml line 2: run_as: is the server's to set, not the repository's: refused"
    )
    failed = made.api(f"/deployments/{refused_id}")
    assert failed["state"] == "failed" and failed["steps"] == [] and failed["reason"] == description
    assert (current / "from-recipe.txt").read_text() == f"built by the recipe at {sha}\n"  # still the first
    assert f"  recipe:   .pushdeploy.toml at {refused[:8]} (refused: no step ran)" in show(made, refused_id)
