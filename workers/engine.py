"""The worker's engine: what every deployment job of a worker process needs, built once.

RQ calls a job by name with the deployment id only, so a job finds the engine of the process it
runs in. ``pushdeploy worker`` builds and installs it before it takes a job, and the work-horses
it forks inherit it: the config is read once, not once per job. A process that never installed
one (a plain ``rq worker`` started by hand) builds it from ``PUSHDEPLOY_CONFIG`` for each job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from redis import Redis

from workers.config import Settings, load
from workers.deploylog import Masker
from workers.deployments import DeploymentStore
from workers.forge import Forge, forge_for


@dataclass(frozen=True)
class Engine:
    settings: Settings
    redis: Redis
    store: DeploymentStore
    forge: Forge
    masker: Masker
    """Hides every configured secret in what is logged."""

    @classmethod
    def build(cls, settings: Settings, redis: Redis) -> Engine:
        return cls(
            settings,
            redis,
            DeploymentStore(redis),
            forge_for(settings.gitlab),
            Masker(settings.all_secrets()),
        )


_installed: Engine | None = None


def install(engine: Engine) -> None:
    """Make ``engine`` the one this process's jobs run with."""
    global _installed
    _installed = engine


def current(connection: Redis) -> Engine:
    """The installed engine; else one built now from ``PUSHDEPLOY_CONFIG`` on the job's connection."""
    if _installed is not None:
        return _installed
    return Engine.build(load(os.environ["PUSHDEPLOY_CONFIG"]), connection)
