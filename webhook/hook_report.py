"""What ``pushdeploy gitlab-hook`` prints about the webhook it set up: the CLI's words for a report.

The engine (``workers.gitlab_hooks``) decides and does; this module only says it.
"""

from __future__ import annotations

from typing import Any

from workers.gitlab_hooks import HookReport, TokenAction


def describe(report: HookReport) -> list[str]:
    """The lines ``pushdeploy gitlab-hook`` prints: what changed, then what it could not check.

    ``report.problems`` are not among them: the command prints those on standard error and fails.
    """
    lines = [f"webhook {report.action} on GitLab project {report.gitlab_project} (hook {report.hook_id})"]
    lines.append(f"  url: {report.url}")
    events = []
    if report.push_events:
        events.append(f"push (branch filter {report.branch_filter}, {report.branch_filter_strategy})")
    if report.tag_push_events:
        events.append("tag push")
    if report.merge_requests_events:
        events.append("merge request")
    lines.append(f"  events: {' and '.join(events)}, nothing else")
    lines.append("  SSL verification: on")
    for change in report.changes:
        lines.append(f"  changed {change.name}: {_shown(change.old)} -> {_shown(change.new)}")
    lines.append(f"  secret token: {_token_line(report.secret_token, 'secret_token')}")
    lines.append(f"  signing token: {_token_line(report.signing_token, 'signing_token')}")
    lines.extend(f"  note: {note}" for note in report.notes)
    for badge in report.badges:
        lines.append(f"  badge {badge.environment}: {badge.action} ({badge.image_url})")
    return lines


TOKEN_LINES = {
    TokenAction.SET: "set",
    TokenAction.RESENT: "sent again (GitLab never shows tokens; it now holds the configured one)",
    TokenAction.KEPT: "present on GitLab, not compared (GitLab never shows it); "
    "after changing {key}, run with --rotate-tokens",
    TokenAction.CLEARED: "removed from GitLab (the project has no {key})",
    TokenAction.NONE: "none (the project has no {key})",
    TokenAction.NOT_KEPT: "NOT KEPT by GitLab: deliveries will be refused until it signs (see below)",
}


def _token_line(action: TokenAction, key: str) -> str:
    return TOKEN_LINES[action].format(key=key)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "(none)" if value in (None, "") else f"'{value}'"
