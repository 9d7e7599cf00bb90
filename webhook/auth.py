"""Who may see what: people sign in with GitLab (or the admin token); a signed link opens one deployment.

Pages and logs are private. The session cookie is signed with a key derived from the admin token
(or, without one, from the GitLab application's secret), so rotating it signs everyone out; it is
HttpOnly and SameSite=Lax (Secure behind https), is emptied at sign-in, and every form carries a
CSRF token bound to the session (Flask-WTF's CSRFProtect, the one CSRF check). Sign-in attempts are
limited per address and per account (:mod:`webhook.attempts`). What a signed-in person may do with
each project is :mod:`webhook.rights`' business.
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

from webhook import audit, people, rights, services, signin
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
    oauth = settings.auth.gitlab_oauth
    # Every web process must agree on the key; without any secret to derive it from, nobody can
    # sign in, and a random key keeps sessions unforgeable anyway.
    if admin is not None:
        app.secret_key = links.key_from(admin, "session")
    elif oauth is not None:
        app.secret_key = links.key_from(oauth.client_secret, "session")
    else:
        app.secret_key = secrets.token_bytes(32)
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
    app.jinja_env.globals["person"] = people.current
    app.jinja_env.globals["may_act"] = rights.may_act
    app.register_blueprint(auth)
    rights.init_app(app)
    signin.init_app(app, settings)


def _csrf_refused(error: CSRFError) -> tuple[str, int]:
    return render_template("refused.html", message="The form expired; reload the page and try again."), 400


def _settings() -> Settings:
    return services.current().settings


def is_admin() -> bool:
    person = people.current()
    return person is not None and person.is_admin


def link_grants(deployment_id: str) -> bool:
    """The request carries a valid signed link for this deployment."""
    key = services.current().link_key
    token = request.args.get(links.PARAMETER, "")
    return key is not None and bool(token) and links.verify(key, deployment_id, token)


def signin_required(view: F) -> F:
    """A page for signed-in people: anyone else is sent to the sign-in page, and back after."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if people.current() is None:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def action_required(view: F) -> F:
    """A state-changing form post: a signed-in person (CSRFProtect checked the form's token
    before; the view checks the person's rights on what it changes)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if people.current() is None:
            abort(403)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@auth.get("/login")
def login() -> str:
    """The sign-in page: what signing in with GitLab does, and the break-glass link."""
    return render_template("login.html", **signin.login_context())


@auth.route("/login/admin", methods=["GET", "POST"])
def admin_login() -> Response | str:
    """Break glass: the admin token signs in with every right (GitLab down, or no GitLab sign-in)."""
    target = request.values.get("next", "")
    if not target.startswith("/") or target.startswith("//"):
        target = url_for("pages.overview")  # only local paths: no open redirect
    admin = _settings().server.admin_token
    error = ""
    if request.method == "POST":
        limited = signin.limited(people.ADMIN_NAME, people.Via.ADMIN_TOKEN)
        if limited is not None:
            return limited
        given = request.form.get("token", "")
        if admin is not None and given and hmac.compare_digest(given.encode(), admin.reveal().encode()):
            admin_signed_in()
            return redirect(target)
        error = "That is not the admin token." if admin is not None else "No admin token is configured."
        signin.sign_in_refused(people.ADMIN_NAME, "wrong admin token", people.Via.ADMIN_TOKEN)
    return render_template("admin_login.html", next=target, error=error, configured=admin is not None)


def admin_signed_in() -> None:
    """The admin token was given: a new session with every right."""
    session.clear()  # a new session: nothing chosen before sign-in (CSRF token included) survives
    session[people.SESSION_ADMIN] = True
    audit.log(Action.SIGN_IN, who=audit.Actor(people.ADMIN_NAME, str(people.Via.ADMIN_TOKEN)))


@auth.post("/logout")
def logout() -> Response:
    if people.current() is not None:
        audit.log(Action.SIGN_OUT)
    session.clear()
    return redirect(url_for("auth.login"))
