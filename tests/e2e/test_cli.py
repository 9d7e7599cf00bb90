"""The operator CLI against a real server and worker: tables, --json, follow, and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT, Stack

pytestmark = pytest.mark.e2e

BUILD = '#!/bin/sh\necho "building $PUSHDEPLOY_SHA"\n'


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook.cli", "--config", str(stack.config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=stack.env(),
        timeout=120,
        check=False,
    )


def test_operator_commands(stack: object) -> None:
    made: Stack = stack(deploy=["echo live"])  # type: ignore[operator]
    made.start_web()
    made.start_worker()
    first_sha = made.repo.commit({"build.sh": BUILD, "app.txt": "one\n"}, "Ship version one")

    deployed = cli(made, "deploy", "sample-app", "--wait")
    assert deployed.returncode == 0, deployed.stderr
    assert f"building {first_sha}" in deployed.stdout
    assert deployed.stdout.rstrip().endswith("deployment succeeded")
    assert "\033[" not in deployed.stdout  # no colour when not on a terminal

    made.repo.commit({"app.txt": "two\n"})
    assert cli(made, "deploy", "sample-app", "--ref", "main", "--wait").returncode == 0

    listed = cli(made, "deployments", "sample-app")
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "ENVIRONMENT", "COMMIT", "STATE", "DURATION", "CREATED", "TRIGGER"]
    assert len(rows) == 2 and all("succeeded" in row for row in rows)
    assert f"{first_sha[:8]} Ship version one (Test Author)" in rows[1]  # a manual deploy: from git

    as_json = json.loads(cli(made, "deployments", "--json", "--state", "succeeded").stdout)
    first_id = as_json[-1]["id"]
    assert as_json[-1]["sha"] == first_sha

    shown = cli(made, "show", first_id)
    assert shown.returncode == 0 and "deploy 1" in shown.stdout and "build 1" in shown.stdout
    assert "  title:    Ship version one (Test Author)" in shown.stdout.splitlines()
    logs = cli(made, "logs", first_id)
    assert f"building {first_sha}" in logs.stdout

    rolled = cli(made, "rollback", "sample-app", "--wait")
    assert rolled.returncode == 0, rolled.stderr
    latest = json.loads(cli(made, "deployments", "--json", "--limit", "1").stdout)[0]
    assert (latest["sha"], latest["trigger"]) == (first_sha, f"rollback to {first_id}")
    assert (latest["commit_title"], latest["commit_author"]) == ("Ship version one", "Test Author")

    listed = cli(made, "deployments", "sample-app").stdout
    assert "rollback by admin" in listed and "deploy by admin" in listed
    assert "trigger:  rollback by admin" in cli(made, "show", latest["id"]).stdout

    over = cli(made, "cancel", first_id)
    assert over.returncode == 1 and "already succeeded" in over.stderr

    logged = cli(made, "audit")
    assert logged.returncode == 0, logged.stderr
    header, *rows = logged.stdout.splitlines()
    assert header.split() == ["WHEN", "WHO", "VIA", "ACTION", "WHERE", "DEPLOYMENT", "FROM", "DETAIL"]
    actions = [row.split()[4] for row in rows]  # WHEN is a date and a time
    assert [a for a in actions if a in ("deploy", "rollback")] == ["rollback", "deploy", "deploy"]
    assert "admin_token" in actions  # the CLI's reads with the admin token are noted too
    rollbacks = json.loads(cli(made, "audit", "--json", "--action", "rollback", "--since", "1h").stdout)
    assert [(e["who"], e["deployment"], e["from"]) for e in rollbacks] == [
        ("admin", latest["id"], "127.0.0.1")
    ]
    assert json.loads(cli(made, "audit", "--json", "--until", "1000").stdout) == []
    paged = json.loads(cli(made, "audit", "--json", "--limit", "2").stdout)
    assert len(paged) == 2
    refused = cli(made, "audit", "--action", "explode")
    assert refused.returncode == 2 and "action must be one of" in refused.stderr
    missing = cli(made, "show", "no-such-deployment")
    assert missing.returncode == 2
    unreachable = cli(made, "deployments", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr


def test_a_failed_deploy_exits_1(stack: object) -> None:
    made: Stack = stack(build=["exit 9"], deploy=[])  # type: ignore[operator]
    made.start_web()
    made.start_worker()
    made.repo.commit({"app.txt": "x\n"})
    result = cli(made, "deploy", "sample-app", "--wait")
    assert result.returncode == 1
    assert "deployment failed" in result.stdout
