"""Notifications: what a deployment's start or end tells people, queued in a durable outbox.

A notification is written into its deployment's ``notices`` hash, one field per event (so an event
is queued at most once, whoever asks twice) and marked due in :data:`workers.schema.NOTIFY_DUE`, in
one script. The notifier thread of any worker process sends it (:mod:`workers.notifier`): the
deployment never waits for a chat server, and a worker that dies leaves the message for the next.
The message is masked with every configured secret before it is stored; the URLs it goes to are
never stored at all, only read from the sending worker's own configuration.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from redis import Redis

from workers import routes, schema
from workers.config import NotifyEvent, Settings
from workers.deploylog import Masker
from workers.deployments import Deployment, State
from workers.links import LinkSigner


class Kind(StrEnum):
    """Apprise's notification types (``apprise.NotifyType`` values), which services show as colours."""

    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"


KIND = {
    NotifyEvent.STARTED: Kind.INFO,
    NotifyEvent.SUCCEEDED: Kind.SUCCESS,
    NotifyEvent.RECOVERED: Kind.SUCCESS,
    NotifyEvent.FAILED: Kind.FAILURE,
    NotifyEvent.CANCELED: Kind.WARNING,
}
HEADLINE = {
    NotifyEvent.STARTED: "deploying",
    NotifyEvent.SUCCEEDED: "deployed",
    NotifyEvent.RECOVERED: "recovered",
    NotifyEvent.FAILED: "deployment failed",
    NotifyEvent.CANCELED: "deployment canceled",
}


class Delivery(StrEnum):
    """Where a notification stands."""

    PENDING = "pending"  # not yet tried, or tried and due again
    SENT = "sent"  # every URL took it
    GAVE_UP = "gave up"  # tries ran out for at least one URL
    DROPPED = "dropped"  # the project or its URLs left the configuration before it went out


@dataclass
class Notice:
    """One notification of one deployment, and how its sending went."""

    event: NotifyEvent
    project: str
    """Whose ``notify`` URLs it goes to: read from the sending worker's configuration, never stored."""
    title: str
    body: str
    kind: Kind
    queued_at: float = field(default_factory=time.time)
    delivery: Delivery = Delivery.PENDING
    sent_to: list[str] = field(default_factory=list)
    """Ids of the URLs that took it (:func:`workers.notifier.url_id`): a retry skips them."""
    tries: int = 0
    problem: str = ""

    def public(self) -> dict[str, Any]:
        """How the API shows it: what was said, and how its sending went (never where it went)."""
        return {
            "event": str(self.event),
            "type": str(self.kind),
            "title": self.title,
            "delivery": str(self.delivery),
            "tries": self.tries,
            "problem": self.problem,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Notice:
        """Read a stored notification; fields another release added are ignored.

        Raises:
            ValueError: it is not a notification this release can read.
        """
        try:
            data: dict[str, Any] = json.loads(raw)
            known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            known["event"] = NotifyEvent(known["event"])
            known["kind"] = Kind(known["kind"])
            known["delivery"] = Delivery(known.get("delivery", Delivery.PENDING))
            return cls(**known)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a notification: {type(exc).__name__}") from None


def member(deployment_id: str, event: NotifyEvent) -> str:
    """The due set's member for one event of one deployment."""
    return f"{deployment_id}:{event}"


def split(raw: bytes | str) -> tuple[str, NotifyEvent]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    deployment_id, _, event = text.rpartition(":")
    return deployment_id, NotifyEvent(event)


_QUEUE = """
-- KEYS: the deployment's notices, the due set, the wake list; ARGV: event, notice, due at, member
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('LPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], 0, 0)
return 1
"""


def queue(redis: Redis, deployment_id: str, notice: Notice) -> bool:
    """Queue ``notice`` unless this event of this deployment was queued before; True when queued."""
    keys = (schema.notices(deployment_id), schema.NOTIFY_DUE, schema.NOTIFY_WAKE)
    args = (str(notice.event), notice.to_json(), notice.queued_at, member(deployment_id, notice.event))
    return bool(redis.eval(_QUEUE, len(keys), *keys, *args))


def recorded(redis: Redis, deployment_id: str) -> list[Notice]:
    """The notifications a deployment queued, in the order they were queued."""
    found = []
    for value in redis.hgetall(schema.notices(deployment_id)).values():
        try:
            found.append(Notice.from_json(value))
        except ValueError:
            continue  # written by a release that this one cannot read: not shown rather than an error
    return sorted(found, key=lambda n: n.queued_at)


def announce(redis: Redis, settings: Settings, deployment: Deployment, event: NotifyEvent) -> bool:
    """Queue ``event`` for ``deployment`` if its project's ``notify.on`` asks for it."""
    if not settings.notify_for(deployment.project).wants(event):
        return False
    notice = compose(settings, deployment, event)
    return queue(redis, deployment.id, notice)


def announce_end(redis: Redis, settings: Settings, final: Deployment) -> NotifyEvent | None:
    """Queue the notification of a deployment that just ended; returns the event chosen (or None).

    The environment's last outcome is swapped atomically with this one, so of two deployments
    ending after a failure only the first success is ``recovered``. A canceled deployment changes
    nothing: the environment is no better or worse for it. A success that is a recovery sends one
    message, ``recovered``, unless only ``succeeded`` is asked for.
    """
    event = NotifyEvent.CANCELED
    if final.state in (State.SUCCEEDED, State.FAILED):
        key = schema.last_outcome(final.project, final.environment)
        before = redis.set(key, str(final.state), get=True)
        event = NotifyEvent.FAILED if final.state is State.FAILED else NotifyEvent.SUCCEEDED
        notify = settings.notify_for(final.project)
        if event is NotifyEvent.SUCCEEDED and before == b"failed" and notify.wants(NotifyEvent.RECOVERED):
            event = NotifyEvent.RECOVERED
    return event if announce(redis, settings, final, event) else None


def compose(settings: Settings, deployment: Deployment, event: NotifyEvent) -> Notice:
    """The title and short body people read, with every configured secret masked out."""
    mask = Masker(settings.all_secrets())
    where = f"{deployment.project}/{deployment.environment}"
    title = f"{where}: {HEADLINE[event]}"
    commit = deployment.sha[:8] or deployment.branch
    if deployment.commit_title:
        commit += f" {deployment.commit_title}"
    if deployment.commit_author:
        commit += f" ({deployment.commit_author})"
    lines = [
        f"{deployment.project} → {deployment.environment}: {state_words(deployment, event)}",
        f"Commit: {commit} on {deployment.branch}",
        f"Triggered by: {who(deployment)}",
    ]
    if deployment.duration is not None and event is not NotifyEvent.STARTED:
        lines.append(f"Duration: {format_duration(deployment.duration)}")
    lines.append(page_url(settings, deployment.id))
    return Notice(event, deployment.project, mask(title), mask("\n".join(lines)), KIND[event])


def state_words(deployment: Deployment, event: NotifyEvent) -> str:
    if event is NotifyEvent.STARTED:
        return "running"
    words = str(deployment.state)
    if event is NotifyEvent.RECOVERED:
        words += " (recovered: the previous deployment had failed)"
    reason = deployment.reason.splitlines()[0] if deployment.reason else ""
    return f"{words}: {reason[:300]}" if reason else words


def who(deployment: Deployment) -> str:
    """Who triggered it: the pusher and how (a push, a manual deploy, a rollback, the reconciler)."""
    if deployment.pusher:
        return f"{deployment.pusher} ({deployment.trigger})"
    return deployment.trigger or "unknown"


def format_duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def page_url(settings: Settings, deployment_id: str) -> str:
    """The deployment's page: the same link GitLab's commit status carries (signed with an admin token)."""
    signer = LinkSigner.for_server(settings.server.admin_token, settings.server.link_ttl_days)
    if signer is not None:
        return signer.url(settings.server.public_url, deployment_id)
    return routes.deployment_url(settings.server.public_url, deployment_id)
