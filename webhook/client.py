"""A small client of pushdeploy's own JSON API, for the operator commands of the CLI.

It calls as a person when it can: a personal token from ``PUSHDEPLOY_TOKEN``, else from the token
file in the user's home (:func:`token_file`, which must be private to its owner); the server's
``admin_token`` from the configuration is the fallback, for the operator on the server itself.
A person on their own machine has no configuration (it holds the server's secrets): the server's
URL then comes from ``--url`` or ``PUSHDEPLOY_URL``.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from workers import routes
from workers.config import Settings


class ApiFailure(Exception):
    """The server refused or could not be reached; ``status`` is the HTTP code, 0 when unreachable."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


TOKEN_ENV = "PUSHDEPLOY_TOKEN"  # noqa: S105 - the variable's name, not a token
URL_ENV = "PUSHDEPLOY_URL"


def token_file(environ: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/pushdeploy/token``, by default ``~/.config/pushdeploy/token``."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "pushdeploy" / "token"


def personal_token(environ: Mapping[str, str]) -> str | None:
    """The person's token from the environment or their token file, or None when they have neither.

    Raises:
        ApiFailure: the token file can be read by others than its owner (it is then not used).
    """
    given = environ.get(TOKEN_ENV, "").strip()
    if given:
        return given
    path = token_file(environ)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ApiFailure(
            401,
            f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}), so it is not used: "
            f"chmod 600 {path}",
        )
    text = path.read_text(encoding="utf-8").strip()
    return text or None


class Client:
    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    @classmethod
    def for_settings(
        cls, settings: Settings | None, url: str | None = None, environ: Mapping[str, str] | None = None
    ) -> Client:
        """The server from ``url``, else ``PUSHDEPLOY_URL``, else ``server.public_url``; the token as
        the module says. The admin token goes only to ``url`` or ``public_url``: a ``PUSHDEPLOY_URL``
        left in the environment must not carry it elsewhere. ``settings`` is None without a
        configuration file.

        Raises:
            ApiFailure: no server URL (status 400) or no token (401); the message says what to set.
        """
        environ = os.environ if environ is None else environ
        base_url = url or environ.get(URL_ENV, "").strip() or (settings.server.public_url if settings else "")
        if not base_url:
            raise ApiFailure(
                400, f"no server to call: pass --url or set {URL_ENV} (no configuration file was found)"
            )
        personal = personal_token(environ)
        if personal is not None:
            return cls(base_url, personal)
        admin = settings.server.admin_token if settings else None
        if settings is None or admin is None:
            fallback = (
                f"{settings.path} has no server.admin_token to fall back on"
                if settings
                else "without a configuration file there is no admin token to fall back on"
            )
            raise ApiFailure(
                401,
                f"no token: set {TOKEN_ENV} or write a personal token to {token_file(environ)} (mode 0600); "
                + fallback,
            )
        return cls(url or settings.server.public_url, admin.reveal())  # break glass: never PUSHDEPLOY_URL

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
