"""The ``pushdeploy`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from webhook import console, notify_cli, secrets_cli
from workers import recipe
from workers.config import ConfigError, HealthCheck, RecipeSource, Settings, config_path, load
from workers.migrations import SchemaError
from workers.secrets import new_signing_key

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
CONFIG_HELP = "config file (default: $PUSHDEPLOY_CONFIG or ./pushdeploy.toml)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.handler(args)
        return code
    except ConfigError as exc:
        print(f"pushdeploy: the configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_FAILURE
    except SchemaError as exc:
        print(f"pushdeploy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushdeploy", description="Push-to-deploy for GitLab.")
    parser.add_argument("--config", "-c", metavar="FILE", help=CONFIG_HELP)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: object, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(handler=handler)
        return sp

    sp = command("up", cmd_up, "run web, one worker and (when none answers) an embedded Redis")
    sp.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT for the web server")
    sp.add_argument(
        "--demo", action="store_true", help="use examples/quickstart.toml and deploy its demo repository"
    )
    sp = command("web", cmd_web, "run the web server (gunicorn)")
    sp.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT to listen on")
    sp.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    sp = command("worker", cmd_worker, "run a deployment worker")
    sp.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    sp.add_argument("--name", help="worker name (default: generated)")
    sp = command("check", cmd_check, "validate the configuration and print each webhook URL")
    sp.add_argument(
        "--recipe",
        metavar="PATH",
        help="validate a .pushdeploy.toml instead, as a deployment would (no configuration needed)",
    )
    sp.add_argument("--project", help="with --recipe: check against this project's configured steps")
    sp.add_argument("--environment", "-e", help="with --recipe: show the steps this environment would run")
    command("new-secret", cmd_new_secret, "print a new signing token (whsec_…) for GitLab's webhook settings")
    sp = command("simulate-push", cmd_simulate, "sign and send a push delivery like GitLab does")
    sp.add_argument("project")
    sp.add_argument("--sha", help="commit to deploy (default: the branch head of repo_url)")
    sp.add_argument("--environment", help="environment to push for (default: the first one)")
    sp.add_argument("--url", help="server base URL (default: server.public_url)")
    sp.add_argument("--follow", action="store_true", help="print the deployment's log until it ends")
    sp = command("gitlab-hook", cmd_gitlab_hook, "create or update the project's webhook on GitLab")
    sp.add_argument("project")
    sp.add_argument("--badge", action="store_true", help="also add the deploy badge to the GitLab project")
    sp.add_argument(
        "--rotate-tokens",
        action="store_true",
        help="send the secret and signing tokens again (GitLab never shows them, so changes are unseen)",
    )
    sp = command(
        "reconcile", cmd_reconcile, "deploy branch heads that moved without a deployment (missed webhooks)"
    )
    sp.add_argument("--now", action="store_true", help="ignore the grace period")
    console.add_commands(sub, settings_if_any)
    secrets_cli.add_commands(sub)
    notify_cli.add_commands(sub, settings_from)
    _config_after_commands(parser)
    return parser


def _config_after_commands(parser: argparse.ArgumentParser) -> None:
    """Accept ``--config``/``-c`` after any command too (``pushdeploy worker -c FILE``), as rq does.

    The default is suppressed, so a command without it keeps the one given before the command; given
    after, it wins, since argparse copies the command's options over the global ones.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.add_argument(
                    "--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP
                )
                _config_after_commands(command)


def settings_from(args: argparse.Namespace) -> Settings:
    return load(config_path(args.config, os.environ))


def settings_if_any(args: argparse.Namespace) -> Settings | None:
    """The configuration, or None when none was named and ``./pushdeploy.toml`` does not exist: a
    person calling the API from their own machine with a personal token needs none."""
    if args.config or os.environ.get("PUSHDEPLOY_CONFIG") or config_path(None, {}).exists():
        return settings_from(args)
    return None


def cmd_check(args: argparse.Namespace) -> int:
    from workers.gitlab_projects import credential_in_url, lookup_projects

    if args.recipe:
        return check_recipe(args)
    settings = settings_from(args)
    print(f"{settings.path}: OK")
    print(f"  public URL: {settings.server.public_url}")
    print(f"  Redis:      {_redacted_url(settings.server.redis_url)}")
    print(f"  data dir:   {settings.server.data_dir}")
    gitlab = settings.gitlab.url if settings.gitlab else "none (statuses are recorded locally only)"
    print(f"  GitLab:     {gitlab}")
    print(f"  sign-in:    {_sign_in(settings)}")
    found = {lookup.project: lookup for lookup in lookup_projects(settings)}
    for project in settings.projects.values():
        auth = []
        if project.signing_keys:
            auth.append(f"signing token ×{len(project.signing_keys)}")
        if project.secret_tokens:
            auth.append(f"secret token ×{len(project.secret_tokens)}")
        print(f"project {project.name} (GitLab {project.gitlab_project}; {', '.join(auth)})")
        print(f"  webhook URL: {settings.webhook_url(project.name)}")
        print(f"  deliveries:  {_delivery_rule(project.signing_keys != ())}")
        print(f"  notify:      {_notify_rule(settings, project.name)}")
        lookup = found.get(project.name)
        if lookup is not None and lookup.project_id is not None:
            print(f"  on GitLab:   {lookup.path} (id {lookup.project_id})")
        for env in project.environments.values():
            steps = f"{len(env.build)} build, {len(env.deploy)} deploy step(s)"
            health = f", health check {env.health_check.url}" if env.health_check else ""
            guarded = ", protected (Maintainer)" if env.protected else ""
            timeout = f"timeout {env.timeout} s"
            print(f"  environment {env.name}: {env.follows}, {steps}{health}, {timeout}{guarded}")
        if project.review is not None:
            review = project.review
            forks = "forks too" if review.forks else "no forks"
            drafts = "drafts too" if review.drafts else "no drafts"
            limits = f"at most {review.max} live, idle {review.ttl_days:g} days at most"
            print(f"  review apps: {review.url}, {limits}, {forks}, {drafts}")
            print("               (the webhook must send Merge request events)")
        if lookup is not None and lookup.warning:
            print(f"  warning: {lookup.warning}")
        if credential_in_url(project.repo_url):
            print(
                "  warning: repo_url carries a password or token, which sits in the configuration as "
                "written: drop it from the URL and give it as repo_token (env:, file: or fernet:)"
            )
    return EXIT_OK


def _sign_in(settings: Settings) -> str:
    oauth = settings.auth.gitlab_oauth
    if oauth is None:
        return "admin token only ([auth] gitlab_oauth is not set)"
    callback = f"{settings.server.public_url}/auth/gitlab/callback"
    return f"GitLab (application {oauth.client_id}, redirect URI {callback}); admin token as break glass"


def check_recipe(args: argparse.Namespace) -> int:
    """``check --recipe``: the messages a deployment would fail with, for a merge request or a hook.

    With ``--project`` the recipe is checked against that environment's configuration (its
    timeout is the ceiling) and the steps it would run are printed; without, only the file.
    """
    path = Path(args.recipe)
    environment = None
    if args.project:
        settings = settings_from(args)
        project = settings.projects.get(args.project)
        if project is None:
            print(f"pushdeploy: no project {args.project!r} in {settings.path}", file=sys.stderr)
            return EXIT_USAGE
        name = args.environment or next(iter(project.environments))
        environment = project.environments.get(name)
        if environment is None:
            print(f"pushdeploy: project {project.name} has no environment {name!r}", file=sys.stderr)
            return EXIT_USAGE
    try:
        parsed = recipe.read_file(path, environment.timeout if environment else None)
    except OSError as exc:
        print(f"pushdeploy: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except recipe.RecipeError as exc:
        print(f"{path}: refused, {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{path}: OK")
    if environment is not None:
        if environment.recipe is RecipeSource.SERVER:
            print(
                f'  note: {environment.project}/{environment.name} has recipe = "server": the file is ignored'
            )
        steps = parsed.steps(environment, "repo")
        print(
            f"  steps for {environment.project}/{environment.name} (the server's where the file is silent):"
        )
        _print_steps(steps.public())
        return EXIT_OK
    sets: dict[str, Any] = dict(parsed.keys)
    if args.environment:
        override = parsed.environments.get(args.environment, {})
        env = {**sets.get("env", {}), **override.get("env", {})}
        sets |= {**override, "env": env} if env else override
        print(f"  for environment {args.environment} it sets (the server's steps stand for the rest):")
    else:
        for name, keys in parsed.environments.items():
            print(f"  [environments.{name}] sets {', '.join(sorted(keys)) or 'nothing'}")
    for key in sorted(sets):
        print(f"  {key}: {_shown(sets[key])}")
    return EXIT_OK


def _print_steps(steps: dict[str, object]) -> None:
    for key, value in steps.items():
        print(f"    {key}: {_shown(value)}")


def _shown(value: object) -> str:
    if isinstance(value, tuple | list):
        return " && ".join(str(v) for v in value) or "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_shown(v)}" for k, v in value.items()) if value else "(none)"
    if isinstance(value, HealthCheck):
        return f"{value.url} (timeout {value.timeout:g} s)"
    return "(none)" if value is None else str(value)


def _notify_rule(settings: Settings, project: str) -> str:
    """Where the project's notifications go and on what, each URL named by service and host only."""
    from workers.notifier import shown

    notify = settings.notify_for(project)
    if not notify.urls:
        return "none"
    whose = "own [projects.NAME.notify]" if settings.projects[project].notify else "[notify]"
    events = ", ".join(sorted(str(event) for event in notify.on)) or "no event"
    urls = ", ".join(shown(url.reveal()) for url in notify.urls)
    return f"{urls} ({whose}) on {events}"


def _delivery_rule(signed: bool) -> str:
    if signed:
        return "signed deliveries required: GitLab must sign (19.0+, flag webhook_signing_token)"
    return "token only (X-Gitlab-Token)"


def cmd_gitlab_hook(args: argparse.Namespace) -> int:
    from webhook import hook_report
    from workers import gitlab_hooks
    from workers.forge import ForgeError

    settings = settings_from(args)
    if args.project not in settings.projects:
        print(f"pushdeploy: no project {args.project!r} in {settings.path}", file=sys.stderr)
        return EXIT_USAGE
    if settings.gitlab is None:
        print(f"pushdeploy: {settings.path} has no [gitlab] section (url and token)", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = gitlab_hooks.setup_hook(
            settings, args.project, badge=args.badge, rotate_tokens=args.rotate_tokens
        )
    except ForgeError as exc:
        print(f"pushdeploy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for line in hook_report.describe(report):
        print(line)
    for problem in report.problems:
        print(f"pushdeploy: {problem}", file=sys.stderr)
    return EXIT_FAILURE if report.problems else EXIT_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    from workers import migrations
    from workers.connection import worker_redis
    from workers.reconciler import Reconciler, Verdict

    settings = settings_from(args)
    redis = worker_redis(settings.server.redis_url)
    migrations.ensure(redis)
    findings = Reconciler(settings, redis).run(only_due=False, grace=0 if args.now else None)
    for finding in findings:
        where = f"{finding.project}/{finding.environment}"
        head = finding.head[:12] or "?"
        print(f"{where}: {finding.verdict} (head {head})" + (f": {finding.detail}" if finding.detail else ""))
    return EXIT_FAILURE if any(f.verdict is Verdict.UNKNOWN for f in findings) else EXIT_OK


def cmd_new_secret(args: argparse.Namespace) -> int:
    print(new_signing_key())
    return EXIT_OK


def cmd_web(args: argparse.Namespace) -> int:
    from webhook.launcher import service_env, service_home, web_argv

    settings = settings_from(args)
    env = service_env(settings)
    home = service_home(settings)
    argv = web_argv(args.bind, args.workers, home=home)
    os.chdir(home)  # gunicorn's sys.path[0]: never the directory the operator happened to be in
    os.execve(argv[0], argv, env)  # noqa: S606 (gunicorn replaces this process; argv is ours)
    return EXIT_FAILURE  # not reached


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.worker import run_worker

    settings = settings_from(args)
    run_worker(settings, burst=args.burst, name=args.name)
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from webhook import simulate

    settings = settings_from(args)
    project = settings.projects.get(args.project)
    if project is None:
        print(f"pushdeploy: no project {args.project!r} in {settings.path}", file=sys.stderr)
        return EXIT_USAGE
    environment = project.environments.get(args.environment) if args.environment else None
    environment = environment or next(iter(project.environments.values()))
    try:
        sha = (args.sha or simulate.resolve_sha(project, environment)).lower()
        delivery = simulate.build(settings, project, environment, sha, args.url or settings.server.public_url)
        response = simulate.send(delivery)
    except (LookupError, ValueError, requests.RequestException) as exc:
        print(f"pushdeploy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"POST {delivery.url} → {response.status_code} {response.text.strip()}")
    if response.status_code >= 300:
        return EXIT_FAILURE
    if args.follow and response.status_code == 202:
        return follow(settings, args.url or settings.server.public_url, response.json()["deployment"])
    return EXIT_OK


def follow(settings: Settings, base_url: str, deployment_id: str) -> int:
    """Print the deployment's log until it ends; exit with its result."""
    from webhook.client import ApiFailure, Client

    try:
        return console.follow_log(Client.for_settings(settings, base_url), deployment_id, as_json=False)
    except ApiFailure as exc:
        print(f"pushdeploy: cannot follow {deployment_id}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_up(args: argparse.Namespace) -> int:
    from webhook import demo, launcher, simulate

    if args.demo and not args.config and not os.environ.get("PUSHDEPLOY_CONFIG"):
        args.config = str(Path("examples/quickstart.toml"))
    settings = settings_from(args)
    if args.demo:
        for project in settings.projects.values():
            repo = Path(project.repo_url)
            if repo.is_absolute():
                sha, created = demo.ensure_repository(repo)
                print(f"demo repository {repo} {'created' if created else 'exists'} (head {sha[:12]})")
    try:
        supervisor, _redis_url, source = launcher.up(settings, args.bind)
    except launcher.LaunchError as exc:
        print(f"pushdeploy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    base = f"http://{args.bind}"
    print(f"pushdeploy is up: web {base}  ·  Redis: {source}")
    for project in settings.projects.values():
        print(f"  webhook for {project.name}: {settings.webhook_url(project.name)}")
    if args.demo:
        project = next(iter(settings.projects.values()))
        environment = next(iter(project.environments.values()))
        sha = simulate.resolve_sha(project, environment)
        response = simulate.send(simulate.build(settings, project, environment, sha, base))
        print(f"demo push of {sha[:12]} → {response.status_code} {response.text.strip()}")
        if response.status_code == 202:
            deployment_id = response.json()["deployment"]
            follow(settings, base, deployment_id)
            print(f"  open {_demo_link(settings, base, deployment_id)}")
            print("  to see its steps and log (a signed link, no sign-in); Ctrl-C stops pushdeploy")
    return supervisor.wait()


def _demo_link(settings: Settings, base: str, deployment_id: str) -> str:
    """The demo deployment's page as a signed link: it opens without signing in with a token."""
    from workers import routes
    from workers.links import LinkSigner

    signer = LinkSigner.for_server(settings.server.admin_token, settings.server.link_ttl_days)
    return signer.url(base, deployment_id) if signer else routes.deployment_url(base, deployment_id)


def _redacted_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:****@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


if __name__ == "__main__":
    sys.exit(main())
