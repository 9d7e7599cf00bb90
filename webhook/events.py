"""What an authenticated delivery asks for: a push to deploy, or a reason to ignore it.

Parsing is strict (duplicate keys and NaN/Infinity are refused, so no other parser could read the
payload differently) and every field used is type-checked before it goes anywhere.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook.errors import InvalidPayload, ProjectMismatch
from webhook.verify import Headers, header
from workers.config import Environment, Project
from workers.deployments import commit_text
from workers.intake import REF_RE, Push
from workers.project_ids import numeric_id
from workers.review_requests import ReviewRequest
from workers.source import SHA_RE, ZERO_SHA_RE

SKIP_MARKERS = ("[skip deploy]", "[deploy skip]")
PUSH_EVENT = "Push Hook"
TAG_PUSH_EVENT = "Tag Push Hook"
MERGE_REQUEST_EVENT = "Merge Request Hook"
DEPLOY_ACTIONS = ("open", "reopen", "update")
STOP_ACTIONS = ("close", "merge")


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class Deploy:
    environment: Environment
    push: Push


@dataclass(frozen=True)
class DeployReview(Deploy):
    """A merge request to deploy as its review app ``review/<iid>``; ``environment`` is that app's."""

    review: ReviewRequest


@dataclass(frozen=True)
class StopReview:
    """A merge request closed or merged: its review app stops."""

    iid: int
    reason: str  # "closed" or "merged"


def parse(body: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, an object at the top, no duplicate keys, finite numbers, no lone surrogates."""
    try:
        # Decoded as UTF-8 here: json.loads(bytes) would also guess UTF-16/32 and accept encoded surrogates.
        payload = _DECODER.decode(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise InvalidPayload("body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidPayload("payload must be a JSON object")
    if SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(payload):
        # "\ud800" escapes parse to text that no UTF-8 writer (Redis, logs, pages) accepts.
        raise InvalidPayload("payload holds an unpaired \\u surrogate escape")
    return payload


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # in C; a key given twice leaves fewer entries than pairs
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 overflows to inf without passing through parse_constant
        raise ValueError("non-finite number")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_no_constants, parse_float=_finite_float
)
"""Made once: ``json.loads`` with hooks builds a new decoder for every call."""

SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A lone surrogate can only come from a ``\\uD800``–``\\uDFFF`` escape (the body is strict UTF-8):
look for one in the bytes (microseconds) before walking the parsed payload (tens of them)."""


def _has_lone_surrogate(payload: Any) -> bool:
    pending = [payload]  # iterative: nesting is as deep as the parser allowed
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def check_project(
    payload: Mapping[str, Any],
    project: Project,
    resolve: Callable[[Project], int | None] | None = None,
) -> None:
    """The payload must name the configured GitLab project: by numeric id, or by path ignoring case.

    A path-configured project's id comes from ``resolve`` (cached, see workers/project_ids.py),
    asked only when the paths differ, so a matching delivery costs no lookup; after a rename or
    a move the payload's path is new and its id still matches.
    """
    described = payload.get("project")
    path = described.get("path_with_namespace") if isinstance(described, dict) else None
    path = path if isinstance(path, str) else None
    given = described.get("id") if isinstance(described, dict) else None
    if not _is_int(given):
        given = payload.get("project_id")
    given_id = given if _is_int(given) else None
    if path is None and given_id is None:
        raise InvalidPayload("payload has no project.path_with_namespace or project.id")
    configured = project.gitlab_project
    expected_id = numeric_id(configured)
    if expected_id is None:
        if path is not None and path.lower() == configured.lower():
            return
        expected_id = resolve(project) if resolve is not None and given_id is not None else None
    if given_id is not None and given_id == expected_id:
        return
    raise ProjectMismatch(_mismatch_reason(configured, path, given_id))


def _mismatch_reason(configured: str, path: str | None, given_id: int | None) -> str:
    """Both projects named, and the fix when the project was renamed or moved: its numeric id."""
    parts = [_quote(path)] if path is not None else []
    parts += [f"(id {given_id})"] if given_id is not None else []
    named = " ".join(parts)
    expected = f"id {configured}" if numeric_id(configured) is not None else repr(configured)
    reason = f"payload is for GitLab project {named}, not the configured {expected}"
    if given_id is not None and numeric_id(configured) is None:
        reason += f"; if it is this project, renamed or moved, set gitlab_project = {given_id} (its id)"
    return reason


def classify(
    headers: Headers, payload: Mapping[str, Any], project: Project, delivery_key: str
) -> Deploy | StopReview | Ignored:
    """Decide what to do with a verified, project-checked payload."""
    event = header(headers, "X-Gitlab-Event") or ""
    if event == MERGE_REQUEST_EVENT and project.review is not None:
        return _classify_merge_request(payload, project, delivery_key)
    if event == TAG_PUSH_EVENT and project.deploys_tags:
        return _classify_ref(payload, delivery_key, _TAGS, project.environment_for_tag)
    if event != PUSH_EVENT:
        deployed = "Push Hook and Tag Push Hook" if project.deploys_tags else "only Push Hook"
        deployed += " and Merge Request Hook" if project.review is not None else ""
        return Ignored(f"event {_quote(event)} is not deployed ({deployed})")
    return _classify_ref(payload, delivery_key, _BRANCHES, project.environment_for_branch)


@dataclass(frozen=True)
class _RefKind:
    """How a branch push and a tag push differ: their refs, and the words of their reasons."""

    prefix: str
    noun: str
    unmatched: str
    skip: str
    head_is_after: bool
    """A branch's head commit is ``after``; an annotated tag's ``after`` is the tag object."""


_BRANCHES = _RefKind("refs/heads/", "branch", "is not deployed", "head commit", head_is_after=True)
_TAGS = _RefKind("refs/tags/", "tag", "matches no environment's tags", "tagged commit", head_is_after=False)


def _classify_ref(
    payload: Mapping[str, Any],
    delivery_key: str,
    kind: _RefKind,
    environment_for: Callable[[str], Environment | None],
) -> Deploy | Ignored:
    ref = _string(payload, "ref")
    after = _string(payload, "after")
    if not ref.startswith(kind.prefix):
        return Ignored(f"ref {_quote(ref)} is not a {kind.noun}")
    name = ref.removeprefix(kind.prefix)
    environment = environment_for(name)
    if environment is None:
        return Ignored(f"{kind.noun} {_quote(name)} {kind.unmatched}")
    if ZERO_SHA_RE.fullmatch(after):
        return Ignored(f"{kind.noun} {_quote(name)} was deleted")
    if not kind.head_is_after and payload.get("checkout_sha") is None:
        return Ignored(f"tag {_quote(name)} does not point to a commit")
    sha = _commit_sha(payload, after)
    head = _head_commit(payload, after if kind.head_is_after else sha)
    if _skips(_message(head)):
        return Ignored(f"{kind.skip} asks to skip the deployment ([skip deploy])")
    title, author = _title_and_author(head)
    push = Push(ref, sha, _pusher(payload), delivery_key, commit_title=title, commit_author=author)
    return Deploy(environment, push)


def _classify_merge_request(
    payload: Mapping[str, Any], project: Project, delivery_key: str
) -> DeployReview | StopReview | Ignored:
    """open, reopen and update with new commits deploy ``review/<iid>``; close and merge stop it."""
    review = project.review
    assert review is not None
    attributes = payload.get("object_attributes")
    if not isinstance(attributes, dict):
        raise InvalidPayload("object_attributes must be an object")
    action = attributes.get("action")
    given = attributes.get("iid")
    if not isinstance(action, str):
        raise InvalidPayload("object_attributes.action must be a string")
    if not isinstance(given, int) or isinstance(given, bool) or not 0 < given < 10**12:
        raise InvalidPayload("object_attributes.iid must be a positive integer")
    iid = given
    if action in STOP_ACTIONS:
        return StopReview(iid, "merged" if action == "merge" else "closed")
    if action not in DEPLOY_ACTIONS:
        return Ignored(f"merge request action {_quote(action)} neither deploys nor stops a review app")
    if action == "update" and not attributes.get("oldrev"):
        return Ignored("merge request update without new commits (no oldrev)")
    target = attributes.get("target_branch")
    if not isinstance(target, str):
        raise InvalidPayload("object_attributes.target_branch must be a string")
    base = project.environment_for_branch(target)
    if base is None:
        return Ignored(f"target branch {_quote(target)} is not deployed")
    source_id, target_id = attributes.get("source_project_id"), attributes.get("target_project_id")
    if source_id != target_id and not review.forks:
        return Ignored("merge request from a fork: review apps for forks are off (forks = false)")
    if not review.drafts and (attributes.get("draft") is True or attributes.get("work_in_progress") is True):
        return Ignored("draft merge request: review apps for drafts are off (drafts = false)")
    branch = attributes.get("source_branch")
    if not isinstance(branch, str) or not REF_RE.match(branch) or ".." in branch:
        return Ignored("source branch name is not one pushdeploy reports to (letters, digits, ._/-)")
    last = attributes.get("last_commit")
    sha = last.get("id") if isinstance(last, dict) else None
    if not isinstance(sha, str) or not SHA_RE.fullmatch(sha.lower()):
        raise InvalidPayload("object_attributes.last_commit.id is not a commit sha (40 or 64 hex characters)")
    title = attributes.get("title")
    user = payload.get("user")
    pusher = user.get("username") if isinstance(user, dict) else None
    push = Push(
        ref=f"refs/heads/{branch}",
        sha=sha.lower(),
        pusher=pusher[:255] if isinstance(pusher, str) else "",
        delivery_key=delivery_key,
        trigger="merge request",
    )
    request = ReviewRequest(iid, base.name, branch, title[:200] if isinstance(title, str) else "")
    return DeployReview(project.review_environment(base, iid), push, request)


def _commit_sha(payload: Mapping[str, Any], after: str) -> str:
    checkout = payload.get("checkout_sha")
    if checkout is not None and not isinstance(checkout, str):
        raise InvalidPayload("checkout_sha must be a string or null")
    sha = (checkout or after).lower()
    if not SHA_RE.fullmatch(sha):  # whole string, however the pattern is anchored (no trailing "\n")
        raise InvalidPayload("checkout_sha/after is not a commit sha (40 or 64 hex characters)")
    return sha


def _pusher(payload: Mapping[str, Any]) -> str:
    pusher = payload.get("user_username") or payload.get("user_name") or ""
    if not isinstance(pusher, str):
        raise InvalidPayload("user_username must be a string")
    return pusher[:255]


def _skips(message: str) -> bool:
    return any(marker in message for marker in SKIP_MARKERS)


def delivery_key(headers: Headers, signed: bool = False) -> str:
    """The key duplicates are recognised by: ``Idempotency-Key``, else ``webhook-id``, else the event UUID.

    For a signed delivery ``webhook-id`` comes first: GitLab sends it equal to ``Idempotency-Key``,
    and only it is covered by the signature, so a replay with a fresh Idempotency-Key stays a duplicate.
    """
    names = ("Idempotency-Key", "webhook-id", "X-Gitlab-Event-UUID")
    if signed:
        names = ("webhook-id", "Idempotency-Key", "X-Gitlab-Event-UUID")
    for name in names:
        value = header(headers, name)
        if value and len(value) <= 256 and re.fullmatch(r"[\x21-\x7e]+", value):
            return value
    return ""


def _head_commit(payload: Mapping[str, Any], sha: str) -> Mapping[str, Any]:
    """The ``commits[]`` entry of the deployed commit; empty when the payload has none (GitLab lists
    at most 20 commits, and a new tag's push lists none): the worker then asks git."""
    commits = payload.get("commits") or []
    if not isinstance(commits, list):
        raise InvalidPayload("commits must be a list")
    for commit in commits:
        if isinstance(commit, dict) and commit.get("id") == sha:
            return commit
    return {}


def _message(commit: Mapping[str, Any]) -> str:
    message = commit.get("message") or ""
    if not isinstance(message, str):
        raise InvalidPayload("commit message must be a string")
    return message


def _title_and_author(commit: Mapping[str, Any]) -> tuple[str, str]:
    """The commit's title (GitLab's ``title``, else the message's first line) and author's name."""
    title = commit.get("title")
    if not isinstance(title, str) or not title.strip():
        title = _message(commit)
    author = commit.get("author")
    name = author.get("name") if isinstance(author, dict) else None
    return commit_text(title), commit_text(name) if isinstance(name, str) else ""


def _string(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise InvalidPayload(f"{name} must be a string")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _quote(text: str) -> str:
    """Payload text shown back in a reason: printable, short, repr-quoted."""
    return repr(text[:100])
