"""Deliveries accepted while Redis was unreachable, kept on local disk until Redis is back.

GitLab does not retry a failed delivery, so a verified push, or a merge request's event for its
review app, is ours to keep: it is appended to a journal file (one JSON line, fsynced, mode 0600)
and answered 202. A drainer renames the file
aside (atomic, so writers start a fresh one) and moves each record into Redis through the same
intake as a live delivery, with the id it was answered with; the delivery's duplicate key is
claimed then, so a record drained twice, or a delivery GitLab sent twice, is deployed once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from workers.intake import Push
from workers.review_requests import ReviewRequest

log = logging.getLogger(__name__)

ACTIVE = "deliveries.jsonl"


@dataclass(frozen=True)
class Record:
    """One delivery. Fields after ``delivery_key`` came later: older lines read with their defaults."""

    deployment_id: str  # "" for a stop
    created_at: float
    project: str
    environment: str  # a review app's is ``review/<iid>``
    ref: str
    sha: str
    pusher: str
    delivery_key: str
    kind: str = "push"  # "push"; "review": deploy ``review/<iid>``; "stop": stop it
    trigger: str = "push"
    commit_title: str = ""
    commit_author: str = ""
    iid: int = 0
    base: str = ""  # a review app's target branch environment
    branch: str = ""  # a review app's source branch
    title: str = ""  # the merge request's
    reason: str = ""  # a stop's: "closed" or "merged"

    @classmethod
    def of(cls, deployment_id: str, project: str, environment: str, push: Push,
           review: ReviewRequest | None = None) -> Record:
        """A delivery that deploys: a push, or a merge request's commits for its review app."""
        return cls(
            deployment_id, time.time(), project, environment, push.ref, push.sha, push.pusher,
            push.delivery_key, kind="review" if review else "push", trigger=push.trigger,
            commit_title=push.commit_title, commit_author=push.commit_author,
            **(asdict(review) if review else {}),
        )  # fmt: skip

    @classmethod
    def stop(cls, project: str, iid: int, reason: str) -> Record:
        """A merge request closed or merged: its review app stops."""
        return cls("", time.time(), project, f"review/{iid}", "", "", "", "", kind="stop", iid=iid,
                   reason=reason)  # fmt: skip

    def push(self) -> Push:
        return Push(self.ref, self.sha, self.pusher, self.delivery_key, self.trigger, self.commit_title,
                    self.commit_author)  # fmt: skip

    def request(self) -> ReviewRequest:
        return ReviewRequest(self.iid, self.base, self.branch, self.title)


class Journal:
    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "journal"

    @property
    def active(self) -> Path:
        return self.directory / ACTIVE

    def append(self, record: Record) -> None:
        """Durably add one delivery: written and fsynced before the caller answers 202."""
        created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = (json.dumps(asdict(record), separators=(",", ":")) + "\n").encode()
        fd = os.open(self.active, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.directory.parent)
        _fsync_dir(self.directory)

    def pending(self) -> bool:
        return self.directory.is_dir() and any(self.directory.glob("*.jsonl"))

    def drain(self, handle: Callable[[Record], None]) -> int:
        """Hand every journaled record to ``handle``, oldest first; returns how many were handled.

        A file is deleted only after all its records were handled; ``handle`` raising (Redis gone
        again) leaves it for the next try. Concurrent drainers skip files another one holds.
        """
        if not self.directory.is_dir():
            return 0
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.active, self.directory / f"draining-{time.time_ns()}-{os.getpid()}.jsonl")
        handled = 0
        for path in sorted(self.directory.glob("draining-*.jsonl")):
            with _locked(path) as records:
                if records is None:
                    continue  # another drainer has it
                for record in records:
                    handle(record)
                    handled += 1
                path.unlink()
        return handled


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[list[Record] | None]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        if not path.exists():  # drained and deleted by another process before we locked it
            yield None
            return
        with os.fdopen(os.dup(fd), "rb") as handle:
            lines = handle.read().splitlines()
        records = []
        known = {f.name for f in fields(Record)}
        for line in lines:
            try:  # keys a newer pushdeploy added are left out: a downgrade still drains its journal
                records.append(Record(**{k: v for k, v in json.loads(line).items() if k in known}))
            except (ValueError, TypeError, AttributeError):
                log.error("journal %s: skipping an unreadable line (%d bytes)", path.name, len(line))
        yield records
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
