"""Deliveries as GitLab sends them: a ~7 KB push body and its headers, signed per delivery id.

wrk's Lua has no HMAC, so the ids and their Standard Webhooks signatures are made here, written
one per line, and ``wrk.lua`` cycles through them: every request a server sees is a new delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook.verify import sign
from workers.secrets import SigningKey

# Credentials of the benchmark's own throw-away receivers, like the test suite's.
SIGNING_TOKEN = "whsec_YmVuY2gtc2lnbmluZy1rZXktMzItYnl0ZXMtbG9uZyE="  # noqa: S105
SECRET_TOKEN = "bench-secret-token-4d1f0c"  # noqa: S105
ADNANH_SECRET = "bench-adnanh-hmac-secret-8e2a"  # noqa: S105
"""adnanh/webhook's ``payload-hmac-sha256`` rule signs the body alone, with its own secret."""

ADNANH_HEADER = "X-Payload-Signature"
PAYLOAD_BYTES = 7 * 1024
SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "samples" / "push_hook.json"


def push_body(sha: str, branch: str, gitlab_project: str, size: int = PAYLOAD_BYTES) -> bytes:
    """GitLab's documented push example, retargeted, with commits added until it is ``size`` bytes.

    GitLab sends compact JSON and lists up to 20 commits oldest first, the head last.
    """
    payload: dict[str, Any] = json.loads(SAMPLE.read_text())
    payload.update(before="0" * 40, after=sha, checkout_sha=sha, ref=f"refs/heads/{branch}", project_id=42)
    payload["project"].update(id=42, path_with_namespace=gitlab_project)
    template = payload["commits"][0]
    commits: list[dict[str, Any]] = []
    while True:
        index = len(commits)
        fake = hashlib.sha1(f"{sha}:{index}".encode()).hexdigest()  # noqa: S324 - an id, not security
        commits.append(dict(template, id=fake, message=f"Change {index}: {template['message']}",
                            url=f"http://gitlab.example.com/{gitlab_project}/-/commit/{fake}"))
        head = dict(template, id=sha, message="Deploy me\n", title="Deploy me",
                    url=f"http://gitlab.example.com/{gitlab_project}/-/commit/{sha}")
        payload["commits"] = [*commits, head]
        payload["total_commits_count"] = len(payload["commits"])
        body = json.dumps(payload, separators=(",", ":")).encode()
        if len(body) >= size or index >= 19:
            return body


def static_headers(body: bytes) -> dict[str, str]:
    """The headers every delivery carries, whoever receives it (GitLab's, plus adnanh's body HMAC)."""
    body_mac = hmac.new(ADNANH_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/19.0.0",
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Webhook-UUID": "a1e9e8dd-76ee-4c8f-852a-a8df0a087bdd",
        "X-Gitlab-Instance": "https://gitlab.example.com",
        "X-Gitlab-Token": SECRET_TOKEN,
        ADNANH_HEADER: f"sha256={body_mac}",
    }


def delivery_headers(body: bytes, delivery: str | None = None, timestamp: int | None = None,
                     key: str = SIGNING_TOKEN) -> dict[str, str]:
    """All headers of one delivery: a fresh id, signed over id, timestamp and body."""
    delivery = delivery or str(uuid.uuid4())
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        **static_headers(body),
        "X-Gitlab-Event-UUID": delivery,
        "Idempotency-Key": delivery,
        "webhook-id": delivery,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(SigningKey(key), delivery, ts, body),
    }


@dataclass(frozen=True)
class WrkInputs:
    """Files ``wrk.lua`` reads: the body, the fixed headers, and one signed delivery per line."""

    body: Path
    headers: Path
    deliveries: Path
    count: int


def write_wrk_inputs(directory: Path, body: bytes, count: int) -> WrkInputs:
    """``count`` deliveries, each ``id timestamp signature``; one HMAC over the body per line."""
    directory.mkdir(parents=True, exist_ok=True)
    key = SigningKey(SIGNING_TOKEN)
    ts = int(time.time())
    lines = []
    for _ in range(count):
        delivery = uuid.uuid4().hex
        lines.append(f"{delivery} {ts} {sign(key, delivery, ts, body)}\n")
    inputs = WrkInputs(directory / "body.json", directory / "headers.txt", directory / "deliveries.txt",
                       count)
    inputs.body.write_bytes(body)
    inputs.headers.write_text("".join(f"{k}: {v}\n" for k, v in static_headers(body).items()))
    inputs.deliveries.write_text("".join(lines))
    return inputs
