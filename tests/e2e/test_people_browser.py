"""People in a real Chromium: sign in with (the fake) GitLab, see only permitted projects, deploy
staging, be refused on production, create and revoke a personal token.

Real gunicorn and a real worker; the fake GitLab is the OAuth provider and answers the members
API. Screenshots are kept under ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import re

import pytest
import requests

from tests import people
from tests.e2e.conftest import SHOTS, Stack
from tests.helpers import ADMIN_TOKEN, GitRepo

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def queue(made: Stack, environment: str) -> str:
    answer = requests.post(
        f"{made.base_url}/api/v1/projects/sample-app/environments/{environment}/deployments",
        headers=ADMIN,
        json={},
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["deployment"])


def test_a_developer_signs_in_deploys_staging_is_refused_production_and_manages_a_token(
    stack: object, browser: object, git_repo: GitRepo
) -> None:
    made: Stack = stack(  # type: ignore[operator]
        projects=people.projects(git_repo.url),
        auth={"gitlab_oauth": {"client_id": people.CLIENT_ID, "client_secret": people.CLIENT_SECRET}},
    )
    made.gitlab.projects["tools/other-app"] = people.OTHER_ID
    people.arrange(made.gitlab, made.base_url)
    made.gitlab.people.sign_in("developer")
    made.repo.commit({"app.txt": "staging\n"}, branch="develop")
    made.repo.commit({"app.txt": "production\n"}, branch="main")
    made.start_web()
    made.start_worker()
    staging, production = queue(made, "staging"), queue(made, "production")

    page = browser.new_page(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    page.goto(made.base_url + "/")
    assert "/login" in page.url
    assert "Sign in with GitLab" in page.inner_text("main")
    page.screenshot(path=str(SHOTS / "people-sign-in.png"), full_page=True)
    page.click("#gitlab-signin")  # → GitLab's authorize → our callback → back to /
    page.wait_for_selector("h1:has-text('Projects')")
    assert page.inner_text("#username") == "developer"
    table = page.inner_text("table")
    assert "sample-app" in table and "other-app" not in table  # only what GitLab lets them see
    page.screenshot(path=str(SHOTS / "people-overview-developer.png"), full_page=True)

    # Staging: a Developer may deploy. The page's Redeploy button queues a new deployment.
    page.goto(f"{made.base_url}/deployments/{staging}")
    page.wait_for_selector("#state:has-text('succeeded')", timeout=60_000)
    page.click("button:has-text('Redeploy')")
    page.wait_for_url(re.compile(r"/deployments/(?!" + staging + r")"))
    page.wait_for_selector("#state:has-text('succeeded')", timeout=60_000)
    assert "sample-app / staging" in page.inner_text("h1")
    page.screenshot(path=str(SHOTS / "people-staging-deployed.png"), full_page=True)
    csrf = page.get_attribute("input[name=csrf_token]", "value")

    # Production is protected: the page offers nothing, and a forged post is refused.
    page.goto(f"{made.base_url}/deployments/{production}")
    page.wait_for_selector("#refused")
    assert "need Maintainer or above" in page.inner_text("#refused")
    assert page.query_selector("button:has-text('Redeploy')") is None
    before = len(made.api("/deployments?project=sample-app&environment=production")["deployments"])
    forged = page.request.post(
        f"{made.base_url}/deployments/{production}/redeploy", form={"csrf_token": csrf or ""}
    )
    assert forged.status == 403
    after = len(made.api("/deployments?project=sample-app&environment=production")["deployments"])
    assert after == before
    page.screenshot(path=str(SHOTS / "people-production-refused.png"), full_page=True)

    # A personal token: created once-shown, works with the developer's rights, then revoked.
    page.click("header a:has-text('Tokens')")
    page.fill("input[name=name]", "laptop")
    page.click("#create-token")
    token = page.inner_text("#token-value").strip()
    assert token.startswith("pdt_")
    page.screenshot(path=str(SHOTS / "people-token-created.png"), full_page=True)
    auth = {"Authorization": f"Bearer {token}"}
    listed = requests.get(f"{made.base_url}/api/v1/deployments", headers=auth, timeout=10)
    assert listed.status_code == 200
    assert {d["project"] for d in listed.json()["deployments"]} == {"sample-app"}
    refused = requests.post(
        f"{made.base_url}/api/v1/projects/sample-app/environments/production/deployments",
        headers=auth,
        json={},
        timeout=10,
    )
    assert refused.status_code == 403
    page.goto(f"{made.base_url}/tokens")
    assert token not in page.content()  # shown once
    page.click("#tokens button:has-text('Revoke')")
    page.wait_for_selector("text=Token revoked")
    assert page.query_selector("#no-tokens") is not None
    page.screenshot(path=str(SHOTS / "people-token-revoked.png"), full_page=True)
    assert requests.get(f"{made.base_url}/api/v1/deployments", headers=auth, timeout=10).status_code == 401
