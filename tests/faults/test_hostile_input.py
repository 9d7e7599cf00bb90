"""Hostile repositories and an injection corpus, end to end: webhook → gunicorn → Redis → worker → git.

The Mirror-level tests (tests/workers/test_source.py) prove each hardening on its own; these push
the same hostile content through real deliveries and a real worker whose environment is hostile
too (a git template dir with hooks, a global config with a filter driver, ``protocol.ext.allow``,
``core.hooksPath`` into the repository). Every attack aims at a canary file: it must never exist.
Controls at the end prove the attacks are live: plain git in the same environment does fire them.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from redis import Redis

from tests.e2e.conftest import Stack
from tests.faults.harness import TERMINAL, api, record, record_figures, wait_state
from tests.helpers import GIT_ENV, GitRepo, git, project_config, push_body, signed_headers

pytestmark = [pytest.mark.fault, pytest.mark.e2e]

HOOKS = (
    "post-checkout",
    "post-merge",
    "post-rewrite",
    "reference-transaction",
    "pre-auto-gc",
    "post-index-change",
)


def canary_script(canaries: Path, name: str) -> str:
    """A script that leaves ``<canaries>/<name>`` (or under $CANARY_DIR, for the controls)."""
    return (
        f'#!/bin/sh\ntouch "${{CANARY_DIR:-{canaries}}}/{name}-$(basename "$0")"\ncat 2>/dev/null\nexit 0\n'
    )


def write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def hostile_git_environment(root: Path, canaries: Path) -> dict[str, str]:
    """A HOME, git template dir and global config that make plain git run code at every turn."""
    template = root / "git-template"
    for hook in HOOKS:
        write_executable(template / "hooks" / hook, canary_script(canaries, "template-hook"))
    filter_script = root / "filter.sh"
    write_executable(filter_script, canary_script(canaries, "filter"))
    home = root / "hostile-home"
    config = (
        "[core]\n\thooksPath = .githooks\n"
        f"[init]\n\ttemplateDir = {template}\n"
        f'[filter "evil"]\n\tsmudge = {filter_script}\n\tclean = {filter_script}\n'
        f'[diff "evil"]\n\ttextconv = {filter_script}\n'
        '[protocol "ext"]\n\tallow = always\n'
        "[protocol]\n\tallow = always\n"
        "[submodule]\n\trecurse = true\n"
        "[fetch]\n\trecurseSubmodules = true\n"
    )
    (home / ".config" / "git").mkdir(parents=True)
    (home / ".gitconfig").write_text(config)
    (home / ".config" / "git" / "config").write_text(config)
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_TEMPLATE_DIR": str(template),
        "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
        "GIT_CONFIG_PARAMETERS": f"'core.hooksPath'='{template / 'hooks'}'",
        "GIT_ALLOW_PROTOCOL": "ext:file:https:http",
        "GIT_PROTOCOL_FROM_USER": "1",
    }


def add_gitlink(repo: GitRepo, path: str, sha: str) -> None:
    git("update-index", "--add", "--cacheinfo", f"160000,{sha},{path}", cwd=repo.work)
    (repo.work / path).mkdir(exist_ok=True)  # else `git add --all` drops the gitlink again


def test_hostile_repositories_deploy_without_running_anything(
    fault_stack: Callable[..., Stack], redis: Redis, git_repo: GitRepo, tmp_path: Path
) -> None:
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("untouched\n")
    environment = hostile_git_environment(tmp_path, canaries)
    library = GitRepo(tmp_path / "library")
    library_sha = library.commit(
        {hook: canary_script(canaries, "submodule-content") for hook in ("post-checkout", "post-merge")},
        "a library whose files are hooks",
    )
    stack: Stack = fault_stack(build=["cat app.txt"], deploy=["true"], keep_releases=2, extra_env=environment)
    stack.start_web()
    stack.start_worker()

    commits: dict[str, str] = {}
    # 1. Attributes that name a filter and diff driver (defined only in the hostile global config);
    #    they stay for the commits after it.
    commits["attributes"] = git_repo.commit(
        {".gitattributes": "* filter=evil diff=evil merge=evil\n*.txt ident\n", "app.txt": "attributes\n"},
        "a filter driver",
    )
    # 2. Submodules: an ext:: URL, an `update = !command`, and one named ../../hooks whose content
    #    is a set of hooks; plus hooks as tracked files where a hostile core.hooksPath would look.
    gitmodules = (
        '[submodule "evil"]\n'
        "\tpath = evil\n"
        f"\turl = ext::sh -c touch% ${{CANARY_DIR:-{canaries}}}/ext-transport\n"
        '[submodule "../../hooks"]\n'
        "\tpath = hooked\n"
        f"\turl = {library.url}\n"
    )
    for path in ("evil", "hooked"):
        add_gitlink(git_repo, path, library_sha)
    tracked_hooks = {
        f"{d}/{hook}": canary_script(canaries, "tracked-hook")
        for d in (".githooks", "hooks")
        for hook in HOOKS
    }
    commits["submodules"] = git_repo.commit(
        {".gitmodules": gitmodules, "app.txt": "submodules\n", **tracked_hooks}, "hostile submodules"
    )
    # git refuses `update = !command` from .gitmodules itself, and stops there: a commit of its own.
    add_gitlink(git_repo, "updater", library_sha)
    commits["submodule-update"] = git_repo.commit(
        {
            ".gitmodules": gitmodules
            + f'[submodule "updater"]\n\tpath = updater\n\turl = {library.url}\n'
            + f"\tupdate = !touch {canaries}/submodule-update\n",
            "app.txt": "submodule update command\n",
        },
        "a submodule update command",
    )
    # 3. Symlinks out of the release: absolute, relative, to a directory, to where a canary would be.
    links = {
        "abs-dir": str(outside),
        "abs-file": str(outside / "sentinel.txt"),
        "rel-dir": "../" * 12 + str(outside).lstrip("/"),
        "to-canary": str(canaries / "symlink-target"),
        "etc-passwd": "/etc/passwd",
    }
    for name, target in links.items():
        os.symlink(target, git_repo.work / name)
    commits["symlinks"] = git_repo.commit({"app.txt": "symlinks\n"}, "symlinks out of the release")
    # 4-5. Two ordinary commits, so releases holding those symlinks are pruned (keep_releases = 2).
    commits["later-1"] = git_repo.commit({"app.txt": "later 1\n"}, "later 1")
    commits["later-2"] = git_repo.commit({"app.txt": "later 2\n"}, "later 2")

    outcomes: dict[str, dict[str, str]] = {}
    for what, sha in commits.items():
        body = push_body(sha)
        answer = requests.post(
            f"{stack.base_url}/hooks/gitlab/sample-app", data=body, headers=signed_headers(body), timeout=5
        )
        assert answer.status_code == 202, answer.text
        deployment = answer.json()["deployment"]
        wait_state(redis, deployment, TERMINAL, 60, stack)
        outcomes[what] = record(redis, deployment)

    mirror = stack.data_dir / "mirrors" / "sample-app.git"
    releases = stack.data_dir / "projects" / "sample-app" / "production" / "releases"
    found = sorted(p.name for p in canaries.iterdir())
    mirror_hooks = sorted(p.name for p in (mirror / "hooks").iterdir() if not p.name.endswith(".sample"))
    library_in_mirror = subprocess.run(
        ["git", "--git-dir", str(mirror), "cat-file", "-e", f"{library_sha}^{{commit}}"],
        capture_output=True,
        check=False,
        env={"PATH": os.environ["PATH"], **GIT_ENV},
    )
    stray_hooks = sorted(str(p) for p in stack.data_dir.rglob("hooks") if p.parent != mirror)
    record_figures(
        "hostile_repositories",
        {
            "repositories": len(commits),
            "deployments": {what: o["state"] for what, o in outcomes.items()},
            "canaries_found": len(found),
        },
    )
    assert found == [], f"hostile content ran: {found}"
    assert {what: o["state"] for what, o in outcomes.items()} == dict.fromkeys(commits, "succeeded"), outcomes
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel.txt"]
    assert (outside / "sentinel.txt").read_text() == "untouched\n"
    assert mirror_hooks == [], "hooks appeared in the mirror"
    assert library_in_mirror.returncode != 0, "a submodule's commit was fetched"
    assert not [p for p in stray_hooks if "/releases/" not in p], stray_hooks
    live = releases.parent / os.readlink(releases.parent / "current")
    assert (live / "app.txt").read_text() == "later 2\n"
    kept = sorted(p.name for p in releases.iterdir())
    assert len(kept) == 2 and outcomes["symlinks"]["release"] not in kept, kept  # pruned, links and all

    # Controls: the same environment does run these with plain git (so the test can fail).
    control = tmp_path / "control"
    control.mkdir()
    plain = {"PATH": os.environ["PATH"], **GIT_ENV, **environment, "CANARY_DIR": str(control)}
    plain.pop("GIT_CONFIG_GLOBAL")  # the hostile HOME's .gitconfig is read as the global config
    plain.pop("GIT_CONFIG_PARAMETERS")  # would override the template's and the repo's hooks
    git("push", "--quiet", "origin", f"{commits['submodules']}:refs/heads/control", cwd=git_repo.work)
    subprocess.run(
        [
            "git",
            "clone",
            "--quiet",
            "--recurse-submodules",
            "-b",
            "control",
            git_repo.url,
            str(tmp_path / "clone"),
        ],
        env=plain,
        capture_output=True,
        check=False,
        timeout=60,
    )
    fired = {p.name.split("-")[0] for p in control.iterdir()}
    assert {"filter", "tracked", "ext"} <= fired, (
        f"controls fired: {sorted(p.name for p in control.iterdir())}"
    )
    template_only = {k: v for k, v in plain.items() if k not in ("HOME", "XDG_CONFIG_HOME")}
    subprocess.run(
        ["git", "clone", "--quiet", git_repo.url, str(tmp_path / "clone-template")],
        env={**template_only, "HOME": str(tmp_path)},
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert any(p.name.startswith("template-hook") for p in control.iterdir()), sorted(control.iterdir())
    assert sorted(p.name for p in canaries.iterdir()) == []


# -- the injection corpus ------------------------------------------------------------------


def corpus(canary: Path) -> dict[str, str]:
    """Text an attacker controls: refs, messages, names. Each would create ``canary`` if evaluated."""
    c = str(canary)
    return {
        "dollar-paren": f"$(touch {c})",
        "dollar-paren-ifs": f"x$(touch${{IFS}}{c})",
        "backticks": f"`touch {c}`",
        "semicolon": f"x; touch {c}",
        "and": f"x && touch {c} #",
        "pipe": f"x | touch {c}",
        "upload-pack": f"--upload-pack=touch {c}",
        "dash-dash": f"--exec=touch {c}",
        "proxy-command": f"-oProxyCommand=touch {c}",
        "newlines": f"main\ntouch {c}\n",
        "crlf": f"main\r\nX-Injected: 1\r\n\r\ntouch {c}",
        "nul": f"main\x00$(touch {c})",
        "dot-dot": "../../../../../../../../tmp/x",
        "encoded-dots": "%2e%2e%2f%2e%2e%2f",
        "rtl": "\u202etxt.exe",
        "long-64k": f"$(touch {c})" + "A" * 65536,
        "format": "%s%s%s%n{0}{__class__}",
        "brace": f"${{IFS}}$(touch {c})",
    }


def header_safe(text: str) -> bool:
    return all(32 <= ord(ch) < 127 for ch in text) and len(text) < 8000


def raw_request(base_url: str, target: str, method: str = "POST", body: bytes = b"{}", **headers: str) -> int:
    """One request with a request line exactly as given (no client-side normalising); 0 if unanswered."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    head = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    head += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        deadline = time.monotonic() + 10
        while b"\r\n" not in answer and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def hostile_branches(canary: Path) -> dict[str, str]:
    """Real branch names git accepts, holding shell syntax: pushed, configured and deployed for real."""
    return {
        "inj1": f"inj-$(touch${{IFS}}{canary}-branch1)",
        "inj2": f"--upload-pack=touch${{IFS}}{canary}-branch2",
        "inj3": f"x`touch${{IFS}}{canary}-branch3`",
        "inj4": f"a;touch${{IFS}}{canary}-branch4;b",
    }


def test_injection_corpus_in_refs_messages_and_names(
    fault_stack: Callable[..., Stack], redis: Redis, git_repo: GitRepo, tmp_path: Path
) -> None:
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    canary = canaries / "injected"
    branches = hostile_branches(canary)
    stack: Stack = fault_stack(
        projects={
            "sample-app": project_config(
                git_repo.url,
                environment=None,
                branch=None,
                build=['echo "building $PUSHDEPLOY_REF at $PUSHDEPLOY_SHA"', "echo $PUSHDEPLOY_REF"],
                deploy=["true"],
                environments={"production": {"branch": "main"}}
                | {name: {"branch": branch} for name, branch in branches.items()},
            )
        }
    )
    stack.start_web(workers=2)
    stack.start_worker()
    head = git_repo.commit({"app.txt": "$(touch x)\n"}, f"$(touch {canary}) `touch {canary}`; touch {canary}")
    answers: list[tuple[str, int]] = []
    deployments: list[str] = []

    def note(what: str, status: int, body: Any = None) -> None:
        answers.append((what, status))
        if status == 202 and isinstance(body, dict) and "deployment" in body:
            deployments.append(str(body["deployment"]))

    # Real branches with shell syntax in their names, pushed and deployed through git.
    for name, branch in branches.items():
        git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}", cwd=git_repo.work)
        body = push_body(head, branch=branch)
        answer = requests.post(
            f"{stack.base_url}/hooks/gitlab/sample-app", data=body, headers=signed_headers(body), timeout=10
        )
        note(f"branch {name}", answer.status_code, answer.json())
        assert answer.status_code == 202, answer.text

    # Signed deliveries carrying the corpus in every field that is read.
    def send(what: str, payload: dict[str, Any] | bytes, **extra: str) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {**signed_headers(body), **extra}
        answer = requests.post(
            f"{stack.base_url}/hooks/gitlab/sample-app", data=body, headers=headers, timeout=10
        )
        note(what, answer.status_code, answer.json() if answer.content.startswith(b"{") else None)

    base = json.loads(push_body(head))
    for label, text in corpus(canary).items():
        send(f"ref {label}", {**base, "ref": f"refs/heads/{text}"})
        send(f"raw ref {label}", {**base, "ref": text})
        send(f"message {label}", {**base, "commits": [{"id": head, "message": text}]})
        send(f"pusher {label}", {**base, "user_username": text, "user_name": text})
        send(f"project path {label}", {**base, "project": {"id": 42, "path_with_namespace": text}})
        send(f"project id {label}", {**base, "project_id": text, "project": {"path_with_namespace": text}})
        send(f"sha {label}", {**base, "after": text, "checkout_sha": text})
        send(f"checkout sha {label}", {**base, "checkout_sha": head + text})
        send(f"body {label}", text.encode("utf-8", "surrogatepass"))
        if header_safe(text):
            send(f"event {label}", base, **{"X-Gitlab-Event": text})
            send(f"idempotency key {label}", base, **{"Idempotency-Key": text})

    # The API, with the admin token: refs, shas and names from the corpus.
    for label, text in corpus(canary).items():
        path = "/projects/sample-app/environments/production/deployments"
        for field in ("ref", "sha", "by"):
            answer = api(stack, "POST", path, json={field: text})
            note(f"api {field} {label}", answer.status_code, answer.json())
        answer = api(stack, "POST", path, json={"ref": "main", "sha": head[:39] + text})
        note(f"api sha suffix {label}", answer.status_code, answer.json())
        name = quote(text[:2000], safe="")
        for method, target in (
            ("POST", f"/projects/{name}/environments/production/deployments"),
            ("POST", f"/projects/sample-app/environments/{name}/deployments"),
            ("POST", f"/projects/{name}/environments/{name}/rollback"),
            ("POST", f"/deployments/{name}/cancel"),
            ("POST", f"/deployments/{name}/rollback"),
            ("GET", f"/deployments/{name}"),
            ("GET", f"/deployments/{name}/log?after={name}&follow={name}"),
            ("GET", f"/deployments?project={name}&environment={name}&state={name}&sha={name}&limit={name}"),
        ):
            answer = api(stack, method, target, json={})
            note(f"api {method} {target[:40]} {label}", answer.status_code)

    # Project names in webhook URLs, sent exactly as written.
    names = [
        "../x",
        "..%2fx",
        "%2e%2e",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%252f..%252f",
        "--help",
        "-h",
        "sample-app%00",
        "sample-app%0a",
        "sample-app%0d%0aX-Injected:%201",
        "sample-app/../sample-app",
        "sample-app/..",
        "./sample-app",
        "%24(touch%20" + quote(str(canary), safe="") + ")",
        "%60touch%20" + quote(str(canary), safe="") + "%60",
        ";touch%20" + quote(str(canary), safe=""),
        "A" * 5000,
    ]
    signed = push_body(head)
    for name in names:
        for prefix in ("/hooks/gitlab/", "/hooks/gitlab/sample-app/", "/deployments/", "/badges/"):
            status = raw_request(stack.base_url, prefix + name, body=signed, **signed_headers(signed))
            note(f"url {prefix}{name[:60]}", status)

    bad = [(what, status) for what, status in answers if not (200 <= status < 300 or 400 <= status < 500)]
    for deployment in deployments:
        wait_state(redis, deployment, TERMINAL, 120, stack)
    ended = {d: record(redis, d)["state"] for d in deployments}
    branch_runs = ended_by_environment(redis, deployments, set(branches))
    stack.assert_running()
    log = stack.log_text()
    record_figures(
        "injection_corpus",
        {
            "requests": len(answers),
            "answers_5xx_or_none": len(bad),
            "deployments": len(deployments),
            "deployments_succeeded": sum(1 for s in ended.values() if s == "succeeded"),
            "canaries_found": len(list(canaries.iterdir())),
            "answers_by_status": {
                str(code): sum(1 for _w, s in answers if s == code)
                for code in sorted({s for _w, s in answers})
            },
        },
    )
    assert not bad, bad
    assert sorted(p.name for p in canaries.iterdir()) == [], "an injection ran"
    assert "Traceback" not in log, log[-5000:]
    assert branch_runs == dict.fromkeys(branches, "succeeded"), branch_runs


def ended_by_environment(redis: Redis, deployments: list[str], environments: set[str]) -> dict[str, str]:
    found = {}
    for deployment in deployments:
        data = record(redis, deployment)
        if data["environment"] in environments:
            found[data["environment"]] = data["state"]
    return found
