"""People for the sign-in and rights tests: GitLab users at each access level, and a config that
lets them sign in (``[auth] gitlab_oauth``) to a project with an unprotected ``staging`` and a
protected ``production``, next to a project only the Maintainer belongs to."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server

from tests.fakegitlab import FakeGitLab
from tests.helpers import ADMIN_TOKEN, project_config, write_config

CLIENT_ID = "pushdeploy-app-id-7d21"
CLIENT_SECRET = "oauth-secret-canary-4b1e90"
GITLAB_TOKEN = "gitlab-token-canary-93ad17"
SAMPLE_ID, OTHER_ID = 42, 43
ROLES = {"guest": 10, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50}
"""User name → access level in ``tools/sample-app``; ``outsider`` is no member, ``blocked`` a
Developer whose GitLab account is blocked, and only ``maintainer`` is in ``tools/other-app``."""


def gitlab() -> FakeGitLab:
    return FakeGitLab({"tools/sample-app": SAMPLE_ID, "tools/other-app": OTHER_ID}, token=GITLAB_TOKEN)


def arrange(fake: FakeGitLab, public_url: str) -> dict[str, int]:
    """Register the application and the users; returns user name → GitLab user id."""
    fake.people.add_app(CLIENT_ID, CLIENT_SECRET, public_url + "/auth/gitlab/callback")
    ids = {}
    for role, level in ROLES.items():
        ids[role] = fake.people.add_user(role)
        fake.people.set_member(SAMPLE_ID, role, level)
    ids["outsider"] = fake.people.add_user("outsider")
    ids["blocked"] = fake.people.add_user("blocked")
    fake.people.set_member(SAMPLE_ID, "blocked", 30)
    fake.people.set_state("blocked", "blocked")
    fake.people.set_member(OTHER_ID, "maintainer", 40)
    return ids


def projects(repo_url: str, **sample: Any) -> dict[str, Any]:
    return {
        "sample-app": project_config(
            repo_url,
            environment=None,
            environments={
                "staging": {"branch": "develop"},
                "production": {"branch": "main", "protected": True},
            },
            **sample,
        ),
        "other-app": project_config(repo_url, gitlab_project="tools/other-app"),
    }


def write(
    path: Path, redis_url: str, data_dir: Path, gitlab_url: str, public_url: str, repo_url: str, **auth: Any
) -> Path:
    config = {
        "server": {
            "public_url": public_url,
            "redis_url": redis_url,
            "data_dir": str(data_dir),
            "admin_token": ADMIN_TOKEN,
        },
        "gitlab": {"url": gitlab_url, "token": GITLAB_TOKEN, "timeout": 5},
        "auth": {"gitlab_oauth": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}, **auth},
        "projects": projects(repo_url),
    }
    return write_config(path, config)


@contextmanager
def serving(build: Callable[[str], Any]) -> Iterator[str]:
    """Serve the WSGI app ``build(base_url)`` makes on a real port in a thread; yields its base URL."""
    holder: dict[str, Any] = {}
    server = make_server("127.0.0.1", 0, lambda environ, start: holder["app"](environ, start), threaded=True)
    base_url = f"http://127.0.0.1:{server.server_port}"
    holder["app"] = build(base_url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base_url
    finally:
        server.shutdown()
        thread.join(5)
