"""What GitLab is told about a deployment: the commit status, and the GitLab deployment update.

Built here, queued in the deployment's outbox (``workers.outbox``), posted by the courier.
"""

from __future__ import annotations

from redis import Redis

from workers import routes
from workers.config import Environment, Project, Settings
from workers.deployments import Deployment
from workers.forge import CommitStatus, DeploymentUpdate, EnvironmentAction, ReviewNote, StatusState
from workers.links import LinkSigner
from workers.outbox import enqueue_status
from workers.reviews import environment_of, note_body


def commit_status(
    public_url: str,
    project: Project,
    environment: Environment,
    deployment: Deployment,
    state: StatusState,
    description: str,
    signer: LinkSigner | None = None,
) -> CommitStatus:
    """The status GitLab shows for this deployment: ``deploy/<env>`` on the branch, linking to our page.

    With an admin token configured the link is signed, so a maintainer can open it without an account.
    """
    url = (
        signer.url(public_url, deployment.id) if signer else routes.deployment_url(public_url, deployment.id)
    )
    return CommitStatus(
        project=project.gitlab_project,
        sha=deployment.sha,
        state=state,
        ref=deployment.branch,
        name=environment.status_name,
        target_url=url,
        description=(description.splitlines() or [state.value])[0][:255],
    )


def report(
    redis: Redis, settings: Settings, deployment: Deployment, state: StatusState, description: str
) -> None:
    """Put a status for ``deployment`` in its outbox (the courier posts it)."""
    project = settings.projects.get(deployment.project)
    environment = environment_of(settings, redis, deployment.project, deployment.environment)
    if project is None or environment is None or not deployment.sha:
        return  # no longer configured, or its commit never resolved: nothing GitLab could show
    signer = LinkSigner.for_server(settings.server.admin_token, settings.server.link_ttl_days)
    status = commit_status(
        settings.server.public_url, project, environment, deployment, state, description, signer
    )
    with redis.pipeline() as pipe:
        enqueue_status(pipe, deployment.id, status)
        started = state is StatusState.RUNNING or bool(deployment.started_at)
        if environment.review_iid and state is not StatusState.PENDING and started:
            # A deployment superseded before it ran says nothing on the merge request: the newer one will.
            if project.gitlab_environments and state is StatusState.RUNNING:
                start = EnvironmentAction(
                    project.gitlab_project, environment.name, "start", environment.review_url
                )
                enqueue_status(pipe, deployment.id, start)
            text = note_body(environment, deployment.sha, str(state), status.target_url)
            note = ReviewNote(project.gitlab_project, project.name, environment.review_iid, text)
            enqueue_status(pipe, deployment.id, note)
        if (
            project.gitlab_environments
            and (state is not StatusState.PENDING)
            and (state is StatusState.RUNNING or deployment.started_at)
        ):
            # GitLab deployments start at running; a push canceled before it ran never had one.
            update = DeploymentUpdate(
                project.gitlab_project,
                deployment.sha,
                deployment.branch,
                environment.name,
                str(state),
                tag=deployment.ref.startswith("refs/tags/"),
            )
            enqueue_status(pipe, deployment.id, update)
        pipe.execute()
