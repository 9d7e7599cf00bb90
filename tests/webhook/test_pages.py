"""Pages: private behind sign-in, or one deployment through its signed link; actions need CSRF."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient
from redis import Redis
from werkzeug.test import TestResponse

from tests.helpers import ADMIN_TOKEN, csrf_token
from webhook.app import create_app
from workers import links
from workers.config import Settings
from workers.deploylog import DeploymentLog, Masker
from workers.deployments import Deployment, DeploymentStore, State
from workers.recipe import parse
from workers.secrets import Secret

SHA = "ab" * 20


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings, redis: Redis) -> FlaskClient:
    return create_app(settings, redis).test_client()


def make_deployment(redis: Redis, deployment_id: str = "d1", state: State = State.RUNNING) -> Deployment:
    deployment = Deployment(
        deployment_id, "sample-app", "production", "refs/heads/main", SHA, pusher="alice", state=state
    )
    DeploymentStore(redis).create(deployment)
    log = DeploymentLog(redis, deployment_id, Masker([]))
    log.step("build 1: $ make")
    log.output("compiling hello.c")
    log.flush()
    return deployment


def post_login(client: FlaskClient, token: str, next_path: str = "/") -> TestResponse:
    form = client.get("/login/admin").get_data(as_text=True)
    return client.post(
        "/login/admin", data={"token": token, "next": next_path, "csrf_token": csrf_token(form)}
    )


def sign_in(client: FlaskClient) -> None:
    assert post_login(client, ADMIN_TOKEN).status_code == 302


def link(deployment_id: str, now: float | None = None) -> str:
    key = links.key_from(Secret(ADMIN_TOKEN), "links")
    return f"/deployments/{deployment_id}?access={links.sign(key, deployment_id, 1, now)}"


def test_pages_ask_strangers_to_sign_in(client: FlaskClient, redis: Redis) -> None:
    make_deployment(redis)
    for path in ("/", "/projects/sample-app", "/deployments/d1"):
        answer = client.get(path)
        assert answer.status_code == 302 and "/login" in answer.headers["Location"], path
    assert client.get("/deployments/d1/log").status_code == 302


def test_a_wrong_token_does_not_sign_in(client: FlaskClient) -> None:
    answer = post_login(client, "not-it")
    assert answer.status_code == 200 and b"not the admin token" in answer.data
    assert client.get("/").status_code == 302


def test_signed_in_operators_see_the_overview_history_and_deployment(
    client: FlaskClient, redis: Redis
) -> None:
    make_deployment(redis)
    sign_in(client)
    overview = client.get("/").get_data(as_text=True)
    assert "sample-app" in overview and "/badges/sample-app/production.svg" in overview
    assert "d1" in client.get("/projects/sample-app").get_data(as_text=True)
    page = client.get("/deployments/d1").get_data(as_text=True)
    assert "compiling hello.c" in page and SHA in page


def test_a_signed_link_opens_its_deployment_and_only_it(client: FlaskClient, redis: Redis) -> None:
    make_deployment(redis, "d1")
    make_deployment(redis, "d2")
    assert client.get(link("d1")).status_code == 200
    other = link("d1").replace("/deployments/d1", "/deployments/d2")
    assert client.get(other).status_code == 403  # a link for d1 does not open d2
    assert client.get("/").status_code == 302  # nor anything else


def test_expired_and_tampered_links_are_refused(client: FlaskClient, redis: Redis) -> None:
    make_deployment(redis)
    assert client.get(link("d1", now=0)).status_code == 403
    good = link("d1")
    tampered = good[:-1] + ("A" if good[-1] != "A" else "B")
    assert client.get(tampered).status_code == 403
    expires = re.search(r"access=(\d+)\.", good)
    assert expires is not None
    longer = good.replace(f"access={expires.group(1)}.", f"access={int(expires.group(1)) + 86400}.")
    assert client.get(longer).status_code == 403


def test_the_live_log_polls_new_lines_after_the_last(client: FlaskClient, redis: Redis) -> None:
    make_deployment(redis)
    url = link("d1").replace("/deployments/d1?", "/deployments/d1/log?")
    first = client.get(url).get_json()
    assert [line["text"] for line in first["lines"]] == ["build 1: $ make", "compiling hello.c"]
    assert first["state"] == "running"
    log = DeploymentLog(redis, "d1", Masker([]))
    log.output("linking")
    log.flush()
    newer = client.get(f"{url}&after={first['lines'][-1]['id']}").get_json()
    assert [line["text"] for line in newer["lines"]] == ["linking"]
    assert client.get(f"{url}&after=nonsense").status_code == 400


def test_actions_need_the_session_csrf_token(client: FlaskClient, redis: Redis) -> None:
    make_deployment(redis, state=State.QUEUED)
    sign_in(client)
    assert client.post("/deployments/d1/cancel", data={"csrf_token": "forged"}).status_code == 400
    assert client.post("/deployments/d1/cancel").status_code == 400
    assert DeploymentStore(redis).get("d1").state is State.QUEUED
    page = client.get("/deployments/d1").get_data(as_text=True)
    assert client.post("/deployments/d1/cancel", data={"csrf_token": csrf_token(page)}).status_code == 302
    ended = DeploymentStore(redis).get("d1")
    assert (ended.state, ended.reason, ended.canceled_by) == (State.CANCELED, "canceled by admin", "admin")


def test_a_link_holder_cannot_act(client: FlaskClient, redis: Redis) -> None:
    make_deployment(redis, state=State.QUEUED)
    client.get(link("d1"))
    assert client.post("/deployments/d1/cancel", data={"csrf_token": "x"}).status_code == 400
    assert DeploymentStore(redis).get("d1").state is State.QUEUED


def test_login_redirects_only_to_local_paths(client: FlaskClient) -> None:
    answer = post_login(client, ADMIN_TOKEN, "https://evil.example/")
    assert answer.headers["Location"] == "/"
    answer = post_login(client, ADMIN_TOKEN, "//evil.example/")
    assert answer.headers["Location"] == "/"


def test_the_deployment_page_shows_which_recipe_ran_and_its_steps(
    client: FlaskClient, redis: Redis, settings: Settings
) -> None:
    make_deployment(redis)
    text = 'build = ["make dist"]\n[health_check]\nurl = "http://127.0.0.1:9/ok"\n[env]\nAPI_KEY = "x"\n'
    steps = parse(text, 60).steps(settings.environment("sample-app", "production"), "repo@abababab")
    DeploymentStore(redis).update("d1", recipe=steps.source, effective_steps=json.dumps(steps.public()))
    sign_in(client)

    page = client.get("/deployments/d1").get_data(as_text=True)

    recipe = page[page.index('<section id="recipe">') : page.index("</section>")]
    assert "<code>.pushdeploy.toml</code> at <code>abababab</code>" in recipe
    assert "<code>make dist</code>" in recipe
    assert "<code>echo deployed $PUSHDEPLOY_SHA</code>" in recipe  # the server's, where the file is silent
    assert "<code>http://127.0.0.1:9/ok</code> (30 s)" in recipe
    assert "<code>API_KEY</code>" in recipe and '"x"' not in recipe


def test_the_commits_title_and_author_are_on_the_overview_history_and_page(
    client: FlaskClient, redis: Redis
) -> None:
    deployment = make_deployment(redis)
    DeploymentStore(redis).update(
        deployment.id, commit_title="Fix <the> cart total", commit_author="Alice Liddell"
    )
    sign_in(client)
    for path in ("/", "/projects/sample-app", "/deployments/d1"):
        page = client.get(path).get_data(as_text=True)
        assert "Fix &lt;the&gt; cart total" in page, path  # payload text, escaped
        assert "Alice Liddell" in page, path


def test_an_already_deployed_success_is_not_an_error_banner(client: FlaskClient, redis: Redis) -> None:
    make_deployment(redis, "ok", State.SUCCEEDED)
    DeploymentStore(redis).update("ok", reason="already deployed")
    make_deployment(redis, "bad", State.FAILED)
    DeploymentStore(redis).update("bad", reason="build step 1 `make` exited with 2")
    sign_in(client)
    assert '<p class="reason succeeded">already deployed</p>' in client.get("/deployments/ok").get_data(
        as_text=True
    )
    assert '<p class="reason failed">' in client.get("/deployments/bad").get_data(as_text=True)
    css = client.get("/static/style.css").get_data(as_text=True)
    error = re.search(r"\.reason, \.problem \{ background: (#[0-9a-f]+)", css)
    calm = re.search(r"\.reason\.succeeded \{ background: (#[0-9a-f]+)", css)
    assert error and calm and calm.group(1) != error.group(1)


def test_a_deployments_notifications_are_on_its_page(
    client: FlaskClient, redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    from workers.config import NotifyEvent
    from workers.notifications import announce

    settings = make_settings(notify={"urls": ["json://127.0.0.1:9/hooks"]})
    deployment = make_deployment(redis, "f1", State.FAILED)
    announce(redis, settings, deployment, NotifyEvent.FAILED)
    sign_in(client)
    page = client.get("/deployments/f1").get_data(as_text=True)
    assert "<h2>Notifications</h2>" in page and "failed – pending" in page
