"""The deployment job: claim the lane → fetch → export → build → switch ``current`` → deploy →
health check, rolling back on failure after the switch; every step reported as it happens.

RQ calls :func:`run_deployment` with the deployment id only; everything else is read from the
record and the worker's own config, so no payload text and no secret is ever in a job's arguments.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from workers import engine, health, lifecycle, recipe, steps, telemetry
from workers.config import Environment, NotifyEvent, Project, RecipeSource
from workers.control import cancel_requested, supersede, supersede_older
from workers.deploylog import DeploymentLog
from workers.deployments import (
    Deployment,
    InvalidTransition,
    State,
    StepResult,
    UnknownDeployment,
    commit_text,
)
from workers.engine import Engine
from workers.errors import RunStopped
from workers.forge import StatusState
from workers.lanes import Lane, Renewal, Verdict
from workers.releases import Releases
from workers.reviews import environment_of
from workers.rollout import Rollout, RolloutFailed
from workers.source import Mirror, SourceError, check_sha
from workers.statuses import report
from workers.telemetry import Phase

log = logging.getLogger(__name__)

CANCEL_POLL = 0.5
"""Seconds between looks at a deployment's cancel flag while a step runs."""


class StepFailed(RunStopped):
    """A build or deploy command did not exit 0; carries what the reason line needs."""

    def __init__(self, result: StepResult) -> None:
        self.result = result
        what = (
            "ran out of time (the deployment's timeout)"
            if result.timed_out
            else f"exited with {result.exit_code}"
        )
        super().__init__(f"{result.phase} step {result.index} `{result.command}` {what}")


class HealthCheckFailed(RunStopped):
    """The release did not answer 2xx on its health check URL in time."""


class LaneLost(RunStopped):
    """The lane's lock expired under this deployment: another one may run, so this one stops now."""

    def __init__(self, switched: bool) -> None:
        where = "after switching current: it stays as it is" if switched else "before switching current"
        super().__init__(
            "lost the environment's lane (its lock expired: Redis unreachable or the worker stalled); "
            f"stopped {where}, so that two deployments never run at once"
        )


class Outcome(StrEnum):
    """What :meth:`Runner.run` did with a job: a deployment state, or why the job had nothing to do."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    WAITING = "waiting"
    DISCARDED = "discarded"

    @classmethod
    def of(cls, state: State) -> Outcome:
        return cls(state.value)


@dataclass
class Hold:
    """This runner's hold on its environment's lane: the fenced token and its renewal."""

    lane: Lane
    token: str
    lease: Renewal

    @property
    def lost(self) -> bool:
        return self.lease.lost.is_set()


class Canceled(RunStopped):
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
    hold: Hold
    releases: Releases
    deadline: float = 0.0
    live: Mapping[str, str] = field(default_factory=dict)  # what served before: sha, deployment, release
    switched: bool = False
    fetched: bool = False  # the commit is in the mirror already (fetched to read its recipe)
    configured: Environment | None = None  # the server's environment, before a recipe replaced steps
    rollback_steps: Environment | None = None  # the previous release's steps, once looked up


def run_deployment(deployment_id: str) -> Outcome:
    """RQ entry point: take one deployment as far as it can go now; returns its state."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("run_deployment must run inside an RQ job")
    return Runner(engine.current(job.connection)).run(deployment_id)


class Runner:
    """Runs one deployment with the engine of its worker process."""

    def __init__(self, engine: Engine, environ: Mapping[str, str] | None = None) -> None:
        self.settings = engine.settings
        self.redis = engine.redis
        self.store = engine.store
        self.masker = engine.masker
        self.environ = dict(os.environ if environ is None else environ)
        self._cancel_checked = 0.0
        self._cancel_by = ""
        self.handed_over = False

    # -- the lane ---------------------------------------------------------

    def run(self, deployment_id: str) -> Outcome:
        try:
            deployment = self.store.get(deployment_id)
        except UnknownDeployment:
            # The job queued beside a duplicate delivery's refused claim, taken before it was deleted.
            log.info("deployment %s: no record (a duplicate delivery's job); discarded", deployment_id)
            return Outcome.DISCARDED
        if deployment.state is not State.QUEUED:
            return Outcome.of(deployment.state)  # canceled meanwhile, or a duplicate job: nothing to do
        project = self.settings.projects.get(deployment.project)
        environment = environment_of(self.settings, self.redis, deployment.project, deployment.environment)
        if project is None or environment is None:
            reason = "project or environment no longer in the configuration"
            return self.end(deployment_id, State.FAILED, reason)
        lane = Lane(self.redis, project.name, environment.name)
        claim = lane.claim(deployment_id)
        if claim.verdict is Verdict.SUPERSEDED:
            supersede(self.settings, self.redis, deployment_id, claim.other)
            return Outcome.CANCELED
        supersede_older(self.settings, self.redis, deployment)  # the newest push wins: the rest step aside
        if claim.verdict is Verdict.WAIT:
            if claim.other:
                supersede(self.settings, self.redis, claim.other, deployment_id)
            deplog = DeploymentLog(self.redis, deployment_id, self.masker)
            deplog.info(f"waiting: {lane.holder() or 'another deployment'} is deploying this environment")
            return Outcome.WAITING
        with lane.keep_alive(claim.token) as lease:
            hold = Hold(lane, claim.token, lease)
            try:
                return self.run_claimed(deployment, project, environment, hold)
            finally:
                if not self.handed_over:  # ended elsewhere, or an error before the end
                    lifecycle.hand_over(
                        self.settings, self.redis, project.name, environment.name, claim.token
                    )

    # -- one deployment ---------------------------------------------------

    def run_claimed(
        self, deployment: Deployment, project: Project, environment: Environment, hold: Hold
    ) -> Outcome:
        deplog = DeploymentLog(self.redis, deployment.id, self.masker)
        releases = Releases(self.settings.server.data_dir, project.name, environment.directory)
        job = Job(project, environment, deployment, deplog, hold, releases)
        if not deployment.sha:
            try:
                self.resolve(job)
            except SourceError as exc:
                return self.end(deployment.id, State.FAILED, self.masker(str(exc)), hold)
        if not self.start(job):
            return Outcome.of(self.store.get(deployment.id).state)  # canceled between claim and start
        state, reason = self.attempt(job)
        return self.end(deployment.id, state, reason, hold)

    def start(self, job: Job) -> bool:
        """Move to ``running`` and say so; False when it was canceled between its claim and now."""
        job.live = self.store.live(job.project.name, job.environment.name)
        try:
            job.deployment = self.store.transition(
                job.deployment.id,
                State.RUNNING,
                previous_sha=job.live.get("sha", ""),
                lane_token=job.hold.token,
                host=socket.gethostname(),
            )
        except InvalidTransition:
            return False
        job.deadline = job.deployment.started_at + job.environment.timeout
        hosts = len(job.environment.targets)
        what = f"Deploying to {hosts} host{'s' if hosts != 1 else ''}" if hosts else "Deploying"
        report(self.redis, self.settings, job.deployment, StatusState.RUNNING, what)
        self.describe(job, self.mirror(job.project), fetched=False)
        lifecycle.notify(self.settings, self.redis, job.deployment, NotifyEvent.STARTED)
        return True

    def attempt(self, job: Job) -> tuple[State, str]:
        """Deploy, rolling back where it failed after the switch: the state it ends in, and why."""
        try:
            self.choose_steps(job)
            if self.already_live(job):
                return State.SUCCEEDED, "already deployed"
            self.deploy(job)
        except LaneLost as exc:
            job.log.info(str(exc))
            return State.FAILED, str(exc)  # current is not touched again: another deployment may own it
        except Canceled as exc:
            return State.CANCELED, self.recover(job, str(exc))
        except (StepFailed, HealthCheckFailed, steps.RunAsError) as exc:
            if isinstance(exc, StepFailed) and exc.result.tail:
                job.log.info("last lines:\n" + "\n".join(exc.result.tail[-5:]))
            return State.FAILED, self.recover(job, str(exc))
        except recipe.RecipeError as exc:
            self.store.update(job.deployment.id, recipe=f"{RecipeSource.REPO.value}@{job.deployment.sha[:8]}")
            for problem in exc.problems:
                job.log.info(self.masker(f"refused: {problem}"))
            job.log.info("no step has run: fix the file (pushdeploy check --recipe checks it) and push again")
            return State.FAILED, self.masker(str(exc))
        except SourceError as exc:
            job.log.info(self.masker(f"git: {exc}"))
            return State.FAILED, self.masker(str(exc))
        except RolloutFailed as exc:  # the rollout has put back every host it had switched
            return State.FAILED, self.masker(str(exc))
        except Exception as exc:
            log.exception("deployment %s: internal error", job.deployment.id)
            return State.FAILED, self.recover(
                job, self.masker(f"internal error: {type(exc).__name__}: {exc}")
            )
        return State.SUCCEEDED, ""

    def choose_steps(self, job: Job) -> None:
        """Read the commit's ``.pushdeploy.toml`` (from git objects, nothing run) and take its steps.

        Raises:
            RecipeError: the recipe is refused; nothing has run yet.
        """
        environment, sha = job.environment, check_sha(job.deployment.sha)
        if environment.recipe is RecipeSource.SERVER:
            chosen = recipe.server_steps(environment)
            job.log.info(f'the server\'s steps (recipe = "server": {recipe.FILE} is not read)')
        else:
            mirror = self.fetch(job, sha)
            job.fetched = True
            job.log.step(f"recipe: {recipe.FILE} at {sha[:12]}")
            chosen = recipe.resolve(mirror, sha, environment)
            if chosen.source == RecipeSource.SERVER:
                job.log.info(f"no {recipe.FILE} in the commit: the server's steps run")
            else:
                job.log.info(
                    f"steps from {recipe.FILE} ({chosen.source}); the server's for keys it leaves out"
                )
            for name in (n for n in chosen.tables if n not in job.project.environments):
                job.log.info(
                    f"{recipe.FILE}: [environments.{name}] ignored: {job.project.name} has no {name}"
                )
        job.configured, job.environment = environment, chosen.apply(environment)
        job.deadline = job.deployment.started_at + job.environment.timeout
        effective = json.dumps(chosen.public())
        self.store.update(job.deployment.id, recipe=chosen.source, effective_steps=effective)
        job.deployment.recipe, job.deployment.effective_steps = chosen.source, effective

    def resolve(self, job: Job) -> None:
        """A manual deployment of a branch or tag: find the commit it names now."""
        deployment = job.deployment
        job.log.step(f"resolve {deployment.branch}")
        sha, ref = self.mirror(job.project).resolve(deployment.ref)
        job.log.info(f"{ref} is {sha}")
        self.store.update(deployment.id, sha=sha, ref=ref)
        deployment.sha, deployment.ref = sha, ref
        report(self.redis, self.settings, deployment, StatusState.PENDING, "Queued for deployment")

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
        """Build a new release (or reuse a kept one, for a rollback) and take it live."""
        deployment = job.deployment
        sha = check_sha(deployment.sha)
        steps.switch_to(job.environment.run_as)  # a worker that cannot become run_as fails before any work
        reuse = deployment.reuse_release
        if reuse and job.releases.path(reuse).is_dir():
            job.log.info(f"reusing release {reuse} of {sha[:12]}: nothing to fetch or build")
            self.record_release(job, reuse)
            self.go_live(job, reuse, self.variables(job, reuse, sha, deployment.previous_sha))
            return
        if reuse:
            job.log.info(f"release {reuse} was pruned: building {sha[:12]} again")
        mirror = self.mirror(job.project) if job.fetched else self.fetch(job, sha)
        self.describe(job, mirror)
        self.export(job, mirror, sha)
        variables = self.variables(job, deployment.id, sha, deployment.previous_sha)
        self.build(job, variables)
        self.go_live(job, deployment.id, variables)

    def fetch(self, job: Job, sha: str) -> Mirror:
        """Bring the commit into the project's mirror, fetching only what is missing."""
        mirror = self.mirror(job.project)
        started = time.monotonic()
        job.log.step(f"fetch {sha[:12]} from {job.deployment.branch}")
        iid = job.environment.review_iid
        fetched = mirror.fetch_merge_request(iid, sha) if iid else mirror.fetch(job.deployment.ref, sha)
        self.measure(Phase.FETCH, started)
        job.log.info(
            f"{'fetched' if fetched else 'already in the mirror'} in {time.monotonic() - started:.2f} s"
        )
        self.check_cancel(job)
        return mirror

    def describe(self, job: Job, mirror: Mirror, fetched: bool = True) -> None:
        """Read the commit's title and author from git when the delivery did not carry them (a manual
        deploy, a push of more than 20 commits, a tag, a journaled delivery); before the fetch,
        only from a mirror that already has the commit."""
        deployment = job.deployment
        if deployment.commit_title or not deployment.sha:
            return
        try:
            if not fetched and not mirror.has_commit(deployment.sha):
                return
            title, author = mirror.describe(deployment.sha)
        except SourceError as exc:
            job.log.info(self.masker(f"git: the commit's title could not be read: {exc}"))
            return
        deployment.commit_title, deployment.commit_author = commit_text(title), commit_text(author)
        self.store.update(
            deployment.id, commit_title=deployment.commit_title, commit_author=deployment.commit_author
        )

    def export(self, job: Job, mirror: Mirror, sha: str) -> None:
        """Write the commit's tree into a new release directory named by the deployment."""
        release_id = job.deployment.id
        job.releases.prepare()
        release_dir = job.releases.path(release_id)
        job.log.step(f"export {sha[:12]} into releases/{release_id}")
        started = time.monotonic()
        mirror.export(sha, release_dir)
        steps.hand_over(release_dir, job.environment.run_as)
        self.measure(Phase.EXPORT, started)
        self.record_release(job, release_id)

    def build(self, job: Job, variables: dict[str, str]) -> None:
        """Run the build steps in the new release; one that fails never reaches ``current``."""
        release_id = job.deployment.id
        try:
            started = time.monotonic()
            for index, command in enumerate(job.environment.build, start=1):
                self.step(job, "build", index, command, job.releases.path(release_id), variables)
            self.measure(Phase.BUILD, started)
            self.check_cancel(job)
        except (StepFailed, Canceled):
            job.releases.remove(release_id)
            job.log.info("build did not finish: current is unchanged")
            raise

    def record_release(self, job: Job, release_id: str) -> None:
        self.store.update(job.deployment.id, release=release_id)
        job.deployment.release = release_id

    def go_live(self, job: Job, release_id: str, variables: dict[str, str]) -> None:
        """Here (switch ``current``, deploy) or, with ``targets``, on every host over SSH."""
        if not job.environment.targets:
            self.switch_and_deploy(job, release_id, variables)
            return
        Rollout(self, job, release_id, job.releases.path(release_id)).run()
        # The worker keeps built releases as the source of the next incremental ship and of rollbacks.
        removed = job.releases.prune(job.environment.keep_releases, {release_id})
        if removed:
            job.log.info(f"pruned {len(removed)} old release(s) on the worker: {', '.join(removed)}")

    def switch_and_deploy(self, job: Job, release_id: str, variables: dict[str, str]) -> None:
        environment = job.environment
        self.check_lane(job)  # still ours, renewed now: nobody else can be switching meanwhile
        # No cancel is looked at between the build and the end of switch(): it lands before or after.
        previous = job.releases.switch(release_id)
        job.switched = True
        job.log.info(f"current → releases/{release_id}" + (f" (was {previous})" if previous else ""))
        started = time.monotonic()
        for index, command in enumerate(environment.deploy, start=1):
            self.step(job, "deploy", index, command, job.releases.current_link, variables)
        self.measure(Phase.DEPLOY, started)
        if environment.health_check:
            job.log.step(f"health check {environment.health_check.url}")
            started = time.monotonic()
            verdict = health.check(
                environment.health_check,
                job.deadline,
                job.log.info,
                should_stop=lambda: self.cancel_flag(job) != "",
            )
            self.measure(Phase.HEALTH_CHECK, started)
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
        back = self.previous_steps(job)
        variables = self.variables(job, previous_release, previous_sha, job.deployment.sha, back)
        started = time.monotonic()
        try:
            for index, command in enumerate(back.deploy, start=1):
                self.step(
                    job, "rollback", index, command, job.releases.current_link, variables, cancelable=False
                )
        except StepFailed as exc:
            job.log.info(f"rollback deploy step failed too: {exc}")
            return f"{reason}; rolled back to {previous_sha}, but its deploy step failed"
        finally:
            self.measure(Phase.ROLLBACK, started)
        return f"{reason}; rolled back to {previous_sha}"

    def previous_steps(self, job: Job) -> Environment:
        """The steps of the release a rollback puts back: its own commit's recipe, as it was deployed.

        A recipe changes with the code, so the failed commit's ``deploy`` may not suit the release
        before it; when the previous commit's recipe cannot be read, this deployment's steps run.
        """
        if job.rollback_steps is not None:
            return job.rollback_steps
        previous_sha, configured = job.live.get("sha", ""), job.configured
        back = job.environment
        if configured is not None and configured.recipe is RecipeSource.REPO and previous_sha:
            try:
                back = recipe.resolve(self.mirror(job.project), previous_sha, configured).apply(configured)
            except (recipe.RecipeError, SourceError) as exc:
                job.log.info(self.masker(f"rollback: the previous commit's steps are unknown ({exc})"))
        if back.deploy != job.environment.deploy:
            job.log.info(f"rollback: the deploy steps of {previous_sha[:12]}, as it was deployed")
        job.rollback_steps = back
        return back

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
            should_stop=(lambda: job.hold.lost or self.cancel_flag(job) != "")
            if cancelable
            else job_lost(job),
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
        if outcome.canceled and job.hold.lost:
            raise LaneLost(job.switched)
        if outcome.canceled:
            raise Canceled(self.cancel_flag(job) or "someone")
        if not outcome.ok:
            raise StepFailed(result)

    def measure(self, phase: Phase, started: float) -> None:
        telemetry.observe(self.redis, "phase", phase, time.monotonic() - started)

    def cancel_flag(self, job: Job) -> str:
        """Who asked to cancel, or ""; looked up at most every CANCEL_POLL seconds."""
        now = time.monotonic()
        if not self._cancel_by and now - self._cancel_checked >= CANCEL_POLL:
            self._cancel_checked = now
            self._cancel_by = cancel_requested(self.redis, job.deployment.id)
        return self._cancel_by

    def check_cancel(self, job: Job) -> None:
        if job.hold.lost:
            raise LaneLost(job.switched)
        self._cancel_checked = 0.0
        who = self.cancel_flag(job)
        if who:
            raise Canceled(who)

    def check_lane(self, job: Job) -> None:
        """Renew the lane now; a lease lost in the background or refused now stops the deployment."""
        if job.hold.lost or not job.hold.lane.renew(job.hold.token):
            job.hold.lease.lost.set()
            raise LaneLost(job.switched)

    def variables(
        self, job: Job, release_id: str, sha: str, previous_sha: str, steps_of: Environment | None = None
    ) -> dict[str, str]:
        """What a step sees; ``steps_of`` gives the ``env`` of another release's steps (a rollback's)."""
        return steps.scrubbed_environment(
            self.environ,
            {
                **(steps_of or job.environment).env,
                "PUSHDEPLOY_PROJECT": job.project.name,
                "PUSHDEPLOY_ENVIRONMENT": job.environment.name,
                "PUSHDEPLOY_DEPLOYMENT_ID": job.deployment.id,
                "PUSHDEPLOY_SHA": sha,
                "PUSHDEPLOY_REF": job.deployment.branch,
                "PUSHDEPLOY_PREVIOUS_SHA": previous_sha,
                "PUSHDEPLOY_RELEASE_DIR": str(job.releases.path(release_id)),
                "PUSHDEPLOY_CURRENT_DIR": str(job.releases.current_link),
                **job.environment.review_variables(),
            },
        )

    # -- endings ----------------------------------------------------------

    def end(self, deployment_id: str, state: State, reason: str, hold: Hold | None = None) -> Outcome:
        """End through the one lifecycle; with ``hold``, the lane goes to whoever waits for it."""
        token = hold.token if hold is not None else ""
        ended = lifecycle.end(self.settings, self.redis, deployment_id, state, reason, lane_token=token)
        if ended is None:  # ended elsewhere meanwhile (a cancel, a recovery): its state stands
            return Outcome.of(self.store.get(deployment_id).state)
        self.handed_over = bool(token)
        return Outcome.of(state)


def job_lost(job: Job) -> Callable[[], bool]:
    """A rollback step ignores cancel requests, but never runs on after the lane was lost."""
    return lambda: job.hold.lost
