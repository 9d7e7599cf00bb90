"""``gitlab-hook``: the project's webhook and badges on the fake GitLab, through python-gitlab over HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import gitlab
import pytest

from tests.fakegitlab import FakeGitLab, _HttpError
from tests.helpers import SECRET_TOKEN, SIGNING_TOKEN
from webhook.hook_report import describe
from workers.config import Settings
from workers.forge import ForgeRejected, TransientForgeError
from workers.gitlab_hooks import (
    OTHER_EVENTS,
    Action,
    HookReport,
    HookSetupError,
    TokenAction,
    branch_filter,
    diff,
    plan_token,
    setup_hook,
)

TOKEN = "gitlab-api-token-canary-93be"
PROJECT = "tools/sample-app"
HOOK_URL = "http://pushdeploy.test/hooks/gitlab/sample-app"
ROTATED_TOKEN = "hook-secret-rotated-canary-2d61"


class SigningRefused(FakeGitLab):
    """A GitLab that declares the field but refuses it: 400 naming signing_token, for the whole request."""

    def _hook_values(self, params: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        if "signing_token" in params:
            raise _HttpError(400, {"error": "signing_token does not have a valid value"})
        return super()._hook_values(params, creating=creating)


@pytest.fixture
def fake() -> Iterator[FakeGitLab]:
    with FakeGitLab({PROJECT: 42}, token=TOKEN) as server:
        yield server


def configured(make_settings: Callable[..., Settings], fake: FakeGitLab, **project: Any) -> Settings:
    return make_settings(gitlab={"url": fake.url, "token": TOKEN, "timeout": 2}, **project)


def two_environments(make_settings: Callable[..., Settings], fake: FakeGitLab, **project: Any) -> Settings:
    environments = {"production": {"branch": "main"}, "staging": {"branch": "release/1.x"}}
    return configured(
        make_settings, fake, branch=None, environment=None, environments=environments, **project
    )


def writes(fake: FakeGitLab) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["method"] in ("POST", "PUT", "DELETE")]


def api(fake: FakeGitLab) -> Any:
    return gitlab.Gitlab(fake.url, private_token=TOKEN).projects.get(PROJECT, lazy=True)


# -- creating, then running again ---------------------------------------------


def test_creates_the_hook_and_a_second_run_changes_nothing(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    settings = configured(make_settings, fake)

    first = setup_hook(settings, "sample-app")

    assert (first.action, first.secret_token, first.signing_token) == (Action.CREATED, "set", "set")
    [hook] = fake.hooks
    assert hook["url"] == HOOK_URL
    assert (hook["token"], hook["signing_token"]) == (SECRET_TOKEN, SIGNING_TOKEN)
    assert hook["push_events"] is True
    assert not [name for name in hook if name.endswith("_events") and name != "push_events" and hook[name]]
    assert (hook["push_events_branch_filter"], hook["branch_filter_strategy"]) == ("main", "wildcard")
    assert hook["enable_ssl_verification"] is True
    assert first.hook_id == hook["id"] and first.changed

    fake.clear()
    second = setup_hook(settings, "sample-app")

    assert second.action is Action.UNCHANGED and not second.changed
    assert (second.secret_token, second.signing_token) == (TokenAction.KEPT, TokenAction.KEPT)
    assert writes(fake) == []
    lines = describe(second)
    assert lines[0] == f"webhook unchanged on GitLab project {PROJECT} (hook {hook['id']})"
    assert any(
        "secret token: present on GitLab, not compared" in line and "--rotate-tokens" in line
        for line in lines
    )


def test_what_the_cli_prints_for_a_new_hook_holds_no_secret(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    lines = describe(setup_hook(configured(make_settings, fake), "sample-app"))

    assert lines[0].startswith(f"webhook created on GitLab project {PROJECT} (hook ")
    assert f"  url: {HOOK_URL}" in lines
    assert "  events: push (branch filter main, wildcard), nothing else" in lines
    assert "  secret token: set" in lines and "  signing token: set" in lines
    assert not [line for line in lines if SECRET_TOKEN in line or SIGNING_TOKEN in line or TOKEN in line]


def test_several_environments_filter_on_an_anchored_regex_of_their_branches(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    settings = two_environments(make_settings, fake)

    report = setup_hook(settings, "sample-app")

    [hook] = fake.hooks
    assert hook["branch_filter_strategy"] == "regex"
    pattern = hook["push_events_branch_filter"]
    assert pattern == r"^(?:main|release/1\.x)$"
    # GitLab searches with the pattern: only the two configured branches may match.
    assert [
        b for b in ("main", "release/1.x", "release/1yx", "main-old", "old/main") if re.search(pattern, b)
    ] == [
        "main",
        "release/1.x",
    ]
    assert report.branch_filter_strategy == "regex"
    assert setup_hook(settings, "sample-app").action is Action.UNCHANGED


def test_a_tags_environment_turns_tag_push_events_on_beside_the_branch_filter(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    environments = {"staging": {"branch": "main"}, "production": {"tags": "v*"}}
    settings = configured(make_settings, fake, branch=None, environment=None, environments=environments)

    setup_hook(settings, "sample-app")

    [hook] = fake.hooks
    assert (hook["push_events"], hook["tag_push_events"]) == (True, True)
    assert (hook["push_events_branch_filter"], hook["branch_filter_strategy"]) == ("main", "wildcard")
    assert setup_hook(settings, "sample-app").action is Action.UNCHANGED


def test_a_project_deploying_only_tags_takes_no_push_events(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    settings = configured(make_settings, fake, branch=None, tags="v*")

    setup_hook(settings, "sample-app")

    [hook] = fake.hooks
    assert (hook["push_events"], hook["tag_push_events"]) == (False, True)
    assert hook["branch_filter_strategy"] == "all_branches"
    again = setup_hook(settings, "sample-app")
    assert again.action is Action.UNCHANGED
    assert "  events: tag push, nothing else" in describe(again)


# -- updating a hook that drifted ---------------------------------------------


def test_a_drifted_hook_gets_only_the_fields_that_differ(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    other = api(fake).hooks.create({"url": "https://ci.example.com/hook", "merge_requests_events": True})
    drifted = api(fake).hooks.create(
        {
            "url": HOOK_URL,
            "token": SECRET_TOKEN,
            "signing_token": SIGNING_TOKEN,
            "tag_push_events": True,
            "merge_requests_events": True,
            "push_events_branch_filter": "*",
            "enable_ssl_verification": False,
        }
    )
    fake.clear()

    report = setup_hook(configured(make_settings, fake), "sample-app")

    assert (report.action, report.hook_id) == (Action.UPDATED, drifted.id)
    assert {c.name: (c.old, c.new) for c in report.changes} == {
        "tag_push_events": (True, False),
        "merge_requests_events": (True, False),
        "push_events_branch_filter": ("*", "main"),
        "enable_ssl_verification": (False, True),
    }
    [put] = writes(fake)
    assert put["method"] == "PUT" and put["path"].endswith(f"/hooks/{drifted.id}")
    assert set(json.loads(put["body"])) == {
        "url",
        "tag_push_events",
        "merge_requests_events",
        "push_events_branch_filter",
        "enable_ssl_verification",
    }
    assert "  changed push_events_branch_filter: '*' -> 'main'" in describe(report)
    assert api(fake).hooks.get(other.id).merge_requests_events is True  # someone else's hook: untouched
    assert setup_hook(configured(make_settings, fake), "sample-app").action is Action.UNCHANGED


def test_events_this_code_does_not_know_are_turned_off_too() -> None:
    current = {"url": HOOK_URL, "push_events": True, "new_shiny_events": True, "old_events": False}
    desired = {"url": HOOK_URL, "push_events": True}

    assert [(c.name, c.new) for c in diff(current, desired)] == [("new_shiny_events", False)]
    # A field this GitLab does not report is not compared (older GitLab would look changed forever).
    assert diff({"url": HOOK_URL}, {"url": HOOK_URL, "branch_filter_strategy": "wildcard"}) == []
    assert diff({"push_events_branch_filter": None}, {"push_events_branch_filter": ""}) == []


def test_rotated_tokens_are_only_sent_when_asked(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    setup_hook(configured(make_settings, fake), "sample-app")
    rotated = configured(make_settings, fake, secret_token=[ROTATED_TOKEN, SECRET_TOKEN])

    kept = setup_hook(rotated, "sample-app")
    assert (kept.action, kept.secret_token) == (Action.UNCHANGED, TokenAction.KEPT)
    assert fake.hooks[0]["token"] == SECRET_TOKEN  # GitLab cannot show it: presence is all we compare

    sent = setup_hook(rotated, "sample-app", rotate_tokens=True)
    assert (sent.secret_token, sent.signing_token) == (TokenAction.RESENT, TokenAction.RESENT)
    assert fake.hooks[0]["token"] == ROTATED_TOKEN
    assert (
        "  secret token: sent again (GitLab never shows tokens; it now holds the configured one)"
        in describe(sent)
    )


def test_a_token_the_project_no_longer_has_is_removed(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    setup_hook(configured(make_settings, fake), "sample-app")

    report = setup_hook(configured(make_settings, fake, secret_token=None), "sample-app")

    assert (report.action, report.secret_token) == (Action.UPDATED, TokenAction.CLEARED)
    assert api(fake).hooks.get(report.hook_id).token_present is False
    assert (
        setup_hook(configured(make_settings, fake, secret_token=None), "sample-app").action
        is Action.UNCHANGED
    )


def test_other_hooks_for_this_project_are_pointed_out(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    stale = api(fake).hooks.create({"url": "https://old.example.com/hooks/gitlab/sample-app"})
    setup_hook(configured(make_settings, fake), "sample-app")
    duplicate = api(fake).hooks.create({"url": HOOK_URL})

    notes = setup_hook(configured(make_settings, fake), "sample-app").notes

    assert any(f"hook {stale.id} still delivers to https://old.example.com/" in note for note in notes)
    assert any(f"2 hooks with this URL (the others: {duplicate.id})" in note for note in notes)


def test_token_presence_follows_the_plan() -> None:
    assert plan_token("t", present=False, rotate=False) is TokenAction.SET
    assert plan_token("t", present=True, rotate=False) is TokenAction.KEPT
    assert plan_token("t", present=True, rotate=True) is TokenAction.RESENT
    assert plan_token("t", present=None, rotate=False) is TokenAction.RESENT
    assert plan_token(None, present=True, rotate=False) is TokenAction.CLEARED
    assert plan_token(None, present=False, rotate=True) is TokenAction.NONE


def test_branch_filters() -> None:
    assert branch_filter(["main"]) == ("main", "wildcard")
    assert branch_filter(["main", "main"]) == ("main", "wildcard")
    assert branch_filter(["stage+1", "main"]) == (r"^(?:main|stage\+1)$", "regex")


# -- GitLabs that do not sign -------------------------------------------------


def assert_refusal_explained(report: HookReport, why: str) -> None:
    [problem] = report.problems
    assert problem.startswith(f"GitLab did not keep the signing token ({why}")
    for words in ("refuse every delivery with 401", "19.0", "webhook_signing_token", "remove signing_token"):
        assert words in problem
    assert SIGNING_TOKEN not in problem and SECRET_TOKEN not in problem
    assert "  signing token: NOT KEPT by GitLab" in "\n".join(describe(report))


def test_a_gitlab_refusing_the_signing_token_gets_the_hook_without_it_and_a_problem(
    make_settings: Callable[..., Settings],
) -> None:
    with SigningRefused({PROJECT: 42}, token=TOKEN) as fake:
        settings = configured(make_settings, fake)

        first = setup_hook(settings, "sample-app")

        assert (first.action, first.secret_token, first.signing_token) == (
            Action.CREATED,
            TokenAction.SET,
            TokenAction.NOT_KEPT,
        )
        [hook] = fake.hooks
        assert (hook["token"], hook["signing_token"]) == (SECRET_TOKEN, None)
        assert_refusal_explained(first, "it answered 400 to it: signing_token does not have a valid value")

        second = setup_hook(settings, "sample-app")  # tries once more, is refused, changes nothing
        assert (second.action, second.signing_token) == (Action.UNCHANGED, TokenAction.NOT_KEPT)
        assert second.problems and fake.hooks[0]["signing_token"] is None


def test_a_gitlab_before_19_drops_the_signing_token(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    fake.signing_support = "unsupported"
    settings = configured(make_settings, fake)

    first = setup_hook(settings, "sample-app")
    assert (first.action, first.signing_token) == (Action.CREATED, TokenAction.NOT_KEPT)
    assert_refusal_explained(first, "it dropped the signing token and reports no signing_token_present")

    fake.clear()
    second = setup_hook(settings, "sample-app")
    # It cannot say whether the hook has either token: both go again, which changes nothing we can see.
    assert (second.action, second.secret_token) == (Action.UNCHANGED, TokenAction.RESENT)
    assert [json.loads(w["body"]) for w in writes(fake)] == [
        {"url": HOOK_URL, "token": SECRET_TOKEN, "signing_token": SIGNING_TOKEN}
    ]
    assert second.problems and fake.hooks[0]["token"] == SECRET_TOKEN


def test_a_gitlab_with_the_flag_off_ignores_the_signing_token(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    fake.signing_support = "flag_off"

    report = setup_hook(configured(make_settings, fake), "sample-app")

    assert report.signing_token is TokenAction.NOT_KEPT
    assert_refusal_explained(
        report, "it ignored the signing token: its webhook_signing_token feature flag is off"
    )
    assert fake.hooks[0]["signing_token"] is None

    fake.signing_support = "enabled"  # the administrator turned the flag on: a second run sets it
    again = setup_hook(configured(make_settings, fake), "sample-app")
    assert (again.action, again.signing_token, again.problems) == (Action.UPDATED, TokenAction.SET, ())
    assert fake.hooks[0]["signing_token"] == SIGNING_TOKEN


def test_a_signing_only_project_on_a_gitlab_that_cannot_sign_is_told_to_add_a_secret_token(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    fake.signing_support = "unsupported"

    report = setup_hook(configured(make_settings, fake, secret_token=None), "sample-app")

    [problem] = report.problems
    assert "give the project a secret_token" in problem


def test_a_project_without_a_signing_token_has_no_problem_on_any_gitlab(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    fake.signing_support = "unsupported"

    report = setup_hook(configured(make_settings, fake, signing_token=None), "sample-app")

    assert (report.signing_token, report.problems) == (TokenAction.NONE, ())


@pytest.mark.parametrize("public_url", ["http://127.0.0.1:8000", "http://10.0.0.7", "http://localhost:8000"])
def test_a_local_url_gitlab_refuses_is_reported_in_its_words_without_blaming_the_version(
    make_settings: Callable[..., Settings], fake: FakeGitLab, public_url: str
) -> None:
    settings = make_settings(gitlab={"url": fake.url, "token": TOKEN}, server={"public_url": public_url})

    with pytest.raises(ForgeRejected) as caught:
        setup_hook(settings, "sample-app")

    message = str(caught.value)
    assert caught.value.status_code == 422
    assert message.startswith(
        f"GitLab answered 422 (Invalid url given) for {public_url}/hooks/gitlab/sample-app"
    )
    assert "allows local requests from webhooks" in message
    assert "19.0" not in message and "signing" not in message
    assert fake.hooks == []

    fake.allow_local_requests_from_web_hooks_and_services = True
    assert setup_hook(settings, "sample-app").action is Action.CREATED


def test_a_branch_gitlab_refuses_as_a_filter_is_named(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    # git refuses "release..1" as a branch name, so GitLab refuses it as a wildcard filter.
    settings = configured(make_settings, fake, branch="release..1")

    with pytest.raises(ForgeRejected, match=r"Invalid branch filter given\) for 'release\.\.1' \(wildcard\)"):
        setup_hook(settings, "sample-app")


# -- badges -------------------------------------------------------------------


def test_badges_one_per_environment_added_once(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    settings = two_environments(make_settings, fake)

    first = setup_hook(settings, "sample-app", badge=True)

    assert [(b.environment, b.action) for b in first.badges] == [
        ("production", Action.CREATED),
        ("staging", Action.CREATED),
    ]
    assert sorted((b["name"], b["link_url"], b["image_url"]) for b in fake.badges) == [
        (
            "deploy/production",
            "http://pushdeploy.test/projects/sample-app",
            "http://pushdeploy.test/badges/sample-app/production.svg",
        ),
        (
            "deploy/staging",
            "http://pushdeploy.test/projects/sample-app",
            "http://pushdeploy.test/badges/sample-app/staging.svg",
        ),
    ]
    assert "  badge staging: created (http://pushdeploy.test/badges/sample-app/staging.svg)" in describe(
        first
    )

    second = setup_hook(settings, "sample-app", badge=True)
    assert not second.changed
    assert [b.action for b in second.badges] == [Action.UNCHANGED, Action.UNCHANGED]
    assert len(fake.badges) == 2


def test_badges_follow_a_moved_public_url(make_settings: Callable[..., Settings], fake: FakeGitLab) -> None:
    setup_hook(two_environments(make_settings, fake), "sample-app", badge=True)
    moved = make_settings(
        gitlab={"url": fake.url, "token": TOKEN},
        server={"public_url": "https://deploy.example.com"},
        branch=None,
        environment=None,
        environments={"production": {"branch": "main"}, "staging": {"branch": "release/1.x"}},
    )

    report = setup_hook(moved, "sample-app", badge=True)

    assert [b.action for b in report.badges] == [Action.UPDATED, Action.UPDATED]
    assert {b["image_url"] for b in fake.badges} == {
        "https://deploy.example.com/badges/sample-app/production.svg",
        "https://deploy.example.com/badges/sample-app/staging.svg",
    }
    assert report.action is Action.CREATED  # a new URL is a new hook; the old one is pointed out
    assert any("still delivers to http://pushdeploy.test/hooks/gitlab/sample-app" in n for n in report.notes)


# -- errors -------------------------------------------------------------------


def test_a_refused_token_names_the_scope_and_role(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    settings = make_settings(gitlab={"url": fake.url, "token": "wrong-token-canary-77"})

    with pytest.raises(ForgeRejected) as caught:
        setup_hook(settings, "sample-app")

    assert caught.value.status_code == 401
    message = str(caught.value)
    assert "api scope" in message and "Maintainer" in message
    assert "wrong-token-canary-77" not in message


class Developer(FakeGitLab):
    """The API token's user may read the project but not manage its hooks."""

    def _create_hook(self, project_id: int, project_path: str, params: dict[str, Any]) -> dict[str, Any]:
        raise _HttpError(403, {"message": "403 Forbidden"})


def test_a_write_refused_for_the_role_says_which_role(make_settings: Callable[..., Settings]) -> None:
    with Developer({PROJECT: 42}, token=TOKEN) as fake, pytest.raises(ForgeRejected) as caught:
        setup_hook(configured(make_settings, fake), "sample-app")

    assert caught.value.status_code == 403
    assert "Maintainer role" in str(caught.value) and "signing" not in str(caught.value)


def test_an_unknown_gitlab_project_names_it(make_settings: Callable[..., Settings], fake: FakeGitLab) -> None:
    with pytest.raises(ForgeRejected) as caught:
        setup_hook(configured(make_settings, fake, gitlab_project="tools/missing"), "sample-app")

    assert caught.value.status_code == 404
    assert "'tools/missing'" in str(caught.value)


def test_an_unreachable_gitlab_is_transient(make_settings: Callable[..., Settings], fake: FakeGitLab) -> None:
    settings = configured(make_settings, fake)
    fake.stop()

    with pytest.raises(TransientForgeError):
        setup_hook(settings, "sample-app")


def test_nothing_to_talk_to(make_settings: Callable[..., Settings], fake: FakeGitLab) -> None:
    with pytest.raises(HookSetupError, match=r"no \[gitlab\] section"):
        setup_hook(make_settings(), "sample-app")
    with pytest.raises(HookSetupError, match=r"no project .other-app.*configured: sample-app"):
        setup_hook(configured(make_settings, fake), "other-app")


def test_every_other_event_is_off_on_create(make_settings: Callable[..., Settings], fake: FakeGitLab) -> None:
    setup_hook(configured(make_settings, fake), "sample-app")

    [post] = writes(fake)
    sent = json.loads(post["body"])
    assert sent["push_events"] is True
    assert {name: sent[name] for name in OTHER_EVENTS} == dict.fromkeys(OTHER_EVENTS, False)


def test_review_apps_turn_merge_request_events_on(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    settings = configured(make_settings, fake, review={"url": "https://mr-{iid}.review.test"})

    setup_hook(settings, "sample-app")

    [hook] = fake.hooks
    assert (hook["push_events"], hook["merge_requests_events"], hook["tag_push_events"]) == (
        True,
        True,
        False,
    )
    again = setup_hook(settings, "sample-app")
    assert again.action is Action.UNCHANGED
    assert "  events: push (branch filter main, wildcard) and merge request, nothing else" in describe(again)
