"""The forge a deployment reports to: GitLab through python-gitlab, or none.

Third-party errors are translated here, at the boundary, so nothing else catches ``gitlab.*``::

    ForgeError
    ├── TransientForgeError   5xx, 409, 429, timeouts, resets: try again later
    └── ForgeRejected         401, 403, 404, other 4xx: a configuration problem, not retried blindly
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


@dataclass(frozen=True)
class DeploymentUpdate:
    """A GitLab deployment (Operate › Environments) created ``running`` and updated to its end."""

    project: str
    sha: str
    ref: str
    environment: str
    status: str  # running | success | failed | canceled
    kind: str = "deployment"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentUpdate:
        return cls(**data)


class ForgeError(Exception):
    """A status could not be posted; the message never holds the token."""


class TransientForgeError(ForgeError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ForgeRejected(ForgeError):
    def __init__(self, message: str, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(message)


class Forge(Protocol):
    """Where commit statuses go. ``post_status`` returns "posted" or "already" (state already set)."""

    name: str

    def post_status(self, status: CommitStatus, retrying: bool = False) -> str:
        """Post one status; ``retrying`` after an ambiguous failure (the last try may have landed)."""
        ...

    def post_deployment(self, update: DeploymentUpdate, forge_id: str) -> str:
        """Create (no ``forge_id``) or update a forge deployment; returns its id."""
        ...

    def branch_head(self, project: str, branch: str) -> str | None:
        """The commit a branch points at now, or None when the forge cannot tell."""
        ...


class NullForge:
    """No ``[gitlab]`` section: statuses are only recorded on the deployment."""

    name = "none"

    def post_status(self, status: CommitStatus, retrying: bool = False) -> str:
        return "recorded"

    def post_deployment(self, update: DeploymentUpdate, forge_id: str) -> str:
        return forge_id

    def branch_head(self, project: str, branch: str) -> str | None:
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

    def post_deployment(self, update: DeploymentUpdate, forge_id: str) -> str:
        project = self.client.projects.get(update.project, lazy=True)
        with _translated():
            if forge_id:
                deployment = project.deployments.get(int(forge_id), lazy=True)
                deployment.status = update.status
                deployment.save(max_retries=self.max_retries, obey_rate_limit=True)
                return forge_id
            created = project.deployments.create(
                {
                    "environment": update.environment,
                    "sha": update.sha,
                    "ref": update.ref,
                    "tag": False,
                    "status": update.status,
                },
                max_retries=self.max_retries,
                obey_rate_limit=True,
            )
            return str(created.id)
        raise AssertionError("unreachable")

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

    def post_status(self, status: CommitStatus, retrying: bool = False) -> str:
        project = self.client.projects.get(status.project, lazy=True)
        commit = project.commits.get(status.sha, lazy=True)
        if retrying and status.state in FINAL and self._already_there(commit, status):
            return "already"
        try:
            commit.statuses.create(
                {
                    "state": str(status.state),
                    "ref": status.ref,
                    "name": status.name,
                    "target_url": status.target_url,
                    "description": status.description[:255],
                },
                # A final state is never retried blind inside the call: a timeout may hide a post
                # that landed; the outbox retries it, looking first (see FINAL).
                retry_transient_errors=status.state not in FINAL,
                max_retries=self.max_retries,
                obey_rate_limit=True,
            )
        except gitlab.exceptions.GitlabError as exc:
            if exc.response_code == 400 and "Cannot transition status" in str(exc.error_message):
                return "already"
            raise translate(exc) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise translate(exc) from None
        return "posted"

    def _already_there(self, commit: Any, status: CommitStatus) -> bool:
        """Whether GitLab already shows this state for this deployment (a try that landed late)."""
        with _translated():
            current = commit.statuses.list(
                ref=status.ref,
                name=status.name,
                get_all=True,
                max_retries=self.max_retries,
                obey_rate_limit=True,
            )
        return any(
            getattr(item, "status", "") == status.state.value
            and _link_path(str(getattr(item, "target_url", "") or "")) == _link_path(status.target_url)
            for item in current
        )


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
