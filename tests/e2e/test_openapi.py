"""The OpenAPI document checked against the real API under gunicorn, with schemathesis."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack
from tests.helpers import ADMIN_TOKEN

pytestmark = pytest.mark.e2e


def test_the_api_behaves_as_documented(stack: Callable[..., Stack], tmp_path: Path) -> None:
    """Every documented operation, with generated inputs: no 5xx, answers match the schemas."""
    made = stack()
    made.start_web()
    made.start_worker()  # deployments end, so ?follow=1 streams end too
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{made.base_url}/api/v1/openapi.json",
                "--header",
                f"Authorization: Bearer {ADMIN_TOKEN}",
                "--checks",
                "all",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--request-timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            cwd=tmp_path,
        )
    finally:
        made.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_the_document_lists_every_api_route() -> None:
    from flask import Flask

    from tests.conftest import REDIS_URL  # noqa: F401  (documents the config the test builds)
    from webhook.api import api
    from webhook.openapi import document
    from workers.config import ServerSettings, Settings

    documented = set(document(Settings(Path("x.toml"), ServerSettings(), None, {}))["paths"])
    routes = Flask(__name__)
    routes.register_blueprint(api)
    served = {
        str(rule.rule).replace("<", "{").replace(">", "}")
        for rule in routes.url_map.iter_rules()
        if str(rule.rule).startswith("/api/v1/") and not str(rule.rule).endswith("openapi.json")
    }
    assert served == documented
