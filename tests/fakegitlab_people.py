"""The people side of the fake GitLab: users, project members and the OAuth 2 provider.

GitLab's OAuth provider is Doorkeeper: ``GET /oauth/authorize`` answers a signed-in browser with a
redirect to the application's ``redirect_uri`` carrying a one-use ``code`` and the client's
``state``; ``POST /oauth/token`` exchanges that code once, checking the client's id and secret
(HTTP Basic or form fields), the redirect URI and the PKCE verifier, and answers errors as JSON
``{"error", "error_description"}``. There is no sign-in form here: a test says who is signed in to
GitLab (:meth:`People.sign_in`), as a browser holding a GitLab session would be.

The fake is stricter than GitLab in one place: it refuses an authorization request without a PKCE
``S256`` challenge (GitLab accepts ``plain`` and, for confidential clients, none), so a client
that drops PKCE fails here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

Answer = tuple[int, bytes, dict[str, str]]
"""Status, body and headers: what the fake's HTTP handler writes."""

GUEST, REPORTER, DEVELOPER, MAINTAINER, OWNER = 10, 20, 30, 40, 50
CODE_TTL = 600
"""Seconds an authorization code lives (Doorkeeper's default)."""

INVALID_GRANT = (
    "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI "
    "used in the authorization request, or was issued to another client."
)
INVALID_CLIENT = (
    "Client authentication failed due to unknown client, no client authentication included, "
    "or unsupported authentication method."
)


def _json(status: int, payload: Any) -> Answer:
    return status, json.dumps(payload).encode(), {"Content-Type": "application/json"}


def _html(status: int, text: str) -> Answer:
    page = f"<!doctype html><title>GitLab</title><p>{text}</p>"
    return status, page.encode(), {"Content-Type": "text/html; charset=utf-8"}


def _redirect(location: str) -> Answer:
    return 302, b"", {"Location": location}


@dataclass
class OAuthApp:
    """An application registered in GitLab (Admin or User settings › Applications)."""

    client_id: str
    secret: str
    redirect_uri: str
    scopes: tuple[str, ...] = ("read_user",)
    confidential: bool = True


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    user_id: int
    scopes: tuple[str, ...]
    issued: float = field(default_factory=time.time)


class People:
    """GitLab's users, their project memberships and its OAuth provider; arrange it from tests."""

    def __init__(self, base_url: Any) -> None:
        self._base_url = base_url  # a callable: the fake's URL is known only once it listens
        self.lock = threading.RLock()
        self.users: dict[str, dict[str, Any]] = {}
        self.members: dict[tuple[int, int], int] = {}  # (project id, user id) -> access level
        self.apps: dict[str, OAuthApp] = {}
        self.signed_in: str | None = None
        self._grants: dict[str, _Grant] = {}
        self._access_tokens: dict[str, int] = {}  # OAuth access token -> user id
        self._next_user = 100

    # -- arranging ------------------------------------------------------------------------------

    def add_user(self, username: str, *, state: str = "active") -> int:
        with self.lock:
            self._next_user += 1
            self.users[username] = {"id": self._next_user, "username": username, "state": state}
            return self._next_user

    def set_state(self, username: str, state: str) -> None:
        """Block (``blocked``) or unblock (``active``) a user, as an admin does in GitLab."""
        with self.lock:
            self.users[username]["state"] = state

    def set_member(self, project_id: int, username: str, level: int | None) -> None:
        """Make ``username`` a member of the project at ``level`` (None removes the membership)."""
        with self.lock:
            key = (project_id, self.users[username]["id"])
            if level is None:
                self.members.pop(key, None)
            else:
                self.members[key] = level

    def add_app(
        self, client_id: str, secret: str, redirect_uri: str, scopes: tuple[str, ...] = ("read_user",)
    ) -> OAuthApp:
        with self.lock:
            self.apps[client_id] = OAuthApp(client_id, secret, redirect_uri, scopes)
            return self.apps[client_id]

    def sign_in(self, username: str | None) -> None:
        """Who the browser is signed in to GitLab as (None: nobody, GitLab shows its sign-in form)."""
        with self.lock:
            self.signed_in = username

    def access_token_for(self, username: str) -> str:
        """An OAuth access token of ``username`` (``read_user``), as a finished flow would hold."""
        token = secrets.token_hex(32)
        with self.lock:
            self._access_tokens[token] = self.users[username]["id"]
        return token

    # -- answering ------------------------------------------------------------------------------

    def user_of(self, bearer: str) -> dict[str, Any] | None:
        """The user an OAuth access token belongs to, or None when it is not one."""
        with self.lock:
            user_id = self._access_tokens.get(bearer)
            return self._by_id(user_id) if user_id is not None else None

    def _by_id(self, user_id: int) -> dict[str, Any] | None:
        return next((u for u in self.users.values() if u["id"] == user_id), None)

    def user_entity(self, user: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": user["id"],
            "username": user["username"],
            "name": user["username"].title(),
            "state": user["state"],
            "locked": False,
            "avatar_url": None,
            "web_url": f"{self._base_url()}/{user['username']}",
        }

    def member(self, project_id: int, user_id_text: str) -> Answer:
        """``GET /projects/:id/members/all/:user_id``: direct or inherited membership, or 404."""
        if not user_id_text.isdigit():
            return _json(400, {"error": "user_id is invalid"})
        with self.lock:
            user = self._by_id(int(user_id_text))
            level = self.members.get((project_id, int(user_id_text)))
        if user is None or level is None:
            return _json(404, {"message": "404 Not found"})
        entity = self.user_entity(user) | {
            "access_level": level,
            "created_at": "2026-01-01T00:00:00.000Z",
            "expires_at": None,
            "membership_state": "active",
        }
        return _json(200, entity)

    def authorize(self, query: dict[str, str]) -> Answer:
        """``GET /oauth/authorize``: errors about the client on GitLab's page; the rest go back."""
        app = self.apps.get(query.get("client_id", ""))
        if app is None:
            return _html(401, INVALID_CLIENT)
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri != app.redirect_uri:
            return _html(400, "The redirect uri included is not valid.")
        state = {"state": query["state"]} if "state" in query else {}

        def back(**params: str) -> Answer:
            joiner = "&" if "?" in redirect_uri else "?"
            return _redirect(redirect_uri + joiner + urlencode({**params, **state}))

        if query.get("response_type") != "code":
            return back(
                error="unsupported_response_type",
                error_description="The authorization server does not support this response type.",
            )
        scopes = tuple(query.get("scope", "").split())
        if not scopes or any(scope not in app.scopes for scope in scopes):
            return back(
                error="invalid_scope",
                error_description="The requested scope is invalid, unknown, or malformed.",
            )
        challenge = query.get("code_challenge", "")
        if not challenge or query.get("code_challenge_method") != "S256":
            return back(
                error="invalid_request",
                error_description="The request is missing a required parameter, includes an unsupported "
                "parameter value, or is otherwise malformed.",
            )
        with self.lock:
            user = self.users.get(self.signed_in or "")
            if user is None:
                return _redirect(f"{self._base_url()}/users/sign_in")
            code = secrets.token_hex(32)
            self._grants[code] = _Grant(app.client_id, redirect_uri, challenge, user["id"], scopes)
        return back(code=code)

    def token(self, headers: Any, raw_body: bytes) -> Answer:
        """``POST /oauth/token`` with ``grant_type=authorization_code``: one exchange per code."""
        params = dict(parse_qsl(raw_body.decode("utf-8", "replace"), keep_blank_values=True))
        client_id, secret = params.get("client_id", ""), params.get("client_secret", "")
        scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                pair = base64.b64decode(credentials, validate=True).decode()
            except ValueError:
                pair = ""
            name, _, password = pair.partition(":")
            client_id, secret = unquote(name), unquote(password)
        app = self.apps.get(client_id)
        if app is None or not hmac.compare_digest(secret.encode(), app.secret.encode()):
            return _json(401, {"error": "invalid_client", "error_description": INVALID_CLIENT})
        if params.get("grant_type") != "authorization_code":
            return _json(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": (
                        "The authorization grant type is not supported by the authorization server."
                    ),
                },
            )
        with self.lock:
            grant = self._grants.pop(params.get("code", ""), None)  # used once, whatever follows
        verifier = params.get("code_verifier", "")
        if (
            grant is None
            or grant.client_id != client_id
            or grant.redirect_uri != params.get("redirect_uri", "")
            or time.time() - grant.issued > CODE_TTL
            or not verifier
            or not hmac.compare_digest(_s256(verifier), grant.challenge)
        ):
            return _json(400, {"error": "invalid_grant", "error_description": INVALID_GRANT})
        access = secrets.token_hex(32)
        with self.lock:
            self._access_tokens[access] = grant.user_id
        return _json(
            200,
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 7200,
                "refresh_token": secrets.token_hex(32),
                "scope": " ".join(grant.scopes),
                "created_at": int(time.time()),
            },
        )


def _s256(verifier: str) -> str:
    """RFC 7636's S256: base64url of the verifier's SHA-256, without padding."""
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
