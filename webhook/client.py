"""A small client of pushdeploy's own JSON API, for the operator commands of the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import requests

from workers import routes
from workers.config import Settings


class ApiFailure(Exception):
    """The server refused or could not be reached; ``status`` is the HTTP code, 0 when unreachable."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class Client:
    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    @classmethod
    def for_settings(cls, settings: Settings, url: str | None = None) -> Client:
        token = settings.server.admin_token
        if token is None:
            raise ApiFailure(401, f"{settings.path}: server.admin_token is not set, so the API is disabled")
        return cls(url or settings.server.public_url, token.reveal())

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params={k: v for k, v in params.items() if v not in (None, "")})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, json=body or {})

    def stream(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """NDJSON records of a streaming endpoint, one dict each."""
        try:
            with self.session.get(
                f"{self.base_url}{routes.API_PREFIX}{path}",
                params=params,
                stream=True,
                timeout=(self.timeout, 900),
            ) as answer:
                self._check(answer)
                for line in answer.iter_lines():
                    if line:
                        yield json.loads(line)
        except requests.RequestException as exc:
            raise ApiFailure(0, f"cannot reach {self.base_url}: {type(exc).__name__}") from None

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            answer = self.session.request(
                method, f"{self.base_url}{routes.API_PREFIX}{path}", timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise ApiFailure(0, f"cannot reach {self.base_url}: {type(exc).__name__}") from None
        self._check(answer)
        return answer.json()

    @staticmethod
    def _check(answer: requests.Response) -> None:
        if answer.status_code < 400:
            return
        try:
            message = str(answer.json().get("error", answer.reason))
        except ValueError:
            message = answer.reason
        raise ApiFailure(answer.status_code, message)
