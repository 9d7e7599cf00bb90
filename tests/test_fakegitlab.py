"""The fake GitLab must behave like GitLab when driven by the real python-gitlab client.

These tests pin both sides: what the fake answers (status codes, GitLab's exact error texts, the
commit-status state machine) and how python-gitlab reacts to it (which exception, when it retries).
If python-gitlab changes its retry or error mapping, these tests say so before pushdeploy's do.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gitlab
import pytest
import requests
from gitlab.exceptions import (
    GitlabAuthenticationError,
    GitlabCreateError,
    GitlabGetError,
    GitlabHttpError,
    GitlabListError,
    GitlabUpdateError,
)

from tests.helpers import GitRepo

try:
    from tests.fakegitlab import FakeGitLab
except ImportError:  # tests/ is not importable as a package: rootdir not on sys.path
    from fakegitlab import FakeGitLab  # type: ignore[no-redef,import-not-found,unused-ignore]

PROJECT = "tools/sample-app"
PROJECT_ID = 42
SHA = "0123456789abcdef0123456789abcdef01234567"
SHA2 = "89abcdef0123456789abcdef0123456789abcdef"
SHA3 = "fedcba9876543210fedcba9876543210fedcba98"  # known to no fixture: each test places it
SAMPLES = Path(__file__).parent / "samples"
SIGNING_TOKEN = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 bytes


@pytest.fixture
def fake() -> Iterator[FakeGitLab]:
    with FakeGitLab({PROJECT: PROJECT_ID}) as server:
        server.add_commit(SHA, "main")
        server.add_commit(SHA2, "main")
        yield server
        assert server.errors == []  # the fake itself never crashed


def client(fake: FakeGitLab, **kwargs: Any) -> gitlab.Gitlab:
    options: dict[str, Any] = {"private_token": fake.token, "timeout": 5, "retry_transient_errors": True}
    options.update(kwargs)
    return gitlab.Gitlab(fake.url, **options)


@pytest.fixture
def gl(fake: FakeGitLab) -> Iterator[gitlab.Gitlab]:
    with client(fake) as gl_client:
        yield gl_client


def commit(gl: gitlab.Gitlab, sha: str = SHA, project: str | int = PROJECT) -> Any:
    return gl.projects.get(project, lazy=True).commits.get(sha, lazy=True)


def status_posts(fake: FakeGitLab) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["method"] == "POST" and "/statuses/" in r["path"]]


# --------------------------------------------------------------------------- commit statuses


def test_status_create_by_path_is_recorded(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    status = commit(gl).statuses.create(
        {
            "state": "success",
            "ref": "main",
            "name": "pushdeploy",
            "target_url": "https://deploy.example.com/r/1",
            "description": "deployed",
        }
    )
    assert status.status == "success"
    assert status.name == "pushdeploy"
    assert status.finished_at is not None
    assert status.allow_failure is False
    (post,) = status_posts(fake)
    assert post["status"] == 201
    assert post["path"] == f"/api/v4/projects/tools%2Fsample-app/statuses/{SHA}"  # encoded on the wire
    assert post["headers"]["PRIVATE-TOKEN"] == fake.token
    (recorded,) = fake.statuses()
    assert recorded["state"] == "success"
    assert recorded["sha"] == SHA
    assert recorded["ref"] == "main"
    assert recorded["name"] == "pushdeploy"
    assert recorded["target_url"] == "https://deploy.example.com/r/1"
    assert recorded["description"] == "deployed"
    assert recorded["project"] == PROJECT


def test_status_by_numeric_id_and_name_defaults(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    commit(gl, project=PROJECT_ID).statuses.create({"state": "pending"})
    commit(gl, SHA2).statuses.create({"state": "pending", "context": "ci/other"})
    first, second = fake.statuses()
    assert (first["project"], first["name"], first["ref"]) == ("42", "default", "main")
    assert (second["project"], second["name"]) == (PROJECT, "ci/other")
    assert [s["sha"] for s in fake.statuses(sha=SHA2)] == [SHA2]
    assert fake.statuses(name="nope") == []


def test_ref_defaults_to_a_branch_whose_head_is_the_sha(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    fake.branch_heads["release"] = SHA3
    commit(gl, SHA3).statuses.create({"state": "running"})
    assert fake.statuses()[0]["ref"] == "release"


def test_running_twice_is_rejected_like_gitlab(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    statuses = commit(gl).statuses
    statuses.create({"state": "running", "ref": "main", "name": "deploy"})
    with pytest.raises(GitlabCreateError) as excinfo:
        statuses.create({"state": "running", "ref": "main", "name": "deploy"})
    assert excinfo.value.response_code == 400
    assert "Cannot transition status" in str(excinfo.value.error_message)
    assert excinfo.value.error_message == (
        'Cannot transition status via :run from :running (Reason(s): Status cannot transition via "run")'
    )
    assert [s["state"] for s in fake.statuses()] == ["running"]


def test_pending_twice_and_pending_after_running_are_rejected(gl: gitlab.Gitlab) -> None:
    statuses = commit(gl).statuses
    statuses.create({"state": "pending", "ref": "main"})
    with pytest.raises(GitlabCreateError) as excinfo:
        statuses.create({"state": "pending", "ref": "main"})
    assert excinfo.value.error_message == (
        "Cannot transition status via :enqueue from :pending "
        '(Reason(s): Status cannot transition via "enqueue")'
    )
    statuses.create({"state": "running", "ref": "main"})
    with pytest.raises(GitlabCreateError, match="via :enqueue from :running"):
        statuses.create({"state": "pending", "ref": "main"})
    with pytest.raises(GitlabCreateError, match="via :skip from :running"):
        statuses.create({"state": "skipped", "ref": "main"})


def test_pending_running_success_is_one_record_then_a_new_one(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    statuses = commit(gl).statuses
    ids = [statuses.create({"state": s, "ref": "main"}).id for s in ("pending", "running", "success")]
    assert len(set(ids)) == 1
    again = statuses.create({"state": "running", "ref": "main"})  # after a terminal state: new record
    assert again.id != ids[0]
    other_ref = statuses.create({"state": "running", "ref": "feature"})  # the key includes ref
    assert other_ref.id != again.id
    assert statuses.create({"state": "failed", "ref": "main"}).id == again.id
    assert statuses.create({"state": "failed", "ref": "main"}).id != again.id  # terminal -> new
    assert [s["new_record"] for s in fake.statuses()] == [True, False, False, True, True, False, True]


def test_terminal_states_from_pending_are_accepted(gl: gitlab.Gitlab) -> None:
    statuses = commit(gl).statuses
    for state in ("success", "failed", "canceled", "skipped"):
        statuses.create({"state": "pending", "ref": "main"})
        assert statuses.create({"state": state, "ref": "main"}).status == state


def test_status_validation_errors(gl: gitlab.Gitlab) -> None:
    with pytest.raises(GitlabCreateError) as excinfo:
        commit(gl).statuses.create({"state": "error"})
    assert (excinfo.value.response_code, excinfo.value.error_message) == (
        400,
        "state does not have a valid value",
    )
    with pytest.raises(GitlabCreateError) as excinfo:
        commit(gl, "not-a-sha").statuses.create({"state": "success"})
    assert (excinfo.value.response_code, excinfo.value.error_message) == (404, "404 Commit Not Found")
    with pytest.raises(GitlabCreateError) as excinfo:
        commit(gl).statuses.create({"state": "success", "target_url": "https://x.example/" + "a" * 300})
    assert excinfo.value.response_code == 400
    # A validation error's "message" is an object; python-gitlab then hands back a dict, not a str.
    body = {"message": {"target_url": ["is too long (maximum is 255 characters)"]}}
    assert json.loads(excinfo.value.response_body or b"") == body
    assert isinstance(excinfo.value.error_message, dict)


def test_unknown_project_is_404(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    with pytest.raises(GitlabCreateError) as excinfo:
        commit(gl, project="tools/nope").statuses.create({"state": "success"})
    assert (excinfo.value.response_code, excinfo.value.error_message) == (404, "404 Project Not Found")
    assert fake.statuses() == []


def test_bad_token_raises_authentication_error_not_create_error(fake: FakeGitLab) -> None:
    with client(fake, private_token="wrong") as bad, pytest.raises(GitlabAuthenticationError) as excinfo:
        commit(bad).statuses.create({"state": "success"})
    # 401 bypasses on_http_error(): it is neither a GitlabCreateError nor a GitlabHttpError.
    assert not isinstance(excinfo.value, (GitlabCreateError, GitlabHttpError))
    assert excinfo.value.response_code == 401
    assert excinfo.value.error_message == "401 Unauthorized"
    assert fake.statuses() == []
    assert status_posts(fake)[0]["status"] == 401


def test_oauth_bearer_token_is_accepted(fake: FakeGitLab) -> None:
    with gitlab.Gitlab(fake.url, oauth_token=fake.token, timeout=5) as oauth:
        commit(oauth).statuses.create({"state": "success"})
    assert status_posts(fake)[0]["headers"]["Authorization"] == f"Bearer {fake.token}"


def test_form_encoded_post_is_accepted(fake: FakeGitLab) -> None:
    response = requests.post(
        f"{fake.url}/api/v4/projects/tools%2Fsample-app/statuses/{SHA}",
        headers={"PRIVATE-TOKEN": fake.token},
        data={"state": "running", "context": "curl"},
        timeout=5,
    )
    assert response.status_code == 201
    assert response.json()["status"] == "running"
    assert fake.statuses()[0]["name"] == "curl"


def test_statuses_list_shows_latest_per_name(gl: gitlab.Gitlab) -> None:
    statuses = commit(gl).statuses
    statuses.create({"state": "running", "ref": "main", "name": "a"})
    statuses.create({"state": "success", "ref": "main", "name": "a"})
    statuses.create({"state": "failed", "ref": "main", "name": "a"})
    statuses.create({"state": "pending", "ref": "main", "name": "b"})
    latest = {s.name: s.status for s in statuses.list(get_all=True)}
    assert latest == {"a": "failed", "b": "pending"}
    assert len(statuses.list(get_all=True, all=True)) == 3


def test_an_unknown_commit_is_404_commit_not_found(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    statuses = commit(gl, SHA3).statuses
    with pytest.raises(GitlabCreateError) as created:
        statuses.create({"state": "pending", "ref": "main"})
    with pytest.raises(GitlabListError) as listed:
        statuses.list(get_all=True)
    for caught in (created.value, listed.value):
        assert (caught.response_code, caught.error_message) == (404, "404 Commit Not Found")
    assert fake.statuses() == [] and fake.pipelines() == []


def test_without_ref_a_commit_on_no_branch_has_no_references(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    fake.add_commit(SHA3)
    with pytest.raises(GitlabCreateError) as excinfo:
        commit(gl, SHA3).statuses.create({"state": "pending"})
    assert (excinfo.value.response_code, excinfo.value.error_message) == (
        404,
        "404 References for commit Not Found",
    )
    # A ref that is given is taken as it is: GitLab makes a pipeline for it without looking it up.
    assert commit(gl, SHA3).statuses.create({"state": "pending", "ref": "anything"}).ref == "anything"


def test_a_repository_the_fake_reads_supplies_commits_and_branches(tmp_path: Path, gl: gitlab.Gitlab) -> None:
    repo = GitRepo(tmp_path / "repo")
    sha = repo.commit({"a.txt": "a\n"})
    fake = FakeGitLab({PROJECT: PROJECT_ID}, token=gl.private_token or "").start()
    try:
        fake.use_repository(repo.url)
        with client(fake) as reader:
            assert commit(reader, sha).statuses.create({"state": "running"}).ref == "main"
            with pytest.raises(GitlabCreateError, match="Commit Not Found"):
                commit(reader, SHA3).statuses.create({"state": "running", "ref": "main"})
            made = reader.projects.get(PROJECT, lazy=True).deployments.create(
                {"environment": "production", "sha": sha, "ref": "main", "tag": False, "status": "running"}
            )
        assert made.ref == "main"
    finally:
        fake.stop()


def test_a_status_joins_the_newest_pipeline_of_sha_and_ref_unless_pipeline_id_says(
    fake: FakeGitLab, gl: gitlab.Gitlab
) -> None:
    statuses = commit(gl).statuses
    first = statuses.create({"state": "pending", "ref": "main", "name": "deploy"}).pipeline_id
    assert statuses.create({"state": "pending", "ref": "other", "name": "deploy"}).pipeline_id != first
    scheduled = fake.start_pipeline(SHA, "main")
    # Without pipeline_id the status lands in the newest pipeline and the first one stays pending.
    assert statuses.create({"state": "running", "ref": "main", "name": "deploy"}).pipeline_id == scheduled
    pinned = statuses.create({"state": "success", "ref": "main", "name": "deploy", "pipeline_id": first})
    assert pinned.pipeline_id == first
    jobs = {p["id"]: p["jobs"] for p in fake.pipelines(sha=SHA, ref="main")}
    assert jobs == {first: {"deploy": "success"}, scheduled: {"deploy": "running"}}
    assert [p["source"] for p in fake.pipelines(ref="main")] == ["external", "schedule"]


def test_a_pipeline_id_of_another_commit_or_a_deleted_pipeline_is_404(
    fake: FakeGitLab, gl: gitlab.Gitlab
) -> None:
    other = fake.start_pipeline(SHA2, "main")
    mine = commit(gl).statuses.create({"state": "pending", "ref": "main"}).pipeline_id
    fake.delete_pipeline(mine)
    for pipeline_id in (other, mine, 999_999):
        with pytest.raises(GitlabCreateError) as excinfo:
            commit(gl).statuses.create({"state": "running", "ref": "main", "pipeline_id": pipeline_id})
        assert (excinfo.value.response_code, excinfo.value.error_message) == (
            404,
            "404 Pipeline for pipeline_id, sha and ref Not Found",
        )
    with pytest.raises(GitlabCreateError) as excinfo:
        commit(gl).statuses.create({"state": "running", "ref": "main", "pipeline_id": "first"})
    assert (excinfo.value.response_code, excinfo.value.error_message) == (400, "pipeline_id is invalid")


def test_the_latest_status_is_kept_per_name_and_pipeline(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    statuses = commit(gl).statuses
    first = statuses.create({"state": "success", "ref": "main", "name": "deploy"}).pipeline_id
    second = fake.start_pipeline(SHA, "main")
    statuses.create({"state": "failed", "ref": "main", "name": "deploy"})
    statuses.create({"state": "running", "ref": "main", "name": "deploy"})  # retries the failed one
    latest = sorted((s.pipeline_id, s.status) for s in statuses.list(get_all=True))
    assert latest == [(first, "success"), (second, "running")]
    assert [s.status for s in statuses.list(get_all=True, pipeline_id=second, all=True)] == [
        "failed",
        "running",
    ]


def test_a_protected_ref_without_update_pipeline_is_403(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    fake.protected_refs.add("main")
    with pytest.raises(GitlabCreateError) as excinfo:
        commit(gl).statuses.create({"state": "running", "ref": "main"})
    assert (excinfo.value.response_code, excinfo.value.error_message) == (403, "403 Forbidden")
    assert fake.statuses() == []
    assert commit(gl).statuses.create({"state": "running", "ref": "feature"}).status == "running"


@pytest.mark.parametrize(
    ("target_url", "problems"),
    [
        ("invalid url", ["is blocked: Only allowed schemes are http, https"]),
        ("git://example.com", ["is blocked: Only allowed schemes are http, https"]),
        ("https://example.com/a%0Ab", ["is blocked: URI is invalid"]),
        ("https://-bad.example/", ["is blocked: Hostname or IP address invalid"]),
        ("https://x.example/" + "a" * 238, ["is too long (maximum is 255 characters)"]),
        (
            "ftp://x.example/" + "a" * 240,
            ["is blocked: Only allowed schemes are http, https", "is too long (maximum is 255 characters)"],
        ),
    ],
)
def test_target_url_is_an_http_url_of_at_most_255_characters(
    fake: FakeGitLab, gl: gitlab.Gitlab, target_url: str, problems: list[str]
) -> None:
    with pytest.raises(GitlabCreateError) as excinfo:
        commit(gl).statuses.create({"state": "pending", "ref": "main", "target_url": target_url})
    message: Any = excinfo.value.error_message  # a validation error's message is an object
    assert (excinfo.value.response_code, message) == (400, {"target_url": problems})
    ok = "https://x.example/" + "a" * 237
    assert commit(gl).statuses.create({"state": "pending", "ref": "main", "target_url": ok}).target_url == ok


# --------------------------------------------------------------------------- faults and retries


def test_503s_are_retried_with_retry_transient_errors(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    fake.fail_next(2, 503)
    commit(gl).statuses.create({"state": "success"})
    assert [r["status"] for r in status_posts(fake)] == [503, 503, 201]
    assert [r["fault"] for r in status_posts(fake)] == ["fail", "fail", None]
    assert len(fake.statuses()) == 1
    assert fake.pending_faults == 0


def test_503_without_retry_transient_errors_raises(fake: FakeGitLab) -> None:
    fake.fail_next(1, 503)
    with client(fake, retry_transient_errors=False) as plain, pytest.raises(GitlabCreateError) as excinfo:
        commit(plain).statuses.create({"state": "success"})
    assert excinfo.value.response_code == 503
    assert excinfo.value.error_message == "503 Service Unavailable"
    assert fake.statuses() == []


def test_429_retry_after_is_obeyed_even_without_retry_transient_errors(fake: FakeGitLab) -> None:
    fake.fail_next(1, 429, headers={"Retry-After": "1"})
    with client(fake, retry_transient_errors=False) as plain:
        started = time.monotonic()
        commit(plain).statuses.create({"state": "success"})
        elapsed = time.monotonic() - started
    assert elapsed >= 0.95
    assert [r["status"] for r in status_posts(fake)] == [429, 201]
    assert len(fake.statuses()) == 1


def test_canned_body_and_headers(fake: FakeGitLab) -> None:
    fake.fail_next(1, 502, body="<html>bad gateway</html>", headers={"X-Why": "test"})
    response = requests.post(
        f"{fake.url}/api/v4/projects/42/statuses/{SHA}",
        headers={"PRIVATE-TOKEN": "anything"},  # canned answers come before auth, like a proxy's
        json={"state": "success"},
        timeout=5,
    )
    assert (response.status_code, response.text, response.headers["X-Why"]) == (
        502,
        "<html>bad gateway</html>",
        "test",
    )


def test_connection_reset_is_retried_with_retry_transient_errors(fake: FakeGitLab, gl: gitlab.Gitlab) -> None:
    fake.reset_next(1)
    commit(gl).statuses.create({"state": "success"})
    assert [r["status"] for r in status_posts(fake)] == [None, 201]
    assert len(fake.statuses()) == 1


def test_connection_reset_without_retry_is_a_raw_requests_error(fake: FakeGitLab) -> None:
    fake.reset_next(1)
    with (
        client(fake, retry_transient_errors=False) as plain,
        pytest.raises(requests.exceptions.ConnectionError),
    ):
        commit(plain).statuses.create({"state": "success"})
    assert fake.statuses() == []


def test_timeout_retry_duplicates_an_applied_post(fake: FakeGitLab) -> None:
    """The server applied the POST but answered late: python-gitlab's retry posts it again."""
    fake.stall_next(1, 1.5)
    with client(fake, timeout=0.5) as impatient:
        impatient_commit = commit(impatient)
        impatient_commit.statuses.create({"state": "success", "ref": "main"})
        assert [s["state"] for s in fake.statuses()] == ["success", "success"]  # duplicated
        fake.stall_next(1, 1.5)
        with pytest.raises(GitlabCreateError, match="via :run from :running"):
            impatient_commit.statuses.create({"state": "running", "ref": "main"})
    assert [s["state"] for s in fake.statuses()] == ["success", "success", "running"]


def test_stall_without_processing_then_retry_records_once(fake: FakeGitLab) -> None:
    fake.stall_next(1, 0.8, process=False)
    with client(fake, timeout=0.3) as impatient:
        commit(impatient).statuses.create({"state": "running", "ref": "main"})
    assert [s["state"] for s in fake.statuses()] == ["running"]


def test_stopped_server_refuses_connections(fake: FakeGitLab) -> None:
    url = fake.url
    fake.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{url}/api/v4/version", timeout=2)
    fake.stop()  # idempotent


# --------------------------------------------------------------------------- projects and branches


def test_project_get(gl: gitlab.Gitlab, fake: FakeGitLab) -> None:
    project = gl.projects.get(PROJECT)
    assert (project.id, project.path_with_namespace, project.default_branch) == (PROJECT_ID, PROJECT, "main")
    assert project.web_url == f"{fake.url}/{PROJECT}"
    assert gl.projects.get(PROJECT_ID).path_with_namespace == PROJECT
    with pytest.raises(GitlabGetError) as excinfo:
        gl.projects.get("tools/missing")
    assert (excinfo.value.response_code, excinfo.value.error_message) == (404, "404 Project Not Found")


def test_branch_heads(gl: gitlab.Gitlab, fake: FakeGitLab) -> None:
    fake.branch_heads.update({"main": SHA, "feature/x": SHA2})
    project = gl.projects.get(PROJECT, lazy=True)
    assert project.branches.get("main").commit["id"] == SHA
    assert project.branches.get("feature/x").commit["id"] == SHA2
    with pytest.raises(GitlabGetError) as excinfo:
        project.branches.get("gone")
    assert (excinfo.value.response_code, excinfo.value.error_message) == (404, "404 Branch Not Found")


# --------------------------------------------------------------------------- hooks


def test_hooks_create_update_list_delete(gl: gitlab.Gitlab, fake: FakeGitLab) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    hook = project.hooks.create(
        {
            "url": "https://deploy.example.com/hooks/gitlab",
            "push_events": True,
            "push_events_branch_filter": "main",
            "branch_filter_strategy": "wildcard",
            "enable_ssl_verification": True,
            "token": "s3cret",
            "signing_token": SIGNING_TOKEN,
        }
    )
    assert hook.token_present is True
    assert hook.signing_token_present is True
    assert "token" not in hook.attributes
    assert "signing_token" not in hook.attributes
    assert hook.tag_push_events is False
    assert hook.merge_requests_events is False
    assert fake.hooks[0]["token"] == "s3cret"  # stored, inspectable, never returned

    hook.push_events_branch_filter = "release"
    hook.tag_push_events = True
    hook.save()
    assert fake.hooks[0]["push_events_branch_filter"] == "release"
    assert fake.hooks[0]["tag_push_events"] is True
    assert fake.hooks[0]["token"] == "s3cret"  # untouched by an update that omits it

    (listed,) = project.hooks.list(get_all=True)
    assert listed.id == hook.id
    assert listed.url == "https://deploy.example.com/hooks/gitlab"
    assert project.hooks.get(hook.id).push_events_branch_filter == "release"

    hook.delete()
    assert fake.hooks == []
    assert project.hooks.list(get_all=True) == []
    with pytest.raises(GitlabGetError) as excinfo:
        project.hooks.get(hook.id)
    assert excinfo.value.response_code == 404


def test_hook_defaults_and_validation(gl: gitlab.Gitlab) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    hook = project.hooks.create({"url": "https://deploy.example.com/hook"})
    assert (hook.push_events, hook.enable_ssl_verification, hook.branch_filter_strategy) == (
        True,
        True,
        "wildcard",
    )
    assert (hook.token_present, hook.signing_token_present) == (False, False)
    with pytest.raises(GitlabCreateError) as excinfo:
        project.hooks.create({"url": "ftp://example.com/hook"})
    assert (excinfo.value.response_code, excinfo.value.error_message) == (422, "Invalid url given")
    with pytest.raises(GitlabCreateError) as excinfo:
        project.hooks.create({"url": "https://example.com/hook", "branch_filter_strategy": "glob"})
    assert excinfo.value.response_code == 400


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://127.8.9.10/hook",
        "http://localhost:8000/hook",
        "http://app.localhost/hook",
        "http://0.0.0.0/hook",
        "http://10.1.2.3/hook",
        "http://172.20.0.5:8000/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest",
        "http://100.64.0.1/hook",
        "http://[::1]:8000/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
    ],
)
def test_local_and_private_hook_urls_are_refused_unless_the_admin_allows_them(
    gl: gitlab.Gitlab, fake: FakeGitLab, url: str
) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    with pytest.raises(GitlabCreateError) as excinfo:
        project.hooks.create({"url": url})
    assert (excinfo.value.response_code, excinfo.value.error_message) == (422, "Invalid url given")
    assert fake.hooks == []

    fake.allow_local_requests_from_web_hooks_and_services = True
    assert project.hooks.create({"url": url}).url == url


def test_public_addresses_pass_and_an_update_revalidates_the_url(gl: gitlab.Gitlab, fake: FakeGitLab) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    for url in ("http://8.8.8.8/hook", "http://172.32.0.1/hook", "https://[2001:db8::1]/hook"):
        assert project.hooks.create({"url": url}).url == url
    hook = project.hooks.create({"url": "https://deploy.example.com/hook", "token": "s3cret"})

    with pytest.raises(GitlabUpdateError) as excinfo:
        project.hooks.update(hook.id, {"url": "http://127.0.0.1/hook"})
    assert (excinfo.value.response_code, excinfo.value.error_message) == (422, "Invalid url given")
    assert fake.hooks[-1]["url"] == "https://deploy.example.com/hook"  # nothing stored

    project.hooks.update(hook.id, {"url": "https://moved.example.com/hook"})
    assert fake.hooks[-1]["token"] is None  # a new URL drops the secret token unless one is sent with it


@pytest.mark.parametrize(
    ("strategy", "pattern", "valid"),
    [
        ("wildcard", "main", True),
        ("wildcard", "release/*", True),
        ("wildcard", "feature/**", True),
        ("wildcard", "", True),
        ("wildcard", "main..x", False),
        ("wildcard", "ma in", False),
        ("wildcard", "main~1", False),
        ("wildcard", "refs/heads/main", False),
        ("wildcard", "-main", False),
        ("wildcard", "HEAD", False),
        ("wildcard", "a/.hidden", False),
        ("wildcard", "topic.lock", False),
        ("wildcard", "x@{1}", False),
        ("wildcard", "main/", False),
        ("wildcard", "a" * 4001, False),
        ("regex", "^(?:main|release/1\\.x)$", True),
        ("regex", "(unclosed", False),
        ("regex", "^(?!main)", False),  # lookahead: not RE2
        ("regex", "(a)\\1", False),  # backreference: not RE2
        ("all_branches", "anything (ignored)", True),
    ],
)
def test_branch_filters_are_validated_per_strategy(
    gl: gitlab.Gitlab, fake: FakeGitLab, strategy: str, pattern: str, valid: bool
) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    data = {"url": "https://deploy.example.com/hook", "push_events_branch_filter": pattern}
    data["branch_filter_strategy"] = strategy
    if valid:
        hook = project.hooks.create(data)
        assert hook.push_events_branch_filter == (None if strategy == "all_branches" else pattern)
        return
    with pytest.raises(GitlabCreateError) as excinfo:
        project.hooks.create(data)
    assert (excinfo.value.response_code, excinfo.value.error_message) == (422, "Invalid branch filter given")
    assert fake.hooks == []


def test_a_wildcard_filter_is_squished_and_checked_after_a_strategy_change(gl: gitlab.Gitlab) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    hook = project.hooks.create(
        {
            "url": "https://deploy.example.com/hook",
            "push_events_branch_filter": "^ma(in)$",
            "branch_filter_strategy": "regex",
        }
    )
    with pytest.raises(GitlabUpdateError) as excinfo:  # the stored regex is not a branch name
        project.hooks.update(hook.id, {"url": hook.url, "branch_filter_strategy": "wildcard"})
    assert excinfo.value.error_message == "Invalid branch filter given"
    updated = project.hooks.update(
        hook.id,
        {"url": hook.url, "push_events_branch_filter": "  main  ", "branch_filter_strategy": "wildcard"},
    )
    assert updated["push_events_branch_filter"] == "main"


@pytest.mark.parametrize(
    "token",
    [
        "not-whsec",
        "whsec_" + base64.b64encode(b"k" * 24).decode(),  # Standard Webhooks allows it; GitLab does not
        "whsec_" + base64.b64encode(b"k" * 64).decode(),
        "whsec_" + base64.b64encode(b"k" * 32).decode().rstrip("="),
        "whsec_" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(),
    ],
)
def test_a_signing_token_must_be_whsec_and_32_bytes(gl: gitlab.Gitlab, fake: FakeGitLab, token: str) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    with pytest.raises(GitlabCreateError) as excinfo:
        project.hooks.create({"url": "https://example.com/hook", "signing_token": token})
    assert excinfo.value.response_code == 422
    assert list(excinfo.value.error_message) == ["signing_token"]
    assert fake.hooks == []


def test_an_empty_signing_token_removes_it(gl: gitlab.Gitlab, fake: FakeGitLab) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    hook = project.hooks.create(
        {"url": "https://example.com/hook", "token": "s3cret", "signing_token": SIGNING_TOKEN}
    )

    cleared = project.hooks.update(hook.id, {"url": hook.url, "signing_token": ""})

    assert (cleared["signing_token_present"], cleared["token_present"]) == (False, True)
    assert fake.hooks[0]["signing_token"] is None


def test_a_gitlab_with_the_flag_off_ignores_the_signing_token(gl: gitlab.Gitlab, fake: FakeGitLab) -> None:
    fake.signing_support = "flag_off"
    project = gl.projects.get(PROJECT, lazy=True)

    hook = project.hooks.create(
        {"url": "https://example.com/hook", "token": "s3cret", "signing_token": "junk"}
    )

    assert (hook.token_present, hook.signing_token_present) == (True, False)
    assert fake.hooks[0]["signing_token"] is None


def test_a_gitlab_before_19_knows_neither_the_field_nor_its_presence(
    gl: gitlab.Gitlab, fake: FakeGitLab
) -> None:
    fake.signing_support = "unsupported"
    project = gl.projects.get(PROJECT, lazy=True)

    hook = project.hooks.create(
        {"url": "https://example.com/hook", "token": "s3cret", "signing_token": SIGNING_TOKEN}
    )

    assert "signing_token_present" not in hook.attributes and "token_present" not in hook.attributes
    assert (fake.hooks[0]["token"], fake.hooks[0]["signing_token"]) == ("s3cret", None)


def test_list_pagination_follows_link_headers(gl: gitlab.Gitlab, fake: FakeGitLab) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    for i in range(25):
        project.hooks.create({"url": f"https://example.com/hook/{i}"})
    assert len(project.hooks.list(get_all=True)) == 25
    page3 = project.hooks.list(per_page=10, page=3)
    assert [h.url for h in page3] == [f"https://example.com/hook/{i}" for i in range(20, 25)]
    lazy = project.hooks.list(iterator=True, per_page=10)
    assert (lazy.total, lazy.total_pages) == (25, 3)
    assert len(list(lazy)) == 25


# --------------------------------------------------------------------------- badges and deployments


def test_badges(gl: gitlab.Gitlab, fake: FakeGitLab) -> None:
    fake.branch_heads["main"] = SHA
    project = gl.projects.get(PROJECT, lazy=True)
    badge = project.badges.create(
        {
            "link_url": "https://deploy.example.com/%{project_path}",
            "image_url": "https://b.example/%{commit_sha}",
        }
    )
    assert badge.rendered_link_url == f"https://deploy.example.com/{PROJECT}"
    assert badge.rendered_image_url == f"https://b.example/{SHA}"
    assert [b.id for b in project.badges.list(get_all=True)] == [badge.id]
    assert fake.badges[0]["link_url"] == "https://deploy.example.com/%{project_path}"
    with pytest.raises(AttributeError, match="Missing attributes: image_url"):  # checked client-side
        project.badges.create({"link_url": "https://x.example"})
    response = requests.post(
        f"{fake.url}/api/v4/projects/{PROJECT_ID}/badges",
        headers={"PRIVATE-TOKEN": fake.token},
        json={"link_url": "https://x.example"},
        timeout=5,
    )
    assert (response.status_code, response.json()) == (400, {"error": "image_url is missing"})


def deployment_params(**changes: Any) -> dict[str, Any]:
    return {
        "environment": "production",
        "sha": SHA,
        "ref": "main",
        "tag": False,
        "status": "running",
        **changes,
    }


def test_deployments(gl: gitlab.Gitlab, fake: FakeGitLab) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    deployment = project.deployments.create(deployment_params())
    assert (deployment.status, deployment.environment["name"], deployment.iid) == ("running", "production", 1)
    deployment.status = "success"
    deployment.save()
    assert fake.deployments[0]["status"] == "success"
    assert fake.deployments[0]["history"] == ["running", "success"]
    assert project.deployments.get(deployment.id).status == "success"
    with pytest.raises(GitlabCreateError) as excinfo:
        project.deployments.create(deployment_params(status="created"))
    assert (excinfo.value.response_code, excinfo.value.error_message) == (
        400,
        "status does not have a valid value",
    )


def test_a_deployment_names_an_existing_ref_and_commit(gl: gitlab.Gitlab, fake: FakeGitLab) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    for changes, problem in (
        ({"ref": "gone"}, {"ref": ["The branch or tag does not exist"]}),
        ({"sha": SHA3}, {"sha": ["The commit does not exist"]}),
    ):
        with pytest.raises(GitlabCreateError) as excinfo:
            project.deployments.create(deployment_params(**changes))
        message: Any = excinfo.value.error_message
        assert (excinfo.value.response_code, message) == (400, problem)
    fake.add_commit(SHA3, tags=["v1.2.0"])
    tagged = project.deployments.create(deployment_params(sha=SHA3, ref="v1.2.0", tag=True))
    assert tagged.ref == "v1.2.0" and fake.deployments[-1]["tag"] is True


@pytest.mark.parametrize(
    ("history", "refused"),
    [
        (["running", "running"], "run"),
        (["success", "success"], "succeed"),
        (["failed", "failed"], "drop"),
        (["canceled", "canceled"], "cancel"),
        (["success", "running"], "run"),
        (["running", "failed", "success", "running"], "run"),
    ],
)
def test_a_deployment_moves_only_as_gitlabs_state_machine_allows(
    gl: gitlab.Gitlab, fake: FakeGitLab, history: list[str], refused: str
) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    deployment = project.deployments.create(deployment_params(status=history[0]))
    for status in history[1:-1]:
        deployment.status = status
        deployment.save()
    deployment.status = history[-1]
    with pytest.raises(GitlabUpdateError) as excinfo:
        deployment.save()
    message: Any = excinfo.value.error_message
    assert (excinfo.value.response_code, message) == (400, {"status": [f'cannot transition via "{refused}"']})
    assert fake.deployments[0]["history"] == history[:-1]


def test_deployments_are_listed_by_environment_and_status_in_order(gl: gitlab.Gitlab) -> None:
    project = gl.projects.get(PROJECT, lazy=True)
    ids = [project.deployments.create(deployment_params(environment=env)).id for env in ("a", "b", "a")]
    newest_first = project.deployments.list(environment="a", order_by="id", sort="desc", get_all=True)
    assert [d.id for d in newest_first] == [ids[2], ids[0]]
    assert project.deployments.list(environment="a", status="success", get_all=True) == []
    assert project.deployments.list(environment="none", get_all=True) == []


def test_a_create_that_landed_late_is_duplicated_by_a_client_retry(fake: FakeGitLab) -> None:
    """Why creating a GitLab deployment must never be retried blind: the first try counted."""
    fake.stall_next(1, 1.5, route="deployments")
    fake.stall_next(1, 1.5)  # a status fault stays queued for the statuses route
    with client(fake, timeout=0.5) as impatient:
        impatient.projects.get(PROJECT, lazy=True).deployments.create(deployment_params())
    assert len(fake.deployments) == 2
    assert fake.pending_faults == 1


# --------------------------------------------------------------------------- webhook samples


@pytest.mark.parametrize(
    ("name", "kind", "event"),
    [("push_hook", "push", "Push Hook"), ("tag_push_hook", "tag_push", "Tag Push Hook")],
)
def test_documented_webhook_samples(name: str, kind: str, event: str) -> None:
    payload = json.loads((SAMPLES / f"{name}.json").read_text())
    headers = json.loads((SAMPLES / f"{name}.headers.json").read_text())
    assert payload["object_kind"] == kind
    assert len(payload["checkout_sha"]) == 40
    assert headers["X-Gitlab-Event"] == event
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("GitLab/")
    assert {"X-Gitlab-Webhook-UUID", "X-Gitlab-Instance", "X-Gitlab-Event-UUID", "Idempotency-Key"} <= set(
        headers
    )
    assert not {h.lower() for h in headers} & {"x-gitlab-token", "webhook-signature", "webhook-id"}
