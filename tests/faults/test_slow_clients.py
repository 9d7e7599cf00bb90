"""Slow clients against nginx in front of gunicorn: valid deliveries are still answered within 1 s.

Debian's nginx runs the site file from deploy/nginx/pushdeploy.conf, adapted only where a test
must differ: a private main config (pid, logs and temp dirs under the test's directory), a loopback
port of our own instead of 80/443, no TLS lines (no certificate here), and gunicorn's real port as
the upstream. Everything that is the point -- buffering, body and header timeouts, size limits,
the rate limit on /hooks/ -- is the file's own. Without that file, a minimal config stands in.

Against nginx: 200 slowloris connections, half trickling their headers (reconnecting whenever
nginx cuts them), half sending a body a few bytes a second, while 10 signed deliveries a second
arrive: each must be answered 202 within 1 s. A control first shows the attack works on gunicorn
without nginx in front. Loopback only, bounded in count and time, cleaned up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import ROOT, Stack, free_port
from tests.faults.harness import record_figures, scaled
from tests.helpers import push_body, signed_headers

pytestmark = [pytest.mark.fault, pytest.mark.e2e]

SITE = ROOT / "deploy" / "nginx" / "pushdeploy.conf"
SLOW_HEADERS = 100
SLOW_BODIES = 100
RATE = 10  # valid deliveries a second
ATTACK_SECONDS = scaled(15, 60)
LIMIT = 1.0

MINIMAL_SITE = """
upstream pushdeploy_web { server 127.0.0.1:8000 fail_timeout=0; }
server {
    listen 80;
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    client_header_timeout 10s;
    client_body_timeout 30s;
    proxy_request_buffering on;
    proxy_buffering on;
    location / { proxy_pass http://pushdeploy_web; }
}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def server_blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) of each top-level ``server { … }`` block."""
    blocks = []
    for match in re.finditer(r"(?m)^server\s*\{", text):
        depth, index = 0, match.start()
        while index < len(text):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    blocks.append((match.start(), index + 1))
                    break
            index += 1
    return blocks


def adapt_site(text: str, port: int, upstream: str) -> str:
    """The site file, listening on our loopback port without TLS, proxying to our gunicorn."""
    text = re.sub(r"(?m)^\s*#.*$", "", text)
    for start, end in reversed(server_blocks(text)):
        block = text[start:end]
        if re.search(r"listen\s+(443|\[::\]:443)", block) is None and "return 301" in block:
            text = text[:start] + text[end:]  # the port-80 redirect server
    text = re.sub(r"(?m)^\s*listen\s+\[::\][^;]*;", "", text)
    text = re.sub(r"(?m)^(\s*)listen\s+[^;]*;", rf"\1listen 127.0.0.1:{port};", text)
    text = re.sub(r"(?m)^\s*ssl_\w+[^;]*;", "", text)
    text = re.sub(r"(?m)^(\s*server\s+)127\.0\.0\.1:8000", rf"\g<1>{upstream}", text)
    return text


@dataclass
class Nginx:
    root: Path
    port: int
    upstream: str
    site_source: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = nginx_binary()
        assert binary
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        site = self.root / "site.conf"
        source = SITE.read_text() if self.site_source == str(SITE) else MINIMAL_SITE
        site.write_text(adapt_site(source, self.port, self.upstream))
        main = self.root / "nginx.conf"
        main.write_text(
            f"daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n"
            f"pid {self.root}/nginx.pid;\nerror_log {self.root}/error.log warn;\n"
            "worker_rlimit_nofile 8192;\nevents { worker_connections 4096; }\n"
            "http {\n"
            f"  access_log {self.root}/access.log;\n"
            + "".join(
                f"  {name}_temp_path {self.root}/{name};\n" for name in ("proxy", "fastcgi", "uwsgi", "scgi")
            )
            + f"  client_body_temp_path {self.root}/body;\n"
            f"  include {site};\n"
            "}\n"
        )
        check = subprocess.run([binary, "-t", "-c", str(main)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, (
            f"nginx -t refused the adapted site file:\n{check.stderr}\n{site.read_text()}"
        )
        self.process = subprocess.Popen(
            [binary, "-c", str(main)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"nginx did not listen: {(self.root / 'error.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[str], Nginx]]:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    started: list[Nginx] = []

    def make(upstream: str) -> Nginx:
        server = Nginx(tmp_path / "nginx", free_port(), upstream, str(SITE) if SITE.exists() else "minimal")
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


@dataclass
class Connection:
    kind: str  # "headers" (never finishes its header) or "body" (never finishes its body)
    pending: bytes
    due: float


@dataclass
class Slowloris:
    """Slow connections driven from one thread with non-blocking sockets: no thread per connection."""

    port: int
    interval: float = 1.0  # seconds between a connection's trickles of a few bytes
    body_length: int = 100_000
    connections: dict[socket.socket, Connection] = field(default_factory=dict)
    opened: int = 0
    cut: int = 0  # connections the server answered or closed (another is opened in their place)

    def open(self, kind: str) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        sock.setblocking(False)
        first = b"POST /hooks/gitlab/sample-app HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if kind == "body":
            first += f"Content-Type: application/json\r\nContent-Length: {self.body_length}\r\n\r\n".encode()
        self.connections[sock] = Connection(kind, first, time.monotonic())
        self.opened += 1

    def tick(self) -> None:
        now = time.monotonic()
        for sock, conn in list(self.connections.items()):
            if self._answered_or_closed(sock):
                self.replace(sock)
                continue
            if now < conn.due:
                continue
            chunk = conn.pending or (b"X-Slow: 1\r\n" if conn.kind == "headers" else b"{ ")
            try:
                sent = sock.send(chunk)
            except BlockingIOError:
                continue
            except OSError:
                self.replace(sock)
                continue
            conn.pending = chunk[sent:]
            conn.due = now + (0.0 if conn.pending else self.interval)

    def replace(self, sock: socket.socket) -> None:
        kind = self.connections[sock].kind
        self.close(sock)
        self.cut += 1
        self.open(kind)

    @staticmethod
    def _answered_or_closed(sock: socket.socket) -> bool:
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True  # an answer (400, 408, 413) or EOF: the server is done with this one

    def close(self, sock: socket.socket) -> None:
        self.connections.pop(sock, None)
        with contextlib.suppress(OSError):
            sock.close()

    def close_all(self) -> None:
        for sock in list(self.connections):
            self.close(sock)


def deliveries(
    base_url: str, count: int, rate: float, during: Callable[[], None], timeout: float = 5
) -> list[tuple[int, float]]:
    """``count`` signed deliveries at ``rate`` a second, calling ``during`` between them."""
    sha = "ab" * 20
    results: list[tuple[int, float]] = []
    started = time.monotonic()
    for index in range(count):
        while time.monotonic() < started + index / rate:
            during()
            time.sleep(0.01)
        body = push_body(sha)
        began = time.monotonic()
        try:
            answer = requests.post(
                f"{base_url}/hooks/gitlab/sample-app",
                data=body,
                headers=signed_headers(body),
                timeout=timeout,
            )
            results.append((answer.status_code, time.monotonic() - began))
        except requests.RequestException:
            results.append((0, time.monotonic() - began))
    return results


def test_valid_deliveries_are_answered_within_a_second_through_slowloris(
    fault_stack: Callable[..., Stack], nginx: Callable[[str], Nginx]
) -> None:
    stack: Stack = fault_stack(build=[], deploy=["true"])
    stack.start_web(workers=2)
    upstream = stack.base_url.removeprefix("http://")
    gunicorn_port = int(upstream.rsplit(":", 1)[1])

    # Control: the same attack, small, straight at gunicorn's two sync workers stalls a delivery.
    control = Slowloris(gunicorn_port)
    try:
        for _ in range(4):
            control.open("headers")
        for _ in range(10):
            control.tick()
            time.sleep(0.1)
        stalled = deliveries(stack.base_url, 1, 1, control.tick, timeout=2 * LIMIT)
    finally:
        control.close_all()
    assert stalled[0][0] == 0 or stalled[0][1] > LIMIT, (
        f"gunicorn alone answered through the attack: {stalled}"
    )

    proxy = nginx(upstream)
    base = f"http://127.0.0.1:{proxy.port}"
    attack = Slowloris(proxy.port)
    try:
        for index in range(SLOW_HEADERS):
            attack.open("headers")
            if index % 10 == 9:
                attack.tick()
        for _ in range(SLOW_BODIES):  # ramped: each body's request counts against nginx's rate limit
            attack.open("body")
            attack.tick()
            time.sleep(0.1)
        assert len(attack.connections) == SLOW_HEADERS + SLOW_BODIES
        results = deliveries(base, RATE * ATTACK_SECONDS, RATE, attack.tick)
        still_open = len(attack.connections)
    finally:
        attack.close_all()

    latencies = sorted(seconds for _status, seconds in results)
    late = [(status, round(seconds, 3)) for status, seconds in results if status != 202 or seconds > LIMIT]
    record_figures(
        "slow_clients",
        {
            "site_file": proxy.site_source.replace(str(ROOT) + "/", ""),
            "slow_connections": SLOW_HEADERS + SLOW_BODIES,
            "slow_connections_opened": attack.opened,
            "cut_by_nginx": attack.cut,
            "open_at_end": still_open,
            "deliveries": len(results),
            "late_or_failed": len(late),
            "p50_s": round(latencies[len(latencies) // 2], 3),
            "p99_s": round(latencies[int(len(latencies) * 0.99) - 1], 3),
            "max_s": round(latencies[-1], 3),
            "control_gunicorn_alone_s": round(stalled[0][1], 2),
        },
    )
    assert not late, f"{len(late)} of {len(results)} deliveries late or failed: {late[:10]}"
