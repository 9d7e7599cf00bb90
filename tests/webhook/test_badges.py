"""Deploy badges: the state mapping and SVG as pure functions, then the routes on the real app and Redis."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from webhook.app import create_app
from webhook.badges import (
    FAILED,
    RUNNING,
    SUCCESS,
    UNKNOWN,
    Badge,
    badge_for,
    badges,
    endpoint_json,
    render_svg,
    text_width,
)
from workers.config import Settings
from workers.connection import web_redis
from workers.deployments import Deployment, DeploymentStore, State, new_id

SVG = "{http://www.w3.org/2000/svg}"
SHA = "1a2b3c4d5e6f708192a3b4c5d6e7f80911223344"
OLD_SHA = "99887766554433221100ffeeddccbbaa99887766"
BADGE = "/badges/sample-app/production"


def deployment(state: State, sha: str = SHA) -> Deployment:
    return Deployment(
        id="20261126120000000-abcdef",
        project="sample-app",
        environment="production",
        ref="refs/heads/main",
        sha=sha,
        state=state,
    )


def parse(svg: str | bytes) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314 - our own output, parsed to check it is well-formed


# -- the mapping --------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "message", "color"),
    [
        (State.SUCCEEDED, "deployed 1a2b3c4d", SUCCESS),
        (State.FAILED, "failed", FAILED),
        (State.RUNNING, "deploying", RUNNING),
        (State.QUEUED, "queued", RUNNING),
        (State.CANCELED, "unknown", UNKNOWN),
    ],
)
def test_the_newest_deployment_decides(state: State, message: str, color: str) -> None:
    assert badge_for("production", deployment(state), {}) == Badge("production", message, color)


def test_a_canceled_attempt_shows_what_still_serves() -> None:
    live = {"sha": OLD_SHA, "deployment": "x"}
    assert badge_for("production", deployment(State.CANCELED), live) == Badge(
        "production", "deployed 99887766", SUCCESS
    )
    # Only a canceled attempt falls back on the live sha: a failure says so even when something serves.
    assert badge_for("production", deployment(State.FAILED), live).message == "failed"


def test_never_deployed_is_unknown() -> None:
    assert badge_for("staging", None, {}) == Badge("staging", "unknown", UNKNOWN)


def test_gitlab_colours() -> None:
    assert (SUCCESS, FAILED, RUNNING, UNKNOWN) == ("#4c1", "#e05d44", "#dfb317", "#9f9f9f")


# -- the drawing --------------------------------------------------------------


def test_text_widths_follow_verdana() -> None:
    assert text_width("") == 0
    assert text_width("i") < text_width("a") < text_width("m") < text_width("W") + 1
    # Verdana 11px: the advances of "production" add up to 58.75 px, rounded up.
    assert text_width("production") == 59
    assert text_width("deployed 1a2b3c4d") > text_width("deploying")
    assert text_width("é") >= text_width("W")  # outside the table: never narrower than it could be


def test_the_svg_is_a_flat_badge_sized_to_its_texts() -> None:
    badge = Badge("production", "deployed 1a2b3c4d", SUCCESS)

    root = parse(render_svg(badge))

    label_box, message_box, gloss = root.findall(f"{SVG}g/{SVG}rect")
    assert label_box.get("fill") == "#555" and message_box.get("fill") == "#4c1"
    left, right = int(label_box.get("width", "")), int(message_box.get("width", ""))
    assert left == text_width("production") + 10 and right == text_width("deployed 1a2b3c4d") + 10
    assert int(root.get("width", "")) == left + right == int(gloss.get("width", ""))
    assert message_box.get("x") == str(left)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts == ["production", "production", "deployed 1a2b3c4d", "deployed 1a2b3c4d"]
    assert root.findtext(f"{SVG}title") == "production: deployed 1a2b3c4d"


def test_every_text_is_escaped() -> None:
    hostile = Badge('<script>alert(1)</script>&"', "x'\x00\x1b<", '"/><script>')

    svg = render_svg(hostile)

    assert "<script" not in svg and "\x00" not in svg
    root = parse(svg)  # still well-formed XML
    assert root.findtext(f"{SVG}title") == "<script>alert(1)</script>&\": x'<"


def test_the_shields_endpoint_format() -> None:
    assert endpoint_json(Badge("production", "failed", FAILED)) == {
        "schemaVersion": 1,
        "label": "production",
        "message": "failed",
        "color": "e05d44",
    }


# -- the routes, with real records in Redis -----------------------------------


@pytest.fixture
def app(make_settings: Callable[..., Settings], redis: Redis) -> Flask:
    return app_for(make_settings(), redis)


def app_for(settings: Settings, redis: Redis) -> Flask:
    app = create_app(settings, redis)
    if "badges" not in app.blueprints:  # until webhook/app.py registers it
        app.register_blueprint(badges)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(redis: Redis) -> DeploymentStore:
    return DeploymentStore(redis)


def record(store: DeploymentStore, state: State, sha: str = SHA, age: float = 0.0) -> Deployment:
    """A deployment taken through the real state machine to ``state``."""
    created = time.time() - age
    found = Deployment(
        id=new_id(created),
        project="sample-app",
        environment="production",
        ref="refs/heads/main",
        sha=sha,
        pusher="alice-pusher-canary",
        delivery_id="delivery-canary-5b1e",
        created_at=created,
    )
    store.create(found)
    if state is State.CANCELED:
        return store.transition(found.id, State.CANCELED, reason="canceled by operator-canary")
    if state is not State.QUEUED:
        found = store.transition(found.id, State.RUNNING)
    if state is State.SUCCEEDED:
        found = store.transition(found.id, State.SUCCEEDED)
        store.mark_live(found)
    elif state is State.FAILED:
        found = store.transition(
            found.id, State.FAILED, reason="build failed: step 1 exited 2 (reason-canary)"
        )
    return found


def message_of(svg: bytes) -> tuple[str | None, str | None]:
    root = parse(svg)
    message_box = root.findall(f"{SVG}g/{SVG}rect")[1]
    return list(root.iter(f"{SVG}text"))[-1].text, message_box.get("fill")


def test_a_successful_deployment_is_a_green_svg_never_cached(
    client: FlaskClient, store: DeploymentStore
) -> None:
    record(store, State.SUCCEEDED)

    response = client.get(f"{BADGE}.svg")

    assert response.status_code == 200
    assert response.mimetype == "image/svg+xml"
    assert response.headers["Cache-Control"] == "no-cache"
    assert message_of(response.data) == ("deployed 1a2b3c4d", "#4c1")


@pytest.mark.parametrize(
    ("newest", "message", "color"),
    [
        (State.FAILED, "failed", "#e05d44"),
        (State.RUNNING, "deploying", "#dfb317"),
        (State.QUEUED, "queued", "#dfb317"),
        (State.CANCELED, "deployed 99887766", "#4c1"),
    ],
)
def test_the_newest_deployment_wins_over_what_served_before(
    client: FlaskClient, store: DeploymentStore, newest: State, message: str, color: str
) -> None:
    record(store, State.SUCCEEDED, sha=OLD_SHA, age=60)
    record(store, newest)

    assert message_of(client.get(f"{BADGE}.svg").data) == (message, color)


def test_the_json_endpoint(client: FlaskClient, store: DeploymentStore) -> None:
    record(store, State.RUNNING)

    response = client.get(f"{BADGE}.json")

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.get_json() == {
        "schemaVersion": 1,
        "label": "production",
        "message": "deploying",
        "color": "dfb317",
    }


def test_a_badge_reveals_nothing_but_the_state(client: FlaskClient, store: DeploymentStore) -> None:
    failed = record(store, State.FAILED)
    canceled = record(store, State.CANCELED)

    for suffix in ("svg", "json"):
        body = client.get(f"{BADGE}.{suffix}").get_data(as_text=True)
        for secret in (failed.id, canceled.id, "canary", SHA):
            assert secret not in body


def test_unknown_names_look_like_an_environment_that_never_deployed(
    client: FlaskClient, store: DeploymentStore
) -> None:
    never = client.get(f"{BADGE}.svg")
    unknown_project = client.get("/badges/no-such-app/production.svg")
    unknown_environment = client.get("/badges/sample-app/nowhere.json")
    odd_name = client.get("/badges/sample-app/%3Cscript%3E.svg")

    assert never.status_code == unknown_project.status_code == unknown_environment.status_code == 200
    assert unknown_project.data == never.data
    assert message_of(never.data) == ("unknown", "#9f9f9f")
    assert unknown_environment.get_json()["message"] == "unknown"
    assert b"script" not in odd_name.data and message_of(odd_name.data) == ("unknown", "#9f9f9f")


def test_an_unchanged_badge_revalidates_to_304(client: FlaskClient, store: DeploymentStore) -> None:
    record(store, State.SUCCEEDED)
    first = client.get(f"{BADGE}.svg")

    again = client.get(f"{BADGE}.svg", headers={"If-None-Match": first.headers["ETag"]})
    record(store, State.RUNNING)
    changed = client.get(f"{BADGE}.svg", headers={"If-None-Match": first.headers["ETag"]})

    assert (again.status_code, again.data) == (304, b"")
    assert changed.status_code == 200 and message_of(changed.data)[0] == "deploying"


def test_an_svg_opened_on_its_own_runs_nothing(client: FlaskClient) -> None:
    response = client.get(f"{BADGE}.svg")

    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_redis_down_is_still_an_image(make_settings: Callable[..., Settings], redis: Redis) -> None:
    client = app_for(make_settings(), web_redis("redis://127.0.0.1:1/0", timeout=0.5)).test_client()

    response = client.get(f"{BADGE}.svg")

    assert response.status_code == 503
    assert response.mimetype == "image/svg+xml"
    assert response.headers["Cache-Control"] == "no-cache"
    assert message_of(response.data) == ("unknown", "#9f9f9f")
