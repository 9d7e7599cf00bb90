"""Review apps end to end in one process: the real web app receives GitLab's merge request hook,
a real RQ worker deploys and stops, the outbox courier talks to the fake GitLab; real git with
``refs/merge-requests/<iid>/head`` in the bare repository. Nothing is mocked."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, SimpleWorker

from tests.fakegitlab import FakeGitLab
from tests.helpers import GitRepo, admin_sign_in, git, signed_headers, use_engine, wait_for
from tests.sshd import HAVE_SSHD, SKIP_REASON, ssh_hosts
from webhook.app import create_app
from webhook.drainer import Drainer
from webhook.journal import Journal, Record
from workers import audit as audit_store
from workers import defaults, schema
from workers.audit import Query
from workers.config import Settings
from workers.connection import web_redis
from workers.deployments import DeploymentStore, State, new_id
from workers.forge import forge_for
from workers.intake import Intake, Push
from workers.outbox import DUE_KEY, Courier, recorded
from workers.review_requests import ReviewRequest
from workers.reviews import AppState, ReviewStore
from workers.worker import Janitor

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "merge_request_hook.json"
TOKEN = "gitlab-review-token-canary-77aa"
HOOK = "/hooks/gitlab/sample-app"
REVIEW = {
    "url": "https://mr-{iid}.review.test",
    "deploy": ['echo "$PUSHDEPLOY_ENVIRONMENT $PUSHDEPLOY_REVIEW_IID $PUSHDEPLOY_REVIEW_URL" > deployed.txt'],
    "stop": ['echo "stopped $PUSHDEPLOY_REVIEW_IID $PUSHDEPLOY_ENVIRONMENT" > "$STOP_MARKER"'],
}


def mr_body(
    iid: int,
    sha: str,
    action: str = "open",
    oldrev: str | None = None,
    target: str = "main",
    source: str = "feature",
    fork: bool = False,
    draft: bool = False,
) -> bytes:
    """GitLab's documented merge request payload, pointed at our project and commit."""
    payload: dict[str, Any] = copy.deepcopy(json.loads(SAMPLE.read_text()))
    payload["project"].update(id=42, path_with_namespace="tools/sample-app")
    attributes = payload["object_attributes"]
    attributes.update(
        iid=iid,
        action=action,
        target_branch=target,
        source_branch=source,
        source_project_id=99 if fork else 42,
        target_project_id=42,
        draft=draft,
        work_in_progress=draft,
    )
    attributes["last_commit"]["id"] = sha
    if oldrev:
        attributes["oldrev"] = oldrev
    return json.dumps(payload).encode()


def open_merge_request(repo: GitRepo, iid: int, files: dict[str, str], branch: str = "feature") -> str:
    """Commit on ``branch`` and publish it as GitLab does: the branch and refs/merge-requests/<iid>/head."""
    sha = repo.commit(files, f"work on !{iid}", branch=branch)
    git("push", "--quiet", "--force", "origin", f"HEAD:refs/merge-requests/{iid}/head", cwd=repo.work)
    return sha


@pytest.fixture
def gitlab(git_repo: GitRepo) -> Iterator[FakeGitLab]:
    with FakeGitLab({"tools/sample-app": 42}, token=TOKEN) as fake:
        fake.use_repository(git_repo.url)
        yield fake


@pytest.fixture
def review_settings(
    make_settings: Callable[..., Settings], gitlab: FakeGitLab, git_repo: GitRepo, tmp_path: Path
) -> Callable[..., Settings]:
    git_repo.commit({"app.txt": "main\n"}, "main")

    def make(review: dict[str, Any] | None = None, **project: Any) -> Settings:
        return make_settings(
            gitlab={"url": gitlab.url, "token": TOKEN},
            build=[],
            review={**REVIEW, **(review or {})},
            env={"STOP_MARKER": str(tmp_path / "stop-marker.txt")},
            **project,
        )

    return make


class Hub:
    """The web app, a worker and the courier of one configuration."""

    def __init__(self, settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
        self.settings = settings
        self.redis = redis
        self.client: FlaskClient = create_app(settings, redis, drain=False).test_client()  # tests drain
        self.marker = tmp / "stop-marker.txt"
        use_engine(settings, redis, monkeypatch)
        self.courier = Courier(redis, forge_for(settings.gitlab), delays=(0.05,))

    def deliver(self, body: bytes) -> tuple[int, dict[str, Any]]:
        response = self.client.post(HOOK, data=body, headers=signed_headers(body, event="Merge Request Hook"))
        return response.status_code, response.get_json()

    def work(self) -> None:
        SimpleWorker([Queue(defaults.DEPLOY_QUEUE, connection=self.redis)], connection=self.redis).work(
            burst=True
        )

        def drained() -> bool:
            self.courier.deliver_due()
            return bool(self.redis.zcard(DUE_KEY) == 0)

        wait_for(drained, timeout=20, what="the outbox to drain")

    def app_dir(self, iid: int) -> Path:
        return self.settings.server.data_dir / "projects" / "sample-app" / f"review-{iid}"


@pytest.fixture
def hub(redis: Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[Settings], Hub]:
    return lambda settings: Hub(settings, redis, monkeypatch, tmp_path)


def test_an_opened_merge_request_is_deployed_as_its_review_app_with_one_note(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
    redis: Redis,
) -> None:
    site = hub(review_settings())
    sha = open_merge_request(git_repo, 7, {"app.txt": "feature\n"})

    status, body = site.deliver(mr_body(7, sha))
    site.work()

    assert status == 202
    done = DeploymentStore(redis).get(body["deployment"])
    assert (done.state, done.environment, done.ref, done.sha) == (
        State.SUCCEEDED,
        "review/7",
        "refs/heads/feature",
        sha,
    )
    current = site.app_dir(7) / "current"
    assert (current / "app.txt").read_text() == "feature\n"
    assert (current / "deployed.txt").read_text() == "review/7 7 https://mr-7.review.test\n"
    statuses = gitlab.statuses(sha=sha)
    assert {(s["name"], s["ref"]) for s in statuses} == {("deploy/review", "feature")}
    assert [s["state"] for s in statuses] == ["pending", "running", "success"]
    [note] = gitlab.merge_request_notes(7)
    assert "https://mr-7.review.test" in note["body"]
    assert sha[:12] in note["body"]
    assert f"/deployments/{done.id}" in note["body"]
    assert ": live" in note["body"]
    assert [r.status.name for r in recorded(redis, done.id)] == ["deploy/review"] * 3
    # the main environment is untouched
    assert not (site.settings.server.data_dir / "projects" / "sample-app" / "production").exists()


def test_new_commits_redeploy_and_edit_the_same_note(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
    redis: Redis,
) -> None:
    site = hub(review_settings())
    first = open_merge_request(git_repo, 7, {"app.txt": "one\n"})
    site.deliver(mr_body(7, first))
    site.work()
    [note] = gitlab.merge_request_notes(7)

    second = open_merge_request(git_repo, 7, {"app.txt": "two\n"})
    status, _body = site.deliver(mr_body(7, second, action="update", oldrev=first))
    site.work()

    assert status == 202
    assert (site.app_dir(7) / "current" / "app.txt").read_text() == "two\n"
    [edited] = gitlab.merge_request_notes(7)
    assert edited["id"] == note["id"]
    assert second[:12] in edited["body"] and first[:12] not in edited["body"]
    assert ReviewStore(redis).get("sample-app", 7).sha == second  # type: ignore[union-attr]


def test_a_deleted_note_is_created_again_once(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
) -> None:
    site = hub(review_settings())
    first = open_merge_request(git_repo, 7, {"app.txt": "one\n"})
    site.deliver(mr_body(7, first))
    site.work()
    gitlab.notes.clear()  # someone deleted it on GitLab: editing it answers 404

    second = open_merge_request(git_repo, 7, {"app.txt": "two\n"})
    site.deliver(mr_body(7, second, action="update", oldrev=first))
    site.work()

    [again] = gitlab.merge_request_notes(7)
    assert second[:12] in again["body"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"action": "update"}, "merge request update without new commits (no oldrev)"),
        ({"action": "approved"}, "merge request action 'approved' neither deploys nor stops a review app"),
        ({"fork": True}, "merge request from a fork: review apps for forks are off (forks = false)"),
        ({"target": "develop"}, "target branch 'develop' is not deployed"),
    ],
)
def test_what_is_not_deployed_is_ignored_with_its_reason(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    redis: Redis,
    change: dict[str, Any],
    reason: str,
) -> None:
    site = hub(review_settings())
    sha = open_merge_request(git_repo, 7, {"app.txt": "x\n"})
    status, body = site.deliver(mr_body(7, sha, **change))
    assert (status, body) == (200, {"ignored": reason})
    assert redis.zcard(schema.reviews("sample-app")) == 0


def test_drafts_are_ignored_only_when_drafts_is_false(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
) -> None:
    sha = open_merge_request(git_repo, 7, {"app.txt": "x\n"})
    assert hub(review_settings()).deliver(mr_body(7, sha, draft=True))[0] == 202
    status, body = hub(review_settings(review={"drafts": False})).deliver(mr_body(8, sha, draft=True))
    assert (status, body) == (
        200,
        {"ignored": "draft merge request: review apps for drafts are off (drafts = false)"},
    )


def test_forks_deploy_when_allowed_from_the_projects_own_merge_request_ref(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    redis: Redis,
) -> None:
    site = hub(review_settings(review={"forks": True}))
    sha = open_merge_request(git_repo, 9, {"app.txt": "fork\n"}, branch="fork-work")
    git("push", "--quiet", "origin", "--delete", "fork-work", cwd=git_repo.work)  # only the MR ref remains
    status, body = site.deliver(mr_body(9, sha, fork=True, source="fork-work"))
    site.work()
    assert status == 202
    assert DeploymentStore(redis).get(body["deployment"]).state is State.SUCCEEDED
    assert (site.app_dir(9) / "current" / "app.txt").read_text() == "fork\n"


def test_a_commit_that_is_not_the_merge_requests_head_is_refused(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    redis: Redis,
) -> None:
    site = hub(review_settings())
    elsewhere = git_repo.commit({"app.txt": "not in the MR\n"}, branch="other")
    open_merge_request(git_repo, 7, {"app.txt": "mr\n"})
    _status, body = site.deliver(mr_body(7, elsewhere))
    site.work()
    done = DeploymentStore(redis).get(body["deployment"])
    assert done.state is State.FAILED
    assert "is not the head of merge request !7" in done.reason


@pytest.mark.parametrize(("action", "why"), [("close", "closed"), ("merge", "merged")])
def test_close_and_merge_stop_the_app_and_clean_up(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
    redis: Redis,
    action: str,
    why: str,
) -> None:
    site = hub(review_settings(gitlab_environments=True))
    sha = open_merge_request(git_repo, 7, {"app.txt": "x\n"})
    site.deliver(mr_body(7, sha))
    site.work()
    environment = gitlab.environment("review/7")
    assert environment is not None
    assert (environment["external_url"], environment["state"]) == ("https://mr-7.review.test", "available")
    assert [d["environment"] for d in gitlab.deployments] == ["review/7"]

    status, body = site.deliver(mr_body(7, sha, action=action))
    site.work()

    assert (status, body) == (202, {"stopping": "review/7"})
    assert site.marker.read_text() == "stopped 7 review/7\n"
    assert not site.app_dir(7).exists()
    assert gitlab.environment("review/7")["state"] == "stopped"  # type: ignore[index]
    [note] = gitlab.merge_request_notes(7)
    assert ": stopped" in note["body"] and f"was {why}" in note["body"]
    app = ReviewStore(redis).get("sample-app", 7)
    assert app is not None and app.state is AppState.STOPPED
    assert 0 < redis.ttl(schema.review("sample-app", 7)) <= defaults.REVIEW_KEEP_DAYS * 86400


def test_merge_request_events_while_redis_is_down_are_journaled_then_deployed_and_stopped(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
    redis: Redis,
) -> None:
    """GitLab does not send a failed delivery again: a merge request's event is journaled like a push."""
    settings = review_settings()
    site = hub(settings)
    first = open_merge_request(git_repo, 7, {"app.txt": "seven\n"})
    site.deliver(mr_body(7, first))
    site.work()
    second = open_merge_request(git_repo, 9, {"app.txt": "nine\n"}, branch="other")
    down = create_app(settings, web_redis("redis://127.0.0.1:1/0"), drain=False).test_client()

    def deliver(body: bytes) -> tuple[int, dict[str, Any]]:
        answer = down.post(HOOK, data=body, headers=signed_headers(body, event="Merge Request Hook"))
        return answer.status_code, answer.get_json()

    opened = deliver(mr_body(9, second, source="other"))
    closed = deliver(mr_body(7, first, action="close"))
    assert opened[0] == 202 and closed == (202, {"stopping": "review/7"})
    assert ReviewStore(redis).get("sample-app", 9) is None  # nothing reached Redis yet

    drainer = Drainer(settings, Journal(settings.server.data_dir), Intake(redis, settings.server.public_url))
    assert drainer.drain_once() == 2
    deployment = DeploymentStore(redis).get(opened[1]["deployment"])  # the id GitLab was answered with
    assert (deployment.environment, deployment.trigger) == ("review/9", "merge request")
    assert deployment.sha == second
    site.work()

    assert DeploymentStore(redis).get(deployment.id).state is State.SUCCEEDED
    nine, seven = ReviewStore(redis).get("sample-app", 9), ReviewStore(redis).get("sample-app", 7)
    assert nine is not None and (nine.state, nine.branch) == (AppState.LIVE, "other")
    assert seven is not None and seven.state is AppState.STOPPED
    assert site.marker.read_text() == "stopped 7 review/7\n"
    assert drainer.drain_once() == 0


def test_a_journaled_event_older_than_a_live_one_is_dropped_and_a_bad_one_holds_up_nothing(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    redis: Redis,
) -> None:
    """Each web node drains its own journal, seconds after Redis is back: live deliveries may come first."""
    settings = review_settings()
    site = hub(settings)
    sha = open_merge_request(git_repo, 7, {"app.txt": "seven\n"})
    journal = Journal(settings.server.data_dir)
    request = ReviewRequest(7, "production", "feature", "seven")
    push = Push("refs/heads/feature", sha, "alice", "d-journaled", trigger="merge request")
    journal.append(Record.of(new_id(), "sample-app", "review/7", push, request))  # sent first...
    journal.append(Record.stop("sample-app", 8, "exploded"))  # a reason no pushdeploy writes
    site.deliver(mr_body(7, sha, action="close"))  # ...but this live close reached Redis first
    assert ReviewStore(redis).get("sample-app", 7) is None  # nothing was live: nothing to stop
    site.deliver(mr_body(7, sha))  # reopened, live: deployed once
    site.work()
    stale_stop = Record.stop("sample-app", 7, "closed")
    journal.append(dataclasses.replace(stale_stop, created_at=time.time() - 60))  # sent before the reopen
    nine = ReviewRequest(9, "production", "b", "")
    journal.append(Record.of(new_id(), "sample-app", "review/9", push, nine))
    drainer = Drainer(settings, journal, Intake(redis, settings.server.public_url))

    assert drainer.drain_once() == 4  # all read: two stale ones dropped, a bad one dropped, one new
    site.work()
    seven, ninth = ReviewStore(redis).get("sample-app", 7), ReviewStore(redis).get("sample-app", 9)
    assert seven is not None and seven.state is AppState.LIVE  # the stale stop did not end the reopened app
    assert len(DeploymentStore(redis).history("sample-app", "review/7", limit=10)) == 1  # the live one only
    assert ninth is not None and ninth.state is AppState.LIVE  # the bad line held up nothing after it
    assert not journal.pending()


def test_a_journaled_review_deployment_is_dropped_when_the_project_has_no_review_apps_any_more(
    review_settings: Callable[..., Settings],
    make_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
) -> None:
    settings = review_settings()
    sha = open_merge_request(git_repo, 7, {"app.txt": "seven\n"})
    journal = Journal(settings.server.data_dir)
    push = Push("refs/heads/feature", sha, "alice", "d-1", trigger="merge request")
    seven = ReviewRequest(7, "production", "f", "")
    journal.append(Record.of(new_id(), "sample-app", "review/7", push, seven))
    without = make_settings(build=[])  # the same data_dir, [review] removed before Redis came back
    assert without.projects["sample-app"].review is None

    assert Drainer(without, journal, Intake(redis, without.server.public_url)).drain_once() == 1
    assert ReviewStore(redis).get("sample-app", 7) is None
    assert DeploymentStore(redis).history("sample-app", "review/7", limit=10) == []


def test_a_reopened_merge_request_deploys_its_head_again(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
    redis: Redis,
) -> None:
    site = hub(review_settings())
    sha = open_merge_request(git_repo, 7, {"app.txt": "x\n"})
    site.deliver(mr_body(7, sha))
    site.work()
    site.deliver(mr_body(7, sha, action="close"))
    site.work()

    status, body = site.deliver(mr_body(7, sha, action="reopen"))
    site.work()

    assert status == 202
    done = DeploymentStore(redis).get(body["deployment"])
    assert done.state is State.SUCCEEDED and done.reason == ""
    assert (site.app_dir(7) / "current" / "app.txt").read_text() == "x\n"
    assert len(gitlab.merge_request_notes(7)) == 1


def test_beyond_max_the_least_recently_updated_app_stops(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
    redis: Redis,
) -> None:
    site = hub(review_settings(review={"max": 2}))
    for iid in (1, 2):
        site.deliver(
            mr_body(iid, open_merge_request(git_repo, iid, {"app.txt": f"{iid}\n"}, branch=f"b{iid}"))
        )
        site.work()
    newer = open_merge_request(git_repo, 1, {"app.txt": "1 again\n"}, branch="b1")
    site.deliver(mr_body(1, newer, action="update", oldrev="0" * 40))  # !1 is now the most recent
    site.work()

    site.deliver(mr_body(3, open_merge_request(git_repo, 3, {"app.txt": "3\n"}, branch="b3")))
    site.work()

    states = {app.iid: app.state for app in ReviewStore(redis).all("sample-app")}
    assert states == {1: AppState.LIVE, 2: AppState.STOPPED, 3: AppState.LIVE}
    assert not site.app_dir(2).exists()
    assert site.app_dir(1).exists() and site.app_dir(3).exists()
    [note] = gitlab.merge_request_notes(2)
    assert "review.max" in note["body"]


def test_idle_apps_expire_after_ttl(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    redis: Redis,
) -> None:
    settings = review_settings(review={"ttl": 2})
    site = hub(settings)
    for iid in (1, 2):
        site.deliver(
            mr_body(iid, open_merge_request(git_repo, iid, {"app.txt": f"{iid}\n"}, branch=f"b{iid}"))
        )
        site.work()
    redis.hset(schema.review("sample-app", 1), "updated_at", str(time.time() - 3 * 86400))

    janitor = Janitor(settings, redis)  # what every worker runs beside its jobs
    assert janitor.expire_reviews() == [1]
    assert janitor.expire_reviews() == []  # looked at once a minute, by one worker of many
    site.work()

    states = {app.iid: app.state for app in ReviewStore(redis).all("sample-app")}
    assert states == {1: AppState.STOPPED, 2: AppState.LIVE}
    assert not site.app_dir(1).exists()


def test_a_stop_cancels_the_deployment_that_runs(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    redis: Redis,
) -> None:
    site = hub(review_settings(review={"deploy": ["sleep 30"]}))
    sha = open_merge_request(git_repo, 7, {"app.txt": "x\n"})
    _, body = site.deliver(mr_body(7, sha))
    answers: list[tuple[int, dict[str, Any]]] = []

    def close_while_it_runs() -> None:
        wait_for(lambda: redis.hget(schema.record(body["deployment"]), "step_pgid"), what="the deploy step")
        answers.append(site.deliver(mr_body(7, sha, action="close")))

    closer = threading.Thread(target=close_while_it_runs)
    closer.start()
    started = time.monotonic()
    site.work()  # the deployment, canceled mid-step, then the stop job
    closer.join(timeout=30)

    assert answers == [(202, {"stopping": "review/7"})]
    assert time.monotonic() - started < 25
    done = DeploymentStore(redis).get(body["deployment"])
    assert done.state is State.CANCELED
    assert not site.app_dir(7).exists()
    assert ReviewStore(redis).get("sample-app", 7).state is AppState.STOPPED  # type: ignore[union-attr]


def test_review_apps_are_listed_and_stopped_by_hand_in_the_api_the_page_and_the_cli(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from werkzeug.serving import make_server

    from tests.helpers import ADMIN_TOKEN
    from webhook.cli import main

    settings = review_settings()
    site = hub(settings)
    for iid in (4, 5, 6):
        sha = open_merge_request(git_repo, iid, {"app.txt": f"{iid}\n"}, branch=f"mr-{iid}")
        assert site.deliver(mr_body(iid, sha, source=f"mr-{iid}"))[0] == 202
        site.work()
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    listed = site.client.get("/api/v1/projects/sample-app/reviews", headers=bearer).get_json()["reviews"]
    assert [(r["iid"], r["branch"], r["state"], r["url"]) for r in listed] == [
        (6, "mr-6", "live", "https://mr-6.review.test"),
        (5, "mr-5", "live", "https://mr-5.review.test"),
        (4, "mr-4", "live", "https://mr-4.review.test"),
    ]
    badge = site.client.get("/badges/sample-app/review/5.json").get_json()
    assert (badge["label"], badge["message"]) == ("review/5", f"deployed {listed[1]['sha'][:8]}")
    assert "review/5" in site.client.get("/badges/sample-app/review/5.svg").get_data(as_text=True)
    history = site.client.get("/api/v1/deployments?environment=review/5", headers=bearer).get_json()
    assert [d["environment"] for d in history["deployments"]] == ["review/5"]

    answer = site.client.post("/api/v1/projects/sample-app/reviews/4/stop", headers=bearer)
    assert (answer.status_code, answer.get_json()) == (202, {"stopping": "review/4"})
    assert site.client.post("/api/v1/projects/sample-app/reviews/99/stop", headers=bearer).status_code == 404
    site.work()
    assert not site.app_dir(4).exists()
    assert "stopped by hand (admin)" in gitlab.merge_request_notes(4)[0]["body"]  # who stopped it

    assert admin_sign_in(site.client).status_code == 302
    page = site.client.get("/projects/sample-app").get_data(as_text=True)
    assert "Review apps" in page and "https://mr-5.review.test" in page and "stopped by hand" in page
    shown = site.client.get(f"/deployments/{listed[1]['deployment']}")
    assert shown.status_code == 200 and "review/5" in shown.get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    assert (
        site.client.post(
            "/projects/sample-app/reviews/5/stop", data={"csrf_token": token.group(1)}
        ).status_code
        == 302
    )
    site.work()
    assert not site.app_dir(5).exists()
    stops, _ = audit_store.read(redis, Query(action="review_stop"), 10)
    assert [(e.who, e.via, e.project, e.environment) for e in reversed(stops)] == [
        ("admin", "admin_token", "sample-app", "review/4"),  # the API, with the bearer token
        ("admin", "admin_token", "sample-app", "review/5"),  # the page's Stop button
    ]
    stopped = site.client.get("/api/v1/projects/sample-app/reviews", headers=bearer).get_json()["reviews"]
    assert {r["iid"]: r["reason"] for r in stopped}[5] == "stopped by hand (admin)"

    server = make_server("127.0.0.1", 0, site.client.application, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        capsys.readouterr()
        assert main(["-c", str(settings.path), "review", "list", "sample-app", "--url", url]) == 0
        out = capsys.readouterr().out
        assert "!6" in out and "https://mr-6.review.test" in out and "stopped" in out
        assert "stopped by hand (admin)" in out  # who stopped !5 from its page
        assert main(["-c", str(settings.path), "review", "stop", "sample-app", "6", "--url", url]) == 0
        assert "sample-app/review/6: stopping" in capsys.readouterr().out
        assert main(["-c", str(settings.path), "review", "stop", "sample-app", "6x", "--url", url]) == 2
    finally:
        server.shutdown()
    site.work()
    assert {app.iid: app.state for app in ReviewStore(redis).all("sample-app")} == {
        4: AppState.STOPPED,
        5: AppState.STOPPED,
        6: AppState.STOPPED,
    }


def test_a_review_app_takes_the_target_branchs_settings_and_its_own_steps_and_check(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        environments={
            "production": {"branch": "main", "deploy": ["./prod.sh"], "env": {"MODE": "prod"}},
            "staging": {"branch": "develop", "deploy": ["./staging.sh"], "env": {"MODE": "staging"}},
        },
        environment=None,
        branch=None,
        review={
            "url": "https://mr-{iid}.example.test",
            "health_check": {"url": "http://127.0.0.1:9{iid}/healthz"},
        },
    )
    project = settings.projects["sample-app"]
    app = project.review_environment(project.environments["staging"], 7)
    assert (app.name, app.directory, app.status_name) == ("review/7", "review-7", "deploy/review")
    assert (app.deploy, app.env) == (("./staging.sh",), {"MODE": "staging"})
    assert app.health_check is not None and app.health_check.url == "http://127.0.0.1:97/healthz"
    assert app.review_variables() == {
        "PUSHDEPLOY_REVIEW_IID": "7",
        "PUSHDEPLOY_REVIEW_URL": "https://mr-7.example.test",
    }


@pytest.mark.parametrize(
    ("review", "problem"),
    [
        ({"url": "https://review.example.test"}, "projects.sample-app.review.url: must hold {iid}"),
        (
            {"url": "https://mr-{iid}.test", "max": 0},
            "projects.sample-app.review.max: must be an integer ≥ 1",
        ),
        (
            {"url": "https://mr-{iid}.test", "forks": "yes"},
            "projects.sample-app.review.forks: must be true or false",
        ),
        (
            {"url": "https://mr-{iid}.test", "ttl": 0},
            "projects.sample-app.review.ttl: must be a positive number of days",
        ),
        ({"url": "https://mr-{iid}.test", "tll": 3}, "projects.sample-app.review.tll: unknown key"),
        ({"deploy": ["x"]}, "projects.sample-app.review.url: is required"),
    ],
)
def test_a_bad_review_table_is_refused_naming_the_key(
    make_settings: Callable[..., Settings], review: dict[str, Any], problem: str
) -> None:
    from workers.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        make_settings(review=review)
    assert any(problem in str(p) for p in raised.value.problems), raised.value.problems


def test_iid_in_an_environments_own_health_check_is_refused(make_settings: Callable[..., Settings]) -> None:
    from workers.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        make_settings(health_check={"url": "http://127.0.0.1:9{iid}/"})
    assert "use it in [review] health_check" in str(raised.value)


@pytest.mark.skipif(not HAVE_SSHD, reason=SKIP_REASON)
def test_with_targets_the_review_app_lives_and_stops_on_every_host(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    client_key = tmp_path_factory.mktemp("client") / "id_ed25519"
    with ssh_hosts(tmp_path / "hosts", 2, client_key) as hosts:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("\n".join(h.known_hosts_line() for h in hosts) + "\n")
        settings = review_settings(
            review={
                "deploy": ['echo "$PUSHDEPLOY_REVIEW_IID $PUSHDEPLOY_HOST" > deployed.txt'],
                "stop": [
                    'echo "$PUSHDEPLOY_ENVIRONMENT $PUSHDEPLOY_HOST" '
                    '>> "$PUSHDEPLOY_RELEASE_DIR/../../../stops.log"'
                ],
            },
            targets=[h.target for h in hosts],
            ssh_key=f"file:{client_key}",
            known_hosts=f"file:{known_hosts}",
        )
        site = hub(settings)
        sha = open_merge_request(git_repo, 7, {"app.txt": "on hosts\n"})

        status, body = site.deliver(mr_body(7, sha))
        site.work()

        assert status == 202
        done = DeploymentStore(site.redis).get(body["deployment"])
        assert done.state is State.SUCCEEDED, done.reason
        for host in hosts:
            current = host.root / "review-7" / "current"
            assert (current / "app.txt").read_text() == "on hosts\n"
            assert (current / "deployed.txt").read_text() == f"7 {host.address}\n"
            assert not (host.root / "current").exists()  # the main environment is not touched

        site.deliver(mr_body(7, sha, action="merge"))
        site.work()

        for host in hosts:
            assert not (host.root / "review-7").exists()
            assert (host.root / "stops.log").read_text() == f"review/7 {host.address}\n"
        assert ": stopped" in gitlab.merge_request_notes(7)[0]["body"]


def test_a_stopped_apps_keys_expire_and_a_reopened_ones_are_kept_again(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    redis: Redis,
) -> None:
    site = hub(review_settings())
    sha = open_merge_request(git_repo, 7, {"app.txt": "x\n"})
    _, first = site.deliver(mr_body(7, sha))
    site.work()
    site.deliver(mr_body(7, sha, action="close"))
    site.work()
    history = schema.history("sample-app", "review/7")
    assert 0 < redis.ttl(history) <= defaults.REVIEW_KEEP_DAYS * 86400
    assert 0 < redis.ttl(schema.record(first["deployment"])) <= defaults.REVIEW_KEEP_DAYS * 86400

    site.deliver(mr_body(7, sha, action="reopen"))
    site.work()

    assert redis.ttl(history) == -1
    assert redis.ttl(schema.record(first["deployment"])) == -1
    assert redis.ttl(schema.review("sample-app", 7)) == -1


def test_a_stop_asked_for_before_a_reopen_leaves_the_reopened_app_alone(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    redis: Redis,
) -> None:
    site = hub(review_settings())
    sha = open_merge_request(git_repo, 7, {"app.txt": "x\n"})
    site.deliver(mr_body(7, sha))
    site.work()
    site.deliver(mr_body(7, sha, action="close"))  # its stop job is queued, not run yet
    _, reopened = site.deliver(mr_body(7, sha, action="reopen"))

    site.work()

    assert DeploymentStore(redis).get(reopened["deployment"]).state is State.SUCCEEDED
    assert (site.app_dir(7) / "current" / "app.txt").exists()
    assert not site.marker.exists()
    assert ReviewStore(redis).get("sample-app", 7).state is AppState.LIVE  # type: ignore[union-attr]


def test_a_burst_of_commits_deploys_the_newest_and_the_note_names_only_it(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
    redis: Redis,
) -> None:
    site = hub(review_settings())
    first = open_merge_request(git_repo, 7, {"app.txt": "one\n"})
    _, older = site.deliver(mr_body(7, first))
    second = open_merge_request(git_repo, 7, {"app.txt": "two\n"})
    _, newer = site.deliver(mr_body(7, second, action="update", oldrev=first))

    site.work()

    store = DeploymentStore(redis)
    assert store.get(older["deployment"]).state is State.CANCELED
    assert store.get(older["deployment"]).reason == f"superseded by {newer['deployment']}"
    assert store.get(newer["deployment"]).state is State.SUCCEEDED
    [note] = gitlab.merge_request_notes(7)
    assert second[:12] in note["body"] and ": live" in note["body"]
    outbox = [json.loads(raw) for raw in redis.lrange(schema.statuses(older["deployment"]), 0, -1)]
    assert [entry.get("kind") for entry in outbox if entry.get("kind")] == []  # it never ran: no note


def test_gitlab_failing_on_the_note_neither_fails_the_deployment_nor_loses_the_note(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    gitlab: FakeGitLab,
    redis: Redis,
) -> None:
    site = hub(review_settings())
    sha = open_merge_request(git_repo, 7, {"app.txt": "x\n"})
    gitlab.fail_next(3, status=502, route="notes")

    _, body = site.deliver(mr_body(7, sha))
    site.work()  # the courier retries until GitLab takes it

    assert DeploymentStore(redis).get(body["deployment"]).state is State.SUCCEEDED
    assert gitlab.pending_faults == 0
    [note] = gitlab.merge_request_notes(7)
    assert ": live" in note["body"]


def test_a_recipe_in_the_merge_request_sets_the_review_apps_steps(
    review_settings: Callable[..., Settings],
    hub: Callable[[Settings], Hub],
    git_repo: GitRepo,
    redis: Redis,
) -> None:
    """The commit's .pushdeploy.toml: [review] deploy and stop run for the app, and the target
    environment's table ([environments.production]) applies to it, as its other settings do."""
    site = hub(review_settings())
    recipe = (
        '[review]\ndeploy = "echo recipe-up $PUSHDEPLOY_REVIEW_IID $GREETING > deployed.txt"\n'
        'stop = "echo recipe-down $PUSHDEPLOY_REVIEW_IID > $STOP_MARKER"\n'
        '[environments.production]\nenv = { GREETING = "from-production-table" }\n'
    )
    sha = open_merge_request(git_repo, 9, {".pushdeploy.toml": recipe})

    status, body = site.deliver(mr_body(9, sha))
    site.work()

    done = DeploymentStore(redis).get(body["deployment"])
    assert (status, done.state, done.recipe) == (202, State.SUCCEEDED, f"repo@{sha[:8]}")
    current = site.app_dir(9) / "current"
    assert (current / "deployed.txt").read_text() == "recipe-up 9 from-production-table\n"
    steps = done.steps_run()
    assert steps is not None and steps["review"]["stop"] == [
        "echo recipe-down $PUSHDEPLOY_REVIEW_IID > $STOP_MARKER"
    ]

    site.deliver(mr_body(9, sha, action="close"))
    site.work()

    assert site.marker.read_text() == "recipe-down 9\n"
    assert not site.app_dir(9).exists()
