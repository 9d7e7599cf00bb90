"""Real OpenSSH servers on loopback addresses (127.0.0.2, 127.0.0.3, …), one per "host".

Each host has its own sshd (own host key, own config, ``UsePAM no``), its own target directory and
a small HTTP health server on its own address, which answers 200 while the host has a ``current``
release whose ``health.txt`` (if any) does not name the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
HAVE_SSHD = os.path.exists(SSHD) and shutil.which("rsync") is not None and shutil.which("ssh") is not None
SKIP_REASON = "needs OpenSSH's sshd and ssh and rsync (Debian openssh-server, openssh-client, rsync)"


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> str:
    """A new ed25519 key at ``path``; returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class SshHost:
    address: str
    port: int
    root: Path  # the target directory on this "host"
    home: Path  # sshd's config, keys and pid file
    host_key: str  # public key line
    env: dict[str, str] = field(default_factory=dict)  # set for every session (sshd's SetEnv)
    process: subprocess.Popen[bytes] | None = None
    health: ThreadingHTTPServer | None = None
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"ssh://{current_user()}@{self.address}:{self.port}{self.root}"

    @property
    def name(self) -> str:
        return f"{self.address}:{self.port}"

    def known_hosts_line(self, key: str | None = None) -> str:
        return f"[{self.address}]:{self.port} {key or self.host_key}"

    def current(self) -> str:
        """The release id ``current`` points at, or ""."""
        try:
            return os.readlink(self.root / "current").rpartition("/")[2]
        except FileNotFoundError:
            return ""

    def releases(self) -> list[str]:
        folder = self.root / "releases"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def start(self) -> None:
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.home / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.home / "sshd.log", "ab"),  # noqa: SIM115 - the child keeps it
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((self.address, self.port), 0.2):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"sshd on {self.name} did not start: {(self.home / 'sshd.log').read_text()}")

    def restart(self) -> None:
        """Start its sshd again, on the same port, with the config as it is now (``env``)."""
        self.kill()
        write_sshd_config(self)
        self.start()

    def kill(self) -> None:
        """Make the host unreachable: its sshd and every connection it serves."""
        if self.process is None:
            return
        for pid in [*descendants(self.process.pid), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.process = None


def current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found.extend([child, *descendants(child)])
    return found


class HealthHandler(BaseHTTPRequestHandler):
    host: SshHost

    def do_GET(self) -> None:
        current = self.host.root / "current"
        try:
            text = (current / "health.txt").read_text()
        except OSError:
            text = "" if current.is_dir() else self.host.address  # no release yet: unhealthy
        self.send_response(503 if self.host.address in text else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def ssh_hosts(base: Path, count: int, client_key: Path) -> Iterator[list[SshHost]]:
    """Start ``count`` hosts; the client key at ``client_key`` (made if missing) may log in to all."""
    if not client_key.exists():
        keygen(client_key)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    hosts: list[SshHost] = []
    try:
        for number in range(count):
            address = f"127.0.0.{number + 2}"
            home = base / f"host-{number + 1}"
            home.mkdir(parents=True)
            host_key = keygen(home / "host_ed25519")
            (home / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
            host = SshHost(address, 0, home / "srv" / "app", home, host_key)
            host.root.parent.mkdir()
            hosts.append(host)
            start_sshd(host)
        health_port = serve_health(hosts)
        for host in hosts:
            (host.home / "health_port").write_text(str(health_port))
        yield hosts
    finally:
        for host in hosts:
            host.kill()
            if host.health is not None:
                host.health.shutdown()
                host.health.server_close()


def start_sshd(host: SshHost, tries: int = 5) -> None:
    """Start the host's sshd on a free port; another try on another port if it was taken meanwhile."""
    for attempt in range(tries):
        host.port = free_port(host.address)
        write_sshd_config(host)
        try:
            host.start()
            return
        except RuntimeError:
            if attempt == tries - 1:
                raise


def serve_health(hosts: list[SshHost], tries: int = 10) -> int:
    """One health server per host, all on the same port (the URL's ``{host}`` is all that differs)."""
    for _ in range(tries):
        port = free_port(hosts[0].address)
        servers: list[ThreadingHTTPServer] = []
        try:
            for host in hosts:
                handler = type("Handler", (HealthHandler,), {"host": host})
                servers.append(ThreadingHTTPServer((host.address, port), handler))
        except OSError:  # the port is taken on another address: try another one
            for server in servers:
                server.server_close()
            continue
        for host, server in zip(hosts, servers, strict=True):
            host.health = server
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            host.threads.append(thread)
        return port
    raise RuntimeError("no port free on every host address for the health servers")


def write_sshd_config(host: SshHost) -> None:
    (host.home / "sshd_config").write_text(
        "\n".join(
            [
                f"ListenAddress {host.address}:{host.port}",
                f"HostKey {host.home / 'host_ed25519'}",
                f"PidFile {host.home / 'sshd.pid'}",
                f"AuthorizedKeysFile {host.home / 'authorized_keys'}",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "MaxSessions 50",
                "MaxStartups 50",
                "LogLevel ERROR",
                # The hosts log in as whoever runs the tests, whose login shell may be bash: Debian's
                # bash reads ~/.bashrc for every command sshd starts unless it was started from a
                # shell. A developer's can cost 0.15 CPU seconds (pyenv, cargo), and pyenv's rehash
                # takes one lock file for every login on the machine: parallel test workers queue on
                # it, and one left behind by a session a test killed stalls every later login 60 s.
                # A real target's deploy user has /bin/sh (docs/many-hosts.md); SHLVL=1 makes bash
                # behave as that.
                "SetEnv " + " ".join(f"{name}={value}" for name, value in {"SHLVL": "1", **host.env}.items()),
                "",
            ]
        )
    )


def health_port(host: SshHost) -> int:
    return int((host.home / "health_port").read_text())


def remote_processes(marker: str) -> list[int]:
    """Pids of processes whose command line is ``marker`` (the hosts share this machine).

    Exact, so the ``ssh`` client carrying the remote command (and its shell) do not count.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if cmdline.strip() == marker:
            found.append(int(entry.name))
    return found
