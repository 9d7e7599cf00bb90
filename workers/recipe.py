"""The recipe in the repository: ``.pushdeploy.toml`` at the deployed commit, read from git objects.

The file may replace the steps (``build``, ``deploy``, ``health_check``, ``env``, a lower
``timeout``, ``[review]`` ``deploy``/``stop``), per environment too; everything the server decides
(secrets, targets, what is deployed, who runs it, for how long at most) stays the server's. It is
read as a blob, never checked out and never run: a symlink, a submodule or an outsized file under
that name is refused, and so is any key outside the list, so that a commit can never widen what the
operator allowed. Every problem names the file, the key, the line where it can be found and what
is wrong, in the same words for a deployment and for ``pushdeploy check --recipe``.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from workers.config import NAME_RE, Environment, HealthCheck, RecipeSource
from workers.errors import RunStopped
from workers.source import Mirror

FILE = ".pushdeploy.toml"
MAX_BYTES = 64 * 1024
"""A recipe is a few lines: anything larger is refused before it is read."""

FILE_MODES = {"100644", "100755"}
REGULAR_ONLY = "a recipe must be a regular file, so it is refused"
STEP_KEYS = ("build", "deploy", "health_check", "env", "timeout")
REVIEW_KEYS = ("deploy", "stop")
SECRET_FORMS = ("env:", "file:", "fernet:")
SERVER_ONLY = frozenset(
    {
        "branch",
        "tags",
        "targets",
        "repo_url",
        "repo_token",
        "run_as",
        "ssh_key",
        "known_hosts",
        "rollout",
        "keep_releases",
        "recipe",
        "secret_token",
        "signing_token",
        "token",
        "admin_token",
        "secrets",
        "gitlab_project",
        "gitlab_environments",
        "trigger",
        "poll_interval",
        "environment",
        "notify",
        "server",
        "gitlab",
        "projects",
    }
)
"""Keys a recipe may not set because the server decides them: named as such, not as unknown."""

SHOWN_PROBLEMS = 1
"""How many problems a deployment's reason (and so its commit status) quotes; the log has them all."""


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{FILE}" + (f" line {self.line}" if self.line else "")
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class RecipeError(RunStopped):
    """The commit's recipe cannot be used; the deployment fails before any step runs."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        shown = "; ".join(str(p) for p in problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        super().__init__(shown + (f" (and {more} more problem(s): see the log)" if more > 0 else ""))


@dataclass(frozen=True)
class Steps:
    """What one deployment runs, and where that came from: ``repo@<short sha>`` or ``server``."""

    source: str
    build: tuple[str, ...]
    deploy: tuple[str, ...]
    health_check: HealthCheck | None
    timeout: int
    env: Mapping[str, str] = field(default_factory=dict)
    review_deploy: tuple[str, ...] = ()
    review_stop: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    """The environments the recipe has ``[environments.NAME]`` tables for (a typo shows here)."""

    def apply(self, environment: Environment) -> Environment:
        """The environment as this deployment runs it: the server's, with the recipe's steps."""
        return replace(
            environment,
            build=self.build,
            deploy=self.deploy,
            health_check=self.health_check,
            timeout=self.timeout,
            env=dict(self.env),
        )

    def public(self) -> dict[str, Any]:
        """For the record, the API and the page: variable names only, their values may be private."""
        health = self.health_check
        return {
            "build": list(self.build),
            "deploy": list(self.deploy),
            "health_check": {"url": health.url, "timeout": health.timeout} if health else None,
            "timeout": self.timeout,
            "env": sorted(self.env),
            "review": {"deploy": list(self.review_deploy), "stop": list(self.review_stop)},
        }


def server_steps(environment: Environment) -> Steps:
    """The server's steps; a review app's ``deploy`` is already ``review.deploy`` where that is set."""
    return Steps(
        RecipeSource.SERVER.value,
        environment.build,
        environment.deploy,
        environment.health_check,
        environment.timeout,
        dict(environment.env),
        environment.review_deploy or (),
        environment.review_stop,
    )


@dataclass(frozen=True)
class Recipe:
    """A parsed, checked recipe: the keys it sets at the top, and per environment."""

    keys: Mapping[str, Any]
    environments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def steps(self, environment: Environment, source: str) -> Steps:
        """The server's steps with each key this recipe sets for ``environment`` replaced.

        ``env`` is merged by variable: the recipe's variables replace the server's of the same
        name and the others are kept, so a server-side value never has to be copied into git.
        """
        base = server_steps(environment)
        override = self.environments.get(environment.review_base or environment.name, {})
        chosen = {**self.keys, **override}
        env = {**base.env, **self.keys.get("env", {}), **override.get("env", {})}
        deploy = chosen.get("deploy", base.deploy)
        if environment.review_iid:  # a review app: [review] deploy, else the server's, else deploy
            if "review_deploy" in chosen:
                deploy = chosen["review_deploy"]
            elif environment.review_deploy is not None:
                deploy = environment.review_deploy
        return Steps(
            source,
            chosen.get("build", base.build),
            deploy,
            chosen.get("health_check", base.health_check),
            chosen.get("timeout", base.timeout),
            env,
            chosen.get("review_deploy", base.review_deploy),
            chosen.get("review_stop", base.review_stop),
            tuple(self.environments),
        )


def parse(text: str, timeout_limit: int | None = None) -> Recipe:
    """Check a recipe's text; ``timeout_limit`` is the server's timeout, when one is known.

    Raises:
        RecipeError: with every problem found, each naming the key and, where it can, the line.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = _decode_error(str(exc))
        raise RecipeError([Problem("", f"not valid TOML: {message}", line)]) from None
    except RecursionError:  # tomllib recurses per nested array or inline table
        raise RecipeError([Problem("", "not a recipe: arrays or tables nested too deeply")]) from None
    checker = _Checker(text, timeout_limit)
    keys = checker.table(raw, ())
    environments: dict[str, dict[str, Any]] = {}
    overrides = raw.get("environments", {})
    if not isinstance(overrides, dict):
        checker.problem(("environments",), "must hold [environments.NAME] tables")
        overrides = {}
    for name, table in overrides.items():
        if not NAME_RE.match(name):
            checker.problem(("environments", name), "is not an environment name")
        elif not isinstance(table, dict):
            checker.problem(("environments", name), "must be a table of build, deploy, health_check, env …")
        else:
            environments[name] = checker.table(table, ("environments", name))
    if checker.problems:
        raise RecipeError(sorted(checker.problems, key=lambda p: p.line or 0))
    return Recipe(keys, environments)


def read(mirror: Mirror, sha: str) -> str | None:
    """The text of ``.pushdeploy.toml`` at the root of ``sha``, or None when the commit has none.

    Only git objects are looked at: the tree entry's mode first (a regular file, nothing else),
    then its size, and only then its bytes.

    Raises:
        RecipeError: the entry is a symlink, a submodule, a directory, too large, or not UTF-8.
        SourceError: git could not read the commit.
    """
    entry = mirror.tree_entry(sha, FILE)
    if entry is None:
        return None
    if entry.kind != "blob" or entry.mode not in FILE_MODES:
        what = {"120000": "a symbolic link", "160000": "a submodule", "040000": "a directory"}
        kind = what.get(entry.mode, f"not a regular file (mode {entry.mode})")
        raise RecipeError([Problem("", f"is {kind}: {REGULAR_ONLY}")])
    _check_size(mirror.blob_size(entry.object_id))
    return _text(mirror.blob(entry.object_id))


def read_file(path: Path, timeout_limit: int | None = None) -> Recipe:
    """Check a recipe on disk as a deployment would check it in a commit (``pushdeploy check --recipe``).

    Raises:
        RecipeError: what a deployment of a commit with this file would fail with.
        OSError: the file cannot be read.
    """
    if path.is_symlink():
        raise RecipeError([Problem("", f"is a symbolic link: {REGULAR_ONLY}")])
    _check_size(path.stat().st_size)
    return parse(_text(path.read_bytes()), timeout_limit)


def _check_size(size: int) -> None:
    if size > MAX_BYTES:
        limit = f"the limit of {MAX_BYTES} ({MAX_BYTES // 1024} KiB)"
        raise RecipeError([Problem("", f"is {size} bytes, over {limit}: refused")])


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecipeError([Problem("", "is not UTF-8 text (TOML must be)", line)]) from None


def resolve(mirror: Mirror, sha: str, environment: Environment) -> Steps:
    """The steps a deployment of ``sha`` runs in ``environment``: the recipe's where allowed.

    Raises:
        RecipeError: the commit's recipe is refused (nothing has run).
        SourceError: git could not read the commit.
    """
    if environment.recipe is RecipeSource.SERVER:
        return server_steps(environment)
    text = read(mirror, sha)
    if text is None:
        return server_steps(environment)
    return parse(text, environment.timeout).steps(environment, f"{RecipeSource.REPO.value}@{sha[:8]}")


# -- checking -------------------------------------------------------------------------------------


class _Checker:
    def __init__(self, text: str, timeout_limit: int | None) -> None:
        self.lines = _KeyLines(text)
        self.timeout_limit = timeout_limit
        self.problems: list[Problem] = []

    def problem(self, path: tuple[str, ...], message: str) -> None:
        self.problems.append(Problem(_key_text(path), message, self.lines.find(path)))

    def table(self, raw: Mapping[str, Any], prefix: tuple[str, ...]) -> dict[str, Any]:
        """The step keys of one table (top level or one environment's), checked."""
        found: dict[str, Any] = {}
        allowed = (*STEP_KEYS, "review") + (("environments",) if not prefix else ())
        for key, value in raw.items():
            path = (*prefix, key)
            if key in SERVER_ONLY:
                self.problem(path, "is the server's to set, not the repository's: refused")
            elif key not in allowed:
                self.problem(path, f"unknown key (a recipe may set {', '.join(allowed)})")
            elif key in ("build", "deploy"):
                found[key] = self.commands(path, value)
            elif key == "health_check":
                found[key] = self.health_check(path, value)
            elif key == "env":
                found[key] = self.env(path, value)
            elif key == "timeout":
                found[key] = self.timeout(path, value)
            elif key == "review":
                found.update(self.review(path, value))
        return found

    def commands(self, path: tuple[str, ...], value: Any) -> tuple[str, ...]:
        commands = [value] if isinstance(value, str) else value
        if not isinstance(commands, list) or not all(isinstance(c, str) and c.strip() for c in commands):
            self.problem(path, f"must be a shell command or a list of them, not {_kind(value)}")
            return ()
        return tuple(commands)

    def health_check(self, path: tuple[str, ...], value: Any) -> HealthCheck | None:
        if not isinstance(value, dict):
            example = '{ url = "http://…", timeout = 30 }'
            self.problem(path, f"must be a table like {example}, not {_kind(value)}")
            return None
        for key in value:
            if key not in ("url", "timeout"):
                self.problem((*path, key), "unknown key (a health check has url and timeout)")
        url = value.get("url")
        if not isinstance(url, str) or not _http_url(url):
            self.problem((*path, "url"), "must be an http:// or https:// URL")
            return None
        timeout = value.get("timeout", 30.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            self.problem((*path, "timeout"), f"must be a positive number of seconds, not {_kind(timeout)}")
            return None
        return HealthCheck(url, float(timeout))

    def env(self, path: tuple[str, ...], value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            self.problem(path, f"must be a table of string values, not {_kind(value)}")
            return {}
        found = {}
        for name, text in value.items():
            where = (*path, name)
            if not isinstance(text, str):
                self.problem(where, f"must be a string, not {_kind(text)}")
            elif name.startswith("PUSHDEPLOY_"):
                self.problem(where, "PUSHDEPLOY_* variables are set by pushdeploy itself")
            elif text.startswith(SECRET_FORMS):
                self.problem(
                    where,
                    "env:, file: and fernet: values are secrets, which only the server's configuration holds",
                )
            else:
                found[name] = text
        return found

    def timeout(self, path: tuple[str, ...], value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.problem(path, f"must be a whole number of seconds ≥ 1, not {_kind(value)}")
            return 0
        if self.timeout_limit is not None and value > self.timeout_limit:
            self.problem(path, f"{value} s is above the server's timeout of {self.timeout_limit} s: refused")
            return 0
        return value

    def review(self, path: tuple[str, ...], value: Any) -> dict[str, tuple[str, ...]]:
        if not isinstance(value, dict):
            self.problem(path, f"must be a table with deploy and stop, not {_kind(value)}")
            return {}
        found = {}
        for key, commands in value.items():
            if key in REVIEW_KEYS:
                found[f"review_{key}"] = self.commands((*path, key), commands)
            else:
                self.problem((*path, key), "unknown key (a recipe's [review] may set deploy and stop)")
        return found


def _key_text(path: tuple[str, ...]) -> str:
    """A key as TOML writes it: a part that is not a bare key is quoted, so no name can break a line."""
    parts = (p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p[:60]) for p in path)
    return ".".join(parts)


def _http_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _kind(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return next((name for kind, name in names.items() if isinstance(value, kind)), type(value).__name__)


def _decode_error(text: str) -> tuple[str, int | None]:
    """tomllib says where in its message: ``Invalid value (at line 2, column 5)``."""
    found = re.search(r"\(at line (\d+), column (\d+)\)$", text)
    if found is None:
        return text, None
    return f"{text[: found.start()].strip()} (column {found.group(2)})", int(found.group(1))


class _KeyLines:
    """Where a key is set, for the messages: tomllib gives values but not their lines.

    A light reading of the text, enough for the file that has just parsed: ``[table]`` headers
    and ``key = value`` lines (dotted and quoted keys included). A key given inside an inline
    table is found at the line of the key that holds the table.
    """

    HEADER = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(?:#.*)?$")
    PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
    ASSIGNMENT = re.compile(rf"^\s*({PART}(?:\s*\.\s*{PART})*)\s*=")

    def __init__(self, text: str) -> None:
        self.text = text
        self._found: list[tuple[int, tuple[str, ...], bool]] | None = None

    @property
    def places(self) -> list[tuple[int, tuple[str, ...], bool]]:
        if self._found is None:  # read only for a file with a problem
            self._found = list(self._places(self.text))
        return self._found

    def _places(self, text: str) -> Iterator[tuple[int, tuple[str, ...], bool]]:
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = self.HEADER.match(line)
            if header:
                table = _dotted(header.group(1))
                yield number, table, True
                continue
            assignment = self.ASSIGNMENT.match(line)
            if assignment:
                yield number, (*table, *_dotted(assignment.group(1))), False

    def find(self, path: tuple[str, ...]) -> int | None:
        for number, where, _ in self.places:
            if where == path:
                return number
        for number, where, is_header in self.places:
            holds = not is_header and path[: len(where)] == where  # an inline table's key
            within = where[: len(path)] == path  # a table or key inside the one named
            if holds or within:
                return number
        return None


def _dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return tuple(part.strip("\"'") for part in parts)
