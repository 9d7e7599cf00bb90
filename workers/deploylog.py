"""A deployment's log: timestamped lines with step markers, masked and capped, readable while it runs.

Stored as a Redis stream per deployment: the web tier reads it live with ``XREAD`` and needs no
shared disk with the workers, and each entry's id carries its timestamp.
"""

from __future__ import annotations

import base64
import collections
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from redis import Redis

from workers import defaults, schema
from workers.secrets import MASK, Secret

MIN_MASKED_LENGTH = 4
"""Shorter values would mask ordinary words; GitLab refuses to mask under 8 for the same reason."""


class Masker:
    """Replaces every configured secret, and its URL-encoded and base64 forms, with a mask."""

    def __init__(self, secrets: Iterable[Secret]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            value = secret.reveal()
            if len(value) < MIN_MASKED_LENGTH:
                continue
            raw = value.encode("utf-8")
            forms.update(
                {
                    value,
                    quote(value, safe=""),
                    quote_plus(value),
                    base64.b64encode(raw).decode().rstrip("="),
                    base64.urlsafe_b64encode(raw).decode().rstrip("="),
                }
            )
        # Longest first, so a value is masked whole before any form it contains.
        self.forms = sorted((f for f in forms if len(f) >= MIN_MASKED_LENGTH), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self.forms:
            if form in text:
                text = text.replace(form, MASK)
        return text


@dataclass(frozen=True)
class LogLine:
    id: str
    at: float
    kind: str  # "step" marks a step's start, "out" is output, "info" is pushdeploy's own words
    text: str


FLUSH_LINES = 200
FLUSH_SECONDS = 0.2
"""Output is written in batches (one round trip per batch), at most this old: live, yet cheap."""


class DeploymentLog:
    """Appends to one deployment's log; :meth:`output` enforces the per-step cap.

    Output lines are buffered and written in batches; markers and pushdeploy's own lines flush at
    once, so the log's order is always the order things happened.
    """

    def __init__(
        self,
        redis: Redis,
        deployment_id: str,
        masker: Masker,
        step_limit: int = defaults.STEP_OUTPUT_LIMIT,
    ) -> None:
        self.redis = redis
        self.key = schema.log(deployment_id)
        self.mask = masker
        self.step_limit = step_limit
        self._step_bytes = 0
        self._truncated = False
        self.tail: collections.deque[str] = collections.deque(maxlen=defaults.LOG_TAIL_LINES)
        self._buffer: list[dict[str, str]] = []
        self._buffered_at = 0.0

    def info(self, text: str) -> None:
        self._append("info", text)

    def step(self, text: str) -> None:
        """Start a new step: resets the cap and the tail."""
        self._step_bytes = 0
        self._truncated = False
        self.tail.clear()
        self._append("step", text)

    def output(self, line: str) -> None:
        masked = self.mask(line)
        self.tail.append(masked)
        if self._truncated:
            return
        self._step_bytes += len(masked.encode("utf-8", "replace")) + 1
        if self._step_bytes > self.step_limit:
            self._truncated = True
            self._append("info", f"[output truncated at {self.step_limit} bytes; the step keeps running]")
            return
        self._append("out", masked, masked=True)

    @property
    def truncated(self) -> bool:
        return self._truncated

    def flush_due(self) -> None:
        """Flush output older than FLUSH_SECONDS: called while a step is quiet."""
        if self._buffer and time.time() - self._buffered_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        pipe = self.redis.pipeline(transaction=False)
        for entry in self._buffer:
            pipe.xadd(self.key, entry)
        pipe.execute()
        self._buffer.clear()

    def _append(self, kind: str, text: str, masked: bool = False) -> None:
        now = time.time()
        if not self._buffer:
            self._buffered_at = now
        self._buffer.append({"k": kind, "t": text if masked else self.mask(text), "at": f"{now:.3f}"})
        if kind != "out" or len(self._buffer) >= FLUSH_LINES or now - self._buffered_at >= FLUSH_SECONDS:
            self.flush()


def valid_entry_id(text: str) -> bool:
    """A stream entry id (``<ms>-<seq>``), as clients pass back in ``after``."""
    first, _, second = text.partition("-")
    return (
        first.isascii()
        and first.isdigit()
        and second.isascii()
        and second.isdigit()
        and int(first) < 2**64
        and int(second) < 2**64
    )


def read(redis: Redis, deployment_id: str, after: str = "-", count: int = 10_000) -> list[LogLine]:
    """Lines after the entry id ``after`` (exclusive), oldest first."""
    start = "-" if after == "-" else f"({after}"
    return [
        _line(entry_id, fields)
        for entry_id, fields in redis.xrange(schema.log(deployment_id), start, "+", count)
    ]


def follow(redis: Redis, deployment_id: str, after: str = "0-0", block_ms: int = 1000) -> Iterator[LogLine]:
    """Yield new lines as they are written; the caller decides when to stop."""
    answer = redis.xread({schema.log(deployment_id): after}, block=block_ms, count=1000)
    for _stream, entries in answer or []:
        for entry_id, fields in entries:
            yield _line(entry_id, fields)


def _line(entry_id: bytes | str, fields: dict[bytes, bytes]) -> LogLine:
    def text(name: bytes) -> str:
        return fields.get(name, b"").decode("utf-8", "replace")

    return LogLine(
        id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        at=float(text(b"at") or 0),
        kind=text(b"k"),
        text=text(b"t"),
    )
