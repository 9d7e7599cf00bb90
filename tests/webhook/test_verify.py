"""Verification of a delivery as pure functions: what GitLab signs is accepted, nothing else is.

No Flask here: ``verify_signature``, ``verify_token``, ``check_envelope`` and ``header`` are called
with plain header mappings and raw bytes, the way ``webhook/receive.py`` calls them.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import inspect
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from tests.helpers import SECRET_TOKEN, SIGNING_TOKEN
from webhook import events, verify
from webhook.errors import (
    InvalidSignature,
    InvalidToken,
    PayloadTooLarge,
    UnsupportedMediaType,
    WebhookError,
)
from webhook.verify import check_envelope, header, sign, verify_signature, verify_token
from workers.secrets import Secret, SigningKey

# The Standard Webhooks known-answer vector (libraries/python/tests/test_webhooks.py::test_sign_function).
# Its key has 24 bytes, which GitLab refuses, and so does SigningKey: its raw bytes are signed directly.
SPEC_KEY_BYTES = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
KAT_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
KAT_TS = 1614265330
KAT_BODY = b'{"test": 2432232314}'
# The same message under a key in GitLab's format (32 bytes); the reference library agrees (see below).
KAT_KEY = "whsec_c3RhbmRhcmQtd2ViaG9va3Mta2F0LTMyLWJ5dGUtayE="
KAT_SIGNATURE = "v1,cPJuIhVVf8jlfl4Q5Uefg0LZ2JMeVIn46TIzVxV/vUY="

OTHER_KEY = "whsec_" + base64.b64encode(b"another-32-byte-signing-key-0001").decode()

EXAMPLES = int(os.environ.get("PUSHDEPLOY_HYPOTHESIS_EXAMPLES", "300"))
fuzz_settings = hypothesis_settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def kat_headers(
    signature: str = KAT_SIGNATURE, msg_id: str = KAT_ID, ts: int | str = KAT_TS
) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def signed(body: bytes, key: str = SIGNING_TOKEN, msg_id: str = "msg_1", ts: int = KAT_TS) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(SigningKey(key), msg_id, ts, body),
    }


# -- the known-answer vector --------------------------------------------------------------------


def test_sign_reproduces_the_standard_webhooks_known_answer() -> None:
    assert sign(SigningKey(KAT_KEY), KAT_ID, KAT_TS, KAT_BODY) == KAT_SIGNATURE


def test_sign_accepts_raw_key_bytes_like_a_signing_key() -> None:
    raw = base64.b64decode(KAT_KEY.removeprefix("whsec_"))
    assert sign(raw, KAT_ID, KAT_TS, KAT_BODY) == KAT_SIGNATURE
    assert sign(SPEC_KEY_BYTES, KAT_ID, KAT_TS, KAT_BODY) == SPEC_SIGNATURE


def test_known_answer_verifies_and_returns_the_webhook_id() -> None:
    assert verify_signature(kat_headers(), KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS) == KAT_ID


def test_known_answer_is_rejected_with_another_key() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(kat_headers(), KAT_BODY, [SigningKey(OTHER_KEY)], now=KAT_TS)


# -- cross-check against the Standard Webhooks reference library ----------------------------------


@pytest.mark.parametrize("secret", [KAT_KEY, SIGNING_TOKEN])
def test_a_signature_made_by_the_reference_library_verifies_with_ours(secret: str) -> None:
    body = json.dumps({"object_kind": "push", "after": "a" * 40, "note": "caf\u00e9 \u2713"}).encode()
    ts = int(time.time())
    theirs = Webhook(secret).sign("msg_reference", datetime.fromtimestamp(ts, tz=UTC), body.decode())
    headers = {"webhook-id": "msg_reference", "webhook-timestamp": str(ts), "webhook-signature": theirs}
    assert verify_signature(headers, body, [SigningKey(secret)], now=ts) == "msg_reference"


@pytest.mark.parametrize("secret", [KAT_KEY, SIGNING_TOKEN])
def test_a_signature_made_by_ours_verifies_with_the_reference_library(secret: str) -> None:
    body = json.dumps({"object_kind": "push", "after": "b" * 40, "note": "\u00fc"}).encode()
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_ours",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(SigningKey(secret), "msg_ours", ts, body),
    }
    Webhook(secret).verify(body, headers, json_parse=False)  # raises WebhookVerificationError if not
    assert Webhook(secret).verify(body, headers) == json.loads(body)


def test_reference_library_agrees_on_the_known_answer() -> None:
    theirs = Webhook(KAT_KEY).sign(KAT_ID, datetime.fromtimestamp(KAT_TS, tz=UTC), KAT_BODY.decode())
    assert theirs == KAT_SIGNATURE


# -- rotation: several keys, several signatures ---------------------------------------------------


@pytest.mark.parametrize("signing_key", [KAT_KEY, OTHER_KEY])
def test_either_of_two_configured_keys_verifies(signing_key: str) -> None:
    headers = signed(KAT_BODY, key=signing_key)
    keys = [SigningKey(KAT_KEY), SigningKey(OTHER_KEY)]
    assert verify_signature(headers, KAT_BODY, keys, now=KAT_TS) == "msg_1"


def test_a_key_removed_from_the_rotation_no_longer_verifies() -> None:
    headers = signed(KAT_BODY, key=OTHER_KEY)
    with pytest.raises(InvalidSignature):
        verify_signature(headers, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)


@pytest.mark.parametrize("position", [0, 1, 2])
def test_one_valid_v1_among_several_space_separated_signatures_verifies(position: int) -> None:
    wrong = sign(SigningKey(OTHER_KEY), KAT_ID, KAT_TS, KAT_BODY)
    entries = [wrong, "v1," + base64.b64encode(b"\0" * 32).decode()]
    entries.insert(position, KAT_SIGNATURE)
    headers = kat_headers(signature=" ".join(entries))
    assert verify_signature(headers, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS) == KAT_ID


def test_other_signature_versions_are_ignored_not_errors() -> None:
    digest = KAT_SIGNATURE.removeprefix("v1,")
    headers = kat_headers(signature=f"v1a,{digest} v2,{digest} v1,{digest}")
    assert verify_signature(headers, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS) == KAT_ID


def test_a_correct_digest_under_another_version_label_does_not_verify() -> None:
    """``v1a`` is ed25519 in Standard Webhooks: an HMAC under that label is not a v1 signature."""
    digest = KAT_SIGNATURE.removeprefix("v1,")
    for label in ("v1a", "v2", "V1", "v1 "):
        with pytest.raises(InvalidSignature):
            verify_signature(
                kat_headers(signature=f"{label},{digest}"), KAT_BODY, [SigningKey(KAT_KEY)], KAT_TS
            )


def test_extra_spaces_between_signatures_are_tolerated() -> None:
    headers = kat_headers(signature=f"v1a,xyz   {KAT_SIGNATURE}")
    assert verify_signature(headers, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS) == KAT_ID


# -- timestamp tolerance -------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-300, -299, 0, 299, 300])
def test_timestamps_within_five_minutes_past_or_future_are_accepted(skew: int) -> None:
    assert verify_signature(kat_headers(), KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS + skew) == KAT_ID


@pytest.mark.parametrize("skew", [-3600, -301, 301, 86400])
def test_timestamps_more_than_five_minutes_off_are_rejected_past_and_future(skew: int) -> None:
    with pytest.raises(InvalidSignature, match="clock skew"):
        verify_signature(kat_headers(), KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS + skew)


@pytest.mark.parametrize(
    "timestamp",
    [
        "",
        "1e9",
        "1e999",
        "NaN",
        "-1614265330",
        "+1614265330",
        " 1614265330",
        "1614265330 ",
        "1614265330.0",
        "0x60377a72",
        "\u0661\u0666\u0661\u0664",  # Arabic-Indic digits: str.isdigit() is true for them
        "\u00b9\u00b2",  # superscript digits
        "9" * 13,
        "9" * 5000,
    ],
)
def test_malformed_timestamps_are_invalid_signatures(timestamp: str) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(kat_headers(ts=timestamp), KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)


# -- missing and malformed headers ---------------------------------------------------------------


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp"])
def test_a_signature_without_its_id_or_timestamp_is_a_malformed_signature_naming_it(missing: str) -> None:
    headers = kat_headers()
    del headers[missing]
    with pytest.raises(InvalidSignature) as raised:
        verify_signature(headers, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)
    assert raised.value.code == "signature_malformed"
    assert raised.value.detail.startswith(f"malformed signature: no {missing} header")


def test_two_missing_headers_are_named_and_still_malformed() -> None:
    headers = {"webhook-signature": KAT_SIGNATURE}
    with pytest.raises(InvalidSignature) as raised:
        verify_signature(headers, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)
    assert raised.value.code == "signature_malformed"
    assert "no webhook-id or webhook-timestamp header" in raised.value.detail


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Gitlab-Token": SECRET_TOKEN},
        {"webhook-id": ""},
        {"webhook-id": KAT_ID, "webhook-timestamp": str(KAT_TS)},
        {"webhook-id": KAT_ID},
    ],
)
def test_no_signature_header_is_an_unsigned_delivery_with_the_likely_cause(
    headers: dict[str, str],
) -> None:
    """GitLab without a signing token on the hook (or before 19.0, or without the flag) sends no
    signature; one that can sign may still send webhook-id and webhook-timestamp."""
    with pytest.raises(InvalidSignature) as raised:
        verify_signature(headers, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)
    reason = raised.value.detail
    assert raised.value.code == "unsigned"
    assert raised.value.status_code == 401
    assert "requires signed deliveries" in reason
    assert "signing token" in reason and "GitLab 19.0" in reason and "webhook_signing_token" in reason
    assert SECRET_TOKEN not in reason


def test_unsigned_malformed_and_mismatched_signatures_have_their_own_labels() -> None:
    keys = [SigningKey(KAT_KEY)]
    codes = set()
    for headers in (
        {"webhook-id": KAT_ID},
        {"webhook-signature": KAT_SIGNATURE},
        kat_headers(signature="v1,AAAA"),
    ):
        with pytest.raises(InvalidSignature) as raised:
            verify_signature(headers, KAT_BODY, keys, now=KAT_TS)
        codes.add(raised.value.code)
    assert codes == {"unsigned", "signature_malformed", "signature_mismatch"}


@pytest.mark.parametrize("empty", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_empty_standard_webhooks_header_is_an_invalid_signature(empty: str) -> None:
    headers = kat_headers()
    headers[empty] = ""
    with pytest.raises(InvalidSignature):
        verify_signature(headers, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)


def test_no_headers_at_all_is_an_invalid_signature() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature({}, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)


def test_header_names_are_matched_case_insensitively_for_signatures() -> None:
    headers = {"Webhook-Id": KAT_ID, "WEBHOOK-TIMESTAMP": str(KAT_TS), "Webhook-Signature": KAT_SIGNATURE}
    assert verify_signature(headers, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS) == KAT_ID


@pytest.mark.parametrize("msg_id", ["x" * 257, "msg\nid", "msg\x00id", "msg\u2028id", "\ud800"])
def test_malformed_webhook_ids_are_invalid_signatures(msg_id: str) -> None:
    raw = SigningKey(KAT_KEY).key
    # Even a "correct" signature over the odd id must not get through (nor crash the encoder).
    digest = hmac.new(raw, f"{msg_id}.{KAT_TS}.".encode("utf-8", "surrogatepass") + KAT_BODY, hashlib.sha256)
    signature = "v1," + base64.b64encode(digest.digest()).decode()
    with pytest.raises(InvalidSignature):
        verify_signature(
            kat_headers(signature=signature, msg_id=msg_id), KAT_BODY, [SigningKey(KAT_KEY)], KAT_TS
        )


@pytest.mark.parametrize(
    "signature",
    [
        "v1",  # no comma
        "v1g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "v1,",  # empty digest
        ",",
        ",,,",
        "v1,!!!not-base64!!!",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",  # missing padding
        "v1,g0hM9SsE-OTPJTGt_tmIKtSyZlE3uFJELVlNIOLJ1OE=",  # urlsafe alphabet
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=,extra",
        "v1,\u00e9\u00e8\u00ea",  # non-ASCII
        "v1,\u0d9e\U0001f600",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\x00",
        "v1,AAAA",  # valid base64, wrong length
        " ",
        "\t",
    ],
)
def test_malformed_signature_entries_are_invalid_signatures_never_other_errors(signature: str) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(kat_headers(signature=signature), KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)


def test_ten_thousand_signature_entries_are_refused_quickly() -> None:
    junk = " ".join(["v1," + base64.b64encode(os.urandom(32)).decode()] * 10_000)
    started = time.monotonic()
    with pytest.raises(InvalidSignature):
        verify_signature(kat_headers(signature=junk), KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)
    assert time.monotonic() - started < 0.5


def test_a_valid_signature_buried_after_thousands_of_entries_is_not_searched_for() -> None:
    """The work an unauthenticated request can cause is bounded (``MAX_SIGNATURES`` entries)."""
    junk = ["v1,AAAA"] * 10_000
    headers = kat_headers(signature=" ".join([*junk, KAT_SIGNATURE]))
    with pytest.raises(InvalidSignature):
        verify_signature(headers, KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)


# -- the signed bytes are the received bytes -----------------------------------------------------


def test_a_body_reserialized_after_signing_is_rejected() -> None:
    body = b'{"object_kind":"push",  "after": "' + b"a" * 40 + b'", "total_commits_count": 1.0}'
    headers = signed(body)
    assert verify_signature(headers, body, [SigningKey(SIGNING_TOKEN)], now=KAT_TS) == "msg_1"
    reserialized = json.dumps(json.loads(body)).encode()
    assert reserialized != body
    with pytest.raises(InvalidSignature):
        verify_signature(headers, reserialized, [SigningKey(SIGNING_TOKEN)], now=KAT_TS)


@pytest.mark.parametrize("index", range(len(KAT_BODY)))
def test_one_flipped_body_byte_is_rejected(index: int) -> None:
    tampered = bytearray(KAT_BODY)
    tampered[index] ^= 0x01
    with pytest.raises(InvalidSignature):
        verify_signature(kat_headers(), bytes(tampered), [SigningKey(KAT_KEY)], now=KAT_TS)


def test_appended_or_truncated_body_is_rejected() -> None:
    for body in (KAT_BODY + b" ", KAT_BODY + b"\n", KAT_BODY[:-1], b"", b" " + KAT_BODY):
        with pytest.raises(InvalidSignature):
            verify_signature(kat_headers(), body, [SigningKey(KAT_KEY)], now=KAT_TS)


def test_signature_does_not_carry_over_to_another_id_or_timestamp() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(kat_headers(msg_id=KAT_ID + "x"), KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)
    with pytest.raises(InvalidSignature):
        verify_signature(kat_headers(ts=KAT_TS + 1), KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)


def test_one_flipped_signature_bit_is_rejected() -> None:
    digest = bytearray(base64.b64decode(KAT_SIGNATURE.removeprefix("v1,")))
    for index in range(len(digest)):
        flipped = bytearray(digest)
        flipped[index] ^= 0x80
        signature = "v1," + base64.b64encode(bytes(flipped)).decode()
        with pytest.raises(InvalidSignature):
            verify_signature(kat_headers(signature=signature), KAT_BODY, [SigningKey(KAT_KEY)], now=KAT_TS)


def test_no_configured_key_verifies_nothing() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(kat_headers(), KAT_BODY, [], now=KAT_TS)


# -- X-Gitlab-Token ------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["token-new-1234", "token-old-5678"])
def test_any_configured_secret_token_is_accepted(sent: str) -> None:
    verify_token({"X-Gitlab-Token": sent}, [Secret("token-new-1234"), Secret("token-old-5678")])


def test_a_retired_secret_token_is_refused() -> None:
    with pytest.raises(InvalidToken):
        verify_token({"X-Gitlab-Token": "token-old-5678"}, [Secret("token-new-1234")])


@pytest.mark.parametrize(
    "sent",
    [
        "",
        "wrong",
        SECRET_TOKEN + " ",
        " " + SECRET_TOKEN,
        SECRET_TOKEN[:-1],
        SECRET_TOKEN.upper(),
        SECRET_TOKEN + "\n",
        SECRET_TOKEN + "\x00",
        "t\u00f8ken-\u00fcnicode",
        "\U0001f510",
        "\ud800",  # a lone surrogate cannot come off the wire, but must not crash either
        "\udcff",
    ],
)
def test_a_wrong_secret_token_is_refused(sent: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token({"X-Gitlab-Token": sent}, [Secret(SECRET_TOKEN)])


def test_a_missing_secret_token_is_refused() -> None:
    with pytest.raises(InvalidToken, match="missing"):
        verify_token({"X-Gitlab-Token-Other": SECRET_TOKEN}, [Secret(SECRET_TOKEN)])


def test_secret_token_header_name_is_case_insensitive() -> None:
    verify_token({"x-gitlab-token": SECRET_TOKEN}, [Secret(SECRET_TOKEN)])
    verify_token({"X-GITLAB-TOKEN": SECRET_TOKEN}, [Secret(SECRET_TOKEN)])


def test_a_non_ascii_configured_token_matches_the_same_text() -> None:
    verify_token({"X-Gitlab-Token": "s\u00e9cret-\u00fc"}, [Secret("s\u00e9cret-\u00fc")])


def test_a_non_ascii_token_matches_as_wsgi_hands_over_gitlabs_utf8_bytes() -> None:
    """PEP 3333 servers (gunicorn, werkzeug) decode header bytes as latin-1: GitLab's UTF-8 arrives so."""
    on_the_wire = "s\u00e9cret-\u00fc".encode()
    verify_token({"X-Gitlab-Token": on_the_wire.decode("latin-1")}, [Secret("s\u00e9cret-\u00fc")])
    other = "s\u00e9cret-\u00fd".encode().decode("latin-1")
    with pytest.raises(InvalidToken):
        verify_token({"X-Gitlab-Token": other}, [Secret("s\u00e9cret-\u00fc")])


def test_no_configured_token_accepts_nothing() -> None:
    with pytest.raises(InvalidToken):
        verify_token({"X-Gitlab-Token": SECRET_TOKEN}, [])


# -- constant-time comparison --------------------------------------------------------------------


@pytest.fixture
def compare_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Record every ``hmac.compare_digest`` call while still comparing for real."""
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[Any, Any], bool] = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(verify.hmac, "compare_digest", counting)
    return calls


def test_every_signature_candidate_is_compared_in_constant_time(
    compare_calls: list[tuple[bytes, bytes]],
) -> None:
    wrong = "v1," + base64.b64encode(b"\1" * 32).decode()
    headers = kat_headers(signature=f"{wrong} {KAT_SIGNATURE} v1a,ignored")
    keys = [SigningKey(OTHER_KEY), SigningKey(KAT_KEY)]
    assert verify_signature(headers, KAT_BODY, keys, now=KAT_TS) == KAT_ID
    expected = base64.b64decode(KAT_SIGNATURE.removeprefix("v1,"))
    # Both v1 candidates against both keys: 4 comparisons, the match among them, none skipped.
    assert len(compare_calls) == 4
    assert any(expected in pair for pair in compare_calls)


def test_a_failed_signature_still_went_through_compare_digest(
    compare_calls: list[tuple[bytes, bytes]],
) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(kat_headers(), KAT_BODY + b" ", [SigningKey(KAT_KEY)], now=KAT_TS)
    assert len(compare_calls) == 1


def test_every_secret_token_is_compared_in_constant_time(compare_calls: list[tuple[bytes, bytes]]) -> None:
    tokens = [Secret("token-new-1234"), Secret("token-old-5678"), Secret(SECRET_TOKEN)]
    verify_token({"X-Gitlab-Token": "token-new-1234"}, tokens)
    # No early exit on the first match: every configured token is compared.
    assert len(compare_calls) == 3
    assert (b"token-new-1234", b"token-new-1234") in compare_calls
    compare_calls.clear()
    with pytest.raises(InvalidToken):
        verify_token({"X-Gitlab-Token": "nope"}, tokens)
    assert len(compare_calls) == 3


def test_verify_never_compares_a_secret_with_an_operator() -> None:
    """A lint, as the Flux ``!=`` on X-Gitlab-Token showed is needed: only literals are ``==``-compared."""
    tree = ast.parse(inspect.getsource(verify))
    checked = {"verify_signature", "verify_token", "_v1_signatures", "sign"}
    found = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert checked <= found
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name in checked):
        for node in ast.walk(function):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            risky = any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops)
            if risky:
                assert any(isinstance(o, ast.Constant) for o in operands), (
                    f"{function.name} line {node.lineno}: == or in on non-literals; use hmac.compare_digest"
                )


# -- envelope: size before content type ----------------------------------------------------------


def test_an_oversized_body_is_413_even_with_a_wrong_content_type() -> None:
    with pytest.raises(PayloadTooLarge) as raised:
        check_envelope({"Content-Type": "text/plain"}, 2049, 2048)
    assert raised.value.status_code == 413


def test_an_oversized_json_body_is_413() -> None:
    with pytest.raises(PayloadTooLarge):
        check_envelope({"Content-Type": "application/json"}, 10**9, 1024 * 1024)


@pytest.mark.parametrize("length", [None, 0, 2048])
def test_a_body_up_to_the_limit_passes_the_size_check(length: int | None) -> None:
    check_envelope({"Content-Type": "application/json"}, length, 2048)


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON", " application/json ;x=y"],
)
def test_json_content_types_pass(content_type: str) -> None:
    check_envelope({"Content-Type": content_type}, 10, 2048)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json-patch+json",
        "application/jsonx",
        "text/json",
        "application/ json",
    ],
)
def test_other_content_types_are_415(content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    with pytest.raises(UnsupportedMediaType) as raised:
        check_envelope(headers, 10, 2048)
    assert raised.value.status_code == 415


def test_content_type_header_name_is_case_insensitive() -> None:
    check_envelope({"content-type": "application/json"}, 10, 2048)
    check_envelope({"CONTENT-TYPE": "application/json"}, 10, 2048)


# -- header() ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stored", ["X-Gitlab-Event", "x-gitlab-event", "X-GITLAB-EVENT", "x-GiTlAb-EvEnT"])
@pytest.mark.parametrize("asked", ["X-Gitlab-Event", "x-gitlab-event", "X-GITLAB-EVENT"])
def test_header_lookup_ignores_case(stored: str, asked: str) -> None:
    assert header({"Other": "x", stored: "Push Hook"}, asked) == "Push Hook"


def test_header_lookup_of_an_absent_name_is_none() -> None:
    assert header({"X-Gitlab-Event": "Push Hook"}, "X-Gitlab-Token") is None
    assert header({}, "X-Gitlab-Token") is None


def test_header_lookup_keeps_an_empty_value() -> None:
    assert header({"x-gitlab-token": ""}, "X-Gitlab-Token") == ""


# -- property tests: hostile input only ever yields our own errors -------------------------------

RELEVANT_NAMES = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "Webhook-Signature",
    "X-Gitlab-Token",
    "x-gitlab-token",
    "X-Gitlab-Event",
    "Idempotency-Key",
    "Content-Type",
]

base64_digest = st.binary(min_size=0, max_size=40).map(lambda raw: base64.b64encode(raw).decode())
signature_entry = st.one_of(
    st.builds(lambda v, d: f"{v},{d}", st.sampled_from(["v1", "v1a", "v2", "", "V1"]), base64_digest),
    st.text(max_size=60),
    st.just(KAT_SIGNATURE),
)
signature_header = st.lists(signature_entry, max_size=30).map(" ".join)
timestamp_header = st.one_of(
    st.integers(min_value=KAT_TS - 400, max_value=KAT_TS + 400).map(str),
    st.integers().map(str),
    st.text(max_size=20),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)
header_values = st.one_of(
    st.text(max_size=300), st.text(alphabet=st.characters(codec="latin-1"), max_size=100)
)
hostile_headers = st.one_of(
    st.dictionaries(st.sampled_from(RELEVANT_NAMES) | st.text(max_size=20), header_values, max_size=12),
    st.fixed_dictionaries(
        {
            "webhook-id": st.one_of(st.just(KAT_ID), st.text(max_size=300)),
            "webhook-timestamp": timestamp_header,
            "webhook-signature": signature_header,
        },
        optional={"X-Gitlab-Token": header_values},
    ),
)
hostile_bodies = st.one_of(
    st.binary(max_size=2048),
    st.just(KAT_BODY),
    st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@fuzz_settings
@given(headers=hostile_headers, body=hostile_bodies, now=st.integers(min_value=0, max_value=2**40))
def test_verify_signature_raises_only_invalid_signature(
    headers: dict[str, str], body: bytes, now: int
) -> None:
    keys = [SigningKey(KAT_KEY), SigningKey(SIGNING_TOKEN)]
    try:
        msg_id = verify_signature(headers, body, keys, now=now)
    except InvalidSignature:
        return
    # Accepted only if it really is the known-answer delivery, within the tolerance.
    assert msg_id == KAT_ID
    assert body == KAT_BODY
    assert abs(now - KAT_TS) <= 300


@fuzz_settings
@given(headers=hostile_headers)
def test_verify_token_raises_only_invalid_token(headers: dict[str, str]) -> None:
    try:
        verify_token(headers, [Secret(SECRET_TOKEN), Secret("s\u00e9cond-token")])
    except InvalidToken:
        return
    assert header(headers, "X-Gitlab-Token") in (SECRET_TOKEN, "s\u00e9cond-token")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
json_like_bodies = st.one_of(
    hostile_bodies,
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(
        [
            b'{"a": NaN}',
            b'{"a": Infinity}',
            b'{"a": -Infinity}',
            b'{"a": 1e999}',
            b'{"a": 1, "a": 2}',
            b"[" * 100_000 + b"]" * 100_000,
            b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
            b'{"n": ' + b"9" * 5000 + b"}",
            b"\xef\xbb\xbf{}",
            b'{"a": "\xff"}',
            b'{"a": "\\ud800"}',
            b"\x00{\x00}",
        ]
    ),
)


@fuzz_settings
@given(body=json_like_bodies)
def test_parse_raises_only_our_errors(body: bytes) -> None:
    try:
        payload = events.parse(body)
    except WebhookError as error:
        assert error.status_code == 400
        return
    assert isinstance(payload, dict)


@fuzz_settings
@given(headers=hostile_headers, body=json_like_bodies)
def test_the_whole_unauthenticated_path_raises_only_webhook_errors(
    headers: dict[str, str], body: bytes
) -> None:
    """What receive.py runs before anything is trusted: envelope, signature, token, then parse."""
    try:
        check_envelope(headers, len(body), 4096)
        verify_signature(headers, body, [SigningKey(SIGNING_TOKEN)], now=time.time())
        verify_token(headers, [Secret(SECRET_TOKEN)])
        events.parse(body)
    except WebhookError as error:
        assert error.status_code in {400, 401, 413, 415}
