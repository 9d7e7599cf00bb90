"""The audit log in the web tier: who is acting, from which address, and the page that reads it.

Three seams the sign-in work plugs into: :func:`actor` (who makes this request), :func:`may_read`
(who may read the log) and :func:`log` (write an entry for the current request). Storage and
retention live in :mod:`workers.audit`.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from webhook import people, rights, services
from workers import audit as store
from workers import schema
from workers.audit import Action, Entry, Query, Scope
from workers.gitlab_members import AccessLevel

audit = Blueprint("audit", __name__)

ADMIN = people.ADMIN_NAME
"""The name the admin token acts under: one shared credential, so no person's name."""

ADMIN_READ_INTERVAL = 600
"""Seconds between two ``admin_token`` entries for reads from one address: reads are frequent
(the CLI follows logs, scripts poll), so each use is noted, not each request."""

PAGE = 50

READER = AccessLevel.MAINTAINER
"""The level in a project that reads its audit entries."""


@dataclass(frozen=True)
class Actor:
    name: str
    via: str
    """How they authenticated: ``admin_token``, ``session`` or ``token``; "" for nobody."""

    @property
    def admin(self) -> bool:
        return self.via == "admin_token"


NOBODY = Actor("", "")


def actor() -> Actor:
    """Who makes this request: the person :func:`webhook.people.current` found (the admin token
    acts as ``admin``), or :data:`NOBODY`."""
    person = people.current()
    if person is None:
        return NOBODY
    return Actor(person.username, str(person.via))


def scope() -> Scope | None:
    """What the current person may read of the log: None for everything (the admin token).

    A person reads the entries of the projects where they are Maintainer or above, and the
    entries with no project (sign-ins, tokens) that are their own.
    """
    person = people.current()
    if person is None or person.is_admin:
        return None
    levels = rights.levels(person)
    return Scope(frozenset(p for p, level in levels.items() if level >= READER), person.username)


def may_read() -> bool:
    """Whether the current person may read the audit log at all: the admin token, or a person
    who is Maintainer or above in at least one configured project."""
    person = people.current()
    if person is None:
        return False
    found = scope()
    return found is None or bool(found.projects)


@audit.app_template_global("audit_link")
def shows_link() -> bool:
    """Whether the header links to the audit page: a GitLab outage hides the link, not the page."""
    try:
        return may_read()
    except HTTPException:
        return False


def client_address() -> str:
    """The client's address as seen through the configured proxies (``server.trusted_proxies``).

    ``X-Forwarded-For`` is believed only when the peer is a trusted proxy, and read from the
    right: the first address that is not itself a trusted proxy is the client. When every hop is
    trusted (``0.0.0.0/0`` where only an Ingress reaches the pod), the left-most is the client.
    """
    peer = request.remote_addr or ""
    proxies = services.current().settings.server.trusted_proxies
    trusted = [ipaddress.ip_network(n, strict=False) for n in proxies]

    def is_trusted(address: str) -> bool:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in trusted)

    if not is_trusted(peer):
        return peer
    hops = [hop.strip() for hop in ",".join(request.headers.getlist("X-Forwarded-For")).split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not is_trusted(hop):
            return _address(hop) or peer  # a proxy passed on garbage: keep what we know
    return (_address(hops[0]) or peer) if hops else peer


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""


def log(
    action: Action,
    project: str = "",
    environment: str = "",
    deployment: str = "",
    detail: str = "",
    who: Actor | None = None,
) -> None:
    """Write an entry for the current request; a Redis outage must not undo the action itself."""
    person = who or actor()
    entry = Entry(
        at=time.time(),
        who=person.name,
        action=str(action),
        project=project,
        environment=environment,
        deployment=deployment,
        address=client_address(),
        via=person.via,
        detail=detail,
    )
    svc = services.current()
    try:
        store.record(svc.redis, svc.settings.server.audit_days, entry)
    except RedisError:
        current_app.logger.warning("audit entry not written (Redis): %s %s", entry.action, entry.who)


def admin_read() -> None:
    """Note a read with the admin token, at most once per address per interval."""
    svc, address = services.current(), client_address()
    try:
        first = svc.redis.set(schema.audit_admin_use(address), "1", nx=True, ex=ADMIN_READ_INTERVAL)
    except RedisError:
        return
    if first:
        log(Action.ADMIN_TOKEN, detail=f"{request.method} {request.path}"[:200])


@audit.get("/audit")
def page() -> str | Response:
    if not actor().via:  # nobody signed in: the sign-in form, as for every page
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if not may_read():
        abort(403)
    readable = scope()
    query = Query(
        project=request.args.get("project", "")[:64],
        action=request.args.get("action", "")[:64],
        who=request.args.get("who", "")[:255],
        scope=readable,
    )
    cursor = request.args.get("cursor", "")
    if cursor and not store.valid_cursor(cursor):
        abort(400, description="cursor must be an audit entry id")
    entries, following = store.read(services.current().redis, query, PAGE, cursor)
    return render_template(
        "audit.html",
        entries=entries,
        following=following,
        query=query,
        actions=[a.value for a in Action],
        projects=sorted(readable.projects if readable else services.current().settings.projects),
    )


@audit.app_template_filter("utc")
def utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp)) if timestamp else ""
