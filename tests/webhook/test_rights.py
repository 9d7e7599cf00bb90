"""Every right × every role, through the API, with rights read from the fake GitLab's members API.

Each GitLab user calls with a personal token (so the rights are the owner's current ones, read
over real HTTP); ``admin`` calls with the admin token. ``sample-app`` has an unprotected
``staging`` and a protected ``production``. A refused action must answer and change nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from tests import people
from tests.fakegitlab import FakeGitLab
from tests.helpers import ADMIN_TOKEN, GitRepo, session_csrf
from webhook.app import create_app
from webhook.tokens import TokenStore
from workers import audit as audit_store
from workers.audit import Entry
from workers.config import load
from workers.deployments import Deployment, DeploymentStore, State

PUBLIC_URL = "http://pushdeploy.test"
ROLES = ["guest", "reporter", "developer", "maintainer", "owner", "blocked", "outsider", "admin"]
SHA = "ab" * 20

VIEW = {"guest": 404, "reporter": 200, "developer": 200, "maintainer": 200, "owner": 200,
        "blocked": 404, "outsider": 404, "admin": 200}  # fmt: skip
ACT_UNPROTECTED = {"guest": 404, "reporter": 403, "developer": "ok", "maintainer": "ok", "owner": "ok",
                   "blocked": 404, "outsider": 404, "admin": "ok"}  # fmt: skip
ACT_PROTECTED = {**ACT_UNPROTECTED, "developer": 403}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGitLab]:
    made = people.gitlab().start()
    people.arrange(made, PUBLIC_URL)
    yield made
    made.stop()


@pytest.fixture
def client(tmp_path: Path, redis: Redis, redis_url: str, git_repo: GitRepo, fake: FakeGitLab) -> FlaskClient:
    config = people.write(
        tmp_path / "pushdeploy.toml", redis_url, tmp_path / "data", fake.url, PUBLIC_URL, git_repo.url
    )
    return create_app(load(config, environ={}), redis, drain=False).test_client()


def bearer(redis: Redis, fake: FakeGitLab, role: str) -> dict[str, str]:
    if role == "admin":
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    user_id = fake.people.users[role]["id"]
    _, token = TokenStore(redis).create(role, user_id, "tests", time.time() + 3600)
    return {"Authorization": f"Bearer {token}"}


def add(redis: Redis, deployment_id: str, environment: str, state: State, created_at: float = 100.0) -> None:
    branch = "develop" if environment == "staging" else "main"
    DeploymentStore(redis).create(
        Deployment(
            deployment_id,
            "sample-app",
            environment,
            f"refs/heads/{branch}",
            SHA,
            state=state,
            created_at=created_at,
            release=deployment_id if state is State.SUCCEEDED else "",
        )
    )


def count(redis: Redis, environment: str) -> int:
    return len(DeploymentStore(redis).history("sample-app", environment, limit=100))


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("environment", ["staging", "production"])
def test_view(client: FlaskClient, redis: Redis, fake: FakeGitLab, role: str, environment: str) -> None:
    add(redis, "d-view", environment, State.SUCCEEDED)
    auth = bearer(redis, fake, role)
    assert client.get("/api/v1/deployments/d-view", headers=auth).status_code == VIEW[role]
    assert client.get("/api/v1/deployments/d-view/log", headers=auth).status_code == VIEW[role]
    listed = client.get("/api/v1/deployments", headers=auth)
    assert listed.status_code == 200
    assert [d["id"] for d in listed.get_json()["deployments"]] == (["d-view"] if VIEW[role] == 200 else [])
    by_project = client.get("/api/v1/deployments?project=sample-app", headers=auth)
    assert by_project.status_code == VIEW[role]


def expected(role: str, environment: str) -> int | str:
    return (ACT_PROTECTED if environment == "production" else ACT_UNPROTECTED)[role]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("environment", ["staging", "production"])
def test_deploy(client: FlaskClient, redis: Redis, fake: FakeGitLab, role: str, environment: str) -> None:
    before = count(redis, environment)
    answer = client.post(
        f"/api/v1/projects/sample-app/environments/{environment}/deployments",
        json={"sha": SHA}, headers=bearer(redis, fake, role),
    )  # fmt: skip
    want = expected(role, environment)
    assert answer.status_code == (202 if want == "ok" else want), answer.get_json()
    assert count(redis, environment) == before + (1 if want == "ok" else 0)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("environment", ["staging", "production"])
def test_rollback(client: FlaskClient, redis: Redis, fake: FakeGitLab, role: str, environment: str) -> None:
    add(redis, "d-old", environment, State.SUCCEEDED, 100.0)
    add(redis, "d-new", environment, State.SUCCEEDED, 200.0)
    auth = bearer(redis, fake, role)
    want = expected(role, environment)
    to_one = client.post("/api/v1/deployments/d-old/rollback", headers=auth)
    assert to_one.status_code == (202 if want == "ok" else want), to_one.get_json()
    previous = client.post(f"/api/v1/projects/sample-app/environments/{environment}/rollback", headers=auth)
    assert previous.status_code == (202 if want == "ok" else want), previous.get_json()
    assert count(redis, environment) == 2 + (2 if want == "ok" else 0)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("environment", ["staging", "production"])
def test_cancel(client: FlaskClient, redis: Redis, fake: FakeGitLab, role: str, environment: str) -> None:
    add(redis, "d-queued", environment, State.QUEUED)
    answer = client.post("/api/v1/deployments/d-queued/cancel", headers=bearer(redis, fake, role))
    want = expected(role, environment)
    assert answer.status_code == (200 if want == "ok" else want), answer.get_json()
    state = DeploymentStore(redis).get("d-queued").state
    assert state is (State.CANCELED if want == "ok" else State.QUEUED)


def test_a_project_the_person_is_not_in_does_not_exist_for_them(
    client: FlaskClient, redis: Redis, fake: FakeGitLab
) -> None:
    developer = bearer(redis, fake, "developer")
    answer = client.post("/api/v1/projects/other-app/environments/production/deployments", headers=developer)
    assert answer.status_code == 404 and answer.get_json() == {"error": "no environment other-app/production"}
    assert client.get("/api/v1/deployments?project=other-app", headers=developer).status_code == 404
    maintainer = bearer(redis, fake, "maintainer")
    assert client.get("/api/v1/deployments?project=other-app", headers=maintainer).status_code == 200


def test_refusals_say_which_role_is_needed(client: FlaskClient, redis: Redis, fake: FakeGitLab) -> None:
    answer = client.post(
        "/api/v1/projects/sample-app/environments/production/deployments",
        headers=bearer(redis, fake, "developer"),
    )
    assert answer.status_code == 403
    assert answer.get_json() == {
        "error": "deploy, rollback and cancel in sample-app/production need Maintainer or above"
    }


def test_gitlab_unreachable_fails_closed(client: FlaskClient, redis: Redis, fake: FakeGitLab) -> None:
    auth = bearer(redis, fake, "maintainer")
    fake.fail_next(1)  # aims at statuses only: members still answer
    assert client.get("/api/v1/deployments", headers=auth).status_code == 200
    redis.delete(*redis.keys("pd:person:*:rights"))
    fake.stop()
    try:
        answer = client.get("/api/v1/deployments", headers=auth)
    finally:
        fake.start()
    assert answer.status_code == 503 and "cannot read your rights from GitLab" in answer.get_json()["error"]


@pytest.mark.parametrize(("role", "staging", "production"), [
    ("reporter", False, False), ("developer", True, False), ("maintainer", True, True),
])  # fmt: skip
def test_pages_follow_the_same_rights(
    client: FlaskClient, redis: Redis, fake: FakeGitLab, role: str, staging: bool, production: bool
) -> None:
    add(redis, "d-staging", "staging", State.SUCCEEDED)
    add(redis, "d-production", "production", State.SUCCEEDED)
    with client.session_transaction() as session:
        session["person"] = {"username": role, "id": fake.people.users[role]["id"]}
    overview = client.get("/").get_data(as_text=True)
    assert "sample-app" in overview and ("other-app" in overview) == (role == "maintainer")
    for deployment_id, allowed in (("d-staging", staging), ("d-production", production)):
        page = client.get(f"/deployments/{deployment_id}").get_data(as_text=True)
        assert ("Redeploy" in page) == allowed, deployment_id
        before = count(redis, deployment_id.removeprefix("d-"))
        answer = client.post(
            f"/deployments/{deployment_id}/redeploy", data={"csrf_token": session_csrf(client)}
        )
        assert answer.status_code == (302 if allowed else 403)
        assert count(redis, deployment_id.removeprefix("d-")) == before + (1 if allowed else 0)


def test_pages_of_an_invisible_project_are_404(client: FlaskClient, redis: Redis, fake: FakeGitLab) -> None:
    add(redis, "d-staging", "staging", State.SUCCEEDED)
    for role in ("guest", "outsider", "blocked"):
        with client.session_transaction() as session:
            session["person"] = {"username": role, "id": fake.people.users[role]["id"]}
        assert client.get("/projects/sample-app").status_code == 404, role
        assert client.get("/deployments/d-staging").status_code == 404, role
        assert client.get("/deployments/d-staging/log").status_code == 404, role
        assert (
            client.post(
                "/deployments/d-staging/redeploy", data={"csrf_token": session_csrf(client)}
            ).status_code
            == 404
        )
        assert "sample-app" not in client.get("/").get_data(as_text=True)


def test_who_reads_which_audit_entries(client: FlaskClient, redis: Redis, fake: FakeGitLab) -> None:
    """Admin token: everything. Maintainer+ somewhere: the entries of those projects, and their own
    entries with no project. Everyone else: 403, on the API and on the page."""
    for who, project in (
        ("admin", ""),
        ("developer", ""),
        ("owner", ""),
        ("developer", "sample-app"),
        ("maintainer", "other-app"),
    ):
        action = "deploy" if project else "sign_in"
        audit_store.record(redis, 90, Entry(at=time.time(), who=who, action=action, project=project))
    seen = {}
    for role in ROLES:
        answer = client.get("/api/v1/audit", headers=bearer(redis, fake, role))
        if answer.status_code != 200:
            seen[role] = answer.status_code
            continue
        seen[role] = {
            (e["who"], e["project"]) for e in answer.get_json()["entries"] if e["action"] != "admin_token"
        }
    assert seen == {
        "guest": 403,
        "reporter": 403,
        "developer": 403,
        "blocked": 403,
        "outsider": 403,
        "maintainer": {("developer", "sample-app"), ("maintainer", "other-app")},
        "owner": {("developer", "sample-app"), ("owner", "")},  # Owner of sample-app only
        "admin": {("admin", ""), ("developer", ""), ("owner", ""), ("developer", "sample-app"),
                  ("maintainer", "other-app")},
    }  # fmt: skip
    for role, status in (("developer", 403), ("owner", 200)):
        with client.session_transaction() as session:
            session["person"] = {"username": role, "id": fake.people.users[role]["id"]}
        page = client.get("/audit")
        assert page.status_code == status, role
        assert ("Audit log" in client.get("/").get_data(as_text=True)) == (status == 200), role
    assert "other-app" not in page.get_data(as_text=True)  # the owner's page: not even in the filter


STOP_REVIEW = {"guest": 404, "reporter": 403, "developer": 202, "maintainer": 202, "owner": 202,
               "blocked": 404, "outsider": 404, "admin": 202}  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
def test_a_review_app_of_a_protected_environment_is_developers_to_stop(
    tmp_path: Path, redis: Redis, redis_url: str, git_repo: GitRepo, fake: FakeGitLab, role: str
) -> None:
    """Merge request !7 targets production's branch (protected); its review app is not protected."""
    from tests.helpers import write_config
    from workers.reviews import AppState, ReviewStore

    config = write_config(
        tmp_path / "pushdeploy.toml",
        {
            "server": {"public_url": PUBLIC_URL, "redis_url": redis_url, "data_dir": str(tmp_path / "data"),
                       "admin_token": ADMIN_TOKEN},
            "gitlab": {"url": fake.url, "token": people.GITLAB_TOKEN, "timeout": 5},
            "auth": {"gitlab_oauth": {"client_id": people.CLIENT_ID, "client_secret": people.CLIENT_SECRET}},
            "projects": people.projects(git_repo.url, review={"url": "https://mr-{iid}.review.test"}),
        },
    )  # fmt: skip
    client = create_app(load(config, environ={}), redis, drain=False).test_client()
    store = ReviewStore(redis)
    with redis.pipeline() as pipe:
        store.record(pipe, "sample-app", 7, {"base": "production", "branch": "feature", "sha": SHA})
        pipe.execute()

    answer = client.post("/api/v1/projects/sample-app/reviews/7/stop", headers=bearer(redis, fake, role))

    assert answer.status_code == STOP_REVIEW[role], answer.get_json()
    app = store.get("sample-app", 7)
    assert app is not None
    assert app.state is (AppState.STOPPING if STOP_REVIEW[role] == 202 else AppState.LIVE)
