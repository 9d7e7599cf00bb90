"""Deploying to many hosts: real sshd per host on loopback, real rsync, real git, Redis and RQ."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tests.helpers import GitRepo
from tests.sshd import HAVE_SSHD, SKIP_REASON, SshHost, descendants, health_port, remote_processes, ssh_hosts
from tests.workers.test_pipeline import use_config, work
from workers import control, manifest, recovery, schema
from workers.config import Settings
from workers.deploylog import read
from workers.deployments import Deployment, DeploymentStore, State
from workers.intake import Intake, Push
from workers.operations import rollback
from workers.outbox import recorded
from workers.targets import HostState, hosts

pytestmark = pytest.mark.skipif(not HAVE_SSHD, reason=SKIP_REASON)

BUILD = '#!/bin/sh\nset -e\necho built >> "$BUILD_LOG"\ncp app.txt built.txt\n'
DEPLOY = 'echo "$PUSHDEPLOY_SHA $PUSHDEPLOY_HOST $PWD" >> "$PUSHDEPLOY_RELEASE_DIR/../../deploys.log"'
BIG = os.urandom(3 * 1024 * 1024)


@pytest.fixture
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client") / "id_ed25519"


@pytest.fixture
def three(tmp_path: Path, client_key: Path) -> Iterator[list[SshHost]]:
    with ssh_hosts(tmp_path / "hosts", 3, client_key) as started:
        yield started


@pytest.fixture
def targets_settings(
    make_settings: Callable[..., Settings], tmp_path: Path, client_key: Path
) -> Callable[..., Settings]:
    """A config whose environment deploys to ``hosts``; keywords override project keys."""

    def make(hosts_: list[SshHost], known: list[str] | None = None, **overrides: Any) -> Settings:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("\n".join(known or [h.known_hosts_line() for h in hosts_]) + "\n")
        project: dict[str, Any] = {
            "targets": [h.target for h in hosts_],
            "ssh_key": f"file:{client_key}",
            "known_hosts": f"file:{known_hosts}",
            "rollout": {"batch": 1},
            "deploy": [DEPLOY],
            "env": {"BUILD_LOG": str(tmp_path / "builds.log")},
            "health_check": {"url": f"http://{{host}}:{health_port(hosts_[0])}/health", "timeout": 2},
            "timeout": 60,
        }
        project.update(overrides)
        return make_settings(**project)

    return make


def queue(redis: Redis, settings: Settings, sha: str) -> str:
    project = settings.projects["sample-app"]
    environment = project.environments["production"]
    accepted = Intake(redis, settings.server.public_url).accept(
        project, environment, Push("refs/heads/main", sha, "alice", "")
    )
    return accepted.deployment_id


def deploy(redis: Redis, settings: Settings, sha: str, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    use_config(settings, monkeypatch)
    deployment_id = queue(redis, settings, sha)
    work(redis)
    return DeploymentStore(redis).get(deployment_id)


def states(redis: Redis, deployment_id: str) -> list[str]:
    return [str(h.state) for h in hosts(redis, deployment_id)]


def deploys_log(host: SshHost) -> list[str]:
    return (host.root / "deploys.log").read_text().splitlines()


def commit(repo: GitRepo, app: str, health: str = "ok\n", **extra: str) -> str:
    return repo.commit({"build.sh": BUILD, "app.txt": app, "health.txt": health, **extra}, app.strip())


def while_working(redis: Redis, marker: str, act: Callable[[], object]) -> list[int]:
    """Run the queue; once two remote processes matching ``marker`` run, ``act`` from another
    thread. Returns the remote pids seen (RQ's worker wants the main thread)."""
    seen: list[int] = []

    def act_once_running() -> None:
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            seen[:] = remote_processes(marker)
            time.sleep(0.05)
        act()

    actor = threading.Thread(target=act_once_running)
    actor.start()
    work(redis)
    actor.join()
    return seen


def test_three_hosts_get_one_build_and_the_second_deploy_sends_only_what_changed(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = targets_settings(three, rollout={"batch": 2})
    (git_repo.work / "big.bin").write_bytes(BIG)  # committed with the next commit
    first_sha = commit(git_repo, "one\n")

    first = deploy(redis, settings, first_sha, monkeypatch)

    assert first.state is State.SUCCEEDED, first.reason
    assert (tmp_path / "builds.log").read_text() == "built\n"  # built once, on the worker
    for host in three:
        assert host.current() == first.id
        assert (host.root / "current" / "built.txt").read_text() == "one\n"
        assert (host.root / "current" / "big.bin").read_bytes() == BIG
        release_dir = host.root / "releases" / first.id
        assert deploys_log(host) == [f"{first_sha} {host.address} {release_dir}"]
        assert not [p for p in (host.root / "releases").iterdir() if p.name.startswith(".")]
    assert states(redis, first.id) == ["live"] * 3
    running = [r.status for r in recorded(redis, first.id) if r.status.state == "running"]
    assert [s.description for s in running] == ["Deploying to 3 hosts"]

    second_sha = commit(git_repo, "two\n")
    second = deploy(redis, settings, second_sha, monkeypatch)

    assert second.state is State.SUCCEEDED, second.reason
    assert (tmp_path / "builds.log").read_text() == "built\nbuilt\n"
    for host, progress in zip(three, hosts(redis, second.id), strict=True):
        assert host.current() == second.id
        assert (host.root / "current" / "built.txt").read_text() == "two\n"
        # Measured twice: rsync's own count of bytes it sent, and the big file's inode shared with
        # the previous release (hard-linked by --link-dest, so its content never crossed the wire).
        sent = int(progress.detail.split()[0])
        assert sent < len(BIG) // 100, progress.detail
        old = (host.root / "releases" / first.id / "big.bin").stat()
        new = (host.root / "releases" / second.id / "big.bin").stat()
        assert (old.st_ino, old.st_nlink) == (new.st_ino, 2)


def test_health_failing_on_one_host_puts_every_host_back(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = targets_settings(three)
    good_sha = commit(git_repo, "one\n")
    good = deploy(redis, settings, good_sha, monkeypatch)
    assert good.state is State.SUCCEEDED, good.reason
    bad_sha = commit(git_repo, "two\n", health=f"{three[2].address}\n")  # host 3 answers 503

    bad = deploy(redis, settings, bad_sha, monkeypatch)

    assert bad.state is State.FAILED
    assert bad.reason.startswith(f"{three[2].name}: health check failed (HTTP 503")
    assert f"rolled back {three[0].name}, {three[1].name}, {three[2].name}" in bad.reason
    for host in three:
        assert host.current() == good.id
        assert deploys_log(host)[-1].startswith(f"{good_sha} {host.address}")  # deploy re-run
    assert states(redis, bad.id) == ["rolled back", "rolled back", "failed"]
    failed = [r.status for r in recorded(redis, bad.id) if r.status.state == "failed"]
    assert three[2].name in failed[0].description


def test_a_host_unreachable_mid_rollout_leaves_no_host_on_the_new_release(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "second-host-deployed"
    hook = f'if [ "$PUSHDEPLOY_HOST" = {three[1].address} ]; then touch {marker}; sleep 1; fi'
    settings = targets_settings(three, deploy=[DEPLOY, hook])
    good = deploy(redis, settings, commit(git_repo, "one\n"), monkeypatch)
    assert good.state is State.SUCCEEDED, good.reason
    marker.unlink()

    def cut_host_three() -> None:
        while not marker.exists():
            time.sleep(0.02)
        three[2].kill()  # between the second batch and the third

    cutter = threading.Thread(target=cut_host_three)
    cutter.start()
    started = time.monotonic()
    bad = deploy(redis, settings, commit(git_repo, "two\n"), monkeypatch)
    cutter.join()

    assert time.monotonic() - started < 30
    assert bad.state is State.FAILED
    assert bad.reason.startswith(f"{three[2].name}: switch: unreachable"), bad.reason
    assert [h.current() for h in three] == [good.id] * 3
    assert states(redis, bad.id) == ["rolled back", "rolled back", "failed"]


def test_a_changed_host_key_refuses_the_host_before_anything_runs(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    impostor = three[0].host_key  # host 3 is pinned to another host's key
    known = [three[0].known_hosts_line(), three[1].known_hosts_line(), three[2].known_hosts_line(impostor)]
    settings = targets_settings(three, known=known)

    done = deploy(redis, settings, commit(git_repo, "one\n"), monkeypatch)

    assert done.state is State.FAILED
    assert done.reason == (
        f"{three[2].name}: connect: host key not in known_hosts or changed: refused"
        ": nothing was changed on any host"
    )
    assert all(h.releases() == [] and h.current() == "" for h in three)
    assert states(redis, done.id) == ["pending", "pending", "failed"]


def test_cancel_during_a_remote_step_leaves_no_process_on_the_host(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts_ = three[:2]
    marker = f"sleep 31.{os.getpid() % 1000:03d}"
    settings = targets_settings(hosts_, deploy=[DEPLOY, f"{marker} & {marker}; wait"])
    use_config(settings, monkeypatch)
    deployment_id = queue(redis, settings, commit(git_repo, "one\n"))
    seen = while_working(redis, marker, lambda: control.cancel(settings, redis, deployment_id, "bob"))

    done = DeploymentStore(redis).get(deployment_id)
    assert len(seen) >= 2, done.reason  # both sleeps ran on the first host before the cancel

    done = DeploymentStore(redis).get(deployment_id)
    assert done.state is State.CANCELED
    assert done.reason == "canceled by bob"
    assert remote_processes(marker) == []
    assert hosts_[1].current() == ""  # never switched
    assert not list((hosts_[0].root / ".pushdeploy").glob("*.pid"))  # (the shipped release's record stays)


def test_keep_releases_holds_on_every_host_and_a_manual_rollback_switches_them_all(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = targets_settings(three, keep_releases=2, rollout={"batch": "all"})
    done = [deploy(redis, settings, commit(git_repo, f"v{n}\n"), monkeypatch) for n in (1, 2, 3)]
    assert [d.state for d in done] == [State.SUCCEEDED] * 3
    for host in three:
        assert host.releases() == [done[1].id, done[2].id]
    (three[1].root / "releases" / done[1].id).rename(three[1].root / "gone")  # pruned by hand there

    project = settings.projects["sample-app"]
    back = rollback(
        Intake(redis, settings.server.public_url),
        project,
        project.environments["production"],
        done[1],
        "carol",
    )
    work(redis)

    result = DeploymentStore(redis).get(back.id)
    assert result.state is State.SUCCEEDED, result.reason
    assert [h.current() for h in three] == [done[1].id] * 3
    assert (three[1].root / "current" / "built.txt").read_text() == "v2\n"  # shipped there again
    assert [p.detail for p in hosts(redis, back.id)][::2] == ["already there", "already there"]
    assert all(deploys_log(h)[-1].startswith(done[1].sha) for h in three)
    lines = [line.text for line in read(redis, back.id)]
    assert any("nothing to fetch or build" in line for line in lines)
    assert HostState.LIVE in {p.state for p in hosts(redis, back.id)}


def test_the_deployment_timeout_ends_the_remote_step_on_the_host(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = f"sleep 32.{os.getpid() % 1000:03d}"
    settings = targets_settings(three[:1], deploy=[f"{marker} & {marker}; wait"], timeout=8)
    started = time.monotonic()

    done = deploy(redis, settings, commit(git_repo, "one\n"), monkeypatch)

    assert done.state is State.FAILED
    step = f"deploy step 1 `{marker} & {marker}; wait`"
    assert done.reason.startswith(f"{three[0].name}: {step} ran out of time")
    assert time.monotonic() - started < 20
    assert remote_processes(marker) == []
    assert states(redis, done.id) == ["failed"]


def test_a_dead_workers_step_on_a_host_is_ended_by_recovery(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = f"sleep 33.{os.getpid() % 1000:03d}"
    settings = targets_settings(three[:1], deploy=[f"{marker} & {marker}; wait"])
    use_config(settings, monkeypatch)
    deployment_id = queue(redis, settings, commit(git_repo, "one\n"))
    # A real `pushdeploy worker` (its work-horse forked off it), both killed as the OOM killer would:
    # nothing of the worker is left to end the deployment, only the steps it started.
    worker = subprocess.Popen(
        [sys.executable, "-m", "webhook.cli", "--config", str(tmp_path / "pushdeploy.toml"), "worker",
         "--burst"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "worker.log", "wb"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 30
        while len(remote_processes(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = remote_processes(marker)
        # The worker and its work-horse (RQ puts the horse in a process group of its own), not the
        # step's processes: those are what a dead worker leaves behind.
        horses = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
        assert len(horses) == 1, horses
        for pid in [worker.pid, int(horses[0])]:
            os.kill(pid, signal.SIGKILL)
    finally:
        for pid in [worker.pid, *descendants(worker.pid)]:  # whatever is left when the test failed early
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        worker.wait()
    assert len(seen) >= 2, "\n".join(line.text for line in read(redis, deployment_id))
    assert remote_processes(marker) == seen  # the remote steps outlive the worker: recovery must end them

    # What RQ does for the dead worker (its failure callback, from another worker's maintenance).
    assert recovery.recover(settings, redis, deployment_id, "worker lost (test)")

    done = DeploymentStore(redis).get(deployment_id)
    assert done.state is State.FAILED
    assert done.reason == "worker lost (test)"
    assert remote_processes(marker) == []
    assert redis.scard(schema.remote_steps(deployment_id)) == 0
    assert not recovery.recover(settings, redis, deployment_id, "worker lost (again)")  # once


SHAPE_ONE = (
    "#!/bin/sh\nset -e\necho built >> \"$BUILD_LOG\"\ncp app.txt built.txt\n"
    "ln -s keep.txt link\nchmod 0750 tool.sh\nmkdir -p flip gone_dir/deep\necho a > flip/inside\n"
    "echo g > gone_dir/deep/g.txt\nchmod 0700 gone_dir\n"
)
SHAPE_TWO = (
    "#!/bin/sh\nset -e\necho built >> \"$BUILD_LOG\"\ncp app.txt built.txt\n"
    "ln -s app.txt link\nchmod 0600 tool.sh\necho now a file > flip\nmkdir -p new_dir/sub\n"
    "echo n > new_dir/sub/n.txt\nchmod 0711 new_dir\n"
)


def release_tree(root: Path) -> manifest.Manifest:
    return manifest.scan(root)


def test_an_incremental_ship_sends_only_the_changed_paths_and_the_host_gets_the_build_exactly(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts_ = three[:2]
    settings = targets_settings(hosts_, build=["./build.sh"], rollout={"batch": "all"})
    local = tmp_path / "data" / "projects" / "sample-app" / "production" / "releases"
    (git_repo.work / "big.bin").write_bytes(BIG)
    (git_repo.work / "gone.txt").write_text("removed by the next commit\n")
    first = deploy(redis, settings, commit(git_repo, "one\n", **{"build.sh": SHAPE_ONE, "keep.txt": "k\n",
                                                                "tool.sh": "echo tool\n"}), monkeypatch)
    assert first.state is State.SUCCEEDED, first.reason

    (git_repo.work / "gone.txt").unlink()
    second = deploy(redis, settings, commit(git_repo, "two\n", **{"build.sh": SHAPE_TWO}), monkeypatch)

    assert second.state is State.SUCCEEDED, second.reason
    built_first, built_second = release_tree(local / first.id), release_tree(local / second.id)
    assert {"gone.txt", "gone_dir", "flip/inside"} <= set(built_first) - set(built_second)
    assert built_second["flip"][0] == "f" and built_second["new_dir"][:2] == ("d", 0o711)
    assert built_first["tool.sh"][1] == 0o750 and built_second["tool.sh"][1] == 0o600  # mode only
    files = [p for p, entry in built_second.items() if entry[0] == "f"]
    release_bytes = sum((local / second.id / p).stat().st_size for p in files)
    for host, progress in zip(hosts_, hosts(redis, second.id), strict=True):
        assert "changed path(s) against" in progress.detail, progress.detail  # the incremental path ran
        sent = int(progress.detail.split()[0])  # rsync's own count (--stats) of what crossed the wire
        assert sent < release_bytes // 100, progress.detail
        on_host = host.root / "releases"
        assert release_tree(on_host / second.id) == built_second  # contents, kinds, modes, symlinks
        assert release_tree(on_host / first.id) == built_first  # the shared hard links were not changed
        old, new = (on_host / first.id / "big.bin").stat(), (on_host / second.id / "big.bin").stat()
        assert (old.st_ino, new.st_nlink) == (new.st_ino, 2)  # the big file was linked, not sent
        assert not [p for p in on_host.iterdir() if p.name.startswith(".")]


ShippedOnce = tuple[SshHost, Settings, Path, Deployment]


@pytest.fixture
def shipped_once(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> ShippedOnce:
    """One host with a first release holding a 3 MB file: the host, settings, the worker's releases
    folder and that deployment."""
    host = three[0]
    settings = targets_settings([host])
    local = tmp_path / "data" / "projects" / "sample-app" / "production" / "releases"
    (git_repo.work / "big.bin").write_bytes(BIG)
    first = deploy(redis, settings, commit(git_repo, "one\n"), monkeypatch)
    assert first.state is State.SUCCEEDED, first.reason
    return host, settings, local, first


def test_a_host_whose_cp_cannot_hard_link_gets_the_full_compare_and_the_build_exactly(
    shipped_once: ShippedOnce,
    git_repo: GitRepo,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host, settings, local, first = shipped_once
    # The host's `cp` refuses -l, as a cp without GNU's options would: the hard-linked copy fails.
    tools, calls = tmp_path / "host-tools", tmp_path / "cp-calls"
    tools.mkdir()
    (tools / "cp").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        "case \"$1\" in -*l*) echo \"cp: invalid option -- 'l'\" >&2; exit 1;; esac\nexec /bin/cp \"$@\"\n"
    )
    (tools / "cp").chmod(0o755)
    host.env["PATH"] = f"{tools}:/usr/local/bin:/usr/bin:/bin"
    host.restart()

    second = deploy(redis, settings, commit(git_repo, "two\n"), monkeypatch)

    assert second.state is State.SUCCEEDED, second.reason
    assert calls.read_text().startswith(f"-al {first.id} .{second.id}.tmp")  # the incremental path was tried
    (progress,) = hosts(redis, second.id)
    assert "changed path(s)" not in progress.detail, progress.detail
    assert progress.detail.endswith(f"(against releases/{first.id})")
    assert int(progress.detail.split()[0]) < len(BIG) // 10  # --link-dest: the big file was not sent again
    releases = host.root / "releases"
    assert release_tree(releases / second.id) == release_tree(local / second.id)
    assert (releases / first.id / "big.bin").stat().st_ino == (releases / second.id / "big.bin").stat().st_ino
    assert not [p for p in releases.iterdir() if p.name.startswith(".")]  # the failed attempt left nothing
    assert host.current() == second.id


def test_a_release_written_into_on_the_host_is_not_carried_into_the_next(
    three: list[SshHost],
    targets_settings: Callable[..., Settings],
    git_repo: GitRepo,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = three[0]
    scribble = (  # a new file, and a shipped one written in place
        'cd "$PUSHDEPLOY_RELEASE_DIR" && echo c > "by-$PUSHDEPLOY_SHA" && echo "$PUSHDEPLOY_SHA" >> keep.txt'
    )
    settings = targets_settings([host], deploy=[DEPLOY, scribble])
    local = tmp_path / "data" / "projects" / "sample-app" / "production" / "releases"
    first_sha = commit(git_repo, "one\n", **{"keep.txt": "k\n"})
    first = deploy(redis, settings, first_sha, monkeypatch)
    assert first.state is State.SUCCEEDED, first.reason

    second_sha = commit(git_repo, "two\n")
    second = deploy(redis, settings, second_sha, monkeypatch)

    assert second.state is State.SUCCEEDED, second.reason
    (progress,) = hosts(redis, second.id)
    assert "changed path(s)" not in progress.detail  # the host's release is not as shipped: full compare
    assert progress.detail.endswith(f"(against releases/{first.id})")
    releases = host.root / "releases"
    assert (releases / first.id / "keep.txt").read_text() == f"k\n{first_sha}\n"  # written in place there
    assert (releases / second.id / "keep.txt").read_text() == f"k\n{second_sha}\n"  # not carried over
    shipped = release_tree(releases / second.id)
    assert f"by-{first_sha}" not in shipped
    del shipped[f"by-{second_sha}"], shipped["keep.txt"]  # this release's own deploy step wrote them
    built = release_tree(local / second.id)
    del built["keep.txt"]
    assert shipped == built

    third = deploy(redis, settings, commit(git_repo, "three\n"), monkeypatch)  # the same again

    assert third.state is State.SUCCEEDED, third.reason
    assert "changed path(s)" not in hosts(redis, third.id)[0].detail
    assert f"by-{second_sha}" not in release_tree(releases / third.id)


def test_without_its_copy_of_the_hosts_release_the_worker_compares_every_file(
    shipped_once: ShippedOnce,
    git_repo: GitRepo,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host, settings, local, first = shipped_once
    shutil.rmtree(local / first.id)  # pruned on the worker, say

    second = deploy(redis, settings, commit(git_repo, "two\n"), monkeypatch)

    assert second.state is State.SUCCEEDED, second.reason
    (progress,) = hosts(redis, second.id)
    assert progress.detail.endswith(f"bytes sent (against releases/{first.id})")  # rsync --link-dest
    assert int(progress.detail.split()[0]) < len(BIG) // 100  # the big file still linked, not sent
    assert release_tree(host.root / "releases" / second.id) == release_tree(local / second.id)
