"""The two packages keep to their sides: read from the source, so a stray import fails here.

``workers`` is the engine: it never imports the web tier, Flask or its toolkit, so a worker host
needs none of them and no engine code can reach into a request. ``webhook`` is the HTTP tier and
the CLI: it uses the engine through its services (config, stores, intake, control, outbox, …),
never through the internals that run deployments (the runner, steps, releases, lanes, recovery,
the lifecycle, health checks, the SSH transport, the rollout to target hosts and the stop of a
review app). Starting a worker is the CLI's one way in, through ``workers.worker``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WEB_ONLY = ("webhook", "flask", "werkzeug", "jinja2", "gunicorn", "prometheus_client")
ENGINE_INTERNALS = (
    "workers.pipeline",
    "workers.steps",
    "workers.releases",
    "workers.lanes",
    "workers.recovery",
    "workers.lifecycle",
    "workers.health",
    "workers.remote",
    "workers.rollout",
    "workers.review_stop",
    "workers.manifest",
)
ENTRY_POINTS = {"workers.worker": {"webhook/cli.py"}}
"""Engine modules the CLI may import to run the engine itself, and where."""


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, module)`` of every import in a file, function-level imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "workers":
                yield from ((node.lineno, f"workers.{alias.name}") for alias in node.names)
            else:
                yield node.lineno, node.module


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def under(module: str, names: tuple[str, ...] | set[str]) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in names)


def test_the_engine_never_imports_the_web_tier() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources("workers")
        for line, module in imports(path)
        if under(module, WEB_ONLY)
    ]
    assert found == []


def test_the_web_tier_uses_the_engine_only_through_its_services() -> None:
    found = []
    for path in sources("webhook"):
        where = str(path.relative_to(ROOT))
        for line, module in imports(path):
            if under(module, ENGINE_INTERNALS):
                found.append(f"{where}:{line} imports {module}")
            for entry, allowed in ENTRY_POINTS.items():
                if under(module, (entry,)) and where not in allowed:
                    found.append(f"{where}:{line} imports {module} (only {', '.join(sorted(allowed))} may)")
    assert found == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("import flask\n", ["flask"]),
        ("from workers import pipeline\n", ["workers.pipeline"]),
        ("def f():\n    from webhook.app import create_app\n", ["webhook.app"]),
        ("from .x import y\n", []),
    ],
)
def test_the_scan_sees_every_kind_of_import(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "m.py"
    path.write_text(text)
    assert [module for _, module in imports(path)] == expected
