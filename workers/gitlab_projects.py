"""What GitLab says about each configured project, for ``pushdeploy check``.

A delivery names its project by ``path_with_namespace``, which changes when a project is renamed or
moved (GitLab's API keeps answering to the old path, so nothing else notices), and GitLab paths
match ignoring case. Asking ``GET /projects/:id`` once per project shows the canonical path and the
numeric id, which never changes: the id is what ``gitlab_project`` should then be.

Nothing here raises for GitLab's sake: an unreachable or refusing GitLab is a warning on each
project, because ``check`` is about the configuration first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import gitlab
import gitlab.exceptions
import requests

from workers.config import GitLabSettings, Project, Settings
from workers.forge import GitLabForge, translate

RETRIES = 1
"""Transient errors retried per lookup: ``check`` answers an operator, who can run it again."""

TOKEN_USERNAMES = re.compile(r"^(?:glpat|gldt|glptt|glcbt|gloas)-")
"""GitLab's token prefixes: a URL whose user name is a token carries a credential without a password."""


@dataclass(frozen=True)
class ProjectLookup:
    """One project as GitLab knows it (``project_id`` and ``path``), or why that is unknown."""

    project: str
    configured: str
    project_id: int | None = None
    path: str | None = None
    warning: str | None = None
    unreachable: bool = False


def lookup_projects(settings: Settings, client: gitlab.Gitlab | None = None) -> Iterator[ProjectLookup]:
    """Resolve every project's ``gitlab_project``; after GitLab proves unreachable, ask no more."""
    if settings.gitlab is None:
        return
    client = client or GitLabForge(settings.gitlab).client
    unreachable: str | None = None
    for project in settings.projects.values():
        if unreachable is not None:
            yield ProjectLookup(
                project.name, str(project.gitlab_project), warning=unreachable, unreachable=True
            )
            continue
        found = _lookup(client, settings.gitlab, project)
        if found.unreachable:
            unreachable = found.warning
        yield found


def _lookup(client: gitlab.Gitlab, where: GitLabSettings, project: Project) -> ProjectLookup:
    configured = str(project.gitlab_project)  # a numeric id may come as a number
    try:
        remote = client.projects.get(configured, max_retries=RETRIES)
    except (requests.ConnectionError, requests.Timeout) as exc:
        cause = _cause(exc, where.timeout)
        down = f"GitLab at {where.url} unreachable: {cause}"
        return ProjectLookup(project.name, configured, warning=down, unreachable=True)
    except gitlab.exceptions.GitlabError as exc:
        if exc.response_code == 404:
            why = (
                f"GitLab has no project {configured!r} that this token can see: check gitlab_project, "
                "and that the token's user is a member of the project"
            )
        else:
            why = f"cannot look up {configured!r}: {translate(exc)}"
        return ProjectLookup(project.name, configured, warning=why)
    project_id, path = int(remote.id), str(remote.path_with_namespace)
    warning: str | None = None
    if not configured.isdigit() and path != configured:
        warning = (
            f"GitLab knows {configured!r} as {path!r} (id {project_id}): the project was renamed or moved, "
            f"or the case differs, and deliveries name {path!r}; set gitlab_project = {project_id}, "
            "which a rename does not change"
        )
    return ProjectLookup(project.name, configured, project_id, path, warning)


def _cause(exc: requests.RequestException, timeout: float) -> str:
    """The root cause in a few words ("Connection refused", "no answer within 5 s"), no URL or header."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return found.group(1).strip() if found else type(exc).__name__


def credential_in_url(url: str) -> bool:
    """Whether ``url`` carries a password, or a GitLab token as its user name."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return False
    return bool(parts.password) or bool(parts.username and TOKEN_USERNAMES.match(parts.username))


__all__ = ["ProjectLookup", "credential_in_url", "lookup_projects"]
