"""The deploy engine's guarantees, each proven with real gunicorn, real workers and the fake GitLab."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
import requests
from redis import Redis

from tests.e2e.conftest import Stack
from tests.e2e.processes import children, group_members, tree_rss
from tests.helpers import push_body, signed_headers, wait_for

pytestmark = pytest.mark.e2e

TERMINAL = {"success", "failed", "canceled"}


def push(stack: Stack, sha: str) -> str:
    body = push_body(sha)
    answer = requests.post(
        f"{stack.base_url}/hooks/gitlab/sample-app", data=body, headers=signed_headers(body), timeout=5
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["deployment"])


def states(stack: Stack, sha: str) -> list[str]:
    return [s["state"] for s in stack.gitlab.statuses(sha=sha)]


def wait_terminal(stack: Stack, deployment_id: str, timeout: float = 60) -> dict[str, object]:
    def done() -> dict[str, object] | None:
        stack.assert_running()
        record: dict[str, object] = stack.api(f"/deployments/{deployment_id}")
        return record if record["state"] in {"succeeded", "failed", "canceled"} else None

    result: dict[str, object] = wait_for(done, timeout=timeout, interval=0.2, what=f"{deployment_id} to end")
    return result


def test_a_burst_while_a_slow_build_runs_deploys_only_the_first_and_the_last(stack: object) -> None:
    made: Stack = stack(build=["sleep 3"], deploy=[])  # type: ignore[operator]
    made.start_web()
    made.start_worker("worker-1")
    made.start_worker("worker-2")
    shas = [made.repo.commit({"app.txt": f"v{i}\n"}, f"v{i}") for i in range(10)]
    ids = [push(made, shas[0])]
    wait_for(
        lambda: made.api(f"/deployments/{ids[0]}")["state"] == "running", timeout=20, what="the first to run"
    )
    for sha in shas[1:]:
        ids.append(push(made, sha))

    last = wait_terminal(made, ids[-1], timeout=90)
    first = wait_terminal(made, ids[0])
    assert (first["state"], last["state"]) == ("succeeded", "succeeded")
    for index, (deployment_id, sha) in enumerate(zip(ids[1:-1], shas[1:-1], strict=True), start=1):
        record = made.api(f"/deployments/{deployment_id}")
        assert record["state"] == "canceled"
        newer = str(record["reason"]).removeprefix("superseded by ")
        assert newer in ids[index + 1 :], record["reason"]  # by a newer push, whichever was newest then
        wait_for(
            lambda sha=sha: states(made, sha) == ["pending", "canceled"], timeout=20, what="canceled status"
        )
    ran = [i for i in ids if made.api(f"/deployments/{i}")["steps"]]
    assert ran == [ids[0], ids[-1]]
    assert os.readlink(made.data_dir / "projects/sample-app/production/current") == f"releases/{ids[-1]}"


def test_a_step_over_its_time_has_its_whole_process_group_killed(stack: object) -> None:
    made: Stack = stack(  # type: ignore[operator]
        build=["sh -c 'trap \"\" TERM; sleep 600' & sleep 600 & echo $$ > ../../step.pgid; wait"],
        deploy=[],
        timeout=3,
    )
    made.start_web()
    made.start_worker()
    sha = made.repo.commit({"app.txt": "slow\n"})
    record = wait_terminal(made, push(made, sha), timeout=60)
    assert record["state"] == "failed"
    assert "ran out of time" in str(record["reason"])
    pgid = int((made.data_dir / "projects/sample-app/production/step.pgid").read_text())
    assert group_members(pgid) == []  # the shell, both sleeps, and the one ignoring TERM


def test_statuses_arrive_in_order_once_through_5xx_and_429(stack: object) -> None:
    made: Stack = stack(build=[], deploy=[])  # type: ignore[operator]
    made.gitlab.fail_next(5, 503)
    made.gitlab.fail_next(1, 429, headers={"Retry-After": "1"})
    made.start_web()
    made.start_worker()
    sha = made.repo.commit({"app.txt": "x\n"})
    deployment_id = push(made, sha)
    assert wait_terminal(made, deployment_id)["state"] == "succeeded"  # never waits on GitLab
    wait_for(
        lambda: states(made, sha) == ["pending", "running", "success"],
        timeout=60,
        what="every status to arrive",
    )
    assert made.gitlab.pending_faults == 0


def test_a_step_printing_50_mib_is_capped_and_decided_by_its_exit_code(stack: object, redis: Redis) -> None:
    made: Stack = stack(  # type: ignore[operator]
        build=[
            "head -c 52428800 /dev/zero | tr '\\0' 'x' | fold -w 100; exit 0",
            "yes 'line of output' | head -n 200000; exit 5",
        ],
        deploy=[],
    )
    made.start_web()
    made.start_worker()
    deployment_id = push(made, made.repo.commit({"app.txt": "x\n"}))
    peak = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        peak = max(peak, tree_rss(made.processes["worker-1"].pid))
        if made.api(f"/deployments/{deployment_id}")["state"] in {"succeeded", "failed"}:
            break
        time.sleep(0.2)
    record = wait_terminal(made, deployment_id)
    assert record["state"] == "failed"
    assert record["reason"] == "build step 2 `yes 'line of output' | head -n 200000; exit 5` exited with 5"
    steps = record["steps"]
    assert isinstance(steps, list) and steps[0]["exit_code"] == 0 and steps[0]["truncated"]
    stored = sum(len(fields[b"t"]) for _id, fields in redis.xrange(f"pd:dep:{deployment_id}:log"))
    assert stored < 2 * 4 * 1024 * 1024 + 64 * 1024  # two steps, each capped at 4 MiB
    markers = [f for _id, f in redis.xrange(f"pd:dep:{deployment_id}:log") if b"output truncated" in f[b"t"]]
    assert len(markers) == 1
    assert peak < 300 * 1024 * 1024, f"worker tree peaked at {peak / 2**20:.0f} MiB"


def test_a_worker_killed_mid_build_ends_failed_with_one_final_status(stack: object, redis: Redis) -> None:
    made: Stack = stack(build=["sleep 600"], deploy=[])  # type: ignore[operator]
    made.start_web()
    victim = made.start_worker("worker-1")
    sha = made.repo.commit({"app.txt": "x\n"})
    deployment_id = push(made, sha)
    wait_for(
        lambda: made.api(f"/deployments/{deployment_id}")["state"] == "running",
        timeout=20,
        what="the build to start",
    )
    time.sleep(1)
    step_group = int(redis.hget(f"pd:dep:{deployment_id}", "step_pgid") or 0)
    assert group_members(step_group)
    made.start_worker("worker-2")
    horses = [p for p in group_members(victim.pid) if p != victim.pid] + children(victim.pid)
    os.kill(victim.pid, signal.SIGKILL)
    for horse in horses:
        with contextlib.suppress(ProcessLookupError):
            os.kill(horse, signal.SIGKILL)
    victim.wait()
    del made.processes["worker-1"]
    killed_at = time.monotonic()

    record = wait_terminal(made, deployment_id, timeout=150)
    assert time.monotonic() - killed_at < 120
    assert record["state"] == "failed"
    assert str(record["reason"]).startswith("worker lost")
    wait_for(
        lambda: states(made, sha) == ["pending", "running", "failed"], timeout=30, what="the failed status"
    )
    time.sleep(2)
    assert states(made, sha) == ["pending", "running", "failed"]
    assert group_members(step_group) == []  # the orphaned build step was ended too
