"""Who may see what: operators sign in with the admin token; a signed link opens one deployment.

Pages and logs are private. The session cookie is signed with a key derived from the admin token
(so rotating the token signs everyone out), is HttpOnly and SameSite=Lax (Secure behind https), is
emptied at sign-in, and every form carries a CSRF token bound to the session (Flask-WTF's
CSRFProtect). Sign-in attempts are limited per address and per account (:mod:`webhook.attempts`).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.wrappers import Response

from webhook import attempts, audit, services
from workers import links
from workers.audit import Action
from workers.config import Settings

auth = Blueprint("auth", __name__)
csrf = CSRFProtect()

CSRF_HEADER = "X-CSRF-Token"
"""Where a browser script calling the API with the session sends the session's CSRF token."""

F = TypeVar("F", bound=Callable[..., Any])


def init_app(app: Flask, settings: Settings) -> None:
    admin = settings.server.admin_token
    # Without an admin token nobody can sign in; a random key keeps sessions unforgeable anyway.
    app.secret_key = links.key_from(admin, "session") if admin else secrets.token_bytes(32)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=urlsplit(settings.server.public_url).scheme == "https",
        SESSION_COOKIE_NAME="pushdeploy_session",
        WTF_CSRF_HEADERS=[CSRF_HEADER],
        WTF_CSRF_TIME_LIMIT=None,  # valid as long as the session: a page left open still works
    )
    csrf.init_app(app)  # templates get csrf_token(); forms send it as the field csrf_token
    app.register_error_handler(CSRFError, _csrf_refused)
    app.jinja_env.globals["is_admin"] = is_admin
    app.register_blueprint(auth)


def _csrf_refused(error: CSRFError) -> tuple[str, int]:
    return render_template("refused.html", message="The form expired; reload the page and try again."), 400


def _settings() -> Settings:
    return services.current().settings


def is_admin() -> bool:
    return session.get("admin") is True


def link_grants(deployment_id: str) -> bool:
    """The request carries a valid signed link for this deployment."""
    key = services.current().link_key
    token = request.args.get(links.PARAMETER, "")
    return key is not None and bool(token) and links.verify(key, deployment_id, token)


def admin_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not is_admin():
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def action_required(view: F) -> F:
    """A state-changing form post: an admin session (CSRFProtect checked the token before)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not is_admin():
            abort(403)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


ADMIN_ACTOR = audit.Actor(audit.ADMIN, "admin_token")
"""Who a sign-in with the admin-token form is, whether it succeeds or not."""


@auth.route("/login", methods=["GET", "POST"])
def login() -> Response | str:
    target = request.values.get("next", "")
    if not target.startswith("/") or target.startswith("//"):
        target = url_for("pages.overview")  # only local paths: no open redirect
    admin = _settings().server.admin_token
    error = ""
    if request.method == "POST":
        refused = attempts.attempt(
            services.current().redis, {"address": audit.client_address(), "account": audit.ADMIN}
        )
        if refused is not None:
            if refused.first:
                audit.log(Action.SIGN_IN_FAILED, detail="rate limited", who=ADMIN_ACTOR)
            page = render_template("refused.html", message="Too many sign-in attempts; wait a minute.")
            return Response(page, 429, {"Retry-After": str(refused.retry_after)}, mimetype="text/html")
        given = request.form.get("token", "")
        if admin is not None and given and hmac.compare_digest(given.encode(), admin.reveal().encode()):
            session.clear()  # a new session: nothing chosen before sign-in (CSRF token included) survives
            session["admin"] = True
            audit.log(Action.SIGN_IN, who=ADMIN_ACTOR)
            return redirect(target)
        audit.log(Action.SIGN_IN_FAILED, detail="wrong admin token", who=ADMIN_ACTOR)
        error = "That is not the admin token." if admin is not None else "No admin token is configured."
    return render_template("login.html", next=target, error=error, configured=admin is not None)


@auth.post("/logout")
def logout() -> Response:
    if is_admin():
        audit.log(Action.SIGN_OUT)
    session.clear()
    return redirect(url_for("auth.login"))
