"""A deployment's log in real Redis: masking, the per-step cap, and reading it back and live."""

from __future__ import annotations

import base64
import threading
import time
from urllib.parse import quote, quote_plus

from redis import Redis

from workers import defaults
from workers.deploylog import DeploymentLog, LogLine, Masker, follow, read
from workers.secrets import MASK, Secret

CANARY = "s3cr3t/canary+value=9f"


def forms(value: str) -> list[str]:
    raw = value.encode()
    return [
        value,
        quote(value, safe=""),
        quote_plus(value),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
    ]


def texts(lines: list[LogLine]) -> list[str]:
    return [line.text for line in lines]


# -- masking -------------------------------------------------------------------------


def test_secret_and_its_encoded_forms_are_masked_in_stored_lines(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([Secret(CANARY)]))
    log.step("build 1: $ ./build.sh")
    for form in forms(CANARY):
        log.output(f"token is {form} here")
    log.info(f"cloning https://oauth2:{quote(CANARY, safe='')}@gitlab.example.org/x.git")

    stored = texts(read(redis, "dep-1"))
    assert len(stored) == 2 + len(forms(CANARY))
    for line in stored[1:-1]:
        assert line.startswith(f"token is {MASK}") and line.endswith(" here")  # base64 padding may stay
    assert stored[-1] == f"cloning https://oauth2:{MASK}@gitlab.example.org/x.git"
    everything = "\n".join(stored) + "\n".join(log.tail)
    for form in forms(CANARY):
        assert form.rstrip("=") not in everything
    # Nothing of the secret survives in Redis at all, not just in what read() returns.
    raw = b"".join(v for _id, fields in redis.xrange(log.key) for v in fields.values())
    assert b"canary" not in raw


def test_every_configured_secret_is_masked(redis: Redis) -> None:
    secrets = [Secret("hook-token-canary-1"), Secret("whsec_Zm9vYmFyYmF6cXV4"), Secret("glpat-canary-2")]
    log = DeploymentLog(redis, "dep-1", Masker(secrets))
    log.step("deploy with glpat-canary-2")
    log.output("hook-token-canary-1 and whsec_Zm9vYmFyYmF6cXV4 and glpat-canary-2, twice: glpat-canary-2")
    log.flush()
    assert texts(read(redis, "dep-1")) == [
        f"deploy with {MASK}",
        f"{MASK} and {MASK} and {MASK}, twice: {MASK}",
    ]


def test_a_secret_containing_another_is_masked_whole(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([Secret("canary"), Secret("canary-longer-token")]))
    log.output("x canary-longer-token y canary z")
    log.flush()
    assert texts(read(redis, "dep-1")) == [f"x {MASK} y {MASK} z"]


def test_tiny_secrets_do_not_mask_ordinary_words(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([Secret("ab"), Secret("")]))
    log.output("about a cab")
    log.flush()
    assert texts(read(redis, "dep-1")) == ["about a cab"]


def test_lines_without_secrets_are_unchanged(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([Secret(CANARY)]))
    line = "Compiling 42 files (100%) ✓ — done in 1.2 s"
    log.output(line)
    log.flush()
    assert texts(read(redis, "dep-1")) == [line]


def test_markers_write_pending_output_first(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([]))
    log.step("build 1")
    log.output("a")
    log.output("b")
    log.info("build 1 exited 0")  # no explicit flush: pushdeploy's own lines write what is pending
    log.step("deploy 1")
    log.output("c")
    log.flush()
    lines = read(redis, "dep-1")
    assert [(line.kind, line.text) for line in lines] == [
        ("step", "build 1"),
        ("out", "a"),
        ("out", "b"),
        ("info", "build 1 exited 0"),
        ("step", "deploy 1"),
        ("out", "c"),
    ]
    log.flush()  # nothing pending: writes nothing twice
    assert len(read(redis, "dep-1")) == 6


# -- the per-step cap ---------------------------------------------------------------------


def test_per_step_cap_marks_truncation_once_and_stops_storing(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([]), step_limit=100)
    log.step("build 1: $ make")
    for n in range(50):
        log.output(f"line {n:03d} .......")  # 16 bytes + newline
    stored = read(redis, "dep-1")

    assert log.truncated
    outputs = [line for line in stored if line.kind == "out"]
    assert texts(outputs) == [f"line {n:03d} ......." for n in range(5)]  # 5 * 17 = 85 ≤ 100 < 102
    markers = [line for line in stored if "truncated" in line.text]
    assert len(markers) == 1 and markers[0].kind == "info"
    assert markers[0].text == "[output truncated at 100 bytes; the step keeps running]"
    assert stored[-1] == markers[0]
    # The failing step's quote still shows how it ended.
    assert list(log.tail) == [f"line {n:03d} ......." for n in range(50 - defaults.LOG_TAIL_LINES, 50)]


def test_a_new_step_resets_the_cap_and_the_tail(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([]), step_limit=50)
    log.step("build 1")
    for n in range(20):
        log.output(f"first step output {n}")
    log.step("build 2")
    assert not log.truncated and list(log.tail) == []
    log.output("second step output")
    log.flush()
    stored = read(redis, "dep-1")
    assert [(line.kind, line.text) for line in stored[-2:]] == [
        ("step", "build 2"),
        ("out", "second step output"),
    ]
    assert list(log.tail) == ["second step output"]


def test_cap_counts_bytes_not_characters(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([]), step_limit=20)
    log.output("é" * 9)  # 18 bytes + newline, but only 9 characters
    log.output("é")  # 3 more bytes: 22, over the cap of 20 (in characters it would be 12)
    assert texts(read(redis, "dep-1")) == ["é" * 9, "[output truncated at 20 bytes; the step keeps running]"]


def test_tail_masks_too(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([Secret(CANARY)]), step_limit=10)
    for _ in range(5):
        log.output(f"leaking {CANARY}")
    assert list(log.tail) == [f"leaking {MASK}"] * 5


# -- reading back ----------------------------------------------------------------------------


def test_read_returns_lines_in_order_with_kinds_and_timestamps(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([]))
    before = time.time()
    log.info("deployment 1 of sample-app/production")
    log.step("build 1: $ make")
    for n in range(100):
        log.output(f"out {n}")
    log.info("build 1 exited 0")
    after = time.time()

    lines = read(redis, "dep-1")
    assert [line.kind for line in lines] == ["info", "step"] + ["out"] * 100 + ["info"]
    assert texts(lines)[2:102] == [f"out {n}" for n in range(100)]
    assert all(before - 0.01 <= line.at <= after + 0.01 for line in lines)
    assert [line.at for line in lines] == sorted(line.at for line in lines)
    ids = [tuple(int(part) for part in line.id.split("-")) for line in lines]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_read_after_an_id_is_exclusive_and_pages(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([]))
    for n in range(10):
        log.output(f"out {n}")
    log.flush()
    first_page = read(redis, "dep-1", count=4)
    assert texts(first_page) == [f"out {n}" for n in range(4)]
    rest = read(redis, "dep-1", after=first_page[-1].id)
    assert texts(rest) == [f"out {n}" for n in range(4, 10)]
    assert read(redis, "dep-1", after=rest[-1].id) == []


def test_logs_of_different_deployments_are_separate(redis: Redis) -> None:
    for deployment_id, text in (("dep-1", "one"), ("dep-2", "two")):
        log = DeploymentLog(redis, deployment_id, Masker([]))
        log.output(text)
        log.flush()
    assert texts(read(redis, "dep-1")) == ["one"]
    assert texts(read(redis, "dep-2")) == ["two"]
    assert read(redis, "dep-3") == []


def test_follow_returns_lines_written_after_the_cursor(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([Secret(CANARY)]))
    log.output("old line")
    log.flush()
    cursor = read(redis, "dep-1")[-1].id

    def write_later() -> None:
        time.sleep(0.2)
        writer = DeploymentLog(redis, "dep-1", Masker([Secret(CANARY)]))
        writer.output("new line 1")
        writer.output(f"new line 2 {CANARY}")
        writer.flush()

    thread = threading.Thread(target=write_later)
    thread.start()
    started = time.monotonic()
    first = list(follow(redis, "dep-1", after=cursor, block_ms=5000))
    thread.join()
    assert time.monotonic() - started < 4  # woken by the write, not by the block timeout
    assert texts(first)[0] == "new line 1"
    got = first + list(follow(redis, "dep-1", after=first[-1].id, block_ms=100))
    assert texts(got) == ["new line 1", f"new line 2 {MASK}"]


def test_follow_from_the_start_and_with_nothing_new(redis: Redis) -> None:
    log = DeploymentLog(redis, "dep-1", Masker([]))
    log.step("fetch")
    log.output("done")
    log.flush()
    everything = list(follow(redis, "dep-1"))
    assert [(line.kind, line.text) for line in everything] == [("step", "fetch"), ("out", "done")]
    started = time.monotonic()
    assert list(follow(redis, "dep-1", after=everything[-1].id, block_ms=100)) == []
    assert time.monotonic() - started < 2


def test_a_quiet_step_still_shows_its_last_line_live(redis: Redis, tmp_path: object) -> None:
    from pathlib import Path

    from workers import steps

    log = DeploymentLog(redis, "dep-quiet", Masker([]))
    log.step("build 1: $ echo hello; sleep 1.5")
    seen: list[list[str]] = []

    def watch() -> None:
        time.sleep(0.8)  # the step printed, then went quiet; nothing else will push the buffer out
        seen.append(texts(read(redis, "dep-quiet")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    steps.run(
        "echo hello; sleep 1.5",
        Path(str(tmp_path)),
        {"PATH": "/usr/bin:/bin"},
        time.time() + 30,
        log.output,
        on_tick=log.flush_due,
    )
    watcher.join()
    assert "hello" in seen[0]
