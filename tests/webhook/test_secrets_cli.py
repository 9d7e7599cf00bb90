"""``pushdeploy secrets``: encrypt from stdin, rotate a real config file in place, make keys.

The commands run through argparse the way ``webhook/cli.py`` registers them; keys are injected
through the process environment, the secret through stdin.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import pty
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.helpers import SIGNING_TOKEN
from webhook import secrets_cli
from webhook.verify import verify_token
from workers.config import ConfigError, load
from workers.secrets import Keyring, key_id, new_fernet_key

CANARY = "deploy-token-canary-e41d07"
K1, K2 = new_fernet_key(), new_fernet_key()
ROOT = Path(__file__).resolve().parents[2]


def parser() -> argparse.ArgumentParser:
    """The CLI's shape: a global ``--config`` and the secrets group on the subparsers."""
    built = argparse.ArgumentParser(prog="pushdeploy")
    built.add_argument("--config", "-c")
    sub = built.add_subparsers(title="commands", metavar="COMMAND")
    secrets_cli.add_commands(sub)
    return built


def pushdeploy(argv: list[str], stdin: str = "") -> int:
    args = parser().parse_args(argv)
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)  # a pipe, as in `… | pushdeploy secrets encrypt`
    try:
        code: int = args.handler(args)
    finally:
        sys.stdin = saved
    return code


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Keyring:
    monkeypatch.setenv("PUSHDEPLOY_SECRET_KEYS", K1)
    return Keyring([K1])


def config_text(values: dict[str, str]) -> str:
    """A config an operator wrote: comments, odd spacing, single-quoted and inline values."""
    return textwrap.dedent(
        f"""\
        # pushdeploy.toml — production   (keep this comment)
        [server]
        admin_token   =   "{values["admin"]}"     # trailing comment
        public_url = 'https://deploy.example.org'

        [gitlab]
        url = "https://gitlab.example.org"
        token = '{values["gitlab"]}'

        [projects.app]
        gitlab_project = "tools/app"
        repo_url = "https://gitlab.example.org/tools/app.git"
        secret_token = [
            "{values["hook"]}",   # the new one
            "plain-old-token",
        ]
        signing_token = "{SIGNING_TOKEN}"
        env = {{ NOTE = "fernet:not-a-secret-field-but-an-env-value" }}
        """
    ).replace("\n", "\r\n", 3)  # CRLF on the first lines: bytes must survive as they are


def encrypted(keyring: Keyring) -> dict[str, str]:
    return {
        "admin": keyring.encrypt("admin-canary-1f2e3d"),
        "gitlab": keyring.encrypt(CANARY),
        "hook": keyring.encrypt("hook-canary-7a8b9c"),
    }


# -- new-key ------------------------------------------------------------------------


def test_new_key_prints_a_fernet_key_and_its_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert pushdeploy(["secrets", "new-key"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    Fernet(key)  # a usable key
    assert f"key id {key_id(key)}" in err and key not in err
    assert pushdeploy(["secrets", "new-key"]) == 0
    assert capsys.readouterr().out.strip() != key


def test_secrets_alone_prints_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert pushdeploy(["secrets"]) == 2
    assert "encrypt" in capsys.readouterr().err


# -- encrypt --------------------------------------------------------------------------


def test_encrypt_then_load_round_trip(
    tmp_path: Path, keys: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pushdeploy(["secrets", "encrypt"], stdin=CANARY + "\n") == 0
    out, err = capsys.readouterr()
    value = out.strip()
    assert out == value + "\n" and value.startswith("fernet:")
    assert CANARY not in out + err
    assert f"key id {key_id(K1)}" in err and K1 not in err
    path = tmp_path / "pushdeploy.toml"
    path.write_text(config_text({"admin": "literal-admin", "gitlab": value, "hook": value}))
    settings = load(path, environ={"PUSHDEPLOY_SECRET_KEYS": K1})
    assert settings.gitlab is not None and settings.gitlab.token.reveal() == CANARY
    assert settings.projects["app"].secret_tokens[0].reveal() == CANARY


def test_encrypt_uses_the_newest_key(
    keys: Keyring, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PUSHDEPLOY_SECRET_KEYS", f"{K2}, {K1}")
    assert pushdeploy(["secrets", "encrypt"], stdin=CANARY) == 0
    value = capsys.readouterr().out.strip()
    assert Keyring([K2]).decrypt(value) == CANARY
    assert Keyring([K1]).key_for(value) is None


def test_encrypt_takes_no_secret_from_the_command_line(
    keys: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(["secrets", "encrypt", CANARY])
    assert caught.value.code == 2
    assert CANARY in capsys.readouterr().err  # argparse's own complaint: it is never used


@pytest.mark.parametrize(
    ("environ", "complaint"),
    [
        ({}, "PUSHDEPLOY_SECRET_KEYS is not set (make a key with `pushdeploy secrets new-key`)"),
        (
            {"PUSHDEPLOY_SECRET_KEYS": f"{K1},short-key"},
            "key #2 in PUSHDEPLOY_SECRET_KEYS is not a Fernet key",
        ),
    ],
)
def test_encrypt_without_usable_keys_says_why(
    environ: dict[str, str],
    complaint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("PUSHDEPLOY_SECRET_KEYS", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert pushdeploy(["secrets", "encrypt"], stdin=CANARY) == 2
    out, err = capsys.readouterr()
    assert out == "" and complaint in err
    assert K1 not in err and "short-key" not in err and CANARY not in err


def test_encrypt_refuses_an_empty_secret(keys: Keyring, capsys: pytest.CaptureFixture[str]) -> None:
    assert pushdeploy(["secrets", "encrypt"], stdin=" \n") == 2
    out, err = capsys.readouterr()
    assert out == "" and "nothing to encrypt" in err


def test_encrypt_refuses_a_signing_token_gitlab_would_refuse(
    keys: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    short = "whsec_" + base64.b64encode(b"k" * 24).decode()

    assert pushdeploy(["secrets", "encrypt"], stdin=short + "\n") == 2

    out, err = capsys.readouterr()
    assert out == "" and "exactly 32 bytes, the only length GitLab accepts; this one has 24" in err
    assert short not in err
    assert pushdeploy(["secrets", "encrypt"], stdin=SIGNING_TOKEN) == 0  # 32 bytes: encrypted


SCRIPT = (
    "import argparse, sys\n"
    "from webhook import secrets_cli\n"
    "p = argparse.ArgumentParser(prog='pushdeploy'); p.add_argument('--config')\n"
    "secrets_cli.add_commands(p.add_subparsers())\n"
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))\n"
)
"""``pushdeploy`` reduced to the secrets group, for the tests that need a real process."""


def test_encrypt_in_a_real_process_shows_the_secret_nowhere_but_in_its_token(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", SCRIPT, "secrets", "encrypt"]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "PUSHDEPLOY_SECRET_KEYS": K1}
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path
    )
    time.sleep(0.2)
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    out, err = process.communicate(CANARY.encode() + b"\n", timeout=30)
    assert process.returncode == 0, err
    assert CANARY.encode() not in cmdline and b"encrypt" in cmdline
    assert CANARY.encode() not in out + err
    value = out.decode().strip()
    assert value.startswith("fernet:") and Keyring([K1]).decrypt(value) == CANARY


def test_encrypt_at_a_terminal_prompts_twice_without_echo() -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "PUSHDEPLOY_SECRET_KEYS": K1}
    pid, terminal = pty.fork()
    if pid == 0:  # the child: becomes the command, on the pseudo-terminal
        try:
            os.execve(sys.executable, [sys.executable, "-c", SCRIPT, "secrets", "encrypt"], env)  # noqa: S606
        finally:
            os._exit(127)  # never back into pytest
    screen = b""

    def read_until(marker: bytes) -> None:
        nonlocal screen
        deadline = time.monotonic() + 20
        while marker not in screen and time.monotonic() < deadline:
            try:
                chunk = os.read(terminal, 1024)
            except OSError:  # EIO: the child has exited and closed the terminal
                return
            if not chunk:
                return
            screen += chunk

    read_until(b"secret to encrypt: ")
    os.write(terminal, CANARY.encode() + b"\n")
    read_until(b"the same again: ")
    os.write(terminal, CANARY.encode() + b"\n")
    read_until(b"\xff")  # everything, until the child closes the terminal
    os.close(terminal)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0, screen
    assert CANARY.encode() not in screen  # nothing typed was echoed
    value = next(line for line in screen.decode().splitlines() if line.startswith("fernet:"))
    assert Keyring([K1]).decrypt(value.strip()) == CANARY


# -- rotate ---------------------------------------------------------------------------


def test_rotate_swaps_only_the_tokens_and_keeps_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = encrypted(Keyring([K1]))
    path = tmp_path / "pushdeploy.toml"
    path.write_bytes(config_text(old).encode())
    path.chmod(0o640)
    inode = path.stat().st_ino
    monkeypatch.setenv("PUSHDEPLOY_SECRET_KEYS", f"{K2},{K1}")

    assert pushdeploy(["--config", str(path), "secrets", "rotate"]) == 0

    out, _ = capsys.readouterr()
    assert out.strip() == f"{path}: rotated 3 value(s) to key {key_id(K2)}"
    text = path.read_bytes().decode()
    for value in old.values():
        assert value not in text
    raw = tomllib.loads(text)
    rotated = {
        "admin": raw["server"]["admin_token"],
        "gitlab": raw["gitlab"]["token"],
        "hook": raw["projects"]["app"]["secret_token"][0],
    }
    assert text == config_text(rotated)  # everything else byte for byte, CRLF included
    assert (path.stat().st_mode & 0o777, path.stat().st_ino != inode) == (0o640, True)
    assert not list(tmp_path.glob(".pushdeploy.toml.*"))  # no temporary file left behind
    settings = load(path, environ={"PUSHDEPLOY_SECRET_KEYS": K2})
    assert settings.gitlab is not None and settings.gitlab.token.reveal() == CANARY
    assert settings.server.admin_token is not None
    assert settings.server.admin_token.reveal() == "admin-canary-1f2e3d"

    assert pushdeploy(["--config", str(path), "secrets", "rotate"]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: all 3 encrypted value(s) already use key {key_id(K2)}"


def test_rotate_check_reports_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pushdeploy.toml"
    path.write_text(config_text(encrypted(Keyring([K1]))))
    before = path.read_bytes()
    monkeypatch.setenv("PUSHDEPLOY_SECRET_KEYS", f"{K2},{K1}")

    assert pushdeploy(["--config", str(path), "secrets", "rotate", "--check"]) == 1

    out, _ = capsys.readouterr()
    assert path.read_bytes() == before
    assert f"  gitlab.token: key {key_id(K1)} → {key_id(K2)}" in out
    assert f"  projects.app.secret_token[0]: key {key_id(K1)} → {key_id(K2)}" in out
    assert f"3 of 3 encrypted value(s) would be rotated to key {key_id(K2)}" in out
    assert pushdeploy(["--config", str(path), "secrets", "rotate"]) == 0
    assert pushdeploy(["--config", str(path), "secrets", "rotate", "--check"]) == 0


def test_rotate_refuses_a_value_no_key_decrypts_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    values = encrypted(Keyring([K1]))
    stranger = new_fernet_key()
    values["hook"] = Keyring([stranger]).encrypt("hook-canary-7a8b9c")
    path = tmp_path / "pushdeploy.toml"
    path.write_text(config_text(values))
    before = path.read_bytes()
    monkeypatch.setenv("PUSHDEPLOY_SECRET_KEYS", f"{K2},{K1}")

    assert pushdeploy(["--config", str(path), "secrets", "rotate"]) == 1

    out, err = capsys.readouterr()
    assert path.read_bytes() == before
    assert (
        f"projects.app.secret_token[0]: none of the keys (ids {key_id(K2)}, {key_id(K1)}) decrypts it" in err
    )
    for leak in (K1, K2, stranger, values["hook"], "hook-canary-7a8b9c"):
        assert leak not in out + err


def test_rotate_refuses_an_encrypted_signing_token_gitlab_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    short = "whsec_" + base64.b64encode(b"k" * 24).decode()
    path = tmp_path / "pushdeploy.toml"
    text = config_text(encrypted(Keyring([K1])))
    path.write_text(text.replace(f'"{SIGNING_TOKEN}"', f'"{Keyring([K1]).encrypt(short)}"'))
    before = path.read_bytes()
    monkeypatch.setenv("PUSHDEPLOY_SECRET_KEYS", f"{K2},{K1}")

    assert pushdeploy(["--config", str(path), "secrets", "rotate"]) == 1

    out, err = capsys.readouterr()
    assert path.read_bytes() == before
    assert "projects.app.signing_token: a signing token must decode to exactly 32 bytes" in err
    assert "this one has 24" in err and short not in out + err


def test_rotate_refuses_a_value_spelled_with_escapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    values = encrypted(Keyring([K1]))
    values["hook"] = values["hook"].replace("fernet:g", "fernet:\\u0067", 1)  # TOML's escape of "g"
    path = tmp_path / "pushdeploy.toml"
    path.write_text(config_text(values))
    before = path.read_bytes()
    monkeypatch.setenv("PUSHDEPLOY_SECRET_KEYS", f"{K2},{K1}")

    assert pushdeploy(["--config", str(path), "secrets", "rotate"]) == 1

    assert path.read_bytes() == before
    assert "projects.app.secret_token[0]: its value is spelled with escapes" in capsys.readouterr().err


def test_rotate_of_a_missing_file_fails_cleanly(
    tmp_path: Path, keys: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pushdeploy(["--config", str(tmp_path / "nope.toml"), "secrets", "rotate"]) == 1
    assert "No such file" in capsys.readouterr().err


def test_a_thousand_secrets_survive_the_key_rotation_sequence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Research check 10: 1,000 values under K1 → serve with [K2, K1] → rotate → serve with [K2]."""
    plaintexts = [f"hook-token-{i:04d}-{os.urandom(8).hex()}" for i in range(1000)]
    k1 = Keyring([K1])
    tokens = ",\n    ".join(f'"{k1.encrypt(p)}"' for p in plaintexts)
    path = tmp_path / "pushdeploy.toml"
    path.write_text(
        "[projects.app]\n"
        'gitlab_project = "tools/app"\n'
        'repo_url = "https://gitlab.example.org/tools/app.git"\n'
        f"secret_token = [\n    {tokens},\n]\n"
    )
    started = time.monotonic()

    def serve(environ_keys: str) -> None:
        settings = load(path, environ={"PUSHDEPLOY_SECRET_KEYS": environ_keys})
        configured = settings.projects["app"].secret_tokens
        assert [t.reveal() for t in configured] == plaintexts
        for plaintext in (plaintexts[0], plaintexts[-1]):
            verify_token({"X-Gitlab-Token": plaintext}, configured)  # a delivery still verifies

    serve(K1)
    serve(f"{K2},{K1}")
    monkeypatch.setenv("PUSHDEPLOY_SECRET_KEYS", f"{K2},{K1}")
    assert pushdeploy(["--config", str(path), "secrets", "rotate"]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: rotated 1000 value(s) to key {key_id(K2)}"
    serve(K2)
    with pytest.raises(ConfigError) as caught:
        load(path, environ={"PUSHDEPLOY_SECRET_KEYS": K1})
    assert len(caught.value.problems) == 1000
    assert caught.value.problems[0].message == f"none of the keys (id {key_id(K1)}) decrypts it"
    assert time.monotonic() - started < 20
