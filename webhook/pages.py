"""Read-only pages: the overview, one deployment with its steps and log, and ``/healthz``."""

from __future__ import annotations

import time

from flask import Blueprint, Response, abort, current_app, jsonify, render_template
from redis import Redis
from redis.exceptions import RedisError

from workers import deploylog
from workers.config import Settings
from workers.deployments import DeploymentStore, UnknownDeployment
from workers.outbox import recorded

pages = Blueprint("pages", __name__)


def _settings() -> Settings:
    settings: Settings = current_app.extensions["pushdeploy.settings"]
    return settings


def _redis() -> Redis:
    redis: Redis = current_app.extensions["pushdeploy.redis"]
    return redis


@pages.get("/healthz")
def healthz() -> tuple[Response, int]:
    try:
        _redis().ping()
    except RedisError:
        return jsonify(ok=False, redis="unreachable"), 503
    return jsonify(ok=True, redis="ok"), 200


@pages.get("/")
def overview() -> str:
    settings = _settings()
    store = DeploymentStore(_redis())
    rows = []
    for project in settings.projects.values():
        for environment in project.environments.values():
            latest = store.history(project.name, environment.name, limit=1)
            live = store.live(project.name, environment.name)
            rows.append((project, environment, latest[0] if latest else None, live))
    return render_template("index.html", rows=rows, settings=settings, now=time.time())


@pages.get("/deployments/<deployment_id>")
def deployment(deployment_id: str) -> str:
    redis = _redis()
    store = DeploymentStore(redis)
    try:
        record = store.get(deployment_id)
    except UnknownDeployment:
        abort(404)
    return render_template(
        "deployment.html",
        deployment=record,
        steps=store.steps(deployment_id),
        log=deploylog.read(redis, deployment_id),
        statuses=recorded(redis, deployment_id),
        now=time.time(),
    )


@pages.app_template_filter("age")
def age(timestamp: float) -> str:
    if not timestamp:
        return "–"
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


@pages.app_template_filter("clock")
def clock(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp)) if timestamp else ""
