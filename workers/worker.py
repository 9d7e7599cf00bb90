"""A worker process: an RQ worker for deployments plus the status courier beside it."""

from __future__ import annotations

import logging
import os

from rq import Queue, Worker

from workers import defaults, pipeline
from workers.config import Settings
from workers.connection import worker_redis
from workers.forge import forge_for
from workers.outbox import Courier

MAINTENANCE_INTERVAL = 30
"""Seconds between RQ's registry clean-ups: how soon a dead worker's job is noticed."""

JOB_MONITORING_INTERVAL = 10
"""Seconds between heartbeats of a running job."""


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> bool:
    """Work deployments until stopped (or, with ``burst``, until the queue is empty)."""
    os.environ["PUSHDEPLOY_CONFIG"] = str(settings.path.resolve())
    pipeline.worker_settings.cache_clear()
    pipeline.worker_settings()  # read once here, so forked work-horses inherit it
    redis = worker_redis(settings.server.redis_url)
    courier = Courier(worker_redis(settings.server.redis_url), forge_for(settings.gitlab))
    courier.start()
    worker = Worker(
        [Queue(defaults.DEPLOY_QUEUE, connection=redis)],
        connection=redis,
        name=name,
        maintenance_interval=MAINTENANCE_INTERVAL,
        job_monitoring_interval=JOB_MONITORING_INTERVAL,
    )
    logging.getLogger(__name__).info("worker %s: deploying from queue %s", worker.name, defaults.DEPLOY_QUEUE)
    try:
        return bool(worker.work(burst=burst, logging_level="INFO", with_scheduler=False))
    finally:
        courier.stop()
