"""Secret values that cannot leak through ``repr``, ``str``, logs or tracebacks."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

MASK = "**********"
SIGNING_PREFIX = "whsec_"


class SecretError(ValueError):
    """A secret reference could not be resolved; the message never holds the value."""


class Secret:
    """A string that prints as a mask; call :meth:`reveal` at the one place that needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        # Identity of configuration, not authentication: authentication uses hmac.compare_digest.
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SigningKey(Secret):
    """A Standard Webhooks ``whsec_`` key, decoded once so each delivery only runs the HMAC."""

    __slots__ = ("key",)

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self.key = decode_signing_key(value)

    def __repr__(self) -> str:
        return f"SigningKey('{MASK}')"


def decode_signing_key(value: str) -> bytes:
    """Return the HMAC key bytes of a ``whsec_`` secret, as GitLab and Standard Webhooks define them."""
    if not value.startswith(SIGNING_PREFIX):
        raise SecretError("a signing token must start with 'whsec_' (make one with `pushdeploy new-secret`)")
    encoded = value[len(SIGNING_PREFIX) :]
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("a signing token must be 'whsec_' followed by standard base64") from None
    if not 24 <= len(key) <= 64:
        raise SecretError(f"a signing token must decode to 24..64 bytes, this one has {len(key)}")
    return key


def new_signing_key() -> str:
    """A fresh signing key in GitLab's format: ``whsec_`` + base64 of 32 random bytes."""
    return SIGNING_PREFIX + base64.b64encode(os.urandom(32)).decode("ascii")


def resolve(reference: str, environ: Mapping[str, str], base_dir: Path) -> str:
    """Resolve ``env:NAME``, ``file:/path`` or a literal to the secret's text.

    Raises:
        SecretError: the variable is unset, the file unreadable, or the value empty.
    """
    if reference.startswith("env:"):
        name = reference[4:]
        if not name:
            raise SecretError("'env:' needs a variable name")
        if name not in environ:
            raise SecretError(f"environment variable {name} is not set")
        value = environ[name]
    elif reference.startswith("file:"):
        path = Path(reference[5:]).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"cannot read {path}: {exc.strerror}") from None
    else:
        value = reference
    if not value.strip():
        raise SecretError("the secret is empty")
    return value
