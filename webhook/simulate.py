"""``pushdeploy simulate-push``: sign and send a delivery shaped like GitLab's push payload."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests

from webhook.verify import sign
from workers.config import Environment, Project, Settings
from workers.source import Mirror, check_sha

ZERO = "0" * 40


@dataclass(frozen=True)
class Delivery:
    url: str
    headers: dict[str, str]
    body: bytes


def resolve_sha(project: Project, environment: Environment) -> str:
    """The branch head of the configured repository, as GitLab would report it."""
    from pathlib import Path
    from tempfile import TemporaryDirectory

    with TemporaryDirectory() as tmp:
        head = Mirror(
            Path(tmp) / "none.git", project.repo_url, token=project.repo_credential()
        ).branch_head(environment.branch)
    if head is None:
        raise LookupError(f"branch {environment.branch!r} not found in {project.name}'s repository")
    return head


def push_payload(
    project: Project, environment: Environment, sha: str, user: str = "pushdeploy"
) -> dict[str, Any]:
    """A minimal but faithful ``Push Hook`` body (fields as GitLab's documented example)."""
    path = (
        project.gitlab_project
        if not project.gitlab_project.isdigit()
        else f"project-{project.gitlab_project}"
    )
    project_id = int(project.gitlab_project) if project.gitlab_project.isdigit() else 0
    return {
        "object_kind": "push",
        "event_name": "push",
        "before": ZERO,
        "after": sha,
        "ref": f"refs/heads/{environment.branch}",
        "ref_protected": True,
        "checkout_sha": sha,
        "message": None,
        "user_id": 1,
        "user_name": user,
        "user_username": user,
        "user_email": "",
        "project_id": project_id,
        "project": {
            "id": project_id,
            "name": path.rsplit("/", 1)[-1],
            "path_with_namespace": path,
            "default_branch": environment.branch,
            "git_http_url": project.repo_url,
        },
        "commits": [
            {
                "id": sha,
                "message": "Simulated push from pushdeploy\n",
                "title": "Simulated push from pushdeploy",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                "author": {"name": user, "email": ""},
                "added": [],
                "modified": [],
                "removed": [],
            }
        ],
        "total_commits_count": 1,
        "push_options": {},
        "repository": {"name": path.rsplit("/", 1)[-1], "git_http_url": project.repo_url},
    }


def build(
    settings: Settings, project: Project, environment: Environment, sha: str, base_url: str
) -> Delivery:
    """Headers as GitLab sends them, signed with the first configured key and token."""
    check_sha(sha)
    body = json.dumps(push_payload(project, environment, sha)).encode()
    delivery_id = str(uuid.uuid4())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/19.0.0 (pushdeploy simulate-push)",
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Instance": settings.gitlab.url if settings.gitlab else "https://gitlab.invalid",
        "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "Idempotency-Key": delivery_id,
    }
    if project.signing_keys:
        timestamp = int(time.time())
        headers["webhook-id"] = delivery_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = sign(project.signing_keys[0], delivery_id, timestamp, body)
    if project.secret_tokens:
        headers["X-Gitlab-Token"] = project.secret_tokens[0].reveal()
    return Delivery(f"{base_url.rstrip('/')}/hooks/gitlab/{project.name}", headers, body)


def send(delivery: Delivery, timeout: float = 10.0) -> requests.Response:
    return requests.post(delivery.url, data=delivery.body, headers=delivery.headers, timeout=timeout)
