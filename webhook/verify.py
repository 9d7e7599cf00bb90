"""Verification of a delivery: pure functions over (headers, raw body) that raise or return.

Nothing here parses JSON: a delivery is authenticated on the exact bytes received before any
parser sees them. Every comparison of a secret goes through ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import NoReturn, Protocol

import werkzeug.datastructures

from webhook.errors import InvalidSignature, InvalidToken, PayloadTooLarge, UnsupportedMediaType
from workers import defaults
from workers.secrets import Secret, SigningKey

MAX_SIGNATURES = 16
"""More entries than any rotation needs; bounds the work an unauthenticated request can cause."""

MAX_ID_LENGTH = 256


class Headers(Protocol):
    """What verification needs of request headers: Flask's and a plain dict both fit."""

    def get(self, key: str, /) -> str | None: ...

    def items(self) -> Iterable[tuple[str, str]]: ...


def header(headers: Headers, name: str) -> str | None:
    """Case-insensitive lookup that works for Flask's headers and for plain dicts alike."""
    value = headers.get(name)
    if value is not None or isinstance(headers, werkzeug.datastructures.Headers):
        return value  # werkzeug's headers (Flask's, WSGI's) already look up case-insensitively
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def check_envelope(headers: Headers, length: int | None, limit: int) -> None:
    """Size first (413), then content type (415), as the SPEC orders them."""
    if length is not None and length > limit:
        raise PayloadTooLarge(f"payload larger than {limit} bytes")
    content_type = (header(headers, "Content-Type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType()


def verify_signature(
    headers: Headers,
    body: bytes,
    keys: Sequence[SigningKey],
    now: float,
    tolerance: int = defaults.SIGNATURE_TOLERANCE,
) -> str:
    """Check a Standard Webhooks signature against any of ``keys``; returns the ``webhook-id``.

    Raises:
        InvalidSignature: none of the three headers (code ``unsigned``), some of them or a
            malformed one, a timestamp outside the tolerance, or no ``v1`` entry matching any key.
    """
    msg_id = header(headers, "webhook-id")
    timestamp = header(headers, "webhook-timestamp")
    signatures = header(headers, "webhook-signature")
    if not msg_id or not timestamp or not signatures:
        given = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signatures}
        _refuse_unsigned(given)
    if len(msg_id) > MAX_ID_LENGTH or not msg_id.isprintable():
        raise InvalidSignature("malformed webhook-id header", "signature_malformed")
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise InvalidSignature("malformed webhook-timestamp header", "signature_malformed")
    if abs(now - int(timestamp)) > tolerance:
        raise InvalidSignature("webhook-timestamp outside the allowed clock skew", "signature_stale")
    candidates = list(_v1_signatures(signatures.split(" ")[:MAX_SIGNATURES]))
    if not candidates:
        raise InvalidSignature("no v1 signature in webhook-signature", "signature_malformed")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    for key in keys:
        expected = hmac.new(key.key, signed, hashlib.sha256).digest()
        # Compare with every candidate (no early exit on the first one) to keep timing flat.
        matched = False
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
        if matched:
            return msg_id
    raise InvalidSignature("signature does not match", "signature_mismatch")


UNSIGNED = (
    "unsigned delivery: this project requires signed deliveries (it has a signing_token) and this one "
    "has no webhook-signature header. GitLab signs a delivery only when the webhook has a signing "
    "token, which needs GitLab 19.0 or later with the webhook_signing_token feature flag enabled: set "
    "the hook's signing token, or remove signing_token from the project's config"
)
"""Told apart from a forgery: the likely cause is a GitLab that does not sign, not an attacker."""


def _refuse_unsigned(given: dict[str, str | None]) -> NoReturn:
    """No ``webhook-signature`` is an unsigned delivery; a signature without its id or timestamp is
    a malformed one.

    A GitLab that can sign may send ``webhook-id`` and ``webhook-timestamp`` on every delivery, and
    the signature only when the hook has a signing token: their presence alone says nothing.
    """
    if not given["webhook-signature"]:
        raise InvalidSignature(UNSIGNED, "unsigned")
    absent = [name for name, value in given.items() if not value]
    raise InvalidSignature(
        f"malformed signature: no {' or '.join(absent)} header (a signed delivery carries all of "
        "webhook-id, webhook-timestamp and webhook-signature)",
        "signature_malformed",
    )


def _v1_signatures(entries: Iterable[str]) -> Iterable[bytes]:
    for entry in entries:
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue  # other schemes (v1a, future versions) are not ours to check
        try:
            yield base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue


def verify_token(headers: Headers, tokens: Sequence[Secret]) -> None:
    """Check ``X-Gitlab-Token`` against each configured token (a list allows rotation).

    Raises:
        InvalidToken: the header is missing or matches none of the tokens.
    """
    given = header(headers, "X-Gitlab-Token")
    if given is None:
        raise InvalidToken("missing X-Gitlab-Token header", "token_missing")
    # A lone surrogate cannot arrive over HTTP but must not crash a direct caller: "surrogatepass".
    given_forms = [given.encode("utf-8", "surrogatepass")]
    if not given.isascii():
        # WSGI (PEP 3333) hands header bytes over as latin-1 text: GitLab's UTF-8 bytes come back
        # as mojibake, so a non-ASCII token is also compared as the bytes that were on the wire.
        with contextlib.suppress(UnicodeEncodeError):
            given_forms.append(given.encode("latin-1"))
    matched = False
    for token in tokens:
        expected = token.reveal().encode("utf-8")
        for given_bytes in given_forms:
            matched |= hmac.compare_digest(given_bytes, expected)
    if not matched:
        raise InvalidToken(code="token_mismatch")


def sign(key: SigningKey | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """A ``webhook-signature`` value, as GitLab computes it; used by ``simulate-push`` and tests."""
    raw = key.key if isinstance(key, SigningKey) else key
    digest = hmac.new(raw, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
