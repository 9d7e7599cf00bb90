"""The "Tokens" page: a signed-in person creates personal API tokens (each shown once) and revokes them."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from webhook import audit, people, services
from webhook.auth import action_required, signin_required
from webhook.tokens import TokenRefused, TokenStore, expiry
from workers.audit import Action

account = Blueprint("account", __name__)


def _owner() -> people.Person:
    """The signed-in GitLab user (the admin token is nobody in GitLab and holds no tokens)."""
    person = people.current()
    if person is None or person.user_id is None:
        abort(403, description="personal tokens belong to GitLab users: sign in with GitLab to manage them")
    return person


@account.get("/tokens")
@signin_required
def tokens() -> str:
    person = _owner()
    assert person.user_id is not None
    store = TokenStore(services.current().redis)
    settings = services.current().settings
    return render_template(
        "tokens.html",
        tokens=store.owned_by(person.user_id),
        max_days=settings.auth.token_max_days,
        created=None,
    )


@account.post("/tokens")
@action_required
def create() -> tuple[str, int] | tuple[str, int, dict[str, str]]:
    person = _owner()
    assert person.user_id is not None
    store = TokenStore(services.current().redis)
    settings = services.current().settings
    try:
        record, token = store.create(
            person.username,
            person.user_id,
            request.form.get("name", ""),
            expiry(request.form.get("expires_at") or None, settings.auth.token_max_days),
        )
    except TokenRefused as exc:
        flash(str(exc))
        page = render_template(
            "tokens.html",
            tokens=store.owned_by(person.user_id),
            max_days=settings.auth.token_max_days,
            created=None,
        )
        return page, 400
    audit.log(Action.TOKEN_CREATED, detail=f"{record.name} ({record.id})")
    page = render_template(
        "tokens.html",
        tokens=store.owned_by(person.user_id),
        max_days=settings.auth.token_max_days,
        created={"record": record, "token": token},
    )
    return page, 200, {"Cache-Control": "no-store"}  # the token must not stay in a cache


@account.post("/tokens/<token_id>/revoke")
@action_required
def revoke(token_id: str) -> Response:
    person = _owner()
    assert person.user_id is not None
    if TokenStore(services.current().redis).revoke(person.user_id, token_id):
        audit.log(Action.TOKEN_REVOKED, detail=token_id)
        flash("Token revoked: it no longer works.")
    else:
        flash("You have no such token.")
    return redirect(url_for("account.tokens"))
