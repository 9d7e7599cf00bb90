"""The web tier's services, typed and in one place: what ``create_app`` built, for each request.

Every blueprint reaches settings, Redis, the intake and the link key through :func:`current`
instead of looking up string keys in ``app.extensions`` and re-declaring their types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from flask import Flask, current_app
from redis import Redis

from webhook.journal import Journal
from workers.config import Settings
from workers.intake import Intake

KEY = "pushdeploy"


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: Redis
    intake: Intake
    journal: Journal
    link_key: bytes | None
    """The key signed deployment links are checked with; None without an admin token."""


def install(app: Flask, services: Services) -> None:
    app.extensions[KEY] = services


def of(app: Flask) -> Services:
    return cast(Services, app.extensions[KEY])


def current() -> Services:
    """The running app's services (inside a request or an app context)."""
    return cast(Services, current_app.extensions[KEY])
