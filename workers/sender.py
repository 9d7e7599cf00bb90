"""The background loop behind the status courier and the notifier: work what is due, else wait.

Both keep their work in Redis (a sorted set of what is due when) and are woken early through a
list; a Redis outage or an unexpected error costs a second's pause, never the thread.
"""

from __future__ import annotations

import logging
import threading

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class Sender:
    """A daemon thread calling :meth:`deliver_due` until stopped; subclasses say what is due."""

    name = "sender"
    wake_key = ""

    redis: Redis
    stopping: threading.Event

    def deliver_due(self, now: float | None = None) -> int:
        """One pass over what is due; returns how much it worked on (0: wait for a wake-up)."""
        raise NotImplementedError

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if not self.deliver_due():
                    self.redis.blpop([self.wake_key], timeout=1)
            except RedisError as exc:
                log.warning("%s: Redis unavailable (%s); retrying", self.name, type(exc).__name__)
                self.stopping.wait(1.0)
            except Exception:
                log.exception("%s: unexpected error; retrying", self.name)
                self.stopping.wait(1.0)
