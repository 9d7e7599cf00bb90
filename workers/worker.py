"""A worker process: an RQ worker for deployments, plus the status courier, the notifier and the
lane janitor."""

from __future__ import annotations

import logging
import socket
import threading

from redis import Redis
from rq import Queue, Worker

from workers import audit, defaults, engine, migrations, schema
from workers.config import Settings
from workers.connection import worker_redis
from workers.engine import Engine
from workers.forge import forge_for
from workers.intake import Intake
from workers.lanes import Lane
from workers.lifecycle import start_waiting
from workers.notifier import Notifier
from workers.outbox import Courier
from workers.reconciler import Reconciler
from workers.recovery import horse_killed
from workers.review_requests import ReviewDesk
from workers.reviews import ReviewStore

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 20
"""Seconds between RQ's registry clean-ups: how soon another worker notices a dead one's job."""

JOB_MONITORING_INTERVAL = 5
"""Seconds between heartbeats of a running job; a dead worker's job expires 60 s after its last."""

WORKER_TTL = 35
"""RQ blocks on dequeue for this less 15 s, and only cleans registries between dequeues: keeping it
short is what makes the maintenance interval real on an idle worker. Dead-worker detection is then
at most heartbeat (5 s) + 60 s + 20 s + the dequeue wait (20 s): under two minutes."""

REVIEW_CHECK_INTERVAL = 60
"""Seconds between looks for idle review apps (``review.ttl`` is counted in days)."""

JANITOR_INTERVAL = 5.0
"""Seconds between the janitor's rounds: resume stalled lanes, and reconcile environments that are due
(each environment's own interval is kept in Redis, so many workers check it once)."""


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> bool:
    """Work deployments until stopped (or, with ``burst``, until the queue is empty)."""
    redis = worker_redis(settings.server.redis_url)
    migrations.ensure(redis)  # before anything is read or written: migrate, or refuse a newer layout
    audit.config_loaded(redis, settings.server.audit_days, settings.path, f"worker on {socket.gethostname()}")
    engine.install(Engine.build(settings, redis))  # built once here: forked work-horses inherit it
    courier = Courier(
        worker_redis(settings.server.redis_url),
        forge_for(settings.gitlab),
        keep_deployments=settings.server.keep_deployments,
    )
    courier.start()
    notifier = Notifier(worker_redis(settings.server.redis_url), settings)
    notifier.start()
    janitor = Janitor(settings, worker_redis(settings.server.redis_url))
    janitor.start()
    worker = Worker(
        [Queue(defaults.DEPLOY_QUEUE, connection=redis)],
        connection=redis,
        name=name,
        maintenance_interval=MAINTENANCE_INTERVAL,
        job_monitoring_interval=JOB_MONITORING_INTERVAL,
        worker_ttl=WORKER_TTL,
        work_horse_killed_handler=horse_killed,
    )
    log.info("worker %s: deploying from queue %s", worker.name, defaults.DEPLOY_QUEUE)
    try:
        return bool(worker.work(burst=burst, logging_level="INFO", with_scheduler=False))
    finally:
        courier.stop()
        notifier.stop()
        janitor.stop()


class Janitor:
    """Restarts deployments left waiting on a lane whose holder died without handing over, and runs
    the reconciler (missed webhooks, polled projects)."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.forge = forge_for(settings.gitlab)
        self.stopping = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="lane-janitor", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.wait(JANITOR_INTERVAL):
            try:
                self.sweep()
                self.reconcile()
                self.expire_reviews()
            except Exception:
                log.exception("janitor: a round failed; trying again later")

    def reconcile(self) -> None:
        Reconciler(self.settings, self.redis, self.forge).run(only_due=True)

    def expire_reviews(self) -> list[int]:
        """Stop review apps idle for longer than ``review.ttl`` (one worker looks, once a minute)."""
        desk = ReviewDesk(self.settings, self.redis, Intake(self.redis, self.settings.server.public_url))
        stopped: list[int] = []
        for project in self.settings.projects.values():
            if project.review is None:
                continue
            if self.redis.set(schema.reviews_checked(project.name), "1", nx=True, ex=REVIEW_CHECK_INTERVAL):
                stopped += desk.expire(project)
        return stopped

    def sweep(self) -> int:
        resumed = 0
        for project in self.settings.projects.values():
            names = list(project.environments)
            if project.review is not None:
                names += [app.environment for app in ReviewStore(self.redis).live(project.name)]
            for name in names:
                waiting = Lane(self.redis, project.name, name).take_stalled()
                if waiting:
                    log.warning("lane %s/%s: resuming %s", project.name, name, waiting)
                    start_waiting(self.settings, self.redis, project.name, name, waiting)
                    resumed += 1
        return resumed
