"""What the person behind a request may do with a project, from their access level in GitLab.

=====================  ====================================================================
level                  may
=====================  ====================================================================
none, Guest, blocked   nothing: the project does not exist for them (404)
Reporter               view its pages, deployments and logs
Developer              also deploy, roll back and cancel in unprotected environments
Maintainer, Owner      also in protected environments (``protected = true``)
admin token            everything
=====================  ====================================================================

A refused action answers 403 and changes nothing. When GitLab cannot say, the answer is 503:
rights are never guessed.
"""

from __future__ import annotations

from flask import Flask, abort, current_app, g

from webhook import people, services
from webhook.people import Person
from workers.config import Environment
from workers.gitlab_members import AccessLevel, Memberships, RightsUnavailable
from workers.reviews import environment_of

KEY = "pushdeploy.memberships"

VIEW = AccessLevel.REPORTER
DEPLOY = AccessLevel.DEVELOPER
DEPLOY_PROTECTED = AccessLevel.MAINTAINER


def init_app(app: Flask) -> None:
    found = services.of(app)
    app.extensions[KEY] = Memberships(found.redis, found.settings.gitlab, found.settings.projects)


def memberships() -> Memberships:
    found: Memberships = current_app.extensions[KEY]
    return found


def needed(environment: Environment) -> AccessLevel:
    """The level that deploys, rolls back and cancels in ``environment``."""
    return DEPLOY_PROTECTED if environment.protected else DEPLOY


def levels(person: Person) -> dict[str, AccessLevel]:
    """Project name → the person's level (every project at OWNER for the admin token).

    Raises:
        HTTPException: 503 when GitLab cannot say (fail closed).
    """
    projects = services.current().settings.projects
    if person.user_id is None:
        return dict.fromkeys(projects, AccessLevel.OWNER if person.is_admin else AccessLevel.NONE)
    known: dict[int, dict[str, AccessLevel]] = g.setdefault("rights_levels", {})  # once per request
    if person.user_id not in known:
        try:
            known[person.user_id] = memberships().levels(person.user_id)
        except RightsUnavailable as exc:
            abort(503, description=str(exc))
    return known[person.user_id]


def level(person: Person | None, project: str) -> AccessLevel:
    if person is None:
        return AccessLevel.NONE
    return levels(person).get(project, AccessLevel.NONE)


def visible(person: Person | None) -> list[str]:
    """The projects the person may see, in the configuration's order."""
    if person is None:
        return []
    return [name for name, found in levels(person).items() if found >= VIEW]


def may_view(project: str, person: Person | None = None) -> bool:
    return level(person or people.current(), project) >= VIEW


def may_act(project: str, environment: str, person: Person | None = None) -> bool:
    """Whether the person may deploy, roll back and cancel in ``project/environment``."""
    found = services.current()
    env = environment_of(found.settings, found.redis, project, environment)  # review apps too
    if env is None:
        return False
    return level(person or people.current(), project) >= needed(env)


def require_view(project: str) -> None:
    """404 unless the person may see ``project``: a project they may not see does not exist."""
    if not may_view(project):
        abort(404)


def require_act(project: str, environment: str) -> None:
    """404 unless the person may see the project, 403 unless they may act in the environment."""
    require_view(project)
    if not may_act(project, environment):
        found = services.current()
        env = environment_of(found.settings, found.redis, project, environment)
        role = "Maintainer" if env is not None and env.protected else "Developer"
        abort(403, description=f"deploy, rollback and cancel in {project}/{environment} need {role} or above")
