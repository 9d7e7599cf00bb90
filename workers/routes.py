"""The web tier's public paths, in one place: the engine links to them, the web tier serves them.

A commit status's ``target_url``, the webhook URL ``gitlab-hook`` writes into GitLab and a badge's
address are all built by the engine; the Flask routes that answer them use the same rules, so a
path can never be renamed on one side only.
"""

from __future__ import annotations

HOOK_PREFIX = "/hooks/gitlab/"
HOOK = HOOK_PREFIX + "<project>"
DEPLOYMENT = "/deployments/<deployment_id>"
PROJECT = "/projects/<project>"
BADGE_SVG = "/badges/<project>/<environment>.svg"
BADGE_JSON = "/badges/<project>/<environment>.json"
REVIEW_BADGE_SVG = "/badges/<project>/review/<iid>.svg"
REVIEW_BADGE_JSON = "/badges/<project>/review/<iid>.json"
"""A review app's badge: its environment, ``review/<iid>``, holds a ``/``."""
API_PREFIX = "/api/v1"


def hook_url(public_url: str, project: str) -> str:
    """Where GitLab delivers a project's webhooks."""
    return f"{public_url}{HOOK_PREFIX}{project}"


def deployment_url(public_url: str, deployment_id: str) -> str:
    """A deployment's page (private; GitLab gets a signed form of it, see ``workers.links``)."""
    return f"{public_url}/deployments/{deployment_id}"


def project_url(public_url: str, project: str) -> str:
    return f"{public_url}/projects/{project}"


def badge_url(public_url: str, project: str, environment: str, kind: str = "svg") -> str:
    return f"{public_url}/badges/{project}/{environment}.{kind}"
