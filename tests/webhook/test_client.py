"""The CLI calls the API as a person: PUSHDEPLOY_TOKEN, else a private token file, else the admin token."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tests import people
from tests.helpers import ADMIN_TOKEN, GitRepo
from webhook.app import create_app
from webhook.client import ApiFailure, personal_token, token_file
from webhook.tokens import TokenStore
from workers.config import load
from workers.deployments import Deployment, DeploymentStore, State, new_id

ROOT = Path(__file__).resolve().parents[2]


def test_the_environment_wins_then_the_private_file(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert token_file(home) == tmp_path / ".config" / "pushdeploy" / "token"
    assert personal_token(home) is None
    token_file(home).parent.mkdir(parents=True)
    token_file(home).write_text("pdt_from_file\n")
    token_file(home).chmod(0o600)
    assert personal_token(home) == "pdt_from_file"
    assert personal_token({**home, "PUSHDEPLOY_TOKEN": "pdt_from_env"}) == "pdt_from_env"
    token_file(home).chmod(0o644)
    with pytest.raises(ApiFailure, match=r"readable by others \(mode 0644\), so it is not used: chmod 600"):
        personal_token(home)
    assert token_file({"XDG_CONFIG_HOME": "/x"}) == Path("/x/pushdeploy/token")


@pytest.fixture
def served(tmp_path: Path, redis: Redis, redis_url: str, git_repo: GitRepo) -> Iterator[dict[str, Any]]:
    fake = people.gitlab().start()
    made: dict[str, Any] = {"fake": fake}

    def build(base_url: str) -> Any:
        people.arrange(fake, base_url)
        made["config"] = people.write(
            tmp_path / "pushdeploy.toml", redis_url, tmp_path / "data", fake.url, base_url, git_repo.url
        )
        return create_app(load(made["config"], environ={}), redis, drain=False)

    with people.serving(build) as base_url:
        made["url"] = base_url
        yield made
    fake.stop()


def cli(
    served: dict[str, Any],
    home: Path,
    *args: str,
    token: str = "",
    config: bool = True,
    url: bool = True,
    cwd: Path = ROOT,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """The CLI as a person runs it: ``--config`` and ``--url`` unless told not to, no PUSHDEPLOY_*
    from this environment but ``env``'s."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PUSHDEPLOY_")}
    environ.update(HOME=str(home), PYTHONPATH=str(ROOT), **env)
    environ.pop("XDG_CONFIG_HOME", None)
    if token:
        environ["PUSHDEPLOY_TOKEN"] = token
    argv = [sys.executable, "-m", "webhook.cli", *(["--config", str(served["config"])] if config else []),
            *args, *(["--url", served["url"]] if url else [])]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, env=environ, cwd=cwd, timeout=60, check=False)


def test_the_cli_acts_with_the_tokens_owners_rights(
    served: dict[str, Any], redis: Redis, tmp_path: Path
) -> None:
    fake = served["fake"]
    DeploymentStore(redis).create(
        Deployment("d1", "sample-app", "staging", "refs/heads/develop", "ab" * 20, state=State.SUCCEEDED)
    )
    _, token = TokenStore(redis).create(
        "developer", fake.people.users["developer"]["id"], "cli", time.time() + 600
    )
    listed = cli(served, tmp_path, "deployments", "--json", token=token)
    assert listed.returncode == 0, listed.stderr
    assert '"id": "d1"' in listed.stdout
    sha = "cd" * 20
    staging = cli(served, tmp_path, "deploy", "sample-app", "-e", "staging", "--sha", sha, token=token)
    assert staging.returncode == 0, staging.stderr
    production = cli(served, tmp_path, "deploy", "sample-app", "-e", "production", "--sha", sha, token=token)
    assert production.returncode == 2
    assert "need Maintainer or above" in production.stderr

    # The same token from a file that others can read is refused, and says so.
    path = token_file({"HOME": str(tmp_path)})
    path.parent.mkdir(parents=True)
    path.write_text(token)
    path.chmod(0o640)
    leaky = cli(served, tmp_path, "deployments")
    assert leaky.returncode == 3 and "chmod 600" in leaky.stderr and token not in leaky.stderr
    path.chmod(0o600)
    assert cli(served, tmp_path, "deployments").returncode == 0

    # Without a personal token, the server's admin token is the fallback.
    path.unlink()
    fallback = cli(served, tmp_path, "deploy", "sample-app", "-e", "production", "--sha", sha)
    assert fallback.returncode == 0, fallback.stderr
    assert ADMIN_TOKEN not in fallback.stdout + fallback.stderr


def test_from_a_laptop_without_a_configuration_the_url_and_a_personal_token_suffice(
    served: dict[str, Any], redis: Redis, tmp_path: Path
) -> None:
    fake = served["fake"]
    store = DeploymentStore(redis)
    live = new_id()  # a real id's form: rollback tells it from a project's name
    store.create(
        Deployment(live, "sample-app", "staging", "refs/heads/develop", "ab" * 20, state=State.SUCCEEDED)
    )
    _, token = TokenStore(redis).create(
        "developer", fake.people.users["developer"]["id"], "laptop", time.time() + 600
    )
    laptop = tmp_path / "laptop"  # no pushdeploy.toml here, none named
    laptop.mkdir()

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return cli(served, laptop, *args, config=False, url=False, cwd=laptop, **env)

    with_url = {"PUSHDEPLOY_URL": served["url"], "PUSHDEPLOY_TOKEN": token}
    listed = run("deployments", "--json", **with_url)
    assert listed.returncode == 0, listed.stderr
    assert f'"id": "{live}"' in listed.stdout
    flag = run("show", live, "--url", served["url"], PUSHDEPLOY_TOKEN=token)  # --url instead of the variable
    assert flag.returncode == 0, flag.stderr

    queued = run("deploy", "sample-app", "-e", "staging", "--sha", "cd" * 20, **with_url)
    assert queued.returncode == 0, queued.stderr
    assert store.get(queued.stdout.split()[1].rstrip(":")).triggered_by == "deploy by developer"
    again = run("rollback", live, **with_url)
    assert again.returncode == 0, again.stderr

    for command in (("deploy", "sample-app"), ("rollback", "sample-app")):
        unnamed = run(*command, **with_url)
        assert (unnamed.returncode, unnamed.stderr.strip()) == (
            2,
            "pushdeploy: without a configuration file, name the environment: --environment ENV",
        )
    nowhere = run("deployments", PUSHDEPLOY_TOKEN=token)
    assert nowhere.returncode == 2
    assert "no server to call: pass --url or set PUSHDEPLOY_URL" in nowhere.stderr
    tokenless = run("deployments", PUSHDEPLOY_URL=served["url"])
    assert tokenless.returncode == 3
    assert "no token: set PUSHDEPLOY_TOKEN" in tokenless.stderr
    assert "without a configuration file there is no admin token" in tokenless.stderr


def test_the_url_comes_from_the_flag_then_the_variable_then_the_configuration_but_never_the_admin_tokens(
    served: dict[str, Any], redis: Redis, tmp_path: Path
) -> None:
    fake = served["fake"]
    _, token = TokenStore(redis).create(
        "developer", fake.people.users["developer"]["id"], "cli", time.time() + 600
    )
    nowhere = "http://127.0.0.1:1"  # nothing listens there
    flag = cli(served, tmp_path, "deployments", token=token, PUSHDEPLOY_URL=nowhere)  # --url given
    assert flag.returncode == 0, flag.stderr
    variable = cli(served, tmp_path, "deployments", token=token, url=False, PUSHDEPLOY_URL=nowhere)
    assert variable.returncode == 3 and "127.0.0.1:1" in variable.stderr  # over public_url
    configured = cli(served, tmp_path, "deployments", token=token, url=False)  # public_url
    assert configured.returncode == 0, configured.stderr
    # The configuration's admin token goes to public_url, never to an exported PUSHDEPLOY_URL.
    admin = cli(served, tmp_path, "deployments", url=False, PUSHDEPLOY_URL=nowhere)
    assert admin.returncode == 0, admin.stderr
