"""Sign in with GitLab: the OAuth 2 authorization-code flow with ``state`` and PKCE, through Authlib.

``/login/gitlab`` sends the browser to ``<gitlab>/oauth/authorize`` with a fresh ``state`` and a
PKCE ``S256`` challenge (Authlib keeps both in the session); ``/auth/gitlab/callback`` checks the
state, exchanges the code (with the verifier) for a ``read_user`` token, reads ``/api/v4/user``,
refuses blocked users, reads the person's access levels, and only then starts a new session. The
access token itself is dropped at once: pushdeploy never acts in GitLab as the person.

Each outcome goes through :func:`signed_in` or :func:`sign_in_refused`, one place each.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from authlib.integrations.base_client import MismatchingStateError, OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request, session
from redis.exceptions import RedisError
from werkzeug.wrappers import Response

from webhook import attempts, audit, rights, services
from webhook.people import SESSION_PERSON, Person, Via
from workers.audit import Action
from workers.config import Settings
from workers.gitlab_members import RightsUnavailable

log = logging.getLogger(__name__)

signin = Blueprint("signin", __name__)

KEY = "pushdeploy.oauth"
SCOPE = "read_user"
CALLBACK = "/auth/gitlab/callback"
NEXT = "signin_next"
"""Session key: where to go after the GitLab round trip (a local path)."""


def init_app(app: Flask, settings: Settings) -> None:
    """Register GitLab as the OAuth provider when ``[auth] gitlab_oauth`` is configured."""
    oauth_client = settings.auth.gitlab_oauth
    if oauth_client is not None and settings.gitlab is not None:
        oauth = OAuth(app)
        base = settings.gitlab.url
        app.extensions[KEY] = oauth.register(
            name="gitlab",
            client_id=oauth_client.client_id,
            client_secret=oauth_client.client_secret.reveal(),
            authorize_url=f"{base}/oauth/authorize",
            access_token_url=f"{base}/oauth/token",
            api_base_url=f"{base}/api/v4/",
            client_kwargs={
                "scope": SCOPE,
                "code_challenge_method": "S256",
                "default_timeout": settings.gitlab.timeout,
            },
        )
    app.register_blueprint(signin)


def enabled() -> bool:
    return KEY in current_app.extensions


def callback_url(settings: Settings) -> str:
    return settings.server.public_url + CALLBACK


@signin.get("/login/gitlab")
def start() -> Response:
    if not enabled():
        abort(404)
    target = request.args.get("next", "")
    session[NEXT] = target if target.startswith("/") and not target.startswith("//") else "/"
    client = current_app.extensions[KEY]
    answer: Response = client.authorize_redirect(callback_url(services.current().settings))
    return answer


@signin.get(CALLBACK)
def callback() -> Response | tuple[str, int]:
    """Finish the GitLab round trip; attempts are counted per address, then per account."""
    if not enabled():
        abort(404)
    limited_here = limited(None, Via.SESSION)
    if limited_here is not None:
        return limited_here
    client = current_app.extensions[KEY]
    try:
        token = client.authorize_access_token()
    except MismatchingStateError:
        sign_in_refused(None, "state mismatch")
        return _refused("This sign-in did not start here (its state does not match): start again.", 400)
    except OAuthError as exc:  # GitLab said no (access_denied, invalid_grant, …)
        sign_in_refused(None, f"GitLab refused: {exc.error}")
        return _refused(f"GitLab refused the sign-in ({exc.error}): start again.", 400)
    except OSError:  # requests' errors are OSErrors: GitLab unreachable or too slow
        sign_in_refused(None, "GitLab unreachable")
        return _refused("GitLab did not answer: try again in a moment.", 503)
    try:
        answer = client.get("user", token=token)
        user: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
    except (OSError, ValueError):
        user = {}
    if not isinstance(user.get("id"), int) or not isinstance(user.get("username"), str):
        sign_in_refused(None, "GitLab did not say who signed in")
        return _refused("GitLab did not say who you are: try again in a moment.", 502)
    limited_account = limited(user["username"], Via.SESSION, by_address=False)  # the address counted above
    if limited_account is not None:
        return limited_account
    if user.get("state") != "active":
        sign_in_refused(user["username"], f"GitLab user is {user.get('state')}")
        return _refused("Your GitLab account is blocked: pushdeploy refuses it too.", 403)
    try:
        rights.memberships().levels(user["id"], refresh=True)  # a sign-in always reads them afresh
    except RightsUnavailable as exc:
        sign_in_refused(user["username"], "rights unavailable")
        return _refused(f"Signed in to GitLab, but {exc}.", 503)
    target = str(session.get(NEXT) or "/")
    person = Person(user["username"], user["id"], Via.SESSION)
    signed_in(person)
    with contextlib.suppress(RedisError):  # the person is signed in: a lost give-back costs one attempt
        attempts.forgive(
            services.current().redis, {"address": audit.client_address(), "account": person.username}
        )  # only failures use up the minute's attempts
    return redirect(target if target.startswith("/") and not target.startswith("//") else "/")


def signed_in(person: Person) -> None:
    """A person proved who they are: a new session (nothing of the old one survives) holds them."""
    session.clear()
    session[SESSION_PERSON] = {"username": person.username, "id": person.user_id}
    log.info("sign-in: %s (GitLab user %s)", person.username, person.user_id)
    audit.log(Action.SIGN_IN, who=audit.Actor(person.username, str(person.via)))


def sign_in_refused(username: str | None, reason: str, via: Via = Via.SESSION) -> None:
    """A sign-in failed; nobody is signed in afterwards."""
    session.pop(SESSION_PERSON, None)
    log.warning("sign-in refused: %s (%s)", username or "unknown", reason)
    audit.log(Action.SIGN_IN_FAILED, detail=reason, who=audit.Actor(username or "", str(via)))


def limited(account: str | None, via: Via, by_address: bool = True) -> Response | None:
    """Count a sign-in attempt from this address (and for ``account`` when known): the 429 page
    when either went over the limit this minute, else None."""
    subjects = {"address": audit.client_address()} if by_address else {}
    if account:
        subjects["account"] = account
    refused = attempts.attempt(services.current().redis, subjects)
    if refused is None:
        return None
    if refused.first:
        audit.log(Action.SIGN_IN_FAILED, detail="rate limited", who=audit.Actor(account or "", str(via)))
    page = render_template("refused.html", message="Too many sign-in attempts; wait a minute.")
    return Response(page, 429, {"Retry-After": str(refused.retry_after)}, mimetype="text/html")


def _refused(message: str, status: int) -> tuple[str, int]:
    return render_template("login.html", **login_context(error=message)), status


def login_context(error: str = "") -> dict[str, Any]:
    """What the sign-in page shows: GitLab's button when configured, else how to configure it."""
    settings = services.current().settings
    return {
        "gitlab_signin": enabled(),
        "gitlab_url": settings.gitlab.url if settings.gitlab else "",
        "callback": callback_url(settings),
        "admin_configured": settings.server.admin_token is not None,
        "next": request.args.get("next", ""),
        "error": error,
    }
