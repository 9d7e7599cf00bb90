"""What an operator asks of the engine beyond pushes: deploy a ref or sha now, roll back.

Both queue an ordinary deployment through the intake; what cannot be done raises an
:class:`OperationError` subclass, which the web tier turns into its HTTP answer.
"""

from __future__ import annotations

import re

from workers.config import Environment, Project
from workers.deployments import Deployment, State, new_id
from workers.errors import EngineError
from workers.intake import Intake
from workers.source import SHA_RE

REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}\Z")


class OperationError(EngineError):
    """An operator's request cannot be done; the message says why."""


class InvalidRequest(OperationError):
    """The request itself is wrong: a malformed sha or ref, or another environment's deployment."""


class NotRollbackable(OperationError):
    """Only a deployment that succeeded can be rolled back to."""


def manual_deploy(
    intake: Intake, project: Project, environment: Environment, who: str, ref: str = "", sha: str = ""
) -> Deployment:
    """Queue a deployment of a sha, or of a branch or tag resolved by the worker when it starts."""
    if sha:
        sha = sha.lower()
        if not SHA_RE.match(sha):
            raise InvalidRequest("sha must be 40 or 64 hex characters")
    ref = ref or environment.branch
    if not ref:
        raise InvalidRequest(
            f"environment {environment.name!r} deploys tags ({environment.tags}): name the tag to deploy"
        )
    deployment = Deployment(
        id=new_id(),
        project=project.name,
        environment=environment.name,
        ref=full_ref(ref, environment),
        sha=sha,
        requested_by=who[:255],
        trigger="manual",
    )
    intake.enqueue(project, environment, deployment)
    return deployment


def full_ref(ref: str, environment: Environment) -> str:
    """``refs/heads/…`` or ``refs/tags/…`` for a name an operator gave.

    A full ref is kept as it is. A bare name is taken as a tag in an environment that deploys tags
    and as a branch elsewhere; a worker resolving it without a sha falls back to the other kind.
    """
    name = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
    if not REF_RE.match(name) or ".." in name:
        raise InvalidRequest("ref must be a branch or tag name")
    if ref != name:
        return ref
    return f"refs/tags/{name}" if environment.tags else f"refs/heads/{name}"


def rollback(
    intake: Intake, project: Project, environment: Environment, target: Deployment, who: str
) -> Deployment:
    """Queue a deployment of an earlier successful one, reusing its release when it is still kept."""
    if (target.project, target.environment) != (project.name, environment.name):
        raise InvalidRequest("that deployment belongs to another environment")
    if target.state is not State.SUCCEEDED:
        raise NotRollbackable(f"only a succeeded deployment can be rolled back to (this one {target.state})")
    deployment = Deployment(
        id=new_id(),
        project=project.name,
        environment=environment.name,
        ref=target.ref,
        sha=target.sha,
        requested_by=who[:255],
        trigger=f"rollback to {target.id}",
        reuse_release=target.release or target.id,
        commit_title=target.commit_title,
        commit_author=target.commit_author,
    )
    intake.enqueue(project, environment, deployment)
    return deployment
