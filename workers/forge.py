"""The forge a deployment reports to: GitLab through python-gitlab, or none.

Third-party errors are translated here, at the boundary, so nothing else catches ``gitlab.*``::

    ForgeError
    ├── TransientForgeError   5xx, 409, 429, timeouts, resets: try again later
    └── ForgeRejected         401, 403, 404, other 4xx: a configuration problem, not retried blindly
        └── PipelineGone      404 for the pipeline a deployment's statuses were pinned to
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

import gitlab
import gitlab.exceptions
import requests

from workers.config import GitLabSettings
from workers.errors import EngineError

ACCESS_HINT = (
    "the GitLab token needs the api scope and the Developer role on the project "
    "(Maintainer when the branch is protected)"
)


class StatusState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass(frozen=True)
class CommitStatus:
    project: str  # GitLab path_with_namespace or numeric id
    sha: str
    state: StatusState
    ref: str
    name: str
    target_url: str
    description: str

    def to_dict(self) -> dict[str, str]:
        # Field by field: dataclasses.asdict deep-copies, and this runs for every accepted push.
        return {name: str(getattr(self, name)) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommitStatus:
        return cls(**{**data, "state": StatusState(data["state"])})


class Outcome(StrEnum):
    """What became of one status (counted by outcome in ``pushdeploy_status_posts``)."""

    POSTED = "posted"  # GitLab accepted it now
    ALREADY = "already"  # GitLab had it already (a try whose answer was lost)
    RECORDED = "recorded"  # no [gitlab] section: kept on our own pages only
    SKIPPED = "skipped"  # GitLab refused the deployment's statuses (403): not sent again
    REFUSED = "refused"  # GitLab refused this one (4xx): shown on the deployment, not retried


@dataclass(frozen=True)
class Posted:
    """What became of a status, and the GitLab pipeline it is in, when known, so that the
    deployment's later statuses go to that same pipeline."""

    outcome: Outcome
    pipeline_id: int | None = None


@dataclass(frozen=True)
class DeploymentUpdate:
    """A GitLab deployment (Operate › Environments) created ``running`` and updated to its end."""

    project: str
    sha: str
    ref: str  # the branch or tag name, as GitLab wants it
    environment: str
    status: str  # running | success | failed | canceled
    kind: str = "deployment"
    tag: bool = False  # ``ref`` is a tag

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentUpdate:
        return cls(**data)


@dataclass(frozen=True)
class ReviewNote:
    """The one note on a merge request about its review app: created once, then edited in place."""

    project: str  # GitLab path or id
    owner: str  # the pushdeploy project whose review record keeps the note's id
    iid: int
    body: str
    kind: str = "note"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviewNote:
        return cls(**data)


@dataclass(frozen=True)
class EnvironmentAction:
    """A GitLab environment made to show a review app's address (``start``), or stopped (``stop``)."""

    project: str
    name: str
    action: str  # start | stop
    external_url: str = ""
    kind: str = "environment"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvironmentAction:
        return cls(**data)


class ForgeError(EngineError):
    """A status could not be posted; the message never holds the token."""


class TransientForgeError(ForgeError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ForgeRejected(ForgeError):
    def __init__(self, message: str, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(message)


class PipelineGone(ForgeRejected):
    """GitLab has no pipeline ``pipeline_id`` for this sha and ref any more (deleted)."""

    def __init__(self, pipeline_id: int) -> None:
        self.pipeline_id = pipeline_id
        super().__init__(f"GitLab has no pipeline {pipeline_id} for this commit and ref any more", 404)


class Forge(Protocol):
    """Where commit statuses go."""

    name: str

    def post_status(
        self, status: CommitStatus, retrying: bool = False, pipeline_id: int | None = None
    ) -> Posted:
        """Post one status, into ``pipeline_id`` when given (else GitLab picks the newest pipeline).

        ``retrying`` after an ambiguous failure: the last try may have landed.
        """
        ...

    def post_deployment(self, update: DeploymentUpdate, forge_id: str) -> str:
        """Create (no ``forge_id``, never retried blind) or update a forge deployment; returns its id."""
        ...

    def last_deployment_id(self, update: DeploymentUpdate) -> int:
        """The newest forge deployment id of the environment now (0: none): taken before a create."""
        ...

    def find_deployment(self, update: DeploymentUpdate, after: int) -> str:
        """Our deployment (sha and ref) made after ``after``, when a create may have landed; or ""."""
        ...

    def branch_head(self, project: str, branch: str) -> str | None:
        """The commit a branch points at now, or None when the forge cannot tell."""
        ...

    def post_note(self, note: ReviewNote, note_id: str) -> str:
        """Edit note ``note_id`` (or create one when "" or deleted on the forge); returns its id."""
        ...

    def environment(self, action: EnvironmentAction) -> None:
        """Create or update the environment with its address, or stop it."""
        ...


class NullForge:
    """No ``[gitlab]`` section: statuses are only recorded on the deployment."""

    name = "none"

    def post_status(
        self, status: CommitStatus, retrying: bool = False, pipeline_id: int | None = None
    ) -> Posted:
        return Posted(Outcome.RECORDED)

    def post_deployment(self, update: DeploymentUpdate, forge_id: str) -> str:
        return forge_id

    def last_deployment_id(self, update: DeploymentUpdate) -> int:
        return 0

    def find_deployment(self, update: DeploymentUpdate, after: int) -> str:
        return ""

    def branch_head(self, project: str, branch: str) -> str | None:
        return None

    def post_note(self, note: ReviewNote, note_id: str) -> str:
        return note_id

    def environment(self, action: EnvironmentAction) -> None:
        return None


class GitLabForge:
    """Posts statuses with python-gitlab: explicit timeout, a few transient retries inside the call."""

    name = "gitlab"

    def __init__(self, settings: GitLabSettings, max_retries: int = 2) -> None:
        self.max_retries = max_retries
        self.client = gitlab.Gitlab(
            settings.url,
            private_token=settings.token.reveal(),
            timeout=settings.timeout,
            retry_transient_errors=True,
            user_agent="pushdeploy",
        )
        self._ids: dict[str, int] = {}

    def _project(self, project: str) -> Any:
        """A handle on ``project`` by its numeric id, asked once per path.

        After a project is renamed or moved GitLab answers reads of its old path with a redirect,
        but refuses writes to it (405): statuses and deployments always go to the id.
        """
        if project.isdigit():
            return self.client.projects.get(int(project), lazy=True)
        known = self._ids.get(project.lower())
        if known is None:
            with _translated():
                found = self.client.projects.get(project, max_retries=self.max_retries, obey_rate_limit=True)
            known = self._ids[project.lower()] = int(found.id)
        return self.client.projects.get(known, lazy=True)

    def post_deployment(self, update: DeploymentUpdate, forge_id: str) -> str:
        project = self._project(update.project)
        with _translated():
            if forge_id:
                return self._update_deployment(project, update, forge_id)
            created = project.deployments.create(
                {
                    "environment": update.environment,
                    "sha": update.sha,
                    "ref": update.ref,
                    "tag": update.tag,
                    "status": update.status,
                },
                # Creating is not idempotent: a try that timed out may have made one, and a blind
                # retry would make a second. The outbox looks for it before it tries again.
                retry_transient_errors=False,
                max_retries=self.max_retries,
                obey_rate_limit=True,
            )
            return str(created.id)

    def _update_deployment(self, project: Any, update: DeploymentUpdate, forge_id: str) -> str:
        """Set the status; GitLab's 400 for the status it already has (a try that landed) is done."""
        deployment = project.deployments.get(int(forge_id), lazy=True)
        deployment.status = update.status
        try:
            deployment.save(max_retries=self.max_retries, obey_rate_limit=True)
        except gitlab.exceptions.GitlabUpdateError as exc:
            if exc.response_code != 400 or "cannot transition" not in str(exc.error_message):
                raise
            now = project.deployments.get(int(forge_id), max_retries=self.max_retries, obey_rate_limit=True)
            if getattr(now, "status", "") != update.status:
                raise
        return forge_id

    def last_deployment_id(self, update: DeploymentUpdate) -> int:
        project = self._project(update.project)
        with _translated():
            newest = project.deployments.list(
                environment=update.environment,
                order_by="id",
                sort="desc",
                per_page=1,
                page=1,
                max_retries=self.max_retries,
                obey_rate_limit=True,
            )
        return max((int(item.id) for item in newest), default=0)

    def find_deployment(self, update: DeploymentUpdate, after: int) -> str:
        project = self._project(update.project)
        found = ""
        with _translated():
            for item in project.deployments.list(
                environment=update.environment,
                order_by="id",
                sort="desc",
                per_page=20,
                iterator=True,
                max_retries=self.max_retries,
                obey_rate_limit=True,
            ):
                if int(item.id) <= after:
                    break
                if (item.sha, item.ref) == (update.sha, update.ref):
                    found = str(item.id)  # newest first: the last match is the first made after ``after``
        return found

    def branch_head(self, project: str, branch: str) -> str | None:
        remote = self.client.projects.get(project, lazy=True)
        try:
            found = remote.branches.get(branch, max_retries=self.max_retries, obey_rate_limit=True)
        except gitlab.exceptions.GitlabGetError as exc:
            if exc.response_code == 404:
                return None
            raise translate(exc) from None
        except (gitlab.exceptions.GitlabError, requests.ConnectionError, requests.Timeout) as exc:
            raise translate(exc) from None
        sha = (found.commit or {}).get("id")
        return str(sha) if sha else None

    def post_note(self, note: ReviewNote, note_id: str) -> str:
        """Edit in place; a note deleted on GitLab (404) is created again, once, and its new id kept."""
        request = self._project(note.project).mergerequests.get(note.iid, lazy=True)
        options = {"max_retries": self.max_retries, "obey_rate_limit": True}
        with _translated():
            if note_id:
                try:
                    request.notes.update(int(note_id), {"body": note.body}, **options)
                    return note_id
                except gitlab.exceptions.GitlabUpdateError as exc:
                    if exc.response_code != 404:
                        raise
            # Not retried blind: a create that timed out may have landed (then a second note shows).
            created = request.notes.create({"body": note.body}, retry_transient_errors=False, **options)
        return str(created.id)

    def environment(self, action: EnvironmentAction) -> None:
        project = self._project(action.project)
        options = {"max_retries": self.max_retries, "obey_rate_limit": True}
        with _translated():
            found = [
                env
                for env in project.environments.list(name=action.name, get_all=True, **options)
                if getattr(env, "name", "") == action.name
            ]
            if action.action == "stop":
                for env in found:
                    if getattr(env, "state", "") != "stopped":
                        env.stop(**options)
                return
            if found:
                project.environments.update(found[0].id, {"external_url": action.external_url}, **options)
            else:
                project.environments.create(
                    {"name": action.name, "external_url": action.external_url}, **options
                )

    def post_status(
        self, status: CommitStatus, retrying: bool = False, pipeline_id: int | None = None
    ) -> Posted:
        project = self._project(status.project)
        commit = project.commits.get(status.sha, lazy=True)
        if retrying and status.state in FINAL:
            there = self._already_there(commit, status, pipeline_id, same_state=True)
            if there is not None:
                return Posted(Outcome.ALREADY, there or pipeline_id)
        fields: dict[str, Any] = {
            "state": str(status.state),
            "ref": status.ref,
            "name": status.name,
            "target_url": status.target_url,
            "description": status.description[:255],
        }
        if pipeline_id:
            fields["pipeline_id"] = pipeline_id
        try:
            created = commit.statuses.create(
                fields,
                # A final state is never retried blind inside the call: a timeout may hide a post
                # that landed; the outbox retries it, looking first (see FINAL).
                retry_transient_errors=status.state not in FINAL,
                max_retries=self.max_retries,
                obey_rate_limit=True,
            )
        except gitlab.exceptions.GitlabError as exc:
            if exc.response_code == 400 and "Cannot transition status" in str(exc.error_message):
                # Already there (a try that landed late): find its pipeline when none is pinned yet.
                there = pipeline_id or self._already_there(commit, status, pipeline_id, same_state=False)
                return Posted(Outcome.ALREADY, there or None)
            if (
                exc.response_code == 404
                and pipeline_id
                and "Pipeline for pipeline_id" in str(exc.error_message)
            ):
                raise PipelineGone(pipeline_id) from None
            raise translate(exc) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise translate(exc) from None
        landed = getattr(created, "pipeline_id", None)
        return Posted(Outcome.POSTED, int(landed) if landed else pipeline_id)

    def _already_there(
        self, commit: Any, status: CommitStatus, pipeline_id: int | None, same_state: bool
    ) -> int | None:
        """The pipeline (0 when GitLab does not say) holding this deployment's latest status of this
        name, when there is one (in ``status``'s state if ``same_state``): a try that landed late."""
        filters: dict[str, Any] = {"ref": status.ref, "name": status.name}
        if pipeline_id:
            filters["pipeline_id"] = pipeline_id
        with _translated():
            current = commit.statuses.list(
                get_all=True, max_retries=self.max_retries, obey_rate_limit=True, **filters
            )
        ours = [
            item
            for item in current
            if _link_path(str(getattr(item, "target_url", "") or "")) == _link_path(status.target_url)
            and (not same_state or getattr(item, "status", "") == status.state.value)
        ]
        if not ours:
            return None
        newest = max(ours, key=lambda item: int(getattr(item, "id", 0)))
        return int(getattr(newest, "pipeline_id", 0) or 0)


FINAL = frozenset({StatusState.SUCCESS, StatusState.FAILED, StatusState.CANCELED})
"""GitLab refuses a repeated pending or running ("Cannot transition"), but a repeated final state
makes a second record: so a final state is looked up before it is posted again."""


def _link_path(url: str) -> str:
    return url.split("?", 1)[0]  # the signed part changes between tries; the page does not


def translate(exc: Exception) -> ForgeError:
    """python-gitlab's and requests' errors, as ours."""
    if isinstance(exc, gitlab.exceptions.GitlabAuthenticationError):
        return ForgeRejected(f"GitLab answered 401: the token was refused; {ACCESS_HINT}", 401)
    if isinstance(exc, gitlab.exceptions.GitlabError):
        # GitlabCreateError and GitlabHttpError are siblings: both carry the response code.
        code = exc.response_code or 0
        text = str(exc.error_message)[:300]
        if code in (403, 404):
            return ForgeRejected(f"GitLab answered {code} ({text}): {ACCESS_HINT}", code)
        if code in (0, 409, 429) or code >= 500:
            return TransientForgeError(f"GitLab answered {code or 'nothing'} ({text})")
        return ForgeRejected(f"GitLab answered {code} ({text})", code)
    return TransientForgeError(f"GitLab unreachable: {type(exc).__name__}")


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (gitlab.exceptions.GitlabError, requests.ConnectionError, requests.Timeout) as exc:
        raise translate(exc) from None


def forge_for(settings: GitLabSettings | None) -> Forge:
    return GitLabForge(settings) if settings is not None else NullForge()
