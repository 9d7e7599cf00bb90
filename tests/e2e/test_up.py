"""`pushdeploy up --demo` from a fresh directory, with no Redis answering: the newcomer's path."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import ROOT, free_port

pytestmark = pytest.mark.e2e


def test_up_demo_starts_an_embedded_redis_and_deploys_the_demo(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "quickstart.toml", tmp_path / "examples" / "quickstart.toml")
    dead = free_port()  # nothing listens here: up must start its own Redis
    env = {**os.environ, "PUSHDEPLOY_REDIS_URL": f"redis://127.0.0.1:{dead}/0", "PYTHONPATH": str(ROOT)}
    env.pop("PUSHDEPLOY_CONFIG", None)
    bind = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook.cli", "up", "--demo", "--bind", bind],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    page: requests.Response | None = None
    try:
        deadline = time.monotonic() + 90
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops pushdeploy" in line:
                link = next(text.split()[1] for text in lines if text.strip().startswith("open "))
                page = requests.get(link, allow_redirects=False, timeout=10)
                break
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = "".join(lines)
    assert "starting an embedded one" in output, output
    assert "deployment succeeded" in output, output
    # The printed link opens the demo deployment's page itself: no sign-in form, no token to find.
    assert page is not None and page.status_code == 200, output
    assert "Sign in" not in page.text
    assert "building sample-app" in page.text and "?access=" in page.url
    current = tmp_path / ".pushdeploy" / "projects" / "sample-app" / "production" / "current"
    assert (current / "public" / "index.html").exists()
    assert (tmp_path / ".pushdeploy" / "redis" / "appendonlydir").exists()  # the embedded Redis keeps an AOF
