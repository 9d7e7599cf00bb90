"""Who is asking: a GitLab user (signed in, or through a personal token) or the admin token.

One request has at most one person, found once: a bearer header (the admin token or a personal
token) wins over the browser session; a bearer header that matches neither is nobody, even when a
session cookie came along, so a script never acts with a browser's rights by accident.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum

from flask import g, request, session

from webhook import services
from webhook.tokens import TokenStore

SESSION_PERSON = "person"
"""Session key of a GitLab sign-in: ``{"username", "id"}``."""
SESSION_ADMIN = "admin"
"""Session key set by the break-glass sign-in with the admin token."""


class Via(StrEnum):
    """How a person proved who they are."""

    SESSION = "session"  # signed in with GitLab in this browser
    TOKEN = "token"  # a personal API token  # noqa: S105 - a name, not a secret
    ADMIN_TOKEN = "admin_token"  # the break-glass admin token (bearer, or the /login/admin form)  # noqa: S105


@dataclass(frozen=True)
class Person:
    username: str
    user_id: int | None
    """The GitLab user id; None for the admin token, which is nobody in GitLab."""
    via: Via
    token_id: str | None = None
    """The personal token used, when ``via`` is TOKEN."""
    by_bearer: bool = False
    """The request carried its credential in its ``Authorization`` header, not in a cookie: a
    browser never adds that header on its own, so there is no cross-site request to fear."""

    @property
    def is_admin(self) -> bool:
        return self.via is Via.ADMIN_TOKEN


ADMIN_NAME = "admin"


def current() -> Person | None:
    """The person behind this request, or None (found once per request)."""
    if "person" not in g:
        g.person = _find()
    found: Person | None = g.person
    return found


def bearer() -> str | None:
    """The bearer token of the request, or None when it sent no ``Authorization: Bearer``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _find() -> Person | None:
    token = bearer()
    if token is not None:
        return _by_bearer(token)
    if request.headers.get("Authorization"):
        return None  # another scheme: not ours
    if session.get(SESSION_ADMIN) is True and admin_token_matches(None):
        return Person(ADMIN_NAME, None, Via.ADMIN_TOKEN)
    signed = session.get(SESSION_PERSON)
    if (
        isinstance(signed, dict)
        and isinstance(signed.get("id"), int)
        and isinstance(signed.get("username"), str)
    ):
        return Person(signed["username"], signed["id"], Via.SESSION)
    return None


def _by_bearer(token: str) -> Person | None:
    if token and admin_token_matches(token):
        return Person(ADMIN_NAME, None, Via.ADMIN_TOKEN, by_bearer=True)
    record = TokenStore(services.current().redis).authenticate(token)
    if record is None:
        return None
    return Person(record.owner, record.owner_id, Via.TOKEN, record.id, by_bearer=True)


def admin_token_matches(given: str | None) -> bool:
    """``given`` is the admin token (None: only whether one is configured)."""
    admin = services.current().settings.server.admin_token
    if admin is None:
        return False
    if given is None:
        return True
    return hmac.compare_digest(given.encode(), admin.reveal().encode())
