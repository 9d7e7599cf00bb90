"""A release built once on the worker, rolled out to every target: ship → switch → deploy → health.

Ship copies the release to all hosts in parallel (incrementally, under a dot name renamed when
complete). Then, in ``targets`` order and batches of ``rollout.batch``, each host switches
``current``, runs ``deploy`` over SSH and answers its health check. The first failure stops the
rollout: every switched host goes back to its previous release with ``deploy`` re-run, hosts not
yet switched are left alone, and the deployment fails with the host and the step in its reason.
The Runner owns the lane, the cancel flag and the ending; this module only asks it whether to stop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from redis import Redis

from workers import health, manifest, schema
from workers.config import Environment, HealthCheck
from workers.control import cancel_requested
from workers.deploylog import DeploymentLog
from workers.deployments import StepResult
from workers.errors import RunStopped
from workers.remote import Host, RemoteError, credentials, describe
from workers.targets import HostState, record_hosts, set_host
from workers.telemetry import Phase

if TYPE_CHECKING:
    from workers.pipeline import Job, Runner

T = TypeVar("T")
R = TypeVar("R")

MAX_PARALLEL = 16
"""Hosts shipped to (or switched in one batch) at once: ssh and rsync processes on the worker."""


class RolloutFailed(RunStopped):
    """A host failed: the message names it and the step, and says what was rolled back."""


class Stopped(RunStopped):
    """A remote step was ended because the deployment was canceled or lost its lane."""


class SharedLog:
    """The deployment's log, written from one thread per host."""

    def __init__(self, log: DeploymentLog) -> None:
        self.log = log
        self.lock = threading.Lock()

    def info(self, text: str) -> None:
        with self.lock:
            self.log.info(text)

    def step(self, text: str) -> None:
        with self.lock:
            self.log.step(text)

    def output(self, text: str) -> None:
        with self.lock:
            self.log.output(text)

    def tick(self) -> None:
        with self.lock:
            self.log.flush_due()

    def flush(self) -> None:
        with self.lock:
            self.log.flush()


@dataclass
class HostRun:
    """One host's part of this rollout."""

    host: Host
    previous: str = ""
    releases: list[str] = field(default_factory=list)
    tree: str = ""
    """The digest the worker recorded for ``previous`` when it shipped it, if the host still has it intact."""
    switched: bool = False
    shipped: str = ""
    """What the ship sent, kept in the host's detail once it is live."""
    failed: str = ""
    """What failed on this host: it keeps the state ``failed`` when it is switched back."""

    @property
    def name(self) -> str:
        return self.host.target.name


class LocalReleases:
    """The worker's own builds, scanned once per rollout whichever host thread asks first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lock = threading.Lock()
        self.scanned: dict[str, manifest.Manifest | None] = {}
        self.digests: dict[str, str | None] = {}

    def get(self, release: str) -> manifest.Manifest | None:
        """The release's manifest, None when the worker no longer has it (pruned) or cannot read it."""
        with self.lock:
            if release not in self.scanned:
                path = self.folder / release
                try:
                    self.scanned[release] = manifest.scan(path) if path.is_dir() else None
                except (OSError, manifest.UnsupportedEntry):
                    self.scanned[release] = None
            return self.scanned[release]

    def prefetch(self, release: str) -> threading.Thread:
        """Scan ``release`` and the worker's newest build before it (most hosts' base) in the background."""
        older = sorted(p.name for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        wanted = [release, *[r for r in older if r < release][-1:]]
        thread = threading.Thread(target=lambda: [self.digest(r) for r in wanted], daemon=True)
        thread.start()
        return thread

    def digest(self, release: str) -> str | None:
        found = self.get(release)
        with self.lock:
            if release not in self.digests:
                self.digests[release] = manifest.digest(found) if found is not None else None
            return self.digests[release]


class Rollout:
    """One deployment's rollout of ``release`` (built at ``source``) to the environment's targets."""

    def __init__(self, runner: Runner, job: Job, release: str, source: Path) -> None:
        self.runner, self.job = runner, job
        self.environment = job.environment
        self.release, self.source = release, source
        self.log = SharedLog(job.log)
        self.redis = runner.redis
        self.deployment_id = job.deployment.id
        self.runs: list[HostRun] = []
        self.manifests = LocalReleases(source.parent)

    def run(self) -> None:
        """Raises RolloutFailed, or the Runner's Canceled / LaneLost after putting hosts back."""
        environment = self.environment
        assert environment.ssh_key is not None and environment.known_hosts is not None
        record_hosts(self.redis, self.deployment_id, environment.targets)
        with credentials(environment.ssh_key, environment.known_hosts) as directory:
            self.runs = [
                HostRun(Host(t, directory, i, self.runner.environ)) for i, t in enumerate(environment.targets)
            ]
            pruned = False
            scanning = self.manifests.prefetch(self.release)  # while the hosts are reached
            try:
                self.connect()
                self.ship()
                self.switch_all()
                self.prune()
                pruned = True
            finally:
                scanning.join()
                if not pruned:  # the pid files of this deployment's steps; prune removes them otherwise
                    parallel(self.runs, lambda r: r.host.prune([], self.deployment_id, time.time() + 15))
                parallel((r.host for r in self.runs), lambda host: host.close())

    # -- phases -----------------------------------------------------------

    def connect(self) -> None:
        """Reach every host and read its releases; a refused host key fails here, before any work."""
        self.log.step(f"connect to {len(self.runs)} host(s)")
        results = parallel(self.runs, lambda r: r.host.inspect(self.job.deadline))
        failed = [(r, e) for r, e in zip(self.runs, results, strict=True) if isinstance(e, Exception)]
        for run, outcome in zip(self.runs, results, strict=True):
            if not isinstance(outcome, Exception):
                run.previous, run.releases, run.tree = outcome
        for run, error in failed:
            self.mark(run, HostState.FAILED, detail(error))
        if failed:
            raise RolloutFailed(
                "; ".join(f"{r.name}: {detail(e)}" for r, e in failed) + ": nothing was changed on any host"
            )
        self.runner.check_cancel(self.job)

    def ship(self) -> None:
        self.log.step(f"ship releases/{self.release} to {len(self.runs)} host(s)")
        started = time.monotonic()
        results = parallel(self.runs, self.ship_to)
        self.runner.measure(Phase.SHIP, started)
        errors = [(r, e) for r, e in zip(self.runs, results, strict=True) if isinstance(e, Exception)]
        self.runner.check_cancel(self.job)
        if errors:
            run, error = errors[0]
            raise RolloutFailed(f"{run.name}: ship failed ({detail(error)}); no host was switched")

    def ship_to(self, run: HostRun) -> int:
        if self.release in run.releases:
            run.shipped = "already there"
            self.mark(run, HostState.SHIPPED, run.shipped)
            return 0
        base = run.previous if run.previous in run.releases else (run.releases[-1] if run.releases else "")
        changed = self.changes_from(base) if base and base == run.previous and run.tree else None
        if changed is not None and changed[0] != run.tree:
            changed = None  # the worker's copy of base is not what it shipped there
        tree = self.manifests.digest(self.release)
        try:
            shipped = run.host.ship(
                self.source, self.release, base, self.job.deadline, self.should_stop,
                changed=changed[1] if changed else None, tree=tree or "",
            )  # fmt: skip
        except RemoteError as error:
            self.mark(run, HostState.FAILED, f"ship: {error.detail}")
            self.log.info(f"{run.name}: ship failed ({error.detail})" + tail(error.lines))
            raise
        sent = shipped.bytes_sent
        what = f"{sent} bytes sent"
        if shipped.incremental and changed:
            what += f" ({len(changed[1])} changed path(s) against releases/{base})"
        elif base:
            what += f" (against releases/{base})"
        run.shipped = what
        self.mark(run, HostState.SHIPPED, what)
        self.log.info(f"{run.name}: shipped, {what}")
        return sent

    def changes_from(self, base: str) -> tuple[str, list[str]] | None:
        """(base's digest, the paths that differ from it) from the worker's copies, None if it has none."""
        local = self.manifests
        old, new, digest = local.get(base), local.get(self.release), local.digest(base)
        if old is None or new is None or digest is None:
            return None
        return digest, manifest.changes(old, new)

    def switch_all(self) -> None:
        self.runner.check_lane(self.job)  # still ours, renewed now: nobody else is switching meanwhile
        batches = self.environment.rollout.batches(tuple(r.host.target for r in self.runs))
        done = 0
        for batch in batches:
            members = self.runs[done : done + len(batch)]
            done += len(batch)
            results = parallel(members, self.switch_one)
            errors = [(r, e) for r, e in zip(members, results, strict=True) if isinstance(e, Exception)]
            stopped = any(isinstance(e, Stopped) for _, e in errors)
            if stopped and self.job.hold.lost:
                self.runner.check_cancel(self.job)  # LaneLost: current is not touched again
            if errors:
                failures = [(r, e) for r, e in errors if not isinstance(e, Stopped)]
                summary = self.roll_back()
                if not failures:
                    self.runner.check_cancel(self.job)  # raises Canceled
                    raise RolloutFailed(f"stopped on {', '.join(r.name for r, _ in errors)}{summary}")
                run, error = failures[0]
                raise RolloutFailed(f"{run.name}: {detail(error)}{summary}")
            if self.job.hold.lost:
                self.runner.check_cancel(self.job)  # LaneLost: current is not touched again
            if cancel_requested(self.redis, self.deployment_id):  # between batches: put back what switched
                self.roll_back()
                self.runner.check_cancel(self.job)

    def switch_one(self, run: HostRun) -> None:
        host, deadline = run.host, self.job.deadline
        try:
            host.switch(self.release, deadline)
        except RemoteError as error:
            self.mark(run, HostState.FAILED, f"switch: {error.detail}")
            raise
        run.switched = True
        was = f" (was {run.previous})" if run.previous else ""
        self.log.info(f"{run.name}: current → releases/{self.release}{was}")
        started = time.monotonic()
        deployment = self.job.deployment
        variables = self.variables(run, self.release, deployment.sha, deployment.previous_sha)
        for index, command in enumerate(self.environment.deploy, start=1):
            self.step(run, "deploy", index, command, self.release, variables, cancelable=True)
        self.runner.measure(Phase.DEPLOY, started)
        if self.environment.health_check:
            self.check_health(run, self.environment.health_check)
        self.mark(run, HostState.LIVE, run.shipped)

    def check_health(self, run: HostRun, check: HealthCheck) -> None:
        url = check.url.replace("{host}", run.host.target.url_host)
        self.log.info(f"{run.name}: health check {url}")
        started = time.monotonic()
        verdict = health.check(
            HealthCheck(url, check.timeout),
            self.job.deadline,
            lambda line: self.log.info(f"{run.name}: {line}"),
            should_stop=self.should_stop,
        )
        self.runner.measure(Phase.HEALTH_CHECK, started)
        if self.should_stop():
            raise Stopped()
        if not verdict.healthy:
            what = f"health check failed ({verdict.detail} after {verdict.attempts} tries)"
            self.mark(run, HostState.FAILED, what)
            raise RolloutFailed(what)

    def roll_back(self) -> str:
        """Put every switched host back on its previous release and re-run ``deploy``; says what it did."""
        switched = [r for r in self.runs if r.switched]
        if not switched:
            return "; no host was switched"
        self.log.step(f"rollback on {len(switched)} host(s)")
        self.job.deadline = time.time() + self.environment.timeout  # the rollback has a budget of its own
        self.runner.previous_steps(self.job)  # looked up once, before the hosts' threads use it
        started = time.monotonic()
        results = parallel(switched, self.roll_back_one)
        self.runner.measure(Phase.ROLLBACK, started)
        outcomes = list(zip(switched, results, strict=True))
        back = [r.name for r, ok in outcomes if ok is True]
        first = [r.name for r, ok in outcomes if ok is None]
        stuck = [r.name for r, ok in outcomes if ok is False or isinstance(ok, Exception)]
        summary = f"; rolled back {', '.join(back)}" if back else ""
        if first:
            summary += f"; nothing to roll back to on {', '.join(first)}"
        if stuck:
            summary += f"; could not roll back {', '.join(stuck)}"
        return summary

    def roll_back_one(self, run: HostRun) -> bool | None:
        """True when the host is back on its previous release, None when it had none, else False."""
        if not run.previous or run.previous not in run.releases:
            self.log.info(f"{run.name}: nothing to roll back to: releases/{self.release} stays current")
            return None
        try:
            run.host.switch(run.previous, self.job.deadline)
            self.log.info(f"{run.name}: rollback: current → releases/{run.previous}")
            live_sha = self.job.live.get("sha", "")
            back = self.runner.previous_steps(self.job)
            variables = self.variables(run, run.previous, live_sha, self.job.deployment.sha, back.env)
            for index, command in enumerate(back.deploy, start=1):
                self.step(run, "rollback", index, command, run.previous, variables, cancelable=False)
        except (RemoteError, RolloutFailed, Stopped) as error:
            self.log.info(f"{run.name}: rollback failed: {detail(error)}")
            return False
        if run.failed:
            self.mark(run, HostState.FAILED, f"{run.failed}; back on releases/{run.previous}")
        else:
            self.mark(run, HostState.ROLLED_BACK, f"back on releases/{run.previous}")
        return True

    def prune(self) -> None:
        keep = self.environment.keep_releases

        def prune_one(run: HostRun) -> None:
            kept = sorted({*run.releases, self.release})
            protect = {self.release, run.previous}
            removable = [r for r in kept if r not in protect]
            remove = removable[: max(0, len(kept) - keep)]
            run.host.prune(remove, self.deployment_id, time.time() + 60)
            if remove:
                self.log.info(f"{run.name}: pruned {len(remove)} old release(s): {', '.join(remove)}")

        for run, outcome in zip(self.runs, parallel(self.runs, prune_one), strict=True):
            if isinstance(outcome, Exception):
                self.log.info(f"{run.name}: pruning failed ({detail(outcome)}); the release is live")

    # -- one remote step --------------------------------------------------

    def step(
        self, run: HostRun, phase: str, index: int, command: str, release: str,
        variables: dict[str, str], cancelable: bool,
    ) -> None:  # fmt: skip
        self.log.step(f"{run.name}: {phase} {index}: $ {command}")
        pid_file = f"{self.deployment_id}-{run.host.index}-{phase}-{index}.pid"
        started = time.monotonic()
        stop = self.should_stop if cancelable else (lambda: self.job.hold.lost)
        running = schema.remote_steps(self.deployment_id)
        self.redis.sadd(running, f"{run.host.index}:{pid_file}")  # if this worker dies, recovery ends it
        outcome = run.host.run(
            run.host.step_command(release, command, variables, pid_file),
            self.job.deadline,
            lambda line: self.log.output(f"{run.name}: {line}"),
            stop,
        )
        self.log.flush()
        if not outcome.ok and not run.host.kill(pid_file):  # a killed ssh client leaves it running
            self.log.info(f"{run.name}: could not reach the host to end {phase} {index}")
        self.redis.srem(running, f"{run.host.index}:{pid_file}")
        result = StepResult(
            phase, index, f"{run.name}: {command}", outcome.exit_code, round(time.monotonic() - started, 3),
            timed_out=outcome.timed_out, tail=outcome.lines[-20:],
        )  # fmt: skip
        self.runner.store.add_step(self.deployment_id, result)
        self.log.info(f"{run.name}: {phase} {index} {describe(outcome)}")
        if outcome.canceled:
            raise Stopped()
        if not outcome.ok:
            what = f"{phase} step {index} `{command}` {describe(outcome)}"
            self.mark(run, HostState.FAILED, what)
            raise RolloutFailed(what)

    def variables(
        self, run: HostRun, release: str, sha: str, previous_sha: str, env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The same ``PUSHDEPLOY_*`` as a local deploy, with the host's paths, plus ``PUSHDEPLOY_HOST``."""
        job, host = self.job, run.host
        return {
            **(self.environment.env if env is None else env),
            "PUSHDEPLOY_PROJECT": job.project.name,
            "PUSHDEPLOY_ENVIRONMENT": self.environment.name,
            "PUSHDEPLOY_DEPLOYMENT_ID": job.deployment.id,
            "PUSHDEPLOY_SHA": sha,
            "PUSHDEPLOY_REF": job.deployment.branch,
            "PUSHDEPLOY_PREVIOUS_SHA": previous_sha,
            "PUSHDEPLOY_RELEASE_DIR": host.path("releases", release),
            "PUSHDEPLOY_CURRENT_DIR": host.path("current"),
            "PUSHDEPLOY_HOST": host.target.host,
            **self.environment.review_variables(),
        }

    # -- helpers ----------------------------------------------------------

    def should_stop(self) -> bool:
        return self.job.hold.lost or self.runner.cancel_flag(self.job) != ""

    def mark(self, run: HostRun, state: HostState, what: str = "") -> None:
        if state is HostState.FAILED and not run.failed:
            run.failed = what
        set_host(self.redis, self.deployment_id, run.host.index, run.host.target, state, what)


def end_remote_steps(
    environment: Environment, redis: Redis, deployment_id: str, environ: Mapping[str, str]
) -> list[str]:
    """End the steps a dead worker left running on its targets; returns the hosts where it did."""
    entries = [raw.decode() for raw in redis.smembers(schema.remote_steps(deployment_id))]
    if not entries or environment.ssh_key is None or environment.known_hosts is None:
        return []
    ended: list[str] = []
    with credentials(environment.ssh_key, environment.known_hosts) as directory:
        jobs: list[tuple[Host, str]] = []
        for entry in entries:
            index, _, pid_file = entry.partition(":")
            if not index.isdigit() or int(index) >= len(environment.targets):
                continue
            if not pid_file.endswith(".pid") or not set(pid_file) <= PID_FILE_CHARS:
                continue
            target = environment.targets[int(index)]
            jobs.append((Host(target, directory, int(index), environ), pid_file))
        for (host, _), done in zip(jobs, parallel(jobs, lambda job: job[0].kill(job[1])), strict=True):
            host.close()
            if done is True:
                ended.append(host.target.name)
    redis.delete(schema.remote_steps(deployment_id))
    return ended


PID_FILE_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.")


def parallel(items: Iterable[T], work: Callable[[T], R]) -> list[R | Exception]:
    """``work`` on each item in its own thread; each result or the exception it raised, in order."""
    listed = list(items)
    if not listed:
        return []

    def guarded(item: T) -> R | Exception:
        try:
            return work(item)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(listed))) as pool:
        return list(pool.map(guarded, listed))


def detail(error: BaseException) -> str:
    if isinstance(error, RemoteError):
        return f"{error.step}: {error.detail}"
    if isinstance(error, Stopped):
        return "stopped"
    return str(error) or type(error).__name__


def tail(lines: list[str]) -> str:
    shown = [line for line in lines if line.strip()][-5:]
    return (":\n" + "\n".join(shown)) if shown else ""
