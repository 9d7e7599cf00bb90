"""Public deploy badges: one environment's newest deployment as a shields-style SVG or shields.io JSON.

A badge reveals nothing but that state: no deployment ids, reasons, pushers or timestamps. An unknown
project or environment gets the same grey ``unknown`` badge (200) as one that never deployed, so a
badge URL cannot be used to probe which projects exist, and GitLab shows an image instead of a broken
one while a project is being set up.

What the badge says is decided by the newest deployment (the one a maintainer just pushed)::

    newest deployment      message                colour
    succeeded              deployed <sha8>        #4c1     (GitLab's success)
    failed                 failed                 #e05d44  (failed)
    running                deploying              #dfb317  (running)
    queued                 queued                 #dfb317  (pending)
    canceled, live sha     deployed <live sha8>   #4c1     a canceled attempt changed nothing: say what serves
    canceled, nothing live unknown                #9f9f9f  (canceled / unknown)
    none                   unknown                #9f9f9f

The label is the environment's name, not a fixed "deploy": ``gitlab-hook --badge`` adds one badge per
environment, and GitLab shows a project's badges side by side, where several "deploy" labels could not
be told apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape

from flask import Blueprint, Response, current_app, jsonify, request
from redis.exceptions import RedisError

from webhook import services
from workers import routes
from workers.config import NAME_RE, review_iid
from workers.deployments import Deployment, DeploymentStore, State

badges = Blueprint("badges", __name__)

SUCCESS, FAILED, RUNNING, UNKNOWN = "#4c1", "#e05d44", "#dfb317", "#9f9f9f"
"""GitLab's own pipeline-badge colours (``lib/gitlab/ci/badge/pipeline/template.rb``)."""

LABEL_COLOR = "#555"
SHORT_SHA = 8
HEIGHT = 20
PADDING = 5
"""Horizontal space on each side of a text, as in shields' flat style."""

FONT_SIZE = 11
UNITS_PER_EM = 2048
_ADVANCES = (
    "720 806 940 1676 1302 2204 1488 550 930 930 1302 1676 745 930 745 930 "  # ! " # $ % & ' ( ) * + , - . /
    "1302 1302 1302 1302 1302 1302 1302 1302 1302 1302 930 930 1676 1676 1676 1117 "  # 0-9 : ; < = > ?
    "2048 1400 1404 1430 1578 1295 1177 1588 1539 862 931 1419 1140 1726 1532 1612 "  # @ A-O
    "1235 1612 1424 1400 1262 1499 1400 2025 1403 1260 1403 930 930 930 1676 1302 "  # P-Z [ \ ] ^ _
    "1302 1230 1276 1067 1276 1220 720 1276 1296 562 705 1212 562 1992 1296 1243 "  # ` a-o
    "1276 1276 874 1067 807 1296 1212 1676 1212 1212 1076 1300 930 1300 1676"  # p-z { | } ~
)
ADVANCE: Mapping[str, int] = {chr(32 + i): int(u) for i, u in enumerate(_ADVANCES.split())}
"""Verdana's advance widths in font units, printable ASCII: the font shields measures badges in."""
WIDEST = max(ADVANCE.values())
"""Used for characters outside the table, so that text never overflows its box."""


@dataclass(frozen=True)
class Badge:
    label: str
    message: str
    color: str


def badge_for(label: str, newest: Deployment | None, live: Mapping[str, str]) -> Badge:
    """The badge for an environment, from its newest deployment and what serves now (see the table above)."""
    if newest is None:
        return Badge(label, "unknown", UNKNOWN)
    if newest.state is State.SUCCEEDED:
        return Badge(label, f"deployed {newest.sha[:SHORT_SHA]}", SUCCESS)
    if newest.state is State.FAILED:
        return Badge(label, "failed", FAILED)
    if newest.state is State.RUNNING:
        return Badge(label, "deploying", RUNNING)
    if newest.state is State.QUEUED:
        return Badge(label, "queued", RUNNING)
    if live.get("sha"):
        return Badge(label, f"deployed {live['sha'][:SHORT_SHA]}", SUCCESS)
    return Badge(label, "unknown", UNKNOWN)


def unknown(label: str) -> Badge:
    return Badge(label, "unknown", UNKNOWN)


def text_width(text: str) -> int:
    """Rendered width in pixels of ``text`` in Verdana 11px, rounded up."""
    units = sum(ADVANCE.get(char, WIDEST) for char in text)
    return math.ceil(units * FONT_SIZE / UNITS_PER_EM)


def render_svg(badge: Badge) -> str:
    """A flat shields-style badge; every text is escaped and ``textLength`` keeps other fonts in the box."""
    label_text, message_text = text_width(badge.label), text_width(badge.message)
    left, right = label_text + 2 * PADDING, message_text + 2 * PADDING
    width = left + right
    label, message = _xml(badge.label), _xml(badge.message)
    title = _xml(f"{badge.label}: {badge.message}")
    color = _xml(badge.color)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" role="img" '
        f'aria-label="{title}">'
        f"<title>{title}</title>"
        '<linearGradient id="s" x2="0" y2="100%">'
        '<stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/>'
        "</linearGradient>"
        f'<clipPath id="r"><rect width="{width}" height="{HEIGHT}" rx="3" fill="#fff"/></clipPath>'
        '<g clip-path="url(#r)">'
        f'<rect width="{left}" height="{HEIGHT}" fill="{LABEL_COLOR}"/>'
        f'<rect x="{left}" width="{right}" height="{HEIGHT}" fill="{color}"/>'
        f'<rect width="{width}" height="{HEIGHT}" fill="url(#s)"/>'
        "</g>"
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" '
        f'font-size="{FONT_SIZE}">'
        f"{_text(left / 2, label_text, label)}"
        f"{_text(left + right / 2, message_text, message)}"
        "</g></svg>"
    )


def _text(x: float, length: int, escaped: str) -> str:
    shadow = f'<text x="{x:g}" y="15" fill="#010101" fill-opacity=".3" textLength="{length}">{escaped}</text>'
    return f'{shadow}<text x="{x:g}" y="14" textLength="{length}">{escaped}</text>'


def _xml(text: str) -> str:
    printable = "".join(char for char in text if char >= " " and char != "\x7f")  # XML forbids most controls
    return escape(printable, {'"': "&quot;", "'": "&apos;"})


def endpoint_json(badge: Badge) -> dict[str, object]:
    """The shields.io endpoint format (https://shields.io/badges/endpoint-badge)."""
    color = badge.color.lstrip("#")
    return {"schemaVersion": 1, "label": badge.label, "message": badge.message, "color": color}


# -- Flask adapter -----------------------------------------------------------


def current_badge(project: str, environment: str) -> tuple[Badge, int]:
    """The badge and HTTP status for a request: unknown names get the ``unknown`` badge, Redis down a 503."""
    settings = services.current().settings
    configured = settings.projects.get(project)
    review = configured is not None and configured.review is not None and review_iid(environment) > 0
    if configured is None or (environment not in configured.environments and not review):
        # Same badge as a known environment that never deployed; only a plain name is echoed back.
        return unknown(environment if NAME_RE.match(environment) else "deploy"), 200
    store = DeploymentStore(services.current().redis)
    try:
        newest = store.history(project, environment, limit=1)
        live = store.live(project, environment) if newest and newest[0].state is State.CANCELED else {}
    except RedisError:
        current_app.logger.warning("badge %s/%s: Redis unreachable", project, environment)
        return unknown(environment), 503
    return badge_for(environment, newest[0] if newest else None, live), 200


def _fresh(response: Response) -> Response:
    """Revalidate on every view (GitLab caches badge images otherwise), but let an unchanged one be a 304."""
    response.headers["Cache-Control"] = "no-cache"
    if response.status_code != 200:
        return response
    response.add_etag()
    response.make_conditional(request)  # turns it into a 304 in place when If-None-Match matches
    return response


@badges.get(routes.BADGE_SVG)
def svg(project: str, environment: str) -> Response:
    badge, status = current_badge(project, environment)
    response = Response(render_svg(badge), status=status, mimetype="image/svg+xml")
    # Opened on its own, an SVG is a document: forbid scripts and loads even though all text is escaped.
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return _fresh(response)


@badges.get(routes.BADGE_JSON)
def endpoint(project: str, environment: str) -> Response:
    badge, status = current_badge(project, environment)
    response = jsonify(endpoint_json(badge))
    response.status_code = status
    return _fresh(response)


@badges.get(routes.REVIEW_BADGE_SVG)
def review_svg(project: str, iid: str) -> Response:
    """A review app's badge (``review/<iid>``); an unknown or stopped one is ``unknown``/its last state."""
    return svg(project, f"review/{iid}")


@badges.get(routes.REVIEW_BADGE_JSON)
def review_endpoint(project: str, iid: str) -> Response:
    return endpoint(project, f"review/{iid}")
