"""What an authenticated delivery asks for, read from GitLab's own documented payloads.

The samples in ``tests/samples`` are GitLab's documentation examples, copied verbatim (see
``tests/samples/SOURCE.md``): a receiver must cope with exactly what GitLab documents.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.helpers import project_config, write_config
from webhook import events
from webhook.errors import InvalidPayload, ProjectMismatch, WebhookError
from webhook.events import Deploy, Ignored, check_project, classify, delivery_key, parse
from workers.config import Project, Settings, load

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
PUSH_SHA = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
OLDER_SHA = "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327"
TAG_SHA = "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7"
ZERO_SHA = "0" * 40

EXAMPLES = int(os.environ.get("PUSHDEPLOY_HYPOTHESIS_EXAMPLES", "300"))


def sample(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((SAMPLES / f"{name}.json").read_bytes())
    return payload


def sample_headers(name: str) -> dict[str, str]:
    headers: dict[str, str] = json.loads((SAMPLES / f"{name}.headers.json").read_text())
    return headers


@pytest.fixture
def diaspora(make_settings: Callable[..., Settings]) -> Project:
    """The project of GitLab's push sample (``mike/diaspora``, id 15), deploying ``master``."""
    return make_settings(gitlab_project="mike/diaspora", branch="master").projects["sample-app"]


@pytest.fixture
def push() -> dict[str, Any]:
    return sample("push_hook")


@pytest.fixture
def push_headers() -> dict[str, str]:
    return sample_headers("push_hook")


def decide(payload: dict[str, Any], project: Project, headers: dict[str, str]) -> Deploy | Ignored:
    """What receive.py does once a delivery is authenticated."""
    parsed = parse(json.dumps(payload).encode())
    check_project(parsed, project)
    return classify(headers, parsed, project, delivery_key(headers))


def commit(payload: dict[str, Any], sha: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in payload["commits"] if c["id"] == sha)
    return found


# -- the samples themselves ----------------------------------------------------------------------


def test_the_samples_are_present_and_as_documented() -> None:
    push, tag = sample("push_hook"), sample("tag_push_hook")
    assert push["object_kind"] == "push" and push["project"]["path_with_namespace"] == "mike/diaspora"
    assert tag["object_kind"] == "tag_push" and tag["ref"] == "refs/tags/v1.0.0"
    assert sample_headers("push_hook")["X-Gitlab-Event"] == "Push Hook"
    assert sample_headers("tag_push_hook")["X-Gitlab-Event"] == "Tag Push Hook"


@pytest.mark.parametrize("name", ["push_hook", "tag_push_hook"])
def test_gitlabs_documented_payloads_parse_strictly(name: str) -> None:
    raw = (SAMPLES / f"{name}.json").read_bytes()
    assert parse(raw) == json.loads(raw)


# -- parse: strict JSON --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"ref": "refs/heads/master", "ref": "refs/heads/other"}',
        b'{"project": {"id": 15, "id": 16}}',
        b'{"commits": [{"id": "a", "message": "x", "message": "[skip deploy]"}]}',
    ],
)
def test_duplicate_keys_are_invalid_payloads(body: bytes) -> None:
    """Parsers disagree on which duplicate wins: a payload that reads two ways is refused."""
    with pytest.raises(InvalidPayload):
        parse(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"project_id": NaN}',
        b'{"project_id": Infinity}',
        b'{"project_id": -Infinity}',
        b'{"commits": [NaN]}',
        b'{"total_commits_count": 1e999}',  # overflows to infinity in Python's float()
        b'{"total_commits_count": -1e999}',
    ],
)
def test_non_finite_numbers_are_invalid_payloads(body: bytes) -> None:
    with pytest.raises(InvalidPayload):
        parse(body)


@pytest.mark.parametrize(
    "body",
    [b"[]", b'[{"ref": "refs/heads/master"}]', b'"push"', b"42", b"null", b"true", b"1.5"],
)
def test_a_payload_that_is_not_an_object_is_invalid(body: bytes) -> None:
    with pytest.raises(InvalidPayload, match="object"):
        parse(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" ",
        b"{",
        b"{'ref': 'refs/heads/master'}",
        b'{"ref": "refs/heads/master",}',
        b'{"a": 1} trailing',
        b'{"a": "\xff"}',  # invalid UTF-8
        b'{"a": "caf\xe9"}',  # latin-1, not UTF-8
        b'{"a": "\xed\xa0\x80"}',  # a UTF-8-encoded surrogate is not valid UTF-8
        b'{"a": "\xc0\xaf"}',  # overlong encoding
        b"\xef\xbb\xbf{}",  # byte order mark
        '{"ref": "refs/heads/master"}'.encode("utf-16"),
        '{"ref": "refs/heads/master"}'.encode("utf-32"),
        b"\x00\x00\x00{",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"n": ' + b"9" * 10_000 + b"}",  # beyond Python's int digit limit
    ],
)
def test_malformed_json_is_an_invalid_payload(body: bytes) -> None:
    with pytest.raises(InvalidPayload):
        parse(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"user_username": "\\ud800"}',
        b'{"commits": [{"message": "ok \\udfff"}]}',
        b'{"\\udbff": 1}',
    ],
)
def test_unpaired_surrogate_escapes_are_invalid_payloads(body: bytes) -> None:
    """``\\ud800`` parses to text no UTF-8 encoder (Redis, logs, the UI) can write."""
    with pytest.raises(InvalidPayload):
        parse(body)


def test_paired_surrogate_escapes_and_unicode_text_are_fine() -> None:
    payload = parse(b'{"user_name": "\\ud83d\\ude80 Jos\\u00e9", "x": "\xe2\x9c\x93"}')
    assert payload == {"user_name": "\U0001f680 Jos\u00e9", "x": "\u2713"}


def test_big_integers_are_kept_exactly() -> None:
    assert (
        parse(b'{"project_id": 123456789012345678901234567890}')["project_id"]
        == 123456789012345678901234567890
    )


# -- check_project -------------------------------------------------------------------------------


@pytest.mark.parametrize("configured", ["mike/diaspora", "15", 15])
def test_the_sample_matches_its_project_by_path_or_numeric_id(
    make_settings: Callable[..., Settings], push: dict[str, Any], configured: str | int
) -> None:
    project = make_settings(gitlab_project=configured, branch="master").projects["sample-app"]
    check_project(push, project)


@pytest.mark.parametrize("configured", ["mike/other", "tools/sample-app", "16", "1", "mike", "diaspora"])
def test_another_project_is_a_mismatch(
    make_settings: Callable[..., Settings], push: dict[str, Any], configured: str
) -> None:
    project = make_settings(gitlab_project=configured).projects["sample-app"]
    with pytest.raises(ProjectMismatch) as raised:
        check_project(push, project)
    assert raised.value.status_code == 403


def test_the_top_level_project_id_alone_is_enough(make_settings: Callable[..., Settings]) -> None:
    by_id = make_settings(gitlab_project="15").projects["sample-app"]
    check_project({"project_id": 15}, by_id)
    with pytest.raises(ProjectMismatch):
        check_project({"project_id": 16}, by_id)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"project": None},
        {"project": "mike/diaspora"},
        {"project": ["mike/diaspora"]},
        {"project": {"path_with_namespace": 15}},
        {"project": {"id": "15"}},
        {"project": {"id": True}},
        {"project": {"id": 15.0}},
        {"project_id": "15"},
        {"project_id": None},
    ],
)
def test_a_payload_naming_no_project_properly_is_invalid(diaspora: Project, payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayload):
        check_project(payload, diaspora)


@pytest.mark.parametrize("path", ["Mike/Diaspora", "MIKE/DIASPORA", "mike/DIASPORA"])
def test_the_path_matches_ignoring_case_as_gitlab_paths_do(
    diaspora: Project, push: dict[str, Any], path: str
) -> None:
    push["project"]["path_with_namespace"] = path
    check_project(push, diaspora)


class Resolver:
    """``ProjectIds.resolve`` as check_project sees it: a real function that answers a fixed id."""

    def __init__(self, answer: int | None) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def __call__(self, project: Project) -> int | None:
        self.asked.append(project.gitlab_project)
        return self.answer


def test_a_matching_path_never_asks_for_the_id(diaspora: Project, push: dict[str, Any]) -> None:
    """The accept path of a matching delivery costs no lookup: no Redis, no GitLab."""
    resolver = Resolver(15)
    check_project(push, diaspora, resolver)
    push["project"]["path_with_namespace"] = "MIKE/diaspora"
    check_project(push, diaspora, resolver)
    assert resolver.asked == []


def test_a_renamed_project_matches_by_the_resolved_id(diaspora: Project, push: dict[str, Any]) -> None:
    push["project"]["path_with_namespace"] = "mike/diaspora-renamed"
    resolver = Resolver(15)
    check_project(push, diaspora, resolver)
    assert resolver.asked == ["mike/diaspora"]


@pytest.mark.parametrize("resolved", [None, 16])
def test_another_id_is_403_naming_both_paths_and_the_id_to_set(
    diaspora: Project, push: dict[str, Any], resolved: int | None
) -> None:
    push["project"]["path_with_namespace"] = "jane/other"
    with pytest.raises(ProjectMismatch) as raised:
        check_project(push, diaspora, Resolver(resolved))
    assert raised.value.detail == (
        "payload is for GitLab project 'jane/other' (id 15), not the configured 'mike/diaspora'; "
        "if it is this project, renamed or moved, set gitlab_project = 15 (its id)"
    )


def test_a_numeric_id_ignores_the_path_and_never_asks(make_settings: Callable[..., Settings]) -> None:
    by_id = make_settings(gitlab_project=15).projects["sample-app"]
    resolver = Resolver(99)
    check_project({"project": {"id": 15, "path_with_namespace": "moved/elsewhere"}}, by_id, resolver)
    with pytest.raises(ProjectMismatch) as raised:
        check_project({"project": {"id": 16, "path_with_namespace": "jane/other"}}, by_id, resolver)
    assert raised.value.detail == (
        "payload is for GitLab project 'jane/other' (id 16), not the configured id 15"
    )
    assert resolver.asked == []


def test_a_payload_with_a_path_but_no_id_is_compared_by_path_only(diaspora: Project) -> None:
    resolver = Resolver(15)
    with pytest.raises(ProjectMismatch, match="'jane/other', not the configured 'mike/diaspora'"):
        check_project({"project": {"path_with_namespace": "jane/other"}}, diaspora, resolver)
    assert resolver.asked == []


def test_a_boolean_is_not_project_id_one(make_settings: Callable[..., Settings]) -> None:
    project_one = make_settings(gitlab_project="1").projects["sample-app"]
    with pytest.raises(InvalidPayload):
        check_project({"project": {"id": True}, "project_id": True}, project_one)


# -- classify: what gets deployed ----------------------------------------------------------------


def test_gitlabs_push_sample_to_the_configured_branch_deploys_its_checkout_sha(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy)
    assert decision.environment.name == "production"
    assert decision.environment.branch == "master"
    assert decision.push.sha == PUSH_SHA
    assert decision.push.ref == "refs/heads/master"
    assert decision.push.pusher == "jsmith"
    assert decision.push.delivery_key == push_headers["Idempotency-Key"]
    assert decision.push.trigger == "push"


def test_the_checkout_sha_is_deployed_even_when_after_differs(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    push["checkout_sha"] = OLDER_SHA
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy) and decision.push.sha == OLDER_SHA


def test_after_is_deployed_when_checkout_sha_is_null(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    push["checkout_sha"] = None
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy) and decision.push.sha == PUSH_SHA


def test_sha256_repositories_deploy_too(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    sha256 = "ab" * 32
    push.update(after=sha256, checkout_sha=sha256, commits=[])
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy) and decision.push.sha == sha256


def test_an_upper_case_sha_is_normalised(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    push["checkout_sha"] = PUSH_SHA.upper()
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy) and decision.push.sha == PUSH_SHA


def test_the_pusher_falls_back_to_the_user_name(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    del push["user_username"]
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy) and decision.push.pusher == "John Smith"


def test_a_huge_pusher_name_is_cut_to_255_characters(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    push["user_username"] = "x" * 10_000
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy) and decision.push.pusher == "x" * 255


def test_the_environment_whose_branch_was_pushed_is_chosen(
    make_settings: Callable[..., Settings], push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    settings = make_settings(
        gitlab_project="mike/diaspora",
        environment=None,
        branch=None,
        environments={"staging": {"branch": "develop"}, "production": {"branch": "master"}},
    )
    project = settings.projects["sample-app"]
    decision = decide(push, project, push_headers)
    assert isinstance(decision, Deploy) and decision.environment.name == "production"
    push["ref"] = "refs/heads/develop"
    decision = decide(push, project, push_headers)
    assert isinstance(decision, Deploy) and decision.environment.name == "staging"


# -- classify: what is ignored (200, never 4xx) --------------------------------------------------


def test_a_push_to_another_branch_is_ignored(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    push["ref"] = "refs/heads/feature/x"
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Ignored)
    assert "feature/x" in decision.reason


def test_a_branch_whose_name_only_resembles_the_configured_one_is_ignored(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    for ref in (
        "refs/heads/Master",
        "refs/heads/master ",
        "refs/heads/master/x",
        "master",
        "refs/remotes/master",
    ):
        push["ref"] = ref
        assert isinstance(decide(push, diaspora, push_headers), Ignored), ref


def test_gitlabs_tag_push_sample_is_ignored(make_settings: Callable[..., Settings]) -> None:
    project = make_settings(gitlab_project="jsmith/example", branch="master").projects["sample-app"]
    decision = decide(sample("tag_push_hook"), project, sample_headers("tag_push_hook"))
    assert isinstance(decision, Ignored)
    assert "Tag Push Hook" in decision.reason


# -- tags ----------------------------------------------------------------------


@pytest.fixture
def tagged(make_settings: Callable[..., Settings]) -> Project:
    """GitLab's tag sample project, with a production environment deploying ``v*`` tags."""
    settings = make_settings(
        gitlab_project="jsmith/example",
        branch=None,
        environment=None,
        environments={"staging": {"branch": "master"}, "production": {"tags": "v*"}},
    )
    return settings.projects["sample-app"]


def test_gitlabs_tag_push_sample_deploys_the_tagged_commit_where_tags_match(tagged: Project) -> None:
    decision = decide(sample("tag_push_hook"), tagged, sample_headers("tag_push_hook"))
    assert isinstance(decision, Deploy)
    assert decision.environment.name == "production"
    assert (decision.push.ref, decision.push.sha) == ("refs/tags/v1.0.0", TAG_SHA)
    assert decision.push.pusher == "John Smith"


def test_an_annotated_tag_deploys_its_commit_not_the_tag_object(tagged: Project) -> None:
    payload = sample("tag_push_hook")
    payload["after"] = "1" * 40  # the tag object GitLab reports for an annotated tag
    decision = decide(payload, tagged, sample_headers("tag_push_hook"))
    assert isinstance(decision, Deploy)
    assert decision.push.sha == TAG_SHA


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ref": "refs/tags/release-1"}, "tag 'release-1' matches no environment's tags"),
        ({"after": ZERO_SHA, "checkout_sha": None}, "tag 'v1.0.0' was deleted"),
        ({"checkout_sha": None}, "tag 'v1.0.0' does not point to a commit"),
        ({"ref": "refs/heads/v1.0.0"}, "ref 'refs/heads/v1.0.0' is not a tag"),
    ],
)
def test_tags_that_are_not_deployed_are_ignored_with_a_reason(
    tagged: Project, change: dict[str, Any], reason: str
) -> None:
    payload = sample("tag_push_hook") | change
    decision = decide(payload, tagged, sample_headers("tag_push_hook"))
    assert decision == Ignored(reason)


def test_a_branch_push_still_deploys_its_own_environment_beside_a_tags_one(tagged: Project) -> None:
    payload = sample("push_hook")
    payload["project"]["path_with_namespace"] = "jsmith/example"
    payload["project_id"] = payload["project"]["id"] = 1
    decision = decide(payload, tagged, sample_headers("push_hook"))
    assert isinstance(decision, Deploy)
    assert decision.environment.name == "staging"


def test_a_tags_environment_is_not_deployed_by_a_branch_named_like_its_glob(
    make_settings: Callable[..., Settings],
) -> None:
    project = make_settings(gitlab_project="jsmith/example", branch=None, tags="*").projects["sample-app"]
    payload = sample("push_hook")
    payload["project"]["path_with_namespace"] = "jsmith/example"
    decision = decide(payload, project, sample_headers("push_hook"))
    assert decision == Ignored("branch 'master' is not deployed")


def test_a_tag_ref_under_a_push_hook_header_is_ignored(make_settings: Callable[..., Settings]) -> None:
    project = make_settings(gitlab_project="jsmith/example", branch="v1.0.0").projects["sample-app"]
    decision = decide(sample("tag_push_hook"), project, {"X-Gitlab-Event": "Push Hook"})
    assert isinstance(decision, Ignored)
    assert "not a branch" in decision.reason


@pytest.mark.parametrize(
    "event",
    [
        "Merge Request Hook",
        "Note Hook",
        "Pipeline Hook",
        "Job Hook",
        "System Hook",
        "push hook",
        "Push Hook ",
        "",
    ],
)
def test_other_events_are_ignored(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str], event: str
) -> None:
    push_headers["X-Gitlab-Event"] = event
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Ignored)
    assert "only Push Hook" in decision.reason


def test_a_delivery_without_an_event_header_is_ignored(diaspora: Project, push: dict[str, Any]) -> None:
    assert isinstance(decide(push, diaspora, {}), Ignored)


def test_the_event_header_name_is_case_insensitive(diaspora: Project, push: dict[str, Any]) -> None:
    assert isinstance(decide(push, diaspora, {"x-gitlab-event": "Push Hook"}), Deploy)


@pytest.mark.parametrize("zeros", ["0" * 40, "0" * 64])
def test_a_branch_deletion_is_ignored(diaspora: Project, push: dict[str, Any], zeros: str) -> None:
    # As GitLab sends it: after is the blank sha, checkout_sha null, no commits.
    push.update(before=PUSH_SHA, after=zeros, checkout_sha=None, commits=[], total_commits_count=0)
    decision = decide(push, diaspora, {"X-Gitlab-Event": "Push Hook"})
    assert isinstance(decision, Ignored)
    assert "deleted" in decision.reason


@pytest.mark.parametrize("marker", ["[skip deploy]", "[deploy skip]"])
def test_a_skip_marker_in_the_head_commit_is_ignored(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str], marker: str
) -> None:
    commit(push, PUSH_SHA)["message"] = f"fixed readme {marker}\n\nmore text"
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Ignored)
    assert "skip" in decision.reason


@pytest.mark.parametrize("marker", ["[skip deploy]", "[deploy skip]"])
def test_a_skip_marker_only_in_an_older_commit_still_deploys(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str], marker: str
) -> None:
    commit(push, OLDER_SHA)["message"] = f"wip {marker}"
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy) and decision.push.sha == PUSH_SHA


def test_the_head_commit_is_found_by_id_not_by_position(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    push["commits"].reverse()
    commit(push, PUSH_SHA)["message"] = "[skip deploy]"
    assert isinstance(decide(push, diaspora, push_headers), Ignored)


@pytest.mark.parametrize(
    "message", ["[skip ci]", "skip deploy", "[Skip Deploy]", "[skip  deploy]", "[ci skip]"]
)
def test_other_markers_do_not_skip(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str], message: str
) -> None:
    commit(push, PUSH_SHA)["message"] = message
    assert isinstance(decide(push, diaspora, push_headers), Deploy)


def test_a_push_whose_head_commit_is_not_listed_deploys(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    """GitLab lists at most 20 commits; a head it did not list cannot ask to be skipped."""
    push["commits"] = [c for c in push["commits"] if c["id"] != PUSH_SHA]
    commit(push, OLDER_SHA)["message"] = "[skip deploy]"
    assert isinstance(decide(push, diaspora, push_headers), Deploy)


# -- classify: hostile or broken fields ----------------------------------------------------------


@pytest.mark.parametrize(
    "sha",
    [
        "not-a-sha",
        PUSH_SHA[:-1],
        PUSH_SHA + "0",
        "g" * 40,
        "--upload-pack=touch /tmp/canary",
        "$(touch /tmp/canary)",
        "HEAD",
        "master",
        PUSH_SHA + "\n",
        " " + PUSH_SHA,
        "a" * 63,
        "",
    ],
)
def test_a_checkout_sha_that_is_not_a_commit_id_is_an_invalid_payload(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str], sha: str
) -> None:
    push["checkout_sha"] = sha
    if sha == "":
        push["after"] = "xyz"  # an empty checkout_sha falls back to after, which is broken too
    with pytest.raises(InvalidPayload, match="sha"):
        decide(push, diaspora, push_headers)


def test_a_non_hex_after_with_null_checkout_sha_is_an_invalid_payload(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    push.update(after="-oProxyCommand=x", checkout_sha=None)
    with pytest.raises(InvalidPayload):
        decide(push, diaspora, push_headers)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ref", None),
        ("ref", 42),
        ("ref", ["refs/heads/master"]),
        ("after", None),
        ("after", 123),
        ("after", {"id": PUSH_SHA}),
        ("checkout_sha", 12345),
        ("checkout_sha", [PUSH_SHA]),
        ("commits", {"id": PUSH_SHA}),
        ("commits", "all of them"),
        ("user_username", 7),
        ("user_username", ["jsmith"]),
    ],
)
def test_wrong_field_types_are_invalid_payloads(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str], field: str, value: Any
) -> None:
    push[field] = value
    with pytest.raises(InvalidPayload) as raised:
        decide(push, diaspora, push_headers)
    assert raised.value.status_code == 400


def test_a_head_commit_message_of_the_wrong_type_is_an_invalid_payload(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    commit(push, PUSH_SHA)["message"] = ["[skip deploy]"]
    with pytest.raises(InvalidPayload):
        decide(push, diaspora, push_headers)


def test_junk_entries_in_commits_are_skipped(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    push["commits"] = [None, 1, "x", [], {"id": None}, *push["commits"]]
    assert isinstance(decide(push, diaspora, push_headers), Deploy)


def test_a_ten_mib_head_commit_message_is_handled(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    commit(push, PUSH_SHA)["message"] = "x" * (10 * 1024 * 1024) + "[deploy skip]"
    assert isinstance(decide(push, diaspora, push_headers), Ignored)


def test_a_reason_quotes_payload_text_safely(
    diaspora: Project, push: dict[str, Any], push_headers: dict[str, str]
) -> None:
    push["ref"] = "refs/heads/" + "<script>\n" + "x" * 500
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Ignored)
    assert "\n" not in decision.reason
    assert len(decision.reason) < 200


# -- delivery_key --------------------------------------------------------------------------------


def test_idempotency_key_comes_first() -> None:
    headers = {"Idempotency-Key": "idem-1", "webhook-id": "msg-1", "X-Gitlab-Event-UUID": "uuid-1"}
    assert delivery_key(headers) == "idem-1"


def test_webhook_id_comes_second() -> None:
    assert delivery_key({"webhook-id": "msg-1", "X-Gitlab-Event-UUID": "uuid-1"}) == "msg-1"


def test_event_uuid_is_the_last_resort() -> None:
    assert delivery_key({"X-Gitlab-Event-UUID": "uuid-1", "X-Gitlab-Webhook-UUID": "hook-uuid"}) == "uuid-1"


def test_no_delivery_key_at_all_is_empty() -> None:
    assert delivery_key({"X-Gitlab-Webhook-UUID": "hook-uuid"}) == ""


def test_the_sample_headers_key_on_idempotency_key(push_headers: dict[str, str]) -> None:
    assert delivery_key(push_headers) == "d5630e2b-16f7-4285-9f35-4e4b84fb579f"


def test_delivery_key_header_names_are_case_insensitive() -> None:
    assert delivery_key({"idempotency-key": "idem-1", "WEBHOOK-ID": "msg-1"}) == "idem-1"
    assert delivery_key({"WEBHOOK-ID": "msg-1"}) == "msg-1"
    assert delivery_key({"x-gitlab-event-uuid": "uuid-1"}) == "uuid-1"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 257, "caf\u00e9", "tab\there", "new\nline", "\x00"])
def test_an_unusable_key_falls_through_to_the_next_header(bad: str) -> None:
    assert delivery_key({"Idempotency-Key": bad, "webhook-id": "msg-1"}) == "msg-1"
    assert delivery_key({"Idempotency-Key": bad, "webhook-id": bad, "X-Gitlab-Event-UUID": "u"}) == "u"


def test_a_256_character_key_is_kept() -> None:
    assert delivery_key({"Idempotency-Key": "k" * 256}) == "k" * 256


# -- property: an authenticated but arbitrary payload never escapes our error types --------------


@pytest.fixture(scope="module")
def fuzz_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """A real config file, module-scoped so Hypothesis can reuse it across examples."""
    root = tmp_path_factory.mktemp("events-fuzz")
    config = {
        "server": {"public_url": "http://pushdeploy.test", "data_dir": str(root / "data")},
        "projects": {
            "sample-app": project_config(str(root / "repo.git"), gitlab_project="15", branch="master")
        },
    }
    yield load(write_config(root / "pushdeploy.toml", config), environ={}).projects["sample-app"]


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
    st.sampled_from([PUSH_SHA, ZERO_SHA, "refs/heads/master", "refs/tags/v1", "[skip deploy]", 15]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
push_like = st.fixed_dictionaries(
    {},
    optional={
        "ref": st.one_of(
            st.sampled_from(["refs/heads/master", "refs/heads/dev", "refs/tags/v1"]), json_values
        ),
        "after": st.one_of(st.sampled_from([PUSH_SHA, ZERO_SHA, "0" * 64]), json_values),
        "checkout_sha": st.one_of(st.sampled_from([PUSH_SHA, None, "xyz"]), json_values),
        "project": st.one_of(st.just({"id": 15, "path_with_namespace": "mike/diaspora"}), json_values),
        "project_id": st.one_of(st.just(15), json_values),
        "commits": st.one_of(
            st.lists(
                st.fixed_dictionaries({"id": st.sampled_from([PUSH_SHA, OLDER_SHA]), "message": json_values}),
                max_size=3,
            ),
            json_values,
        ),
        "user_username": json_values,
        "user_name": json_values,
    },
)
event_headers = st.fixed_dictionaries(
    {"X-Gitlab-Event": st.sampled_from(["Push Hook", "Tag Push Hook", "Note Hook", ""])},
    optional={"Idempotency-Key": st.text(max_size=30), "webhook-id": st.text(max_size=30)},
)


@hypothesis_settings(max_examples=EXAMPLES, deadline=None)
@given(payload=push_like, headers=event_headers)
def test_arbitrary_authenticated_payloads_yield_a_decision_or_our_error(
    fuzz_project: Project, payload: dict[str, Any], headers: dict[str, str]
) -> None:
    body = json.dumps(copy.deepcopy(payload)).encode()
    try:
        parsed = events.parse(body)
        check_project(parsed, fuzz_project)
        decision = classify(headers, parsed, fuzz_project, delivery_key(headers))
    except WebhookError as error:
        assert error.status_code in {400, 403}
        return
    if isinstance(decision, Deploy):
        # Only a well-formed push of the configured branch, naming a real commit id, gets here.
        assert decision.push.ref == "refs/heads/master"
        assert decision.push.sha in {PUSH_SHA, parsed.get("checkout_sha"), parsed.get("after")}
        assert len(decision.push.sha) in (40, 64)
        int(decision.push.sha, 16)  # hex only
        decision.push.pusher.encode("utf-8")  # storable
    else:
        assert isinstance(decision.reason, str) and decision.reason


# -- merge request hooks (review apps) ---------------------------------------------------------


@pytest.fixture
def gitlab_test(make_settings: Callable[..., Settings]) -> Project:
    """The project of GitLab's merge request sample (``gitlabhq/gitlab-test``), deploying ``master``."""
    review = {"url": "https://mr-{iid}.review.test"}
    return make_settings(gitlab_project="gitlabhq/gitlab-test", branch="master", review=review).projects[
        "sample-app"
    ]


def test_the_documented_merge_request_sample_deploys_its_review_app(gitlab_test: Project) -> None:
    decision = decide(sample("merge_request_hook"), gitlab_test, sample_headers("merge_request_hook"))
    assert isinstance(decision, events.DeployReview)
    assert (decision.environment.name, decision.environment.review_url) == (
        "review/1",
        "https://mr-1.review.test",
    )
    assert (decision.push.ref, decision.push.sha, decision.push.pusher) == (
        "refs/heads/ms-viewport",
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "root",
    )
    assert (decision.review.iid, decision.review.base, decision.review.title) == (
        1,
        "production",
        "MS-Viewport",
    )
    assert decision.push.delivery_key == sample_headers("merge_request_hook")["Idempotency-Key"]


@pytest.mark.parametrize(("action", "reason"), [("close", "closed"), ("merge", "merged")])
def test_close_and_merge_stop_whatever_the_target(gitlab_test: Project, action: str, reason: str) -> None:
    payload = sample("merge_request_hook")
    payload["object_attributes"].update(action=action, target_branch="elsewhere")
    decision = decide(payload, gitlab_test, sample_headers("merge_request_hook"))
    assert decision == events.StopReview(1, reason)


def test_without_a_review_table_merge_requests_are_ignored(diaspora: Project) -> None:
    payload = sample("merge_request_hook")
    payload["project"]["path_with_namespace"] = "mike/diaspora"
    decision = decide(payload, diaspora, sample_headers("merge_request_hook"))
    assert decision == Ignored("event 'Merge Request Hook' is not deployed (only Push Hook)")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"iid": "1"}, "object_attributes.iid must be a positive integer"),
        ({"iid": True}, "object_attributes.iid must be a positive integer"),
        ({"iid": 0}, "object_attributes.iid must be a positive integer"),
        ({"action": None}, "object_attributes.action must be a string"),
        ({"last_commit": {"id": "da15608"}}, "object_attributes.last_commit.id is not a commit sha"),
        ({"last_commit": None}, "object_attributes.last_commit.id is not a commit sha"),
        ({"target_branch": 3}, "object_attributes.target_branch must be a string"),
    ],
)
def test_a_malformed_merge_request_is_refused(
    gitlab_test: Project, change: dict[str, Any], problem: str
) -> None:
    payload = sample("merge_request_hook")
    payload["object_attributes"].update(change)
    with pytest.raises(InvalidPayload, match=problem):
        decide(payload, gitlab_test, sample_headers("merge_request_hook"))


def test_an_unusual_source_branch_name_is_ignored_not_reported_to(gitlab_test: Project) -> None:
    payload = sample("merge_request_hook")
    payload["object_attributes"]["source_branch"] = "feature/$(reboot)"
    decision = decide(payload, gitlab_test, sample_headers("merge_request_hook"))
    assert isinstance(decision, Ignored) and "source branch name" in decision.reason
# -- the head commit's title and author ------------------------------------------------------


def test_the_head_commits_title_and_author_come_from_its_commits_entry(
    push: dict[str, Any], push_headers: dict[str, str], diaspora: Project
) -> None:
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy)
    # GitLab's sample lists two commits; the deployed one is the entry whose id is the new head.
    assert (decision.push.commit_title, decision.push.commit_author) == ("fixed readme", "GitLab dev user")


def test_without_a_title_the_messages_first_line_is_kept_plain_and_bounded(
    push: dict[str, Any], push_headers: dict[str, str], diaspora: Project
) -> None:
    head = commit(push, push["after"])
    del head["title"]
    head["message"] = "\x1b[31mRed\x1b[0m title\u0007 " + "x" * 400 + "\n\nbody line"
    head["author"] = {"name": "Eve\r\nInjected: header", "email": "e@example.org"}
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy)
    title = decision.push.commit_title
    assert title.startswith("[31mRed [0m title") and len(title) == 255
    assert not any(ord(c) < 0x20 for c in title)
    assert decision.push.commit_author == "Eve"


def test_a_head_commit_missing_from_the_payload_leaves_the_title_to_git(
    push: dict[str, Any], push_headers: dict[str, str], diaspora: Project
) -> None:
    push["commits"] = [c for c in push["commits"] if c["id"] != push["after"]]  # a push of > 20 commits
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy)
    assert (decision.push.commit_title, decision.push.commit_author) == ("", "")


def test_a_non_string_author_is_ignored_not_trusted(
    push: dict[str, Any], push_headers: dict[str, str], diaspora: Project
) -> None:
    commit(push, push["after"])["author"] = {"name": ["not", "a", "name"]}
    decision = decide(push, diaspora, push_headers)
    assert isinstance(decision, Deploy) and decision.push.commit_author == ""


def test_a_tag_push_takes_the_tagged_commits_title_when_it_lists_it(tagged: Project) -> None:
    payload = sample("tag_push_hook")
    payload["after"] = "1" * 40  # an annotated tag: its object, not the commit
    decision = decide(payload, tagged, sample_headers("tag_push_hook"))
    assert isinstance(decision, Deploy) and decision.push.commit_title == ""  # none listed: git tells
    payload["commits"] = [
        {"id": "1" * 40, "title": "the tag object, never deployed", "author": {"name": "X"}},
        {"id": TAG_SHA, "title": "Release 1.0.0", "message": "Release 1.0.0\n", "author": {"name": "John"}},
    ]
    decision = decide(payload, tagged, sample_headers("tag_push_hook"))
    assert isinstance(decision, Deploy)
    assert (decision.push.commit_title, decision.push.commit_author) == ("Release 1.0.0", "John")
