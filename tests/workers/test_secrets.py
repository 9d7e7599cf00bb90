"""Secrets print as a mask everywhere, signing keys follow GitLab's whsec_ format, references resolve,
and fernet: values decrypt with the keys of PUSHDEPLOY_SECRET_KEYS, which errors name by id only."""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from workers.secrets import (
    MASK,
    Keyring,
    NoKeys,
    Secret,
    SecretError,
    SigningKey,
    decode_signing_key,
    key_id,
    new_fernet_key,
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


def test_the_key_from_gitlabs_merge_request_is_accepted() -> None:
    # GitLab's own example: "whsec_" + Base64.strict_encode64 of 32 bytes.
    assert (
        decode_signing_key("whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdHRlc3Q=")
        == b"testtesttesttesttesttesttesttest"
    )


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (base64.b64encode(KEY_BYTES).decode(), "must start with 'whsec_'"),
        ("WHSEC_" + base64.b64encode(KEY_BYTES).decode(), "must start with 'whsec_'"),
        ("whsec_", "exactly 32 bytes, the only length GitLab accepts; this one has 0"),
        ("whsec_not base64!!", "standard base64"),
        ("whsec_" + base64.b64encode(KEY_BYTES).decode().rstrip("="), "standard base64"),
        ("whsec_" + base64.urlsafe_b64encode(b"\xff" * 32).decode(), "standard base64"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "this one has 16"),
        # Standard Webhooks allows 24..64 bytes; GitLab takes 32 only.
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "this one has 24"),
        ("whsec_" + base64.b64encode(b"k" * 31).decode(), "this one has 31"),
        ("whsec_" + base64.b64encode(b"k" * 33).decode(), "this one has 33"),
        ("whsec_" + base64.b64encode(b"k" * 64).decode(), "this one has 64"),
    ],
)
def test_bad_signing_keys_are_refused_without_echoing_them(value: str, complaint: str) -> None:
    with pytest.raises(SecretError) as caught:
        SigningKey(value)
    assert complaint in str(caught.value)
    assert value not in str(caught.value)


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


# -- fernet: values -------------------------------------------------------------

K1, K2 = new_fernet_key(), new_fernet_key()


def tampered(value: str) -> str:
    """``value`` with one byte of its token changed, in the middle of the ciphertext."""
    middle = len(value) // 2
    return value[:middle] + ("B" if value[middle] != "B" else "C") + value[middle + 1 :]


def leaks(text: str, *values: str) -> list[str]:
    return [v for v in values if v in text]


def test_key_id_is_the_start_of_the_keys_sha256() -> None:
    assert key_id(K1) == hashlib.sha256(K1.encode()).hexdigest()[:8]
    assert Keyring([K2, K1]).ids == (key_id(K2), key_id(K1))
    assert Keyring([K2, K1]).newest_id == key_id(K2)
    assert K1 not in repr(Keyring([K1])) and key_id(K1) in repr(Keyring([K1]))


def test_encrypt_uses_the_newest_key_and_any_key_decrypts() -> None:
    value = Keyring([K2, K1]).encrypt(CANARY)
    assert value.startswith("fernet:") and CANARY not in value
    assert Fernet(K2).decrypt(value.removeprefix("fernet:")) == CANARY.encode()
    assert Keyring([K2]).decrypt(value) == CANARY
    old = Keyring([K1]).encrypt(CANARY)
    assert Keyring([K2, K1]).decrypt(old) == CANARY
    assert Keyring([K2, K1]).key_for(old) == key_id(K1)
    assert Keyring([K2, K1]).key_for(value) == key_id(K2)


def test_rotate_re_encrypts_under_the_newest_key() -> None:
    old = Keyring([K1]).encrypt(CANARY)
    new = Keyring([K2, K1]).rotate(old)
    assert new != old
    assert Keyring([K2]).decrypt(new) == CANARY
    with pytest.raises(SecretError):
        Keyring([K1]).decrypt(new)


@pytest.mark.parametrize(
    "environ_value",
    [f"{K2},{K1}", f"{K2}, {K1}", f"  {K2}\n{K1}\n", f"{K2}\t{K1}", f",{K2},,{K1},"],
    ids=["comma", "comma-space", "newlines", "tab", "empty-items"],  # random keys: xdist needs stable ids
)
def test_keys_are_comma_or_whitespace_separated(environ_value: str) -> None:
    keys = Keyring.from_environ({"PUSHDEPLOY_SECRET_KEYS": environ_value})
    assert keys is not None and keys.ids == (key_id(K2), key_id(K1))


@pytest.mark.parametrize("environ", [{}, {"PUSHDEPLOY_SECRET_KEYS": ""}, {"PUSHDEPLOY_SECRET_KEYS": " , "}])
def test_no_keys_configured_is_none(environ: dict[str, str]) -> None:
    assert Keyring.from_environ(environ) is None


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-key",
        K1[:-2] + "=",  # too short
        K1.rstrip("=") + "A=",  # too long
        base64.b64encode(b"\xfb" * 32).decode(),  # standard base64, not url-safe
        base64.urlsafe_b64encode(b"k" * 31).decode(),
        K1.rstrip("="),  # padding missing
    ],
    ids=["not-base64", "too-short", "too-long", "standard-base64", "31-bytes", "no-padding"],
)
def test_a_malformed_key_is_named_by_position_never_shown(bad: str) -> None:
    with pytest.raises(SecretError) as caught:
        Keyring.from_environ({"PUSHDEPLOY_SECRET_KEYS": f"{K1},{bad}"})
    assert str(caught.value) == "key #2 in PUSHDEPLOY_SECRET_KEYS is not a Fernet key"
    assert not leaks(str(caught.value), bad, K1)


def test_fernet_literal_env_and_file_values_are_decrypted(tmp_path: Path) -> None:
    keys = Keyring([K2, K1])
    value = Keyring([K1]).encrypt(CANARY)
    (tmp_path / "token").write_text(value + "\n")
    assert resolve(value, {}, tmp_path, keys) == CANARY
    assert resolve("env:HOOK", {"HOOK": value}, tmp_path, keys) == CANARY
    assert resolve("file:token", {}, tmp_path, keys) == CANARY


def test_a_decrypted_value_is_the_secret_itself_not_another_reference(tmp_path: Path) -> None:
    keys = Keyring([K1])
    assert resolve(keys.encrypt("env:HOOK"), {"HOOK": CANARY}, tmp_path, keys) == "env:HOOK"
    inner = keys.encrypt(CANARY)
    assert resolve(keys.encrypt(inner), {}, tmp_path, keys) == inner


def test_an_encrypted_value_without_keys_says_so(tmp_path: Path) -> None:
    value = Keyring([K1]).encrypt(CANARY)
    with pytest.raises(NoKeys) as caught:
        resolve(value, {}, tmp_path)
    assert str(caught.value) == "the value is encrypted but PUSHDEPLOY_SECRET_KEYS is not set"
    with pytest.raises(NoKeys) as caught:
        resolve("env:HOOK", {"HOOK": value}, tmp_path)
    assert str(caught.value) == "the value of HOOK is encrypted but PUSHDEPLOY_SECRET_KEYS is not set"


def test_a_wrong_key_names_the_key_ids_and_nothing_secret(tmp_path: Path) -> None:
    value = Keyring([K1]).encrypt(CANARY)
    with pytest.raises(SecretError) as caught:
        resolve(value, {}, tmp_path, Keyring([K2]))
    assert str(caught.value) == f"none of the keys (id {key_id(K2)}) decrypts it"
    with pytest.raises(SecretError) as caught:
        resolve("env:HOOK", {"HOOK": value}, tmp_path, Keyring([K2, new_fernet_key()]))
    assert str(caught.value).startswith(f"none of the keys (ids {key_id(K2)}, ")
    assert str(caught.value).endswith("decrypts the value of HOOK")
    assert not leaks(str(caught.value), K1, K2, CANARY, value.removeprefix("fernet:"))


def test_a_tampered_token_is_refused_by_every_key(tmp_path: Path) -> None:
    keys = Keyring([K2, K1])
    value = keys.encrypt(CANARY)
    with pytest.raises(SecretError) as caught:
        resolve(tampered(value), {}, tmp_path, keys)
    assert str(caught.value) == f"none of the keys (ids {key_id(K2)}, {key_id(K1)}) decrypts it"
    for damaged in ("fernet:", "fernet:not base64 at all", "fernet:" + "é" * 10, value[:-10]):
        with pytest.raises(SecretError, match="none of the keys"):
            resolve(damaged, {}, tmp_path, keys)


def test_an_encrypted_empty_secret_is_still_empty(tmp_path: Path) -> None:
    keys = Keyring([K1])
    with pytest.raises(SecretError, match="the secret is empty"):
        resolve(keys.encrypt("  "), {}, tmp_path, keys)
