"""Who may see what: operators sign in with the admin token; a signed link opens one deployment.

Pages and logs are private. The session cookie is signed with a key derived from the admin token
(so rotating the token signs everyone out), is HttpOnly and SameSite=Lax, and every action form
carries a CSRF token bound to the session.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from webhook import services
from workers import links
from workers.config import Settings

auth = Blueprint("auth", __name__)

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
    )
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["is_admin"] = is_admin
    app.register_blueprint(auth)


def _settings() -> Settings:
    return services.current().settings


def is_admin() -> bool:
    return session.get("admin") is True


def link_grants(deployment_id: str) -> bool:
    """The request carries a valid signed link for this deployment."""
    key = services.current().link_key
    token = request.args.get(links.PARAMETER, "")
    return key is not None and bool(token) and links.verify(key, deployment_id, token)


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return str(session["csrf"])


def admin_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not is_admin():
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def action_required(view: F) -> F:
    """A state-changing form post: admin session and the session's CSRF token."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not is_admin():
            abort(403)
        sent = request.form.get("csrf", "")
        if not sent or not hmac.compare_digest(sent, str(session.get("csrf", ""))):
            abort(400, description="the form expired; reload the page and try again")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@auth.route("/login", methods=["GET", "POST"])
def login() -> Response | str:
    target = request.values.get("next", "")
    if not target.startswith("/") or target.startswith("//"):
        target = url_for("pages.overview")  # only local paths: no open redirect
    admin = _settings().server.admin_token
    error = ""
    if request.method == "POST":
        given = request.form.get("token", "")
        if admin is not None and given and hmac.compare_digest(given.encode(), admin.reveal().encode()):
            session.clear()
            session["admin"] = True
            return redirect(target)
        error = "That is not the admin token." if admin is not None else "No admin token is configured."
    return render_template("login.html", next=target, error=error, configured=admin is not None)


@auth.post("/logout")
def logout() -> Response:
    session.clear()
    return redirect(url_for("auth.login"))
