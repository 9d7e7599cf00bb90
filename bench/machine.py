"""What the numbers were measured on: hardware, load, and the version of every moving part."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from redis import Redis

from bench.accept import webhook_version
from bench.loadgen import wrk_version
from bench.procs import ROOT
from bench.redisdb import server_version

PACKAGES = ("flask", "werkzeug", "gunicorn", "rq", "redis", "python-gitlab", "requests")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def git_version() -> str:
    done = subprocess.run(["git", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip().removeprefix("git version ")


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def source_state() -> dict[str, Any]:
    """The commit measured, and which product files differed from it (others may be editing them)."""
    def run(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    changed = run("status", "--porcelain", "--", "webhook", "workers").splitlines()
    return {"commit": run("rev-parse", "HEAD") or "unknown", "uncommitted_product_files": changed}


def describe(redis: Redis) -> dict[str, Any]:
    return {
        "source": source_state(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "os": os_name(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            "python": sys.version.split()[0],
            **{name: package_version(name) for name in PACKAGES},
            "redis_server": server_version(redis),
            "git": git_version(),
            "wrk": wrk_version(),
            "adnanh_webhook": webhook_version(),
        },
    }
