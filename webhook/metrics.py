"""``GET /metrics`` in Prometheus format, correct under several gunicorn workers and worker hosts.

Two sources: per-request counters of this web tier (prometheus_client, in multiprocess mode when
``PROMETHEUS_MULTIPROC_DIR`` is set, as ``pushdeploy web`` does), and the engine's measurements,
read from Redis at scrape time by a collector (queue depth, deployments by state, phase durations,
push to live, status posts), so every web node reports the same engine-wide numbers. Every one of
them is a counter or gauge kept up to date when it changes: a scrape reads a few hashes per
environment, however long the histories are.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from webhook import services
from workers import defaults, schema, telemetry
from workers.config import Settings
from workers.deployments import DeploymentStore
from workers.outbox import DUE_KEY

metrics = Blueprint("metrics", __name__)

DELIVERIES = Counter("pushdeploy_deliveries_total", "Webhook deliveries by outcome", ["outcome"])
VERIFICATION_FAILURES = Counter(
    "pushdeploy_verification_failures_total", "Deliveries refused by verification, by reason", ["reason"]
)


def delivered(outcome: str) -> None:
    DELIVERIES.labels(outcome=outcome).inc()


def refused(code: str, status: int) -> None:
    delivered("refused")
    if status in (401, 403, 404, 413, 415):
        VERIFICATION_FAILURES.labels(reason=code).inc()


class EngineCollector(Collector):
    """The engine's numbers from Redis; a Redis outage shows as ``pushdeploy_redis_up 0``."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("pushdeploy_redis_up", "Whether Redis answered this scrape")
        try:
            families = list(self._families())
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Any]:
        queue = GaugeMetricFamily("pushdeploy_queue_depth", "Deployment jobs waiting in the RQ queue")
        queue.add_metric([], Queue(defaults.DEPLOY_QUEUE, connection=self.redis).count)
        yield queue
        outbox = GaugeMetricFamily("pushdeploy_status_outbox", "Deployments with statuses not yet delivered")
        outbox.add_metric([], self.redis.zcard(DUE_KEY))
        yield outbox
        states = GaugeMetricFamily(
            "pushdeploy_deployments", "Kept deployments by state", labels=["project", "environment", "state"]
        )
        environments = [(p.name, e) for p in self.settings.projects.values() for e in p.environments]
        for (project, environment), tally in DeploymentStore(self.redis).kept(environments).items():
            for state, number in tally.items():
                states.add_metric([project, environment, state], number)
        yield states
        finished = CounterMetricFamily(
            "pushdeploy_deployments_finished", "Deployments ended, by state", labels=["state"]
        )
        for state, number in telemetry.counters(self.redis, "finished").items():
            finished.add_metric([state], number)
        yield finished
        posts = CounterMetricFamily(
            "pushdeploy_status_posts", "Status posts to GitLab, by outcome", labels=["outcome"]
        )
        for outcome, number in telemetry.counters(self.redis, "status_posts").items():
            posts.add_metric([outcome], number)
        yield posts
        notices = CounterMetricFamily(
            "pushdeploy_notifications", "Notifications through Apprise, by outcome", labels=["outcome"]
        )
        for outcome, number in telemetry.counters(self.redis, "notifications").items():
            notices.add_metric([outcome], number)
        yield notices
        pending = GaugeMetricFamily("pushdeploy_notify_outbox", "Notifications not yet sent to every URL")
        pending.add_metric([], self.redis.zcard(schema.NOTIFY_DUE))
        yield pending
        yield self._histogram(
            "pushdeploy_phase_duration_seconds",
            "Time spent in each phase of a deployment",
            "phase",
            telemetry.histograms(self.redis, "phase", telemetry.PHASES),
        )
        yield self._histogram(
            "pushdeploy_push_to_live_seconds",
            "From the delivery to the release serving",
            "environment",
            telemetry.histograms(self.redis, "push_to_live", ["all"]),
        )

    @staticmethod
    def _histogram(
        name: str, text: str, label: str, data: list[telemetry.Histogram]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, text, labels=[label])
        for histogram in data:
            buckets = [(str(bound), float(number)) for bound, number in histogram.buckets]
            buckets.append(("+Inf", float(histogram.count)))
            family.add_metric([histogram.label], buckets, histogram.total)
        return family


def _authorized(settings: Settings) -> bool:
    """Without ``server.metrics_token`` the proxy guards ``/metrics``; with it, the scraper's bearer token."""
    token = settings.server.metrics_token
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.reveal().encode())


@metrics.get("/metrics")
def scrape() -> Response:
    settings, redis = services.current().settings, services.current().redis
    if not _authorized(settings):
        return Response(
            "missing or wrong bearer token (server.metrics_token)\n",
            401,
            {"WWW-Authenticate": 'Bearer realm="metrics"'},
            mimetype="text/plain",
        )
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY  # one process: its own counters are the whole truth
    engine = EngineCollector(settings, redis)
    body = generate_latest(registry) + generate_latest(_Only(engine))
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


class _Only(CollectorRegistry):
    """A registry of one collector, so the engine's families are rendered apart from the web's."""

    def __init__(self, collector: Collector) -> None:
        super().__init__(auto_describe=False)
        self._collector = collector

    def collect(self) -> Iterator[Any]:
        yield from self._collector.collect()
