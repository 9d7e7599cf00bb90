"""``pushdeploy secrets``: encrypt a value for the config, rotate the config to the newest key.

Keys come from ``PUSHDEPLOY_SECRET_KEYS`` (newest first) and are only ever shown by id. A plaintext
is read from stdin or a prompt that does not echo, never from the command line, where shell
history and ``ps`` would keep it. ``rotate`` rewrites only the tokens inside the config file's
text, so comments, order and spacing stay byte for byte; the file is replaced atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import stat
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from workers.config import config_path, secret_values
from workers.secrets import (
    FERNET_PREFIX,
    KEYS_VARIABLE,
    SIGNING_PREFIX,
    Keyring,
    SecretError,
    decode_signing_key,
    key_id,
    new_fernet_key,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

TOKEN_RE = re.compile(re.escape(FERNET_PREFIX) + r"[A-Za-z0-9_=-]+")
"""A ``fernet:`` value as it stands in the file: Fernet tokens are url-safe base64, never escaped."""


class RotationError(Exception):
    """The file cannot be rotated; ``problems`` name each value (by key path, never by content)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Rotation:
    """What rotating one config text does: the new text and, per encrypted value, its key before."""

    text: str
    newest: str
    before: dict[str, str] = field(default_factory=dict)  # value's key path → id of the key it used

    @property
    def rotated(self) -> list[str]:
        return [where for where, kid in self.before.items() if kid != self.newest]


def add_commands(sub: Any) -> None:
    """Register ``secrets encrypt|rotate|new-key`` on the CLI's subparsers."""
    text = "encrypt config secrets with Fernet keys from $PUSHDEPLOY_SECRET_KEYS"
    group: argparse.ArgumentParser = sub.add_parser("secrets", help=text, description=text)
    group.set_defaults(handler=lambda _args: _usage(group))
    commands = group.add_subparsers(title="secrets commands", metavar="COMMAND")

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text, description=help_text)
        parser.set_defaults(handler=handler)
        return parser

    command("encrypt", cmd_encrypt, "read a secret from stdin (or a prompt) and print its fernet: value")
    sp = command("rotate", cmd_rotate, "re-encrypt the config file's fernet: values with the newest key")
    sp.add_argument("--check", action="store_true", help="only report what would change (exit 1 if any)")
    command("new-key", cmd_new_key, "print a new Fernet key (its id goes to stderr)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


# -- commands -----------------------------------------------------------------


def cmd_new_key(args: argparse.Namespace) -> int:
    key = new_fernet_key()
    print(key)
    print(
        f"key id {key_id(key)}: put it first in {KEYS_VARIABLE} (newest first), run "
        "`pushdeploy secrets rotate`, restart, then drop the old key",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_encrypt(args: argparse.Namespace) -> int:
    keys = _keyring()
    if keys is None:
        return EXIT_USAGE
    try:
        plaintext = read_secret(sys.stdin)
    except ValueError as exc:
        print(f"pushdeploy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(keys.encrypt(plaintext))
    print(f"encrypted with key id {keys.newest_id}", file=sys.stderr)
    return EXIT_OK


def cmd_rotate(args: argparse.Namespace) -> int:
    keys = _keyring()
    if keys is None:
        return EXIT_USAGE
    path = config_path(getattr(args, "config", None), os.environ).resolve()
    try:
        rotation = rotate_file(path, keys, write=not args.check)
    except OSError as exc:
        print(f"pushdeploy: cannot rotate {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    except RotationError as exc:
        print(f"pushdeploy: {path} is unchanged:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_FAILURE
    rotated, total = len(rotation.rotated), len(rotation.before)
    if args.check:
        for where in rotation.rotated:
            print(f"  {where}: key {rotation.before[where]} → {rotation.newest}")
        print(f"{path}: {rotated} of {total} encrypted value(s) would be rotated to key {rotation.newest}")
        return EXIT_FAILURE if rotated else EXIT_OK
    if rotated:
        print(f"{path}: rotated {rotated} value(s) to key {rotation.newest}", end="")
        print(f" ({total - rotated} already used it)" if total > rotated else "")
    else:
        print(f"{path}: all {total} encrypted value(s) already use key {rotation.newest}")
    return EXIT_OK


def _keyring() -> Keyring | None:
    """The keys from the environment, or None after saying what is wrong."""
    try:
        keys = Keyring.from_environ(os.environ)
    except SecretError as exc:
        print(f"pushdeploy: {exc}", file=sys.stderr)
        return None
    if keys is None:
        print(
            f"pushdeploy: {KEYS_VARIABLE} is not set (make a key with `pushdeploy secrets new-key`)",
            file=sys.stderr,
        )
    return keys


# -- the work -----------------------------------------------------------------


def read_secret(stream: TextIO) -> str:
    """The plaintext from a pipe (trailing newline removed, like ``file:``) or typed twice at a prompt.

    Raises:
        ValueError: nothing was given, the two typed values differ, or a ``whsec_`` value is not a
            signing token GitLab accepts (``SecretError`` is a ValueError).
    """
    if stream.isatty():
        value = getpass.getpass("secret to encrypt: ")
        if getpass.getpass("the same again: ") != value:
            raise ValueError("the two values differ: nothing was encrypted")
    else:
        value = stream.read().rstrip("\r\n")
    if not value.strip():
        raise ValueError("nothing to encrypt: the secret is empty")
    if value.startswith(SIGNING_PREFIX):
        # A signing token GitLab would refuse is better refused before it is hidden in ciphertext.
        decode_signing_key(value)
    return value


def rotate_text(text: str, keys: Keyring) -> Rotation:
    """Re-encrypt every ``fernet:`` secret not yet under the newest key; all or nothing.

    Only the values the loader decrypts count (``admin_token``, ``token``, ``secret_token``,
    ``signing_token``); a ``fernet:`` string anywhere else is left alone, as the loader leaves it.

    Raises:
        RotationError: a value no key decrypts, a ``signing_token`` GitLab would refuse, not valid
            TOML, or a value the text spells oddly.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RotationError([f"not valid TOML: {exc}"]) from None
    rotation = Rotation(text, keys.newest_id)
    replacements: dict[str, str] = {}
    problems: list[str] = []
    for where, value in _encrypted_values(raw):
        kid = keys.key_for(value)
        if kid is None:
            problems.append(f"{where}: none of the keys ({keys.described()}) decrypts it")
            continue
        rotation.before[where] = kid
        if _is_signing_token(where):
            try:
                decode_signing_key(keys.decrypt(value, where))
            except SecretError as exc:
                problems.append(f"{where}: {exc}")
                continue
        if kid != keys.newest_id and value not in replacements:
            replacements[value] = keys.rotate(value)
    if problems:
        raise RotationError(problems)
    rotation.text = TOKEN_RE.sub(lambda m: replacements.get(m.group(0), m.group(0)), text)
    # The new text must mean exactly the old one with those values swapped, or nothing is written.
    if tomllib.loads(rotation.text) != _replaced(raw, replacements):
        missing = [w for w, v in _encrypted_values(raw) if v in replacements and v not in text]
        raise RotationError(
            [f"{where}: its value is spelled with escapes; write it plainly" for where in missing]
            or ["the rotated file would not match the original: nothing written"]
        )
    return rotation


def rotate_file(path: Path, keys: Keyring, write: bool = True) -> Rotation:
    """Rotate ``path`` in place (temp file + ``os.replace``, same mode and owner) when anything changes."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RotationError(["the file is not UTF-8 text"]) from None
    rotation = rotate_text(text, keys)
    if write and rotation.rotated:
        replace_file(path, rotation.text.encode("utf-8"))
    return rotation


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path``, fsync it, give it ``path``'s mode and owner, rename it over."""
    st = path.stat()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, stat.S_IMODE(st.st_mode))
        with contextlib.suppress(PermissionError):  # only root may give a file to someone else
            os.chown(temporary, st.st_uid, st.st_gid)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _is_signing_token(where: str) -> bool:
    """``projects.shop.signing_token`` or one of its list entries, ``…signing_token[1]``."""
    return re.search(r"\.signing_token(\[\d+\])?$", where) is not None


def _encrypted_values(raw: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    return ((where, value) for where, value in secret_values(raw) if value.startswith(FERNET_PREFIX))


def _replaced(node: Any, replacements: dict[str, str]) -> Any:
    if isinstance(node, str):
        return replacements.get(node, node)
    if isinstance(node, dict):
        return {name: _replaced(value, replacements) for name, value in node.items()}
    if isinstance(node, list):
        return [_replaced(value, replacements) for value in node]
    return node
