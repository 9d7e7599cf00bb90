"""Real parts for tests: git repositories on disk, config files, signed deliveries."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from webhook.verify import sign
from workers.secrets import SigningKey

SIGNING_TOKEN = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo="
SECRET_TOKEN = "hook-secret-canary-7f3a9b"
ADMIN_TOKEN = "admin-token-canary-51c2e8"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def git(*args: str, cwd: Path) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), **GIT_ENV}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


class GitRepo:
    """A bare 'remote' repository and a working clone that commits and pushes to it."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.branch = branch
        self.work.mkdir(parents=True)
        git("init", "--quiet", "--bare", "--initial-branch", branch, str(self.bare), cwd=root)
        git("init", "--quiet", "--initial-branch", branch, ".", cwd=self.work)
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    @property
    def url(self) -> str:
        return str(self.bare)

    def commit(self, files: dict[str, str], message: str = "change", branch: str | None = None) -> str:
        branch = branch or self.branch
        current = git("symbolic-ref", "--short", "HEAD", cwd=self.work)
        if current != branch:
            git("checkout", "--quiet", "-B", branch, cwd=self.work)
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if text.startswith("#!"):
                path.chmod(0o755)
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def toml_text(config: dict[str, Any]) -> str:
    """Enough TOML for our config shape: tables of scalars, lists and inline tables."""
    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not (isinstance(v, dict) and _is_table(k))}
        lines.append(f"[{prefix}]")
        for name, value in scalars.items():
            lines.append(f"{json.dumps(name)} = {toml_value(value)}")
        for name, value in body.items():
            if isinstance(value, dict) and _is_table(name):
                for sub, sub_body in value.items():
                    table(f"{prefix}.{name}.{json.dumps(sub)}", sub_body)

    for section, body in config.items():
        if section == "projects":
            for name, project in body.items():
                table(f"projects.{json.dumps(name)}", project)
        else:
            table(section, body)
    return "\n".join(lines) + "\n"


def _is_table(name: str) -> bool:
    return name == "environments"


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(toml_text(config))
    return path


def project_config(repo_url: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "gitlab_project": "tools/sample-app",
        "repo_url": repo_url,
        "secret_token": SECRET_TOKEN,
        "signing_token": SIGNING_TOKEN,
        "branch": "main",
        "environment": "production",
        "build": ["./build.sh"],
        "deploy": ["echo deployed $PUSHDEPLOY_SHA"],
        "timeout": 60,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def push_body(
    sha: str, branch: str = "main", project: str = "tools/sample-app", message: str = "change"
) -> bytes:
    payload = {
        "object_kind": "push",
        "event_name": "push",
        "before": "0" * 40,
        "after": sha,
        "ref": f"refs/heads/{branch}",
        "checkout_sha": sha,
        "user_username": "alice",
        "user_name": "Alice",
        "project_id": 42,
        "project": {"id": 42, "path_with_namespace": project},
        "commits": [{"id": sha, "message": message}],
        "total_commits_count": 1,
    }
    return json.dumps(payload).encode()


def signed_headers(
    body: bytes,
    signing_token: str | None = SIGNING_TOKEN,
    secret_token: str | None = SECRET_TOKEN,
    event: str = "Push Hook",
    delivery: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    delivery = delivery or str(uuid.uuid4())
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": event,
        "Idempotency-Key": delivery,
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
    }
    if signing_token:
        ts = int(time.time()) if timestamp is None else timestamp
        headers["webhook-id"] = delivery
        headers["webhook-timestamp"] = str(ts)
        headers["webhook-signature"] = sign(SigningKey(signing_token), delivery, ts, body)
    if secret_token:
        headers["X-Gitlab-Token"] = secret_token
    return headers


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Health:
    """A real HTTP server on loopback whose answer a test sets: the app behind a health check."""

    def __init__(self) -> None:
        import http.server
        import threading

        owner = self
        self.code = 200

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(owner.code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/healthz"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def use_engine(settings: Any, redis: Any, monkeypatch: Any) -> Any:
    """Install the engine ``pushdeploy worker`` would build, for jobs a test runs in its own process."""
    from workers import engine

    built = engine.Engine.build(settings, redis)
    monkeypatch.setattr(engine, "_installed", built)
    return built


def csrf_token(html: str) -> str:
    """The CSRF token a page's forms carry (Flask-WTF's ``csrf_token`` field)."""
    import re

    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def admin_sign_in(client: Any, token: str = ADMIN_TOKEN) -> Any:
    """Sign a Flask test client in through the break-glass form, with the form's CSRF token."""
    form = client.get("/login/admin").get_data(as_text=True)
    return client.post("/login/admin", data={"token": token, "csrf_token": csrf_token(form)})


def session_csrf(client: Any) -> str:
    """The CSRF token of a Flask test client's session, read from the overview's sign-out form."""
    return csrf_token(client.get("/").get_data(as_text=True))


def sign_in_session(session: Any, base_url: str, token: str = ADMIN_TOKEN) -> Any:
    """Sign a ``requests.Session`` in through the admin-token form, as a browser would."""
    form = session.get(f"{base_url}/login/admin", timeout=5)
    return session.post(
        f"{base_url}/login/admin",
        data={"token": token, "csrf_token": csrf_token(form.text)},
        headers={"Referer": f"{base_url}/login/admin"},
        timeout=5,
    )
