"""A fake GitLab that speaks the subset of REST API v4 pushdeploy uses, over real HTTP.

Why a real server rather than mocks: the bugs that bite in production live in the layers a
mock skips -- URL-encoding of ``group/project`` paths, the PRIVATE-TOKEN header, python-gitlab's
retry loop on 429/5xx, timeouts and connection resets, and GitLab's commit-status state machine
(posting ``running`` twice is a 400, not a no-op).  python-gitlab and requests run unmodified
against this server; only the far end is fake.

Only ``http.server`` from the standard library is used so that the raw request line (with
``%2F`` still encoded) is available and a connection can be reset on purpose.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import math
import re
import socket
import struct
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

try:
    from tests.fakegitlab_people import People
except ImportError:  # tests/ is not importable as a package: rootdir not on sys.path
    from fakegitlab_people import People  # type: ignore[no-redef,import-not-found,unused-ignore]

__all__ = ["FakeGitLab"]

API_PREFIX = "/api/v4"
GITLAB_VERSION = "19.0.0"

STATUS_STATES = ("pending", "running", "success", "failed", "canceled", "skipped")
ACTIVE_STATES = ("pending", "running")
# The state-machine event GitLab fires for each requested state (Ci::CreateCommitStatusService).
STATE_EVENT = {
    "pending": "enqueue",
    "running": "run",
    "success": "success",
    "failed": "drop",
    "canceled": "cancel",
    "skipped": "skip",
}
# States each event may leave from (CommitStatus state machine), restricted to the states a
# record can be in when the API finds it: a new record ("created") or a running_or_pending one.
EVENT_ALLOWED_FROM = {
    "enqueue": {"created"},
    "run": {"created", "pending"},  # created goes via enqueue first, then run
    "success": {"created", "pending", "running"},
    "drop": {"created", "pending", "running"},
    "cancel": {"created", "pending", "running"},
    "skip": {"created", "pending"},
}
TERMINAL_STATES = ("success", "failed", "canceled", "skipped")
DEPLOYMENT_STATUSES = ("running", "success", "failed", "canceled")
# The Deployment state machine's event for each status the API takes, and the states it leaves
# from (app/models/deployment.rb): run only from created or blocked, the others from any state
# but their own, so an update to the status a deployment already has is a 400.
DEPLOYMENT_EVENT = {"running": "run", "success": "succeed", "failed": "drop", "canceled": "cancel"}
DEPLOYMENT_STATES = ("created", "running", "success", "failed", "canceled", "skipped", "blocked")
DEPLOYMENT_SORTS = ("id", "iid", "created_at", "updated_at", "ref", "finished_at")
BRANCH_FILTER_STRATEGIES = ("wildcard", "regex", "all_branches")
HOOK_EVENT_DEFAULTS: dict[str, bool] = {
    "push_events": True,  # GitLab's column default; every other event defaults to false
    "tag_push_events": False,
    "merge_requests_events": False,
    "repository_update_events": False,
    "issues_events": False,
    "confidential_issues_events": False,
    "note_events": False,
    "confidential_note_events": False,
    "pipeline_events": False,
    "wiki_page_events": False,
    "deployment_events": False,
    "feature_flag_events": False,
    "job_events": False,
    "releases_events": False,
    "milestone_events": False,
    "emoji_events": False,
    "resource_access_token_events": False,
    "resource_deploy_token_events": False,
    "vulnerability_events": False,
}
HOOK_BOOL_FIELDS = (*HOOK_EVENT_DEFAULTS, "enable_ssl_verification")
HOOK_TEXT_FIELDS = (
    "url",
    "name",
    "description",
    "push_events_branch_filter",
    "branch_filter_strategy",
    "custom_webhook_template",
    "token",
    "signing_token",
)
SHA_RE = re.compile(r"(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})")
URL_RE = re.compile(r"https?://[^\s/?#]+[^\s]*")

FaultKind = Literal["fail", "stall", "reset"]
FaultRoute = Literal["statuses", "deployments", "notes"]


def _now() -> str:
    """GitLab's timestamp format: ISO 8601, milliseconds, UTC with a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _as_bool(value: Any) -> bool | None:
    """Coerce a JSON or form value the way Grape's Boolean type does; None means invalid."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "t", "1", "yes", "false", "f", "0", "no"):
        return value.lower() in ("true", "t", "1", "yes")
    return None


def _valid_signing_token(token: str) -> bool:
    """Standard Webhooks secret: 'whsec_' followed by base64 of a 32-byte key."""
    if not token.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(token[len("whsec_") :], validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


SigningSupport = Literal["enabled", "flag_off", "unsupported"]
"""How a GitLab treats a hook's ``signing_token``: 19.0+ with the ``webhook_signing_token`` flag on
(kept, ``signing_token_present`` reported), 19.0+ with the flag off (silently ignored, presence still
reported), or a GitLab before 19.0 (the parameter dropped as undeclared, no presence fields at all)."""

# GitLab's UrlBlocker for hook URLs, when local requests are not allowed: (network, its message).
# Each message is the model's ("Url is blocked: …"); the REST API answers only "Invalid url given".
_BLOCKED_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/32", "Requests to localhost are not allowed"),
    ("::/128", "Requests to localhost are not allowed"),
    ("127.0.0.0/8", "Requests to loopback addresses are not allowed"),
    ("::1/128", "Requests to loopback addresses are not allowed"),
    ("10.0.0.0/8", "Requests to the local network are not allowed"),
    ("172.16.0.0/12", "Requests to the local network are not allowed"),
    ("192.168.0.0/16", "Requests to the local network are not allowed"),
    ("fc00::/7", "Requests to the local network are not allowed"),
    ("fec0::/10", "Requests to the local network are not allowed"),
    ("169.254.0.0/16", "Requests to the link local network are not allowed"),
    ("fe80::/10", "Requests to the link local network are not allowed"),
    ("100.64.0.0/10", "Requests to the shared address space are not allowed"),
    ("255.255.255.255/32", "Requests to the limited broadcast address are not allowed"),
)
# What git check-ref-format forbids anywhere in a branch name (GitLab's GitRefValidator).
_REF_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f ~^:?*\[\\]|\.\.|@\{|//")
# RE2 (GitLab's UntrustedRegexp) has no lookaround and no backreferences; Python's re has both.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P[=>]|\\k<")


def _url_blocked(url: str) -> str | None:
    """Why GitLab's UrlBlocker refuses ``url`` as a hook URL, or None.

    Like GitLab, an address literal is checked against the local ranges and ``localhost`` counts as a
    local address. Unlike GitLab, other host names are not resolved (a test must not depend on DNS):
    a name that resolves to a private address passes here and would be refused by GitLab.
    """
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return "Requests to localhost are not allowed"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for network, message in _BLOCKED_NETWORKS:
        if address in ipaddress.ip_network(network):
            return message
    return None


def _valid_branch_name(name: str) -> bool:
    """GitLab's GitRefValidator: ``refs/heads/<name>`` must be a valid git ref, and not a full ref."""
    if not name or name == "HEAD" or name.startswith(("refs/heads/", "refs/remotes/", "-")):
        return False
    if _REF_FORBIDDEN.search(name) or name.endswith(("/", ".")) or name == "@":
        return False
    return all(part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/"))


def _branch_filter_error(strategy: str, pattern: str | None) -> str | None:
    """The model's complaint about ``push_events_branch_filter`` under ``strategy``, or None."""
    if not pattern:
        return None
    if strategy == "regex":
        if _NOT_RE2.search(pattern):
            return "not valid RE2 syntax"
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"not valid RE2 syntax: {exc}"
        return None
    if strategy == "wildcard":
        if not _valid_branch_name(pattern.replace("*", "x")):
            return "is not a valid branch name"
        if len(pattern) > 4000:
            return "is longer than the allowed length of 4000 characters."
    return None


def _integer(params: Mapping[str, Any], key: str) -> int | None:
    """An optional Integer parameter as Grape coerces it; anything else is its 400."""
    value = params.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not str(value).lstrip("-").isdigit():
        raise _HttpError(400, {"error": f"{key} is invalid"})
    return int(value)


def _target_url_problems(url: str) -> list[str]:
    """GenericCommitStatus's target_url validators: an http(s) URL (the URL blocker's words), <= 255."""
    problems = []
    split = urlsplit(url.strip())
    if "\n" in unquote(url) or "\r" in unquote(url):
        problems.append("is blocked: URI is invalid")
    elif split.scheme not in ("http", "https"):
        problems.append("is blocked: Only allowed schemes are http, https")
    elif split.hostname and not (_is_ip(split.hostname) or split.hostname[0].isalnum()):
        problems.append("is blocked: Hostname or IP address invalid")
    if len(url) > 255:
        problems.append("is too long (maximum is 255 characters)")
    return problems


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def _git(repository: Path, *args: str) -> str | None:
    """A git command's output in a repository the fake reads, or None when git says no."""
    done = subprocess.run(
        ["git", "--git-dir", str(repository), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout if done.returncode == 0 else None


@dataclass
class _Response:
    """What the handler should put on the wire (or not, for a reset)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0
    reset: bool = False


@dataclass(frozen=True)
class _Fault:
    """One queued misbehaviour for the next status POST."""

    kind: FaultKind
    status: int = 503
    body: Any = None
    headers: Mapping[str, str] | None = None
    seconds: float = 0.0
    process: bool = True
    route: FaultRoute = "statuses"
    state: str | None = None  # statuses route: only a POST of this state (None: any)


def _posted_state(raw_body: bytes) -> str | None:
    """The ``state`` a status POST carries, as JSON or as a form (python-gitlab sends either)."""
    try:
        data = json.loads(raw_body)
    except ValueError:
        data = dict(parse_qsl(raw_body.decode("utf-8", "replace")))
    value = data.get("state") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


class _HttpError(Exception):
    """Raised inside route handlers to answer with a GitLab-shaped error."""

    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        super().__init__(status, payload)
        self.status = status
        self.payload = payload


def _message(status: int, message: Any) -> _HttpError:
    return _HttpError(status, {"message": message})


def _json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> _Response:
    body = json.dumps(payload).encode()
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    return _Response(status, body, hdrs)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its FakeGitLab and its open connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeGitLab, address: tuple[str, int]) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP requests into FakeGitLab.handle() calls and writes the answers."""

    protocol_version = "HTTP/1.1"  # keep-alive, like GitLab behind nginx
    server_version = "nginx"
    sys_version = ""

    @property
    def _srv(self) -> _Server:
        return cast(_Server, self.server)

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle + delayed ACK adds 40 ms each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._srv.connections_lock:
            self._srv.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            with self._srv.connections_lock:
                self._srv.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log; FakeGitLab.requests is the log."""

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length > 0 else b""
        fake = self._srv.fake
        response = fake._handle(self.command, self.path, self.headers, raw_body)
        if response.stall > 0:
            fake._stopping.wait(response.stall)
        if response.reset:
            self._reset_connection()
            return
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if response.body and self.command != "HEAD":
                self.wfile.write(response.body)
        except OSError:  # client gave up (timeout) or we are stopping
            self.close_connection = True

    def _reset_connection(self) -> None:
        """Close with SO_LINGER 0 so the kernel sends RST: the client sees 'connection reset'."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch


class FakeGitLab:
    """In-process GitLab REST API v4 subset on 127.0.0.1:<ephemeral port>.

    State is kept in plain attributes (``hooks``, ``badges``, ``deployments``, ``branch_heads``)
    so tests can arrange and inspect it directly; every mutation goes through ``lock``.

    Like GitLab, it knows only the commits of its repository: those given to ``add_commit``, the
    ``branch_heads``, and those of any git repository given to ``use_repository``. A status or a
    deployment for another commit is refused as GitLab refuses it. Statuses live in pipelines per
    (sha, ref) (``pipelines()``); ``start_pipeline`` stands for a schedule or a manual run.
    """

    def __init__(
        self,
        projects: Mapping[str, int] | None = None,
        *,
        token: str = "fake-gitlab-token",  # noqa: S107 - a test credential, not a secret
        host: str = "127.0.0.1",
        port: int = 0,
        branch_heads: Mapping[str, str] | None = None,
    ) -> None:
        self.projects: dict[str, int] = dict(projects if projects is not None else {"tools/sample-app": 42})
        self.token = token
        # branch name -> head sha, shared by all projects (enough for single-project tests); each
        # head is a known commit on its branch.
        self.branch_heads: dict[str, str] = dict(branch_heads or {})
        # Refs the token's user may not push or merge to (a Developer on a protected branch):
        # GitLab answers a status for them with 403, as the pipeline may not be updated.
        self.protected_refs: set[str] = set()
        self.hooks: list[dict[str, Any]] = []
        self.badges: list[dict[str, Any]] = []
        self.deployments: list[dict[str, Any]] = []
        self.environments: dict[tuple[int, str], int] = {}
        # environment id -> {"external_url", "state"}: what the environments API shows and changes
        self.environment_details: dict[int, dict[str, Any]] = {}
        # merge request notes: {"id", "project_id", "iid", "body", "created_at", "updated_at"}
        self.notes: list[dict[str, Any]] = []
        self.lock = threading.RLock()
        self.errors: list[BaseException] = []  # unexpected exceptions inside the fake (should stay empty)
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._faults: deque[_Fault] = deque()
        self._requests: list[dict[str, Any]] = []
        self._accepted: list[dict[str, Any]] = []
        self._records: list[dict[str, Any]] = []  # commit-status entities (the state machine)
        self._pipelines: list[dict[str, Any]] = []  # oldest first, as GitLab's ids grow
        # What the repository holds, like GitLab's: registered commits (sha -> branches, and tag
        # name -> sha), plus any real git repositories the fake reads (see use_repository).
        self._commits: dict[str, list[str]] = {}
        self._tags: dict[str, str] = {}
        self._repositories: list[Path] = []
        self._found_in_repositories: set[str] = set()
        self._next_id = 1000
        self._redirect_routes: dict[str, int] = {}  # old path (lower case) -> project id, see rename_project
        # Users, memberships and the OAuth provider (tests/fakegitlab_people.py).
        self.people = People(lambda: self.url)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeGitLab:
        """Bind the ephemeral port and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self, (self._host, self._port))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeGitLab", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections so clients see a dead server."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            conns = list(server.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeGitLab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeGitLab is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL to give python-gitlab, e.g. http://127.0.0.1:PORT (no /api/v4)."""
        return f"http://{self._host}:{self.port}"

    # ------------------------------------------------------------------ fault injection

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        body: str | bytes | Mapping[str, Any] | list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        route: FaultRoute = "statuses",
    ) -> None:
        """Answer the next n status POSTs with a canned response (not recorded as accepted).

        ``route="deployments"`` aims at the Deployments API's creates and updates instead,
        ``route="notes"`` at merge request notes' creates and edits.
        """
        with self.lock:
            self._faults.extend(
                _Fault("fail", status=status, body=body, headers=headers, route=route) for _ in range(n)
            )

    def stall_next(
        self,
        n: int,
        seconds: float,
        *,
        process: bool = True,
        route: FaultRoute = "statuses",
        state: str | None = None,
    ) -> None:
        """Delay the answer to the next n status POSTs by ``seconds`` (to trip client timeouts).

        process=True: the POST is applied (recorded) first and only the response is late -- the
        nasty real-world case where a client retry duplicates work.  process=False: nothing is
        applied and the connection is reset after the delay. ``state``: only POSTs of that status
        state (``success``…), so a test can aim at the final status before it is due.
        """
        with self.lock:
            self._faults.extend(
                _Fault("stall", seconds=seconds, process=process, route=route, state=state) for _ in range(n)
            )

    def reset_next(self, n: int = 1, *, route: FaultRoute = "statuses") -> None:
        """Reset (RST) the connection on the next n status POSTs without answering or recording."""
        with self.lock:
            self._faults.extend(_Fault("reset", route=route) for _ in range(n))

    def _take_fault(self, method: str, raw_path: str, raw_body: bytes = b"") -> _Fault | None:
        """The first queued fault aimed at this request's route (and state), taken off the queue."""
        if method == "POST" and re.fullmatch(r"/api/v4/projects/[^/]+/statuses/[^/]+", raw_path):
            route = "statuses"
        elif (method == "POST" and re.fullmatch(r"/api/v4/projects/[^/]+/deployments", raw_path)) or (
            method == "PUT" and re.fullmatch(r"/api/v4/projects/[^/]+/deployments/[^/]+", raw_path)
        ):
            route = "deployments"
        elif method in ("POST", "PUT") and re.fullmatch(
            r"/api/v4/projects/[^/]+/merge_requests/[^/]+/notes(?:/[^/]+)?", raw_path
        ):
            route = "notes"
        else:
            return None
        with self.lock:
            for fault in self._faults:
                if fault.route == route and (fault.state is None or fault.state == _posted_state(raw_body)):
                    self._faults.remove(fault)
                    return fault
        return None

    @property
    def pending_faults(self) -> int:
        with self.lock:
            return len(self._faults)

    # ------------------------------------------------------------------ inspection

    def statuses(self, sha: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        """Accepted status POSTs in arrival order (keys: state, sha, ref, name, target_url, ...)."""
        with self.lock:
            return [
                dict(s)
                for s in self._accepted
                if (sha is None or s["sha"] == sha) and (name is None or s["name"] == name)
            ]

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received: method, path (raw, still %-encoded), query, status, fault, ..."""
        with self.lock:
            return [dict(r) for r in self._requests]

    def clear(self) -> None:
        """Forget requests, statuses, pipelines and queued faults (projects, commits, hooks etc. stay)."""
        with self.lock:
            self._faults.clear()
            self._requests.clear()
            self._accepted.clear()
            self._records.clear()
            self._pipelines.clear()

    def pipelines(self, sha: str | None = None, ref: str | None = None) -> list[dict[str, Any]]:
        """Pipelines oldest first: id, sha, ref, source, and ``jobs``, each name's latest status."""
        with self.lock:
            found = [
                p
                for p in self._pipelines
                if (sha is None or p["sha"] == sha) and (ref is None or p["ref"] == ref)
            ]
            return [
                {
                    **p,
                    "jobs": {
                        r["name"]: r["status"]
                        for r in self._records
                        if r["pipeline_id"] == p["id"] and not r["retried"]
                    },
                }
                for p in found
            ]

    # ------------------------------------------------------------------ repository and pipelines

    def add_commit(self, sha: str, *branches: str, tags: Iterable[str] = ()) -> None:
        """Make ``sha`` a commit, on ``branches`` (the first is what GitLab picks) and ``tags``."""
        with self.lock:
            known = self._commits.setdefault(sha, [])
            known.extend(b for b in branches if b not in known)
            self._tags.update(dict.fromkeys(tags, sha))

    def use_repository(self, path: str | Path) -> None:
        """Also know every commit, branch and tag of a real git repository (read when asked)."""
        with self.lock:
            self._repositories.append(Path(path))

    def start_pipeline(
        self, sha: str, ref: str, source: str = "schedule", project: str | int | None = None
    ) -> int:
        """A pipeline GitLab started by itself for (sha, ref): a schedule, a manual run, a push.

        ``project`` (path or id) defaults to the first project the fake serves.
        """
        if not self._knows_commit(sha):
            raise ValueError(f"unknown commit {sha}: add_commit or use_repository first")
        if project is None:
            project_id = next(iter(self.projects.values()))
        else:
            project_id = self._find_project(str(project))[0]
        return int(self._new_pipeline(project_id, sha, ref, source)["id"])

    def delete_pipeline(self, pipeline_id: int) -> None:
        """Delete a pipeline and its jobs, as a maintainer may in GitLab's UI or API."""
        with self.lock:
            self._pipelines = [p for p in self._pipelines if p["id"] != pipeline_id]
            self._records = [r for r in self._records if r["pipeline_id"] != pipeline_id]

    # ------------------------------------------------------------------ request handling

    def _new_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id

    def _log(self, entry: dict[str, Any], response: _Response, fault: str | None) -> None:
        entry["status"] = None if response.reset else response.status
        entry["fault"] = fault
        with self.lock:
            self._requests.append(entry)

    def _handle(self, method: str, target: str, headers: Any, raw_body: bytes) -> _Response:
        split = urlsplit(target)
        raw_path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        entry: dict[str, Any] = {
            "method": method,
            "path": raw_path,
            "query": query,
            "headers": dict(headers.items()),
            "body": raw_body.decode("utf-8", "replace"),
        }
        fault = self._take_fault(method, raw_path, raw_body)
        if fault is not None and fault.kind == "fail":
            response = self._canned(fault)
        elif fault is not None and fault.kind == "reset":
            response = _Response(0, reset=True)
        elif fault is not None and not fault.process:
            response = _Response(0, stall=fault.seconds, reset=True)
        else:
            response = self._route(method, raw_path, query, headers, raw_body, split.query)
            if fault is not None:
                response.stall = fault.seconds
        self._log(entry, response, fault.kind if fault else None)
        return response

    def _canned(self, fault: _Fault) -> _Response:
        """Build a fail_next() answer; defaults mimic nginx/Rack::Attack bodies."""
        headers = dict(fault.headers or {})
        body = fault.body
        if body is None and fault.status == 429:
            body, ctype = b"Retry later\n", "text/plain"
        elif body is None:
            reason = HTTPStatus(fault.status).phrase if fault.status in HTTPStatus._value2member_map_ else ""
            body, ctype = (
                json.dumps({"message": f"{fault.status} {reason}".strip()}).encode(),
                "application/json",
            )
        elif isinstance(body, (bytes, str)):
            body, ctype = (body.encode() if isinstance(body, str) else body), "text/plain"
        else:
            body, ctype = json.dumps(body).encode(), "application/json"
        headers.setdefault("Content-Type", ctype)
        return _Response(fault.status, body, headers)

    def _authorized(self, headers: Any) -> bool:
        private = headers.get("PRIVATE-TOKEN")
        bearer = headers.get("Authorization") or ""
        return private == self.token or bearer == f"Bearer {self.token}"

    def _route(
        self, method: str, raw_path: str, query: dict[str, str], headers: Any, raw_body: bytes, raw_query: str
    ) -> _Response:
        if raw_path.startswith(("/oauth/", "/users/")):
            return self._route_oauth(method, raw_path, query, headers, raw_body)
        if not raw_path.startswith(API_PREFIX + "/"):
            return _json_response(404, {"error": "404 Not Found"})
        if not self._authorized(headers):
            return self._route_as_user(method, raw_path, headers)
        # Split the *raw* path so an encoded "group%2Fproject" stays a single segment.
        segments = raw_path[len(API_PREFIX) + 1 :].split("/")
        try:
            params = self._params(query, headers, raw_body)
            return self._route_api(method, segments, params, raw_path)
        except _HttpError as err:
            return _json_response(err.status, err.payload)
        except Exception as exc:  # a bug in the fake: answer like GitLab would and keep it for the test
            with self.lock:
                self.errors.append(exc)
            return _json_response(500, {"message": "500 Internal Server Error"})

    def _route_oauth(
        self, method: str, raw_path: str, query: dict[str, str], headers: Any, raw_body: bytes
    ) -> _Response:
        if raw_path == "/oauth/authorize" and method == "GET":
            status, body, hdrs = self.people.authorize(query)
        elif raw_path == "/oauth/token" and method == "POST":
            status, body, hdrs = self.people.token(headers, raw_body)
        elif raw_path == "/users/sign_in" and method == "GET":
            status, body, hdrs = 200, b"<!doctype html><title>Sign in - GitLab</title>", {}
        else:
            return _json_response(404, {"error": "404 Not Found"})
        return _Response(status, body, hdrs)

    def _route_as_user(self, method: str, raw_path: str, headers: Any) -> _Response:
        """A person's OAuth token (scope ``read_user``) reads ``/user`` and nothing else."""
        scheme, _, bearer = (headers.get("Authorization") or "").partition(" ")
        user = self.people.user_of(bearer) if scheme == "Bearer" else None
        if user is None:
            return _json_response(401, {"message": "401 Unauthorized"})
        if raw_path == f"{API_PREFIX}/user" and method == "GET":
            return _json_response(200, self.people.user_entity(user))
        return _json_response(
            403,
            {
                "error": "insufficient_scope",
                "error_description": (
                    "The request requires higher privileges than provided by the access token."
                ),
                "scope": "api read_api",
            },
        )

    @staticmethod
    def _params(query: dict[str, str], headers: Any, raw_body: bytes) -> dict[str, Any]:
        """Grape merges query string and body; the body may be JSON or a form."""
        params: dict[str, Any] = dict(query)
        if not raw_body:
            return params
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded":
            params.update(parse_qsl(raw_body.decode("utf-8", "replace"), keep_blank_values=True))
            return params
        try:
            data = json.loads(raw_body)
        except ValueError as exc:
            raise _HttpError(
                400, {"error": "The provided content-type 'application/json' is not valid"}
            ) from exc
        if isinstance(data, dict):
            params.update(data)
        return params

    def _route_api(self, method: str, seg: list[str], params: dict[str, Any], raw_path: str) -> _Response:
        if seg == ["version"] and method == "GET":
            return _json_response(200, {"version": GITLAB_VERSION, "revision": "fake", "enterprise": False})
        if seg == ["user"] and method == "GET":
            return _json_response(200, self._user())
        if len(seg) < 2 or seg[0] != "projects" or not seg[1]:
            return _json_response(404, {"error": "404 Not Found"})
        given = unquote(seg[1])
        moved = self._moved_project(method, given, raw_path, params)
        if moved is not None:
            return moved
        project_id, project_path = self._find_project(given)
        rest = seg[2:]
        if rest == [] and method == "GET":
            return _json_response(200, self._project_entity(project_id, project_path))
        if method == "GET" and len(rest) == 3 and rest[:2] == ["members", "all"]:
            status, body, hdrs = self.people.member(project_id, unquote(rest[2]))
            return _Response(status, body, hdrs)
        if method == "POST" and len(rest) == 2 and rest[0] == "statuses":
            return self._post_status(given, project_id, project_path, unquote(rest[1]), params)
        if (
            method == "GET"
            and len(rest) == 4
            and rest[:2] == ["repository", "commits"]
            and rest[3] == "statuses"
        ):
            return self._list_statuses(project_id, unquote(rest[2]), params, raw_path)
        if method == "GET" and len(rest) >= 3 and rest[:2] == ["repository", "branches"]:
            return self._get_branch(project_id, project_path, unquote("/".join(rest[2:])))
        if rest and rest[0] in ("hooks", "badges", "deployments"):
            return self._route_collection(method, rest, project_id, project_path, params, raw_path)
        if len(rest) in (3, 4) and rest[0] == "merge_requests" and rest[2] == "notes":
            return self._route_notes(method, rest, project_id, params, raw_path)
        if rest and rest[0] == "environments":
            return self._route_environments(method, rest, project_id, params, raw_path)
        return _json_response(404, {"error": "404 Not Found"})

    # ------------------------------------------------------------------ merge request notes

    def _route_notes(
        self, method: str, rest: list[str], project_id: int, params: dict[str, Any], raw_path: str
    ) -> _Response:
        """``/merge_requests/:iid/notes[/:id]``: list, create, get, edit, delete (a deleted note is 404)."""
        try:
            iid = int(unquote(rest[1]))
            note_id = int(unquote(rest[3])) if len(rest) == 4 else None
        except ValueError as exc:
            raise _HttpError(400, {"error": "id is invalid"}) from exc
        if note_id is None:
            if method == "GET":
                with self.lock:
                    items = [
                        self._note_entity(n)
                        for n in self.notes
                        if (n["project_id"], n["iid"]) == (project_id, iid)
                    ]
                return self._paginate(items, params, raw_path)
            if method == "POST":
                body = params.get("body")
                if not isinstance(body, str) or not body:
                    raise _HttpError(400, {"error": "body is missing"})
                now = _now()
                with self.lock:
                    note = {"id": self._new_id(), "project_id": project_id, "iid": iid, "body": body,
                            "created_at": now, "updated_at": now}  # fmt: skip
                    self.notes.append(note)
                return _json_response(201, self._note_entity(note))
            return _json_response(405, {"error": "405 Not Allowed"})
        with self.lock:
            found = [
                n for n in self.notes if (n["project_id"], n["iid"], n["id"]) == (project_id, iid, note_id)
            ]
        if not found:
            raise _message(404, "404 Not found")
        note = found[0]
        if method == "GET":
            return _json_response(200, self._note_entity(note))
        if method == "PUT":
            body = params.get("body")
            if not isinstance(body, str) or not body:
                raise _HttpError(400, {"error": "body is missing"})
            with self.lock:
                note["body"], note["updated_at"] = body, _now()
            return _json_response(200, self._note_entity(note))
        if method == "DELETE":
            with self.lock:
                self.notes.remove(note)
            return _Response(204)
        return _json_response(405, {"error": "405 Not Allowed"})

    def _note_entity(self, note: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": note["id"],
            "type": None,
            "body": note["body"],
            "author": self._user(),
            "created_at": note["created_at"],
            "updated_at": note["updated_at"],
            "system": False,
            "noteable_id": note["iid"] + 100000,
            "noteable_type": "MergeRequest",
            "noteable_iid": note["iid"],
            "project_id": note["project_id"],
            "resolvable": False,
            "confidential": False,
            "internal": False,
        }

    def merge_request_notes(self, iid: int) -> list[dict[str, Any]]:
        """The notes on merge request ``iid`` (any project), oldest first."""
        with self.lock:
            return [dict(n) for n in self.notes if n["iid"] == iid]

    # ------------------------------------------------------------------ environments

    def _route_environments(
        self, method: str, rest: list[str], project_id: int, params: dict[str, Any], raw_path: str
    ) -> _Response:
        """List (``name``/``search``), create, get, edit ``external_url``, and ``POST .../stop``."""
        if len(rest) == 1:
            if method == "GET":
                with self.lock:
                    items = [
                        self._environment_entity(eid, name)
                        for (pid, name), eid in self.environments.items()
                        if pid == project_id
                        and (not params.get("name") or name == params["name"])
                        and (not params.get("search") or str(params["search"]) in name)
                    ]
                return self._paginate(sorted(items, key=lambda e: e["id"]), params, raw_path)
            if method == "POST":
                name = params.get("name")
                if not isinstance(name, str) or not name:
                    raise _HttpError(400, {"error": "name is missing"})
                with self.lock:
                    if (project_id, name) in self.environments:
                        raise _message(400, {"name": ["has already been taken"]})
                    eid = self.environments[(project_id, name)] = self._new_id()
                    self.environment_details[eid] = {
                        "external_url": params.get("external_url"),
                        "state": "available",
                    }
                    return _json_response(201, self._environment_entity(eid, name))
            return _json_response(405, {"error": "405 Not Allowed"})
        try:
            eid = int(unquote(rest[1]))
        except ValueError as exc:
            raise _HttpError(400, {"error": "environment_id is invalid"}) from exc
        with self.lock:
            names = [
                name for (pid, name), known in self.environments.items() if (pid, known) == (project_id, eid)
            ]
        if not names:
            raise _message(404, "404 Environment Not Found")
        details = self.environment_details.setdefault(eid, {"external_url": None, "state": "available"})
        if len(rest) == 3 and rest[2] == "stop" and method == "POST":
            with self.lock:
                details["state"] = "stopped"
            return _json_response(200, self._environment_entity(eid, names[0]))
        if len(rest) == 2 and method == "GET":
            return _json_response(200, self._environment_entity(eid, names[0]))
        if len(rest) == 2 and method == "PUT":
            with self.lock:
                if "external_url" in params:
                    details["external_url"] = params["external_url"]
            return _json_response(200, self._environment_entity(eid, names[0]))
        return _json_response(405, {"error": "405 Not Allowed"})

    def _environment_entity(self, eid: int, name: str) -> dict[str, Any]:
        details = self.environment_details.get(eid, {"external_url": None, "state": "available"})
        return {
            "id": eid,
            "name": name,
            "slug": re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"),
            "external_url": details["external_url"],
            "state": details["state"],
            "tier": "development" if name.startswith("review/") else "other",
        }

    def environment(self, name: str) -> dict[str, Any] | None:
        """The environment called ``name`` (any project), as the API shows it, or None."""
        with self.lock:
            for (_pid, known), eid in self.environments.items():
                if known == name:
                    return self._environment_entity(eid, known)
        return None

    def _route_collection(
        self,
        method: str,
        rest: list[str],
        project_id: int,
        project_path: str,
        params: dict[str, Any],
        raw_path: str,
    ) -> _Response:
        kind = rest[0]
        store = {"hooks": self.hooks, "badges": self.badges, "deployments": self.deployments}[kind]
        if len(rest) == 1:
            if method == "GET":
                with self.lock:
                    items = [self._present(kind, x) for x in store if x["project_id"] == project_id]
                if kind == "deployments":
                    items = self._filter_deployments(items, params)
                return self._paginate(items, params, raw_path)
            if method == "POST":
                create = {"hooks": self._create_hook, "badges": self._create_badge}.get(
                    kind, self._create_deployment
                )
                return _json_response(201, create(project_id, project_path, params))
        if len(rest) == 2:
            try:
                item_id = int(unquote(rest[1]))
            except ValueError as exc:
                raise _HttpError(400, {"error": f"{kind[:-1]}_id is invalid"}) from exc
            item = self._find_item(store, project_id, item_id, kind)
            allowed = {"hooks": ("GET", "PUT", "DELETE"), "badges": ("GET", "PUT", "DELETE")}.get(
                kind, ("GET", "PUT")
            )
            if method not in allowed:
                return _json_response(405, {"error": "405 Not Allowed"})
            if method == "GET":
                return _json_response(200, self._present(kind, item))
            if method == "DELETE":
                with self.lock:
                    store.remove(item)
                return _Response(204)
            update = {"hooks": self._update_hook, "badges": self._update_badge}.get(
                kind, self._update_deployment
            )
            return _json_response(200, update(item, params))
        return _json_response(404, {"error": "404 Not Found"})

    def _find_item(
        self, store: list[dict[str, Any]], project_id: int, item_id: int, kind: str
    ) -> dict[str, Any]:
        with self.lock:
            for item in store:
                if item["project_id"] == project_id and item["id"] == item_id:
                    return item
        raise _message(404, "404 Badge Not Found" if kind == "badges" else "404 Not found")

    def _present(self, kind: str, item: dict[str, Any]) -> dict[str, Any]:
        if kind == "hooks":
            return self._hook_entity(item)
        if kind == "badges":
            return self._badge_entity(item)
        return self._deployment_entity(item)

    def _paginate(self, items: list[dict[str, Any]], params: dict[str, Any], raw_path: str) -> _Response:
        """Offset pagination with X-* and Link headers, as python-gitlab's GitlabList expects."""
        try:
            per_page = min(max(int(params.get("per_page", 20)), 1), 100)
            page = max(int(params.get("page", 1)), 1)
        except (TypeError, ValueError) as exc:
            raise _HttpError(400, {"error": "page is invalid"}) from exc
        total = len(items)
        total_pages = max(math.ceil(total / per_page), 1)
        chunk = items[(page - 1) * per_page : page * per_page]

        def link(p: int) -> str:
            keep = {k: v for k, v in params.items() if k not in ("page", "per_page") and isinstance(v, str)}
            return f"{self.url}{raw_path}?{urlencode({**keep, 'page': p, 'per_page': per_page})}"

        links = []
        if page < total_pages:
            links.append(f'<{link(page + 1)}>; rel="next"')
        if page > 1:
            links.append(f'<{link(page - 1)}>; rel="prev"')
        links += [f'<{link(1)}>; rel="first"', f'<{link(total_pages)}>; rel="last"']
        headers = {
            "X-Total": str(total),
            "X-Total-Pages": str(total_pages),
            "X-Per-Page": str(per_page),
            "X-Page": str(page),
            "X-Next-Page": str(page + 1) if page < total_pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
            "Link": ", ".join(links),
        }
        return _json_response(200, chunk, headers)

    # ------------------------------------------------------------------ projects, users, branches

    def _find_project(self, given: str) -> tuple[int, str]:
        """Resolve a numeric id or a (decoded) path_with_namespace; GitLab paths match case-insensitively."""
        with self.lock:
            if given.isdigit():
                for path, pid in self.projects.items():
                    if pid == int(given):
                        return pid, path
            for path, pid in self.projects.items():
                if path.lower() == given.lower():
                    return pid, path
        raise _message(404, "404 Project Not Found")

    def rename_project(self, old: str, new: str) -> None:
        """Rename or move a project as GitLab does: its id stays, its old path becomes a redirect route."""
        with self.lock:
            project_id = self.projects.pop(old)
            self.projects[new] = project_id
            self._redirect_routes[old.lower()] = project_id

    def _moved_project(
        self, method: str, given: str, raw_path: str, params: dict[str, Any]
    ) -> _Response | None:
        """An old path of a renamed project: GET is answered 301 to the same URL with the id, the rest 405.

        As API::Helpers#find_project! does: the lookup follows redirect routes (case-insensitively)
        unless a project has that path now, then ``project_moved?`` redirects GETs and refuses others.
        """
        with self.lock:
            if given.isdigit() or any(path.lower() == given.lower() for path in self.projects):
                return None
            project_id = self._redirect_routes.get(given.lower())
        if project_id is None:
            return None
        if method != "GET":
            return _json_response(405, {"message": "Non GET methods are not allowed for moved projects"})
        rest = raw_path[len(API_PREFIX) + 1 :].split("/", 2)[2:]
        location = "/".join([f"{self.url}{API_PREFIX}/projects/{project_id}", *rest])
        query = {k: v for k, v in params.items() if isinstance(v, str)}
        if query:
            location += "?" + urlencode(query)
        moved = f"This resource has been moved permanently to {location}"
        return _Response(301, moved.encode(), {"Location": location, "Content-Type": "application/json"})

    def _user(self) -> dict[str, Any]:
        return {
            "id": 1,
            "username": "pushdeploy-bot",
            "name": "pushdeploy bot",
            "state": "active",
            "locked": False,
            "avatar_url": None,
            "web_url": f"{self.url}/pushdeploy-bot",
        }

    def _project_entity(self, project_id: int, path: str) -> dict[str, Any]:
        namespace, _, name = path.rpartition("/")
        return {
            "id": project_id,
            "name": name,
            "path": name,
            "path_with_namespace": path,
            "name_with_namespace": f"{namespace} / {name}" if namespace else name,
            "namespace": {"name": namespace, "path": namespace, "full_path": namespace, "kind": "group"},
            "default_branch": "main",
            "visibility": "private",
            "web_url": f"{self.url}/{path}",
            "http_url_to_repo": f"{self.url}/{path}.git",
            "ssh_url_to_repo": f"git@{self._host}:{path}.git",
            "description": None,
            "archived": False,
        }

    def _get_branch(self, project_id: int, project_path: str, branch: str) -> _Response:
        with self.lock:
            sha = self.branch_heads.get(branch)
        if sha is None:
            raise _message(404, "404 Branch Not Found")
        return _json_response(
            200,
            {
                "name": branch,
                "commit": {"id": sha, "short_id": sha[:8], "title": "", "message": "", "parent_ids": []},
                "merged": False,
                "protected": branch == "main",
                "default": branch == "main",
                "developers_can_push": False,
                "developers_can_merge": False,
                "can_push": True,
                "web_url": f"{self.url}/{project_path}/-/tree/{branch}",
            },
        )

    # ------------------------------------------------------------------ commits and refs

    def _knows_commit(self, sha: str) -> bool:
        """GitLab's ``project.commit(sha)``: a registered commit, a branch head, or in a repository."""
        if not SHA_RE.fullmatch(sha):
            return False
        with self.lock:
            if sha in self._commits or sha in self.branch_heads.values() or sha in self._tags.values():
                return True
            if sha in self._found_in_repositories:
                return True
            repositories = list(self._repositories)
        if not any(_git(repo, "cat-file", "-e", f"{sha}^{{commit}}") is not None for repo in repositories):
            return False
        with self.lock:
            self._found_in_repositories.add(sha)  # a commit stays a commit: ask git once
        return True

    def _branches_containing(self, sha: str) -> list[str]:
        """``repository.branch_names_contains(sha)``: registered branches first, then the repositories'."""
        with self.lock:
            names = list(self._commits.get(sha, []))
            names += [b for b, head in self.branch_heads.items() if head == sha and b not in names]
            repositories = list(self._repositories)
        for repo in repositories:
            listed = _git(
                repo, "for-each-ref", f"--contains={sha}", "--format=%(refname:lstrip=2)", "refs/heads/"
            )
            names += [b for b in (listed or "").splitlines() if b and b not in names]
        return names

    def _resolves(self, ref: str) -> bool:
        """``project.commit(ref)`` for a branch or tag name: does it name a commit?"""
        with self.lock:
            known = (
                ref in self.branch_heads
                or ref in self._tags
                or any(ref in branches for branches in self._commits.values())
            )
            repositories = list(self._repositories)
        return known or any(
            _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}") is not None
            for repo in repositories
        )

    # ------------------------------------------------------------------ commit statuses

    def _new_pipeline(self, project_id: int, sha: str, ref: str, source: str) -> dict[str, Any]:
        pipeline = {
            "id": self._new_id(),
            "project_id": project_id,
            "sha": sha,
            "ref": ref,
            "source": source,
            "created_at": _now(),
        }
        with self.lock:
            self._pipelines.append(pipeline)
        return pipeline

    def _matching_pipeline(
        self, project_id: int, sha: str, ref: str | None, pipeline_id: int | None
    ) -> dict[str, Any] | None:
        """``first_matching_pipeline``: the newest pipeline of sha (and ref, and id when given)."""
        pipeline: dict[str, Any]
        with self.lock:
            for pipeline in reversed(self._pipelines):
                if (
                    pipeline["project_id"] == project_id
                    and pipeline["sha"] == sha
                    and (ref is None or pipeline["ref"] == ref)
                    and (pipeline_id is None or pipeline["id"] == pipeline_id)
                ):
                    return pipeline
        return None

    def _post_status(
        self, given: str, project_id: int, project_path: str, sha: str, params: dict[str, Any]
    ) -> _Response:
        """POST /projects/:id/statuses/:sha in the order Ci::CreateCommitStatusService checks it.

        Commit, then ref, then ``pipeline_id``; the newest matching pipeline (or a new external
        one); the ``update_pipeline`` permission; the status record's validation; the state machine.
        """
        state = params.get("state")
        if state is None or state == "":
            raise _HttpError(400, {"error": "state is missing, state does not have a valid value"})
        if state not in STATUS_STATES:
            raise _HttpError(400, {"error": "state does not have a valid value"})
        pipeline_id = _integer(params, "pipeline_id")
        if not self._knows_commit(sha):
            raise _message(404, "404 Commit Not Found")
        name = str(params.get("name") or params.get("context") or "default")
        given_ref = None if params.get("ref") is None else str(params["ref"])
        branches = self._branches_containing(sha) if given_ref is None else []
        with self.lock:  # GitLab holds a lock per (project, sha) here: one new pipeline, not two
            matching = self._matching_pipeline(project_id, sha, given_ref, pipeline_id)
            ref = given_ref if given_ref is not None else matching["ref"] if matching else None
            ref = ref if ref is not None else next(iter(branches), None)
            if not ref:
                raise _message(404, "404 References for commit Not Found")
            if pipeline_id is not None and matching is None:
                raise _message(404, "404 Pipeline for pipeline_id, sha and ref Not Found")
            pipeline = matching or self._new_pipeline(project_id, sha, ref, "external")
            if ref in self.protected_refs:
                raise _message(403, "403 Forbidden")  # no update_pipeline on a protected ref
            target_url = params.get("target_url") or None  # Grape's attributes_for_keys drops blanks
            problems = _target_url_problems(str(target_url)) if target_url is not None else []
            if problems:
                raise _message(400, {"target_url": problems})
            entity = self._apply_status(given, project_id, project_path, pipeline, name, params)
        return _json_response(201, entity)

    def _apply_status(
        self,
        given: str,
        project_id: int,
        project_path: str,
        pipeline: dict[str, Any],
        name: str,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        """Find the pipeline's running or pending status of this name or start one; fire the event.

        A new status of a name marks the pipeline's older ones of that name retried, so the list
        shows the latest per (name, pipeline).
        """
        state = str(params["state"])
        event = STATE_EVENT[state]
        now = _now()
        with self.lock:
            record = next(
                (
                    r
                    for r in reversed(self._records)
                    if r["pipeline_id"] == pipeline["id"]
                    and r["name"] == name
                    and r["status"] in ACTIVE_STATES
                ),
                None,
            )
            current = record["status"] if record else "created"
            if current not in EVENT_ALLOWED_FROM[event]:
                raise _message(
                    400,
                    f"Cannot transition status via :{event} from :{current} "
                    f'(Reason(s): Status cannot transition via "{event}")',
                )
            created = record is None
            if record is None:
                record = {
                    "id": self._new_id(),
                    "project_id": project_id,
                    "sha": pipeline["sha"],
                    "ref": pipeline["ref"],
                    "name": name,
                    "status": "created",
                    "target_url": None,
                    "description": None,
                    "coverage": None,
                    "created_at": now,
                    "started_at": None,
                    "finished_at": None,
                    "pipeline_id": pipeline["id"],
                    "retried": False,
                }
                self._records.append(record)
            for key in ("target_url", "description"):
                if params.get(key):
                    record[key] = str(params[key])
            if params.get("coverage") is not None:
                record["coverage"] = float(params["coverage"])
            record["status"] = state
            if state == "running" and record["started_at"] is None:
                record["started_at"] = now
            if state in TERMINAL_STATES:
                record["finished_at"] = now
            for older in self._records:
                if older is not record and older["pipeline_id"] == pipeline["id"] and older["name"] == name:
                    older["retried"] = True
            self._accepted.append(
                {
                    "state": state,
                    "sha": pipeline["sha"],
                    "ref": pipeline["ref"],
                    "name": name,
                    "target_url": record["target_url"],
                    "description": record["description"],
                    "coverage": record["coverage"],
                    "project": given,
                    "project_id": project_id,
                    "project_path": project_path,
                    "status_id": record["id"],
                    "pipeline_id": pipeline["id"],
                    "new_record": created,
                    "params": dict(params),
                }
            )
            return self._status_entity(record)

    def _status_entity(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": record["id"],
            "sha": record["sha"],
            "ref": record["ref"],
            "status": record["status"],
            "name": record["name"],
            "target_url": record["target_url"],
            "description": record["description"],
            "created_at": record["created_at"],
            "started_at": record["started_at"],
            "finished_at": record["finished_at"],
            "allow_failure": False,
            "coverage": record["coverage"],
            "pipeline_id": record["pipeline_id"],
            "author": self._user(),
        }

    def _list_statuses(self, project_id: int, sha: str, params: dict[str, Any], raw_path: str) -> _Response:
        """GET .../commits/:sha/statuses: the latest per (name, pipeline) unless all=true."""
        if not self._knows_commit(sha):
            raise _message(404, "404 Commit Not Found")
        pipeline_id = _integer(params, "pipeline_id")
        with self.lock:
            rows = [
                r
                for r in self._records
                if r["project_id"] == project_id
                and r["sha"] == sha
                and (pipeline_id is None or r["pipeline_id"] == pipeline_id)
            ]
        if not _as_bool(params.get("all", False)):
            rows = [r for r in rows if not r["retried"]]
        if params.get("ref"):
            rows = [r for r in rows if r["ref"] == params["ref"]]
        if params.get("name"):
            rows = [r for r in rows if r["name"] == params["name"]]
        order = params.get("order_by") or "id"
        if order not in ("id", "pipeline_id"):
            raise _HttpError(400, {"error": "order_by does not have a valid value"})
        rows.sort(key=lambda r: (r[order], r["id"]), reverse=params.get("sort") == "desc")
        return self._paginate([self._status_entity(r) for r in rows], params, raw_path)

    # ------------------------------------------------------------------ hooks

    allow_local_requests_from_web_hooks_and_services: bool = False
    """GitLab's admin setting, off by default: a hook URL on localhost or a private network is refused
    (422 "Invalid url given") unless a test turns this on."""
    signing_support: SigningSupport = "enabled"
    """What this GitLab does with a hook's ``signing_token`` (see :data:`SigningSupport`)."""

    def _hook_values(self, params: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        """The declared parameters, typed as Grape types them (400 for a value of the wrong type)."""
        if creating and not params.get("url"):
            raise _HttpError(400, {"error": "url is missing"})
        if self.signing_support != "enabled":
            params = {k: v for k, v in params.items() if k != "signing_token"}
        values: dict[str, Any] = {}
        for key in HOOK_BOOL_FIELDS:
            if key in params:
                value = _as_bool(params[key])
                if value is None:
                    raise _HttpError(400, {"error": f"{key} is invalid"})
                values[key] = value
        for key in HOOK_TEXT_FIELDS:
            if key in params:
                values[key] = None if params[key] is None else str(params[key])
        strategy = values.get("branch_filter_strategy")
        if strategy is not None and strategy not in BRANCH_FILTER_STRATEGIES:
            raise _HttpError(400, {"error": "branch_filter_strategy does not have a valid value"})
        if "signing_token" in values:
            # "" (or null) removes it, as it does the secret token: the format applies to a value only.
            values["signing_token"] = values["signing_token"] or None
            if values["signing_token"] and not _valid_signing_token(values["signing_token"]):
                raise _message(
                    422, {"signing_token": ["must be in whsec_<base64> format encoding a 32-byte key"]}
                )
        return values

    def _validate_hook(self, hook: dict[str, Any]) -> None:
        """The model's validations of the whole record, answered as the API answers them."""
        hook["url"] = (hook["url"] or "").strip()
        if hook["branch_filter_strategy"] == "all_branches":
            hook["push_events_branch_filter"] = None
        elif hook["branch_filter_strategy"] == "wildcard" and hook["push_events_branch_filter"]:
            hook["push_events_branch_filter"] = " ".join(hook["push_events_branch_filter"].split())
        blocked = None if self.allow_local_requests_from_web_hooks_and_services else _url_blocked(hook["url"])
        if not URL_RE.fullmatch(hook["url"]) or blocked:
            # The model says "Url is blocked: <why>"; the API replaces any url error with this.
            raise _message(422, "Invalid url given")
        if _branch_filter_error(hook["branch_filter_strategy"], hook["push_events_branch_filter"]):
            raise _message(422, "Invalid branch filter given")

    def _create_hook(self, project_id: int, project_path: str, params: dict[str, Any]) -> dict[str, Any]:
        values = self._hook_values(params, creating=True)
        hook: dict[str, Any] = {
            "id": self._new_id(),
            "project_id": project_id,
            "url": None,
            "name": None,
            "description": None,
            "created_at": _now(),
            **HOOK_EVENT_DEFAULTS,
            "enable_ssl_verification": True,
            "push_events_branch_filter": None,
            "branch_filter_strategy": "wildcard",
            "custom_webhook_template": None,
            "token": None,
            "signing_token": None,
        }
        hook.update(values)
        self._validate_hook(hook)
        with self.lock:
            self.hooks.append(hook)
            return self._hook_entity(hook)

    def _update_hook(self, hook: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        values = self._hook_values(params, creating=False)
        if not values:
            raise _message(400, "No parameters provided")
        with self.lock:
            updated = {**hook, **values}
            if updated["url"] != hook["url"] and "token" not in values:
                updated["token"] = None  # WebHooks::Hook#reset_token: a new URL drops the old secret token
            self._validate_hook(updated)
            hook.update(updated)
            return self._hook_entity(hook)

    def _hook_entity(self, hook: dict[str, Any]) -> dict[str, Any]:
        """Secrets are never returned; 19.0+ reports token_present and signing_token_present instead."""
        entity = {k: v for k, v in hook.items() if k not in ("token", "signing_token")}
        entity.update(
            {"alert_status": "executable", "disabled_until": None, "url_variables": [], "custom_headers": []}
        )
        if self.signing_support != "unsupported":
            entity["token_present"] = bool(hook.get("token"))
            entity["signing_token_present"] = bool(hook.get("signing_token"))
        return entity

    # ------------------------------------------------------------------ badges

    def _create_badge(self, project_id: int, project_path: str, params: dict[str, Any]) -> dict[str, Any]:
        missing = [f"{k} is missing" for k in ("link_url", "image_url") if not params.get(k)]
        if missing:
            raise _HttpError(400, {"error": ", ".join(missing)})
        badge = {
            "id": self._new_id(),
            "project_id": project_id,
            "project_path": project_path,
            "name": params.get("name"),
            "link_url": str(params["link_url"]),
            "image_url": str(params["image_url"]),
        }
        with self.lock:
            self.badges.append(badge)
            return self._badge_entity(badge)

    def _update_badge(self, badge: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            for key in ("name", "link_url", "image_url"):
                if key in params:
                    badge[key] = params[key]
            return self._badge_entity(badge)

    def _badge_entity(self, badge: dict[str, Any]) -> dict[str, Any]:
        path = str(badge["project_path"])
        with self.lock:
            head = self.branch_heads.get("main", "")
        placeholders = {
            "%{project_path}": path,
            "%{project_title}": path.rpartition("/")[2],
            "%{project_name}": path.rpartition("/")[2],
            "%{project_id}": str(badge["project_id"]),
            "%{project_namespace}": path.rpartition("/")[0],
            "%{group_name}": path.partition("/")[0],
            "%{gitlab_server}": f"{self._host}:{self.port}",
            "%{gitlab_pages_domain}": "pages.example.com",
            "%{default_branch}": "main",
            "%{commit_sha}": head,
            "%{latest_tag}": "",
        }

        def render(text: str) -> str:
            for key, value in placeholders.items():
                text = text.replace(key, value)
            return text

        return {
            "id": badge["id"],
            "name": badge["name"],
            "link_url": badge["link_url"],
            "image_url": badge["image_url"],
            "rendered_link_url": render(badge["link_url"]),
            "rendered_image_url": render(badge["image_url"]),
            "kind": "project",
        }

    # ------------------------------------------------------------------ deployments

    def _create_deployment(
        self, project_id: int, project_path: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        missing = [
            f"{k} is missing"
            for k in ("environment", "sha", "ref", "tag", "status")
            if params.get(k) in (None, "")
        ]
        if missing:
            raise _HttpError(400, {"error": ", ".join(missing)})
        tag = _as_bool(params["tag"])
        if tag is None:
            raise _HttpError(400, {"error": "tag is invalid"})
        if params["status"] not in DEPLOYMENT_STATUSES:
            raise _HttpError(400, {"error": "status does not have a valid value"})
        if not self._resolves(str(params["ref"])):
            raise _message(400, {"ref": ["The branch or tag does not exist"]})
        if not self._knows_commit(str(params["sha"])):
            raise _message(400, {"sha": ["The commit does not exist"]})
        now = _now()
        env_name = str(params["environment"])
        with self.lock:
            env_id = self.environments.setdefault((project_id, env_name), self._new_id())
            details = self.environment_details.setdefault(
                env_id, {"external_url": None, "state": "available"}
            )
            details["state"] = "available"  # a deployment starts a stopped environment again
            iid = 1 + sum(1 for d in self.deployments if d["project_id"] == project_id)
            deployment = {
                "id": self._new_id(),
                "iid": iid,
                "project_id": project_id,
                "environment": env_name,
                "environment_id": env_id,
                "sha": str(params["sha"]),
                "ref": str(params["ref"]),
                "tag": tag,
                "status": str(params["status"]),
                "created_at": now,
                "updated_at": now,
                "finished_at": now if params["status"] != "running" else None,
                "history": [str(params["status"])],
            }
            self.deployments.append(deployment)
            return self._deployment_entity(deployment)

    def _update_deployment(self, deployment: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """PUT a status: the Deployment state machine's event, or its 400 naming the event refused."""
        status = params.get("status")
        if status in (None, ""):
            raise _HttpError(400, {"error": "status is missing"})
        if status not in DEPLOYMENT_STATUSES:
            raise _HttpError(400, {"error": "status does not have a valid value"})
        event = DEPLOYMENT_EVENT[status]
        now = _now()
        with self.lock:
            allowed = (
                deployment["status"] in ("created", "blocked")
                if event == "run"
                else deployment["status"] != status
            )
            if not allowed:
                raise _message(400, {"status": [f'cannot transition via "{event}"']})
            deployment["status"] = status
            deployment["updated_at"] = now
            deployment["finished_at"] = now if status != "running" else None
            deployment["history"].append(status)
            return self._deployment_entity(deployment)

    @staticmethod
    def _filter_deployments(items: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
        """DeploymentsFinder's filters and order: environment, status, order_by and sort."""
        order = params.get("order_by") or "id"
        direction = params.get("sort") or "asc"
        if order not in DEPLOYMENT_SORTS:
            raise _HttpError(400, {"error": "order_by does not have a valid value"})
        if direction not in ("asc", "desc"):
            raise _HttpError(400, {"error": "sort does not have a valid value"})
        if params.get("status") and params["status"] not in DEPLOYMENT_STATES:
            raise _HttpError(400, {"error": "status does not have a valid value"})
        if params.get("environment"):
            items = [d for d in items if d["environment"]["name"] == params["environment"]]
        if params.get("status"):
            items = [d for d in items if d["status"] == params["status"]]
        order = "id" if order in ("iid", "created_at") else order  # the same order, as GitLab notes
        return sorted(items, key=lambda d: (d.get(order) or "", d["id"]), reverse=direction == "desc")

    def _deployment_entity(self, deployment: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": deployment["id"],
            "iid": deployment["iid"],
            "ref": deployment["ref"],
            "sha": deployment["sha"],
            "status": deployment["status"],
            "created_at": deployment["created_at"],
            "updated_at": deployment["updated_at"],
            "finished_at": deployment["finished_at"],
            "user": self._user(),
            "environment": {
                "id": deployment["environment_id"],
                "name": deployment["environment"],
                "external_url": self.environment_details.get(deployment["environment_id"], {}).get(
                    "external_url"
                ),
            },
            "deployable": None,
        }
