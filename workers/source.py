"""The one git wrapper: a bare mirror per project, fetched incrementally, exported by sha.

Hardening applies to every call: hooks point at /dev/null, ``ext::`` and other unusual transports
are refused, no submodule is ever fetched, and refs or paths follow ``--end-of-options``. The
repository URL is passed through ``GIT_CONFIG_*`` variables, so it is in neither argv nor the
mirror's ``.git/config``.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from workers.errors import EngineError

SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")
"""Anchored with an end-of-string anchor: ``$`` would also accept a sha followed by a newline."""
ZERO_SHA_RE = re.compile(r"^0+$")

HARDENING = (
    ("core.hooksPath", "/dev/null"),
    ("protocol.allow", "never"),
    ("protocol.https.allow", "always"),
    ("protocol.http.allow", "always"),
    ("protocol.ssh.allow", "always"),
    ("protocol.git.allow", "always"),
    ("protocol.file.allow", "always"),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("core.symlinks", "true"),
    ("credential.interactive", "false"),
)
GIT_TIMEOUT = 600.0
TOKEN_USER = "oauth2"  # noqa: S105 - a user name, not a password
"""The user name sent with a bare ``repo_token``: GitLab ignores it for personal, project and group
access tokens and takes it for OAuth tokens; a deploy token needs its own (``user:token``)."""


class SourceError(EngineError):
    """Git could not produce the commit; ``detail`` is git's own message, secrets masked."""

    def __init__(self, message: str, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{message}: {detail}" if detail else message)


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a commit's tree as ``git ls-tree`` lists it: what it is decides how to read it."""

    mode: str  # 100644 and 100755 are files, 120000 a symlink, 160000 a submodule, 040000 a tree
    kind: str  # blob, tree or commit
    object_id: str


class InvalidSha(SourceError):
    """The sha is not 40 or 64 lowercase hex characters; refused before any git command."""


def check_sha(sha: str) -> str:
    if not isinstance(sha, str) or not SHA_RE.match(sha):
        raise InvalidSha("not a commit sha (40 or 64 hex characters)")
    return sha


class Mirror:
    """A bare mirror of one project's repository under ``data_dir/mirrors``."""

    def __init__(
        self, path: Path, url: str, environ: Mapping[str, str] | None = None, token: str = ""
    ) -> None:
        """``token`` (``repo_token``: ``token`` or ``user:token``) replaces any credential in ``url``."""
        self.path = path
        self.url = url
        self.environ = dict(os.environ if environ is None else environ)
        self.remote, self.auth_header = split_credentials(url)
        if token:
            user, _, password = token.rpartition(":")
            self.auth_header = basic_auth(user or TOKEN_USER, password)

    def ensure(self) -> None:
        if (self.path / "HEAD").exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".init-", dir=self.path.parent))
        self._git(["init", "--bare", "--quiet", str(tmp)], git_dir=None)
        try:
            os.replace(tmp, self.path)
        except OSError:
            # Another worker created the mirror first: theirs is as good as ours.
            shutil.rmtree(tmp, ignore_errors=True)
            if not (self.path / "HEAD").exists():
                raise

    def has_commit(self, sha: str) -> bool:
        check_sha(sha)
        result = self._git(["cat-file", "-e", "--end-of-options", f"{sha}^{{commit}}"], check=False)
        return result.returncode == 0

    def fetch(self, ref: str, sha: str) -> bool:
        """Make ``sha`` present, fetching only what is missing. Returns whether a fetch ran.

        ``ref`` is the full ref the commit was pushed to (``refs/heads/main``, ``refs/tags/v1``);
        fetching it alone is the incremental case.
        """
        check_sha(sha)
        self.ensure()
        if self.has_commit(sha):
            return False
        if not ref.startswith("refs/"):
            ref = f"refs/heads/{ref}"  # a bare name is a branch
        kind, _, name = ref.removeprefix("refs/").partition("/")
        known = kind in ("heads", "tags") and _plain_ref(name)
        self._fetch([f"+{ref}:{ref}"] if known else [])
        if not self.has_commit(sha):
            # Pushed, then force-pushed away, or on another branch: look at every branch and tag.
            self._fetch(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"])
        if not self.has_commit(sha):
            raise SourceError(f"commit {sha} is not in {name!r} or any other branch or tag of the repository")
        return True

    def fetch_merge_request(self, iid: int, sha: str) -> bool:
        """Make a merge request's head ``sha`` present from ``refs/merge-requests/<iid>/head``.

        GitLab keeps that ref in the target project's own repository, also for a fork's merge
        request, so nothing is ever fetched from a URL a payload named. The ref must point at
        ``sha`` itself: any other commit (even one of its ancestors) is refused.
        """
        check_sha(sha)
        if not isinstance(iid, int) or iid < 1:
            raise SourceError(f"not a merge request number: {iid!r}")
        self.ensure()
        ref = f"refs/merge-requests/{iid}/head"
        self._fetch([f"+{ref}:{ref}"], check=False)
        found = self._git(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], check=False
        )
        head = found.stdout.strip() if found.returncode == 0 else ""
        if head != sha:
            now = f"it is {head[:12]} now (a newer push?)" if head else "the repository has no such ref"
            raise SourceError(f"commit {sha} is not the head of merge request !{iid} ({ref}): {now}")
        return True

    def describe(self, sha: str) -> tuple[str, str]:
        """The title (first line of the message) and author name of commit ``sha``, already fetched."""
        check_sha(sha)
        shown = self._git(["log", "-1", "--no-show-signature", "--format=%s%x00%an", "--end-of-options", sha])
        title, _, author = shown.stdout.rstrip("\n").partition("\0")
        return title, author

    def export(self, sha: str, destination: Path) -> None:
        """Write the tree of ``sha`` into ``destination`` (created): no ``.git``, no hooks, no submodules."""
        check_sha(sha)
        destination.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix=".index-", dir=self.path) as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git(["read-tree", "--end-of-options", sha], extra_env=env)
            self._git(["--work-tree", str(destination), "checkout-index", "--all", "--force"], extra_env=env)

    def tree_entry(self, sha: str, name: str) -> TreeEntry | None:
        """The entry ``name`` at the root of the tree of ``sha`` (nothing is checked out), or None."""
        check_sha(sha)
        listed = self._git(["ls-tree", "-z", "--full-tree", "--end-of-options", sha, "--", name]).stdout
        for record in listed.split("\0"):
            head, tab, path = record.partition("\t")
            if tab and path == name:
                mode, kind, object_id = head.split(" ", 2)
                return TreeEntry(mode, kind, object_id)
        return None

    def blob_size(self, object_id: str) -> int:
        check_sha(object_id)
        return int(self._git(["cat-file", "-s", "--end-of-options", object_id]).stdout.strip())

    def blob(self, object_id: str) -> bytes:
        """The bytes of one blob, as stored: never a checkout, so no filter or attribute runs."""
        check_sha(object_id)
        result = self._run(["cat-file", "blob", "--end-of-options", object_id], self.path, text=False)
        if result.returncode != 0:
            detail = result.stderr.decode("utf-8", "replace").strip()
            raise SourceError(f"git cat-file failed (exit {result.returncode})", detail[-2000:])
        data: bytes = result.stdout
        return data

    def resolve(self, ref: str) -> tuple[str, str]:
        """Fetch branch or tag ``ref``; returns the commit it names now and its full ref.

        A full ``refs/tags/…`` ref is looked up as a tag first, anything else as a branch first.

        Raises:
            SourceError: no such branch or tag in the repository.
        """
        name = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
        if not _plain_ref(name):
            raise SourceError(f"not a branch or tag name: {name[:100]!r}")
        self.ensure()
        kinds = ("tags", "heads") if ref.startswith("refs/tags/") else ("heads", "tags")
        for candidate in (f"refs/{kind}/{name}" for kind in kinds):
            self._fetch([f"+{candidate}:{candidate}"], check=False)  # a missing one is simply not there
            found = self._git(
                ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{candidate}^{{commit}}"],
                check=False,
            )
            if found.returncode == 0:
                return check_sha(found.stdout.strip()), candidate
        raise SourceError(f"no branch or tag {name!r} in the repository")

    def branch_head(self, branch: str) -> str | None:
        """The remote's current head of ``branch`` (``git ls-remote``), or None if it has none."""
        result = self._git(
            ["ls-remote", "--heads", "origin", "--end-of-options", f"refs/heads/{branch}"],
            git_dir=self.path if self.path.exists() else None,
        )
        for line in result.stdout.splitlines():
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{branch}":
                return sha
        return None

    def _fetch(self, refspecs: Sequence[str], check: bool = True) -> None:
        self._git(
            [
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-recurse-submodules",
                "--prune",
                "origin",
                "--end-of-options",
                *refspecs,
            ],
            check=check,
        )

    def _git(
        self,
        args: list[str],
        git_dir: Path | str | None = "default",
        check: bool = True,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        directory = self.path if git_dir == "default" else git_dir
        result: subprocess.CompletedProcess[str] = self._run(args, directory, extra_env, text=True)
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().replace(self.url, "<repo_url>")
            raise SourceError(f"git {args[0]} failed (exit {result.returncode})", detail[-2000:])
        return result

    def _run(
        self,
        args: list[str],
        directory: Path | str | None,
        extra_env: Mapping[str, str] | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        argv = ["git"]
        if directory is not None:
            argv += ["--git-dir", str(directory)]
        env = self._env()
        env.update(extra_env or {})
        try:
            return subprocess.run(
                argv + args,
                env=env,
                # Never inside someone's repository: git would read its .git/config (and its
                # "origin") whenever no --git-dir is given. Every path we pass is absolute.
                cwd="/",
                capture_output=True,
                text=text,
                timeout=GIT_TIMEOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SourceError(f"git {args[0]} took longer than {GIT_TIMEOUT:.0f} s") from None

    def _env(self) -> dict[str, str]:
        keep = (
            "PATH",
            "HOME",
            "LANG",
            "TZ",
            "SSH_AUTH_SOCK",
            "GIT_SSH_COMMAND",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "NO_PROXY",
            "https_proxy",
            "http_proxy",
            "no_proxy",
        )
        env = {k: v for k, v in self.environ.items() if k in keep}
        config = [*HARDENING, ("remote.origin.url", self.remote)]
        if self.auth_header:
            config.append(("http.extraHeader", self.auth_header))
        env.update(
            GIT_TERMINAL_PROMPT="0",
            GIT_PROTOCOL_FROM_USER="0",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL="/dev/null",
            GIT_CONFIG_COUNT=str(len(config)),
            GIT_ALLOW_PROTOCOL="https:http:ssh:git:file",
        )
        for index, (name, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = name
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env


def split_credentials(url: str) -> tuple[str, str]:
    """An http(s) URL without its user and password, and those as an Authorization header.

    git hands the remote URL to its remote helper on the command line (``git-remote-https origin
    URL``), where any local user can read it; a header given through ``GIT_CONFIG_*`` stays in the
    environment, which only the same user can read.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or (parts.username is None and parts.password is None):
        return url, ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    return urlunsplit(parts._replace(netloc=netloc)), basic_auth(user, password)


def basic_auth(user: str, password: str) -> str:
    """The ``Authorization`` header git sends for ``user:password`` (given through http.extraHeader)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Authorization: Basic {token}"


def _plain_ref(branch: str) -> bool:
    """A branch name we are willing to put in a refspec (it comes from config, but be strict)."""
    return bool(re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", branch)) and ".." not in branch
