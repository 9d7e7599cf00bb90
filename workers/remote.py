"""SSH and rsync to the targets: the system's OpenSSH client, with our own settings only.

Why OpenSSH and rsync: they are the tools operators already trust with their servers, and
rsync's ``--link-dest`` sends only what changed against the host's previous release while
hard-linking the rest. Every ``ssh`` runs with ``-F /dev/null`` (the service user's
``~/.ssh/config`` changes nothing), pinned host keys only (``StrictHostKeyChecking yes`` against
our ``known_hosts`` file: nothing is learned on first use), our key only (no agent), and one master
connection per deployment and host that later commands reuse. The key and the host keys live in
a private 0700 directory made for the deployment and removed after it; they are never on a
command line. Remote commands are built from our own values (configured paths, generated ids,
hex shas, the operator's commands), each quoted with :func:`shlex.quote`.

A local ``kill`` of an ``ssh`` client does not end the remote command, so every remote step runs
in a session of its own on the host (``setsid``), its process group id in a pid file under
``<path>/.pushdeploy/``; :meth:`Host.kill` ends that group over a separate connection.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from workers import steps
from workers.errors import EngineError
from workers.releases import ID_CHARS
from workers.secrets import Secret
from workers.targets import Target

CONNECT_TIMEOUT = 10
"""Seconds to open a connection: an unreachable host fails the rollout within this."""
ALIVE_INTERVAL = 5
ALIVE_COUNT = 3
"""A connection that stops answering is dropped after ALIVE_INTERVAL × ALIVE_COUNT seconds."""
CONTROL_PERSIST = 120
"""Seconds an idle master connection stays up; it is closed at the end of the deployment anyway."""
QUICK_TIMEOUT = 30.0
"""Budget for our own short commands (list, rename, switch, prune, kill)."""
REMOTE_KILL_GRACE = 5
"""Seconds between TERM and KILL of a remote step's process group."""
UNREACHABLE = 255
"""ssh's own exit status: it could not connect, or the connection broke."""

STATE_DIR = ".pushdeploy"
TREE_FORMAT = "%y %i %s %T@ %m %l %p\\0"
"""What ``find -printf`` records of each entry of a shipped release, so a later change on the host shows
(a deploy step that wrote into it): type, inode, size, mtime, mode, link target, path."""
BYTES_SENT_RE = re.compile(r"^Total bytes sent: ([\d,.]+)")


class RemoteError(EngineError):
    """A command on a target did not succeed; ``step`` says which, ``lines`` what it printed."""

    def __init__(self, target: Target, step: str, detail: str, lines: list[str] | None = None) -> None:
        self.target, self.step, self.detail = target, step, detail
        self.lines = lines or []
        super().__init__(f"{target.name}: {step} failed ({detail})")


@dataclass(frozen=True)
class Run:
    """What one remote command did."""

    exit_code: int | None
    lines: list[str]
    timed_out: bool = False
    canceled: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.canceled


@dataclass(frozen=True)
class Shipped:
    """What a ship sent: rsync's bytes, and whether only the changed paths were listed."""

    bytes_sent: int
    incremental: bool


@contextmanager
def credentials(key: Secret, known_hosts: Secret) -> Iterator[Path]:
    """A private directory holding the key and the host keys for one deployment, removed after."""
    directory = Path(tempfile.mkdtemp(prefix="pd-ssh-"))  # mode 0700
    try:
        for name, secret in (("key", key), ("known_hosts", known_hosts)):
            path = directory / name
            path.touch(mode=0o600)
            path.write_text(secret.reveal().strip() + "\n")  # OpenSSH refuses a key without its newline
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Host:
    """One target, reached through a master connection kept in ``directory``."""

    def __init__(self, target: Target, directory: Path, index: int, environ: Mapping[str, str]) -> None:
        self.target = target
        self.directory = directory
        self.index = index
        self.environ = steps.scrubbed_environment(environ, {})
        self.root = target.path

    def ssh(self) -> list[str]:
        """The ssh command and our options, without the destination."""
        return [
            "ssh",
            "-F", "/dev/null",
            "-T",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.directory / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "UpdateHostKeys=no",
            "-o", "CheckHostIP=no",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", f"IdentityFile={self.directory / 'key'}",
            "-o", "ForwardAgent=no",
            "-o", "ClearAllForwardings=yes",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o", f"ServerAliveInterval={ALIVE_INTERVAL}",
            "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self.directory / f'cm-{self.index}'}",
            "-o", f"ControlPersist={CONTROL_PERSIST}",
            "-o", "LogLevel=ERROR",
            "-p", str(self.target.port),
            "-l", self.target.user,
        ]  # fmt: skip

    def argv(self, command: str) -> list[str]:
        return [*self.ssh(), self.target.host, "--", command]

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def run(
        self,
        command: str,
        deadline: float,
        on_line: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Run:
        """Run ``command`` (already quoted) on the host; output lines go to ``on_line`` and the result."""
        return self._local(self.argv(command), deadline, on_line, should_stop)

    def _local(
        self,
        argv: list[str],
        deadline: float,
        on_line: Callable[[str], None] | None,
        should_stop: Callable[[], bool],
    ) -> Run:
        lines: list[str] = []

        def line(text: str) -> None:
            lines.append(text)
            if on_line is not None:
                on_line(text)

        outcome = steps.run(shlex.join(argv), self.directory, self.environ, deadline, line, should_stop)
        return Run(outcome.exit_code, lines, outcome.timed_out, outcome.canceled)

    def quick(self, step: str, command: str, deadline: float) -> list[str]:
        """One of our own short commands; raises :class:`RemoteError` unless it exits 0."""
        run = self.run(command, deadline)
        if not run.ok:
            raise RemoteError(self.target, step, describe(run), run.lines)
        return run.lines

    # -- what a rollout does on a host -------------------------------------

    def inspect(self, deadline: float) -> tuple[str, list[str], str]:
        """Connect (the host key is checked here), prepare the layout; (current, releases, its tree).

        The tree is the digest the worker recorded when it shipped the current release, given only
        if that release is still exactly as shipped (see :meth:`record_tree`), else "".
        """
        q = shlex.quote
        command = (
            f"mkdir -p {q(self.path('releases'))} {q(self.path(STATE_DIR))} && cd {q(self.root)} && "
            'c=$(readlink current || true) && c=${c##*/} && printf \'current %s\\n\' "$c" && '
            'for r in releases/*; do [ -d "$r" ] && printf \'release %s\\n\' "${r#releases/}"; done; '
            'case "$c" in ""|*[!0-9A-Za-z_-]*) exit 0;; esac; '
            f't={STATE_DIR}/tree-$c; [ -f "$t" ] && [ -d "releases/$c" ] || exit 0; '
            f'f=$( {tree_fingerprint("releases/$c")} ) && [ -n "${{f%% *}}" ] && '
            '[ "$(sed -n 2p "$t")" = "$f" ] && '
            'printf \'tree %s\\n\' "$(sed -n 1p "$t")"; true'
        )
        lines = self.quick("connect", command, min(deadline, time.time() + QUICK_TIMEOUT))
        current = tree = ""
        releases: list[str] = []
        for text in lines:
            if text.startswith("current "):
                current = text.removeprefix("current ").strip().rpartition("/")[2]
            elif text.startswith("release "):
                name = text.removeprefix("release ").strip()
                if name and set(name) <= ID_CHARS:  # only names we could have made
                    releases.append(name)
            elif text.startswith("tree "):
                tree = text.removeprefix("tree ").strip()
        return current, sorted(releases), tree

    def ship(
        self,
        source: Path,
        release: str,
        base: str,
        deadline: float,
        should_stop: Callable[[], bool],
        changed: list[str] | None = None,
        tree: str = "",
    ) -> Shipped:
        """Copy ``source`` to ``releases/<release>`` under a dot name, then rename it.

        With ``changed`` (the paths that differ between ``base``, as the host still has it, and
        ``source``) the host hard-links ``base`` into the dot name and rsync sends only those paths,
        deleting the ones gone: no file list of the whole release crosses the wire. If that fails
        short of the connection (a host without GNU ``cp``), or without ``changed``, rsync compares
        every file against ``base`` (``--link-dest``). ``tree`` (the release's digest) is recorded on
        the host with what the release looks like there, for the next ship.
        """
        temporary = f".{release}.tmp"
        q = shlex.quote
        run: Run | None = None
        incremental = False
        if changed is not None and base:
            run = self.rsync(source, temporary, self.listed(base, temporary, changed), deadline, should_stop)
            if not run.ok and (run.exit_code == UNREACHABLE or run.timed_out or run.canceled):
                raise RemoteError(self.target, "ship", describe(run), run.lines)
            incremental = run.ok
        if run is None or not run.ok:
            fresh = f"cd {q(self.path('releases'))} && rm -rf {q(temporary)} && exec rsync"  # no stale links
            # No base: no checksums, and every file written in place (the directory is new and unseen,
            # so a temporary name and a rename per file would only cost the host CPU).
            compare = ["-rlpc", f"--link-dest=../{base}"] if base else ["-rlp", "--inplace"]
            options = [*compare, "--delete", f"--rsync-path={fresh}"]
            run = self.rsync(source, temporary, options, deadline, should_stop)
        if not run.ok:
            raise RemoteError(self.target, "ship", describe(run), run.lines)
        self.quick(
            "ship",
            f"cd {q(self.path('releases'))} && rm -rf {q(release)} && mv -T {q(temporary)} {q(release)} && "
            + self.record_tree(release, tree),
            deadline,
        )
        return Shipped(bytes_sent(run.lines), incremental)

    def listed(self, base: str, temporary: str, changed: list[str]) -> list[str]:
        """rsync options sending only ``changed`` into a hard-linked copy of ``base`` made on the host."""
        q = shlex.quote
        listing = self.directory / f"changes-{self.index}"  # names from the repository: never in argv
        listing.write_bytes(b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in changed))
        prepare = (
            f"cd {q(self.path('releases'))} && rm -rf {q(temporary)} && "
            f"cp -al {q(base)} {q(temporary)} && exec rsync"
        )
        return [
            "-lpI",  # every listed file is written anew (a new inode): base's hard links stay untouched
            f"--files-from={listing}", "--from0", "--delete-missing-args", "--force",
            f"--rsync-path={prepare}",
        ]  # fmt: skip

    def rsync(
        self, source: Path, temporary: str, options: list[str], deadline: float, stop: Callable[[], bool]
    ) -> Run:
        destination = f"{self.target.user}@{self.target.url_host}:{self.path('releases', temporary)}/"
        argv = ["rsync", "--stats", *options, "-e", shlex.join(self.ssh()), f"{source}/", destination]
        return self._local(argv, deadline, None, stop)

    def record_tree(self, release: str, tree: str) -> str:
        """The command (run in ``releases/``) that records ``tree`` and the fingerprint of the release."""
        if not tree or not set(tree) <= HEX:
            return "true"
        record = f"../{STATE_DIR}/tree-{release}"
        return (
            f"{{ {{ echo {tree} && {tree_fingerprint(release)}; }} > {record}.tmp 2>/dev/null && "
            f"mv {record}.tmp {record} || rm -f {record}.tmp; true; }}"
        )

    def switch(self, release: str, deadline: float) -> None:
        """Point ``current`` at the release with a rename, so the host serves the old or the new one."""
        q = shlex.quote
        link = f".current-{release}"
        self.quick(
            "switch",
            f"cd {q(self.root)} && test -d {q('releases/' + release)} && "
            f"ln -sfn {q('releases/' + release)} {q(link)} && mv -T {q(link)} current",
            min(deadline, time.time() + QUICK_TIMEOUT),
        )

    def step_command(self, release: str, command: str, variables: Mapping[str, str], pid_file: str) -> str:
        """``command`` in a session of its own on the host, its group id written to ``pid_file``."""
        q = shlex.quote
        pairs = [f"{k}={v}" for k, v in variables.items()]
        wrapper = 'echo $$ > "$1" && shift && exec "$@"'
        inner = shlex.join(["env", *pairs, "/bin/sh", "-c", command])
        return (
            f"cd {q(self.path('releases', release))} && "
            f"exec setsid -w /bin/sh -c {q(wrapper)} sh {q(self.path(STATE_DIR, pid_file))} {inner}"
        )

    def kill(self, pid_file: str) -> bool:
        """End the process group a step left on the host (TERM, then KILL); False if unreachable."""
        q = shlex.quote
        file = q(self.path(STATE_DIR, pid_file))
        script = (
            f"p=$(cat {file} 2>/dev/null) || exit 0; "
            f'kill -TERM -- "-$p" 2>/dev/null || {{ rm -f {file}; exit 0; }}; '
            f'i=0; while [ $i -lt {REMOTE_KILL_GRACE * 10} ] && kill -0 -- "-$p" 2>/dev/null; '
            "do sleep 0.1; i=$((i+1)); done; "
            f'kill -KILL -- "-$p" 2>/dev/null; rm -f {file}; true'
        )
        return self.run(script, time.time() + QUICK_TIMEOUT + REMOTE_KILL_GRACE).ok

    def prune(self, remove: list[str], deployment_id: str, deadline: float) -> None:
        """Remove old releases and this deployment's pid files."""
        q = shlex.quote
        paths = " ".join(q(self.path(where, f"{prefix}{r}")) for r in remove for where, prefix in PRUNED)
        pids = q(self.path(STATE_DIR)) + "/" + q(deployment_id) + "-*.pid"
        self.quick("prune", f"rm -rf -- {paths} {pids}" if paths else f"rm -f -- {pids}", deadline)

    def close(self) -> None:
        """Stop the master connection (best effort: it ends by itself after CONTROL_PERSIST)."""
        self._local([*self.ssh(), "-O", "exit", self.target.host], time.time() + 5, None, lambda: False)


HEX = frozenset("0123456789abcdef")
PRUNED = (("releases", ""), (STATE_DIR, "tree-"))
"""What pruning a release removes on a host: its directory and the record of its tree."""


def tree_fingerprint(release: str) -> str:
    """A shell pipeline printing one hash of every entry's type, inode, size, mtime, mode and path.

    Equal before and after a deploy step ran, unless the step wrote into the release. Needs GNU
    find; without it the pipeline fails (``test`` of the first entry), so nothing is recorded and
    the next ship compares every file instead.
    """
    return (
        f"( cd {release} && [ \"$(find . -maxdepth 0 -printf ok)\" = ok ] && "
        f"find . -printf '{TREE_FORMAT}' | LC_ALL=C sort -z | sha256sum )"
    )


def describe(run: Run) -> str:
    if run.timed_out:
        return "ran out of time (the deployment's timeout)"
    if run.canceled:
        return "canceled"
    if run.exit_code == UNREACHABLE:
        last = next((line for line in reversed(run.lines) if line.strip()), "")
        if "Host key verification failed" in last or "REMOTE HOST IDENTIFICATION" in "".join(run.lines):
            return "host key not in known_hosts or changed: refused"
        return f"unreachable: {last or 'ssh exited 255'}"
    return f"exited with {run.exit_code}"


def bytes_sent(lines: list[str]) -> int:
    for text in lines:
        found = BYTES_SENT_RE.match(text.strip())
        if found:
            return int(found.group(1).replace(",", "").replace(".", ""))
    return 0
