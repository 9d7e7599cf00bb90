"""A real headless Chromium: sign in, the overview, a deployment's log updating live, the buttons and
the audit log — all under the pages' Content-Security-Policy, with no violation reported.

Screenshots are kept under ``test-artifacts/screenshots/`` for people to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import SHOTS, Stack
from tests.helpers import ADMIN_TOKEN, push_body, signed_headers, wait_for

pytestmark = pytest.mark.e2e

SLOW_BUILD = 'for i in 1 2 3 4 5 6; do echo "compiling part $i of 6"; sleep 1; done'

RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""
"""Injected by the driver (not subject to the page's policy): every CSP violation the page meets."""


def watch_csp(page: object) -> list[str]:
    """Console messages that report a Content-Security-Policy violation, as Chromium prints them."""
    seen: list[str] = []
    page.add_init_script(RECORD_VIOLATIONS)  # type: ignore[attr-defined]
    page.on(  # type: ignore[attr-defined]
        "console",
        lambda message: seen.append(message.text)
        if "Content Security Policy" in message.text or "Refused to" in message.text
        else None,
    )
    return seen


def violations(page: object) -> list[str]:
    return list(page.evaluate("window.__violations || []"))  # type: ignore[attr-defined]


def test_overview_and_a_live_log_in_a_real_browser(stack: object, browser: object) -> None:
    made: Stack = stack(build=[SLOW_BUILD], deploy=["echo live"])  # type: ignore[operator]
    made.start_web()
    made.start_worker()
    page = browser.new_page(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    console = watch_csp(page)

    page.goto(made.base_url + "/")
    assert "/login" in page.url  # private until signed in
    page.click("#admin-login")  # break glass: this stack has no GitLab sign-in
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Projects')")
    assert "sample-app" in page.inner_text("table")
    page.screenshot(path=str(SHOTS / "overview-empty.png"), full_page=True)

    sha = made.repo.commit({"app.txt": "x\n"})
    body = push_body(sha)
    answer = requests.post(
        f"{made.base_url}/hooks/gitlab/sample-app", data=body, headers=signed_headers(body), timeout=5
    )
    url = answer.json()["url"]
    page.goto(url)
    page.wait_for_selector("#log:has-text('compiling part 1 of 6')", timeout=20_000)
    loaded = page.evaluate("performance.timeOrigin")
    page.wait_for_selector("#log:has-text('compiling part 3 of 6')", timeout=20_000)
    assert page.evaluate("performance.timeOrigin") == loaded  # new lines arrived without a reload
    assert page.inner_text("#state") == "running"
    page.screenshot(path=str(SHOTS / "deployment-live.png"), full_page=True)

    assert violations(page) == []  # the live log ran under the policy
    page.wait_for_selector("#state:has-text('succeeded')", timeout=30_000)
    page.wait_for_load_state()
    assert "deployment succeeded" in page.inner_text("#log")
    page.screenshot(path=str(SHOTS / "deployment-succeeded.png"), full_page=True)

    page.goto(made.base_url + "/")
    page.wait_for_selector("text=succeeded")
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
    assert Path(SHOTS / "overview.png").stat().st_size > 1000
    assert violations(page) == [] and console == []


def test_which_recipe_ran_and_a_refused_one_in_a_real_browser(stack: object, browser: object) -> None:
    made: Stack = stack(build=["echo server build"], deploy=["echo server deploy"])  # type: ignore[operator]
    made.start_web()
    made.start_worker()
    page = browser.new_page(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    page.goto(made.base_url + "/login/admin")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Projects')")

    def deploy(files: dict[str, str]) -> str:
        body = push_body(made.repo.commit(files))
        answer = requests.post(
            f"{made.base_url}/hooks/gitlab/sample-app", data=body, headers=signed_headers(body), timeout=5
        )
        deployment_id, url = answer.json()["deployment"], answer.json()["url"]
        wait_for(
            lambda: made.api(f"/deployments/{deployment_id}")["state"] in ("succeeded", "failed"),
            timeout=30,
            what="the deployment to end",
        )
        page.goto(url)  # an ended deployment's page: no live reload under the test
        return str(url)

    steps = 'build = ["mkdir -p public", "echo hello > public/index.html"]\n[env]\nSITE = "www"\n'
    deploy({".pushdeploy.toml": steps})
    assert page.inner_text("#state") == "succeeded", page.inner_text("#log")
    recipe = page.inner_text("#recipe")
    assert (
        ".pushdeploy.toml at" in recipe and "public/index.html" in recipe and "echo server deploy" in recipe
    )
    page.screenshot(path=str(SHOTS / "deployment-recipe.png"), full_page=True)

    deploy({".pushdeploy.toml": 'build = "make"\ntargets = ["ssh://root@elsewhere/srv"]\n'})
    assert page.inner_text("#state") == "failed"
    assert page.inner_text(".reason") == (
        ".pushdeploy.toml line 2: targets: is the server's to set, not the repository's: refused"
    )
    assert "no step has run" in page.inner_text("#log")
    assert "refused, no step ran" in page.inner_text("#recipe")
    page.screenshot(path=str(SHOTS / "deployment-recipe-refused.png"), full_page=True)


def test_an_already_deployed_success_is_calm_and_commits_have_titles(stack: object, browser: object) -> None:
    """A redeploy of what is live ends "already deployed": not shown in the failure banner's red."""
    made: Stack = stack(deploy=["echo live"])  # type: ignore[operator]
    made.start_web()
    made.start_worker()
    sha = made.repo.commit({"app.txt": "calm\n"}, "Calm the banner")
    ids = []
    for _ in range(2):  # the second delivery (a new one) finds the sha live
        body = push_body(sha, message="Calm the banner\n\nbody")
        answer = requests.post(
            f"{made.base_url}/hooks/gitlab/sample-app", data=body, headers=signed_headers(body), timeout=5
        )
        ids.append(answer.json()["deployment"])
        wait_for(lambda: made.api(f"/deployments/{ids[-1]}")["state"] == "succeeded", timeout=60)
    assert made.api(f"/deployments/{ids[1]}")["reason"] == "already deployed"
    page = browser.new_page(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    page.goto(made.base_url + "/login/admin")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Projects')")
    page.goto(f"{made.base_url}/deployments/{ids[1]}")
    banner = page.locator("p.reason")
    assert banner.inner_text() == "already deployed"
    background = banner.evaluate("e => getComputedStyle(e).backgroundColor")
    assert background != "rgb(253, 236, 234)"  # the failure banner's colour
    assert page.inner_text("#commit-title") == "Calm the banner"
    page.screenshot(path=str(SHOTS / "deployment-already-deployed.png"), full_page=True)
    page.goto(f"{made.base_url}/projects/sample-app")
    assert page.inner_text("table").count("Calm the banner") == 2


def test_buttons_and_the_audit_log_in_a_real_browser(stack: object, browser: object) -> None:
    """Cancel and redeploy with the page's buttons (forms with CSRF tokens), then read the audit log."""
    made: Stack = stack(build=[SLOW_BUILD], deploy=["echo live"])  # type: ignore[operator]
    made.start_web()
    made.start_worker()
    page = browser.new_page(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    console = watch_csp(page)
    page.goto(made.base_url + "/login/admin")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Projects')")

    sha = made.repo.commit({"app.txt": "x\n"})
    body = push_body(sha)
    first = requests.post(
        f"{made.base_url}/hooks/gitlab/sample-app", data=body, headers=signed_headers(body), timeout=5
    ).json()
    page.goto(first["url"])
    page.wait_for_selector("#log:has-text('compiling part 1 of 6')", timeout=30_000)
    page.click("button:has-text('Cancel')")
    page.wait_for_selector("#state:has-text('canceled')", timeout=30_000)
    assert "push by" in page.inner_text("dl") and "canceled by admin" in page.inner_text("dl")
    page.click("button:has-text('Redeploy')")
    page.wait_for_selector("dd:has-text('deploy by admin')")  # the new deployment's page
    assert page.url != first["url"]

    page.click("text=Audit log")
    page.wait_for_selector("h1:has-text('Audit log')")
    table = page.inner_text("#audit")
    for action in ("sign_in", "deploy", "cancel"):
        assert action in table, action
    page.select_option("select[name=action]", "cancel")
    page.click("button:has-text('Filter')")
    page.wait_for_url("**/audit?*action=cancel*")
    rows = page.locator("#audit tbody tr")
    assert rows.count() == 1 and "admin" in rows.first.inner_text()
    page.screenshot(path=str(SHOTS / "audit-log.png"), full_page=True)
    assert violations(page) == [] and console == []
