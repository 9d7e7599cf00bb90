"""What a release directory holds, entry by entry, so two releases can be compared on the worker.

The incremental ship needs the paths that differ between the release a host runs and the new
one without asking the host for its file list (rsync's file list alone costs ~34 bytes a file).
The worker keeps its builds, so it compares its own two copies: type, permission bits, and the
content (a SHA-256 of each file, the target of each symlink). Modification times are left out on
purpose: an export gives every file a new one on every deployment, and rsync does not keep them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

Entry = tuple[str, int, str]
"""(kind: ``f`` file, ``d`` directory, ``l`` symlink; permission bits; content hash or link target)."""
Manifest = dict[str, Entry]
"""Relative path (``/``-separated, never ``.`` or ``..``) to its entry, for everything under a release."""


class UnsupportedEntry(ValueError):
    """A release holds something rsync would not copy as it is (a socket, a device, a fifo)."""


def scan(root: Path) -> Manifest:
    """Every entry under ``root`` (not following symlinks), hashing file contents."""
    found: Manifest = {}
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(root / relative if relative else root) as entries:
            for entry in entries:
                path = f"{relative}/{entry.name}" if relative else entry.name
                info = entry.stat(follow_symlinks=False)
                mode = stat.S_IMODE(info.st_mode)
                if entry.is_symlink():
                    found[path] = ("l", 0, os.readlink(entry.path))
                elif entry.is_dir(follow_symlinks=False):
                    found[path] = ("d", mode, "")
                    pending.append(path)
                elif entry.is_file(follow_symlinks=False):
                    found[path] = ("f", mode, file_hash(entry.path))
                else:
                    raise UnsupportedEntry(f"not a file, directory or symlink: {path}")
    return found


def file_hash(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def digest(manifest: Manifest) -> str:
    """One hash for a whole release: equal digests, equal trees (paths, kinds, modes, contents)."""
    h = hashlib.sha256()
    for path in sorted(manifest):
        kind, mode, content = manifest[path]
        h.update(f"{path}\0{kind}\0{mode:o}\0{content}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def changes(old: Manifest, new: Manifest) -> list[str]:
    """Paths to send (new or different in ``new``) and to delete (gone from ``new``), sorted.

    A gone directory is listed once, not with everything under it (its deletion takes them);
    a directory that stays but changed its mode is listed alone (rsync sets it without recursing).
    """
    listed = [path for path, entry in new.items() if old.get(path) != entry]
    replaced = {path for path, entry in old.items() if entry[0] == "d" and new.get(path, ("",))[0] != "d"}
    gone = [path for path in old if path not in new and not any(a in replaced for a in ancestors(path))]
    return sorted({*listed, *gone})


def ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
