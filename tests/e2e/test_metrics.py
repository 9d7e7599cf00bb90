"""/metrics under two gunicorn workers and a worker process: every scrape tells the same story."""

from __future__ import annotations

import re

import pytest
import requests

from tests.e2e.conftest import Stack
from tests.helpers import push_body, signed_headers, wait_for

pytestmark = pytest.mark.e2e


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # exposition sorts labels
    pattern = (
        rf"^{re.escape(name)}{{{re.escape(wanted)}}} ([0-9.e+-]+)$" if labels else rf"^{name} ([0-9.e+-]+)$"
    )
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_every_delivery_and_deployment(stack: object) -> None:
    made: Stack = stack(build=["true"], deploy=["true"])  # type: ignore[operator]
    made.start_web(workers=2)
    made.start_worker()
    sha = made.repo.commit({"app.txt": "x\n"})
    url = f"{made.base_url}/hooks/gitlab/sample-app"
    body = push_body(sha)
    for _ in range(4):  # one accepted, three duplicates: spread over both gunicorn workers
        requests.post(url, data=body, headers=signed_headers(body, delivery="same"), timeout=5)
    requests.post(url, data=body, headers={**signed_headers(body), "webhook-signature": "v1,AAAA"}, timeout=5)
    other = push_body(sha, branch="feature")
    requests.post(url, data=other, headers=signed_headers(other), timeout=5)

    def scrape() -> str:
        return requests.get(f"{made.base_url}/metrics", timeout=5).text

    wait_for(
        lambda: sample(scrape(), "pushdeploy_deployments_finished_total", state="succeeded") == 1,
        timeout=60,
        what="the deployment to be counted",
    )
    wait_for(
        lambda: sample(scrape(), "pushdeploy_status_posts_total", outcome="posted") == 3,
        timeout=60,
        what="the three statuses to be counted",
    )
    for _ in range(6):  # whichever gunicorn worker answers, the numbers are the same
        text = scrape()
        assert sample(text, "pushdeploy_deliveries_total", outcome="accepted") == 1
        assert sample(text, "pushdeploy_deliveries_total", outcome="duplicate") == 3
        assert sample(text, "pushdeploy_deliveries_total", outcome="ignored") == 1
        assert sample(text, "pushdeploy_verification_failures_total", reason="signature_mismatch") == 1
        assert sample(text, "pushdeploy_queue_depth") == 0
        assert sample(text, "pushdeploy_redis_up") == 1
        assert sample(text, "pushdeploy_phase_duration_seconds_count", phase="build") == 1
        assert sample(text, "pushdeploy_push_to_live_seconds_count", environment="all") == 1
        assert (
            sample(
                text,
                "pushdeploy_deployments",
                project="sample-app",
                environment="production",
                state="succeeded",
            )
            == 1
        )
