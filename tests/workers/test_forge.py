"""The GitLab forge against the fake GitLab over real HTTP, with python-gitlab unmodified."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakegitlab import FakeGitLab
from workers.config import GitLabSettings
from workers.forge import (
    CommitStatus,
    DeploymentUpdate,
    Forge,
    ForgeRejected,
    GitLabForge,
    NullForge,
    Outcome,
    PipelineGone,
    Posted,
    StatusState,
    TransientForgeError,
)
from workers.secrets import Secret

SHA = "1f" * 20
TOKEN = "forge-token-canary-0c4d"


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab({"tools/sample-app": 42}, token=TOKEN) as fake:
        fake.add_commit(SHA, "main", tags=["v1.2.0"])
        yield fake


def forge(fake: FakeGitLab, token: str = TOKEN, timeout: float = 2.0) -> GitLabForge:
    return GitLabForge(GitLabSettings(fake.url, Secret(token), timeout), max_retries=1)


def status(state: StatusState, project: str = "tools/sample-app") -> CommitStatus:
    return CommitStatus(
        project, SHA, state, "main", "deploy/production", "http://pushdeploy.test/deployments/1", "Deploying"
    )


def test_posts_a_status_with_name_ref_and_link(gitlab: FakeGitLab) -> None:
    assert forge(gitlab).post_status(status(StatusState.RUNNING)).outcome == "posted"
    [posted] = gitlab.statuses(sha=SHA)
    assert (posted["state"], posted["name"], posted["ref"]) == ("running", "deploy/production", "main")
    assert posted["target_url"] == "http://pushdeploy.test/deployments/1"


def test_a_state_already_posted_counts_as_delivered(gitlab: FakeGitLab) -> None:
    client = forge(gitlab)
    client.post_status(status(StatusState.RUNNING))
    assert client.post_status(status(StatusState.RUNNING)).outcome == "already"
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
    assert forge(gitlab).post_status(status(StatusState.PENDING)).outcome == "posted"
    assert [s["state"] for s in gitlab.statuses(sha=SHA)] == ["pending"]


def test_without_gitlab_statuses_are_only_recorded() -> None:
    assert NullForge().post_status(status(StatusState.SUCCESS)) == Posted("recorded")


def test_a_status_says_its_pipeline_and_a_pinned_one_stays_there(gitlab: FakeGitLab) -> None:
    client = forge(gitlab)
    first = client.post_status(status(StatusState.PENDING)).pipeline_id
    scheduled = gitlab.start_pipeline(SHA, "main")
    assert client.post_status(status(StatusState.RUNNING), pipeline_id=first) == Posted("posted", first)
    assert {p["id"]: p["jobs"] for p in gitlab.pipelines()} == {
        first: {"deploy/production": "running"},
        scheduled: {},
    }


def test_a_state_that_landed_unseen_still_says_its_pipeline(gitlab: FakeGitLab) -> None:
    client = forge(gitlab)
    first = client.post_status(status(StatusState.RUNNING)).pipeline_id
    assert client.post_status(status(StatusState.RUNNING)) == Posted("already", first)
    client.post_status(status(StatusState.SUCCESS), pipeline_id=first)
    assert client.post_status(status(StatusState.SUCCESS), retrying=True) == Posted("already", first)


def test_a_deleted_pinned_pipeline_is_said_apart_from_other_404s(gitlab: FakeGitLab) -> None:
    client = forge(gitlab)
    first = client.post_status(status(StatusState.PENDING)).pipeline_id
    assert first is not None
    gitlab.delete_pipeline(first)
    with pytest.raises(PipelineGone) as caught:
        client.post_status(status(StatusState.RUNNING), pipeline_id=first)
    assert (caught.value.pipeline_id, caught.value.status_code) == (first, 404)


def test_a_403_on_a_protected_branch_is_a_refusal(gitlab: FakeGitLab) -> None:
    gitlab.protected_refs.add("main")
    with pytest.raises(ForgeRejected) as caught:
        forge(gitlab).post_status(status(StatusState.RUNNING))
    assert caught.value.status_code == 403 and "Maintainer" in str(caught.value)


def update(state: str, ref: str = "main", tag: bool = False) -> DeploymentUpdate:
    return DeploymentUpdate("tools/sample-app", SHA, ref, "production", state, tag=tag)


def test_a_deployment_create_that_timed_out_is_not_made_twice_and_is_found(gitlab: FakeGitLab) -> None:
    client = forge(gitlab, timeout=0.5)
    mark = client.last_deployment_id(update("running"))
    gitlab.stall_next(1, 1.5, route="deployments")
    with pytest.raises(TransientForgeError):
        client.post_deployment(update("running"), "")
    [made] = gitlab.deployments
    assert client.find_deployment(update("running"), mark) == str(made["id"])
    assert client.find_deployment(update("running"), made["id"]) == ""
    assert client.find_deployment(update("running", ref="other"), mark) == ""


def test_a_final_update_that_landed_late_counts_as_done(gitlab: FakeGitLab) -> None:
    client = forge(gitlab, timeout=0.5)
    made = client.post_deployment(update("running"), "")
    gitlab.stall_next(1, 1.5, route="deployments")
    assert client.post_deployment(update("success"), made) == made  # its retry got GitLab's 400
    assert gitlab.deployments[0]["history"] == ["running", "success"]
    with pytest.raises(ForgeRejected) as caught:
        client.post_deployment(update("running"), made)  # a real refusal stays one
    assert caught.value.status_code == 400


def test_a_tag_is_deployed_as_a_tag(gitlab: FakeGitLab) -> None:
    forge(gitlab).post_deployment(update("running", ref="v1.2.0", tag=True), "")
    assert [(d["ref"], d["tag"]) for d in gitlab.deployments] == [("v1.2.0", True)]


# -- the contract both forges keep ------------------------------------------------------------


@pytest.fixture(params=["gitlab", "none"])
def any_forge(request: pytest.FixtureRequest, gitlab: FakeGitLab) -> Forge:
    """Each implementation the config can choose: GitLab's, or none without a [gitlab] section."""
    chosen: Forge = forge(gitlab) if request.param == "gitlab" else NullForge()
    return chosen


def test_every_forge_follows_the_protocol(any_forge: Forge) -> None:
    import inspect

    for name, member in inspect.getmembers(Forge, inspect.isfunction):
        if name.startswith("_"):
            continue
        theirs = getattr(any_forge, name)
        assert list(inspect.signature(theirs).parameters) == list(inspect.signature(member).parameters)[1:]
    assert isinstance(any_forge.name, str) and any_forge.name


def test_every_forge_answers_each_call_with_what_the_outbox_expects(any_forge: Forge) -> None:
    """Statuses are either posted or recorded; deployments get an id (or keep the one given)."""
    posted = any_forge.post_status(status(StatusState.RUNNING))
    assert posted.outcome in (Outcome.POSTED, Outcome.RECORDED)
    assert posted.pipeline_id is None or isinstance(posted.pipeline_id, int)
    update = DeploymentUpdate("tools/sample-app", SHA, "main", "production", "running")
    assert isinstance(any_forge.last_deployment_id(update), int)
    created = any_forge.post_deployment(update, "")
    assert isinstance(created, str)
    assert isinstance(any_forge.find_deployment(update, 0), str)
    head = any_forge.branch_head("tools/sample-app", "main")
    assert head is None or head == SHA
