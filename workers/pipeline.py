"""The deployment job: claim the lane → fetch → export → build → switch ``current`` → deploy →
health check, rolling back on failure after the switch; every step reported as it happens.

RQ calls :func:`run_deployment` with the deployment id only; everything else is read from the
record and the worker's own config, so no payload text and no secret is ever in a job's arguments.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from redis import Redis
from rq import Queue

from workers import defaults, health, steps, telemetry
from workers.config import Environment, Project, Settings, load
from workers.control import cancel_requested, supersede, supersede_older
from workers.deploylog import DeploymentLog, Masker
from workers.deployments import Deployment, DeploymentStore, State, StepResult, UnknownDeployment
from workers.forge import StatusState
from workers.lanes import Lane, Verdict
from workers.queueing import enqueue_job, report
from workers.releases import Releases
from workers.source import Mirror, SourceError, check_sha

log = logging.getLogger(__name__)

CANCEL_POLL = 0.5
"""Seconds between looks at a deployment's cancel flag while a step runs."""


class StepFailed(Exception):
    """A build or deploy command did not exit 0; carries what the reason line needs."""

    def __init__(self, result: StepResult) -> None:
        self.result = result
        what = (
            "ran out of time (the deployment's timeout)"
            if result.timed_out
            else f"exited with {result.exit_code}"
        )
        super().__init__(f"{result.phase} step {result.index} `{result.command}` {what}")


class HealthCheckFailed(Exception):
    """The release did not answer 2xx on its health check URL in time."""


class Canceled(Exception):
    """Someone asked for this deployment to stop; ``who`` is recorded in the reason."""

    def __init__(self, who: str) -> None:
        self.who = who
        super().__init__(f"canceled by {who}")


@dataclass
class Job:
    """Everything one run needs, resolved once at the start."""

    project: Project
    environment: Environment
    deployment: Deployment
    log: DeploymentLog
    releases: Releases
    deadline: float
    live: Mapping[str, str]  # what served before: sha, deployment, release
    switched: bool = False


@cache
def worker_settings() -> Settings:
    """The worker's config, read once per process from ``PUSHDEPLOY_CONFIG``."""
    return load(os.environ["PUSHDEPLOY_CONFIG"])


def run_deployment(deployment_id: str) -> str:
    """RQ entry point: take one deployment as far as it can go now; returns its state."""
    from rq import get_current_job

    current = get_current_job()
    if current is None:
        raise RuntimeError("run_deployment must run inside an RQ job")
    return Runner(worker_settings(), current.connection).run(deployment_id)


class Runner:
    def __init__(self, settings: Settings, redis: Redis, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.store = DeploymentStore(redis)
        self.masker = Masker(settings.all_secrets())
        self.environ = dict(os.environ if environ is None else environ)
        self._cancel_checked = 0.0
        self._cancel_by = ""

    # -- the lane ---------------------------------------------------------

    def run(self, deployment_id: str) -> str:
        try:
            deployment = self.store.get(deployment_id)
        except UnknownDeployment:
            # The job queued beside a duplicate delivery's refused claim, taken before it was deleted.
            log.info("deployment %s: no record (a duplicate delivery's job); discarded", deployment_id)
            return "discarded"
        if deployment.state is not State.QUEUED:
            return str(deployment.state)  # canceled meanwhile, or a duplicate job: nothing to do
        deplog = DeploymentLog(self.redis, deployment_id, self.masker)
        project = self.settings.projects.get(deployment.project)
        environment = project.environments.get(deployment.environment) if project else None
        if project is None or environment is None:
            return self.finish(
                deployment,
                None,
                None,
                deplog,
                State.FAILED,
                "project or environment no longer in the configuration",
            )
        lane = Lane(self.redis, project.name, environment.name)
        claim = lane.claim(deployment_id)
        if claim.verdict is Verdict.SUPERSEDED:
            supersede(self.settings, self.redis, deployment_id, claim.other)
            return str(State.CANCELED)
        supersede_older(
            self.settings, self.redis, deployment
        )  # the newest push wins: the rest step aside now
        if claim.verdict is Verdict.WAIT:
            if claim.other:
                supersede(self.settings, self.redis, claim.other, deployment_id)
            deplog.info(f"waiting: {lane.holder() or 'another deployment'} is deploying this environment")
            return "waiting"
        try:
            with lane.keep_alive(claim.token):
                return self.run_claimed(deployment, project, environment, deplog, claim.token)
        finally:
            self.hand_over(lane, claim.token, environment)

    def hand_over(self, lane: Lane, token: str, environment: Environment) -> None:
        """Free the lane and start the deployment that waited for it."""
        released = lane.release(token)
        if released.waiting:
            queue = Queue(defaults.DEPLOY_QUEUE, connection=self.redis)
            enqueue_job(queue, released.waiting, environment, f"{released.waiting}-{os.urandom(3).hex()}")

    # -- one deployment ---------------------------------------------------

    def run_claimed(
        self,
        deployment: Deployment,
        project: Project,
        environment: Environment,
        deplog: DeploymentLog,
        token: str,
    ) -> str:
        if not deployment.sha:
            try:
                deployment = self.resolve(deployment, project, environment, deplog)
            except SourceError as exc:
                return self.finish(
                    deployment, project, environment, deplog, State.FAILED, self.masker(str(exc))
                )
        live = self.store.live(project.name, environment.name)
        try:
            deployment = self.store.transition(
                deployment.id,
                State.RUNNING,
                previous_sha=live.get("sha", ""),
                lane_token=token,
                host=socket.gethostname(),
            )
        except Exception:
            return str(self.store.get(deployment.id).state)  # canceled between claim and start
        report(self.redis, self.settings, deployment, StatusState.RUNNING, "Deploying")
        job = Job(
            project,
            environment,
            deployment,
            deplog,
            Releases(self.settings.server.data_dir, project.name, environment.name),
            deployment.started_at + environment.timeout,
            live,
        )
        try:
            if self.already_live(job):
                return self.finish(
                    deployment, project, environment, deplog, State.SUCCEEDED, "already deployed"
                )
            self.deploy(job)
        except Canceled as exc:
            reason = self.recover(job, str(exc))
            return self.finish(deployment, project, environment, deplog, State.CANCELED, reason)
        except (StepFailed, HealthCheckFailed, steps.RunAsError) as exc:
            if isinstance(exc, StepFailed) and exc.result.tail:
                deplog.info("last lines:\n" + "\n".join(exc.result.tail[-5:]))
            reason = self.recover(job, str(exc))
            return self.finish(deployment, project, environment, deplog, State.FAILED, reason)
        except SourceError as exc:
            deplog.info(self.masker(f"git: {exc}"))
            return self.finish(deployment, project, environment, deplog, State.FAILED, self.masker(str(exc)))
        except Exception as exc:
            log.exception("deployment %s: internal error", deployment.id)
            reason = self.recover(job, self.masker(f"internal error: {type(exc).__name__}: {exc}"))
            return self.finish(deployment, project, environment, deplog, State.FAILED, reason)
        return self.finish(deployment, project, environment, deplog, State.SUCCEEDED, "")

    def resolve(
        self, deployment: Deployment, project: Project, environment: Environment, deplog: DeploymentLog
    ) -> Deployment:
        """A manual deployment of a branch or tag: find the commit it names now."""
        deplog.step(f"resolve {deployment.branch}")
        sha, ref = self.mirror(project).resolve(deployment.ref)
        deplog.info(f"{ref} is {sha}")
        self.store.update(deployment.id, sha=sha, ref=ref)
        deployment.sha, deployment.ref = sha, ref
        report(self.redis, self.settings, deployment, StatusState.PENDING, "Queued for deployment")
        return deployment

    def mirror(self, project: Project) -> Mirror:
        return Mirror(
            self.settings.server.data_dir / "mirrors" / f"{project.name}.git",
            project.repo_url,
            self.environ,
            project.repo_credential(),
        )

    def already_live(self, job: Job) -> bool:
        """The same sha is live in an intact release and (if checked) healthy: nothing to rebuild."""
        if job.live.get("sha") != job.deployment.sha or not job.live.get("release"):
            return False
        if job.releases.current() != job.live["release"]:
            return False
        if job.environment.health_check:
            verdict = health.check(job.environment.health_check, job.deadline, job.log.info)
            if not verdict.healthy:
                job.log.info(
                    f"{job.deployment.sha[:12]} is current but unhealthy ({verdict.detail}): redeploying"
                )
                return False
        job.log.info(
            f"{job.deployment.sha[:12]} is already deployed (release {job.live['release']}): nothing to do"
        )
        self.store.update(job.deployment.id, release=job.live["release"])
        job.deployment.release = job.live["release"]
        return True

    def deploy(self, job: Job) -> None:
        deployment, environment = job.deployment, job.environment
        sha = check_sha(deployment.sha)
        steps.switch_to(environment.run_as)  # a worker that cannot become run_as fails before any work
        reuse = deployment.reuse_release
        if reuse and job.releases.path(reuse).is_dir():
            job.log.info(f"reusing release {reuse} of {sha[:12]}: nothing to fetch or build")
            self.store.update(deployment.id, release=reuse)
            deployment.release = reuse
            self.switch_and_deploy(job, reuse, self.variables(job, reuse, sha, deployment.previous_sha))
            return
        if reuse:
            job.log.info(f"release {reuse} was pruned: building {sha[:12]} again")
        mirror = self.mirror(job.project)
        started = time.monotonic()
        job.log.step(f"fetch {sha[:12]} from {deployment.branch}")
        fetched = mirror.fetch(deployment.ref, sha)
        self.measure("fetch", started)
        job.log.info(
            f"{'fetched' if fetched else 'already in the mirror'} in {time.monotonic() - started:.2f} s"
        )
        self.check_cancel(job)
        job.releases.prepare()
        release_dir = job.releases.path(deployment.id)
        job.log.step(f"export {sha[:12]} into releases/{deployment.id}")
        started = time.monotonic()
        mirror.export(sha, release_dir)
        steps.hand_over(release_dir, environment.run_as)
        self.measure("export", started)
        self.store.update(deployment.id, release=deployment.id)
        deployment.release = deployment.id
        variables = self.variables(job, deployment.id, deployment.sha, deployment.previous_sha)
        try:
            started = time.monotonic()
            for index, command in enumerate(environment.build, start=1):
                self.step(job, "build", index, command, release_dir, variables)
            self.measure("build", started)
            self.check_cancel(job)
        except (StepFailed, Canceled):
            job.releases.remove(deployment.id)  # a failed build never reaches current
            job.log.info("build did not finish: current is unchanged")
            raise
        self.switch_and_deploy(job, deployment.id, variables)

    def switch_and_deploy(self, job: Job, release_id: str, variables: dict[str, str]) -> None:
        environment = job.environment
        # No cancel is looked at between the build and the end of switch(): it lands before or after.
        previous = job.releases.switch(release_id)
        job.switched = True
        job.log.info(f"current → releases/{release_id}" + (f" (was {previous})" if previous else ""))
        started = time.monotonic()
        for index, command in enumerate(environment.deploy, start=1):
            self.step(job, "deploy", index, command, job.releases.current_link, variables)
        self.measure("deploy", started)
        if environment.health_check:
            job.log.step(f"health check {environment.health_check.url}")
            started = time.monotonic()
            verdict = health.check(
                environment.health_check,
                job.deadline,
                job.log.info,
                should_stop=lambda: self.cancel_flag(job) != "",
            )
            self.measure("health_check", started)
            self.check_cancel(job)
            if not verdict.healthy:
                raise HealthCheckFailed(
                    f"health check failed ({verdict.detail} after {verdict.attempts} tries)"
                )
        protect = {r for r in (job.releases.current(), previous) if r}
        removed = job.releases.prune(environment.keep_releases, protect)
        if removed:
            job.log.info(f"pruned {len(removed)} old release(s): {', '.join(removed)}")

    def recover(self, job: Job, reason: str) -> str:
        """After a failure past the switch, put the previous release back; returns the full reason."""
        if not job.switched:
            return reason
        previous_release = job.live.get("release", "")
        previous_sha = job.live.get("sha", "")
        if not previous_release or not job.releases.path(previous_release).is_dir():
            what = "this is the environment's first deployment" if not previous_release else "it was pruned"
            job.log.info(f"nothing to roll back to ({what}): releases/{job.deployment.id} stays current")
            return f"{reason}; nothing to roll back to"
        job.releases.switch(previous_release)
        job.log.step(f"rollback: current → releases/{previous_release} ({previous_sha[:12]})")
        job.deadline = time.time() + job.environment.timeout  # the rollback has a budget of its own
        variables = self.variables(job, previous_release, previous_sha, job.deployment.sha)
        started = time.monotonic()
        try:
            for index, command in enumerate(job.environment.deploy, start=1):
                self.step(
                    job, "rollback", index, command, job.releases.current_link, variables, cancelable=False
                )
        except StepFailed as exc:
            job.log.info(f"rollback deploy step failed too: {exc}")
            return f"{reason}; rolled back to {previous_sha}, but its deploy step failed"
        finally:
            self.measure("rollback", started)
        return f"{reason}; rolled back to {previous_sha}"

    def step(
        self,
        job: Job,
        phase: str,
        index: int,
        command: str,
        cwd: Path,
        variables: dict[str, str],
        cancelable: bool = True,
    ) -> None:
        job.log.step(f"{phase} {index}: $ {command}")
        outcome = steps.run(
            command,
            cwd,
            variables,
            job.deadline,
            job.log.output,
            should_stop=(lambda: self.cancel_flag(job) != "") if cancelable else (lambda: False),
            on_start=lambda pid: self.store.update(job.deployment.id, step_pgid=pid),
            on_tick=job.log.flush_due,
            user=job.environment.run_as,
        )
        job.log.flush()
        result = StepResult(
            phase,
            index,
            command,
            outcome.exit_code,
            round(outcome.duration, 3),
            truncated=job.log.truncated,
            timed_out=outcome.timed_out,
            tail=list(job.log.tail),
        )
        self.store.add_step(job.deployment.id, result)
        self.store.update(job.deployment.id, step_pgid="")
        status = (
            "timed out"
            if outcome.timed_out
            else "canceled"
            if outcome.canceled
            else f"exited {outcome.exit_code}"
        )
        job.log.info(f"{phase} {index} {status} after {outcome.duration:.2f} s")
        if outcome.canceled:
            raise Canceled(self.cancel_flag(job) or "someone")
        if not outcome.ok:
            raise StepFailed(result)

    def measure(self, phase: str, started: float) -> None:
        telemetry.observe(self.redis, "phase", phase, time.monotonic() - started)

    def cancel_flag(self, job: Job) -> str:
        """Who asked to cancel, or ""; looked up at most every CANCEL_POLL seconds."""
        now = time.monotonic()
        if not self._cancel_by and now - self._cancel_checked >= CANCEL_POLL:
            self._cancel_checked = now
            self._cancel_by = cancel_requested(self.redis, job.deployment.id)
        return self._cancel_by

    def check_cancel(self, job: Job) -> None:
        self._cancel_checked = 0.0
        who = self.cancel_flag(job)
        if who:
            raise Canceled(who)

    def variables(self, job: Job, release_id: str, sha: str, previous_sha: str) -> dict[str, str]:
        return steps.scrubbed_environment(
            self.environ,
            {
                **job.environment.env,
                "PUSHDEPLOY_PROJECT": job.project.name,
                "PUSHDEPLOY_ENVIRONMENT": job.environment.name,
                "PUSHDEPLOY_DEPLOYMENT_ID": job.deployment.id,
                "PUSHDEPLOY_SHA": sha,
                "PUSHDEPLOY_REF": job.deployment.branch,
                "PUSHDEPLOY_PREVIOUS_SHA": previous_sha,
                "PUSHDEPLOY_RELEASE_DIR": str(job.releases.path(release_id)),
                "PUSHDEPLOY_CURRENT_DIR": str(job.releases.current_link),
            },
        )

    # -- endings ----------------------------------------------------------

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
        deplog.flush()
        with self.redis.pipeline(transaction=False) as pipe:
            telemetry.count(pipe, "finished", str(state))
            if final.started_at:
                telemetry.observe(pipe, "phase", "total", final.finished_at - final.started_at)
            if state is State.SUCCEEDED:
                telemetry.observe(pipe, "push_to_live", "all", final.finished_at - final.created_at)
            pipe.execute()
        if state is State.SUCCEEDED:
            self.store.mark_live(final)
        self.store.prune_history(
            deployment.project, deployment.environment, self.settings.server.keep_deployments
        )
        if project is not None and environment is not None:
            status = {State.SUCCEEDED: StatusState.SUCCESS, State.CANCELED: StatusState.CANCELED}.get(
                state, StatusState.FAILED
            )
            report(self.redis, self.settings, final, status, reason or "Deployed")
        return str(state)
