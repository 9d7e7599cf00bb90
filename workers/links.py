"""Signed, expiring links to one deployment's page: what GitLab shows as a status's ``target_url``.

A maintainer who clicks a status needs no account: the link carries an expiry and an HMAC over
(deployment id, expiry) keyed from the admin token, so it opens that one deployment and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from workers import routes
from workers.secrets import Secret

SIGNATURE_LENGTH = 22  # 132 bits of HMAC-SHA256, base64url: short enough for GitLab's 255-char limit
PARAMETER = "access"


def key_from(admin_token: Secret, purpose: str) -> bytes:
    """A key for one purpose, so the session and the links never share the admin token itself."""
    return hmac.new(admin_token.reveal().encode(), f"pushdeploy:{purpose}".encode(), hashlib.sha256).digest()


def sign(key: bytes, deployment_id: str, ttl_days: int, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl_days * 86400)
    return f"{expires}.{_mac(key, deployment_id, expires)}"


def verify(key: bytes, deployment_id: str, token: str, now: float | None = None) -> bool:
    """True when ``token`` was signed for this deployment and has not expired."""
    expires_text, _, signature = token.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12 or len(signature) != SIGNATURE_LENGTH:
        return False
    expires = int(expires_text)
    if expires < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature, _mac(key, deployment_id, expires))


def _mac(key: bytes, deployment_id: str, expires: int) -> str:
    digest = hmac.new(key, f"deployment:{deployment_id}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:SIGNATURE_LENGTH]


class LinkSigner:
    """Makes signed page links for one server; None where no admin token is configured."""

    def __init__(self, key: bytes, ttl_days: int) -> None:
        self.key = key
        self.ttl_days = ttl_days

    def url(self, public_url: str, deployment_id: str, now: float | None = None) -> str:
        token = sign(self.key, deployment_id, self.ttl_days, now)
        return f"{routes.deployment_url(public_url, deployment_id)}?{PARAMETER}={token}"

    @classmethod
    def for_server(cls, admin_token: Secret | None, ttl_days: int) -> LinkSigner | None:
        return cls(key_from(admin_token, "links"), ttl_days) if admin_token is not None else None
