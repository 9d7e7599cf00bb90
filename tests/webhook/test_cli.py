"""``pushdeploy check``, ``gitlab-hook`` and ``--config`` as an operator runs them.

``check`` and ``worker`` run as real processes; the commands that talk to GitLab run through
``webhook.cli.main`` against the fake GitLab (a real HTTP server in this process).
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tests.fakegitlab import FakeGitLab, _message
from tests.helpers import SECRET_TOKEN, SIGNING_TOKEN
from webhook.cli import build_parser, main
from workers.config import Settings

TOKEN = "gitlab-api-token-canary-5d0e"
ROOT = Path(__file__).resolve().parents[2]
SIGNED = "signed deliveries required: GitLab must sign (19.0+, flag webhook_signing_token)"


def pushdeploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture
def fake() -> Iterator[FakeGitLab]:
    with FakeGitLab({"tools/sample-app": 42}, token=TOKEN) as server:
        yield server


def with_gitlab(make_settings: Callable[..., Settings], fake: FakeGitLab, **project: Any) -> Settings:
    return make_settings(gitlab={"url": fake.url, "token": TOKEN, "timeout": 2}, **project)


# -- signing keys -------------------------------------------------------------------------------


def test_check_refuses_a_24_byte_signing_key_naming_the_key(make_settings: Callable[..., Settings]) -> None:
    path = make_settings().path
    short = "whsec_" + base64.b64encode(b"s" * 24).decode()  # fine for Standard Webhooks, not for GitLab
    path.write_text(path.read_text().replace(SIGNING_TOKEN, short))

    result = pushdeploy("--config", str(path), "check")

    assert result.returncode == 1
    assert (
        "projects.sample-app.signing_token: a signing token must decode to exactly 32 bytes, "
        "the only length GitLab accepts; this one has 24"
    ) in result.stderr
    assert short not in result.stdout + result.stderr


def test_new_secret_prints_a_key_check_accepts(make_settings: Callable[..., Settings]) -> None:
    made = pushdeploy("new-secret")
    key = made.stdout.strip()
    assert made.returncode == 0 and len(base64.b64decode(key.removeprefix("whsec_"), validate=True)) == 32
    path = make_settings().path
    path.write_text(path.read_text().replace(SIGNING_TOKEN, key))

    assert pushdeploy("check", "--config", str(path)).returncode == 0


# -- --config before or after the command -------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


def invocation(path: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    """The command with a placeholder for each of its positional arguments (a project, a deployment)."""
    positionals = [
        a
        for a in parser._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction) and a.nargs is None
    ]
    return [*path, *("x" for _ in positionals)]


def test_every_command_takes_config_after_it_and_that_one_wins() -> None:
    parser = build_parser()
    found = dict(commands(parser))
    assert {("worker",), ("check",), ("secrets", "rotate"), ("logs",)} <= set(found)
    for path, sub in found.items():
        command = invocation(path, sub)
        assert parser.parse_args([*command, "--config", "after.toml"]).config == "after.toml", path
        assert parser.parse_args([*command, "-c", "after.toml"]).config == "after.toml", path
        both = parser.parse_args(["-c", "before.toml", *command, "--config", "after.toml"])
        assert both.config == "after.toml", path
        assert parser.parse_args(["--config", "before.toml", *command]).config == "before.toml", path
        assert parser.parse_args(command).config is None, path


def test_worker_with_config_after_the_command_runs(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    path = make_settings().path

    result = pushdeploy("worker", "--config", str(path), "--burst")

    assert result.returncode == 0, result.stderr
    assert "unrecognized arguments" not in result.stderr


def test_check_with_config_after_the_command_reads_that_file(make_settings: Callable[..., Settings]) -> None:
    path = make_settings().path

    result = pushdeploy("-c", "/nonexistent/pushdeploy.toml", "check", "-c", str(path))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK")


# -- check ---------------------------------------------------------------------------------------


def test_check_offline_says_what_each_project_requires(make_settings: Callable[..., Settings]) -> None:
    path = make_settings().path
    unsigned = path.with_name("unsigned.toml")
    unsigned.write_text(
        "\n".join(line for line in path.read_text().splitlines() if "signing_token" not in line)
    )

    signed, token_only = pushdeploy("check", "-c", str(path)), pushdeploy("check", "-c", str(unsigned))

    assert (signed.returncode, token_only.returncode) == (0, 0)
    assert f"  deliveries:  {SIGNED}" in signed.stdout.splitlines()
    assert "  deliveries:  token only (X-Gitlab-Token)" in token_only.stdout.splitlines()
    assert "GitLab:     none" in signed.stdout and "warning" not in signed.stdout
    assert "  sign-in:    admin token only ([auth] gitlab_oauth is not set)" in signed.stdout.splitlines()
    assert "  notify:      none" in signed.stdout.splitlines()


def test_check_says_how_people_sign_in_and_which_environments_are_protected(
    make_settings: Callable[..., Settings],
) -> None:
    path = make_settings(gitlab={"url": "http://127.0.0.1:9", "token": "t0ken"}, protected=True).path
    path.write_text(
        path.read_text() + '[auth]\n"gitlab_oauth" = { "client_id" = "app-7", "client_secret" = "s3cret" }\n'
    )
    shown = pushdeploy("check", "-c", str(path))
    assert shown.returncode == 0, shown.stderr
    assert (
        "  sign-in:    GitLab (application app-7, redirect URI http://pushdeploy.test/auth/gitlab/callback); "
        "admin token as break glass"
    ) in shown.stdout.splitlines()
    assert "protected (Maintainer)" in shown.stdout and "s3cret" not in shown.stdout


def test_check_names_where_notifications_go_without_their_secrets(
    make_settings: Callable[..., Settings],
) -> None:
    path = make_settings(notify={"urls": ["json://hooks.example.org/secret-path-canary-77"]}).path
    checked = pushdeploy("check", "-c", str(path))
    assert checked.returncode == 0, checked.stderr
    line = "  notify:      json://hooks.example.org/… (own [projects.NAME.notify]) on failed, recovered"
    assert line in checked.stdout.splitlines()
    assert "secret-path-canary-77" not in checked.stdout


def test_check_resolves_the_project_through_gitlab(
    make_settings: Callable[..., Settings], fake: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = with_gitlab(make_settings, fake)

    assert main(["check", "--config", str(settings.path)]) == 0

    out = capsys.readouterr().out
    assert "  on GitLab:   tools/sample-app (id 42)" in out.splitlines()
    assert "warning" not in out
    assert [r["path"] for r in fake.requests] == ["/api/v4/projects/tools%2Fsample-app"]


class Renamed(FakeGitLab):
    """GitLab after ``tools/sample-app`` became ``platform/shop``: the old path still finds it."""

    def _find_project(self, given: str) -> tuple[int, str]:
        return super()._find_project(self.redirects.get(given.lower(), given))

    redirects = {"tools/sample-app": "platform/shop"}


@pytest.mark.parametrize(
    ("gitlab", "canonical"),
    [(FakeGitLab, "Tools/Sample-App"), (Renamed, "platform/shop")],
    ids=["case", "renamed"],
)
def test_check_warns_when_gitlab_knows_the_project_by_another_path(
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    gitlab: type[FakeGitLab],
    canonical: str,
) -> None:
    with gitlab({canonical: 42}, token=TOKEN) as fake:
        settings = with_gitlab(make_settings, fake)

        assert main(["check", "--config", str(settings.path)]) == 0

    out = capsys.readouterr().out
    assert f"  on GitLab:   {canonical} (id 42)" in out.splitlines()
    [warning] = [line for line in out.splitlines() if "warning" in line]
    assert f"GitLab knows 'tools/sample-app' as '{canonical}' (id 42)" in warning
    assert "set gitlab_project = 42" in warning


def test_check_with_a_numeric_project_shows_its_path(
    make_settings: Callable[..., Settings], fake: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = with_gitlab(make_settings, fake, gitlab_project="42")

    assert main(["check", "-c", str(settings.path)]) == 0

    out = capsys.readouterr().out
    assert "  on GitLab:   tools/sample-app (id 42)" in out.splitlines() and "warning" not in out


def test_check_names_an_unknown_project(
    make_settings: Callable[..., Settings], fake: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = with_gitlab(make_settings, fake, gitlab_project="tools/gone")

    assert main(["check", "-c", str(settings.path)]) == 0

    assert "  warning: GitLab has no project 'tools/gone' that this token can see" in capsys.readouterr().out


def test_check_with_gitlab_down_warns_with_the_cause_and_does_not_crash(
    make_settings: Callable[..., Settings], fake: FakeGitLab
) -> None:
    settings, url = with_gitlab(make_settings, fake), fake.url
    fake.stop()

    result = pushdeploy("check", "-c", str(settings.path))

    assert result.returncode == 0, result.stderr
    assert f"  warning: GitLab at {url} unreachable: Connection refused" in result.stdout.splitlines()
    assert "Traceback" not in result.stderr and TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "repo_url",
    [
        "https://oauth2:glpat-repo-canary-0c1d@gitlab.example.org/tools/sample-app.git",
        "https://glpat-repo-canary-0c1d@gitlab.example.org/tools/sample-app.git",
    ],
)
def test_check_warns_about_a_credential_in_repo_url(
    make_settings: Callable[..., Settings], repo_url: str
) -> None:
    path = make_settings(repo_url=repo_url).path

    result = pushdeploy("check", "-c", str(path))

    assert result.returncode == 0, result.stderr
    assert "  warning: repo_url carries a password or token" in result.stdout
    assert "repo_token" in result.stdout and "glpat-repo-canary" not in result.stdout + result.stderr


# -- gitlab-hook ---------------------------------------------------------------------------------


class RefusesSigning(FakeGitLab):
    """A GitLab that answers 422 naming signing_token, whatever its value."""

    def _hook_values(self, params: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        if params.get("signing_token"):
            raise _message(422, {"signing_token": ["is not supported on this instance"]})
        return super()._hook_values(params, creating=creating)


def test_gitlab_hook_exits_non_zero_when_gitlab_refuses_the_signing_token(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    with RefusesSigning({"tools/sample-app": 42}, token=TOKEN) as fake:
        settings = with_gitlab(make_settings, fake)

        assert main(["gitlab-hook", "sample-app", "--config", str(settings.path)]) == 1

        [hook] = fake.hooks  # the hook is there, with the secret token, but GitLab will not sign
        assert (hook["token"], hook["signing_token"]) == (SECRET_TOKEN, None)
    out, err = capsys.readouterr()
    assert "signing token: NOT KEPT by GitLab" in out
    assert err.startswith("pushdeploy: GitLab did not keep the signing token (it answered 422 to it:")
    for words in ("refuse every delivery with 401", "GitLab 19.0 or later", "webhook_signing_token"):
        assert words in err
    assert "remove signing_token from [projects.sample-app]" in err
    assert SIGNING_TOKEN not in out + err and SECRET_TOKEN not in out + err


def test_gitlab_hook_exits_non_zero_when_the_flag_is_off(
    make_settings: Callable[..., Settings], fake: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.signing_support = "flag_off"
    settings = with_gitlab(make_settings, fake)

    assert main(["-c", str(settings.path), "gitlab-hook", "sample-app"]) == 1

    assert "feature flag is off" in capsys.readouterr().err
    fake.signing_support = "enabled"
    assert main(["-c", str(settings.path), "gitlab-hook", "sample-app"]) == 0


def test_gitlab_hook_reports_a_refused_local_url_in_gitlabs_words(
    make_settings: Callable[..., Settings], fake: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(
        gitlab={"url": fake.url, "token": TOKEN, "timeout": 2},
        server={"public_url": "http://192.168.1.20:8000"},
    )

    assert main(["gitlab-hook", "sample-app", "-c", str(settings.path)]) == 1

    err = capsys.readouterr().err
    assert err.startswith("pushdeploy: GitLab answered 422 (Invalid url given) for http://192.168.1.20:8000/")
    assert "19.0" not in err and "signing" not in err
    assert fake.hooks == []


def test_check_describes_review_apps(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(review={"url": "https://mr-{iid}.review.test", "max": 3, "forks": True})
    checked = pushdeploy("check", "-c", str(settings.path))
    assert checked.returncode == 0, checked.stderr
    expected = (
        "  review apps: https://mr-{iid}.review.test, at most 3 live, idle 7 days at most, "
        "forks too, drafts too"
    )
    assert expected in checked.stdout.splitlines()


# -- check --recipe ------------------------------------------------------------------------------


def test_check_recipe_accepts_a_valid_file_without_any_configuration(tmp_path: Path) -> None:
    path = tmp_path / ".pushdeploy.toml"
    path.write_text('build = ["make dist"]\n[environments.staging]\ndeploy = "make up"\n')

    result = pushdeploy("check", "--recipe", str(path), "--environment", "staging", "-c", "/nonexistent")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{path}: OK",
        "  for environment staging it sets (the server's steps stand for the rest):",
        "  build: make dist",
        "  deploy: make up",
    ]


def test_check_recipe_fails_with_the_messages_a_deployment_would_give(tmp_path: Path) -> None:
    path = tmp_path / ".pushdeploy.toml"
    path.write_text(
        'build = "make"\n\n[environments.production]\nrun_as = "root"\nenv = { A = "env:SECRET" }\n'
    )

    result = pushdeploy("check", "--recipe", str(path))

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: refused, 2 problem(s):",
        "  .pushdeploy.toml line 4: environments.production.run_as: is the server's to set, "
        "not the repository's: refused",
        "  .pushdeploy.toml line 5: environments.production.env.A: env:, file: and fernet: values are "
        "secrets, which only the server's configuration holds",
    ]


def test_check_recipe_names_the_line_of_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text('build = "make"\ndeploy = "make up\n')

    result = pushdeploy("check", "--recipe", str(path))

    assert result.returncode == 1
    assert "  .pushdeploy.toml line 2: not valid TOML: " in result.stderr


def test_check_recipe_refuses_a_symlink_and_a_file_over_64_kib(tmp_path: Path) -> None:
    large = tmp_path / "large.toml"
    large.write_text("# padding\n" * 7168)
    link = tmp_path / ".pushdeploy.toml"
    link.symlink_to(large)

    assert (
        "is a symbolic link: a recipe must be a regular file"
        in pushdeploy("check", "--recipe", str(link)).stderr
    )
    too_large = pushdeploy("check", "--recipe", str(large))
    assert too_large.returncode == 1
    assert "is 71680 bytes, over the limit of 65536 (64 KiB): refused" in too_large.stderr


def test_check_recipe_against_a_project_uses_its_timeout_and_shows_the_steps(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    config = make_settings(timeout=60, deploy=["echo server deploy"]).path
    path = tmp_path / ".pushdeploy.toml"
    path.write_text('build = "make dist"\ntimeout = 30\n')

    good = pushdeploy("check", "--recipe", str(path), "--project", "sample-app", "-c", str(config))
    path.write_text("timeout = 120\n")
    bad = pushdeploy("check", "--recipe", str(path), "--project", "sample-app", "-c", str(config))

    assert good.returncode == 0, good.stderr
    assert "  steps for sample-app/production (the server's where the file is silent):" in good.stdout
    assert "    build: make dist" in good.stdout
    assert "    deploy: echo server deploy" in good.stdout
    assert "    timeout: 30" in good.stdout
    assert bad.returncode == 1
    assert "timeout: 120 s is above the server's timeout of 60 s: refused" in bad.stderr


def test_audit_help_names_every_action_the_log_records() -> None:
    from workers.audit import Action

    shown = pushdeploy("audit", "--help")
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert [str(action) for action in Action if str(action) not in text] == []
