"""A merge request's review app through real gunicorn, a real worker process, real git and the
fake GitLab: opened → live and linked in a note; closed → stopped, removed, the note edited."""

from __future__ import annotations

import pytest
import requests

from tests.e2e.conftest import Stack
from tests.helpers import signed_headers, wait_for
from tests.workers.test_reviews import mr_body, open_merge_request

pytestmark = pytest.mark.e2e


def deliver(stack: Stack, body: bytes) -> tuple[int, dict[str, str]]:
    answer = requests.post(
        f"{stack.base_url}/hooks/gitlab/sample-app",
        data=body,
        headers=signed_headers(body, event="Merge Request Hook"),
        timeout=5,
    )
    return answer.status_code, answer.json()


def note_saying(stack: Stack, iid: int, words: str) -> str:
    def found() -> str | None:
        stack.assert_running()
        notes = stack.gitlab.merge_request_notes(iid)
        return notes[0]["body"] if len(notes) == 1 and words in notes[0]["body"] else None

    try:
        body: str = wait_for(found, timeout=60, what=f"the note on !{iid} to say {words!r}")
    except AssertionError:
        raise AssertionError(
            f"notes: {stack.gitlab.merge_request_notes(iid)}; logs:\n{stack.log_text()}"
        ) from None
    return body


def test_an_opened_merge_request_gets_a_live_review_app_that_closing_removes(stack: object) -> None:
    made: Stack = stack(  # type: ignore[operator]
        build=[],
        gitlab_environments=True,
        review={
            "url": "https://mr-{iid}.review.test",
            "deploy": ['echo "$PUSHDEPLOY_REVIEW_URL" > served-at.txt'],
            "stop": ['echo "down $PUSHDEPLOY_REVIEW_IID" > ../../../stopped.txt'],
        },
    )
    made.start_web()
    made.start_worker()
    made.repo.commit({"app.txt": "main\n"}, "main")
    sha = open_merge_request(made.repo, 12, {"app.txt": "the feature\n"})

    status, accepted = deliver(made, mr_body(12, sha))

    assert status == 202
    body = note_saying(made, 12, ": live")
    assert "https://mr-12.review.test" in body and sha[:12] in body
    assert f"/deployments/{accepted['deployment']}?access=" in body
    app = made.data_dir / "projects" / "sample-app" / "review-12"
    assert (app / "current" / "app.txt").read_text() == "the feature\n"
    assert (app / "current" / "served-at.txt").read_text() == "https://mr-12.review.test\n"
    assert [s["state"] for s in made.gitlab.statuses(sha=sha)] == ["pending", "running", "success"]
    environment = made.gitlab.environment("review/12")
    assert environment is not None and environment["external_url"] == "https://mr-12.review.test"
    listed = made.api("/projects/sample-app/reviews")["reviews"]
    assert [(r["iid"], r["state"]) for r in listed] == [(12, "live")]

    assert deliver(made, mr_body(12, sha, action="close")) == (202, {"stopping": "review/12"})

    body = note_saying(made, 12, ": stopped")
    assert "the merge request was closed" in body
    assert not app.exists()
    assert (made.data_dir / "projects" / "sample-app" / "stopped.txt").read_text() == "down 12\n"
    wait_for(
        lambda: made.gitlab.environment("review/12")["state"] == "stopped", what="the environment to stop"
    )  # type: ignore[index]
    assert [(r["iid"], r["state"]) for r in made.api("/projects/sample-app/reviews")["reviews"]] == [
        (12, "stopped")
    ]
