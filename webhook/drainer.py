"""Moves journaled deliveries into Redis once it answers again: a thread in each web process."""

from __future__ import annotations

import logging
import threading

from redis.exceptions import RedisError

from webhook.journal import Journal, Record
from workers import defaults
from workers.config import Settings
from workers.intake import Intake
from workers.review_requests import ReviewDesk

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
            try:
                self.drain_once()
            except Exception:  # the thread must outlive any one round
                log.exception("journal: draining failed; trying again")

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
        """Move one record into Redis; RedisError leaves the journal for the next try. Any other
        error drops the record, logged with what it was: one bad line must not hold up the rest."""
        try:
            self.apply(record)
        except RedisError:
            raise
        except Exception:
            log.exception("journal: %s for %s/%s could not be moved: dropped", record.kind,
                          record.project, record.environment)  # fmt: skip

    def apply(self, record: Record) -> None:
        what = record.deployment_id or f"the stop of {record.environment}"
        project = self.settings.projects.get(record.project)
        base = record.base if record.kind == "review" else record.environment
        environment = project.environments.get(base) if project else None
        if project is None or (record.kind != "stop" and environment is None):
            log.error("journal: %s is for %s/%s, no longer configured: dropped", what, record.project, base)
            return
        if record.kind == "push":
            assert environment is not None
            self.intake.accept(project, environment, record.push(), record.deployment_id, record.created_at)
            return
        if record.kind == "review" and project.review is None:
            log.error("journal: %s is for a review app, and %s has none now: dropped", what, record.project)
            return
        if self.reviews.store.changed_at(project.name, record.iid) > record.created_at:  # live came first
            log.warning("journal: %s is older than the last change to %s: dropped", what, record.environment)
            return
        if record.kind == "stop":
            self.reviews.request_stop(project, record.iid, record.reason)
            return
        assert environment is not None
        self.reviews.accept(
            project,
            project.review_environment(environment, record.iid),
            record.push(),
            record.request(),
            record.deployment_id,
            record.created_at,
        )
