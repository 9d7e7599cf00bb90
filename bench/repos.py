"""Synthetic git repositories of a chosen size and depth, written in one ``git fast-import``.

Committing file by file would take minutes for 10,000 files or commits; fast-import writes them in
about a second. The commits a scenario pushes later are made up front too, and "pushing" one is
moving the branch in the bare remote (``update-ref``), which is all a fetch can tell apart.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import GIT_ENV

AUTHOR = "Bench <bench@example.invalid> 1767225600 +0000"


def git(repo: Path | None, *args: str, stdin: bytes | None = None) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", **GIT_ENV}
    where = ["--git-dir", str(repo)] if repo is not None else []
    done = subprocess.run(["git", *where, *args], env=env, input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout.decode().strip()


def _data(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return b"data %d\n" % len(raw) + raw + b"\n"


def _file(index: int, version: int = 0) -> tuple[str, bytes]:
    """A source-like file of about 1 KB, 100 to a directory."""
    path = f"src/d{index // 100:03d}/f{index:05d}.txt"
    line = f"file {index} version {version}: lorem ipsum dolor sit amet, consectetur adipiscing elit\n"
    return path, (line * 12).encode()


@dataclass(frozen=True)
class Branch:
    name: str
    commits: list[str]  # oldest first


class Builder:
    """Accumulates one fast-import stream; :meth:`run` writes it and returns each mark's sha."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.mark = 0

    def commit(self, ref: str, message: str, files: list[tuple[str, bytes]], parent: int | None) -> int:
        self.mark += 1
        head = f"commit {ref}\nmark :{self.mark}\nauthor {AUTHOR}\ncommitter {AUTHOR}\n".encode()
        self.chunks.append(head + _data(message))
        if parent is not None:
            self.chunks.append(b"from :%d\n" % parent)
        for path, content in files:
            self.chunks.append(f"M 100644 inline {path}\n".encode() + _data(content))
        self.chunks.append(b"\n")
        return self.mark

    def run(self, bare: Path) -> dict[int, str]:
        if not bare.exists():
            git(None, "init", "--quiet", "--bare", "--initial-branch", "main", str(bare))
        marks = bare / "bench-marks"
        git(bare, "fast-import", "--quiet", f"--export-marks={marks}", stdin=b"".join(self.chunks))
        found = {}
        for line in marks.read_text().splitlines():
            mark, sha = line.split()
            found[int(mark.lstrip(":"))] = sha
        marks.unlink()
        return found


def linear_repo(bare: Path, files: int, depth: int, extra: int,
                branch: str = "main") -> tuple[str, list[str]]:
    """``files`` files and ``depth`` commits of history, plus ``extra`` one-file changes on top.

    The branch is left at the last history commit; returns it and the extra commits, oldest first.
    """
    builder = Builder()
    ref = f"refs/heads/{branch}"
    mark = builder.commit(ref, "initial\n", [_file(i) for i in range(files)], None)
    for version in range(1, depth):
        mark = builder.commit(ref, f"history {version}\n", [_file(version % files, version)], mark)
    base = mark
    pushes = []
    for version in range(depth, depth + extra):
        mark = builder.commit(ref, f"change {version}\n", [_file(version % files, version)], mark)
        pushes.append(mark)
    shas = builder.run(bare)
    move(bare, {branch: shas[base]})
    return shas[base], [shas[m] for m in pushes]


def branchy_repo(bare: Path, files: int, branches: list[str], per_branch: int) -> tuple[str, list[Branch]]:
    """A shared root commit, then ``per_branch`` commits on each branch; every branch left at the root."""
    builder = Builder()
    root = builder.commit("refs/heads/main", "initial\n", [_file(i) for i in range(files)], None)
    marks: dict[str, list[int]] = {}
    for number, name in enumerate(branches):
        mark, marks[name] = root, []
        for version in range(1, per_branch + 1):
            index = (number * per_branch + version) % files
            mark = builder.commit(f"refs/heads/{name}", f"{name} {version}\n", [_file(index, version)], mark)
            marks[name].append(mark)
    shas = builder.run(bare)
    move(bare, dict.fromkeys(branches, shas[root]))
    return shas[root], [Branch(name, [shas[m] for m in marks[name]]) for name in branches]


def move(bare: Path, heads: dict[str, str]) -> None:
    """Point branches at commits, as a push does (one ``update-ref --stdin`` for all)."""
    script = "".join(f"update refs/heads/{name} {sha}\n" for name, sha in heads.items())
    git(bare, "update-ref", "--stdin", stdin=script.encode())
