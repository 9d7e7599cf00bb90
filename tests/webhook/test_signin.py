"""Sign in with GitLab over real HTTP: the app on a real port, the fake GitLab as the OAuth provider.

The browser is a ``requests.Session`` that follows each redirect by hand, so every hop is seen:
pushdeploy → GitLab's authorize endpoint → pushdeploy's callback → the page asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from redis import Redis

from tests import people
from tests.fakegitlab import FakeGitLab
from tests.helpers import GitRepo, csrf_token
from webhook.app import create_app
from workers import audit as audit_store
from workers import schema
from workers.audit import Query
from workers.config import load


class Live:
    def __init__(self, base_url: str, app: Flask, fake: FakeGitLab) -> None:
        self.base_url = base_url
        self.app = app
        self.fake = fake

    def begin(self, browser: requests.Session, next_path: str = "") -> str:
        """Start signing in; returns GitLab's answer's Location (back to our callback)."""
        start = browser.get(
            f"{self.base_url}/login/gitlab",
            params={"next": next_path} if next_path else None,
            allow_redirects=False,
            timeout=10,
        )
        assert start.status_code == 302, start.text
        authorize = browser.get(start.headers["Location"], allow_redirects=False, timeout=10)
        assert authorize.status_code == 302, authorize.text
        return authorize.headers["Location"]

    def sign_in(self, username: str) -> requests.Session:
        browser = requests.Session()
        self.fake.people.sign_in(username)
        done = browser.get(self.begin(browser), allow_redirects=False, timeout=10)
        assert done.status_code == 302, done.text
        return browser

    def session_of(self, browser: requests.Session) -> dict[str, Any]:
        serializer = self.app.session_interface.get_signing_serializer(self.app)  # type: ignore[attr-defined]
        data: dict[str, Any] = serializer.loads(browser.cookies["pushdeploy_session"])
        return data


@pytest.fixture
def live(tmp_path: Path, redis: Redis, redis_url: str, git_repo: GitRepo) -> Iterator[Live]:
    fake = people.gitlab().start()
    made: dict[str, Any] = {}

    def build(base_url: str) -> Flask:
        people.arrange(fake, base_url)
        config = people.write(
            tmp_path / "pushdeploy.toml", redis_url, tmp_path / "data", fake.url, base_url, git_repo.url
        )
        made["app"] = create_app(load(config, environ={}), redis, drain=False)
        return made["app"]

    with people.serving(build) as base_url:
        yield Live(base_url, made["app"], fake)
    fake.stop()


def test_signing_in_goes_to_gitlab_with_state_and_pkce_and_comes_back_signed_in(live: Live) -> None:
    browser = requests.Session()
    page = browser.get(f"{live.base_url}/login", timeout=10)
    assert "Sign in with GitLab" in page.text and "/login/admin" in page.text  # and break glass
    start = browser.get(f"{live.base_url}/login/gitlab", allow_redirects=False, timeout=10)
    sent = urlsplit(start.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(sent.query).items()}
    assert f"{sent.scheme}://{sent.netloc}{sent.path}" == f"{live.fake.url}/oauth/authorize"
    assert query["client_id"] == people.CLIENT_ID
    assert query["response_type"] == "code" and query["scope"] == "read_user"
    assert query["redirect_uri"] == f"{live.base_url}/auth/gitlab/callback"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 20

    live.fake.people.sign_in("developer")
    back = browser.get(start.headers["Location"], allow_redirects=False, timeout=10)
    assert back.headers["Location"].startswith(f"{live.base_url}/auth/gitlab/callback?")
    assert parse_qs(urlsplit(back.headers["Location"]).query)["state"] == [query["state"]]
    done = browser.get(back.headers["Location"], allow_redirects=False, timeout=10)
    assert done.status_code == 302 and done.headers["Location"] == "/"

    overview = browser.get(f"{live.base_url}/", allow_redirects=False, timeout=10)
    assert overview.status_code == 200
    assert 'id="username">developer<' in overview.text
    assert "sample-app" in overview.text and "other-app" not in overview.text
    exchange = [r for r in live.fake.requests if r["path"] == "/oauth/token"]
    assert len(exchange) == 1 and "code_verifier=" in exchange[0]["body"]
    assert "client_secret" not in exchange[0]["body"]  # sent as HTTP Basic, not in the form


def test_the_session_is_new_at_sign_in(live: Live) -> None:
    browser = requests.Session()
    live.fake.people.sign_in("reporter")
    callback = live.begin(browser, next_path="/projects/sample-app")
    before = live.session_of(browser)
    assert any(key.startswith("_state_gitlab_") for key in before)
    done = browser.get(callback, allow_redirects=False, timeout=10)
    assert done.headers["Location"] == "/projects/sample-app"  # back where the person was going
    after = live.session_of(browser)
    assert after == {"person": {"username": "reporter", "id": after["person"]["id"]}}


def test_a_callback_whose_state_does_not_match_answers_400_and_signs_nobody_in(live: Live) -> None:
    browser = requests.Session()
    live.fake.people.sign_in("maintainer")
    callback = live.begin(browser)
    forged = callback.replace("state=", "state=x")
    answer = browser.get(forged, allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and "state does not match" in answer.text
    assert not [r for r in live.fake.requests if r["path"] == "/oauth/token"]  # the code was not even tried
    assert browser.get(f"{live.base_url}/", allow_redirects=False, timeout=10).status_code == 302


def test_a_code_is_good_once_and_only_with_its_own_verifier(live: Live) -> None:
    live.fake.people.sign_in("developer")
    first = requests.Session()
    stolen = parse_qs(urlsplit(live.begin(first)).query)["code"][0]

    other = requests.Session()  # another browser, with its own state and PKCE verifier
    state = parse_qs(urlsplit(live.begin(other)).query)["state"][0]
    replay = other.get(
        f"{live.base_url}/auth/gitlab/callback",
        params={"code": stolen, "state": state},
        allow_redirects=False,
        timeout=10,
    )
    assert replay.status_code == 400 and "invalid_grant" in replay.text  # GitLab checked PKCE
    answers = [r for r in live.fake.requests if r["path"] == "/oauth/token"]
    assert len(answers) == 1

    # The stolen code was burnt by that try: its own browser cannot use it either.
    state_first = live.session_of(first)
    own_state = next(k for k in state_first if k.startswith("_state_gitlab_")).removeprefix("_state_gitlab_")
    again = first.get(
        f"{live.base_url}/auth/gitlab/callback",
        params={"code": stolen, "state": own_state},
        allow_redirects=False,
        timeout=10,
    )
    assert again.status_code == 400 and "invalid_grant" in again.text
    assert first.get(f"{live.base_url}/", allow_redirects=False, timeout=10).status_code == 302


def test_a_blocked_gitlab_user_is_refused(live: Live) -> None:
    browser = requests.Session()
    live.fake.people.sign_in("blocked")
    answer = browser.get(live.begin(browser), allow_redirects=False, timeout=10)
    assert answer.status_code == 403 and "blocked" in answer.text
    assert "person" not in live.session_of(browser)


def test_rights_are_read_at_sign_in_and_kept_five_minutes(live: Live, redis: Redis) -> None:
    browser = live.sign_in("developer")
    user_id = live.session_of(browser)["person"]["id"]
    kept = redis.hgetall(schema.rights(user_id))
    assert kept == {b"sample-app": b"30", b"other-app": b"0"}
    assert 0 < redis.ttl(schema.rights(user_id)) <= 300
    live.fake.people.set_member(people.SAMPLE_ID, "developer", None)  # taken away in GitLab
    assert browser.get(f"{live.base_url}/projects/sample-app", timeout=10).status_code == 200  # cached
    redis.delete(schema.rights(user_id))  # five minutes later
    assert browser.get(f"{live.base_url}/projects/sample-app", timeout=10).status_code == 404


def test_gitlab_down_when_rights_are_read_fails_closed(live: Live, redis: Redis) -> None:
    browser = live.sign_in("maintainer")
    redis.delete(schema.rights(live.session_of(browser)["person"]["id"]))
    live.fake.stop()
    page = browser.get(f"{live.base_url}/projects/sample-app", allow_redirects=False, timeout=30)
    assert page.status_code == 503 and "cannot read your rights from GitLab" in page.text


def test_sign_out(live: Live) -> None:
    browser = live.sign_in("reporter")
    assert browser.get(f"{live.base_url}/", allow_redirects=False, timeout=10).status_code == 200
    page = browser.get(f"{live.base_url}/", timeout=10).text
    assert browser.post(f"{live.base_url}/logout", timeout=10, allow_redirects=False).status_code == 400
    signed_out = browser.post(f"{live.base_url}/logout", data={"csrf_token": csrf_token(page)}, timeout=10)
    assert signed_out.ok
    assert browser.get(f"{live.base_url}/", allow_redirects=False, timeout=10).status_code == 302


def test_without_gitlab_sign_in_only_the_admin_token_works(make_settings: Any, redis: Redis) -> None:
    client = create_app(make_settings(), redis, drain=False).test_client()
    page = client.get("/login")
    assert b"only the admin token works" in page.data and b"/auth/gitlab/callback" in page.data
    assert client.get("/login/gitlab").status_code == 404


def test_a_person_blocked_after_signing_in_loses_everything_within_five_minutes(
    live: Live, redis: Redis
) -> None:
    browser = live.sign_in("maintainer")
    assert browser.get(f"{live.base_url}/projects/other-app", timeout=10).status_code == 200
    live.fake.people.set_state("maintainer", "blocked")
    redis.delete(schema.rights(live.session_of(browser)["person"]["id"]))  # five minutes later
    assert browser.get(f"{live.base_url}/projects/other-app", timeout=10).status_code == 404
    overview = browser.get(f"{live.base_url}/", timeout=10).text
    assert "sample-app" not in overview and "other-app" not in overview


def test_sign_ins_and_refusals_go_to_the_audit_log(live: Live, redis: Redis) -> None:
    live.sign_in("developer")
    browser = requests.Session()
    live.fake.people.sign_in("blocked")
    assert browser.get(live.begin(browser), allow_redirects=False, timeout=10).status_code == 403
    entries, _ = audit_store.read(redis, Query(), 10)
    found = [(e.action, e.who, e.via, e.detail) for e in reversed(entries)]
    assert found == [
        ("sign_in", "developer", "session", ""),
        ("sign_in_failed", "blocked", "session", "GitLab user is blocked"),
    ]
    assert all(e.address == "127.0.0.1" for e in entries)


def test_sign_ins_that_succeed_do_not_use_up_the_addresses_attempts(live: Live, redis: Redis) -> None:
    for _ in range(25):  # a team behind one address, all signing in within the minute
        assert live.session_of(live.sign_in("developer"))["person"]["username"] == "developer"
    callback = f"{live.base_url}/auth/gitlab/callback?code=guess&state=guess"
    browser = requests.Session()
    for _ in range(20):  # failures still count, all twenty of them
        assert browser.get(callback, allow_redirects=False, timeout=10).status_code == 400
    assert browser.get(callback, allow_redirects=False, timeout=10).status_code == 429


def test_the_callback_is_rate_limited_per_address(live: Live, redis: Redis) -> None:
    browser = requests.Session()
    callback = f"{live.base_url}/auth/gitlab/callback?code=guess&state=guess"
    for _ in range(20):
        assert browser.get(callback, allow_redirects=False, timeout=10).status_code == 400
    refused = browser.get(callback, allow_redirects=False, timeout=10)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) <= 60
    live.fake.people.sign_in("developer")
    assert browser.get(live.begin(browser), allow_redirects=False, timeout=10).status_code == 429
    entries, _ = audit_store.read(redis, Query(action="sign_in_failed", who=""), 50)
    assert [e.detail for e in entries].count("rate limited") == 1  # once per window, not per attempt
    assert not [e for e in audit_store.read(redis, Query(action="sign_in"), 50)[0]]
