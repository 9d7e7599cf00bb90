"""The config keys of many hosts: accepted forms, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workers.test_config import PROJECT, keys, problems, write
from workers.config import load
from workers.targets import Rollout, Target, TargetError, parse_target

KEY_CANARY = "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-canary-5e6f7a\n-----END OPENSSH PRIVATE KEY-----"


def test_targets_are_read_per_environment_with_their_key_and_rollout(tmp_path: Path) -> None:
    write(tmp_path / "key", KEY_CANARY)
    write(tmp_path / "known_hosts", "web-1.example.org ssh-ed25519 AAAA\n")
    path = write(
        tmp_path / "pushdeploy.toml",
        PROJECT
        + """
ssh_key = "file:key"
known_hosts = "file:known_hosts"
[projects.app.environments.production]
targets = ["ssh://deploy@web-1.example.org/srv/app", "ssh://deploy@10.0.0.7:2222/srv/app/"]
rollout = { batch = "all" }
health_check = { url = "http://{host}:8080/healthz" }
[projects.app.environments.staging]
branch = "develop"
""",
    )
    settings = load(path, environ={})

    production = settings.environment("app", "production")
    assert production.targets == (
        Target("deploy", "web-1.example.org", 22, "/srv/app"),
        Target("deploy", "10.0.0.7", 2222, "/srv/app"),
    )
    assert [t.name for t in production.targets] == ["web-1.example.org", "10.0.0.7:2222"]
    assert production.rollout == Rollout(0)
    assert production.ssh_key is not None and production.ssh_key.reveal().startswith("-----BEGIN")
    assert "key-canary" not in repr(production)
    assert settings.environment("app", "staging").targets == ()  # ssh_key alone deploys nowhere
    assert any(s.reveal() == KEY_CANARY for s in settings.all_secrets())  # masked in every log


def test_every_bad_targets_value_is_named(tmp_path: Path) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        PROJECT
        + """
targets = ["ssh://web-1/srv/app", "ssh://deploy@web-2/", "ssh://deploy@web-3/srv/app", "ssh://deploy@web-3/srv/app"]
rollout = { batch = 0, size = 2 }
health_check = { url = "http://{host}/healthz" }
""",
    )

    found = keys(error)
    assert found["projects.app.targets[0]"].startswith("needs a user")
    assert found["projects.app.targets[1]"].startswith("path must be absolute")
    assert found["projects.app.targets[3]"] == "web-3 is already a target"
    assert found["projects.app.ssh_key"].startswith("is required with targets")
    assert found["projects.app.known_hosts"].startswith("is required with targets")
    assert found["projects.app.rollout.batch"] == 'must be an integer ≥ 1 or "all"'
    assert found["projects.app.rollout.size"].startswith("unknown key")


def test_target_keys_without_targets_and_host_placeholder_without_targets_are_errors(tmp_path: Path) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        PROJECT + 'known_hosts = "x"\nhealth_check = { url = "http://{host}:8080/" }\n',
    )
    found = keys(error)
    assert found["projects.app.known_hosts"] == "only applies with targets"
    assert found["projects.app.health_check.url"].startswith("{host} stands for a target's host")


@pytest.mark.parametrize(
    "value",
    [
        "https://deploy@web/srv",
        "ssh://deploy:secret@web/srv",
        "ssh://deploy@web/srv?x=1",
        "ssh://deploy@web:0/srv",
        "ssh://deploy@web/srv/../etc",
        "ssh://deploy@web/srv app",
        "ssh://deploy@-oProxyCommand=x/srv",
        "ssh://Deploy;rm@web/srv",
    ],
)
def test_unsafe_or_malformed_targets_are_refused(value: str) -> None:
    with pytest.raises(TargetError):
        parse_target(value)


def test_batches_follow_targets_order() -> None:
    targets = tuple(Target("d", f"h{i}", 22, "/srv") for i in range(5))
    assert [len(b) for b in Rollout(2).batches(targets)] == [2, 2, 1]
    assert Rollout(0).batches(targets) == [targets]
