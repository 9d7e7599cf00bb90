"""The GitLab forge against the fake GitLab over real HTTP, with python-gitlab unmodified."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakegitlab import FakeGitLab
from workers.config import GitLabSettings
from workers.forge import (
    CommitStatus,
    ForgeRejected,
    GitLabForge,
    NullForge,
    StatusState,
    TransientForgeError,
)
from workers.secrets import Secret

SHA = "1f" * 20
TOKEN = "forge-token-canary-0c4d"


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab({"tools/sample-app": 42}, token=TOKEN) as fake:
        yield fake


def forge(fake: FakeGitLab, token: str = TOKEN, timeout: float = 2.0) -> GitLabForge:
    return GitLabForge(GitLabSettings(fake.url, Secret(token), timeout), max_retries=1)


def status(state: StatusState, project: str = "tools/sample-app") -> CommitStatus:
    return CommitStatus(
        project, SHA, state, "main", "deploy/production", "http://pushdeploy.test/deployments/1", "Deploying"
    )


def test_posts_a_status_with_name_ref_and_link(gitlab: FakeGitLab) -> None:
    assert forge(gitlab).post_status(status(StatusState.RUNNING)) == "posted"
    [posted] = gitlab.statuses(sha=SHA)
    assert (posted["state"], posted["name"], posted["ref"]) == ("running", "deploy/production", "main")
    assert posted["target_url"] == "http://pushdeploy.test/deployments/1"


def test_a_state_already_posted_counts_as_delivered(gitlab: FakeGitLab) -> None:
    client = forge(gitlab)
    client.post_status(status(StatusState.RUNNING))
    assert client.post_status(status(StatusState.RUNNING)) == "already"
    assert len(gitlab.statuses(sha=SHA)) == 1


def test_a_refused_token_is_a_configuration_problem_with_a_hint(gitlab: FakeGitLab) -> None:
    with pytest.raises(ForgeRejected) as caught:
        forge(gitlab, token="wrong-token-canary").post_status(status(StatusState.PENDING))
    assert caught.value.status_code == 401
    assert "api scope" in str(caught.value) and "Developer" in str(caught.value)
    assert "wrong-token-canary" not in str(caught.value)


def test_an_unknown_project_is_a_configuration_problem(gitlab: FakeGitLab) -> None:
    with pytest.raises(ForgeRejected) as caught:
        forge(gitlab).post_status(status(StatusState.PENDING, project="tools/missing"))
    assert caught.value.status_code == 404


@pytest.mark.parametrize("fault", ["5xx", "reset", "stall"])
def test_outages_are_transient(gitlab: FakeGitLab, fault: str) -> None:
    if fault == "5xx":
        gitlab.fail_next(5, 503)
    elif fault == "reset":
        gitlab.reset_next(5)
    else:
        gitlab.stall_next(5, 3.0, process=False)
    with pytest.raises(TransientForgeError) as caught:
        forge(gitlab, timeout=1.0).post_status(status(StatusState.PENDING))
    assert TOKEN not in str(caught.value)


def test_transient_errors_are_retried_inside_the_call(gitlab: FakeGitLab) -> None:
    gitlab.fail_next(1, 502)
    assert forge(gitlab).post_status(status(StatusState.PENDING)) == "posted"
    assert [s["state"] for s in gitlab.statuses(sha=SHA)] == ["pending"]


def test_without_gitlab_statuses_are_only_recorded() -> None:
    assert NullForge().post_status(status(StatusState.SUCCESS)) == "recorded"
