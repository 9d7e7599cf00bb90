"""Secrets print as a mask everywhere, signing keys follow GitLab's whsec_ format, references resolve."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from workers.secrets import (
    MASK,
    Secret,
    SecretError,
    SigningKey,
    decode_signing_key,
    new_signing_key,
    resolve,
)

CANARY = "canary-secret-6d1f0b"
KEY_BYTES = bytes(range(32))
SIGNING = "whsec_" + base64.b64encode(KEY_BYTES).decode()


# -- Secret ------------------------------------------------------------------


def test_secret_never_prints_its_value() -> None:
    secret = Secret(CANARY)
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % secret, "{}".format(secret)]  # noqa: UP031, UP032
    shown.append(repr([secret, {"token": secret}, (secret,)]))
    for text in shown:
        assert CANARY not in text
        assert MASK in text
    assert secret.reveal() == CANARY


def test_secret_in_an_exception_or_log_record_stays_masked(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret(CANARY)
    with caplog.at_level(logging.INFO):
        logging.getLogger("pushdeploy.test").info("using token %s", secret)
    error = RuntimeError("bad token", secret)
    assert CANARY not in caplog.text
    assert CANARY not in str(error) and CANARY not in repr(error)


def test_secrets_compare_by_value_and_hash_for_sets() -> None:
    assert Secret(CANARY) == Secret(CANARY)
    assert Secret(CANARY) != Secret(CANARY + "x")
    assert Secret(CANARY) != CANARY  # a plain string is not a configured secret
    assert len({Secret(CANARY), Secret(CANARY)}) == 1


# -- SigningKey ---------------------------------------------------------------


def test_signing_key_decodes_the_bytes_after_whsec() -> None:
    key = SigningKey(SIGNING)
    assert key.key == KEY_BYTES
    assert key.reveal() == SIGNING
    assert SIGNING not in repr(key) and SIGNING not in str(key)
    assert base64.b64encode(KEY_BYTES).decode() not in repr(key)


def test_gitlab_documented_key_is_accepted() -> None:
    # The example key from the Standard Webhooks specification (24 bytes).
    assert len(decode_signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")) == 24


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (base64.b64encode(KEY_BYTES).decode(), "must start with 'whsec_'"),
        ("WHSEC_" + base64.b64encode(KEY_BYTES).decode(), "must start with 'whsec_'"),
        ("whsec_", "decode to 24..64 bytes, this one has 0"),
        ("whsec_not base64!!", "standard base64"),
        ("whsec_" + base64.b64encode(KEY_BYTES).decode().rstrip("="), "standard base64"),
        ("whsec_" + base64.urlsafe_b64encode(b"\xff" * 32).decode(), "standard base64"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "this one has 16"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "this one has 65"),
    ],
)
def test_bad_signing_keys_are_refused_without_echoing_them(value: str, complaint: str) -> None:
    with pytest.raises(SecretError) as caught:
        SigningKey(value)
    assert complaint in str(caught.value)
    assert value not in str(caught.value)


def test_signing_key_bounds_are_inclusive() -> None:
    assert len(decode_signing_key("whsec_" + base64.b64encode(b"a" * 24).decode())) == 24
    assert len(decode_signing_key("whsec_" + base64.b64encode(b"a" * 64).decode())) == 64


def test_new_signing_key_is_32_random_bytes_in_gitlab_format() -> None:
    first, second = new_signing_key(), new_signing_key()
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
    assert SigningKey(first).key != SigningKey(second).key


# -- resolve ------------------------------------------------------------------


def test_literal_is_returned_as_is(tmp_path: Path) -> None:
    assert resolve(CANARY, {}, tmp_path) == CANARY


def test_env_reference_reads_the_injected_environment(tmp_path: Path) -> None:
    assert resolve("env:HOOK_TOKEN", {"HOOK_TOKEN": CANARY}, tmp_path) == CANARY


def test_unset_variable_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="environment variable HOOK_TOKEN is not set"):
        resolve("env:HOOK_TOKEN", {"OTHER": CANARY}, tmp_path)


def test_env_without_a_name_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="needs a variable name"):
        resolve("env:", {"": CANARY}, tmp_path)


def test_empty_or_blank_values_are_errors(tmp_path: Path) -> None:
    (tmp_path / "blank").write_text(" \n")
    for reference, environ in [
        ("", {}),
        ("env:EMPTY", {"EMPTY": ""}),
        ("env:EMPTY", {"EMPTY": "  "}),
        ("file:blank", {}),
    ]:
        with pytest.raises(SecretError, match="the secret is empty"):
            resolve(reference, environ, tmp_path)


def test_file_reference_strips_only_the_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(f" {CANARY}\r\n")
    assert resolve(f"file:{tmp_path / 'token'}", {}, Path("/nonexistent")) == f" {CANARY}"


def test_relative_file_reference_resolves_against_the_base_dir(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text(CANARY + "\n")
    assert resolve("file:secrets/token", {}, tmp_path) == CANARY


def test_unreadable_file_names_the_path_never_a_value(tmp_path: Path) -> None:
    with pytest.raises(SecretError) as caught:
        resolve("file:missing-token", {}, tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "missing-token") in message
    assert "No such file" in message
