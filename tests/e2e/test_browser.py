"""A real headless Chromium: sign in, the overview, a deployment's log updating live, the buttons and
the audit log — all under the pages' Content-Security-Policy, with no violation reported.

Screenshots are kept under ``test-artifacts/screenshots/`` for people to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import SHOTS, Stack
from tests.helpers import ADMIN_TOKEN, push_body, signed_headers

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


def test_buttons_and_the_audit_log_in_a_real_browser(stack: object, browser: object) -> None:
    """Cancel and redeploy with the page's buttons (forms with CSRF tokens), then read the audit log."""
    made: Stack = stack(build=[SLOW_BUILD], deploy=["echo live"])  # type: ignore[operator]
    made.start_web()
    made.start_worker()
    page = browser.new_page(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    console = watch_csp(page)
    page.goto(made.base_url + "/login")
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
