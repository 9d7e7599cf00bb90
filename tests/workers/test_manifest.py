"""Comparing two releases on the worker: real directory trees in a temp dir."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from workers import manifest


def tree(root: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for name, target in (links or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    return root


def test_what_changed_lists_new_different_and_gone_paths_once(tmp_path: Path) -> None:
    old = tree(tmp_path / "old", {"same": "s", "edit": "1", "gone/a/b": "x", "gone/c": "y", "flip/in": "i",
                                  "mode": "m"}, {"link": "same"})
    new = tree(tmp_path / "new", {"same": "s", "edit": "2", "flip": "now a file", "add/deep/f": "n",
                                  "mode": "m"}, {"link": "edit"})
    (new / "mode").chmod(0o600)

    found = manifest.changes(manifest.scan(old), manifest.scan(new))

    # gone/ once (its deletion takes what is under it); flip/in not at all (flip is replaced)
    assert found == ["add", "add/deep", "add/deep/f", "edit", "flip", "gone", "link", "mode"]


def test_equal_trees_have_equal_digests_and_any_difference_changes_it(tmp_path: Path) -> None:
    one = manifest.scan(tree(tmp_path / "one", {"a/b": "x"}, {"l": "a"}))
    two = manifest.scan(tree(tmp_path / "two", {"a/b": "x"}, {"l": "a"}))
    assert manifest.digest(one) == manifest.digest(two)
    assert manifest.changes(one, two) == []
    (tmp_path / "two" / "a").chmod(0o700)
    assert manifest.digest(manifest.scan(tmp_path / "two")) != manifest.digest(one)


def test_a_socket_in_a_release_is_refused(tmp_path: Path) -> None:
    root = tree(tmp_path / "r", {"f": "x"})
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
        with pytest.raises(manifest.UnsupportedEntry):
            manifest.scan(root)
