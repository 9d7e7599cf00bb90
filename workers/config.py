"""The TOML settings loader: one place that turns the operator's file into typed, checked settings.

Every problem is collected (not just the first) and names the file, the key and what is wrong,
so an operator fixes a config in one pass.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import os
import pwd
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from workers import defaults, routes
from workers.connection import SENTINEL_SCHEMES, parse_sentinel
from workers.deployments import new_id
from workers.errors import EngineError
from workers.links import LinkSigner
from workers.secrets import MASK, Keyring, NoKeys, Secret, SecretError, SigningKey, resolve
from workers.targets import Rollout, Target, TargetError, parse_target

S = TypeVar("S", bound=Secret)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
"""Project and environment names appear in URLs, Redis keys and paths: keep them plain.

The pattern ends in an end-of-string anchor, not ``$``, which also matches before a trailing newline."""

SERVER_KEYS = {
    "public_url",
    "redis_url",
    "data_dir",
    "admin_token",
    "max_body_bytes",
    "keep_deployments",
    "link_ttl_days",
    "on_redis_down",
    "reconcile_interval",
    "reconcile_grace",
    "audit_days",
    "metrics_token",
    "trusted_proxies",
}
GITLAB_KEYS = {"url", "token", "timeout"}
AUTH_KEYS = {"gitlab_oauth", "token_max_days"}
OAUTH_KEYS = {"client_id", "client_secret"}
PROJECT_ONLY_KEYS = {
    "gitlab_project",
    "repo_url",
    "repo_token",
    "secret_token",
    "signing_token",
    "environments",
    "gitlab_environments",
    "trigger",
    "poll_interval",
    "review",
    "notify",
}
REVIEW_KEYS = {"url", "deploy", "stop", "health_check", "max", "forks", "drafts", "ttl"}
REVIEW_PREFIX = "review/"
"""Review environments are named ``review/<iid>``: the ``/`` keeps them apart from configured names."""
NOTIFY_KEYS = {"urls", "on"}
ENV_KEYS = {
    "branch",
    "tags",
    "build",
    "deploy",
    "health_check",
    "keep_releases",
    "timeout",
    "env",
    "run_as",
    "targets",
    "ssh_key",
    "known_hosts",
    "rollout",
    "protected",
    "recipe",
}
FLAT_ONLY_KEYS = {"environment"}


def redact_url(url: str) -> str:
    """``url`` without the user and password it may carry, for reprs that end up in logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=f"{MASK}@{parts.netloc.rpartition('@')[2]}"))


def _repr(obj: Any, urls: set[str]) -> str:
    """The dataclass repr, with the fields named in ``urls`` redacted."""
    shown = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        shown.append(f"{f.name}={(redact_url(value) if f.name in urls else value)!r}")
    return f"{type(obj).__name__}({', '.join(shown)})"


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class ConfigError(EngineError):
    """The configuration cannot be used; ``problems`` lists each one."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class Trigger(StrEnum):
    """What starts a project's deployments."""

    WEBHOOK = "webhook"  # GitLab's deliveries (the reconciler catches missed ones)
    POLL = "poll"  # no webhook: the reconciler polls the branch head


class NotifyEvent(StrEnum):
    """What a notification can be sent for."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    RECOVERED = "recovered"  # the first success after a failure in that environment
    FAILED = "failed"
    CANCELED = "canceled"


DEFAULT_NOTIFY_ON = frozenset({NotifyEvent.FAILED, NotifyEvent.RECOVERED})
"""Word when something breaks and when it is mended, not on every push."""


@dataclass(frozen=True)
class Notify:
    """Where notifications go (Apprise URLs, each a secret) and which events send one."""

    urls: tuple[Secret, ...] = ()
    on: frozenset[NotifyEvent] = DEFAULT_NOTIFY_ON

    def wants(self, event: NotifyEvent) -> bool:
        return bool(self.urls) and event in self.on


class OnRedisDown(StrEnum):
    """What the webhook does with a verified delivery while Redis cannot be reached."""

    JOURNAL = "journal"  # accept it (202) and keep it on local disk until Redis is back
    REFUSE = "503"  # answer 503, so GitLab retries


class RecipeSource(StrEnum):
    """Where an environment's steps come from: the deployed commit's ``.pushdeploy.toml``, or here."""

    REPO = "repo"  # the file wins where the commit has one; this config's steps are the fallback
    SERVER = "server"  # the file is ignored


@dataclass(frozen=True)
class HealthCheck:
    url: str
    timeout: float = 30.0


@dataclass(frozen=True)
class Environment:
    """One project environment: the unit that is deployed, locked and reported.

    It follows either a branch or the tags matching a glob (``tags = "v*"``), never both: a tags
    environment has ``branch == ""``.
    """

    project: str
    name: str
    branch: str
    build: tuple[str, ...] = ()
    deploy: tuple[str, ...] = ()
    health_check: HealthCheck | None = None
    keep_releases: int = defaults.KEEP_RELEASES
    timeout: int = defaults.DEPLOY_TIMEOUT
    env: Mapping[str, str] = field(default_factory=dict)
    run_as: str | None = None
    """The user the steps run as (the worker must then be root); None runs them as the worker."""
    tags: str = ""
    """A glob on tag names (``v*``): the environment deploys matching tag pushes instead of a branch."""
    targets: tuple[Target, ...] = ()
    """Hosts the release is shipped to over SSH; empty: it lives in the worker's own ``data_dir``."""
    ssh_key: Secret | None = None
    known_hosts: Secret | None = None
    """The pinned host keys (``known_hosts`` lines): the only keys a target may present."""
    rollout: Rollout = field(default_factory=Rollout)
    protected: bool = False
    """Deploy, rollback and cancel here need Maintainer or above in the GitLab project."""
    review_iid: int = 0
    """A merge request's review app (``review/<iid>``, see :meth:`Project.review_environment`); 0: not one."""
    review_url: str = ""
    """The review app's address (``[review] url`` with ``{iid}`` filled in)."""
    review_base: str = ""
    """A review app's target branch environment, whose recipe table (``[environments.NAME]``) it takes."""
    review_deploy: tuple[str, ...] | None = None
    """The server's ``review.deploy`` (None: the steps are the target environment's ``deploy``)."""
    review_stop: tuple[str, ...] = ()
    """The server's ``review.stop``."""
    recipe: RecipeSource = RecipeSource.REPO
    """Whether a ``.pushdeploy.toml`` in the deployed commit may replace the steps above."""

    def secrets(self) -> tuple[Secret, ...]:
        return (self.ssh_key,) if self.ssh_key is not None else ()

    @property
    def status_name(self) -> str:
        return "deploy/review" if self.review_iid else f"deploy/{self.name}"

    def review_variables(self) -> dict[str, str]:
        """``PUSHDEPLOY_REVIEW_IID`` and ``PUSHDEPLOY_REVIEW_URL`` for a review app's steps, else none."""
        if not self.review_iid:
            return {}
        return {"PUSHDEPLOY_REVIEW_IID": str(self.review_iid), "PUSHDEPLOY_REVIEW_URL": self.review_url}

    @property
    def directory(self) -> str:
        """Its directory under the project (``review-<iid>`` for a review app: no ``/`` in a path part)."""
        return f"review-{self.review_iid}" if self.review_iid else self.name

    def deploys_tag(self, tag: str) -> bool:
        """Whether a push of tag ``tag`` (its name, not ``refs/tags/…``) deploys here."""
        return bool(self.tags) and fnmatch.fnmatchcase(tag, self.tags)

    @property
    def follows(self) -> str:
        """What the environment deploys, for people: ``branch main`` or ``tags v*``."""
        return f"tags {self.tags}" if self.tags else f"branch {self.branch}"


@dataclass(frozen=True)
class Review:
    """``[projects.NAME.review]``: a live copy of every merge request into a deployed branch."""

    url: str
    """The app's address, ``{iid}`` standing for the merge request's number."""
    deploy: tuple[str, ...] | None = None
    """None: the target branch environment's own ``deploy``."""
    stop: tuple[str, ...] = ()
    health_check: HealthCheck | None = None
    """None: the target branch environment's own; ``{iid}`` (and ``{host}``) are filled in."""
    max: int = defaults.REVIEW_MAX
    forks: bool = False
    drafts: bool = True
    ttl_days: float = defaults.REVIEW_TTL_DAYS

    def app_url(self, iid: int) -> str:
        return self.url.replace("{iid}", str(iid))


def review_iid(environment: str) -> int:
    """The merge request number of a ``review/<iid>`` environment name, else 0."""
    number = environment.removeprefix(REVIEW_PREFIX)
    if number == environment or not number.isdigit() or len(number) > 12 or number.startswith("0"):
        return 0
    return int(number)


@dataclass(frozen=True)
class Project:
    name: str
    gitlab_project: str
    repo_url: str
    secret_tokens: tuple[Secret, ...]
    signing_keys: tuple[SigningKey, ...]
    environments: Mapping[str, Environment]
    gitlab_environments: bool = False
    trigger: Trigger = Trigger.WEBHOOK
    poll_interval: int = defaults.POLL_INTERVAL
    repo_token: Secret | None = None
    """The HTTPS credential for ``repo_url`` (``token`` or ``user:token``), sent as a header."""
    review: Review | None = None
    """``[projects.NAME.review]``: merge requests get review apps; None: merge requests are ignored."""

    def review_environment(self, base: Environment, iid: int) -> Environment:
        """Environment ``review/<iid>``: ``base``'s settings (the target branch's), the review's steps.

        Its releases live apart (``review-<iid>``, also under each target's path), its health check
        URL gets ``{iid}`` filled in, and its steps are ``review.deploy`` (default: ``base``'s).
        """
        review = self.review or Review(url="")
        health = review.health_check or base.health_check
        if health is not None:
            health = replace(health, url=health.url.replace("{iid}", str(iid)))
        return replace(
            base,
            name=f"{REVIEW_PREFIX}{iid}",
            tags="",
            deploy=review.deploy if review.deploy is not None else base.deploy,
            health_check=health,
            targets=tuple(replace(t, path=f"{t.path}/review-{iid}") for t in base.targets),
            protected=False,  # a review app is no protected environment: Developers run and stop it
            review_iid=iid,
            review_url=review.app_url(iid),
            review_base=base.name,
            review_deploy=review.deploy,
            review_stop=review.stop,
        )
    notify: Notify | None = None
    """The project's own ``[projects.NAME.notify]``, which replaces the server's; None: the server's."""

    def environment_for_branch(self, branch: str) -> Environment | None:
        for environment in self.environments.values():
            if environment.branch and environment.branch == branch:
                return environment
        return None

    def repo_credential(self) -> str:
        """``repo_token``'s value for git, or "" (then any credential in ``repo_url`` is used)."""
        return self.repo_token.reveal() if self.repo_token is not None else ""

    def environment_for_tag(self, tag: str) -> Environment | None:
        """The first environment, in the config's order, whose ``tags`` glob matches ``tag``."""
        for environment in self.environments.values():
            if environment.deploys_tag(tag):
                return environment
        return None

    @property
    def deploys_tags(self) -> bool:
        return any(environment.tags for environment in self.environments.values())

    def secrets(self) -> tuple[Secret, ...]:
        token = (self.repo_token,) if self.repo_token is not None else ()
        keys = tuple(s for env in self.environments.values() for s in env.secrets())
        urls = self.notify.urls if self.notify is not None else ()
        return self.secret_tokens + self.signing_keys + token + keys + urls

    def __repr__(self) -> str:
        return _repr(self, {"repo_url"})


@dataclass(frozen=True)
class GitLabSettings:
    url: str
    token: Secret
    timeout: float = defaults.GITLAB_TIMEOUT


@dataclass(frozen=True)
class OAuthClient:
    """The application registered in GitLab that people sign in through."""

    client_id: str
    client_secret: Secret


@dataclass(frozen=True)
class AuthSettings:
    """How people sign in: with GitLab when ``gitlab_oauth`` is set, else only with the admin token."""

    gitlab_oauth: OAuthClient | None = None
    token_max_days: int = defaults.TOKEN_MAX_DAYS


@dataclass(frozen=True)
class ServerSettings:
    public_url: str = defaults.PUBLIC_URL
    redis_url: str = defaults.REDIS_URL
    data_dir: Path = Path(defaults.DATA_DIR)
    admin_token: Secret | None = None
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    redis_url_configured: bool = False
    keep_deployments: int = defaults.KEEP_DEPLOYMENTS
    link_ttl_days: int = defaults.LINK_TTL_DAYS
    on_redis_down: OnRedisDown = OnRedisDown.JOURNAL
    reconcile_interval: int = defaults.RECONCILE_INTERVAL
    reconcile_grace: int = defaults.RECONCILE_GRACE
    audit_days: int = defaults.AUDIT_DAYS
    metrics_token: Secret | None = None
    trusted_proxies: tuple[str, ...] = defaults.TRUSTED_PROXIES
    """Addresses or networks of the proxies whose ``X-Forwarded-For`` names the client."""

    def __repr__(self) -> str:
        return _repr(self, {"redis_url"})


@dataclass(frozen=True)
class Settings:
    path: Path
    server: ServerSettings
    gitlab: GitLabSettings | None
    projects: Mapping[str, Project]
    auth: AuthSettings = field(default_factory=AuthSettings)
    notify: Notify = field(default_factory=Notify)
    """The server-wide ``[notify]`` table: for every project without one of its own."""

    def notify_for(self, project: str) -> Notify:
        """The project's ``[projects.NAME.notify]`` if it has one (the whole table), else the server's."""
        configured = self.projects.get(project)
        if configured is not None and configured.notify is not None:
            return configured.notify
        return self.notify

    def environment(self, project: str, environment: str) -> Environment:
        return self.projects[project].environments[environment]

    def all_secrets(self) -> tuple[Secret, ...]:
        """Every configured secret, for masking logs."""
        found: list[Secret] = []
        for project in self.projects.values():
            found.extend(project.secrets())
        if self.gitlab:
            found.append(self.gitlab.token)
        if self.server.admin_token:
            found.append(self.server.admin_token)
        if self.server.metrics_token:
            found.append(self.server.metrics_token)
        if self.auth.gitlab_oauth:
            found.append(self.auth.gitlab_oauth.client_secret)
        found.extend(self.notify.urls)
        return tuple(found)

    def webhook_url(self, project: str) -> str:
        return routes.hook_url(self.server.public_url, project)


TARGET_URL_LIMIT = 255
"""GitLab's limit on a commit status's ``target_url`` (GenericCommitStatus validates its length)."""


def longest_target_url(public_url: str, signed: bool, ttl_days: int) -> str:
    """The longest link to a deployment page we may post: a signed one expiring late, for the longest id."""
    deployment_id = "9" * len(new_id(0))
    if not signed:
        return routes.deployment_url(public_url, deployment_id)
    far = 10**10 - 1 - ttl_days * 86400  # the longest expiry stamp sign() can write: ten digits
    return LinkSigner(bytes(32), ttl_days).url(public_url, deployment_id, now=far)


def secret_values(raw: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(key, value)`` of each string where the loader accepts a secret, keyed like its problems."""
    places: list[tuple[str, Any]] = []
    for section, name in (("server", "admin_token"), ("server", "metrics_token"), ("gitlab", "token")):
        table = raw.get(section)
        if isinstance(table, dict) and name in table:
            places.append((f"{section}.{name}", table[name]))
    auth = raw.get("auth")
    oauth = auth.get("gitlab_oauth") if isinstance(auth, dict) else None
    if isinstance(oauth, dict) and "client_secret" in oauth:
        places.append(("auth.gitlab_oauth.client_secret", oauth["client_secret"]))
    notify = raw.get("notify")
    if isinstance(notify, dict) and "urls" in notify:
        places.append(("notify.urls", notify["urls"]))
    projects = raw.get("projects")
    for project, table in projects.items() if isinstance(projects, dict) else ():
        for name in ("secret_token", "signing_token", "repo_token", "ssh_key"):
            if isinstance(table, dict) and name in table:
                places.append((f"projects.{project}.{name}", table[name]))
        own = table.get("notify") if isinstance(table, dict) else None
        if isinstance(own, dict) and "urls" in own:
            places.append((f"projects.{project}.notify.urls", own["urls"]))
        environments = table.get("environments") if isinstance(table, dict) else None
        for env_name, env_table in environments.items() if isinstance(environments, dict) else ():
            if isinstance(env_table, dict) and "ssh_key" in env_table:
                places.append((f"projects.{project}.environments.{env_name}.ssh_key", env_table["ssh_key"]))
    for key, value in places:
        if isinstance(value, str):
            yield key, value
        elif isinstance(value, list):
            yield from ((f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str))


def notify_url_problem(url: str) -> str:
    """What is wrong with an Apprise URL, in words that never repeat the URL (it holds secrets)."""
    if "://" not in url:
        return "is not an Apprise URL (like slack://…, mailto://…, json://host/path)"
    import apprise  # only configs that notify pay for loading Apprise's plugins

    # Apprise explains a bad URL in its log by quoting it, and URLs hold secrets: its log stays
    # out of ours (the notifier captures and masks it while sending).
    logging.getLogger(apprise.LOGGER_NAME).propagate = False
    if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
        scheme = url.split("://", 1)[0][:20]
        return f"Apprise cannot send to this {scheme}:// URL (unknown service or a malformed URL)"
    return ""


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """The config file from ``--config``, else ``PUSHDEPLOY_CONFIG``, else ``./pushdeploy.toml``."""
    if explicit:
        return Path(explicit)
    return Path(environ.get("PUSHDEPLOY_CONFIG") or "pushdeploy.toml")


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the config file.

    Raises:
        ConfigError: with every problem found, each naming file and key.
    """
    environ = os.environ if environ is None else environ
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([Problem(str(file), "-", f"cannot read the file: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(str(file), "-", f"not valid TOML: {exc}")]) from None
    return _Loader(file, environ).settings(raw)


class _Loader:
    def __init__(self, file: Path, environ: Mapping[str, str]) -> None:
        self.file = file
        self.base = file.resolve().parent
        self.environ = environ
        self.problems: list[Problem] = []
        self.keys: Keyring | None = None
        self.keys_broken = False

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(str(self.file), key, message))

    def settings(self, raw: dict[str, Any]) -> Settings:
        self.unknown(raw, {"server", "gitlab", "projects", "auth", "notify"}, "")
        self.keyring()
        server = self.server(self.table(raw, "server", ""))
        notify = self.notify(raw, "notify") or Notify()
        gitlab = self.gitlab(raw["gitlab"]) if isinstance(raw.get("gitlab"), dict) else None
        if "gitlab" in raw and not isinstance(raw["gitlab"], dict):
            self.problem("gitlab", "must be a table")
        projects: dict[str, Project] = {}
        for name, table in self.table(raw, "projects", "").items():
            key = f"projects.{name}"
            if not NAME_RE.match(name):
                self.problem(key, "a project name may hold letters, digits, '.', '_' and '-' only")
            elif not isinstance(table, dict):
                self.problem(key, "must be a table")
            elif (project := self.project(name, table, key)) is not None:
                projects[name] = project
        if gitlab is None:
            for project in projects.values():
                if project.gitlab_environments:
                    self.problem(
                        f"projects.{project.name}.gitlab_environments",
                        "needs a [gitlab] section (url and token) to create GitLab deployments",
                    )
        auth = self.auth(self.table(raw, "auth", ""), gitlab)
        if not projects and not self.problems:
            self.problem("projects", "no project is configured")
        if self.problems:
            raise ConfigError(self.problems)
        return Settings(self.file, server, gitlab, projects, auth, notify)

    # -- sections ---------------------------------------------------------

    def server(self, table: dict[str, Any]) -> ServerSettings:
        self.unknown(table, SERVER_KEYS, "server")
        public_url = (
            self.url(table, "public_url", "server", defaults.PUBLIC_URL) or defaults.PUBLIC_URL
        ).rstrip("/")
        redis_env = self.environ.get("PUSHDEPLOY_REDIS_URL") or self.environ.get("REDIS_URL")
        configured = redis_env or table.get("redis_url")
        redis_url = self.string(table, "redis_url", "server", defaults.REDIS_URL)
        redis_url = redis_env or redis_url
        scheme = urlsplit(redis_url).scheme
        if scheme in SENTINEL_SCHEMES:
            try:
                parse_sentinel(redis_url)
            except ValueError as exc:
                self.problem("server.redis_url", str(exc))
        elif scheme not in {"redis", "rediss", "unix"}:
            self.problem(
                "server.redis_url", "must be a redis://, rediss://, unix:// or redis+sentinel:// URL"
            )
        data_dir = self.path(self.string(table, "data_dir", "server", defaults.DATA_DIR))
        admin = self.secret(table, "admin_token", "server") if "admin_token" in table else None
        max_body = self.integer(table, "max_body_bytes", "server", defaults.MAX_BODY_BYTES, minimum=1024)
        keep = self.integer(table, "keep_deployments", "server", defaults.KEEP_DEPLOYMENTS, minimum=1)
        link_days = self.integer(table, "link_ttl_days", "server", defaults.LINK_TTL_DAYS, minimum=1)
        on_down = OnRedisDown.JOURNAL
        try:
            on_down = OnRedisDown(table.get("on_redis_down", "journal"))
        except ValueError:
            self.problem("server.on_redis_down", 'must be "journal" (accept and keep on disk) or "503"')
        interval = self.integer(table, "reconcile_interval", "server", defaults.RECONCILE_INTERVAL, minimum=0)
        grace = self.integer(table, "reconcile_grace", "server", defaults.RECONCILE_GRACE, minimum=0)
        audit_days = self.integer(table, "audit_days", "server", defaults.AUDIT_DAYS, minimum=1)
        metrics_token = self.secret(table, "metrics_token", "server") if "metrics_token" in table else None
        proxies = self.networks(table, "trusted_proxies", "server", defaults.TRUSTED_PROXIES)
        self.target_url_length(public_url, admin is not None, link_days)
        return ServerSettings(
            public_url,
            redis_url,
            data_dir,
            admin,
            max_body,
            bool(configured),
            keep,
            link_days,
            on_down,
            interval,
            grace,
            audit_days,
            metrics_token,
            proxies,
        )

    def target_url_length(self, public_url: str, signed: bool, ttl_days: int) -> None:
        """GitLab refuses a status whose ``target_url`` is over 255 characters: every status would fail."""
        longest = longest_target_url(public_url, signed, ttl_days)
        if len(longest) > TARGET_URL_LIMIT:
            self.problem(
                "server.public_url",
                f"is {len(public_url)} characters: the deployment links posted to GitLab would be "
                f"{len(longest)}, over GitLab's limit of {TARGET_URL_LIMIT} for a commit status's "
                f"target_url; use a shorter public_url "
                f"(at most {len(public_url) - len(longest) + TARGET_URL_LIMIT} characters)",
            )

    def auth(self, table: dict[str, Any], gitlab: GitLabSettings | None) -> AuthSettings:
        self.unknown(table, AUTH_KEYS, "auth")
        max_days = self.integer(table, "token_max_days", "auth", defaults.TOKEN_MAX_DAYS, minimum=1)
        if "gitlab_oauth" not in table:
            return AuthSettings(None, max_days)
        value = table["gitlab_oauth"]
        key = "auth.gitlab_oauth"
        if not isinstance(value, dict):
            self.problem(key, 'must be a table like { client_id = "…", client_secret = "env:…" }')
            return AuthSettings(None, max_days)
        self.unknown(value, OAUTH_KEYS, key)
        client_id = self.string(value, "client_id", key, "")
        secret = self.secret(value, "client_secret", key)
        if "client_secret" not in value:
            self.problem(
                f"{key}.client_secret", "is required: the application's secret (env:, file: or fernet:)"
            )
        if gitlab is None:
            self.problem(
                key,
                "needs a [gitlab] section (url and token): people sign in at that GitLab, and their "
                "rights are read from it with its token",
            )
        if not client_id or secret is None:
            return AuthSettings(None, max_days)
        return AuthSettings(OAuthClient(client_id, secret), max_days)

    def gitlab(self, table: dict[str, Any]) -> GitLabSettings | None:
        self.unknown(table, GITLAB_KEYS, "gitlab")
        url = self.url(table, "url", "gitlab", None)
        token = self.secret(table, "token", "gitlab")
        timeout = self.number(table, "timeout", "gitlab", defaults.GITLAB_TIMEOUT)
        if not url or token is None:
            if "token" not in table:
                self.problem("gitlab.token", "is required in [gitlab]")
            return None
        return GitLabSettings(url.rstrip("/"), token, timeout)

    def project(self, name: str, table: dict[str, Any], key: str) -> Project | None:
        multi = "environments" in table
        allowed = PROJECT_ONLY_KEYS | ENV_KEYS | (set() if multi else FLAT_ONLY_KEYS)
        self.unknown(table, allowed, key)
        gitlab_project = table.get("gitlab_project")
        if isinstance(gitlab_project, int) and not isinstance(gitlab_project, bool):
            gitlab_project = str(gitlab_project)
        if not isinstance(gitlab_project, str) or not gitlab_project.strip():
            self.problem(f"{key}.gitlab_project", "is required: the GitLab path_with_namespace or numeric id")
            gitlab_project = ""
        repo_url = self.repo_url(table, key)
        repo_token = self.secret(table, "repo_token", key)
        if repo_token is not None and urlsplit(repo_url).scheme not in ("http", "https"):
            self.problem(f"{key}.repo_token", "is an HTTPS credential: repo_url must be an http(s):// URL")
        secret_tokens = tuple(self.secrets(table, "secret_token", key, Secret))
        signing_keys = tuple(self.secrets(table, "signing_token", key, SigningKey))
        trigger = Trigger.WEBHOOK
        try:
            trigger = Trigger(table.get("trigger", "webhook"))
        except ValueError:
            self.problem(f"{key}.trigger", 'must be "webhook" or "poll"')
        poll_interval = self.integer(table, "poll_interval", key, defaults.POLL_INTERVAL, minimum=10)
        if trigger is Trigger.WEBHOOK and "secret_token" not in table and "signing_token" not in table:
            self.problem(
                key, "needs secret_token or signing_token (or both): unauthenticated hooks are refused"
            )
        environments: dict[str, Environment] = {}
        if multi:
            envs = table["environments"]
            if not isinstance(envs, dict) or not envs:
                self.problem(f"{key}.environments", "must hold at least one [environments.NAME] table")
                return None
            for env_name, env_table in envs.items():
                env_key = f"{key}.environments.{env_name}"
                if not isinstance(env_table, dict):
                    self.problem(env_key, "must be a table")
                    continue
                self.unknown(env_table, ENV_KEYS, env_key)
                inherited = {k: v for k, v in table.items() if k in ENV_KEYS}
                if "tags" in env_table or "branch" in env_table:
                    # What an environment follows is its own: a project-wide branch or tags is a
                    # default for environments that name neither.
                    inherited.pop("branch", None)
                    inherited.pop("tags", None)
                merged = inherited | env_table
                if "targets" not in merged:  # a project-wide key serves the environments with targets
                    for target_key in ("ssh_key", "known_hosts", "rollout"):
                        if target_key not in env_table:
                            merged.pop(target_key, None)
                env = self.environment(name, env_name, merged, env_key)
                if env:
                    environments[env_name] = env
        else:
            env_name = table.get("environment", "production")
            if not isinstance(env_name, str):
                self.problem(f"{key}.environment", "must be a string")
                env_name = "production"
            env = self.environment(name, env_name, table, key)
            if env:
                environments[env_name] = env
        branches: dict[str, str] = {}
        for env in environments.values():
            if not env.branch:
                continue
            if env.branch in branches:
                self.problem(
                    f"{key}.environments.{env.name}.branch",
                    f"branch {env.branch!r} is already deployed by environment {branches[env.branch]!r}",
                )
            branches[env.branch] = env.name
        gitlab_environments = table.get("gitlab_environments", False)
        if not isinstance(gitlab_environments, bool):
            self.problem(f"{key}.gitlab_environments", "must be true or false")
            gitlab_environments = False
        review = self.review(table["review"], f"{key}.review", environments) if "review" in table else None
        notify = self.notify(table, f"{key}.notify")
        return Project(
            name,
            gitlab_project,
            repo_url,
            secret_tokens,
            signing_keys,
            environments,
            gitlab_environments,
            trigger,
            poll_interval,
            repo_token,
            review,
            notify,
        )

    def review(self, value: Any, key: str, environments: Mapping[str, Environment]) -> Review | None:
        """``[projects.NAME.review]``; every bad key named."""
        if not isinstance(value, dict):
            self.problem(key, 'must be a table like { url = "https://mr-{iid}.review.example.org" }')
            return None
        self.unknown(value, REVIEW_KEYS, key)
        url = self.url(value, "url", key, None)
        if url and "{iid}" not in url:
            self.problem(
                f"{key}.url", "must hold {iid}: each merge request's app needs an address of its own"
            )
        if not any(env.branch for env in environments.values()):
            self.problem(key, "review apps need an environment that deploys a branch (the target branch)")
        deploy = self.commands(value, "deploy", key) if "deploy" in value else None
        stop = self.commands(value, "stop", key)
        health = self.health_check(value.get("health_check"), f"{key}.health_check")
        limit = self.integer(value, "max", key, defaults.REVIEW_MAX, minimum=1)
        flags = {}
        for name, default in (("forks", False), ("drafts", True)):
            flag = value.get(name, default)
            if not isinstance(flag, bool):
                self.problem(f"{key}.{name}", "must be true or false")
                flag = default
            flags[name] = flag
        ttl = self.number(value, "ttl", key, defaults.REVIEW_TTL_DAYS)  # days; fractions allowed
        if not url:
            return None
        return Review(url, deploy, stop, health, limit, flags["forks"], flags["drafts"], ttl)

    def environment(self, project: str, name: str, table: dict[str, Any], key: str) -> Environment | None:
        if not NAME_RE.match(name):
            self.problem(key, f"environment name {name!r} may hold letters, digits, '.', '_' and '-' only")
            return None
        tags = self.tag_glob(table, key)
        if tags and "branch" in table:
            self.problem(key, "an environment deploys a branch or tags, never both: remove one")
        branch = "" if tags else self.string(table, "branch", key, "main")
        if branch.startswith("refs/"):
            self.problem(f"{key}.branch", "give the branch name ('main'), not the full ref")
        health = self.health_check(table.get("health_check"), f"{key}.health_check")
        targets = self.targets(table, key)
        if health is not None and "{host}" in health.url and not targets:
            self.problem(f"{key}.health_check.url", "{host} stands for a target's host: it needs targets")
        if health is not None and "{iid}" in health.url:
            self.problem(
                f"{key}.health_check.url",
                "{iid} stands for a merge request's number: use it in [review] health_check",
            )
        env = table.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            self.problem(f"{key}.env", "must be a table of string values")
            env = {}
        for var in env:
            if var.startswith("PUSHDEPLOY_"):
                self.problem(f"{key}.env.{var}", "PUSHDEPLOY_* variables are set by pushdeploy itself")
        return Environment(
            project=project,
            name=name,
            branch=branch,
            build=self.commands(table, "build", key),
            deploy=self.commands(table, "deploy", key),
            health_check=health,
            keep_releases=self.integer(table, "keep_releases", key, defaults.KEEP_RELEASES, minimum=2),
            timeout=self.integer(table, "timeout", key, defaults.DEPLOY_TIMEOUT, minimum=1),
            env=dict(env),
            run_as=self.run_as(table, key),
            tags=tags,
            targets=targets,
            ssh_key=self.secret(table, "ssh_key", key) if targets else None,
            known_hosts=self.secret(table, "known_hosts", key) if targets else None,
            rollout=self.rollout(table, key),
            protected=self.flag(table, "protected", key),
            recipe=self.recipe_source(table, key),
        )

    def flag(self, table: dict[str, Any], name: str, key: str) -> bool:
        value = table.get(name, False)
        if not isinstance(value, bool):
            self.problem(f"{key}.{name}", "must be true or false")
            return False
        return value

    def recipe_source(self, table: dict[str, Any], key: str) -> RecipeSource:
        try:
            return RecipeSource(table.get("recipe", RecipeSource.REPO.value))
        except ValueError:
            self.problem(f"{key}.recipe", 'must be "repo" (the commit\'s .pushdeploy.toml wins) or "server"')
            return RecipeSource.REPO

    def targets(self, table: dict[str, Any], key: str) -> tuple[Target, ...]:
        """``targets`` with the ``ssh_key`` and ``known_hosts`` they need; every bad value named."""
        if "targets" not in table:
            for name in ("ssh_key", "known_hosts", "rollout"):
                if name in table:
                    self.problem(f"{key}.{name}", "only applies with targets")
            return ()
        value = table["targets"]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.problem(f"{key}.targets", 'must be a list like ["ssh://deploy@web-1/srv/app"]')
            return ()
        found: list[Target] = []
        for index, text in enumerate(value):
            try:
                target = parse_target(text)
            except TargetError as exc:
                self.problem(f"{key}.targets[{index}]", str(exc))
                continue
            if any(t.name == target.name for t in found):
                self.problem(f"{key}.targets[{index}]", f"{target.name} is already a target")
                continue
            found.append(target)
        for name, what in (("ssh_key", "the private key"), ("known_hosts", "the pinned host keys")):
            if name not in table:
                self.problem(f"{key}.{name}", f"is required with targets: {what} (env:, file: or fernet:)")
        return tuple(found)

    def rollout(self, table: dict[str, Any], key: str) -> Rollout:
        value = table.get("rollout", {})
        if not isinstance(value, dict):
            self.problem(f"{key}.rollout", 'must be a table like { batch = 1 } or { batch = "all" }')
            return Rollout()
        self.unknown(value, {"batch"}, f"{key}.rollout")
        batch = value.get("batch", 1)
        if batch == "all":
            return Rollout(0)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            self.problem(f"{key}.rollout.batch", 'must be an integer ≥ 1 or "all"')
            return Rollout()
        return Rollout(batch)

    def notify(self, table: dict[str, Any], key: str) -> Notify | None:
        """A ``notify`` table (None when absent): Apprise URLs, each a secret form, and the events."""
        name = key.rpartition(".")[2]
        if name not in table:
            return None
        value = table[name]
        if not isinstance(value, dict):
            self.problem(key, 'must be a table like { urls = ["env:CHAT_URL"], on = ["failed"] }')
            return None
        self.unknown(value, NOTIFY_KEYS, key)
        urls = tuple(self.secrets(value, "urls", key, Secret))
        for index, url in enumerate(urls):
            problem = notify_url_problem(url.reveal())
            if problem:
                self.problem(f"{key}.urls[{index}]", problem)
        on = value.get("on", sorted(DEFAULT_NOTIFY_ON))
        known = ", ".join(event.value for event in NotifyEvent)
        if not isinstance(on, list) or not all(isinstance(e, str) for e in on):
            self.problem(f"{key}.on", f"must be a list of events ({known})")
            return Notify(urls)
        events: set[NotifyEvent] = set()
        for index, event in enumerate(on):
            try:
                events.add(NotifyEvent(event))
            except ValueError:
                what = f"{event[:40]!r} is not an event (expected one of: {known})"
                self.problem(f"{key}.on[{index}]", what)
        return Notify(urls, frozenset(events))

    def tag_glob(self, table: dict[str, Any], key: str) -> str:
        if "tags" not in table:
            return ""
        value = table["tags"]
        if not isinstance(value, str) or not value.strip():
            self.problem(f"{key}.tags", 'must be a glob on tag names, like "v*"')
            return ""
        if value.startswith("refs/"):
            self.problem(f"{key}.tags", "give a glob on the tag name ('v*'), not on the full ref")
            return ""
        if any(ord(c) < 0x21 or c in "~^:\\" for c in value):
            self.problem(f"{key}.tags", "holds a character no tag name can have (space, ~, ^, :, \\)")
            return ""
        return value

    def run_as(self, table: dict[str, Any], key: str) -> str | None:
        if "run_as" not in table:
            return None
        name = self.string(table, "run_as", key, "")
        if not name:
            return None
        try:
            pwd.getpwnam(name)
        except KeyError:
            self.problem(f"{key}.run_as", f"no user {name!r} on this host")
            return None
        return name

    def health_check(self, value: Any, key: str) -> HealthCheck | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(key, 'must be a table like { url = "http://…", timeout = 30 }')
            return None
        self.unknown(value, {"url", "timeout"}, key)
        url = self.url(value, "url", key, None)
        timeout = self.number(value, "timeout", key, 30.0)
        if not url:  # self.url has already said what is wrong with it
            return None
        return HealthCheck(url, timeout)

    # -- values -----------------------------------------------------------

    def unknown(self, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for name in table:
            if name not in allowed:
                where = f"{prefix}.{name}" if prefix else name
                hint = ", ".join(sorted(allowed))
                self.problem(where, f"unknown key (expected one of: {hint})")

    def table(self, raw: dict[str, Any], name: str, prefix: str) -> dict[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            self.problem(f"{prefix}.{name}" if prefix else name, "must be a table")
            return {}
        return value

    def string(self, table: dict[str, Any], name: str, prefix: str, default: str) -> str:
        value = table.get(name, default)
        if not isinstance(value, str) or not value:
            self.problem(f"{prefix}.{name}", "must be a non-empty string")
            return default
        return value

    def url(self, table: dict[str, Any], name: str, prefix: str, default: str | None) -> str | None:
        if name not in table:
            if default is None:
                self.problem(f"{prefix}.{name}", "is required")
            return default
        value = table[name]
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in {"http", "https"} or not parts.netloc:
            self.problem(f"{prefix}.{name}", "must be an http:// or https:// URL")
            return default
        return str(value)

    def integer(self, table: dict[str, Any], name: str, prefix: str, default: int, minimum: int) -> int:
        value = table.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            self.problem(f"{prefix}.{name}", f"must be an integer ≥ {minimum}")
            return default
        return value

    def networks(
        self, table: dict[str, Any], name: str, prefix: str, default: tuple[str, ...]
    ) -> tuple[str, ...]:
        value = table.get(name, list(default))
        try:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            for item in value:
                ipaddress.ip_network(item, strict=False)
        except ValueError:
            self.problem(f"{prefix}.{name}", "must be a list of IP addresses or networks (CIDR)")
            return default
        return tuple(value)

    def number(self, table: dict[str, Any], name: str, prefix: str, default: float) -> float:
        value = table.get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            unit = "days" if name == "ttl" else "seconds"
            self.problem(f"{prefix}.{name}", f"must be a positive number of {unit}")
            return default
        return float(value)

    def commands(self, table: dict[str, Any], name: str, prefix: str) -> tuple[str, ...]:
        value = table.get(name, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
            self.problem(f"{prefix}.{name}", "must be a list of shell commands")
            return ()
        return tuple(value)

    def path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base / path).resolve()

    def repo_url(self, table: dict[str, Any], key: str) -> str:
        value = table.get("repo_url")
        if not isinstance(value, str) or not value:
            self.problem(
                f"{key}.repo_url", "is required: the URL we fetch from (never taken from the payload)"
            )
            return ""
        if value.startswith("-") or "::" in value.split("/", 1)[0]:
            self.problem(f"{key}.repo_url", "must be an https://, ssh://, git@host: or local path URL")
            return ""
        scheme = urlsplit(value).scheme
        if scheme in {"http", "https", "ssh", "git", "file"} or re.match(r"^[\w.-]+@[\w.-]+:", value):
            return value
        # A local path (the demo, a mirror on disk): relative to the config file.
        return str(self.path(value))

    def keyring(self) -> None:
        """Read ``PUSHDEPLOY_SECRET_KEYS`` once; a malformed key is one problem, not one per value."""
        try:
            self.keys = Keyring.from_environ(self.environ)
        except SecretError as exc:
            self.problem("-", str(exc))
            self.keys_broken = True

    def secret(self, table: dict[str, Any], name: str, prefix: str) -> Secret | None:
        found = self.secrets(table, name, prefix, Secret)
        return found[0] if found else None

    def secrets(self, table: dict[str, Any], name: str, prefix: str, kind: type[S]) -> list[S]:
        if name not in table:
            return []
        value = table[name]
        refs = value if isinstance(value, list) else [value]
        key = f"{prefix}.{name}"
        if not refs or not all(isinstance(r, str) for r in refs):
            self.problem(key, "must be a string or a list of strings (a list allows rotation)")
            return []
        out: list[S] = []
        for index, ref in enumerate(refs):
            where = f"{key}[{index}]" if isinstance(value, list) else key
            try:
                out.append(kind(resolve(ref, self.environ, self.base, self.keys)))
            except NoKeys as exc:
                if not self.keys_broken:  # already reported once, at the key that is malformed
                    self.problem(where, str(exc))
            except SecretError as exc:
                self.problem(where, str(exc))
        return out
