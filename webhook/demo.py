"""The quick-start demo: a small local repository for ``examples/quickstart.toml`` to deploy."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

FILES = {
    "index.html": "<!doctype html><title>sample-app</title><h1>Hello from sample-app</h1>\n",
    "build.sh": (
        "#!/bin/sh\n"
        "# A build step: runs inside the new release directory.\n"
        "set -e\n"
        'echo "building $PUSHDEPLOY_PROJECT at $PUSHDEPLOY_SHA"\n'
        "mkdir -p public\n"
        "cp index.html public/index.html\n"
        'echo "$PUSHDEPLOY_SHA" > public/VERSION\n'
        'echo "built $(ls public | wc -l) files"\n'
    ),
}


def _git(*args: str, cwd: Path) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "GIT_AUTHOR_NAME": "pushdeploy demo",
        "GIT_AUTHOR_EMAIL": "demo@pushdeploy.invalid",
        "GIT_COMMITTER_NAME": "pushdeploy demo",
        "GIT_COMMITTER_EMAIL": "demo@pushdeploy.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def ensure_repository(bare: Path, branch: str = "main") -> tuple[str, bool]:
    """Create the demo's bare repository with one commit unless it exists; returns (head sha, created)."""
    if (bare / "HEAD").exists():
        return _git("rev-parse", f"refs/heads/{branch}", cwd=bare), False
    bare.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _git("init", "--quiet", "--initial-branch", branch, ".", cwd=work)
        for name, text in FILES.items():
            (work / name).write_text(text)
        (work / "build.sh").chmod(0o755)
        _git("add", "--all", cwd=work)
        _git("commit", "--quiet", "-m", "Sample app: first release", cwd=work)
        _git("clone", "--quiet", "--bare", ".", str(bare.resolve()), cwd=work)
    return _git("rev-parse", f"refs/heads/{branch}", cwd=bare), True
