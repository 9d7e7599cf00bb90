"""The Flask application factory: settings and Redis are injected, so tests build the real app."""

from __future__ import annotations

import logging
import os
import socket

from flask import Flask
from redis import Redis
from redis.exceptions import RedisError

from webhook import auth, headers, services
from webhook.account import account
from webhook.api import api
from webhook.audit import audit
from webhook.badges import badges
from webhook.drainer import Drainer
from webhook.journal import Journal
from webhook.metrics import metrics
from webhook.pages import pages
from webhook.receive import HookEndpoint
from workers import audit as audit_log
from workers import links, migrations
from workers.config import OnRedisDown, Settings, config_path, load
from workers.connection import web_redis
from workers.intake import Intake
from workers.links import LinkSigner
from workers.project_ids import ProjectIds


def _check_layout(redis: Redis, app: Flask) -> None:
    """Migrate or refuse Redis's layout before serving; a web tier started while Redis is down
    checks as soon as it answers (a newer layout then stops the process: gunicorn halts on exit 3)."""
    try:
        migrations.ensure(redis)
    except RedisError:
        app.logger.warning("Redis unreachable at start: its layout is checked as soon as it answers")
        migrations.ensure_later(redis, _halt)


def _halt(error: migrations.SchemaError) -> None:
    logging.getLogger(__name__).critical("%s", error)
    os._exit(WORKER_BOOT_ERROR)


def _note_config(redis: Redis, settings: Settings, app: Flask) -> None:
    """A web process starting with a changed configuration (a reload, a rollout) is an audit entry."""
    try:
        who = f"web on {socket.gethostname()}"
        audit_log.config_loaded(redis, settings.server.audit_days, settings.path, who)
    except RedisError:
        app.logger.warning("Redis unreachable at start: a configuration change is not in the audit log")


WORKER_BOOT_ERROR = 3
"""The exit code that makes gunicorn's arbiter stop instead of starting the worker again."""


def create_app(settings: Settings | None = None, redis: Redis | None = None, drain: bool = True) -> Flask:
    """Build the web tier; without arguments it reads ``PUSHDEPLOY_CONFIG`` (as gunicorn does)."""
    if settings is None:
        settings = load(config_path(None, os.environ))
    if redis is None:
        redis = web_redis(settings.server.redis_url)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    _check_layout(redis, app)
    _note_config(redis, settings, app)
    signer = LinkSigner.for_server(settings.server.admin_token, settings.server.link_ttl_days)
    intake = Intake(redis, settings.server.public_url, signer=signer)
    journal = Journal(settings.server.data_dir)
    admin = settings.server.admin_token
    link_key = links.key_from(admin, "links") if admin else None
    services.install(app, services.Services(settings, redis, intake, journal, link_key))
    if settings.server.on_redis_down is OnRedisDown.JOURNAL and drain:
        Drainer(settings, journal, intake).start()
    auth.init_app(app, settings)
    headers.init_app(app)
    app.register_blueprint(pages)
    app.register_blueprint(account)
    app.register_blueprint(audit)
    app.register_blueprint(api)
    app.register_blueprint(badges)  # public: they show only a state
    app.register_blueprint(metrics)
    gunicorn_logger = logging.getLogger("gunicorn.error")
    if gunicorn_logger.handlers:
        app.logger.handlers = gunicorn_logger.handlers
        app.logger.setLevel(gunicorn_logger.level)
    project_ids = ProjectIds(redis, settings.gitlab)
    project_ids.warm(settings.projects.values())  # in the background: GitLab may be slow or down
    # The webhook is answered in front of Flask (webhook/receive.py says why).
    app.wsgi_app = HookEndpoint(  # type: ignore[method-assign]
        app.wsgi_app, settings, intake, journal, app.logger, project_ids
    )
    return app
