"""Moves journaled deliveries into Redis once it answers again: a thread in each web process."""

from __future__ import annotations

import logging
import threading

from redis.exceptions import RedisError

from webhook.journal import Journal, Record
from workers import defaults
from workers.config import Settings
from workers.intake import Intake, Push
from workers.review_requests import ReviewDesk, ReviewRequest

log = logging.getLogger(__name__)


class Drainer:
    def __init__(self, settings: Settings, journal: Journal, intake: Intake) -> None:
        self.settings = settings
        self.journal = journal
        self.intake = intake
        self.reviews = ReviewDesk(settings, intake.redis, intake)
        self.stopping = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="journal-drainer", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        while not self.stopping.wait(defaults.JOURNAL_DRAIN_INTERVAL):
            self.drain_once()

    def drain_once(self) -> int:
        if not self.journal.pending():
            return 0
        try:
            moved = self.journal.drain(self.handle)
        except RedisError:
            return 0  # still down: the journal keeps everything for the next try
        except OSError as exc:
            log.error("journal: cannot drain: %s", exc)
            return 0
        if moved:
            log.warning("journal: moved %d delivery(ies) into Redis", moved)
        return moved

    def handle(self, record: Record) -> None:
        project = self.settings.projects.get(record.project)
        base = record.base if record.kind == "review" else record.environment
        environment = project.environments.get(base) if project else None
        if project is None or (environment is None and record.kind != "stop"):
            log.error(
                "journal: %s is for %s/%s, no longer configured: dropped",
                record.deployment_id or f"the stop of review/{record.iid}",
                record.project,
                record.environment,
            )
            return
        if record.kind == "stop":
            self.reviews.request_stop(project, record.iid, record.reason)
            return
        push = Push(
            ref=record.ref,
            sha=record.sha,
            pusher=record.pusher,
            delivery_key=record.delivery_key,
            trigger=record.trigger,
            commit_title=record.commit_title,
            commit_author=record.commit_author,
        )
        assert environment is not None
        if record.kind == "review":
            request = ReviewRequest(record.iid, record.base, record.branch, record.title)
            self.reviews.accept(
                project,
                project.review_environment(environment, record.iid),
                push,
                request,
                record.deployment_id,
                record.created_at,
            )
            return
        self.intake.accept(project, environment, push, record.deployment_id, record.created_at)
