"""The recipe in the repository: real git commits carrying ``.pushdeploy.toml``, read from objects."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import GitRepo, git
from workers import recipe
from workers.config import HealthCheck, RecipeSource, Settings
from workers.recipe import RecipeError
from workers.source import Mirror

VALID = """\
# what this project runs, reviewed with its code
build = ["make dist", "make test"]
deploy = "systemctl --user restart app"
timeout = 30

[health_check]
url = "http://127.0.0.1:8080/healthz"
timeout = 10

[env]
NODE_ENV = "production"

[review]
deploy = "make review-up"
stop = "make review-down"

[environments.staging]
build = "make dist-debug"
env = { NODE_ENV = "staging" }
"""


def mirror_of(repo: GitRepo, tmp_path: Path, sha: str) -> Mirror:
    mirror = Mirror(tmp_path / "mirror.git", repo.url, environ=os.environ)
    mirror.fetch("refs/heads/main", sha)
    return mirror


def problems(text: str, limit: int | None = None) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        recipe.parse(text, limit)
    return [str(p) for p in caught.value.problems]


# -- the format ---------------------------------------------------------------------------------


def test_a_recipe_replaces_the_keys_it_sets_and_keeps_the_others(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        build=["./build.sh"],
        deploy=["echo server deploy"],
        timeout=60,
        env={"DATABASE_URL": "postgres://db/app"},
    )
    environment = settings.environment("sample-app", "production")

    steps = recipe.parse('build = "make dist"\nenv = { NODE_ENV = "production" }\n', 60).steps(
        environment, "repo@0123abcd"
    )

    assert steps.source == "repo@0123abcd"
    assert steps.build == ("make dist",)  # a single string is one command
    assert steps.deploy == ("echo server deploy",)  # left out: the server's
    assert steps.timeout == 60
    assert steps.env == {"DATABASE_URL": "postgres://db/app", "NODE_ENV": "production"}
    applied = steps.apply(environment)
    assert applied.build == ("make dist",) and applied.targets == environment.targets
    assert steps.public()["env"] == ["DATABASE_URL", "NODE_ENV"]  # names only, never values


def test_an_environment_table_overrides_the_top_of_the_recipe(make_settings: Callable[..., Settings]) -> None:
    environment = make_settings().environment("sample-app", "production")
    parsed = recipe.parse(VALID.replace("environments.staging", "environments.production"), 60)

    steps = parsed.steps(environment, "repo@x")

    assert steps.build == ("make dist-debug",)
    assert steps.deploy == ("systemctl --user restart app",)
    assert steps.env["NODE_ENV"] == "staging"
    assert steps.health_check == HealthCheck("http://127.0.0.1:8080/healthz", 10.0)
    assert steps.timeout == 30
    assert (steps.review_deploy, steps.review_stop) == (("make review-up",), ("make review-down",))
    assert steps.public()["review"] == {"deploy": ["make review-up"], "stop": ["make review-down"]}


def test_an_environment_table_for_another_environment_changes_nothing_here(
    make_settings: Callable[..., Settings],
) -> None:
    environment = make_settings().environment("sample-app", "production")

    steps = recipe.parse(VALID, 60).steps(environment, "repo@x")

    assert steps.build == ("make dist", "make test")
    assert steps.env["NODE_ENV"] == "production"


def test_invalid_toml_names_the_file_and_the_line() -> None:
    found = problems('build = "make"\ndeploy = [\n  "a"\n  "b"\n]\n')

    assert len(found) == 1
    assert found[0].startswith(".pushdeploy.toml line 4: not valid TOML:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'build = "make"\ntargets = ["ssh://deploy@web-1/srv/app"]\n',
            ".pushdeploy.toml line 2: targets: is the server's",
        ),
        ('branch = "main"\n', ".pushdeploy.toml line 1: branch: is the server's"),
        ('tags = "v*"\n', ".pushdeploy.toml line 1: tags: is the server's"),
        ('repo_url = "https://evil.example/x.git"\n', ".pushdeploy.toml line 1: repo_url: is the server's"),
        ('run_as = "root"\n', ".pushdeploy.toml line 1: run_as: is the server's"),
        ('secret_token = "x"\n', ".pushdeploy.toml line 1: secret_token: is the server's"),
        ("\n\n[secrets]\nkey = 1\n", ".pushdeploy.toml line 3: secrets: is the server's"),
        (
            '[environments.production]\nssh_key = "file:/root/.ssh/id"\n',
            ".pushdeploy.toml line 2: environments.production.ssh_key: is the server's",
        ),
        ('colour = "blue"\n', ".pushdeploy.toml line 1: colour: unknown key"),
        ('[review]\nurl = "x"\n', ".pushdeploy.toml line 2: review.url: unknown key"),
    ],
)
def test_a_key_the_server_decides_is_refused_where_it_is(text: str, expected: str) -> None:
    assert problems(text)[0].startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("build = 3\n", "build: must be a shell command or a list of them, not an integer"),
        ('deploy = ["ok", 2]\n', "deploy: must be a shell command or a list of them, not a list"),
        ('health_check = "http://x"\n', "health_check: must be a table like"),
        ('health_check = { url = "ftp://x" }\n', "health_check.url: must be an http:// or https:// URL"),
        ("env = { PORT = 8080 }\n", "env.PORT: must be a string, not an integer"),
        ('env = { TOKEN = "env:DEPLOY_TOKEN" }\n', "env.TOKEN: env:, file: and fernet: values are secrets"),
        ('env = { KEY = "file:/etc/shadow" }\n', "env.KEY: env:, file: and fernet: values are secrets"),
        ('env = { PUSHDEPLOY_SHA = "x" }\n', "env.PUSHDEPLOY_SHA: PUSHDEPLOY_* variables"),
        ('timeout = "1h"\n', "timeout: must be a whole number of seconds ≥ 1, not a string"),
        ("[review]\nstop = true\n", "review.stop: must be a shell command or a list of them, not a boolean"),
    ],
)
def test_a_wrong_type_is_refused_with_its_key_and_line(text: str, expected: str) -> None:
    found = problems(text)

    assert len(found) == 1
    assert expected in found[0]
    assert found[0].startswith(f".pushdeploy.toml line {text.count(chr(10))}: ")


def test_arrays_nested_thousands_deep_are_refused_not_a_crash() -> None:
    assert problems("build = " + "[" * 5000 + "]" * 5000 + "\n") == [
        ".pushdeploy.toml: not a recipe: arrays or tables nested too deeply"
    ]


def test_a_timeout_above_the_servers_is_refused_and_a_lower_one_allowed() -> None:
    assert problems("timeout = 900\n", 600) == [
        ".pushdeploy.toml line 1: timeout: 900 s is above the server's timeout of 600 s: refused"
    ]
    assert recipe.parse("timeout = 600\n", 600).keys["timeout"] == 600


def test_every_problem_is_listed_and_the_reason_quotes_the_first() -> None:
    with pytest.raises(RecipeError) as caught:
        recipe.parse('build = 1\ntargets = []\n[environments.production]\nrun_as = "root"\n')

    assert len(caught.value.problems) == 3
    assert str(caught.value) == (
        ".pushdeploy.toml line 1: build: must be a shell command or a list of them, not an integer"
        " (and 2 more problem(s): see the log)"
    )


# -- read from git objects ----------------------------------------------------------------------


def test_the_recipe_is_read_from_the_commit_not_from_a_checkout(git_repo: GitRepo, tmp_path: Path) -> None:
    first = git_repo.commit({".pushdeploy.toml": 'build = "make one"\n'}, "recipe one")
    second = git_repo.commit({".pushdeploy.toml": 'build = "make two"\n'}, "recipe two")
    mirror = mirror_of(git_repo, tmp_path, second)

    assert recipe.read(mirror, first) == 'build = "make one"\n'
    assert recipe.read(mirror, second) == 'build = "make two"\n'
    assert not (mirror.path / ".pushdeploy.toml").exists()


def test_a_commit_without_a_recipe_runs_the_servers_steps(
    git_repo: GitRepo, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    sha = git_repo.commit({"nested/.pushdeploy.toml": 'build = "not at the root"\n'}, "elsewhere")
    environment = make_settings().environment("sample-app", "production")
    mirror = mirror_of(git_repo, tmp_path, sha)

    assert recipe.read(mirror, sha) is None
    steps = recipe.resolve(mirror, sha, environment)
    assert steps.source == "server" and steps.build == environment.build


def test_a_symlink_named_like_the_recipe_is_refused(git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.commit({"real.toml": 'build = "make"\n'}, "target")
    os.symlink("real.toml", git_repo.work / ".pushdeploy.toml")
    sha = git_repo.commit({}, "a symlink")
    mirror = mirror_of(git_repo, tmp_path, sha)

    with pytest.raises(RecipeError) as caught:
        recipe.read(mirror, sha)

    assert str(caught.value) == (
        ".pushdeploy.toml: is a symbolic link: a recipe must be a regular file, so it is refused"
    )


def test_a_submodule_named_like_the_recipe_is_refused(git_repo: GitRepo, tmp_path: Path) -> None:
    other = git("rev-parse", "HEAD", cwd=git_repo.work)
    git("update-index", "--add", "--cacheinfo", f"160000,{other},.pushdeploy.toml", cwd=git_repo.work)
    git("commit", "--quiet", "-m", "a gitlink", cwd=git_repo.work)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=git_repo.work)
    sha = git("rev-parse", "HEAD", cwd=git_repo.work)
    mirror = mirror_of(git_repo, tmp_path, sha)

    with pytest.raises(RecipeError, match="is a submodule: a recipe must be a regular file"):
        recipe.read(mirror, sha)


def test_a_directory_named_like_the_recipe_is_refused(git_repo: GitRepo, tmp_path: Path) -> None:
    sha = git_repo.commit({".pushdeploy.toml/build": "make\n"}, "a directory")
    mirror = mirror_of(git_repo, tmp_path, sha)

    with pytest.raises(RecipeError, match="is a directory"):
        recipe.read(mirror, sha)


def test_a_recipe_over_64_kib_is_refused_unread(git_repo: GitRepo, tmp_path: Path) -> None:
    sha = git_repo.commit({".pushdeploy.toml": "# padding\n" * 7168}, "70 KiB")
    mirror = mirror_of(git_repo, tmp_path, sha)

    with pytest.raises(RecipeError) as caught:
        recipe.read(mirror, sha)

    assert str(caught.value) == (
        ".pushdeploy.toml: is 71680 bytes, over the limit of 65536 (64 KiB): refused"
    )


def test_a_recipe_that_is_not_utf8_is_refused(git_repo: GitRepo, tmp_path: Path) -> None:
    (git_repo.work / ".pushdeploy.toml").write_bytes(b'build = "make"\ndeploy = "\xff"\n')
    sha = git_repo.commit({}, "latin-1")
    mirror = mirror_of(git_repo, tmp_path, sha)

    with pytest.raises(RecipeError, match=r"line 2: is not UTF-8 text"):
        recipe.read(mirror, sha)


def test_recipe_server_ignores_the_file(
    git_repo: GitRepo, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    sha = git_repo.commit({".pushdeploy.toml": "targets = 1\nbuild = 2\n"}, "would be refused")
    environment = make_settings(recipe="server").environment("sample-app", "production")
    assert environment.recipe is RecipeSource.SERVER
    mirror = mirror_of(git_repo, tmp_path, sha)

    steps = recipe.resolve(mirror, sha, environment)

    assert steps.source == "server" and steps.build == ("./build.sh",)


def test_resolve_applies_the_servers_timeout_as_the_ceiling(
    git_repo: GitRepo, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    sha = git_repo.commit({".pushdeploy.toml": "timeout = 61\n"}, "too long")
    environment = make_settings(timeout=60).environment("sample-app", "production")
    mirror = mirror_of(git_repo, tmp_path, sha)

    with pytest.raises(RecipeError, match="61 s is above the server's timeout of 60 s"):
        recipe.resolve(mirror, sha, environment)


def test_every_toml_example_on_the_recipe_page_is_a_valid_recipe() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "recipe.md").read_text(encoding="utf-8")
    examples = re.findall(r"```toml\n(.*?)```", page, re.DOTALL)

    assert len(examples) == 4
    for example in examples:
        recipe.parse(example, 1800)  # raises, naming the line, if the page shows a refused recipe


def test_a_key_that_is_not_a_bare_name_is_quoted_in_the_message() -> None:
    found = problems('"evil\\nfake log line" = 1\n')

    assert found == [
        '.pushdeploy.toml: "evil\\nfake log line": unknown key (a recipe may set build, deploy, '
        "health_check, env, timeout, review, environments)"
    ]
