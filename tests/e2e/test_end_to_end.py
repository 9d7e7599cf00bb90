"""A signed push through real gunicorn, a real worker process, real git and the fake GitLab."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import Stack
from tests.helpers import push_body, sign_in_session, signed_headers, wait_for

pytestmark = pytest.mark.e2e

BUILD_OK = '#!/bin/sh\nset -e\necho "building $PUSHDEPLOY_SHA"\nmkdir -p out && cp app.txt out/app.txt\n'
BUILD_FAIL = "#!/bin/sh\necho 'compiling…'\necho 'error: missing semicolon' >&2\nexit 3\n"


def push(stack: Stack, sha: str) -> dict[str, str]:
    body = push_body(sha)
    answer = requests.post(
        f"{stack.base_url}/hooks/gitlab/sample-app", data=body, headers=signed_headers(body), timeout=5
    )
    assert answer.status_code == 202, answer.text
    data: dict[str, str] = answer.json()
    return data


def final_status(stack: Stack, sha: str) -> list[str]:
    def done() -> list[str] | None:
        stack.assert_running()
        states = [s["state"] for s in stack.gitlab.statuses(sha=sha)]
        return states if states and states[-1] in {"success", "failed", "canceled"} else None

    try:
        result: list[str] = wait_for(done, timeout=60, what=f"a final status for {sha[:8]}")
    except AssertionError:
        raise AssertionError(f"no final status; logs:\n{stack.log_text()}") from None
    return result


def test_push_is_built_switched_deployed_and_reported(stack: object) -> None:
    made: Stack = stack(deploy=['echo "live: $(cat out/app.txt)" > ../../deployed.txt'])  # type: ignore[operator]
    made.start_web()
    made.start_worker()
    sha = made.repo.commit({"build.sh": BUILD_OK, "app.txt": "release one\n"}, "release one")

    accepted = push(made, sha)
    deployment_id = accepted["deployment"]
    assert accepted == {"deployment": deployment_id, "url": f"{made.base_url}/deployments/{deployment_id}"}

    assert final_status(made, sha) == ["pending", "running", "success"]
    posted = made.gitlab.statuses(sha=sha)
    assert {s["name"] for s in posted} == {"deploy/production"}
    assert {s["ref"] for s in posted} == {"main"}
    links = {s["target_url"] for s in posted}
    assert all(link.startswith(f"{accepted['url']}?access=") for link in links), links
    assert requests.get(next(iter(links)), timeout=5).status_code == 200  # a maintainer needs no account

    env_dir = made.data_dir / "projects" / "sample-app" / "production"
    current = env_dir / "current"
    assert os.readlink(current) == f"releases/{deployment_id}"
    assert (current / "out" / "app.txt").read_text() == "release one\n"
    assert not (current / ".git").exists()
    assert (env_dir / "deployed.txt").read_text() == "live: release one\n"

    record = made.api(f"/deployments/{deployment_id}")
    assert record["state"] == "succeeded"
    assert [(s["phase"], s["exit_code"]) for s in record["steps"]] == [("build", 0), ("deploy", 0)]
    page = requests.get(posted[-1]["target_url"], timeout=5).text
    assert f"building {sha}" in page
    signed_in = requests.Session()
    assert sign_in_session(signed_in, made.base_url).ok
    assert f"building {sha}" in signed_in.get(accepted["url"], timeout=5).text
    anonymous = requests.get(accepted["url"], timeout=5, allow_redirects=False)
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]


def test_failing_build_reports_failed_and_leaves_current_alone(stack: object) -> None:
    made: Stack = stack()  # type: ignore[operator]
    made.start_web()
    made.start_worker()
    good = made.repo.commit({"build.sh": BUILD_OK, "app.txt": "good\n"}, "good")
    first = push(made, good)["deployment"]
    assert final_status(made, good)[-1] == "success"

    bad = made.repo.commit({"build.sh": BUILD_FAIL}, "broken build")
    second = push(made, bad)["deployment"]
    assert final_status(made, bad) == ["pending", "running", "failed"]

    current = made.data_dir / "projects" / "sample-app" / "production" / "current"
    assert os.readlink(current) == f"releases/{first}"
    assert (current / "out" / "app.txt").read_text() == "good\n"
    assert not Path(made.data_dir / "projects" / "sample-app" / "production" / "releases" / second).exists()

    record = made.api(f"/deployments/{second}")
    assert record["state"] == "failed"
    assert record["reason"] == "build step 1 `./build.sh` exited with 3"
    assert "error: missing semicolon" in record["steps"][0]["tail"]
    failed_status = made.gitlab.statuses(sha=bad)[-1]
    assert "exited with 3" in failed_status["description"]


def test_a_matching_tag_push_deploys_the_tagged_commit_and_reports_on_the_tag(stack: object) -> None:
    """A Tag Push Hook for an annotated tag: ``after`` is the tag object, ``checkout_sha`` the commit."""
    import json

    from tests.helpers import git

    made: Stack = stack(  # type: ignore[operator]
        branch=None,
        environment=None,
        environments={"staging": {"branch": "main"}, "production": {"tags": "v*"}},
        deploy=['echo "$PUSHDEPLOY_REF" > ../../ref.txt'],
    )
    made.start_web()
    made.start_worker()
    sha = made.repo.commit({"build.sh": BUILD_OK, "app.txt": "tagged\n"}, "release 1.0")
    git("tag", "-a", "-m", "release 1.0", "v1.0.0", cwd=made.repo.work)
    git("push", "--quiet", "origin", "v1.0.0", cwd=made.repo.work)
    tag_object = git("rev-parse", "v1.0.0", cwd=made.repo.work)
    payload = {
        "object_kind": "tag_push",
        "ref": "refs/tags/v1.0.0",
        "before": "0" * 40,
        "after": tag_object,
        "checkout_sha": sha,
        "user_username": "alice",
        "project_id": 42,
        "project": {"id": 42, "path_with_namespace": "tools/sample-app"},
        "commits": [],
    }
    body = json.dumps(payload).encode()
    url = f"{made.base_url}/hooks/gitlab/sample-app"
    answer = requests.post(url, data=body, headers=signed_headers(body, event="Tag Push Hook"), timeout=5)
    assert answer.status_code == 202, answer.text
    assert final_status(made, sha) == ["pending", "running", "success"]
    posted = made.gitlab.statuses(sha=sha)
    assert {(s["name"], s["ref"]) for s in posted} == {("deploy/production", "v1.0.0")}
    assert (made.data_dir / "projects/sample-app/production/ref.txt").read_text() == "v1.0.0\n"

    other = json.dumps(payload | {"ref": "refs/tags/nightly-1"}).encode()
    ignored = requests.post(url, data=other, headers=signed_headers(other, event="Tag Push Hook"), timeout=5)
    assert (ignored.status_code, ignored.json()) == (
        200,
        {"ignored": "tag 'nightly-1' matches no environment's tags"},
    )
