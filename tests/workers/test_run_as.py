"""``run_as``: a root worker runs the steps as an unprivileged user, who owns the release it builds.

Needs root (to switch users) and the ``nobody`` account Debian ships; skipped otherwise.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from tests.helpers import GitRepo, use_engine
from workers import defaults, pipeline
from workers.config import Settings
from workers.deployments import Deployment, DeploymentStore, State
from workers.engine import Engine
from workers.intake import Intake, Push
from workers.steps import RunAsError, run, scrubbed_environment, switch_to


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


NOBODY = _nobody()
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or NOBODY is None, reason="switching users needs root and a 'nobody' account"
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users may enter (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pushdeploy-run-as-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def run_step(command: str, cwd: Path, user: str | None) -> tuple[int | None, list[str]]:
    lines: list[str] = []
    outcome = run(
        command, cwd, scrubbed_environment(os.environ, {}), time.time() + 30, lines.append, user=user
    )
    return outcome.exit_code, lines


def test_a_step_runs_as_the_user_without_the_workers_groups_or_home(shared_dir: Path) -> None:
    assert NOBODY is not None
    secret = shared_dir / "pushdeploy.toml"
    secret.write_text('admin_token = "root-only-canary"\n')
    secret.chmod(0o600)

    code, lines = run_step(f"id -u; id -G; echo HOME=$HOME USER=$USER; cat {secret}", shared_dir, "nobody")

    assert lines[:3] == [str(NOBODY.pw_uid), str(NOBODY.pw_gid), f"HOME={NOBODY.pw_dir} USER=nobody"]
    assert code != 0
    assert "Permission denied" in lines[-1]
    assert not any("root-only-canary" in line for line in lines)


def test_without_run_as_the_step_is_the_worker(shared_dir: Path) -> None:
    code, lines = run_step("id -u", shared_dir, None)
    assert (code, lines) == (0, ["0"])


def test_a_worker_that_is_not_root_cannot_switch_to_another_user() -> None:
    """Checked in a forked child that has dropped to nobody: a real unprivileged process."""
    assert NOBODY is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            answers = [repr(switch_to("nobody"))]
            try:
                switch_to("root")
                answers.append("switched")
            except RunAsError as exc:
                answers.append(str(exc))
            os.write(write_end, "\n".join(answers).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    assert text.splitlines() == [
        "None",  # already that user: nothing to switch
        f"run_as needs the worker to run as root (it runs as uid {NOBODY.pw_uid})",
    ]


def test_an_unknown_user_is_refused_before_anything_runs() -> None:
    with pytest.raises(RunAsError, match="no user 'no-such-user-pd7'"):
        switch_to("no-such-user-pd7")


@pytest.fixture
def deploy(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> Callable[[Settings, str], Deployment]:
    def go(settings: Settings, sha: str) -> Deployment:
        use_engine(settings, redis, monkeypatch)
        project = settings.projects["sample-app"]
        environment = project.environments["production"]
        accepted = Intake(redis, settings.server.public_url).accept(
            project, environment, Push("refs/heads/main", sha, "alice", "")
        )
        SimpleWorker([Queue(defaults.DEPLOY_QUEUE, connection=redis)], connection=redis).work(burst=True)
        return DeploymentStore(redis).get(accepted.deployment_id)

    return go


def test_a_deployment_builds_as_the_user_in_a_release_it_owns(
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    deploy: Callable[[Settings, str], Deployment],
    shared_dir: Path,
) -> None:
    assert NOBODY is not None
    settings = make_settings(
        server={"data_dir": str(shared_dir / "data")},
        run_as="nobody",
        build=["id -u > built-by.txt", "mkdir -p cache && echo ok > cache/ok"],
        deploy=["echo $HOME > deployed-home.txt"],
    )
    sha = git_repo.commit({"app.txt": "as nobody\n"})

    done = deploy(settings, sha)

    assert done.state is State.SUCCEEDED, done.reason
    current = shared_dir / "data" / "projects" / "sample-app" / "production" / "current"
    assert (current / "built-by.txt").read_text() == f"{NOBODY.pw_uid}\n"
    assert (current / "deployed-home.txt").read_text() == f"{NOBODY.pw_dir}\n"
    owners = {p.lstat().st_uid for p in [current.resolve(), *current.resolve().rglob("*")]}
    assert owners == {NOBODY.pw_uid}


def test_a_step_user_the_worker_cannot_become_fails_the_deployment_before_any_work(
    make_settings: Callable[..., Settings], git_repo: GitRepo, redis: Redis
) -> None:
    # A user removed from the host after the config was loaded: the worker's own check catches it.
    loaded = make_settings(build=["touch should-not-exist"])
    project = loaded.projects["sample-app"]
    environment = replace(project.environments["production"], run_as="no-such-user-pd7")
    project = replace(project, environments={"production": environment})
    settings = replace(loaded, projects={"sample-app": project})
    sha = git_repo.commit({"app.txt": "x\n"})
    accepted = Intake(redis, settings.server.public_url).accept(
        project, environment, Push("refs/heads/main", sha, "alice", "")
    )

    assert pipeline.Runner(Engine.build(settings, redis)).run(accepted.deployment_id) == "failed"

    done = DeploymentStore(redis).get(accepted.deployment_id)
    assert done.reason == "run_as: no user 'no-such-user-pd7' on this host"
    assert not (settings.server.data_dir / "projects").exists()
