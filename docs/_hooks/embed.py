"""mkdocs hook: replace ``<!-- embed: deploy/... -->`` markers with the file's text as a code block.

The production files in deploy/ are written and tested on their own; the docs show them as they
are instead of copies that would drift. A marker whose file is missing becomes a visible note and
a warning, which ``mkdocs build --strict`` turns into an error.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.embed")

MARKER = re.compile(r"^<!-- embed: (?P<path>[^ ]+) -->$", re.MULTILINE)
"""One marker a line; the path is relative to the repository root (where mkdocs.yml is)."""

ALLOWED_ROOTS = ("deploy/", "examples/")
"""Only these directories may be embedded: the site must never publish an arbitrary file."""


def embed(markdown: str, root: Path, page: str = "") -> str:
    """The markdown with every marker replaced by a fenced block of the file it names."""

    def replace(match: re.Match[str]) -> str:
        relative = match.group("path")
        path = (root / relative).resolve()
        inside = any(path.is_relative_to((root / prefix).resolve()) for prefix in ALLOWED_ROOTS)
        if not inside or not path.is_file():
            log.warning("%s: cannot embed %s: not a file under %s", page, relative, ", ".join(ALLOWED_ROOTS))
            return f"> `{relative}` is not in this checkout yet: see `deploy/README.md`."
        text = path.read_text(encoding="utf-8").rstrip("\n")
        longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
        fence = "`" * max(3, longest + 1)
        return f"{fence}\n{text}\n{fence}"

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    root = Path(config["config_file_path"]).resolve().parent
    return embed(markdown, root, page.file.src_uri)
