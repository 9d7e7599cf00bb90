"""Operator commands: deployments, show, logs, deploy, rollback, cancel, audit — over the JSON API.

They talk to the server like any client (``--url``, ``PUSHDEPLOY_URL`` or ``public_url``; a personal
token, else the config's admin token), so they work from a laptop, with no configuration file, as well
as on the server. Output is a table for people,
``--json`` for scripts, with colour only on a terminal.

Exit codes: 0 done (or the deployment succeeded), 1 the deployment failed or was canceled, or the
operation was refused (409); 2 bad input or nothing found (400, 404); 3 the server could not be
reached or refused the token, or failed itself (5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from webhook.client import ApiFailure, Client
from workers.config import Settings
from workers.deployments import ID_RE as DEPLOYMENT_ID

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3
URL_HELP = "server base URL (default: $PUSHDEPLOY_URL, else server.public_url)"
NO_ENVIRONMENT = "pushdeploy: without a configuration file, name the environment: --environment ENV"
TERMINAL = {"succeeded", "failed", "canceled"}
ANSI = re.compile(r"\033\[[0-9;]*m")
COLOURS = {
    "succeeded": "32",
    "failed": "31",
    "canceled": "90",
    "running": "33",
    "queued": "33",
    "live": "32",
    "stopping": "33",
    "stopped": "90",
}


def add_commands(sub: Any, settings_from: Callable[[argparse.Namespace], Settings | None]) -> None:
    """Register the operator commands on the CLI's subparsers (they run without a configuration)."""

    def command(
        name: str, handler: Callable[[Client, argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
        parser.add_argument("--url", help=URL_HELP)
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(handler=lambda args: _run(handler, args, settings_from))
        return parser

    sp = command("deployments", cmd_deployments, "list deployments, newest first")
    sp.add_argument("project", nargs="?")
    sp.add_argument("--environment", "-e")
    sp.add_argument("--state", choices=sorted(TERMINAL | {"queued", "running"}))
    sp.add_argument("--sha", help="commit sha or prefix")
    sp.add_argument("--limit", type=int, default=20)
    sp = command("show", cmd_show, "show one deployment with its steps")
    sp.add_argument("deployment")
    sp = command("logs", cmd_logs, "print a deployment's log")
    sp.add_argument("deployment")
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing until the deployment ends")
    sp = command("deploy", cmd_deploy, "deploy a branch, tag or sha now")
    sp.add_argument("project")
    sp.add_argument("--environment", "-e", help="default: the project's first (needed without a config)")
    target = sp.add_mutually_exclusive_group()
    target.add_argument("--ref", help="branch or tag (default: the environment's branch)")
    target.add_argument("--sha")
    sp.add_argument("--wait", action="store_true", help="follow the deployment and exit with its result")
    sp = command("rollback", cmd_rollback, "roll back to an earlier successful deployment")
    sp.add_argument("target", help="a deployment id, or PROJECT to roll back to the previous success")
    sp.add_argument("--environment", "-e", help="with PROJECT: default its first (needed without a config)")
    sp.add_argument("--wait", action="store_true")
    sp = command("cancel", cmd_cancel, "cancel a queued or running deployment")
    sp.add_argument("deployment")
    sp = command("audit", cmd_audit, "read the audit log, newest first: who did what, from where")
    sp.add_argument("--project", "-p")
    sp.add_argument("--environment", "-e")
    sp.add_argument(
        "--action",
        help="sign_in, sign_in_failed, sign_out, deploy, rollback, cancel, token_created, token_revoked, "
        "review_stop, admin_token or config_reload",
    )
    sp.add_argument("--who")
    sp.add_argument("--since", type=_when, help="Unix time, or an age such as 2h, 7d")
    sp.add_argument("--until", type=_when, help="Unix time, or an age such as 30min")
    sp.add_argument("--limit", type=int, default=50, help="entries to print (pages are fetched as needed)")
    review = sub.add_parser(
        "review", help="merge request review apps", description="merge request review apps"
    )
    review.set_defaults(handler=lambda args: (review.print_help(), EXIT_INPUT)[1])
    reviews = review.add_subparsers(title="review commands", metavar="COMMAND")
    for name, handler, text in (
        ("list", cmd_review_list, "list a project's review apps, most recently deployed first"),
        ("stop", cmd_review_stop, "stop a review app: review.stop runs, its directories are removed"),
    ):
        sp = reviews.add_parser(name, help=text, description=text)
        sp.add_argument("--url", help=URL_HELP)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.add_argument("project")
        if name == "stop":
            sp.add_argument("iid", help="the merge request's number (its !iid)")
        sp.set_defaults(handler=lambda args, h=handler: _run(h, args, settings_from))


def _run(
    handler: Callable[[Client, argparse.Namespace], int],
    args: argparse.Namespace,
    settings_from: Callable[[argparse.Namespace], Settings | None],
) -> int:
    settings = settings_from(args)
    args.settings = settings
    try:
        client = Client.for_settings(settings, args.url)
        return handler(client, args)
    except ApiFailure as exc:
        print(f"pushdeploy: {exc}", file=sys.stderr)
        if exc.status in (0, 401) or exc.status >= 500:
            return EXIT_UNREACHABLE
        return EXIT_FAILED if exc.status == 409 else EXIT_INPUT


def cmd_deployments(client: Client, args: argparse.Namespace) -> int:
    found = client.get(
        "/deployments",
        project=args.project,
        environment=args.environment,
        state=args.state,
        sha=args.sha,
        limit=args.limit,
    )["deployments"]
    if args.json:
        return _json(found)
    rows = [
        [
            d["id"],
            f"{d['project']}/{d['environment']}",
            _commit(d),
            _state(d["state"]),
            _duration(d),
            _ago(d["created_at"]),
            _triggered_by(d),
        ]
        for d in found
    ]
    table(["ID", "ENVIRONMENT", "COMMIT", "STATE", "DURATION", "CREATED", "TRIGGER"], rows)
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    deployment = client.get(f"/deployments/{args.deployment}")
    if args.json:
        return _json(deployment)
    where = f"{deployment['project']}/{deployment['environment']}"
    print(f"{deployment['id']}  {where}  {_state(deployment['state'])}")
    if deployment["reason"]:
        print(f"  reason:   {deployment['reason']}")
    print(
        f"  commit:   {deployment['sha'] or '(resolving)'} on {deployment['ref'].removeprefix('refs/heads/')}"
    )
    if deployment.get("commit_title"):
        author = deployment.get("commit_author")
        print(f"  title:    {deployment['commit_title']}" + (f" ({author})" if author else ""))
    print(f"  trigger:  {_triggered_by(deployment)}")
    print(f"  created:  {_ago(deployment['created_at'])}   duration: {_duration(deployment)}")
    print(f"  page:     {deployment['url']}")
    if deployment.get("status_problem"):
        print(f"  status:   {deployment['status_problem']}")
    _print_recipe(deployment)
    rows = [
        [
            f"{s['phase']} {s['index']}",
            s["command"],
            "timeout" if s["timed_out"] else str(s["exit_code"]),
            f"{s['duration']:.2f} s",
        ]
        for s in deployment["steps"]
    ]
    hosts = [[h["host"], h["state"], h["detail"]] for h in deployment.get("hosts", [])]
    if hosts:
        print()
        table(["HOST", "STATE", "DETAIL"], hosts)
    if rows:
        print()
        table(["STEP", "COMMAND", "EXIT", "DURATION"], rows)
    return _exit_for(deployment["state"])


def _print_recipe(deployment: dict[str, Any]) -> None:
    """Which recipe ran (the commit's ``.pushdeploy.toml`` or the server's) and its steps."""
    if not deployment.get("recipe"):
        return
    source = deployment["recipe"]
    shown = "server" if source == "server" else f".pushdeploy.toml at {source.removeprefix('repo@')}"
    steps = deployment.get("effective_steps") or {}
    refused = not steps and deployment["state"] in TERMINAL
    print(f"  recipe:   {shown}" + (" (refused: no step ran)" if refused else ""))
    for key in ("build", "deploy"):
        for command in steps.get(key) or []:
            print(f"    {key}: {command}")
    if steps.get("health_check"):
        print(f"    health check: {steps['health_check']['url']}")
    if "timeout" in steps:
        print(f"    timeout: {steps['timeout']} s")


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    if not args.follow:
        answer = client.get(f"/deployments/{args.deployment}/log")
        for line in answer["lines"]:
            _print_line(line, args.json)
        return EXIT_OK
    return follow_log(client, args.deployment, args.json)


def follow_log(client: Client, deployment_id: str, as_json: bool) -> int:
    """Print lines as they come; reconnect after the server's stream limit; exit with the result."""
    after = "-"
    while True:
        for record in client.stream(f"/deployments/{deployment_id}/log", follow="1", after=after):
            if "state" in record and "text" not in record:
                if record["state"] in TERMINAL:
                    if not as_json:
                        print(f"deployment {_state(record['state'])}")
                    return _exit_for(record["state"])
                after = record.get("reconnect_after", after)
                break
            after = record["id"]
            _print_line(record, as_json)


def cmd_deploy(client: Client, args: argparse.Namespace) -> int:
    settings: Settings | None = args.settings
    if settings is None and not args.environment:
        print(NO_ENVIRONMENT, file=sys.stderr)
        return EXIT_INPUT
    project = settings.projects.get(args.project) if settings else None
    environment = args.environment or (next(iter(project.environments)) if project else "production")
    body = {k: v for k, v in (("ref", args.ref), ("sha", args.sha)) if v}  # the server records who
    queued = client.post(f"/projects/{args.project}/environments/{environment}/deployments", body)
    return _queued(client, args, queued)


def cmd_rollback(client: Client, args: argparse.Namespace) -> int:
    settings: Settings | None = args.settings
    if settings and args.target in settings.projects:
        environment = args.environment or next(iter(settings.projects[args.target].environments))
        queued = client.post(f"/projects/{args.target}/environments/{environment}/rollback")
    elif not settings and not DEPLOYMENT_ID.fullmatch(args.target):  # no configuration: a project
        if not args.environment:
            print(NO_ENVIRONMENT, file=sys.stderr)
            return EXIT_INPUT
        queued = client.post(f"/projects/{args.target}/environments/{args.environment}/rollback")
    else:
        queued = client.post(f"/deployments/{args.target}/rollback")
    return _queued(client, args, queued)


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    answer = client.post(f"/deployments/{args.deployment}/cancel")
    if args.json:
        return _json(answer)
    if answer["state"] == "canceled":
        print(f"{args.deployment}: canceled")
    else:
        print(f"{args.deployment}: running; its worker was asked to stop (it ends canceled within seconds)")
    return EXIT_OK


def cmd_audit(client: Client, args: argparse.Namespace) -> int:
    filters = {
        "project": args.project,
        "environment": args.environment,
        "action": args.action,
        "who": args.who,
        "since": args.since,
        "until": args.until,
    }
    entries: list[dict[str, Any]] = []
    cursor = None
    while len(entries) < args.limit:
        page = client.get("/audit", **filters, cursor=cursor, limit=min(500, args.limit - len(entries)))
        entries += page["entries"]
        cursor = page.get("next")
        if not cursor:
            break
    if args.json:
        return _json(entries)
    rows = [
        [
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])),
            e["who"] or "–",
            e["via"] or "–",
            e["action"],
            "/".join(p for p in (e["project"], e["environment"]) if p) or "–",
            e["deployment"] or "–",
            e["from"] or "–",
            e["detail"],
        ]
        for e in entries
    ]
    table(["WHEN", "WHO", "VIA", "ACTION", "WHERE", "DEPLOYMENT", "FROM", "DETAIL"], rows)
    return EXIT_OK


def _when(text: str) -> float:
    """A Unix time, or an age (``90s``, ``30min``, ``2h``, ``7d``) counted back from now."""
    found = re.fullmatch(r"(\d+)(s|min|h|d)", text)
    if found:
        return time.time() - int(found.group(1)) * {"s": 1, "min": 60, "h": 3600, "d": 86400}[found.group(2)]
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("give a Unix time or an age such as 2h or 7d") from None


def _triggered_by(deployment: dict[str, Any]) -> str:
    """``push by X``, ``deploy by Y``, ``rollback by Z``, and who canceled (from older servers too)."""
    text: str = deployment.get("triggered_by") or (
        deployment["trigger"] + (f" by {deployment['pusher']}" if deployment["pusher"] else "")
    )
    return text + (f", canceled by {deployment['canceled_by']}" if deployment.get("canceled_by") else "")


def cmd_review_list(client: Client, args: argparse.Namespace) -> int:
    found = client.get(f"/projects/{args.project}/reviews")["reviews"]
    if args.json:
        return _json(found)
    rows = [
        [
            f"!{r['iid']}",
            r["branch"],
            r["sha"][:8] or "…",
            r["url"],
            _state(r["state"]),
            _ago(r["updated_at"]),
            r["reason"] if r["state"] != "live" else "",  # why it stopped, and who stopped it by hand
        ]
        for r in found
    ]
    table(["MR", "BRANCH", "COMMIT", "URL", "STATE", "UPDATED", "WHY"], rows)
    return EXIT_OK


def cmd_review_stop(client: Client, args: argparse.Namespace) -> int:
    if not args.iid.lstrip("!").isdigit():
        print(f"pushdeploy: {args.iid!r} is not a merge request number", file=sys.stderr)
        return EXIT_INPUT
    args.iid = args.iid.lstrip("!")
    answer = client.post(f"/projects/{args.project}/reviews/{args.iid}/stop")
    if args.json:
        return _json(answer)
    print(f"{args.project}/{answer['stopping']}: stopping (a worker runs review.stop and removes it)")
    return EXIT_OK


def _queued(client: Client, args: argparse.Namespace, queued: dict[str, Any]) -> int:
    if args.json and not args.wait:
        return _json(queued)
    if not args.json:
        print(f"queued {queued['deployment']}: {queued['url']}")
    return follow_log(client, queued["deployment"], args.json) if args.wait else EXIT_OK


# -- output ---------------------------------------------------------------------------


def colour(text: str, code: str, stream: TextIO | None = None) -> str:
    """ANSI colour only on a terminal, and never when NO_COLOR is set."""
    stream = stream or sys.stdout
    if not stream.isatty() or os.environ.get("NO_COLOR"):
        return text
    return f"\033[{code}m{text}\033[0m"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    # Widths and padding by the visible text, so colour codes do not skew the columns.
    widths = [max(len(_visible(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        print(
            "  ".join(
                cell + " " * (w - len(_visible(cell))) for cell, w in zip(row, widths, strict=True)
            ).rstrip()
        )


def _visible(text: str) -> str:
    return ANSI.sub("", text)


def _state(state: str) -> str:
    return colour(state, COLOURS.get(state, "0"))


def _print_line(line: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(line), flush=True)
        return
    stamp = time.strftime("%H:%M:%S", time.localtime(line["at"]))
    text = line["text"]
    if line["kind"] == "step":
        text = colour(f"▶ {text}", "1;36")
    elif line["kind"] == "info":
        text = colour(text, "33")
    print(f"{stamp} {text}", flush=True)


def _json(data: Any) -> int:
    print(json.dumps(data, indent=2))
    return EXIT_OK


def _exit_for(state: str) -> int:
    return EXIT_OK if state in {"succeeded", "queued", "running"} else EXIT_FAILED


def _duration(deployment: dict[str, Any]) -> str:
    if not deployment.get("started_at"):
        return "–"
    end = deployment.get("finished_at") or time.time()
    return f"{end - deployment['started_at']:.1f} s"


def _ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


COMMIT_COLUMN = 48
"""Characters of sha, title and author a history row shows, as GitLab's commit lists cut titles."""


def _commit(deployment: dict[str, Any]) -> str:
    """The short sha with the commit's title and author, cut to fit a table column."""
    text = deployment["sha"][:8] or "…"
    if deployment.get("commit_title"):
        text += f" {deployment['commit_title']}"
    if deployment.get("commit_author"):
        text += f" ({deployment['commit_author']})"
    return text if len(text) <= COMMIT_COLUMN else text[: COMMIT_COLUMN - 1] + "…"
