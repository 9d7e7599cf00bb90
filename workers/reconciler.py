"""The reconciler: a branch head that moved without a deployment gets one ("missed webhook").

GitLab does not retry failed deliveries and can drop them (rate limits, a hook it disabled), so
each environment's branch head is compared now and then with the newest deployment's commit. A
difference that lasts longer than a grace period queues a deployment. Projects with
``trigger = "poll"`` use the same check, with no grace, as their only trigger.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from tempfile import TemporaryDirectory

from redis import Redis

from workers import schema
from workers.config import Environment, Project, Settings, Trigger
from workers.deployments import Deployment, DeploymentStore, new_id
from workers.forge import Forge, ForgeError, forge_for
from workers.intake import Intake
from workers.links import LinkSigner
from workers.source import SHA_RE, Mirror, SourceError

log = logging.getLogger(__name__)

MISSED = "missed webhook"
POLLED = "poll"


class Verdict(StrEnum):
    """What one look at an environment found."""

    IN_SYNC = "in sync"  # the head is what was deployed (or is being deployed)
    DRIFT = "drift"  # the head moved, within the grace period a push's own webhook gets
    QUEUED = "queued"  # the head moved past the grace period: a deployment was queued for it
    UNKNOWN = "unknown"  # the head could not be read


@dataclass(frozen=True)
class Finding:
    project: str
    environment: str
    head: str  # "" when the branch head could not be read
    verdict: Verdict
    detail: str = ""


class Reconciler:
    def __init__(self, settings: Settings, redis: Redis, forge: Forge | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.forge = forge if forge is not None else forge_for(settings.gitlab)
        self.store = DeploymentStore(redis)
        signer = LinkSigner.for_server(settings.server.admin_token, settings.server.link_ttl_days)
        self.intake = Intake(redis, settings.server.public_url, signer=signer)

    def due(self, project: Project, environment: Environment) -> bool:
        """Only one worker of many checks an environment per interval."""
        interval = (
            project.poll_interval
            if project.trigger is Trigger.POLL
            else self.settings.server.reconcile_interval
        )
        if interval <= 0:
            return False
        marker = schema.reconciled(project.name, environment.name)
        return bool(self.redis.set(marker, "1", nx=True, ex=max(1, interval - 1)))

    def run(self, only_due: bool = True, grace: float | None = None) -> list[Finding]:
        findings = []
        for project in self.settings.projects.values():
            for environment in project.environments.values():
                if not environment.branch:
                    continue  # a tags environment: which tag is "the newest" is for people to say
                if only_due and not self.due(project, environment):
                    continue
                findings.append(self.check(project, environment, grace))
        return findings

    def check(self, project: Project, environment: Environment, grace: float | None = None) -> Finding:
        name = (project.name, environment.name)
        head = self.head(project, environment)
        if not head:
            return Finding(*name, "", Verdict.UNKNOWN, "the branch head could not be read")
        newest = self.store.history(project.name, environment.name, limit=1)
        if (newest and newest[0].sha == head) or self.store.live(*name).get("sha") == head:
            self.redis.delete(self._drift_key(project, environment))
            return Finding(*name, head, Verdict.IN_SYNC)
        wait = (
            0.0
            if project.trigger is Trigger.POLL
            else (self.settings.server.reconcile_grace if grace is None else grace)
        )
        since = self._drift_since(project, environment, head)
        if time.time() - since < wait:
            return Finding(
                *name, head, Verdict.DRIFT, f"seen {time.time() - since:.0f} s ago; waiting {wait:.0f} s"
            )
        deployment = Deployment(
            id=new_id(),
            project=project.name,
            environment=environment.name,
            ref=f"refs/heads/{environment.branch}",
            sha=head,
            pusher="pushdeploy",
            trigger=POLLED if project.trigger is Trigger.POLL else MISSED,
        )
        self.intake.enqueue(project, environment, deployment)
        self.redis.delete(self._drift_key(project, environment))
        log.warning(
            "%s/%s: head %s had no deployment: queued %s (%s)",
            *name,
            head[:12],
            deployment.id,
            deployment.trigger,
        )
        return Finding(*name, head, Verdict.QUEUED, deployment.id)

    def head(self, project: Project, environment: Environment) -> str:
        try:
            head = self.forge.branch_head(project.gitlab_project, environment.branch)
        except ForgeError as exc:
            log.info(
                "%s: GitLab could not tell the head of %s (%s); asking git",
                project.name,
                environment.branch,
                exc,
            )
            head = None
        if head is None:
            try:
                with TemporaryDirectory() as tmp:
                    head = Mirror(
                        Path(tmp) / "none.git", project.repo_url, token=project.repo_credential()
                    ).branch_head(environment.branch)
            except SourceError as exc:
                log.warning("%s: git ls-remote failed: %s", project.name, exc)
                return ""
        return head if head and SHA_RE.match(head) else ""

    def _drift_key(self, project: Project, environment: Environment) -> str:
        return schema.drift(project.name, environment.name)

    def _drift_since(self, project: Project, environment: Environment, head: str) -> float:
        """When this head was first seen without a deployment (kept across checks and workers)."""
        key = self._drift_key(project, environment)
        raw = self.redis.get(key)
        if raw:
            seen = json.loads(raw)
            if seen.get("sha") == head:
                return float(seen["since"])
        now = time.time()
        self.redis.set(key, json.dumps({"sha": head, "since": now}), ex=7 * 86400)
        return now
