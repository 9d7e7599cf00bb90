"""``/metrics`` behind ``server.metrics_token`` when one is set; open (to the proxy's rules) when not."""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis

from webhook.app import create_app
from workers.config import Settings

METRICS_TOKEN = "metrics-token-canary-7f31"


def test_metrics_need_the_bearer_token_when_one_is_set(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    settings = make_settings(server={"metrics_token": METRICS_TOKEN})
    client = create_app(settings, redis).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"pushdeploy_" not in refused.data and METRICS_TOKEN.encode() not in refused.data
    allowed = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert allowed.status_code == 200 and b"pushdeploy_redis_up 1.0" in allowed.data
    assert METRICS_TOKEN in [s.reveal() for s in settings.all_secrets()]  # masked in logs like the others
    for public in ("/healthz", "/badges/sample-app/production.svg"):
        assert client.get(public).status_code == 200, public


def test_without_a_token_metrics_stay_open(make_settings: Callable[..., Settings], redis: Redis) -> None:
    client = create_app(make_settings(), redis).test_client()
    assert client.get("/metrics").status_code == 200
