"""The deployment job: fetch → export → build → switch ``current`` → deploy, reported step by step.

RQ calls :func:`run_deployment` with the deployment id only; everything else is read from the
record and the worker's own config, so no payload text and no secret is ever in a job's arguments.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from redis import Redis

from workers import steps
from workers.config import Environment, Project, Settings, load
from workers.deploylog import DeploymentLog, Masker
from workers.deployments import Deployment, DeploymentStore, State, StepResult
from workers.forge import StatusState
from workers.outbox import enqueue_status
from workers.queueing import commit_status
from workers.releases import Releases
from workers.source import Mirror, SourceError, check_sha

log = logging.getLogger(__name__)


class StepFailed(Exception):
    """A build or deploy command did not exit 0; carries what the reason line needs."""

    def __init__(self, result: StepResult) -> None:
        self.result = result
        if result.timed_out:
            what = "ran out of time (the deployment's timeout)"
        else:
            what = f"exited with {result.exit_code}"
        super().__init__(f"{result.phase} step {result.index} `{result.command}` {what}")


class Canceled(Exception):
    """The deployment was canceled while it ran."""


@dataclass
class Job:
    """Everything one run needs, resolved once at the start."""

    settings: Settings
    project: Project
    environment: Environment
    deployment: Deployment
    store: DeploymentStore
    redis: Redis
    log: DeploymentLog
    releases: Releases
    deadline: float


@cache
def worker_settings() -> Settings:
    """The worker's config, read once per process from ``PUSHDEPLOY_CONFIG``."""
    return load(os.environ["PUSHDEPLOY_CONFIG"])


def run_deployment(deployment_id: str) -> str:
    """RQ entry point: run one deployment to a terminal state and return that state."""
    from rq import get_current_job

    current = get_current_job()
    redis = current.connection if current is not None else None
    if redis is None:
        raise RuntimeError("run_deployment must run inside an RQ job")
    return Runner(worker_settings(), redis).run(deployment_id)


class Runner:
    def __init__(self, settings: Settings, redis: Redis, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.store = DeploymentStore(redis)
        self.masker = Masker(settings.all_secrets())
        self.environ = dict(os.environ if environ is None else environ)

    def run(self, deployment_id: str) -> str:
        deployment = self.store.get(deployment_id)
        if deployment.state is not State.QUEUED:
            return str(deployment.state)  # already handled: a retried or duplicate job does nothing
        deplog = DeploymentLog(self.redis, deployment_id, self.masker)
        try:
            project = self.settings.projects[deployment.project]
            environment = project.environments[deployment.environment]
        except KeyError:
            return self.finish(deployment, None, None, deplog, State.FAILED,
                               "project or environment no longer in the configuration")
        live = self.store.live(project.name, environment.name)
        deployment = self.store.transition(deployment_id, State.RUNNING, previous_sha=live.get("sha", ""))
        self.status(project, environment, deployment, StatusState.RUNNING, "Deploying")
        job = Job(
            settings=self.settings,
            project=project,
            environment=environment,
            deployment=deployment,
            store=self.store,
            redis=self.redis,
            log=deplog,
            releases=Releases(self.settings.server.data_dir, project.name, environment.name),
            deadline=deployment.started_at + environment.timeout,
        )
        try:
            self.deploy(job)
        except StepFailed as exc:
            tail = "\n".join(exc.result.tail[-5:])
            deplog.info(f"{exc}; last lines:\n{tail}" if tail else str(exc))
            return self.finish(job.deployment, project, environment, deplog, State.FAILED, str(exc))
        except SourceError as exc:
            deplog.info(self.masker(f"git: {exc}"))
            return self.finish(job.deployment, project, environment, deplog, State.FAILED, self.masker(str(exc)))
        except Exception as exc:
            log.exception("deployment %s: internal error", deployment_id)
            reason = self.masker(f"internal error: {type(exc).__name__}: {exc}")
            deplog.info(reason)
            return self.finish(job.deployment, project, environment, deplog, State.FAILED, reason)
        return self.finish(job.deployment, project, environment, deplog, State.SUCCEEDED, "")

    def deploy(self, job: Job) -> None:
        deployment, environment = job.deployment, job.environment
        sha = check_sha(deployment.sha)
        mirror = Mirror(self.settings.server.data_dir / "mirrors" / f"{job.project.name}.git",
                        job.project.repo_url, self.environ)
        started = time.monotonic()
        job.log.step(f"fetch {sha[:12]} from {environment.branch}")
        fetched = mirror.fetch(environment.branch, sha)
        job.log.info(f"{'fetched' if fetched else 'already in the mirror'} in {time.monotonic() - started:.2f} s")
        job.releases.prepare()
        release_dir = job.releases.path(deployment.id)
        job.log.step(f"export {sha[:12]} into releases/{deployment.id}")
        mirror.export(sha, release_dir)
        job.store.update(deployment.id, release=deployment.id)
        deployment.release = deployment.id
        variables = self.variables(job, release_dir)
        try:
            for index, command in enumerate(environment.build, start=1):
                self.step(job, "build", index, command, release_dir, variables)
        except StepFailed:
            job.releases.remove(deployment.id)  # a failed build never reaches current
            job.log.info("build failed: current is unchanged")
            raise
        previous = job.releases.switch(deployment.id)
        job.log.info(f"current → releases/{deployment.id}" + (f" (was {previous})" if previous else ""))
        for index, command in enumerate(environment.deploy, start=1):
            self.step(job, "deploy", index, command, job.releases.current_link, variables)
        live_release = job.releases.current()
        protect = {r for r in (live_release, previous) if r}
        removed = job.releases.prune(environment.keep_releases, protect)
        if removed:
            job.log.info(f"pruned {len(removed)} old release(s)")

    def step(self, job: Job, phase: str, index: int, command: str, cwd: Path, variables: dict[str, str]) -> None:
        job.log.step(f"{phase} {index}: $ {command}")
        outcome = steps.run(command, cwd, variables, job.deadline, job.log.output)
        result = StepResult(
            phase=phase,
            index=index,
            command=command,
            exit_code=outcome.exit_code,
            duration=round(outcome.duration, 3),
            truncated=job.log.truncated,
            timed_out=outcome.timed_out,
            tail=list(job.log.tail),
        )
        job.store.add_step(job.deployment.id, result)
        job.log.info(f"{phase} {index} exited {outcome.exit_code} in {outcome.duration:.2f} s")
        if not outcome.ok:
            raise StepFailed(result)

    def variables(self, job: Job, release_dir: Path) -> dict[str, str]:
        deployment = job.deployment
        return steps.scrubbed_environment(
            self.environ,
            {
                **job.environment.env,
                "PUSHDEPLOY_PROJECT": job.project.name,
                "PUSHDEPLOY_ENVIRONMENT": job.environment.name,
                "PUSHDEPLOY_DEPLOYMENT_ID": deployment.id,
                "PUSHDEPLOY_SHA": deployment.sha,
                "PUSHDEPLOY_REF": deployment.branch,
                "PUSHDEPLOY_PREVIOUS_SHA": deployment.previous_sha,
                "PUSHDEPLOY_RELEASE_DIR": str(release_dir),
                "PUSHDEPLOY_CURRENT_DIR": str(job.releases.current_link),
            },
        )

    def finish(
        self,
        deployment: Deployment,
        project: Project | None,
        environment: Environment | None,
        deplog: DeploymentLog,
        state: State,
        reason: str,
    ) -> str:
        final = self.store.transition(deployment.id, state, reason)
        deplog.info(f"deployment {state}" + (f": {reason}" if reason else ""))
        if state is State.SUCCEEDED:
            self.store.mark_live(final)
        if project is not None and environment is not None:
            status = StatusState.SUCCESS if state is State.SUCCEEDED else StatusState.FAILED
            if state is State.CANCELED:
                status = StatusState.CANCELED
            description = "Deployed" if state is State.SUCCEEDED else reason
            self.status(project, environment, final, status, description)
        return str(state)

    def status(
        self, project: Project, environment: Environment, deployment: Deployment, state: StatusState, text: str
    ) -> None:
        with self.redis.pipeline() as pipe:
            status = commit_status(self.settings.server.public_url, project, environment, deployment, state, text)
            enqueue_status(pipe, deployment.id, status)
            pipe.execute()
