"""Encryption at rest of provider secrets: the server key file and the AES-GCM SecretBox."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbr_core.errors import SecretError
from sbr_core.secretbox import SecretBox, load_or_create_key

CLEAR = "Sup3r-Secret-Passw0rd"


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "server.key"


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Create files under umask 000, so only the code's own mode keeps the key private."""
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the key file ------------------------------------------------------------------------


def test_key_file_is_created_0600_on_first_call(key_path: Path, permissive_umask: None) -> None:
    key = load_or_create_key(key_path)

    assert len(key) == 32
    assert _mode(key_path) == 0o600
    assert base64.b64decode(key_path.read_bytes().strip()) == key


def test_key_file_is_reused_on_later_calls(key_path: Path) -> None:
    first = load_or_create_key(key_path)
    content = key_path.read_bytes()

    assert load_or_create_key(key_path) == first
    assert key_path.read_bytes() == content


def test_each_new_key_file_holds_a_new_key(tmp_path: Path) -> None:
    assert load_or_create_key(tmp_path / "a.key") != load_or_create_key(tmp_path / "b.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o070])
def test_key_file_readable_by_group_or_others_is_refused(key_path: Path, mode: int) -> None:
    load_or_create_key(key_path)
    key_path.chmod(mode)

    with pytest.raises(SecretError) as info:
        load_or_create_key(key_path)

    message = str(info.value)
    assert str(key_path) in message
    assert f"chmod 600 {key_path}" in message  # tells the admin how to fix it


@pytest.mark.parametrize(
    "content",
    [b"not base64 at all!\n", b"", base64.b64encode(b"too short") + b"\n",
     base64.b64encode(os.urandom(33)) + b"\n"],
    ids=["garbage", "empty", "short", "long"],
)
def test_damaged_key_file_is_refused(key_path: Path, content: bytes) -> None:
    key_path.write_bytes(content)
    key_path.chmod(0o600)

    with pytest.raises(SecretError, match="damaged"):
        load_or_create_key(key_path)


# --- sealing and opening -----------------------------------------------------------------


@pytest.fixture
def box(key_path: Path) -> SecretBox:
    return SecretBox(load_or_create_key(key_path))


def test_seal_and_open_round_trip(box: SecretBox) -> None:
    values = {"password": CLEAR, "token": "t-1", "empty": "", "unicode": "pässwörd ✓"}

    assert box.open(box.seal(values)) == values


def test_nothing_stored_opens_to_an_empty_mapping(box: SecretBox) -> None:
    assert box.open(None) == {}
    assert box.open("") == {}


def test_a_different_key_cannot_open(box: SecretBox, tmp_path: Path) -> None:
    sealed = box.seal({"password": CLEAR})
    other = SecretBox(load_or_create_key(tmp_path / "other.key"))

    with pytest.raises(SecretError) as info:
        other.open(sealed)

    assert "cannot be decrypted" in str(info.value)
    assert "key file" in str(info.value)
    assert CLEAR not in str(info.value)


def test_sealed_text_does_not_contain_the_clear_text(box: SecretBox) -> None:
    sealed = box.seal({"password": CLEAR})
    raw = base64.b64decode(sealed.removeprefix("sbr1:"))

    assert sealed.startswith("sbr1:")
    assert CLEAR not in sealed
    assert CLEAR.encode() not in raw
    assert base64.b64encode(CLEAR.encode()).decode()[:16] not in sealed


def test_two_seals_of_the_same_value_differ(box: SecretBox) -> None:
    first, second = box.seal({"password": CLEAR}), box.seal({"password": CLEAR})

    assert first != second
    assert box.open(first) == box.open(second)


def test_tampered_sealed_value_is_refused(box: SecretBox) -> None:
    raw = bytearray(base64.b64decode(box.seal({"password": CLEAR}).removeprefix("sbr1:")))
    raw[-1] ^= 0x01

    with pytest.raises(SecretError):
        box.open("sbr1:" + base64.b64encode(bytes(raw)).decode())


@pytest.mark.parametrize(
    "stored",
    ["plain-text", "sbr2:AAAA", "sbr1:!!!not-base64!!!", "sbr1:abc", "sbr1:" + "A" * 16],
    ids=["no-prefix", "other-version", "garbage", "bad-padding", "too-short"],
)
def test_damaged_or_foreign_stored_value_is_a_secret_error(box: SecretBox, stored: str) -> None:
    with pytest.raises(SecretError):
        box.open(stored)


def test_processes_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    key_path = tmp_path / "secret.key"
    code = ("import sys, base64; from pathlib import Path; "
            "from sbr_core.secretbox import load_or_create_key; "
            "print(base64.b64encode(load_or_create_key(Path(sys.argv[1]))).decode())")
    workers = [subprocess.Popen([sys.executable, "-c", code, str(key_path)],
                                stdout=subprocess.PIPE, text=True) for _ in range(6)]
    keys = {w.communicate(timeout=60)[0].strip() for w in workers}
    assert len(keys) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]
