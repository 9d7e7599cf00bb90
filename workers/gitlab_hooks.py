"""Wire a project to GitLab through the API: its push webhook and, on request, one badge per environment.

``setup_hook`` is idempotent: it finds the hook whose URL is ``settings.webhook_url(project)``, creates it
when missing, and otherwise sends only what differs, so a second run changes nothing and says so.

Tokens are the exception to "compare and send what differs": GitLab never returns a hook's tokens, only
``token_present`` and ``signing_token_present``. A configured token GitLab does not hold is sent; one it
already holds is kept, and the report says it could not be compared. After rotating (a new first
``secret_token`` or ``signing_token`` in the config), ``rotate_tokens=True`` sends both again. A GitLab too
old to report presence (before 19.0) gets the secret token on every run, the only way to be sure it holds
the configured one. A token sent again is reported as such but does not make the hook "updated": whether
GitLab's value changed cannot be seen, and a second run must not claim a change it cannot show.

The signing token is sent like the secret token, but GitLab keeps it only from 19.0 on, with the
``webhook_signing_token`` feature flag enabled: before 19.0 the parameter is dropped (the answer has no
``signing_token_present``), with the flag off it is ignored (``signing_token_present`` false). Either
way, and when GitLab answers 400/422 naming the field, the report carries a *problem*: pushdeploy will
refuse every delivery with 401 until GitLab signs, and ``gitlab-hook`` exits non-zero. A 400/422 about
anything else (a URL GitLab refuses, a branch filter) is GitLab's own message, raised as it is.

Errors are ``workers.forge.ForgeError``; :class:`HookSetupError` when the configuration has no
``[gitlab]`` section or no such project.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import gitlab
import gitlab.exceptions
import requests
from gitlab.v4.objects import Project as RemoteProject

from workers import routes
from workers.config import Project, Settings, redact_url
from workers.forge import ForgeError, ForgeRejected, GitLabForge, translate
from workers.secrets import MASK

OTHER_EVENTS = (
    "tag_push_events",
    "merge_requests_events",
    "issues_events",
    "confidential_issues_events",
    "note_events",
    "confidential_note_events",
    "job_events",
    "pipeline_events",
    "wiki_page_events",
    "deployment_events",
    "feature_flag_events",
    "releases_events",
    "milestone_events",
    "emoji_events",
    "repository_update_events",
    "resource_access_token_events",
    "resource_deploy_token_events",
    "vulnerability_events",
)
"""Events a project hook can have besides pushes; any other ``*_events`` GitLab reports is turned off too."""

RETRIES = 2
"""Transient errors retried inside each call: an operator waits at a prompt, not a deployment in a queue."""

_Call = Callable[[dict[str, Any]], dict[str, Any]]

MAINTAINER_HINT = "managing a project's webhooks and badges needs the Maintainer role"


class HookSetupError(ForgeError):
    """The command cannot start: no ``[gitlab]`` section, or no such project in the configuration."""


class Action(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


class TokenAction(StrEnum):
    SET = "set"  # sent: GitLab held none
    RESENT = "re-sent"  # sent although GitLab may hold it: --rotate-tokens, or GitLab cannot say
    KEPT = "kept"  # GitLab holds one; not compared, since GitLab never shows it
    CLEARED = "cleared"  # GitLab held one the configuration no longer has
    NONE = "none"  # neither configured nor on GitLab
    NOT_KEPT = "not kept"  # signing token only: sent, but this GitLab did not keep it

    @property
    def sent(self) -> bool:
        return self in (TokenAction.SET, TokenAction.RESENT, TokenAction.CLEARED)


@dataclass(frozen=True)
class FieldChange:
    name: str
    old: Any
    new: Any


@dataclass(frozen=True)
class BadgeResult:
    environment: str
    action: Action
    image_url: str
    link_url: str


@dataclass(frozen=True)
class HookReport:
    """What ``setup_hook`` found and did; ``describe`` turns it into the lines the CLI prints."""

    project: str
    gitlab_project: str
    url: str
    hook_id: int
    action: Action
    branch_filter: str
    branch_filter_strategy: str
    changes: tuple[FieldChange, ...] = ()
    secret_token: TokenAction = TokenAction.NONE
    signing_token: TokenAction = TokenAction.NONE
    notes: tuple[str, ...] = ()
    badges: tuple[BadgeResult, ...] = ()
    problems: tuple[str, ...] = ()
    """What leaves the project unable to receive deliveries although the hook was written: exit non-zero."""
    push_events: bool = True
    tag_push_events: bool = False
    merge_requests_events: bool = False

    @property
    def changed(self) -> bool:
        actions = [self.action, *(b.action for b in self.badges)]
        return any(action is not Action.UNCHANGED for action in actions)


def branch_filter(branches: Sequence[str]) -> tuple[str, str]:
    """``(push_events_branch_filter, branch_filter_strategy)`` matching exactly the deployed branches.

    One branch is a plain wildcard filter (git forbids ``*`` in branch names, so it matches only itself);
    several need GitLab's regex strategy, anchored because GitLab searches rather than full-matches.
    """
    unique = sorted(set(branches))
    if len(unique) == 1:
        return unique[0], "wildcard"
    return "^(?:" + "|".join(re.escape(b) for b in unique) + ")$", "regex"


def desired_hook(settings: Settings, project: Project) -> dict[str, Any]:
    """Every hook field we manage except the tokens: push events on the configured branches, and
    tag push events where an environment deploys tags (GitLab never applies the branch filter to
    tag pushes), merge request events where merge requests get review apps; every other event off."""
    branches = [env.branch for env in project.environments.values() if env.branch]
    pattern, strategy = branch_filter(branches) if branches else ("", "all_branches")
    return {
        "url": settings.webhook_url(project.name),
        **dict.fromkeys(OTHER_EVENTS, False),
        "push_events": bool(branches),
        "tag_push_events": project.deploys_tags,
        "merge_requests_events": project.review is not None,
        "push_events_branch_filter": pattern,
        "branch_filter_strategy": strategy,
        "enable_ssl_verification": True,
    }


def diff(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[FieldChange]:
    """Fields whose value on GitLab differs from ours.

    A field GitLab does not report is one this GitLab does not know: it is sent on create but not
    compared, or an older GitLab would look changed on every run. Any other event GitLab reports as on
    is turned off, so events added after this list was written cannot slip through.
    """
    wanted = dict(desired)
    for name, value in current.items():
        if name.endswith("_events") and value:
            wanted.setdefault(name, False)
    changes = []
    for name, new in wanted.items():
        if name not in current:
            continue
        old = current[name]
        # GitLab shows an unset text as null or "", and a boolean may come back as null on old records.
        same = bool(old) == new if isinstance(new, bool) else (old or "") == (new or "")
        if not same:
            changes.append(FieldChange(name, old, new))
    return changes


def plan_token(configured: str | None, present: bool | None, rotate: bool) -> TokenAction:
    """What to do with one token, given GitLab's presence flag (``None``: this GitLab does not say)."""
    if configured is None:
        return TokenAction.CLEARED if present else TokenAction.NONE
    if present is None or (present and rotate):
        return TokenAction.RESENT
    return TokenAction.KEPT if present else TokenAction.SET


def setup_hook(
    settings: Settings,
    project_name: str,
    *,
    badge: bool = False,
    rotate_tokens: bool = False,
    client: gitlab.Gitlab | None = None,
) -> HookReport:
    """Create or update ``project_name``'s webhook on GitLab (and its badges with ``badge=True``).

    Raises:
        HookSetupError: no ``[gitlab]`` section, or no such project.
        ForgeRejected: GitLab refused (401/403/404 carry a token and role hint).
        TransientForgeError: GitLab unreachable or answering 5xx/429: try again.
    """
    project = settings.projects.get(project_name)
    if project is None:
        known = ", ".join(sorted(settings.projects))
        raise HookSetupError(f"no project {project_name!r} in {settings.path} (configured: {known})")
    if client is None:
        if settings.gitlab is None:
            raise HookSetupError(f"{settings.path} has no [gitlab] section: give it a url and an api token")
        client = GitLabForge(settings.gitlab).client
    with _translated(project.gitlab_project):
        remote = client.projects.get(project.gitlab_project, lazy=True)
        report = _Writer(settings, project, remote, rotate_tokens).run()
        if badge:
            report = replace(report, badges=_ensure_badges(settings, project, remote))
    return report


class _Writer:
    """One run against one hook: decide, write, and collect what the report says."""

    def __init__(self, settings: Settings, project: Project, remote: RemoteProject, rotate: bool) -> None:
        self.settings, self.project, self.remote, self.rotate = settings, project, remote, rotate
        self.desired = desired_hook(settings, project)
        self.url: str = self.desired["url"]
        self.secret = project.secret_tokens[0].reveal() if project.secret_tokens else None
        self.signing = project.signing_keys[0].reveal() if project.signing_keys else None
        self.notes: list[str] = []
        self.problems: list[str] = []

    def run(self) -> HookReport:
        hooks = self.remote.hooks.list(get_all=True, max_retries=RETRIES)
        matches = [h for h in hooks if getattr(h, "url", None) == self.url]
        suffix = routes.hook_url("", self.project.name)
        for old in hooks:
            url = str(getattr(old, "url", ""))
            if url != self.url and url.endswith(suffix):
                self.notes.append(
                    f"hook {old.id} still delivers to {redact_url(url)}, an earlier address of this webhook: "
                    "delete it once nothing answers there"
                )
        if len(matches) > 1:
            extra = ", ".join(str(h.id) for h in matches[1:])
            self.notes.append(
                f"GitLab has {len(matches)} hooks with this URL (the others: {extra}); "
                "each push is delivered once per hook: delete the extra ones"
            )
        if _loopback(self.url):
            self.notes.append(f"{self.url} is a loopback address: GitLab must reach server.public_url")
        if matches:
            return self.update(matches[0].id, matches[0].attributes)
        return self.create()

    def create(self) -> HookReport:
        secret = TokenAction.SET if self.secret else TokenAction.NONE
        signing = TokenAction.SET if self.signing else TokenAction.NONE
        payload = {**self.desired, **self.tokens(secret, signing)}
        created, signing = self.write(self.create_call, payload, signing)
        assert created is not None  # a create payload never shrinks to the url alone
        return self.report(int(created["id"]), Action.CREATED, (), secret, signing)

    def update(self, hook_id: int, current: Mapping[str, Any]) -> HookReport:
        changes = diff(current, self.desired)
        secret = plan_token(self.secret, _presence(current, "token_present"), self.rotate)
        signing = plan_token(self.signing, _presence(current, "signing_token_present"), self.rotate)
        to_send = self.tokens(secret, signing)
        if changes or to_send:
            # python-gitlab requires the url on every update; GitLab leaves fields we omit untouched.
            payload = {"url": self.url, **{c.name: c.new for c in changes}, **to_send}
            _, signing = self.write(
                lambda data: self.remote.hooks.update(hook_id, data, max_retries=RETRIES), payload, signing
            )
        # A token sent again is not a change we can see: GitLab cannot say whether it held that value.
        known = changes or {secret, signing} & {TokenAction.SET, TokenAction.CLEARED}
        return self.report(
            hook_id, Action.UPDATED if known else Action.UNCHANGED, tuple(changes), secret, signing
        )

    def tokens(self, secret: TokenAction, signing: TokenAction) -> dict[str, str]:
        sent: dict[str, str] = {}
        if secret.sent:
            sent["token"] = self.secret or ""  # an empty token removes it
        if signing.sent:
            sent["signing_token"] = self.signing or ""
        return sent

    def create_call(self, data: dict[str, Any]) -> dict[str, Any]:
        attributes: dict[str, Any] = self.remote.hooks.create(data, max_retries=RETRIES).attributes
        return attributes

    def write(
        self, call: _Call, payload: dict[str, Any], signing: TokenAction
    ) -> tuple[dict[str, Any] | None, TokenAction]:
        """Send ``payload`` and check that GitLab kept the signing token it carried.

        A 400/422 that names ``signing_token`` is this GitLab refusing the field: the rest is sent
        again without it, and the report gets a problem. Any other refusal is raised with GitLab's own
        message. Returns GitLab's answer (``None`` when nothing but the url was left to send) and what
        became of the signing token.
        """
        try:
            answer: dict[str, Any] | None = call(payload)
        except gitlab.exceptions.GitlabError as exc:
            if "signing_token" not in payload or not _about_signing_token(exc):
                raise self.refused(exc) from None
            rest = {k: v for k, v in payload.items() if k != "signing_token"}
            try:
                answer = call(rest) if rest.keys() - {"url"} else None
            except gitlab.exceptions.GitlabError as again:
                raise self.refused(again) from None
            reason = str(exc.error_message)[:200].replace(self.signing or MASK, MASK)
            return answer, self.not_kept(f"it answered {exc.response_code} to it: {reason}")
        if signing.sent and self.signing and answer is not None and not answer.get("signing_token_present"):
            why = (
                "it ignored the signing token: its webhook_signing_token feature flag is off"
                if "signing_token_present" in answer
                else "it dropped the signing token and reports no signing_token_present: a GitLab before 19.0"
            )
            return answer, self.not_kept(why)
        return answer, signing

    def refused(self, exc: gitlab.exceptions.GitlabError) -> Exception:
        """GitLab's refusal as it is, but with what it was about where it says only "Invalid … given".

        Any other error goes back unchanged, for ``_translated`` to word (with the role hint on 403).
        """
        text = str(exc.error_message)
        if exc.response_code == 422 and "Invalid url given" in text:
            about = (
                f"{redact_url(self.url)}: GitLab takes only http(s) URLs, and none on localhost or a "
                "private network unless an administrator allows local requests from webhooks "
                "(Admin area > Settings > Network > Outbound requests)"
            )
        elif exc.response_code == 422 and "Invalid branch filter given" in text:
            desired = self.desired
            about = f"{desired['push_events_branch_filter']!r} ({desired['branch_filter_strategy']})"
        else:
            return exc
        return ForgeRejected(f"{translate(exc)} for {about}", 422)

    def not_kept(self, why: str) -> TokenAction:
        """Record that GitLab holds no signing token although the project requires signatures."""
        path = self.settings.path
        remedy = f"remove signing_token from [projects.{self.project.name}] in {path}"
        if not self.secret:
            remedy += " and give the project a secret_token (set on the hook by running this again)"
        self.problems.append(
            f"GitLab did not keep the signing token ({why}). pushdeploy requires signed deliveries for "
            f"{self.project.name}, so it will refuse every delivery with 401 (and GitLab pauses a hook "
            "that keeps failing) until GitLab signs them: GitLab 19.0 or later, the "
            "webhook_signing_token feature flag enabled, and this hook's signing token set (run this "
            f"again then). Or {remedy}."
        )
        return TokenAction.NOT_KEPT

    def report(
        self,
        hook_id: int,
        action: Action,
        changes: tuple[FieldChange, ...],
        secret: TokenAction,
        signing: TokenAction,
    ) -> HookReport:
        return HookReport(
            project=self.project.name,
            gitlab_project=self.project.gitlab_project,
            url=self.url,
            hook_id=hook_id,
            action=action,
            branch_filter=self.desired["push_events_branch_filter"],
            branch_filter_strategy=self.desired["branch_filter_strategy"],
            changes=changes,
            secret_token=secret,
            signing_token=signing,
            notes=tuple(self.notes),
            problems=tuple(self.problems),
            push_events=self.desired["push_events"],
            tag_push_events=self.desired["tag_push_events"],
            merge_requests_events=self.desired["merge_requests_events"],
        )


def _about_signing_token(exc: gitlab.exceptions.GitlabError) -> bool:
    """A 400/422 naming the field: the model's ``{"signing_token": [...]}``, Grape's "signing_token is …"."""
    return exc.response_code in (400, 422) and "signing_token" in str(exc.error_message)


def _presence(current: Mapping[str, Any], name: str) -> bool | None:
    return bool(current[name]) if name in current else None


def _loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in {"localhost", "127.0.0.1", "::1"}


def badge_urls(settings: Settings, project: str, environment: str) -> tuple[str, str]:
    """``(link_url, image_url)`` of an environment's deploy badge."""
    base = settings.server.public_url
    return routes.project_url(base, project), routes.badge_url(base, project, environment)


def _ensure_badges(settings: Settings, project: Project, remote: RemoteProject) -> tuple[BadgeResult, ...]:
    """One project badge per environment, found by image URL, else by name (the public URL moved)."""
    # The list also holds the group's badges, which a project cannot change.
    existing = [
        b
        for b in remote.badges.list(get_all=True, max_retries=RETRIES)
        if getattr(b, "kind", "project") == "project"
    ]
    results = []
    for environment in project.environments.values():
        link_url, image_url = badge_urls(settings, project.name, environment.name)
        wanted = {"name": environment.status_name, "link_url": link_url, "image_url": image_url}
        found = next((b for b in existing if b.image_url == image_url), None) or next(
            (b for b in existing if getattr(b, "name", None) == wanted["name"]), None
        )
        if found is None:
            remote.badges.create(wanted, max_retries=RETRIES)
            action = Action.CREATED
        else:
            # GitLab versions without badge names do not report one: compare what they do report.
            differs = {k: v for k, v in wanted.items() if k in found.attributes and found.attributes[k] != v}
            if differs:
                remote.badges.update(found.id, differs, max_retries=RETRIES)
            action = Action.UPDATED if differs else Action.UNCHANGED
        results.append(BadgeResult(environment.name, action, image_url, link_url))
    return tuple(results)


@contextlib.contextmanager
def _translated(gitlab_project: str) -> Iterator[None]:
    """``workers.forge.translate``, with the role these calls need and the project they were about."""
    try:
        yield
    except (gitlab.exceptions.GitlabError, requests.ConnectionError, requests.Timeout) as exc:
        error = translate(exc)
        if isinstance(error, ForgeRejected) and error.status_code in (401, 403, 404):
            error = ForgeRejected(
                f"{error}; {MAINTAINER_HINT} (gitlab_project = {gitlab_project!r})", error.status_code
            )
        raise error from None


__all__ = [
    "Action",
    "BadgeResult",
    "FieldChange",
    "HookReport",
    "HookSetupError",
    "TokenAction",
    "badge_urls",
    "branch_filter",
    "desired_hook",
    "diff",
    "plan_token",
    "setup_hook",
]
