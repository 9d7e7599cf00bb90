"""Stopping a review app: its steps end, ``review.stop`` runs, its directories go, GitLab is told.

Run as an RQ job on the deploy queue (queued by :class:`workers.review_requests.ReviewDesk`). The
app's lane is held while it stops, so no deployment of it switches ``current`` meanwhile; one that
was queued or running is canceled first. What GitLab is told (the note edited to say the app
stopped and why, the GitLab environment stopped) goes into the outbox of the app's newest
deployment, so a GitLab outage never holds up or loses it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import shutil
import time
from collections.abc import Callable, Mapping

from redis import Redis

from workers import engine, lifecycle, schema, steps
from workers.config import Environment, Project, Settings
from workers.control import cancel
from workers.deploylog import DeploymentLog, Masker
from workers.deployments import DeploymentStore, State, UnknownDeployment
from workers.forge import EnvironmentAction, ReviewNote
from workers.lanes import LOCK_TTL_MS, Lane
from workers.links import LinkSigner
from workers.operations import OperationError
from workers.outbox import enqueue_status
from workers.releases import Releases
from workers.remote import Host, credentials
from workers.review_requests import STOP_REASONS
from workers.reviews import AppState, ReviewApp, ReviewStore, environment_of, note_body
from workers.routes import deployment_url

log = logging.getLogger(__name__)

LANE_WAIT = 0.25
"""Seconds between looks at the lane while a canceled deployment winds down."""


def stop_review(project: str, iid: int, reason: str, who: str = "") -> str:
    """RQ entry point; returns what became of the app."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("stop_review must run inside an RQ job")
    current = engine.current(job.connection)
    return Stopper(current.settings, current.redis, current.masker, os.environ).stop(
        project, iid, reason, who
    )


class Stopper:
    def __init__(
        self, settings: Settings, redis: Redis, masker: Masker, environ: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.masker = masker
        self.environ = dict(environ or {})
        self.reviews = ReviewStore(redis)

    def stop(self, project_name: str, iid: int, reason: str, who: str = "") -> str:
        app = self.reviews.get(project_name, iid)
        project = self.settings.projects.get(project_name)
        if app is None or app.state is not AppState.STOPPING:
            return "not stopping"  # stopped already, or reopened since the stop was asked for
        environment = environment_of(self.settings, self.redis, project_name, app.environment)
        why = STOP_REASONS.get(reason, reason) + (f" ({who})" if who else "")
        if project is None or environment is None:
            self.reviews.stopped(project_name, iid)
            return "stopped (no longer configured)"
        deplog = DeploymentLog(self.redis, app.deployment, self.masker) if app.deployment else None
        say = deplog.info if deplog is not None else (lambda text: log.info("%s: %s", app.environment, text))
        say(f"review app stopping: {why}")
        self.cancel_running(project, environment, who or "review app stop")
        lane = Lane(self.redis, project.name, environment.name)
        token = self.hold(lane, environment)
        try:
            with lane.keep_alive(token):
                self.run_stop(project, environment, app, say)
                self.report(project, environment, app, why)
                self.redis.delete(schema.live(project.name, environment.name))
                if not self.reviews.stopped(project.name, iid):
                    say("the merge request was reopened meanwhile: its new deployment starts the app again")
        finally:
            released = lane.release(token)
            if released.waiting:  # a reopened merge request's deployment: it starts the app again
                lifecycle.start_waiting(
                    self.settings, self.redis, project.name, environment.name, released.waiting
                )
            if deplog is not None:
                deplog.flush()
        say(f"review app stopped: {why}")
        if deplog is not None:
            deplog.flush()
        return "stopped"

    def cancel_running(self, project: Project, environment: Environment, who: str) -> None:
        """Cancel the app's queued and running deployments; the running one ends at its next look."""
        store = DeploymentStore(self.redis)
        for deployment in store.history(project.name, environment.name, limit=20):
            if deployment.state in (State.QUEUED, State.RUNNING):
                try:
                    cancel(self.settings, self.redis, deployment.id, who)
                except OperationError:
                    continue

    def hold(self, lane: Lane, environment: Environment) -> str:
        """Take the app's lane once its deployment (canceled above) has let go of it."""
        token = f"stop-{environment.review_iid}:{secrets.token_hex(8)}"
        deadline = time.monotonic() + 2 * environment.timeout
        while not self.redis.set(lane.lock_key, token, nx=True, px=LOCK_TTL_MS):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{environment.name}: its deployment did not let go of the lane")
            time.sleep(LANE_WAIT)
        return token

    def stop_commands(self, project: Project, app: ReviewApp) -> tuple[str, ...]:
        """The ``stop`` of the app's last deployment's steps (its recipe's ``[review] stop`` or the
        server's), so an app stops the way the commit that started it says; else the server's."""
        server = project.review.stop if project.review is not None else ()
        if not app.deployment:
            return server
        try:
            ran = DeploymentStore(self.redis).get(app.deployment).steps_run()
        except UnknownDeployment:
            return server
        if ran is None:
            return server
        return tuple(str(command) for command in ran.get("review", {}).get("stop", server))

    def run_stop(
        self, project: Project, environment: Environment, app: ReviewApp, say: Callable[[str], None]
    ) -> None:
        commands = self.stop_commands(project, app)
        deadline = time.time() + environment.timeout
        if environment.targets:
            self.stop_on_targets(project, environment, app, commands, deadline, say)
        releases = Releases(self.settings.server.data_dir, project.name, environment.directory)
        current = releases.current()
        if not environment.targets and current and commands:
            variables = self.variables(
                project, environment, app, str(releases.path(current)), str(releases.current_link)
            )
            for index, command in enumerate(commands, start=1):
                say(f"stop {index}: $ {command}")
                outcome = steps.run(
                    command, releases.current_link, variables, deadline, say, user=environment.run_as
                )
                say(f"stop {index} exited {outcome.exit_code} after {outcome.duration:.2f} s")
        if releases.root.exists():
            shutil.rmtree(releases.root, ignore_errors=True)
            say(f"removed {releases.root}")

    def stop_on_targets(
        self,
        project: Project,
        environment: Environment,
        app: ReviewApp,
        commands: tuple[str, ...],
        deadline: float,
        say: Callable[[str], None],
    ) -> None:
        assert environment.ssh_key is not None and environment.known_hosts is not None
        q = shlex.quote
        with credentials(environment.ssh_key, environment.known_hosts) as directory:
            for index, target in enumerate(environment.targets):
                host = Host(target, directory, index, self.environ)
                try:
                    found = host.run(f"readlink {q(host.path('current'))} || true", deadline)
                    current = found.lines[0].strip().removeprefix("releases/") if found.lines else ""
                    if current and "/" not in current:
                        variables = {
                            **self.variables(
                                project,
                                environment,
                                app,
                                host.path("releases", current),
                                host.path("current"),
                            ),
                            "PUSHDEPLOY_HOST": target.host,
                        }
                        for number, command in enumerate(commands, start=1):
                            say(f"{target.name}: stop {number}: $ {command}")
                            run = host.run(
                                host.step_command(current, command, variables, f"stop-{number}.pid"),
                                deadline,
                                prefixed(say, target.name),
                            )
                            say(f"{target.name}: stop {number} exited {run.exit_code}")
                    host.run(f"rm -rf {q(host.root)}", deadline)
                    say(f"{target.name}: removed {host.root}")
                finally:
                    host.close()

    def variables(
        self, project: Project, environment: Environment, app: ReviewApp, release_dir: str, current_dir: str
    ) -> dict[str, str]:
        return steps.scrubbed_environment(
            self.environ,
            {
                **environment.env,
                "PUSHDEPLOY_PROJECT": project.name,
                "PUSHDEPLOY_ENVIRONMENT": environment.name,
                "PUSHDEPLOY_DEPLOYMENT_ID": app.deployment,
                "PUSHDEPLOY_SHA": app.sha,
                "PUSHDEPLOY_REF": app.branch,
                "PUSHDEPLOY_PREVIOUS_SHA": "",
                "PUSHDEPLOY_RELEASE_DIR": release_dir,
                "PUSHDEPLOY_CURRENT_DIR": current_dir,
                **environment.review_variables(),
            },
        )

    def report(self, project: Project, environment: Environment, app: ReviewApp, why: str) -> None:
        """The note says the app stopped and why; the GitLab environment stops (through the outbox)."""
        if not app.deployment:
            return
        signer = LinkSigner.for_server(self.settings.server.admin_token, self.settings.server.link_ttl_days)
        public = self.settings.server.public_url
        page = signer.url(public, app.deployment) if signer else deployment_url(public, app.deployment)
        body = note_body(environment, app.sha, "stopped", page, why)
        with self.redis.pipeline() as pipe:
            enqueue_status(
                pipe, app.deployment, ReviewNote(project.gitlab_project, project.name, app.iid, body)
            )
            if project.gitlab_environments:
                enqueue_status(
                    pipe, app.deployment, EnvironmentAction(project.gitlab_project, environment.name, "stop")
                )
            pipe.execute()


def prefixed(say: Callable[[str], None], name: str) -> Callable[[str], None]:
    """``say`` with each line marked by the host it came from."""
    return lambda line: say(f"{name}: {line}")
