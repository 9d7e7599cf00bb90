"""The fake GitLab's people side answers as GitLab (Doorkeeper) does: pinned here over real HTTP."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import gitlab
import pytest
import requests
from gitlab.exceptions import GitlabGetError

from tests import people
from tests.fakegitlab import FakeGitLab

CALLBACK = "http://pushdeploy.test/auth/gitlab/callback"
VERIFIER = "v" * 50


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@pytest.fixture
def fake() -> Iterator[FakeGitLab]:
    made = people.gitlab().start()
    people.arrange(made, "http://pushdeploy.test")
    made.people.sign_in("developer")
    yield made
    made.stop()


def authorize(fake: FakeGitLab, **changes: str) -> requests.Response:
    query = {
        "client_id": people.CLIENT_ID,
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "scope": "read_user",
        "state": "s-123",
        "code_challenge": challenge(VERIFIER),
        "code_challenge_method": "S256",
        **changes,
    }
    return requests.get(f"{fake.url}/oauth/authorize", params=query, allow_redirects=False, timeout=5)


def back(answer: requests.Response) -> dict[str, str]:
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def exchange(fake: FakeGitLab, code: str, **changes: str) -> requests.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": VERIFIER,
    }
    secret = changes.pop("secret", people.CLIENT_SECRET)
    form.update(changes)
    return requests.post(f"{fake.url}/oauth/token", data=form, auth=(people.CLIENT_ID, secret), timeout=5)


def test_authorize_redirects_with_a_code_and_the_state(fake: FakeGitLab) -> None:
    found = back(authorize(fake))
    assert found["state"] == "s-123" and len(found["code"]) == 64


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "api"}, "invalid_scope"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
    ],
)
def test_authorize_sends_errors_back_to_the_client(
    fake: FakeGitLab, changes: dict[str, str], error: str
) -> None:
    found = back(authorize(fake, **changes))
    assert found["error"] == error and found["state"] == "s-123" and "code" not in found


def test_authorize_shows_client_errors_on_its_own_page(fake: FakeGitLab) -> None:
    unknown = authorize(fake, client_id="nope")
    assert unknown.status_code == 401 and "unknown client" in unknown.text
    elsewhere = authorize(fake, redirect_uri="https://evil.example/cb")
    assert elsewhere.status_code == 400 and "redirect uri included is not valid" in elsewhere.text
    fake.people.sign_in(None)
    assert authorize(fake).headers["Location"] == f"{fake.url}/users/sign_in"


def test_a_code_is_exchanged_once_with_its_verifier_and_reads_the_user(fake: FakeGitLab) -> None:
    code = back(authorize(fake))["code"]
    answer = exchange(fake, code)
    assert answer.status_code == 200, answer.text
    token = answer.json()
    assert token["token_type"] == "Bearer" and token["scope"] == "read_user"
    again = exchange(fake, code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"

    auth = {"Authorization": f"Bearer {token['access_token']}"}
    user = requests.get(f"{fake.url}/api/v4/user", headers=auth, timeout=5).json()
    assert user["username"] == "developer" and user["state"] == "active"
    other = requests.get(f"{fake.url}/api/v4/projects/42", headers=auth, timeout=5)
    assert other.status_code == 403 and other.json()["error"] == "insufficient_scope"


@pytest.mark.parametrize(
    ("changes", "status", "error"),
    [
        ({"code_verifier": "w" * 50}, 400, "invalid_grant"),
        ({"code_verifier": ""}, 400, "invalid_grant"),
        ({"redirect_uri": "http://pushdeploy.test/other"}, 400, "invalid_grant"),
        ({"secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
    ],
)
def test_the_token_endpoint_checks_everything(
    fake: FakeGitLab, changes: dict[str, str], status: int, error: str
) -> None:
    answer = exchange(fake, back(authorize(fake))["code"], **changes)
    assert answer.status_code == status and answer.json()["error"] == error


def test_client_credentials_may_come_in_the_form(fake: FakeGitLab) -> None:
    code = back(authorize(fake))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": VERIFIER,
        "client_id": people.CLIENT_ID,
        "client_secret": people.CLIENT_SECRET,
    }
    assert requests.post(f"{fake.url}/oauth/token", data=form, timeout=5).status_code == 200


def test_members_answer_as_gitlab_does_through_python_gitlab(fake: FakeGitLab) -> None:
    client = gitlab.Gitlab(fake.url, private_token=people.GITLAB_TOKEN)
    project = client.projects.get("tools/sample-app", lazy=True)
    member = project.members_all.get(fake.people.users["maintainer"]["id"])
    assert member.access_level == 40 and member.username == "maintainer" and member.state == "active"
    assert project.members_all.get(fake.people.users["blocked"]["id"]).state == "blocked"
    with pytest.raises(GitlabGetError) as refused:
        project.members_all.get(fake.people.users["outsider"]["id"])
    assert refused.value.response_code == 404 and refused.value.error_message == "404 Not found"
    anonymous = requests.get(f"{fake.url}/api/v4/projects/42/members/all/101", timeout=5)
    assert anonymous.status_code == 401
