"""The deployment job, run by a real RQ SimpleWorker against real Redis and real git."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from tests.helpers import GitRepo, Health, use_engine
from workers import defaults, pipeline
from workers.config import Settings
from workers.deploylog import read
from workers.deployments import Deployment, DeploymentStore, State
from workers.engine import Engine
from workers.intake import Intake, Push
from workers.outbox import recorded

BUILD = (
    '#!/bin/sh\nset -e\necho "building $PUSHDEPLOY_SHA for $PUSHDEPLOY_ENVIRONMENT"\ncp app.txt built.txt\n'
)


def use_config(settings: Settings, monkeypatch: pytest.MonkeyPatch, redis: Redis | None = None) -> None:
    """Install the engine for this config, as `pushdeploy worker` does before its first job."""
    from tests.conftest import REDIS_URL

    use_engine(settings, redis or Redis.from_url(REDIS_URL), monkeypatch)


def work(redis: Redis) -> None:
    """Run every queued job with a real RQ worker in this process."""
    SimpleWorker([Queue(defaults.DEPLOY_QUEUE, connection=redis)], connection=redis).work(burst=True)


@pytest.fixture
def deploy(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> Callable[[Settings, str], Deployment]:
    """Queue a push for ``sha`` and run the queue with a real RQ worker in this process."""

    def run(settings: Settings, sha: str) -> Deployment:
        use_config(settings, monkeypatch)
        project = settings.projects["sample-app"]
        environment = next(iter(project.environments.values()))
        accepted = Intake(redis, settings.server.public_url).accept(
            project, environment, Push(f"refs/heads/{environment.branch}", sha, "alice", "")
        )
        work(redis)
        return DeploymentStore(redis).get(accepted.deployment_id)

    return run


def env_dir(settings: Settings) -> Path:
    return settings.server.data_dir / "projects" / "sample-app" / "production"


def test_a_push_is_built_switched_and_deployed(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    settings = make_settings(deploy=['echo "$PUSHDEPLOY_REF $PUSHDEPLOY_DEPLOYMENT_ID" > deployed.txt'])
    sha = git_repo.commit({"build.sh": BUILD, "app.txt": "hello\n"}, "hello")

    done = deploy(settings, sha)

    assert done.state is State.SUCCEEDED
    current = env_dir(settings) / "current"
    assert os.readlink(current) == f"releases/{done.id}"
    assert (current / "built.txt").read_text() == "hello\n"
    assert (current / "deployed.txt").read_text() == f"main {done.id}\n"
    steps = DeploymentStore(redis).steps(done.id)
    assert [(s.phase, s.index, s.command, s.exit_code) for s in steps] == [
        ("build", 1, "./build.sh", 0),
        ("deploy", 1, 'echo "$PUSHDEPLOY_REF $PUSHDEPLOY_DEPLOYMENT_ID" > deployed.txt', 0),
    ]
    assert all(s.duration >= 0 for s in steps)
    lines = read(redis, done.id)
    assert f"building {sha} for production" in [line.text for line in lines if line.kind == "out"]
    assert [r.status.state for r in recorded(redis, done.id)] == ["pending", "running", "success"]
    assert DeploymentStore(redis).live("sample-app", "production")["sha"] == sha


def test_failed_build_leaves_current_untouched(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    settings = make_settings(deploy=["touch deployed-marker"])
    good = deploy(settings, git_repo.commit({"build.sh": BUILD, "app.txt": "one\n"}))
    bad_sha = git_repo.commit({"build.sh": "#!/bin/sh\necho doing\necho 'fatal: broken' >&2\nexit 7\n"})

    bad = deploy(settings, bad_sha)

    assert bad.state is State.FAILED
    assert bad.reason == "build step 1 `./build.sh` exited with 7"
    assert os.readlink(env_dir(settings) / "current") == f"releases/{good.id}"
    assert not (env_dir(settings) / "releases" / bad.id).exists()
    step = DeploymentStore(redis).steps(bad.id)[0]
    assert step.exit_code == 7
    assert step.tail[-1] == "fatal: broken"
    assert [r.status.state for r in recorded(redis, bad.id)] == ["pending", "running", "failed"]
    assert bad.previous_sha == good.sha


def test_failing_deploy_step_fails_the_deployment_with_its_exit_code(
    make_settings: Callable[..., Settings], git_repo: GitRepo, deploy: Callable[[Settings, str], Deployment]
) -> None:
    settings = make_settings(deploy=["true", "exit 4"])
    done = deploy(settings, git_repo.commit({"build.sh": BUILD, "app.txt": "x\n"}))
    assert done.state is State.FAILED
    assert done.reason == "deploy step 2 `exit 4` exited with 4; nothing to roll back to"


def test_steps_share_the_deployment_timeout(
    make_settings: Callable[..., Settings], git_repo: GitRepo, deploy: Callable[[Settings, str], Deployment]
) -> None:
    settings = make_settings(build=["sleep 1", "sleep 30"], deploy=[], timeout=2)
    done = deploy(settings, git_repo.commit({"app.txt": "slow\n"}))
    assert done.state is State.FAILED
    assert "build step 2 `sleep 30` ran out of time" in done.reason
    assert done.finished_at - done.started_at < 15


def test_a_sha_missing_from_the_repository_fails_cleanly(
    make_settings: Callable[..., Settings], deploy: Callable[[Settings, str], Deployment]
) -> None:
    done = deploy(make_settings(), "a" * 40)
    assert done.state is State.FAILED
    assert "is not in 'main' or any other branch" in done.reason


def test_a_rerun_of_a_finished_job_changes_nothing(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    settings = make_settings()
    done = deploy(settings, git_repo.commit({"build.sh": BUILD, "app.txt": "x\n"}))
    assert pipeline.Runner(Engine.build(settings, redis)).run(done.id) == "succeeded"
    assert len(recorded(redis, done.id)) == 3


def test_steps_see_only_the_scrubbed_environment(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITLAB_TOKEN", "leaky-canary-token")
    settings = make_settings(build=["env | sort > env.txt"], deploy=[], env={"APP_ENV": "prod"})
    done = deploy(settings, git_repo.commit({"app.txt": "x\n"}))
    seen = (env_dir(settings) / "current" / "env.txt").read_text()
    assert "leaky-canary-token" not in seen
    assert "PUSHDEPLOY_CONFIG" not in seen
    assert "APP_ENV=prod" in seen
    assert f"PUSHDEPLOY_RELEASE_DIR={env_dir(settings) / 'releases' / done.id}" in seen


# -- rollback, health check, already deployed ---------------------------------------------------


@pytest.fixture
def app_health() -> Iterator[Health]:
    server = Health()
    yield server
    server.close()


def test_failed_health_check_rolls_back_and_redeploys_the_previous_release(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
    app_health: Health,
) -> None:
    settings = make_settings(
        deploy=["echo $PUSHDEPLOY_SHA >> ../../deploy-runs.txt"],
        health_check={"url": app_health.url, "timeout": 2},
    )
    good = deploy(settings, git_repo.commit({"build.sh": BUILD, "app.txt": "good\n"}))
    assert good.state is State.SUCCEEDED
    app_health.code = 503

    bad = deploy(settings, git_repo.commit({"app.txt": "bad\n"}))

    assert bad.state is State.FAILED
    assert bad.reason.startswith("health check failed (HTTP 503 after ")
    assert bad.reason.endswith(f"; rolled back to {good.sha}")
    assert os.readlink(env_dir(settings) / "current") == f"releases/{good.id}"
    runs = (env_dir(settings) / "deploy-runs.txt").read_text().split()
    assert runs == [good.sha, bad.sha, good.sha]  # the previous release's deploy step ran again
    assert DeploymentStore(redis).live("sample-app", "production")["sha"] == good.sha
    assert [r.status.state for r in recorded(redis, bad.id)] == ["pending", "running", "failed"]


def test_first_deployment_says_there_is_nothing_to_roll_back_to(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
    app_health: Health,
) -> None:
    app_health.code = 500
    settings = make_settings(health_check={"url": app_health.url, "timeout": 1})
    done = deploy(settings, git_repo.commit({"build.sh": BUILD, "app.txt": "x\n"}))
    assert done.state is State.FAILED
    assert done.reason.endswith("nothing to roll back to")
    assert any("first deployment" in line.text for line in read(redis, done.id))


def test_a_failing_deploy_step_after_the_switch_rolls_back(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
) -> None:
    settings = make_settings(deploy=['test "$(cat app.txt)" != broken'])
    good = deploy(settings, git_repo.commit({"build.sh": BUILD, "app.txt": "fine\n"}))
    bad = deploy(settings, git_repo.commit({"app.txt": "broken\n"}))
    assert bad.state is State.FAILED
    assert (
        bad.reason
        == f'deploy step 1 `test "$(cat app.txt)" != broken` exited with 1; rolled back to {good.sha}'
    )
    assert os.readlink(env_dir(settings) / "current") == f"releases/{good.id}"


def test_the_live_sha_pushed_again_succeeds_without_rebuilding(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    settings = make_settings()
    sha = git_repo.commit({"build.sh": BUILD, "app.txt": "same\n"})
    first = deploy(settings, sha)
    again = deploy(settings, sha)
    assert again.state is State.SUCCEEDED
    assert again.reason == "already deployed"
    assert DeploymentStore(redis).steps(again.id) == []
    assert os.readlink(env_dir(settings) / "current") == f"releases/{first.id}"
    assert [r.status.description for r in recorded(redis, again.id)][-1] == "already deployed"


def test_old_releases_are_pruned_but_never_current_or_previous(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
) -> None:
    settings = make_settings(keep_releases=2)
    done = [deploy(settings, git_repo.commit({"build.sh": BUILD, "app.txt": f"v{i}\n"})) for i in range(4)]
    kept = sorted(p.name for p in (env_dir(settings) / "releases").iterdir())
    assert kept == [done[2].id, done[3].id]


# -- manual deploys, rollbacks, history ---------------------------------------------------------


def test_a_manual_deploy_of_a_branch_resolves_its_head_in_the_worker(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.operations import manual_deploy

    settings = make_settings()
    sha = git_repo.commit({"build.sh": BUILD, "app.txt": "manual\n"})
    use_config(settings, monkeypatch)
    project = settings.projects["sample-app"]
    queued = manual_deploy(
        Intake(redis, settings.server.public_url),
        project,
        project.environments["production"],
        "operator",
        ref="main",
    )
    assert queued.sha == ""
    work(redis)
    done = DeploymentStore(redis).get(queued.id)
    assert (done.state, done.sha, done.trigger) == (State.SUCCEEDED, sha, "manual")
    assert (done.requested_by, done.pusher, done.triggered_by) == ("operator", "", "deploy by operator")
    assert [r.status.state for r in recorded(redis, done.id)] == ["pending", "running", "success"]


def test_rollback_reuses_the_kept_release_without_building(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    from workers.operations import rollback

    settings = make_settings(deploy=["echo $PUSHDEPLOY_SHA > ../../live.txt"])
    first = deploy(settings, git_repo.commit({"build.sh": BUILD, "app.txt": "one\n"}))
    deploy(settings, git_repo.commit({"app.txt": "two\n"}))
    project = settings.projects["sample-app"]
    queued = rollback(
        Intake(redis, settings.server.public_url),
        project,
        project.environments["production"],
        first,
        "operator",
    )
    work(redis)
    done = DeploymentStore(redis).get(queued.id)
    assert done.state is State.SUCCEEDED
    assert done.trigger == f"rollback to {first.id}"
    assert os.readlink(env_dir(settings) / "current") == f"releases/{first.id}"
    assert (env_dir(settings) / "live.txt").read_text() == f"{first.sha}\n"
    assert [s.phase for s in DeploymentStore(redis).steps(done.id)] == ["deploy"]  # no build step ran


def test_history_keeps_the_newest_deployments_per_environment(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    from workers.forge import NullForge
    from workers.outbox import Courier

    settings = make_settings(server={"keep_deployments": 3}, build=[], deploy=[])
    done = []
    for index in range(5):
        done.append(deploy(settings, git_repo.commit({"app.txt": f"{index}\n"})))
        Courier(redis, NullForge()).deliver_due()  # pruning waits until GitLab has a deployment's statuses
    store = DeploymentStore(redis)
    kept = store.history("sample-app", "production", limit=10)
    assert [d.id for d in kept] == [d.id for d in reversed(done[2:])]
    assert not redis.exists(f"pd:dep:{done[0].id}", f"pd:dep:{done[0].id}:log", f"pd:dep:{done[0].id}:steps")
    assert [d.id for d in store.query([("sample-app", "production")], sha=done[3].sha[:8])] == [done[3].id]
    assert [d.id for d in store.query([("sample-app", "production")], state=State.SUCCEEDED, limit=2)] == [
        done[4].id,
        done[3].id,
    ]
    assert store.query([("sample-app", "production")], since=done[4].created_at + 1) == []


def test_a_manual_deploy_of_a_tag_records_the_tag(
    make_settings: Callable[..., Settings], git_repo: GitRepo, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import git
    from workers.operations import manual_deploy

    settings = make_settings(build=[], deploy=[])
    sha = git_repo.commit({"app.txt": "tagged\n"})
    git("tag", "v1.0", cwd=git_repo.work)
    git("push", "--quiet", "origin", "v1.0", cwd=git_repo.work)
    git_repo.commit({"app.txt": "after the tag\n"})
    use_config(settings, monkeypatch)
    project = settings.projects["sample-app"]
    queued = manual_deploy(
        Intake(redis, settings.server.public_url),
        project,
        project.environments["production"],
        "op",
        ref="v1.0",
    )
    work(redis)
    done = DeploymentStore(redis).get(queued.id)
    assert (done.state, done.sha, done.ref, done.branch) == (State.SUCCEEDED, sha, "refs/tags/v1.0", "v1.0")
    assert {r.status.ref for r in recorded(redis, done.id)} == {"v1.0"}


def test_a_pushed_tag_on_no_branch_is_fetched_by_its_tag_and_reported_with_its_name(
    make_settings: Callable[..., Settings], git_repo: GitRepo, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag push deploys the tagged commit even when no branch holds it; the status ref is the tag."""
    from tests.helpers import git

    settings = make_settings(branch=None, tags="v*", deploy=['echo "$PUSHDEPLOY_REF" > ref.txt'])
    sha = git_repo.commit({"build.sh": BUILD, "app.txt": "tagged only\n"}, "release", branch="release")
    git("tag", "-a", "-m", "release 2", "v2.0", cwd=git_repo.work)
    git("push", "--quiet", "origin", "v2.0", ":refs/heads/release", cwd=git_repo.work)
    use_config(settings, monkeypatch)
    project = settings.projects["sample-app"]
    accepted = Intake(redis, settings.server.public_url).accept(
        project, project.environments["production"], Push("refs/tags/v2.0", sha, "alice", "")
    )
    work(redis)
    done = DeploymentStore(redis).get(accepted.deployment_id)
    assert done.state is State.SUCCEEDED, done.reason
    assert (env_dir(settings) / "current" / "built.txt").read_text() == "tagged only\n"
    assert (env_dir(settings) / "current" / "ref.txt").read_text() == "v2.0\n"
    assert {r.status.ref for r in recorded(redis, done.id)} == {"v2.0"}


def test_a_manual_deploy_of_a_tag_with_a_sha_is_recorded_as_the_tag(
    make_settings: Callable[..., Settings], git_repo: GitRepo, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import git
    from workers.operations import OperationError, manual_deploy

    settings = make_settings(branch=None, tags="v*", build=[], deploy=[])
    sha = git_repo.commit({"app.txt": "tagged\n"})
    git("tag", "v3.0", cwd=git_repo.work)
    git("push", "--quiet", "origin", "v3.0", cwd=git_repo.work)
    use_config(settings, monkeypatch)
    project = settings.projects["sample-app"]
    environment = project.environments["production"]
    intake = Intake(redis, settings.server.public_url)
    with pytest.raises(OperationError, match="deploys tags"):
        manual_deploy(intake, project, environment, "op")
    queued = manual_deploy(intake, project, environment, "op", ref="v3.0", sha=sha)
    assert queued.ref == "refs/tags/v3.0"
    work(redis)
    done = DeploymentStore(redis).get(queued.id)
    assert (done.state, done.ref) == (State.SUCCEEDED, "refs/tags/v3.0")
    assert {r.status.ref for r in recorded(redis, done.id)} == {"v3.0"}
    explicit = manual_deploy(intake, project, environment, "op", ref="refs/heads/main", sha=sha)
    assert explicit.ref == "refs/heads/main"


# -- the recipe in the repository ---------------------------------------------------------------

RECIPE = """\
build = "echo built by the recipe > recipe-build.txt"
[environments.production]
deploy = ["echo deployed by the recipe for $PUSHDEPLOY_ENVIRONMENT > recipe-deploy.txt"]
[environments.staging]
deploy = "false"
"""


def test_a_commit_with_a_recipe_runs_its_steps(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    settings = make_settings(deploy=["echo the server's deploy > server-deploy.txt"])
    sha = git_repo.commit({".pushdeploy.toml": RECIPE}, "steps with the code")

    done = deploy(settings, sha)

    assert done.state is State.SUCCEEDED
    current = env_dir(settings) / "current"
    assert (current / "recipe-build.txt").read_text() == "built by the recipe\n"
    assert (current / "recipe-deploy.txt").read_text() == "deployed by the recipe for production\n"
    assert not (current / "server-deploy.txt").exists()
    assert [(s.phase, s.command) for s in DeploymentStore(redis).steps(done.id)] == [
        ("build", "echo built by the recipe > recipe-build.txt"),
        ("deploy", "echo deployed by the recipe for $PUSHDEPLOY_ENVIRONMENT > recipe-deploy.txt"),
    ]
    assert done.recipe == f"repo@{sha[:8]}"
    effective = done.public()["effective_steps"]
    assert effective["build"] == ["echo built by the recipe > recipe-build.txt"]
    assert effective["timeout"] == 60
    lines = [line.text for line in read(redis, done.id)]
    assert any(".pushdeploy.toml" in line and "repo@" in line for line in lines)
    assert ".pushdeploy.toml: [environments.staging] ignored: sample-app has no staging" in lines


def test_a_refused_recipe_fails_the_deployment_before_any_step(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    settings = make_settings(build=["touch /tmp/never-run-by-a-refused-recipe"])
    recipe_text = 'build = "make"\ntargets = ["ssh://root@evil.example/"]\nenv = { A = 1 }\n'
    sha = git_repo.commit({".pushdeploy.toml": recipe_text}, "asks for too much")

    bad = deploy(settings, sha)

    assert bad.state is State.FAILED
    assert bad.reason == (
        ".pushdeploy.toml line 2: targets: is the server's to set, not the repository's: refused"
        " (and 1 more problem(s): see the log)"
    )
    assert DeploymentStore(redis).steps(bad.id) == []
    assert (bad.recipe, bad.public()["effective_steps"]) == (f"repo@{sha[:8]}", None)
    releases = env_dir(settings) / "releases"
    assert not releases.exists() or not any(releases.iterdir())
    statuses = recorded(redis, bad.id)
    assert statuses[-1].status.state == "failed"
    assert statuses[-1].status.description == bad.reason
    lines = [line.text for line in read(redis, bad.id)]
    assert "refused: .pushdeploy.toml line 3: env.A: must be a string, not an integer" in lines


def test_invalid_toml_in_the_recipe_fails_with_its_line(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
) -> None:
    sha = git_repo.commit({".pushdeploy.toml": 'build = "make"\ndeploy = \n'}, "half a line")

    bad = deploy(make_settings(), sha)

    assert bad.state is State.FAILED
    assert bad.reason.startswith(".pushdeploy.toml line 2: not valid TOML: Invalid value")


def test_recipe_server_runs_the_servers_steps_whatever_the_file_says(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    settings = make_settings(recipe="server")
    sha = git_repo.commit({".pushdeploy.toml": "targets = 1\n"}, "ignored")

    done = deploy(settings, sha)

    assert done.state is State.SUCCEEDED
    assert done.recipe == "server"
    assert [s.command for s in DeploymentStore(redis).steps(done.id)] == [
        "./build.sh",
        "echo deployed $PUSHDEPLOY_SHA",
    ]


def test_without_a_recipe_the_servers_steps_run_and_say_so(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
) -> None:
    sha = git_repo.commit({"app.txt": "v2\n"}, "no recipe")

    done = deploy(make_settings(), sha)

    assert done.state is State.SUCCEEDED
    assert done.recipe == "server"
    assert done.public()["effective_steps"]["build"] == ["./build.sh"]


def test_a_recipes_lower_timeout_bounds_its_steps(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
) -> None:
    sha = git_repo.commit({".pushdeploy.toml": 'timeout = 1\nbuild = "sleep 20"\n'}, "in a hurry")

    bad = deploy(make_settings(timeout=60), sha)

    assert bad.state is State.FAILED
    assert "ran out of time" in bad.reason
    assert bad.finished_at - bad.started_at < 15


def test_a_rollback_runs_the_deploy_steps_of_the_release_it_puts_back(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    settings = make_settings(build=[])
    good = git_repo.commit({".pushdeploy.toml": 'deploy = "echo one > deployed-by.txt"\n'}, "one")
    assert deploy(settings, good).state is State.SUCCEEDED
    recipe_two = 'deploy = ["./restart-two.sh"]\n'  # a script the release before it does not have
    bad = git_repo.commit({".pushdeploy.toml": recipe_two, "restart-two.sh": "#!/bin/sh\nexit 4\n"}, "two")

    failed = deploy(settings, bad)

    assert failed.state is State.FAILED
    assert failed.reason.endswith(f"rolled back to {good}")
    assert (env_dir(settings) / "current" / "deployed-by.txt").read_text() == "one\n"
    ran = [(s.phase, s.command, s.exit_code) for s in DeploymentStore(redis).steps(failed.id)]
    assert ran == [("deploy", "./restart-two.sh", 4), ("rollback", "echo one > deployed-by.txt", 0)]


# -- the commit's title and author; notifications ----------------------------------------------


def test_a_push_without_the_commits_title_gets_it_from_git(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
) -> None:
    settings = make_settings()
    sha = git_repo.commit({"build.sh": BUILD, "app.txt": "t\n"}, "Fix the cart total\n\nLong body.")
    done = deploy(settings, sha)
    assert (done.commit_title, done.commit_author) == ("Fix the cart total", "Test Author")
    again = deploy(settings, sha)  # already deployed: read from the mirror without a fetch
    assert "already deployed" in again.reason
    assert (again.commit_title, again.commit_author) == ("Fix the cart total", "Test Author")


def test_the_deliverys_title_is_kept_and_git_is_not_asked(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings()
    sha = git_repo.commit({"build.sh": BUILD, "app.txt": "d\n"}, "what git says")
    use_config(settings, monkeypatch)
    project = settings.projects["sample-app"]
    push = Push("refs/heads/main", sha, "alice", "", commit_title="what GitLab said", commit_author="Alice")
    accepted = Intake(redis, settings.server.public_url).accept(
        project, project.environments["production"], push
    )
    queued = DeploymentStore(redis).get(accepted.deployment_id)
    assert (queued.commit_title, queued.commit_author) == ("what GitLab said", "Alice")  # from the start
    work(redis)
    done = DeploymentStore(redis).get(accepted.deployment_id)
    assert (done.state, done.commit_title, done.commit_author) == (
        State.SUCCEEDED,
        "what GitLab said",
        "Alice",
    )


def test_a_manual_deploy_of_a_branch_gets_its_heads_title(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.operations import manual_deploy

    settings = make_settings()
    git_repo.commit({"build.sh": BUILD, "app.txt": "m\n"}, "Release the spring menu")
    use_config(settings, monkeypatch)
    project = settings.projects["sample-app"]
    intake = Intake(redis, settings.server.public_url)
    queued = manual_deploy(intake, project, project.environments["production"], "operator", ref="main")
    work(redis)
    done = DeploymentStore(redis).get(queued.id)
    assert (done.state, done.commit_title, done.commit_author) == (
        State.SUCCEEDED,
        "Release the spring menu",
        "Test Author",
    )


def test_a_failure_then_a_success_queue_failed_then_recovered(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    redis: Redis,
) -> None:
    from workers.notifications import recorded as notices

    settings = make_settings(
        notify={"urls": ["json://127.0.0.1:9/hooks"], "on": ["failed", "recovered", "started"]}
    )
    bad = deploy(settings, git_repo.commit({"build.sh": "#!/bin/sh\nexit 3\n"}, "Break it"))
    good = deploy(settings, git_repo.commit({"build.sh": BUILD, "app.txt": "ok\n"}, "Mend it"))
    assert (bad.state, good.state) == (State.FAILED, State.SUCCEEDED)
    assert [(n.event, n.kind) for n in notices(redis, bad.id)] == [("started", "info"), ("failed", "failure")]
    assert [(n.event, n.kind) for n in notices(redis, good.id)] == [
        ("started", "info"),
        ("recovered", "success"),
    ]
    failed = notices(redis, bad.id)[1]
    assert "Commit: " + bad.sha[:8] + " Break it (Test Author) on main" in failed.body
    assert "build step 1 `./build.sh` exited with 3" in failed.body
