"""A push deployed to two hosts over real sshd, through real gunicorn, a real worker and the fake GitLab."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import SHOTS, Stack
from tests.e2e.test_cli import cli
from tests.e2e.test_end_to_end import final_status, push
from tests.helpers import ADMIN_TOKEN, sign_in_session
from tests.sshd import HAVE_SSHD, SKIP_REASON, SshHost, health_port, ssh_hosts

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not HAVE_SSHD, reason=SKIP_REASON)]

BUILD = "#!/bin/sh\nset -e\ncp app.txt built.txt\n"


@contextlib.contextmanager
def hosts_stack(
    stack: object, tmp_path: Path, count: int, batch: int, deploy: list[str]
) -> Iterator[tuple[Stack, list[SshHost]]]:
    """``count`` sshd hosts and a started stack (web and worker) that deploys to them."""
    key = tmp_path / "client" / "id_ed25519"
    key.parent.mkdir()
    with ssh_hosts(tmp_path / "hosts", count, key) as hosts:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("".join(h.known_hosts_line() + "\n" for h in hosts))
        made: Stack = stack(  # type: ignore[operator]
            targets=[h.target for h in hosts],
            ssh_key=f"file:{key}",
            known_hosts=f"file:{known_hosts}",
            rollout={"batch": batch},
            deploy=deploy,
            health_check={"url": f"http://{{host}}:{health_port(hosts[0])}/", "timeout": 5},
        )
        made.start_web()
        made.start_worker()
        yield made, hosts


def test_a_push_reaches_both_hosts_and_every_view_shows_them(stack: object, tmp_path: Path) -> None:
    deploy = ['echo "$PUSHDEPLOY_HOST" > deployed-on.txt']
    with hosts_stack(stack, tmp_path, 2, batch=1, deploy=deploy) as (made, hosts):
        sha = made.repo.commit({"build.sh": BUILD, "app.txt": "two hosts\n", "health.txt": "ok\n"})

        deployment_id = push(made, sha)["deployment"]

        assert final_status(made, sha) == ["pending", "running", "success"]
        running = [s for s in made.gitlab.statuses(sha=sha) if s["state"] == "running"]
        assert [s["description"] for s in running] == ["Deploying to 2 hosts"]
        for host in hosts:
            assert host.current() == deployment_id
            assert (host.root / "current" / "built.txt").read_text() == "two hosts\n"
            assert (host.root / "current" / "deployed-on.txt").read_text() == f"{host.address}\n"
        record = made.api(f"/deployments/{deployment_id}")
        assert [(h["host"], h["state"]) for h in record["hosts"]] == [(h.name, "live") for h in hosts]

        session = requests.Session()
        assert sign_in_session(session, made.base_url).ok
        page = session.get(f"{made.base_url}/deployments/{deployment_id}", timeout=5).text
        assert "<h2>Hosts</h2>" in page
        assert all(f'<tr data-host="{h.name}">' in page for h in hosts)
        polled = session.get(f"{made.base_url}/deployments/{deployment_id}/log", timeout=5).json()
        assert [h["state"] for h in polled["hosts"]] == ["live", "live"]

        shown = cli(made, "show", deployment_id, "--url", made.base_url)
        assert shown.returncode == 0, shown.stderr
        assert all(h.name in shown.stdout for h in hosts) and "HOST" in shown.stdout


def test_three_hosts_on_the_deployment_page_in_a_real_browser(
    stack: object, tmp_path: Path, browser: object
) -> None:
    """The page's hosts table, as a person sees it: every host live (screenshot kept for people)."""
    deploy = ['echo "serving on $PUSHDEPLOY_HOST"']
    with hosts_stack(stack, tmp_path, 3, batch=2, deploy=deploy) as (made, hosts):
        sha = made.repo.commit({"build.sh": BUILD, "app.txt": "three hosts\n", "health.txt": "ok\n"})
        deployment_id = push(made, sha)["deployment"]
        assert final_status(made, sha) == ["pending", "running", "success"]

        page = browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
        page.goto(f"{made.base_url}/login/admin")
        page.fill("input[name=token]", ADMIN_TOKEN)
        page.click("button:has-text('Sign in')")
        page.wait_for_selector("h1:has-text('Projects')")
        page.goto(f"{made.base_url}/deployments/{deployment_id}")
        rows = page.locator("tr[data-host]")
        assert rows.count() == 3
        assert [rows.nth(i).inner_text().split()[0] for i in range(3)] == [h.name for h in hosts]
        assert all("live" in rows.nth(i).inner_text() for i in range(3))
        page.screenshot(path=str(SHOTS / "deployment-three-hosts.png"), full_page=True)
