"""A real HTTP server on loopback that takes Apprise's ``json://`` notifications, as a chat would."""

from __future__ import annotations

import http.server
import json
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    status: int
    payload: dict[str, Any]

    @property
    def text(self) -> str:
        return f"{self.payload.get('title', '')}\n{self.payload.get('message', '')}"


class ChatReceiver:
    """Records every POST (answered or refused); ``fail_next(n)`` answers the next n with 500."""

    def __init__(self) -> None:
        owner = self
        self.lock = threading.Lock()
        self.posts: list[Received] = []
        self.failures = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with owner.lock:
                    status = 500 if owner.failures > 0 else 200
                    owner.failures = max(0, owner.failures - 1)
                    owner.posts.append(Received(self.path, status, json.loads(body or b"{}")))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = int(self.server.server_address[1])

    def url(self, path: str = "hooks/ops") -> str:
        """The Apprise URL that reaches this receiver (``json://`` posts over plain HTTP)."""
        return f"json://127.0.0.1:{self.port}/{path}"

    def fail_next(self, count: int) -> None:
        with self.lock:
            self.failures = count

    def delivered(self) -> list[Received]:
        """The messages it accepted (answered 200), in arrival order."""
        with self.lock:
            return [post for post in self.posts if post.status == 200]

    def refused(self) -> list[Received]:
        with self.lock:
            return [post for post in self.posts if post.status != 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
