"""The notifier: sends queued notifications through Apprise, from whichever worker is alive.

Each worker process runs one notifier thread beside its status courier. A notification is taken
under a short lock, sent to each of its project's URLs that does not have it yet, and either
marked sent or put back with a later due time; after :data:`workers.defaults.NOTIFY_RETRY_DELAYS`
runs out it is given up. A URL that took the message is remembered before the next one is tried,
so a retry, or another worker after this one died, never sends it there again (a worker killed
in the instant between a service's answer and that record is the one way a message repeats).

Apprise's own log lines can name parts of a URL, and URLs carry secrets: they are captured,
masked, and kept as the notification's problem instead of going to the process log.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis import Redis

from workers import defaults, schema, telemetry
from workers.config import Settings
from workers.deploylog import Masker
from workers.notifications import Delivery, Kind, Notice, split
from workers.secrets import MASK, Secret
from workers.sender import Sender

log = logging.getLogger(__name__)

LOCK_TTL_MS = 60_000
"""Longer than a round of sends (Apprise gives each service a few seconds); a dead holder's lock
expires and the next notifier takes the message."""

TEST_TITLE = "pushdeploy: test notification"


@dataclass(frozen=True)
class Sent:
    """What one URL did with a message, named without its secrets."""

    url: str
    ok: bool
    detail: str = ""


def url_id(url: str) -> str:
    """A stable id for a URL that says nothing of it: which URLs already have a message."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def url_parts(url: str) -> list[Secret]:
    """The URL and each piece of it that could be a credential, to mask wherever they show up."""
    parts = urlsplit(url)
    pieces = [url, parts.netloc, parts.username or "", parts.password or ""]
    pieces += [p for p in parts.path.split("/") if p]
    pieces += [v for pair in parts.query.split("&") for v in pair.split("=")[1:] if v]
    return [Secret(p) for p in pieces if p]


def shown(url: str) -> str:
    """How a URL is named to people: its service and, when it is a host name, its host; no more.

    Many services keep a token where a host would be (``slack://T0/B0/xyz``, ``ntfy://topic``):
    only a name with a dot (a domain, an IPv4 address) or ``localhost`` is shown.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    named = host if ("." in host or host == "localhost") else MASK
    if host and named != MASK and parts.port:
        named += f":{parts.port}"
    rest = "/…" if parts.path.strip("/") else ""
    return f"{parts.scheme}://{named}{rest}"


def send(url: Secret, title: str, body: str, kind: Kind, hidden: Sequence[Secret] = ()) -> Sent:
    """Send one message to one URL through Apprise; never raises, never lets the URL out.

    What Apprise said about a failure is kept, with ``hidden`` and every part of the URL masked.
    """
    import apprise  # heavy (a hundred plugins): loaded by the processes that send, when they send

    value = url.reveal()
    mask = Masker([*hidden, *url_parts(value)])
    name = shown(value)
    logger = logging.getLogger(apprise.LOGGER_NAME)
    logger.propagate = False  # its lines can hold URL parts: they are captured and masked below
    plugin = apprise.Apprise.instantiate(value, suppress_exceptions=True)
    if plugin is None:
        return Sent(name, False, "Apprise cannot send to this URL (unknown service or malformed)")
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:  # type: ignore[no-untyped-call]
        try:
            ok = bool(plugin.notify(body=body, title=title, notify_type=kind.value))
        except Exception as exc:  # a plugin's bug must not stop the notifier
            ok = False
            log.debug("apprise raised %s", type(exc).__name__)
        said = captured.getvalue()
    lines = [line.strip() for line in mask(said).splitlines() if line.strip()]
    detail = "; ".join(lines)[:300] if not ok else ""
    return Sent(name, ok, detail or ("" if ok else "the service did not accept it"))


def send_test(settings: Settings, project: str) -> list[Sent]:
    """Send a test message to each of ``project``'s notification URLs now: what ``notify test`` shows."""
    notify = settings.notify_for(project)
    hidden = settings.all_secrets()
    body = (
        f"A test from pushdeploy for project {project}: notifications for "
        f"{', '.join(sorted(str(e) for e in notify.on)) or 'no event'} come here."
    )
    return [send(url, TEST_TITLE, body, Kind.INFO, hidden) for url in notify.urls]


_SAVE = """
-- Rewrite a notification only while its deployment's notices exist (pruning may have deleted them).
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
"""


class Notifier(Sender):
    """Sends due notifications; one per worker process, any number side by side."""

    name = "notifier"
    wake_key = schema.NOTIFY_WAKE

    def __init__(
        self, redis: Redis, settings: Settings, delays: tuple[float, ...] = defaults.NOTIFY_RETRY_DELAYS
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.delays = delays
        self.hidden = settings.all_secrets()
        self.stopping = threading.Event()

    def deliver_due(self, now: float | None = None) -> int:
        """One pass over due notifications; returns how many it worked on."""
        now = time.time() if now is None else now
        due = self.redis.zrangebyscore(schema.NOTIFY_DUE, "-inf", now, start=0, num=20)
        worked = 0
        for raw in due:
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            lock, token = schema.notify_lock(member), secrets.token_hex(8)
            if not self.redis.set(lock, token, nx=True, px=LOCK_TTL_MS):
                continue  # another notifier has it
            try:
                self.deliver(member)
                worked += 1
            finally:
                if self.redis.get(lock) == token.encode():
                    self.redis.delete(lock)
        return worked

    def deliver(self, member: str) -> None:
        """Send one notification to the URLs that lack it; then done, due again later, or given up."""
        try:
            deployment_id, event = split(member)
        except ValueError:
            self.redis.zrem(schema.NOTIFY_DUE, member)
            return
        key = schema.notices(deployment_id)
        raw = self.redis.hget(key, str(event))
        if raw is None:  # its deployment was pruned from the history meanwhile
            self.redis.zrem(schema.NOTIFY_DUE, member)
            return
        try:
            notice = Notice.from_json(raw)
        except ValueError as exc:  # never retried forever: this release cannot read it
            log.warning("notification %s of %s dropped: %s", event, deployment_id, exc)
            self.redis.zrem(schema.NOTIFY_DUE, member)
            return
        if notice.delivery is not Delivery.PENDING:
            self.redis.zrem(schema.NOTIFY_DUE, member)
            return
        urls = self.settings.notify_for(notice.project).urls
        if not urls:
            notice.delivery, notice.problem = Delivery.DROPPED, "no notify URLs are configured any more"
            self.finish(key, member, notice)
            return
        problems = []
        for url in urls:
            uid = url_id(url.reveal())
            if uid in notice.sent_to:
                continue
            result = send(url, notice.title, notice.body, notice.kind, self.hidden)
            if result.ok:
                notice.sent_to.append(uid)
                self.save(key, notice)  # before the next URL: a retry never sends here again
            else:
                problems.append(f"{result.url}: {result.detail}")
        if not problems:
            notice.delivery, notice.problem = Delivery.SENT, ""
            log.info("notification %s of %s sent", event, deployment_id)
            self.finish(key, member, notice)
            return
        notice.tries += 1
        notice.problem = "; ".join(problems)[:500]
        if notice.tries > len(self.delays):
            notice.delivery = Delivery.GAVE_UP
            log.warning("notification %s of %s given up: %s", event, deployment_id, notice.problem)
            self.finish(key, member, notice)
            return
        delay = self.delays[notice.tries - 1]
        self.save(key, notice)
        telemetry.count(self.redis, "notifications", "retry")
        self.redis.zadd(schema.NOTIFY_DUE, {member: time.time() + delay})
        log.info("notification %s of %s: %s; retry in %.0f s", event, deployment_id, notice.problem, delay)

    def save(self, key: str, notice: Notice) -> None:
        self.redis.eval(_SAVE, 1, key, str(notice.event), notice.to_json())

    def finish(self, key: str, member: str, notice: Notice) -> None:
        with self.redis.pipeline() as pipe:
            pipe.eval(_SAVE, 1, key, str(notice.event), notice.to_json())
            pipe.zrem(schema.NOTIFY_DUE, member)
            telemetry.count(pipe, "notifications", str(notice.delivery).replace(" ", "_"))
            pipe.execute()
