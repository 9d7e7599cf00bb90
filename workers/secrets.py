"""Secret values that cannot leak through ``repr``, ``str``, logs or tracebacks, and their sources.

A configured secret is a literal, ``env:NAME`` or ``file:/path``; any of the three may hold
``fernet:<token>``, decrypted with the keys in ``PUSHDEPLOY_SECRET_KEYS`` (newest first). Keys are
only ever named by their id (:func:`key_id`), so no message can carry a key or a plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from workers.errors import EngineError

MASK = "**********"
SIGNING_PREFIX = "whsec_"
SIGNING_KEY_BYTES = 32
"""GitLab accepts a webhook signing token only as ``whsec_`` + base64 of exactly this many bytes."""
FERNET_PREFIX = "fernet:"
KEYS_VARIABLE = "PUSHDEPLOY_SECRET_KEYS"

FERNET_KEY_RE = re.compile(r"[A-Za-z0-9_-]{43}=")
"""The only spelling of a Fernet key we accept, so each key has exactly one id."""


class SecretError(EngineError, ValueError):
    """A secret reference could not be resolved; the message never holds the value."""


class NoKeys(SecretError):
    """A ``fernet:`` value was met but no key is configured."""


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
    """Return the HMAC key bytes of a ``whsec_`` secret, in the one form GitLab accepts.

    Standard Webhooks allows 24 to 64 bytes, but GitLab refuses a signing token of any length but 32:
    a key GitLab cannot hold would leave every delivery unsigned, so it is refused here already.
    """
    make = "make one with `pushdeploy new-secret`"
    if not value.startswith(SIGNING_PREFIX):
        raise SecretError(f"a signing token must start with 'whsec_' ({make})")
    encoded = value[len(SIGNING_PREFIX) :]
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"a signing token must be 'whsec_' followed by standard base64 ({make})") from None
    if len(key) != SIGNING_KEY_BYTES:
        raise SecretError(
            f"a signing token must decode to exactly {SIGNING_KEY_BYTES} bytes, the only length GitLab "
            f"accepts; this one has {len(key)} ({make})"
        )
    return key


def new_signing_key() -> str:
    """A fresh signing key in GitLab's format: ``whsec_`` + base64 of 32 random bytes."""
    return SIGNING_PREFIX + base64.b64encode(os.urandom(SIGNING_KEY_BYTES)).decode("ascii")


def key_id(key: str) -> str:
    """The name a key goes by in messages: the first 8 hex digits of SHA-256 of its text."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def new_fernet_key() -> str:
    """A fresh key for ``PUSHDEPLOY_SECRET_KEYS``: 32 random bytes, url-safe base64."""
    return Fernet.generate_key().decode("ascii")


class Keyring:
    """The Fernet keys of ``PUSHDEPLOY_SECRET_KEYS``: the first encrypts, any of them decrypts."""

    __slots__ = ("_fernets", "_multi", "ids")

    def __init__(self, keys: Sequence[str]) -> None:
        """Raises SecretError naming the key's position (never its text) when one is malformed."""
        if not keys:
            raise SecretError(f"{KEYS_VARIABLE} holds no key")
        fernets = []
        for number, key in enumerate(keys, start=1):
            if not FERNET_KEY_RE.fullmatch(key):
                raise SecretError(f"key #{number} in {KEYS_VARIABLE} is not a Fernet key")
            fernets.append(Fernet(key))
        self._fernets = tuple(fernets)
        self._multi = MultiFernet(fernets)
        self.ids = tuple(key_id(key) for key in keys)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Keyring | None:
        """The keys in ``PUSHDEPLOY_SECRET_KEYS`` (comma- or whitespace-separated), or None if unset."""
        keys = [k for k in re.split(r"[\s,]+", environ.get(KEYS_VARIABLE, "")) if k]
        return cls(keys) if keys else None

    @property
    def newest_id(self) -> str:
        return self.ids[0]

    def described(self) -> str:
        return f"id {self.ids[0]}" if len(self.ids) == 1 else f"ids {', '.join(self.ids)}"

    def encrypt(self, plaintext: str) -> str:
        """``fernet:<token>`` of ``plaintext`` under the newest key."""
        return FERNET_PREFIX + self._multi.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, value: str, what: str = "it") -> str:
        """The text inside a ``fernet:`` value; ``what`` names the value in the error."""
        try:
            plain = self._multi.decrypt(_token(value))
        except InvalidToken:
            raise SecretError(f"none of the keys ({self.described()}) decrypts {what}") from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"{what} does not decrypt to UTF-8 text") from None

    def rotate(self, value: str, what: str = "it") -> str:
        """The same secret re-encrypted under the newest key (MultiFernet.rotate keeps its timestamp)."""
        try:
            return FERNET_PREFIX + self._multi.rotate(_token(value)).decode("ascii")
        except InvalidToken:
            raise SecretError(f"none of the keys ({self.described()}) decrypts {what}") from None

    def key_for(self, value: str) -> str | None:
        """The id of the key that decrypts ``value``, or None."""
        token = _token(value)
        for fernet, kid in zip(self._fernets, self.ids, strict=True):
            try:
                fernet.decrypt(token)
            except InvalidToken:
                continue
            return kid
        return None

    def __repr__(self) -> str:
        return f"Keyring({self.described()})"


def _token(value: str) -> bytes:
    # A non-ASCII token can only be a damaged one; Fernet then says InvalidToken like for any other.
    return value.removeprefix(FERNET_PREFIX).encode("ascii", "replace")


def resolve(reference: str, environ: Mapping[str, str], base_dir: Path, keys: Keyring | None = None) -> str:
    """Resolve ``env:NAME``, ``file:/path`` or a literal to the secret's text.

    Whichever of the three holds ``fernet:<token>`` is decrypted with ``keys`` (one level only:
    a decrypted ``env:…`` is the secret itself, not another reference).

    Raises:
        NoKeys: the value is encrypted and ``keys`` is None.
        SecretError: the variable is unset, the file unreadable, the value empty or undecryptable.
    """
    what = "it"
    if reference.startswith("env:"):
        name = reference[4:]
        if not name:
            raise SecretError("'env:' needs a variable name")
        if name not in environ:
            raise SecretError(f"environment variable {name} is not set")
        value = environ[name]
        what = f"the value of {name}"
    elif reference.startswith("file:"):
        path = Path(reference[5:]).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SecretError(f"{path} is not UTF-8 text") from None
        what = f"the contents of {path}"
    else:
        value = reference
    if value.startswith(FERNET_PREFIX):
        if keys is None:
            subject = "the value" if what == "it" else what
            raise NoKeys(f"{subject} is encrypted but {KEYS_VARIABLE} is not set")
        value = keys.decrypt(value, what)
    if not value.strip():
        raise SecretError("the secret is empty")
    return value
