"""What a person may do follows their access level in each GitLab project: read it, and keep it briefly.

GitLab decides who is a member of what. The level is asked with the service's token (``GET
/projects/:id/members/all/:user_id``, which counts memberships inherited from groups too) for every
configured project at once, and kept in Redis for :data:`schema.RIGHTS_TTL` seconds, so every web
process and node sees the same answer, a sign-in refreshes it for all of them, and a membership
taken away in GitLab stops working within five minutes. A GitLab that cannot be asked is an error,
never "no rights" cached, and never "the rights we had": the caller refuses the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum

import gitlab
import gitlab.exceptions
import requests
from redis import Redis

from workers import schema
from workers.config import GitLabSettings, Project
from workers.errors import EngineError
from workers.forge import translate


class AccessLevel(IntEnum):
    """GitLab's access levels for project members (and NONE for a person who is not one)."""

    NONE = 0
    MINIMAL = 5
    GUEST = 10
    PLANNER = 15
    REPORTER = 20
    DEVELOPER = 30
    MAINTAINER = 40
    OWNER = 50

    @classmethod
    def of(cls, value: int) -> AccessLevel:
        """The named level at or below ``value`` (GitLab may add levels between the known ones)."""
        return max((level for level in cls if level <= value), default=cls.NONE)


class RightsUnavailable(EngineError):
    """GitLab could not say what a person may do (unreachable, or it refused the service's token)."""


class Memberships:
    """Access levels of GitLab users in the configured projects, from Redis or from GitLab."""

    def __init__(
        self, redis: Redis, settings: GitLabSettings | None, projects: Mapping[str, Project]
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.projects = projects
        self._client: gitlab.Gitlab | None = None

    def levels(self, user_id: int, refresh: bool = False) -> dict[str, AccessLevel]:
        """Project name → the user's level; ``refresh`` asks GitLab even when Redis has them.

        Raises:
            RightsUnavailable: GitLab did not answer, or refused the service's token.
        """
        key = schema.rights(user_id)
        if not refresh:
            kept = {k.decode(): v for k, v in self.redis.hgetall(key).items()}
            if set(kept) >= set(self.projects):
                return {name: AccessLevel.of(int(kept[name])) for name in self.projects}
        found = {name: self._ask(project, user_id) for name, project in self.projects.items()}
        with self.redis.pipeline() as pipe:
            pipe.delete(key)
            if found:
                pipe.hset(key, mapping={name: int(level) for name, level in found.items()})
                pipe.expire(key, schema.RIGHTS_TTL)
            pipe.execute()
        return found

    def forget(self, user_id: int) -> None:
        """Drop what is kept about a user (at sign-out), so the next use asks GitLab."""
        self.redis.delete(schema.rights(user_id))

    def _ask(self, project: Project, user_id: int) -> AccessLevel:
        if self.settings is None:
            raise RightsUnavailable("no [gitlab] section is configured: nobody's rights can be read")
        try:
            member = self._gitlab().projects.get(project.gitlab_project, lazy=True).members_all.get(user_id)
        except gitlab.exceptions.GitlabGetError as exc:
            if exc.response_code == 404:  # not a member, directly or through a group
                return AccessLevel.NONE
            raise RightsUnavailable(self._why(translate(exc))) from None
        except (gitlab.exceptions.GitlabError, requests.RequestException) as exc:
            raise RightsUnavailable(self._why(translate(exc))) from None
        if getattr(member, "state", "active") != "active":  # blocked or deactivated in GitLab
            return AccessLevel.NONE
        return AccessLevel.of(int(member.access_level))

    def _why(self, cause: Exception) -> str:
        where = self.settings.url if self.settings else "GitLab"
        return f"cannot read your rights from GitLab at {where} ({cause}); try again in a moment"

    def _gitlab(self) -> gitlab.Gitlab:
        if self._client is None:
            assert self.settings is not None
            self._client = gitlab.Gitlab(
                self.settings.url,
                private_token=self.settings.token.reveal(),
                timeout=self.settings.timeout,
                retry_transient_errors=False,  # a person waits for this answer: fail closed, fast
                user_agent="pushdeploy",
            )
        return self._client
