"""Release directories and the ``current`` symlink of one project environment.

Layout: ``<data_dir>/projects/<project>/<environment>/releases/<deployment id>`` and ``current``,
a relative symlink switched by ``rename(2)`` so readers see the old or the new release, never
neither. Every path is built from configured names and generated ids, never from payload text.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from workers.config import NAME_RE

ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_")


class Releases:
    def __init__(self, data_dir: Path, project: str, environment: str) -> None:
        for name in (project, environment):
            if not NAME_RE.match(name):
                raise ValueError(f"unsafe name for a path: {name!r}")
        self.root = data_dir / "projects" / project / environment
        self.releases = self.root / "releases"
        self.current_link = self.root / "current"

    def path(self, release_id: str) -> Path:
        if not release_id or not set(release_id) <= ID_CHARS:
            raise ValueError(f"unsafe release id: {release_id!r}")
        return self.releases / release_id

    def prepare(self) -> None:
        self.releases.mkdir(parents=True, exist_ok=True)

    def current(self) -> str | None:
        """The release id ``current`` points at, or None before the first deployment."""
        try:
            target = os.readlink(self.current_link)
        except (FileNotFoundError, OSError):
            return None
        return Path(target).name

    def switch(self, release_id: str) -> str | None:
        """Point ``current`` at ``release_id`` atomically; returns the release it pointed at before."""
        target = self.path(release_id)
        if not target.is_dir():
            raise FileNotFoundError(f"release {release_id} does not exist")
        previous = self.current()
        temporary = self.root / f".current-{release_id}"
        temporary.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, self.root), temporary)
        os.replace(temporary, self.current_link)
        _fsync_dir(self.root)
        return previous

    def remove(self, release_id: str) -> None:
        shutil.rmtree(self.path(release_id), ignore_errors=True)

    def all(self) -> list[str]:
        """Release ids, oldest first (ids sort by creation time)."""
        if not self.releases.is_dir():
            return []
        return sorted(p.name for p in self.releases.iterdir() if p.is_dir() and not p.name.startswith("."))

    def prune(self, keep: int, protect: set[str]) -> list[str]:
        """Delete all but the newest ``keep`` releases, never one in ``protect``; returns the removed."""
        removable = [r for r in self.all() if r not in protect]
        excess = len(self.all()) - keep
        removed = removable[: max(0, excess)]
        for release_id in removed:
            self.remove(release_id)
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
