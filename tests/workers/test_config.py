"""The settings loader: both project forms, secret indirection, and errors an operator can act on."""

from __future__ import annotations

import base64
import pwd
import textwrap
from pathlib import Path

import pytest

from tests.helpers import SIGNING_TOKEN
from webhook.cli import main
from workers.config import ConfigError, HealthCheck, RecipeSource, Settings, load
from workers.secrets import Keyring, key_id, new_fernet_key

HOOK_TOKEN = "hook-token-canary-0a1b2c"
ADMIN_CANARY = "admin-canary-3d4e5f"
GITLAB_CANARY = "glpat-canary-6a7b8c"
CANARY_KEY = "whsec_" + base64.b64encode(b"signing-canary-bytes-32-long!!!!").decode()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


PROJECT = """
[projects.app]
gitlab_project = "tools/app"
repo_url = "https://gitlab.example.org/tools/app.git"
secret_token = "literal-hook-token"
"""


def problems(path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    write(path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, environ=environ or {})
    return caught.value


def keys(error: ConfigError) -> dict[str, str]:
    return {p.key: p.message for p in error.problems}


# -- the two forms ------------------------------------------------------------


def test_flat_project_is_one_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pushdeploy.toml",
        f"""
        [server]
        public_url = "https://deploy.example.org/"
        [gitlab]
        url = "https://gitlab.example.org"
        token = "env:GITLAB_TOKEN"
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        signing_token = "{SIGNING_TOKEN}"
        branch = "release"
        environment = "live"
        build = ["make build", "make test"]
        deploy = "systemctl --user restart app"
        health_check = {{ url = "http://127.0.0.1:8080/healthz", timeout = 5 }}
        keep_releases = 3
        timeout = 600
        env = {{ APP_ENV = "production" }}
        """,
    )
    settings = load(path, environ={"GITLAB_TOKEN": GITLAB_CANARY})
    project = settings.projects["app"]
    assert list(project.environments) == ["live"]
    live = settings.environment("app", "live")
    assert (live.branch, live.build, live.deploy) == (
        "release",
        ("make build", "make test"),
        ("systemctl --user restart app",),
    )
    assert live.health_check == HealthCheck("http://127.0.0.1:8080/healthz", 5.0)
    assert (live.keep_releases, live.timeout, dict(live.env)) == (3, 600, {"APP_ENV": "production"})
    assert live.status_name == "deploy/live"
    assert project.environment_for_branch("release") is live
    assert project.environment_for_branch("main") is None
    assert project.secret_tokens == ()
    assert [k.reveal() for k in project.signing_keys] == [SIGNING_TOKEN]
    assert settings.gitlab is not None and settings.gitlab.token.reveal() == GITLAB_CANARY
    assert settings.webhook_url("app") == "https://deploy.example.org/hooks/gitlab/app"


def test_minimal_project_gets_the_documented_defaults(tmp_path: Path) -> None:
    settings = load(write(tmp_path / "pushdeploy.toml", PROJECT), environ={})
    env = settings.environment("app", "production")
    assert (env.branch, env.keep_releases, env.timeout, env.build, env.deploy) == ("main", 5, 1800, (), ())
    assert env.health_check is None
    assert settings.gitlab is None
    assert settings.server.public_url == "http://127.0.0.1:8000"
    assert settings.server.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.server.redis_url_configured is False
    assert settings.server.data_dir == tmp_path / ".pushdeploy"


def test_environments_inherit_project_keys_and_override_them(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pushdeploy.toml",
        PROJECT
        + """
        build = ["make build"]
        deploy = ["./deploy.sh"]
        timeout = 900
        env = { APP_ENV = "default" }
        health_check = { url = "http://127.0.0.1:8080/healthz" }

        [projects.app.environments.staging]
        branch = "develop"
        timeout = 120
        env = { APP_ENV = "staging" }

        [projects.app.environments.production]
        branch = "main"
        deploy = ["./deploy.sh --prod", "./notify.sh"]
        keep_releases = 10
        """,
    )
    project = load(path, environ={}).projects["app"]
    staging, production = project.environments["staging"], project.environments["production"]
    assert list(project.environments) == ["staging", "production"]
    assert (staging.branch, staging.build, staging.deploy, staging.timeout) == (
        "develop",
        ("make build",),
        ("./deploy.sh",),
        120,
    )
    assert dict(staging.env) == {"APP_ENV": "staging"}
    assert (production.branch, production.build, production.deploy, production.timeout) == (
        "main",
        ("make build",),
        ("./deploy.sh --prod", "./notify.sh"),
        900,
    )
    assert dict(production.env) == {"APP_ENV": "default"}
    assert (staging.keep_releases, production.keep_releases) == (5, 10)
    assert staging.health_check == production.health_check == HealthCheck("http://127.0.0.1:8080/healthz")
    assert project.environment_for_branch("develop") is staging
    assert project.environment_for_branch("main") is production
    assert {e.project for e in project.environments.values()} == {"app"}


def test_recipe_is_repo_by_default_and_server_per_project_or_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pushdeploy.toml",
        PROJECT
        + """
        recipe = "server"

        [projects.app.environments.staging]
        branch = "develop"
        recipe = "repo"

        [projects.app.environments.production]
        branch = "main"

        [projects.other]
        gitlab_project = "tools/other"
        repo_url = "https://gitlab.example.org/tools/other.git"
        secret_token = "literal-hook-token"
        """,
    )
    settings = load(path, environ={})
    app = settings.projects["app"].environments

    assert (app["staging"].recipe, app["production"].recipe) == (RecipeSource.REPO, RecipeSource.SERVER)
    assert settings.environment("other", "production").recipe is RecipeSource.REPO


def test_a_recipe_setting_other_than_repo_or_server_is_named(tmp_path: Path) -> None:
    error = problems(tmp_path / "pushdeploy.toml", PROJECT + 'recipe = "git"\n')

    assert keys(error) == {
        "projects.app.recipe": 'must be "repo" (the commit\'s .pushdeploy.toml wins) or "server"'
    }


def test_environment_table_rejects_project_only_keys_and_flat_environment(tmp_path: Path) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        PROJECT
        + """
        environment = "production"
        [projects.app.environments.staging]
        branch = "develop"
        bulid = ["make"]
        repo_url = "https://elsewhere.example.org/x.git"
        """,
    )
    found = keys(error)
    assert "unknown key" in found["projects.app.environment"]
    assert "unknown key" in found["projects.app.environments.staging.bulid"]
    assert "build" in found["projects.app.environments.staging.bulid"]
    assert "unknown key" in found["projects.app.environments.staging.repo_url"]


def test_empty_environments_table_is_an_error(tmp_path: Path) -> None:
    error = problems(tmp_path / "pushdeploy.toml", PROJECT + "environments = {}\n")
    assert "at least one" in keys(error)["projects.app.environments"]


# -- secret indirection ---------------------------------------------------------


def test_env_and_relative_file_references_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir = tmp_path / "etc" / "pushdeploy"
    write(config_dir / "keys" / "signing", CANARY_KEY + "\n")
    write(config_dir / "admin", ADMIN_CANARY + "\n")
    path = write(
        config_dir / "pushdeploy.toml",
        """
        [server]
        admin_token = "file:admin"
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        secret_token = ["env:HOOK_TOKEN", "env:HOOK_TOKEN_OLD"]
        signing_token = "file:keys/signing"
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative file: paths follow the config file, not the cwd

    settings = load(path, environ={"HOOK_TOKEN": HOOK_TOKEN, "HOOK_TOKEN_OLD": "old-hook-token"})

    project = settings.projects["app"]
    assert [t.reveal() for t in project.secret_tokens] == [HOOK_TOKEN, "old-hook-token"]
    assert project.signing_keys[0].key == b"signing-canary-bytes-32-long!!!!"
    assert settings.server.admin_token is not None and settings.server.admin_token.reveal() == ADMIN_CANARY
    assert {s.reveal() for s in settings.all_secrets()} == {
        HOOK_TOKEN,
        "old-hook-token",
        CANARY_KEY,
        ADMIN_CANARY,
    }


def test_absolute_file_reference(tmp_path: Path) -> None:
    token_file = write(tmp_path / "secret" / "hook", HOOK_TOKEN + "\n")
    text = PROJECT.replace('"literal-hook-token"', f'"file:{token_file}"')
    path = write(tmp_path / "conf" / "pushdeploy.toml", text)
    assert load(path, environ={}).projects["app"].secret_tokens[0].reveal() == HOOK_TOKEN


def test_missing_variable_names_the_variable_never_a_value(tmp_path: Path) -> None:
    text = PROJECT.replace('"literal-hook-token"', '"env:HOOK_TOKEN"')
    environ = {"HOOK_TOKEN_OLD": HOOK_TOKEN, "OTHER": ADMIN_CANARY}
    error = problems(tmp_path / "pushdeploy.toml", text, environ=environ)
    assert keys(error)["projects.app.secret_token"] == "environment variable HOOK_TOKEN is not set"
    assert HOOK_TOKEN not in str(error) and ADMIN_CANARY not in str(error)


def test_rotation_list_names_the_failing_entry(tmp_path: Path) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        f"""
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        signing_token = ["{SIGNING_TOKEN}", "whsec_c2hvcnQ="]
        secret_token = ["literal", "file:does-not-exist"]
        """,
    )
    found = keys(error)
    assert "exactly 32 bytes" in found["projects.app.signing_token[1]"]
    assert "does-not-exist" in found["projects.app.secret_token[1]"]
    assert "projects.app.signing_token[0]" not in found


# -- problems are specific, complete and secret-free ---------------------------


def test_every_problem_names_file_and_key_and_all_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "pushdeploy.toml"
    error = problems(
        path,
        f"""
        [server]
        public_url = "ftp://deploy.example.org"
        [projects.app]
        repo_url = "https://gitlab.example.org/tools/app.git"
        secret_token = "env:HOOK_TOKEN"
        signing_token = "{CANARY_KEY[:-1]}"
        bulid = ["make"]
        keep_releases = 1
        timeout = "an hour"
        """,
    )
    found = keys(error)
    assert set(found) >= {
        "server.public_url",
        "projects.app.gitlab_project",
        "projects.app.secret_token",
        "projects.app.signing_token",
        "projects.app.bulid",
        "projects.app.keep_releases",
        "projects.app.timeout",
    }
    assert len(error.problems) >= 7
    lines = str(error).splitlines()
    assert len(lines) == len(error.problems)
    for problem, line in zip(error.problems, lines, strict=True):
        assert problem.file == str(path)
        assert line == f"{path}: {problem.key}: {problem.message}"
    assert "http:// or https://" in found["server.public_url"]
    assert "≥ 2" in found["projects.app.keep_releases"]


def test_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    error = problems(tmp_path / "pushdeploy.toml", PROJECT + 'bulid = ["make build"]\n[servre]\n')
    found = keys(error)
    assert set(found) == {"projects.app.bulid", "servre"}
    assert found["projects.app.bulid"].startswith("unknown key")
    assert "build" in found["projects.app.bulid"]


def test_project_without_any_token_is_refused(tmp_path: Path) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        """
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        """,
    )
    assert "needs secret_token or signing_token" in keys(error)["projects.app"]


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("not-a-whsec-key-canary", "must start with 'whsec_'"),
        ("whsec_***", "standard base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "exactly 32 bytes, the only length GitLab accepts"),
    ],
)
def test_bad_signing_token_format(tmp_path: Path, value: str, complaint: str) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        f"""
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        signing_token = "{value}"
        """,
    )
    assert complaint in keys(error)["projects.app.signing_token"]
    assert value not in str(error)


def test_two_environments_on_one_branch(tmp_path: Path) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        PROJECT
        + """
        [projects.app.environments.staging]
        branch = "main"
        [projects.app.environments.production]
        branch = "main"
        """,
    )
    message = keys(error)["projects.app.environments.production.branch"]
    assert "'main' is already deployed by environment 'staging'" in message


def test_environments_share_the_default_branch_conflict(tmp_path: Path) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        PROJECT
        + """
        [projects.app.environments.staging]
        [projects.app.environments.production]
        """,
    )
    assert "already deployed" in keys(error)["projects.app.environments.production.branch"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[projects."my app"]', "projects.my app"),
        ('[projects."-app"]', "projects.-app"),
        ('[projects."../app"]', "projects.../app"),
        ('[projects."app\\n"]', "projects.app\n"),
    ],
)
def test_bad_project_names(tmp_path: Path, text: str, key: str) -> None:
    error = problems(tmp_path / "pushdeploy.toml", PROJECT.replace("[projects.app]", text))
    assert "letters, digits" in keys(error)[key]


@pytest.mark.parametrize("name", ["prod/eu", "../prod", "", "prod\n", "x" * 64])
def test_bad_environment_names(tmp_path: Path, name: str) -> None:
    escaped = name.replace("\n", "\\n")
    flat = problems(tmp_path / "flat.toml", PROJECT + f'environment = "{escaped}"\n')
    assert "letters, digits" in keys(flat)["projects.app"]
    multi = problems(tmp_path / "multi.toml", PROJECT + f'[projects.app.environments."{escaped}"]\n')
    assert "letters, digits" in keys(multi)[f"projects.app.environments.{name}"]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ('[server]\npublic_url = "deploy.example.org"', "server.public_url"),
        ('[server]\npublic_url = "javascript://deploy.example.org"', "server.public_url"),
        ('[server]\nredis_url = "http://127.0.0.1:6379"', "server.redis_url"),
        ('[gitlab]\nurl = "gitlab.example.org"\ntoken = "t0ken-value"', "gitlab.url"),
        ('[gitlab]\nurl = "file:///etc/passwd"\ntoken = "t0ken-value"', "gitlab.url"),
    ],
)
def test_non_http_urls_are_refused(tmp_path: Path, section: str, key: str) -> None:
    error = problems(tmp_path / "pushdeploy.toml", section + "\n" + PROJECT)
    assert "URL" in keys(error)[key]


def test_non_http_health_check_is_refused(tmp_path: Path) -> None:
    error = problems(tmp_path / "pushdeploy.toml", PROJECT + 'health_check = { url = "file:///etc/x" }\n')
    assert [str(p) for p in error.problems] == [
        f"{tmp_path / 'pushdeploy.toml'}: projects.app.health_check.url: must be an http:// or https:// URL"
    ]
    missing = problems(tmp_path / "missing.toml", PROJECT + "health_check = { timeout = 3 }\n")
    assert [(p.key, p.message) for p in missing.problems] == [
        ("projects.app.health_check.url", "is required")
    ]


@pytest.mark.parametrize(
    "repo_url",
    ["ext::sh -c touch% /tmp/canary", "--upload-pack=touch /tmp/canary", "fd::17"],
)
def test_dangerous_repo_urls_are_refused(tmp_path: Path, repo_url: str) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        PROJECT.replace('"https://gitlab.example.org/tools/app.git"', f'"{repo_url}"'),
    )
    assert "must be an https://" in keys(error)["projects.app.repo_url"]


def test_gitlab_section_needs_a_token(tmp_path: Path) -> None:
    error = problems(tmp_path / "pushdeploy.toml", '[gitlab]\nurl = "https://gitlab.example.org"\n' + PROJECT)
    assert "required" in keys(error)["gitlab.token"]


def test_step_environment_cannot_set_pushdeploy_variables_or_full_refs(tmp_path: Path) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        PROJECT + 'branch = "refs/heads/main"\nenv = { PUSHDEPLOY_SHA = "x", OK = "y" }\n',
    )
    found = keys(error)
    assert "set by pushdeploy" in found["projects.app.env.PUSHDEPLOY_SHA"]
    assert "not the full ref" in found["projects.app.branch"]


def test_unreadable_and_invalid_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load(missing, environ={})
    assert str(caught.value).startswith(f"{missing}: ")
    error = problems(tmp_path / "broken.toml", PROJECT + "build = [\n")
    assert str(error).startswith(f"{tmp_path / 'broken.toml'}: ")
    assert "not valid TOML" in str(error)


def test_config_without_projects_is_an_error(tmp_path: Path) -> None:
    error = problems(tmp_path / "pushdeploy.toml", "[server]\n")
    assert "no project" in keys(error)["projects"]


# -- server settings --------------------------------------------------------------


def test_redis_url_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "pushdeploy.toml", '[server]\nredis_url = "redis://file-host:6379/0"\n' + PROJECT)
    assert load(path, environ={}).server.redis_url == "redis://file-host:6379/0"
    assert (
        load(path, environ={"REDIS_URL": "redis://generic:6379/1"}).server.redis_url
        == "redis://generic:6379/1"
    )
    both = {"REDIS_URL": "redis://generic:6379/1", "PUSHDEPLOY_REDIS_URL": "redis://ours:6379/2"}
    assert load(path, environ=both).server.redis_url == "redis://ours:6379/2"

    unset = write(tmp_path / "unset.toml", PROJECT)
    assert load(unset, environ={}).server.redis_url_configured is False
    overridden = load(unset, environ={"PUSHDEPLOY_REDIS_URL": "unix:///run/redis.sock"}).server
    assert (overridden.redis_url, overridden.redis_url_configured) == ("unix:///run/redis.sock", True)


def test_bad_redis_override_is_reported(tmp_path: Path) -> None:
    error = problems(tmp_path / "pushdeploy.toml", PROJECT, environ={"REDIS_URL": "http://127.0.0.1:6379"})
    assert "redis://" in keys(error)["server.redis_url"]


def test_relative_paths_resolve_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path / "conf" / "pushdeploy.toml",
        """
        [server]
        data_dir = "state/data"
        [projects.local]
        gitlab_project = "tools/local"
        repo_url = "../repos/local.git"
        secret_token = "literal-hook-token"
        [projects.remote]
        gitlab_project = "42"
        repo_url = "git@gitlab.example.org:tools/remote.git"
        secret_token = "literal-hook-token"
        """,
    )
    monkeypatch.chdir(tmp_path / "conf")
    settings = load(Path("pushdeploy.toml"), environ={})
    assert settings.server.data_dir == tmp_path / "conf" / "state" / "data"
    assert settings.projects["local"].repo_url == str(tmp_path / "repos" / "local.git")
    assert settings.projects["remote"].repo_url == "git@gitlab.example.org:tools/remote.git"


def test_numeric_gitlab_project_id(tmp_path: Path) -> None:
    path = write(tmp_path / "pushdeploy.toml", PROJECT.replace('"tools/app"', "42"))
    assert load(path, environ={}).projects["app"].gitlab_project == "42"


# -- secrets stay secret ------------------------------------------------------------


def canary_config(tmp_path: Path) -> Path:
    write(tmp_path / "admin-token", ADMIN_CANARY)
    return write(
        tmp_path / "pushdeploy.toml",
        f"""
        [server]
        redis_url = "redis://:redispass-canary@127.0.0.1:6379/0"
        admin_token = "file:admin-token"
        [gitlab]
        url = "https://gitlab.example.org"
        token = "env:GITLAB_TOKEN"
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://deploy:repopass-canary@gitlab.example.org/tools/app.git"
        secret_token = ["{HOOK_TOKEN}", "env:OLD_HOOK_TOKEN"]
        signing_token = "env:SIGNING_KEY"
        [projects.app.environments.production]
        branch = "main"
        """,
    )


def test_no_secret_appears_in_repr_or_str_of_settings(tmp_path: Path) -> None:
    environ = {
        "GITLAB_TOKEN": GITLAB_CANARY,
        "OLD_HOOK_TOKEN": "old-hook-canary-99",
        "SIGNING_KEY": CANARY_KEY,
    }
    settings = load(canary_config(tmp_path), environ=environ)
    project = settings.projects["app"]
    shown = [
        repr(settings),
        str(settings),
        repr(project),
        str(project),
        repr(settings.server),
        repr(settings.gitlab),
        repr(project.environments),
        repr(settings.all_secrets()),
    ]
    canaries = [
        HOOK_TOKEN,
        "old-hook-canary-99",
        CANARY_KEY,
        CANARY_KEY.removeprefix("whsec_"),
        ADMIN_CANARY,
        GITLAB_CANARY,
        "redispass-canary",
        "repopass-canary",
    ]
    for text in shown:
        for canary in canaries:
            assert canary not in text
    assert len(settings.all_secrets()) == 5
    # The values are still there for the code that needs them.
    assert settings.server.redis_url == "redis://:redispass-canary@127.0.0.1:6379/0"
    assert "repopass-canary" in project.repo_url


def test_config_errors_never_contain_a_secret(tmp_path: Path) -> None:
    write(tmp_path / "admin-token", ADMIN_CANARY)
    error = problems(
        tmp_path / "pushdeploy.toml",
        f"""
        [server]
        admin_token = "file:admin-token"
        admin_tokn = "{ADMIN_CANARY}"
        [gitlab]
        url = "https://gitlab.example.org"
        token = "env:GITLAB_TOKEN"
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        secret_token = "env:HOOK_TOKEN"
        signing_token = "{HOOK_TOKEN}"
        secret_tokn = "{HOOK_TOKEN}"
        """,
        environ={"HOOK": HOOK_TOKEN, "GITLAB_TOKEN_X": GITLAB_CANARY},
    )
    found = keys(error)
    assert set(found) >= {
        "server.admin_tokn",
        "gitlab.token",
        "projects.app.secret_token",
        "projects.app.signing_token",
        "projects.app.secret_tokn",
    }
    assert found["gitlab.token"] == "environment variable GITLAB_TOKEN is not set"
    for canary in (ADMIN_CANARY, HOOK_TOKEN, GITLAB_CANARY):
        assert canary not in str(error)
        assert canary not in repr(error.problems)


# -- the CLI: check and new-secret ---------------------------------------------------


def test_check_prints_projects_environments_and_webhook_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PD_TEST_HOOK_TOKEN", HOOK_TOKEN)
    path = write(
        tmp_path / "pushdeploy.toml",
        f"""
        [server]
        public_url = "https://deploy.example.org"
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        secret_token = "env:PD_TEST_HOOK_TOKEN"
        build = ["make"]
        [projects.app.environments.staging]
        branch = "develop"
        [projects.app.environments.production]
        branch = "main"
        [projects.site]
        gitlab_project = "web/site"
        repo_url = "https://gitlab.example.org/web/site.git"
        signing_token = "{SIGNING_TOKEN}"
        """,
    )
    assert main(["--config", str(path), "check"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"{path}: OK" in out
    assert "project app" in out and "project site" in out
    assert "https://deploy.example.org/hooks/gitlab/app" in out
    assert "https://deploy.example.org/hooks/gitlab/site" in out
    assert "environment staging: branch develop" in out
    assert "environment production: branch main" in out
    assert HOOK_TOKEN not in out and SIGNING_TOKEN not in out


def test_check_reports_every_problem_on_stderr_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "pushdeploy.toml",
        """
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        bulid = ["make"]
        """,
    )
    assert main(["--config", str(path), "check"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "2 problem(s)" in err
    assert f"{path}: projects.app.bulid: unknown key" in err
    assert f"{path}: projects.app: needs secret_token or signing_token" in err


def test_new_secret_prints_a_key_that_loads_as_a_signing_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-secret"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("whsec_")
    assert len(base64.b64decode(key.removeprefix("whsec_"), validate=True)) == 32
    assert main(["new-secret"]) == 0
    assert capsys.readouterr().out.strip() != key

    path = write(
        tmp_path / "pushdeploy.toml",
        f"""
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        signing_token = "{key}"
        """,
    )
    settings: Settings = load(path, environ={})
    assert settings.projects["app"].signing_keys[0].reveal() == key
    assert len(settings.projects["app"].signing_keys[0].key) == 32


# -- fernet: values (secrets at rest) -------------------------------------------------

K1, K2 = new_fernet_key(), new_fernet_key()


def encrypted_config(tmp_path: Path, keyring: Keyring) -> Path:
    """Every place a secret is accepted, encrypted: literals, a list, env: and file: indirection."""
    write(tmp_path / "admin-token", keyring.encrypt(ADMIN_CANARY) + "\n")
    return write(
        tmp_path / "pushdeploy.toml",
        f"""
        [server]
        admin_token = "file:admin-token"
        [gitlab]
        url = "https://gitlab.example.org"
        token = "{keyring.encrypt(GITLAB_CANARY)}"
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        secret_token = ["{keyring.encrypt(HOOK_TOKEN)}", "env:OLD_HOOK_TOKEN", "plain-old-token"]
        signing_token = "{keyring.encrypt(CANARY_KEY)}"
        """,
    )


def test_encrypted_secrets_load_everywhere_a_secret_is_accepted(tmp_path: Path) -> None:
    old = Keyring([K1])
    path = encrypted_config(tmp_path, old)
    environ = {"PUSHDEPLOY_SECRET_KEYS": f"{K2},{K1}", "OLD_HOOK_TOKEN": old.encrypt("old-hook-canary-99")}
    settings = load(path, environ=environ)
    project = settings.projects["app"]
    revealed = [t.reveal() for t in project.secret_tokens]
    assert revealed == [HOOK_TOKEN, "old-hook-canary-99", "plain-old-token"]
    assert project.signing_keys[0].reveal() == CANARY_KEY
    assert project.signing_keys[0].key == b"signing-canary-bytes-32-long!!!!"
    assert settings.gitlab is not None and settings.gitlab.token.reveal() == GITLAB_CANARY
    assert settings.server.admin_token is not None and settings.server.admin_token.reveal() == ADMIN_CANARY
    for canary in (HOOK_TOKEN, GITLAB_CANARY, ADMIN_CANARY, CANARY_KEY, "old-hook-canary-99", K1, K2):
        assert canary not in repr(settings)


def test_encrypted_secrets_without_keys_name_each_key(tmp_path: Path) -> None:
    keyring = Keyring([K1])
    path = encrypted_config(tmp_path, keyring)
    with pytest.raises(ConfigError) as caught:
        load(path, environ={"OLD_HOOK_TOKEN": keyring.encrypt("old-hook-canary-99")})
    assert keys(caught.value) == {
        "server.admin_token": f"the contents of {tmp_path / 'admin-token'} is encrypted but "
        "PUSHDEPLOY_SECRET_KEYS is not set",
        "gitlab.token": "the value is encrypted but PUSHDEPLOY_SECRET_KEYS is not set",
        "projects.app.secret_token[0]": "the value is encrypted but PUSHDEPLOY_SECRET_KEYS is not set",
        "projects.app.secret_token[1]": "the value of OLD_HOOK_TOKEN is encrypted but "
        "PUSHDEPLOY_SECRET_KEYS is not set",
        "projects.app.signing_token": "the value is encrypted but PUSHDEPLOY_SECRET_KEYS is not set",
    }


def test_a_wrong_key_fails_with_its_id_and_never_the_key_token_or_secret(tmp_path: Path) -> None:
    keyring = Keyring([K1])
    path = encrypted_config(tmp_path, keyring)
    other = new_fernet_key()
    with pytest.raises(ConfigError) as caught:
        load(path, environ={"PUSHDEPLOY_SECRET_KEYS": f"{K2} {other}", "OLD_HOOK_TOKEN": "plain"})
    expected = f"none of the keys (ids {key_id(K2)}, {key_id(other)}) decrypts it"
    found = keys(caught.value)
    assert found["gitlab.token"] == expected
    assert found["projects.app.signing_token"] == expected
    assert found["projects.app.secret_token[0]"] == expected
    text = str(caught.value) + repr(caught.value.problems)
    tokens = [line.split('"')[1] for line in path.read_text().splitlines() if "fernet:" in line]
    for leak in (K1, K2, other, HOOK_TOKEN, GITLAB_CANARY, ADMIN_CANARY, CANARY_KEY, *tokens):
        assert leak not in text


def test_a_malformed_key_is_one_problem_naming_its_position(tmp_path: Path) -> None:
    path = encrypted_config(tmp_path, Keyring([K1]))
    bad = "this-is-not-a-fernet-key"
    with pytest.raises(ConfigError) as caught:
        load(path, environ={"PUSHDEPLOY_SECRET_KEYS": f"{K1},{bad}", "OLD_HOOK_TOKEN": "plain"})
    assert [(p.key, p.message) for p in caught.value.problems] == [
        ("-", "key #2 in PUSHDEPLOY_SECRET_KEYS is not a Fernet key")
    ]
    assert bad not in str(caught.value) and K1 not in str(caught.value)


def test_a_malformed_key_stops_the_service_even_before_anything_is_encrypted(tmp_path: Path) -> None:
    path = write(tmp_path / "pushdeploy.toml", PROJECT)
    with pytest.raises(ConfigError, match="key #1 in PUSHDEPLOY_SECRET_KEYS is not a Fernet key"):
        load(path, environ={"PUSHDEPLOY_SECRET_KEYS": "oops"})
    assert load(path, environ={"PUSHDEPLOY_SECRET_KEYS": K1}).projects["app"]


def test_a_tampered_value_is_a_problem_at_its_key(tmp_path: Path) -> None:
    value = Keyring([K1]).encrypt(HOOK_TOKEN)
    middle = len(value) // 2
    damaged = value[:middle] + ("x" if value[middle] != "x" else "y") + value[middle + 1 :]
    error = problems(
        tmp_path / "pushdeploy.toml",
        PROJECT.replace('"literal-hook-token"', f'["{value}", "{damaged}"]'),
        environ={"PUSHDEPLOY_SECRET_KEYS": f"{K2},{K1}"},
    )
    assert keys(error) == {
        "projects.app.secret_token[1]": f"none of the keys (ids {key_id(K2)}, {key_id(K1)}) decrypts it"
    }


def test_check_refuses_to_start_with_a_wrong_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "pushdeploy.toml",
        PROJECT.replace('"literal-hook-token"', f'"{Keyring([K1]).encrypt(HOOK_TOKEN)}"'),
    )
    monkeypatch.setenv("PUSHDEPLOY_SECRET_KEYS", K2)
    assert main(["--config", str(path), "check"]) == 1
    out, err = capsys.readouterr()
    assert f"projects.app.secret_token: none of the keys (id {key_id(K2)}) decrypts it" in err
    assert K2 not in out + err and HOOK_TOKEN not in out + err
    monkeypatch.setenv("PUSHDEPLOY_SECRET_KEYS", f"{K2},{K1}")
    assert main(["--config", str(path), "check"]) == 0


# -- run_as ----------------------------------------------------------------------------


def test_run_as_is_a_per_environment_key_with_a_project_default(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pushdeploy.toml",
        PROJECT
        + """
        run_as = "nobody"
        [projects.app.environments.production]
        branch = "main"
        [projects.app.environments.staging]
        branch = "develop"
        run_as = "root"
        [projects.plain]
        gitlab_project = "tools/plain"
        repo_url = "https://gitlab.example.org/tools/plain.git"
        secret_token = "literal-hook-token"
        """,
    )
    settings = load(path, environ={})
    pwd.getpwnam("nobody")  # the host has the user the test relies on
    assert settings.environment("app", "production").run_as == "nobody"
    assert settings.environment("app", "staging").run_as == "root"
    assert settings.environment("plain", "production").run_as is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"no-such-user-pd7"', "no user 'no-such-user-pd7' on this host"),
        ('""', "must be a non-empty string"),
        ("1000", "must be a non-empty string"),
    ],
)
def test_run_as_must_name_a_user_of_this_host(tmp_path: Path, value: str, message: str) -> None:
    error = problems(tmp_path / "pushdeploy.toml", PROJECT + f"run_as = {value}\n")
    assert keys(error) == {"projects.app.run_as": message}


def test_gitlab_environments_needs_a_gitlab_section(tmp_path: Path) -> None:
    from tests.helpers import project_config, write_config

    path = write_config(
        tmp_path / "c.toml",
        {"projects": {"app": project_config("https://gitlab.example.org/a.git", gitlab_environments=True)}},
    )
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert "projects.app.gitlab_environments" in str(caught.value)


def test_a_sentinel_url_is_accepted_and_a_bad_one_named(tmp_path: Path) -> None:
    from tests.helpers import project_config, write_config

    good = {
        "server": {"redis_url": "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/2"},
        "projects": {"app": project_config("https://gitlab.example.org/a.git")},
    }
    assert load(write_config(tmp_path / "good.toml", good), environ={}).server.redis_url.startswith(
        "redis+sentinel"
    )
    bad = {**good, "server": {"redis_url": "redis+sentinel://10.0.0.1:26379"}}
    with pytest.raises(ConfigError) as caught:
        load(write_config(tmp_path / "bad.toml", bad), environ={})
    assert "server.redis_url" in str(caught.value) and "service" in str(caught.value)


# -- tags, repo_token, target_url ---------------------------------------------------


def test_an_environment_deploys_tags_matching_a_glob(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pushdeploy.toml",
        PROJECT
        + """
        branch = "main"
        [projects.app.environments.staging]
        [projects.app.environments.production]
        tags = "v*"
        """,
    )
    project = load(path, environ={}).projects["app"]
    staging, production = project.environments["staging"], project.environments["production"]
    assert (staging.branch, staging.tags, staging.follows) == ("main", "", "branch main")
    assert (production.branch, production.tags, production.follows) == ("", "v*", "tags v*")
    assert project.environment_for_tag("v1.2.0") is production
    assert project.environment_for_tag("release-1") is None
    assert project.environment_for_branch("main") is staging
    assert project.environment_for_branch("") is None
    assert project.deploys_tags


def test_tags_match_case_sensitively_like_git(tmp_path: Path) -> None:
    path = write(tmp_path / "pushdeploy.toml", PROJECT + 'tags = "v[0-9]*"\n')
    project = load(path, environ={}).projects["app"]
    assert project.environment_for_tag("v2") is not None
    assert project.environment_for_tag("V2") is None
    assert project.environment_for_tag("vx") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('tags = "v*"\nbranch = "main"', "a branch or tags, never both"),
        ('tags = ""', 'like "v*"'),
        ("tags = 1", 'like "v*"'),
        ('tags = "refs/tags/v*"', "not on the full ref"),
        ('tags = "v *"', "no tag name can have"),
    ],
)
def test_bad_tags_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    found = keys(problems(tmp_path / "pushdeploy.toml", PROJECT + line + "\n"))
    assert any(message in text for text in found.values()), found
    assert all(key.startswith("projects.app") for key in found)


def test_repo_token_is_a_secret_sent_only_over_https(tmp_path: Path) -> None:
    path = write(tmp_path / "pushdeploy.toml", PROJECT + 'repo_token = "env:REPO_TOKEN"\n')
    project = load(path, environ={"REPO_TOKEN": "glpat-repo-canary-91ab"}).projects["app"]
    assert project.repo_credential() == "glpat-repo-canary-91ab"
    assert any(s.reveal() == "glpat-repo-canary-91ab" for s in project.secrets())
    assert "glpat-repo-canary-91ab" not in repr(project)
    found = keys(
        problems(
            tmp_path / "ssh.toml",
            PROJECT.replace("https://gitlab.example.org/", "git@gitlab.example.org:")
            + 'repo_token = "literal"\n',
        )
    )
    assert "repo_url must be an http(s):// URL" in found["projects.app.repo_token"]


@pytest.mark.parametrize("signed", [True, False])
def test_a_public_url_too_long_for_gitlabs_target_url_is_refused(tmp_path: Path, signed: bool) -> None:
    admin = 'admin_token = "literal-admin"\n' if signed else ""
    fits = 255 - len("/deployments/") - 24 - (len("?access=") + 10 + 1 + 22 if signed else 0)
    base = "https://deploy.example.org/"
    for length, ok in ((fits, True), (fits + 1, False)):
        url = base + "p" * (length - len(base))
        text = f'[server]\npublic_url = "{url}"\n{admin}' + PROJECT
        if ok:
            load(write(tmp_path / "ok.toml", text), environ={})
            continue
        message = keys(problems(tmp_path / "long.toml", text))["server.public_url"]
        assert "255" in message and f"at most {fits} characters" in message, message


# -- people and the web tier ------------------------------------------------------


def test_audit_metrics_and_proxy_keys(tmp_path: Path) -> None:
    settings = load(write(tmp_path / "pushdeploy.toml", PROJECT), environ={})
    server = settings.server
    assert (server.audit_days, server.metrics_token, server.trusted_proxies) == (
        90,
        None,
        ("127.0.0.1", "::1"),
    )
    text = (
        """
    [server]
    audit_days = 30
    metrics_token = "env:METRICS"
    trusted_proxies = ["10.0.0.0/8", "fd00::1"]
    """
        + PROJECT
    )
    settings = load(write(tmp_path / "pushdeploy.toml", text), environ={"METRICS": "metrics-canary-1"})
    server = settings.server
    assert (server.audit_days, server.trusted_proxies) == (30, ("10.0.0.0/8", "fd00::1"))
    assert server.metrics_token is not None and server.metrics_token.reveal() == "metrics-canary-1"
    assert "metrics-canary-1" not in repr(settings)
    bad = (
        """
    [server]
    audit_days = 0
    metrics_token = 7
    trusted_proxies = ["nginx.local"]
    """
        + PROJECT
    )
    found = keys(problems(tmp_path / "pushdeploy.toml", bad))
    assert set(found) >= {"server.audit_days", "server.metrics_token", "server.trusted_proxies"}


# -- people and permissions ---------------------------------------------------


def test_gitlab_sign_in_and_protected_environments(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pushdeploy.toml",
        """
        [gitlab]
        url = "https://gitlab.example.org"
        token = "literal-gitlab-token"
        [auth]
        gitlab_oauth = { client_id = "app-id", client_secret = "env:OAUTH_SECRET" }
        token_max_days = 30
        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        secret_token = "literal-hook-token"
        [projects.app.environments.staging]
        branch = "develop"
        [projects.app.environments.production]
        branch = "main"
        protected = true
        """,
    )
    settings = load(path, environ={"OAUTH_SECRET": "oauth-canary-1f2e"})
    assert settings.auth.gitlab_oauth is not None and settings.auth.gitlab_oauth.client_id == "app-id"
    assert settings.auth.gitlab_oauth.client_secret.reveal() == "oauth-canary-1f2e"
    assert "oauth-canary-1f2e" not in repr(settings)
    assert settings.auth.token_max_days == 30
    assert settings.auth.gitlab_oauth.client_secret in settings.all_secrets()
    environments = settings.projects["app"].environments
    assert environments["production"].protected and not environments["staging"].protected


def test_without_auth_only_the_admin_token_signs_in(tmp_path: Path) -> None:
    settings = load(write(tmp_path / "pushdeploy.toml", PROJECT), environ={})
    assert settings.auth.gitlab_oauth is None and settings.auth.token_max_days == 365


def test_auth_problems_are_named(tmp_path: Path) -> None:
    error = problems(
        tmp_path / "pushdeploy.toml",
        PROJECT
        + """
        [auth]
        gitlab_oauth = { client_id = "app-id", scope = "api" }
        token_max_days = 0
        color = "blue"
        """,
    )
    found = keys(error)
    assert "needs a [gitlab] section" in found["auth.gitlab_oauth"]
    assert "is required" in found["auth.gitlab_oauth.client_secret"]
    assert "unknown key" in found["auth.gitlab_oauth.scope"]
    assert "integer ≥ 1" in found["auth.token_max_days"]
    assert "unknown key" in found["auth.color"]


def test_protected_must_be_a_boolean(tmp_path: Path) -> None:
    error = problems(tmp_path / "pushdeploy.toml", PROJECT + 'protected = "yes"\n')
    assert keys(error) == {"projects.app.protected": "must be true or false"}


def test_the_oauth_secret_is_one_of_the_secret_values() -> None:
    from workers.config import secret_values

    raw = {"auth": {"gitlab_oauth": {"client_id": "x", "client_secret": "fernet:abc"}}}
    assert list(secret_values(raw)) == [("auth.gitlab_oauth.client_secret", "fernet:abc")]
