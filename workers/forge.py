"""The forge a deployment reports to: GitLab through python-gitlab, or none.

Third-party errors are translated here, at the boundary, so nothing else catches ``gitlab.*``::

    ForgeError
    ├── TransientForgeError   5xx, 409, 429, timeouts, resets: try again later
    └── ForgeRejected         401, 403, 404, other 4xx: a configuration problem, not retried blindly
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

import gitlab
import gitlab.exceptions
import requests

from workers.config import GitLabSettings

TOKEN_HINT = (
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
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommitStatus:
        return cls(**{**data, "state": StatusState(data["state"])})


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

    def post_status(self, status: CommitStatus) -> str: ...


class NullForge:
    """No ``[gitlab]`` section: statuses are only recorded on the deployment."""

    name = "none"

    def post_status(self, status: CommitStatus) -> str:
        return "recorded"


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

    def post_status(self, status: CommitStatus) -> str:
        project = self.client.projects.get(status.project, lazy=True)
        commit = project.commits.get(status.sha, lazy=True)
        try:
            commit.statuses.create(
                {
                    "state": str(status.state),
                    "ref": status.ref,
                    "name": status.name,
                    "target_url": status.target_url,
                    "description": status.description[:255],
                },
                max_retries=self.max_retries,
                obey_rate_limit=True,
            )
        except gitlab.exceptions.GitlabAuthenticationError:
            raise ForgeRejected(f"GitLab answered 401: the token was refused; {TOKEN_HINT}", 401) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientForgeError(f"GitLab unreachable: {type(exc).__name__}") from None
        except gitlab.exceptions.GitlabError as exc:
            # GitlabCreateError and GitlabHttpError are siblings: both carry the response code.
            code = exc.response_code or 0
            text = str(exc.error_message)[:300]
            if code == 400 and "Cannot transition status" in text:
                return "already"
            if code in (403, 404):
                raise ForgeRejected(f"GitLab answered {code} ({text}): {TOKEN_HINT}", code) from None
            if code == 409 or code == 429 or code >= 500 or code == 0:
                raise TransientForgeError(f"GitLab answered {code or 'nothing'} ({text})") from None
            raise ForgeRejected(f"GitLab answered {code} ({text})", code) from None
        return "posted"


def forge_for(settings: GitLabSettings | None) -> Forge:
    return GitLabForge(settings) if settings is not None else NullForge()
