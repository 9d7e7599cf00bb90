"""A secret canary sweep: unique canary tokens in the config, many failure paths, then a search.

Configured canaries: the project's secret_token and signing_token, the GitLab token and the admin
token (those two ``fernet:``-encrypted, so the Fernet key is a canary too), another project's
secret token, a password inside a second project's ``repo_url`` whose fetch fails, and the path of
the notification URLs every event of the first project is sent to (one refuses its first two sends,
the other every send, so messages wait in Redis with their problem at the search). The run goes
through bad deliveries (signature, token, size, type, JSON, project), a success, a failing build, a
timeout, a failed health check, a failed fetch, a cancel, a killed work-horse, a rollback, a manual
deploy, GitLab answering 401/403/404, the pages and the CLI. Meanwhile every process below gunicorn
and the workers is sampled (/proc/PID/cmdline and environ), and each build step dumps its own.

Then the search: every Redis key and value (all types; RQ's zlib-compressed pickles decompressed),
the gunicorn and worker logs, the deployment logs, every response body, every notification the chat
received, ``notify test``'s output, the mirrors' config, every
file under data_dir, the steps' dumps: zero hits of any canary, raw, URL-encoded or base64.
Allowed, because that is where they are configured: the Fernet key in the environment of gunicorn
and the workers, and the repo_url (with its password) in the environment of the git processes
that fetch it (private to the user, unlike a command line).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import requests
from cryptography.fernet import Fernet
from redis import Redis

from tests.chat import ChatReceiver
from tests.e2e.conftest import ROOT, Stack
from tests.e2e.processes import children, cmdline_of, environ_of, pids
from tests.faults.harness import TERMINAL, record, record_figures, state, wait_state
from tests.helpers import GitRepo, project_config, push_body, sign_in_session, signed_headers
from workers.config import NotifyEvent
from workers.secrets import Keyring

pytestmark = [pytest.mark.fault, pytest.mark.e2e]

REMOTE_HELPER_BUG = (
    "git hands the remote URL to its remote helper on the command line (`git-remote-https origin "
    "URL`), readable by any local user: repo_url credentials must travel as a header through "
    "GIT_CONFIG_*, never inside that URL"
)


def forms(value: str) -> set[bytes]:
    raw = value.encode()
    found = {
        raw,
        quote(value, safe="").encode(),
        quote_plus(value).encode(),
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
    }
    return {f for f in found if len(f) >= 8}


class Canaries:
    def __init__(self) -> None:
        run = secrets.token_hex(5)
        signing_raw = f"sgnkey-{run}-canary".ljust(32, "k")
        self.plain = {
            "secret_token": f"hooksecret-{run}-canary",
            "signing_token": "whsec_" + base64.b64encode(signing_raw.encode()).decode(),
            "signing_key_bytes": signing_raw,
            "gitlab_token": f"glpat-{run}-canary",
            "admin_token": f"admintok-{run}-canary",
            "metrics_token": f"metricstok-{run}-canary",
            "other_secret_token": f"othersecret-{run}-canary",
            "repo_password": f"repopw-{run}-canary",
            "notify_path": f"chathook-{run}-canary",
            "fernet_key": Fernet.generate_key().decode(),
        }
        self.plain["repo_basic_auth"] = f"deploy:{self.plain['repo_password']}"
        self.forms = {name: forms(value) for name, value in self.plain.items()}
        self.keyring = Keyring([self.plain["fernet_key"]])

    def encrypted(self, name: str) -> str:
        return self.keyring.encrypt(self.plain[name])

    def find(self, data: bytes) -> set[str]:
        return {name for name, found in self.forms.items() if any(f in data for f in found)}


class Tarpit(threading.Thread):
    """A loopback TCP server that holds each connection for ``hold`` seconds, then closes it."""

    def __init__(self, hold: float = 2.0) -> None:
        super().__init__(name="tarpit", daemon=True)
        self.hold = hold
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.accepted = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        self.stopping.wait(self.hold)
        with contextlib.suppress(OSError):
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        self.sock.close()


class Sampler(threading.Thread):
    """Samples cmdline and environ of every process below the stack's processes, until stopped."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        super().__init__(name="proc-sampler", daemon=True)
        self.roots = roots
        self.seen: dict[tuple[int, bytes], bytes] = {}  # (pid, cmdline) -> environ
        self.rounds = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.02):
            self.rounds += 1
            parent: dict[int, int] = {}
            for pid in pids():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    parent[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            tree = set(self.roots())
            grew = True
            while grew:
                below = {pid for pid, ppid in parent.items() if ppid in tree and pid not in tree}
                tree |= below
                grew = bool(below)
            for pid in tree:
                cmdline = cmdline_of(pid)
                if cmdline and (pid, cmdline) not in self.seen:
                    self.seen[(pid, cmdline)] = environ_of(pid)


def redis_haystack(redis: Redis) -> Iterator[tuple[str, bytes]]:
    """Every key and value of the database; compressed values (RQ's job data) also decompressed."""
    for raw_key in redis.scan_iter(count=1000):
        key = raw_key.decode("utf-8", "replace")
        kind = redis.type(raw_key).decode()
        values: list[bytes] = [raw_key]
        if kind == "string":
            values.append(redis.get(raw_key) or b"")
        elif kind == "hash":
            for field, value in redis.hgetall(raw_key).items():
                values += [field, value]
        elif kind == "list":
            values += redis.lrange(raw_key, 0, -1)
        elif kind == "set":
            values += list(redis.smembers(raw_key))
        elif kind == "zset":
            values += [member for member, _score in redis.zrange(raw_key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _id, fields in redis.xrange(raw_key):
                for field, value in fields.items():
                    values += [field, value]
        for value in values:
            yield f"redis {kind} {key}", value
            with contextlib.suppress(zlib.error):
                yield f"redis {kind} {key} (decompressed)", zlib.decompress(value)


def files(root: Path, limit: int = 20 * 1024 * 1024) -> Iterator[tuple[str, bytes]]:
    if not root.exists():
        return
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= limit:
            with contextlib.suppress(OSError):
                yield str(path), path.read_bytes()


def test_no_configured_secret_leaks_anywhere(
    fault_stack: Callable[..., Stack], redis: Redis, git_repo: GitRepo, tmp_path: Path
) -> None:
    canaries = Canaries()
    c = canaries.plain
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    tarpit = Tarpit(hold=2.0)
    tarpit.start()
    chat = ChatReceiver()  # every event notified, to URLs whose path is a canary
    chat.fail_next(2)
    refusing = ChatReceiver()  # its messages stay pending, with their problem, until the search
    refusing.fail_next(1_000_000)
    dump = (
        f"cat /proc/$$/environ > {dumps}/environ-$PUSHDEPLOY_DEPLOYMENT_ID-$$; "
        f"cat /proc/$$/cmdline > {dumps}/cmdline-$PUSHDEPLOY_DEPLOYMENT_ID-$$; "
        f"env > {dumps}/env-$PUSHDEPLOY_DEPLOYMENT_ID-$$; sh -c 'cat /proc/$$/environ' > "
        f"{dumps}/child-$PUSHDEPLOY_DEPLOYMENT_ID-$$; env; echo $PUSHDEPLOY_SHA; sleep 0.3"
    )
    projects = {
        "sample-app": project_config(
            git_repo.url,
            secret_token=c["secret_token"],
            signing_token=c["signing_token"],
            environment=None,
            branch=None,
            build=[dump, "echo built"],
            deploy=[dump],
            timeout=30,
            notify={
                "urls": [chat.url(c["notify_path"]), refusing.url(c["notify_path"])],
                "on": [str(e) for e in NotifyEvent],
            },
            environments={
                "production": {"branch": "main"},
                "failing": {"branch": "failing", "build": [dump, "env; echo failing now >&2; exit 3"]},
                "slow": {"branch": "slow", "build": [dump, "sleep 30"], "timeout": 4},
                "unhealthy": {
                    "branch": "unhealthy",
                    "health_check": {"url": "http://127.0.0.1:9/health", "timeout": 2},
                },
            },
        ),
        "leaky": project_config(
            f"https://deploy:{c['repo_password']}@127.0.0.1:{tarpit.port}/x.git",
            secret_token=c["other_secret_token"],
            signing_token=None,
            build=[dump],
        ),
    }
    stack: Stack = fault_stack(
        projects=projects,
        # A small body limit: the sweep sends one body over it, and 25 MiB of spaces would be waste.
        server={
            "admin_token": canaries.encrypted("admin_token"),
            "metrics_token": canaries.encrypted("metrics_token"),
            "max_body_bytes": 1024 * 1024,
        },
        gitlab_config={"token": canaries.encrypted("gitlab_token")},
        extra_env={"PUSHDEPLOY_SECRET_KEYS": c["fernet_key"]},
    )
    stack.gitlab.token = c["gitlab_token"]
    responses: list[tuple[str, bytes]] = []
    session = requests.Session()

    def keep(what: str, answer: requests.Response) -> requests.Response:
        responses.append((what, answer.content + str(dict(answer.headers)).encode()))
        return answer

    def deliver(project: str, body: bytes, **headers: object) -> requests.Response:
        sent = {**signed_headers(body, signing_token=c["signing_token"], secret_token=c["secret_token"])}
        sent.update({k.replace("_", "-"): str(v) for k, v in headers.items() if v is not None})
        for name, value in headers.items():
            if value is None:
                sent.pop(name.replace("_", "-"), None)
        return keep(
            f"POST {project}",
            session.post(f"{stack.base_url}/hooks/gitlab/{project}", data=body, headers=sent),
        )

    def api(method: str, path: str, token: str = c["admin_token"], **kwargs: object) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"}
        answer = session.request(
            method, f"{stack.base_url}/api/v1{path}", headers=headers, timeout=10, **kwargs
        )  # type: ignore[arg-type]
        return keep(f"{method} {path}", answer)

    def push(branch: str, project: str = "sample-app", **headers: object) -> str:
        sha = git_repo.commit({"app.txt": f"{branch} {time.time()}\n"}, f"{branch}", branch=branch)
        answer = deliver(project, push_body(sha, branch=branch), **headers)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["deployment"])

    sampler = Sampler(lambda: [p.pid for p in stack.processes.values()])
    deployments: list[str] = []
    try:
        stack.start_web()
        stack.start_worker("worker-1")
        stack.start_worker("worker-2")
        sampler.start()
        head = git_repo.commit({"app.txt": "head\n"}, "head")
        body = push_body(head)

        # Refused deliveries: every way in that ends in an error body.
        other_key = "whsec_" + base64.b64encode(b"x" * 32).decode()
        forged = signed_headers(body, signing_token=other_key, secret_token=c["secret_token"])
        keep(
            "forged signature",
            session.post(f"{stack.base_url}/hooks/gitlab/sample-app", data=body, headers=forged),
        )
        for what, headers in {
            "wrong token": {"X_Gitlab_Token": "not-the-token"},
            "no token": {"X_Gitlab_Token": None},
            "no signature": {"webhook_signature": None},
            "stale": {"webhook_timestamp": "1000000000"},
            "content type": {"Content_Type": "text/plain"},
        }.items():
            assert deliver("sample-app", body, **headers).status_code in (401, 415), what
        assert deliver("sample-app", b"{not json").status_code == 400
        assert (
            deliver(
                "sample-app", push_body(head, project="someone/else").replace(b'"id": 42', b'"id": 7')
            ).status_code
            == 403
        )
        assert deliver("sample-app", b"{" + b" " * (2 * 1024 * 1024) + b"}").status_code == 413
        assert deliver("nobody", body).status_code == 404
        assert deliver("leaky", body, X_Gitlab_Token=c["secret_token"]).status_code == 401

        # Deployments down each path.
        ok = push("main")
        deployments += [
            ok,
            push("failing"),
            push("slow"),
            push("unhealthy"),
            push("main", "leaky", X_Gitlab_Token=c["other_secret_token"], webhook_signature=None),
        ]
        for deployment in deployments:
            wait_state(redis, deployment, TERMINAL, 60, stack)
        # A running deployment canceled, and another whose work-horse is killed.
        for how in ("cancel", "kill"):
            victim = push("slow")
            deployments.append(victim)
            wait_state(redis, victim, ("running",), 30, stack)
            time.sleep(1.0)
            if how == "cancel":
                api("POST", f"/deployments/{victim}/cancel")
            else:
                for worker in stack.processes.values():
                    for horse in children(worker.pid):
                        if b"python" in cmdline_of(horse).split(b"\0")[0]:
                            os.kill(horse, signal.SIGKILL)
            wait_state(redis, victim, TERMINAL, 30, stack)
        # The API: a wrong token, a manual deploy (a ref the worker resolves), a rollback.
        assert api("GET", "/deployments", token="wrong").status_code == 401
        manual = api("POST", "/projects/sample-app/environments/production/deployments", json={"ref": "main"})
        assert manual.status_code == 202, manual.text
        deployments.append(manual.json()["deployment"])
        wait_state(redis, deployments[-1], TERMINAL, 60, stack)
        rolled = api("POST", f"/deployments/{ok}/rollback")
        assert rolled.status_code == 202, (rolled.text, record(redis, ok))
        deployments.append(rolled.json()["deployment"])
        wait_state(redis, deployments[-1], TERMINAL, 60, stack)
        # GitLab refusing: 401 (the token), then 403 and 404.
        stack.gitlab.token = "not-the-canary"
        refused = push("main")
        deployments.append(refused)
        wait_state(redis, refused, TERMINAL, 60, stack)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not record(redis, refused).get("status_problem"):
            time.sleep(0.2)
        stack.gitlab.token = c["gitlab_token"]
        stack.gitlab.fail_next(1, 403)
        stack.gitlab.fail_next(1, 404)
        deployments.append(push("main"))
        wait_state(redis, deployments[-1], TERMINAL, 60, stack)

        # Everything an operator reads: API records and logs, pages, metrics, the CLI.
        for deployment in deployments:
            api("GET", f"/deployments/{deployment}")
            api("GET", f"/deployments/{deployment}/log")
        api("GET", "/deployments?limit=500")
        api("GET", "/openapi.json")
        keep("metrics refused", session.get(f"{stack.base_url}/metrics"))
        metrics_auth = {"Authorization": f"Bearer {c['metrics_token']}"}
        assert keep("metrics", session.get(f"{stack.base_url}/metrics", headers=metrics_auth)).ok
        api("GET", "/audit?limit=500")
        keep("login wrong", sign_in_session(session, stack.base_url, "wrong"))
        keep("login", sign_in_session(session, stack.base_url, c["admin_token"]))
        for path in (
            "/",
            "/projects/sample-app",
            "/projects/leaky",
            "/audit",
            *(f"/deployments/{d}" for d in deployments),
        ):
            keep(f"GET {path}", session.get(f"{stack.base_url}{path}"))
        for status in stack.gitlab.statuses():
            if status["target_url"]:
                keep("signed link", requests.get(status["target_url"], timeout=10))
        cli = subprocess.run(
            [sys.executable, "-m", "webhook.cli", "--config", str(stack.config), "check"],
            env=stack.env(),
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
        )
        responses.append(("cli check", cli.stdout + cli.stderr))
        notify_test = subprocess.run(
            [
                sys.executable,
                "-m",
                "webhook.cli",
                "--config",
                str(stack.config),
                "notify",
                "test",
                "sample-app",
            ],
            env=stack.env(),
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
        )
        responses.append(("cli notify test", notify_test.stdout + notify_test.stderr))
        deadline = time.monotonic() + 60  # each notification (and the test) at the chat that takes them

        def queued() -> int:
            return sum(int(redis.hlen(f"pd:dep:{d}:notices")) for d in deployments) + 1

        while time.monotonic() < deadline and len(chat.delivered()) < queued():
            time.sleep(0.5)
        deadline = time.monotonic() + 60  # statuses delivered (or refused) before looking at Redis
        while time.monotonic() < deadline and redis.zcard("pd:outbox"):
            time.sleep(0.5)
    finally:
        sampler.stopping.set()
        sampler.join(timeout=5)
        tarpit.stop()
        chat.close()
        refusing.close()

    states = {d: state(redis, d) for d in deployments}
    haystacks: list[tuple[str, bytes]] = [*redis_haystack(redis), *responses]
    haystacks += files(stack.logs)
    haystacks += files(stack.data_dir)
    haystacks += files(dumps)
    haystacks += files(tmp_path / "metrics")
    haystacks += [(f"chat message {i}", json.dumps(p.payload).encode()) for i, p in enumerate(chat.posts)]
    hits: dict[str, set[str]] = {}
    for where, data in haystacks:
        found = canaries.find(data)
        if found:
            hits[where] = found
    cmdline_hits: dict[str, set[str]] = {}
    environ_hits: dict[str, set[str]] = {}
    steps_seen = git_seen = 0
    for (pid, cmdline), environ in sampler.seen.items():
        argv0 = cmdline.split(b"\0")[0].rsplit(b"/", 1)[-1]
        shown = cmdline.replace(b"\0", b" ")[:200].decode("utf-8", "replace")
        found = canaries.find(cmdline)
        if found:
            cmdline_hits[f"{pid} {shown}"] = found
        found = canaries.find(environ)
        if b"PUSHDEPLOY_DEPLOYMENT_ID=" in environ:
            steps_seen += 1
            allowed: set[str] = set()
        elif argv0.startswith(b"git"):
            git_seen += 1
            allowed = {"repo_password", "repo_basic_auth"}
        else:
            allowed = {"fernet_key"}
        if found - allowed:
            environ_hits[f"{pid} {shown}"] = found - allowed
    mirror_configs = {str(p): p.read_bytes() for p in (stack.data_dir / "mirrors").glob("*/config")}
    remote_helper = {k: v for k, v in cmdline_hits.items() if "git-remote-http" in k or " remote-http" in k}
    record_figures(
        "secret_sweep",
        {
            "canaries": len(canaries.plain),
            "deployments": len(deployments),
            "haystacks": len(haystacks),
            "redis_keys": redis.dbsize(),
            "process_samples": len(sampler.seen),
            "step_processes_sampled": steps_seen,
            "git_processes_sampled": git_seen,
            "step_dumps": len(list(dumps.iterdir())),
            "hits": len(hits),
            "cmdline_hits": len(cmdline_hits),
            "environ_hits": len(environ_hits),
            "states": states,
            "where": {k: sorted(v) for k, v in {**hits, **cmdline_hits, **environ_hits}.items()},
        },
    )
    assert {s for s in states.values()} <= set(TERMINAL), states
    assert (
        states[deployments[0]] == "succeeded"
        and "failed" in states.values()
        and "canceled" in states.values()
    )
    assert tarpit.accepted > 0, "the leaky project's fetch never reached its (failing) remote"
    assert len(chat.delivered()) > len(deployments) and len(chat.refused()) == 2
    assert refusing.refused() and redis.zcard("pd:notify") > 0  # problems kept in Redis were searched
    assert len(list(dumps.iterdir())) >= 8 and steps_seen > 0 and git_seen > 0 and sampler.rounds > 50
    assert mirror_configs and not any(canaries.find(v) for v in mirror_configs.values())
    assert not hits, {k: sorted(v) for k, v in hits.items()}
    assert not environ_hits, {k: sorted(v) for k, v in environ_hits.items()}
    assert not {k: v for k, v in cmdline_hits.items() if k not in remote_helper}, cmdline_hits
    assert not remote_helper, f"{REMOTE_HELPER_BUG}: seen {sorted(remote_helper)[:2]}"
