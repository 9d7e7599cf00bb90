"""``pushdeploy notify test PROJECT``: send a test message to a project's notification URLs now.

It sends from the machine it runs on, straight through Apprise (not through the outbox), so an
operator sees at once whether each URL works. Each URL is named by its service and host only:
the rest of an Apprise URL is where services keep their tokens.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from workers.config import Settings
from workers.notifier import send_test

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_commands(sub: Any, settings_from: Callable[[argparse.Namespace], Settings]) -> None:
    """Register ``notify test`` on the CLI's subparsers."""
    text = "notifications: send a test message"
    group: argparse.ArgumentParser = sub.add_parser("notify", help=text, description=text)
    group.set_defaults(handler=lambda _args: _usage(group))
    commands = group.add_subparsers(title="notify commands", metavar="COMMAND")
    help_text = "send a test message to each of the project's notification URLs and report each outcome"
    sp: argparse.ArgumentParser = commands.add_parser("test", help=help_text, description=help_text)
    sp.add_argument("project")
    sp.set_defaults(handler=lambda args: cmd_test(args, settings_from(args)))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    if args.project not in settings.projects:
        print(f"pushdeploy: no project {args.project!r} in {settings.path}", file=sys.stderr)
        return EXIT_USAGE
    notify = settings.notify_for(args.project)
    whose = (
        "its own [projects.NAME.notify]"
        if settings.projects[args.project].notify
        else "the server's [notify]"
    )
    if not notify.urls:
        print(f"{args.project}: no notification URLs ({whose} has none)", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.project}: {len(notify.urls)} URL(s) from {whose}")
    results = send_test(settings, args.project)
    for index, result in enumerate(results):
        outcome = "sent" if result.ok else f"FAILED: {result.detail}"
        print(f"  [{index}] {result.url}: {outcome}")
    failed = sum(1 for result in results if not result.ok)
    if failed:
        print(f"{failed} of {len(results)} URL(s) did not take the test message", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
