"""Keys, passphrases, the config's integrity, and the byte formats' own checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sbr_core.errors import RepositoryCorrupt, RepositoryError, UsageError, WrongPassphrase
from sbr_core.repository import init_repository, open_repository
from sbr_core.repository.crypto import AesGcmSealer, MasterKeys, Sealer, _kek
from sbr_core.repository.format import (
    BlobType,
    build_pack_tail,
    decode_blob,
    decode_index,
    encode_blob,
    encode_index,
    parse_pack,
)
from sbr_core.repository.keys import change_passphrase, export_key
from tests.unit.repository.conftest import PASSPHRASE, make_destination


def test_wrong_passphrase_is_one_clear_error(tmp_path: Path) -> None:
    destination = make_destination(tmp_path / "r")
    init_repository(destination, passphrase=PASSPHRASE)
    with pytest.raises(WrongPassphrase, match=r"^wrong passphrase for this repository$"):
        open_repository(destination, passphrase="guess")
    with pytest.raises(WrongPassphrase, match="give its passphrase"):
        open_repository(destination, passphrase=None)


def test_exported_key_opens_the_repository_after_its_keys_are_lost(tmp_path: Path) -> None:
    destination = make_destination(tmp_path / "r")
    repo = init_repository(destination, passphrase=PASSPHRASE)
    exported = json.loads(export_key(repo, PASSPHRASE))
    for info in list(destination.list("keys/")):
        destination.delete(info.key)
    with pytest.raises(RepositoryCorrupt, match="no readable key file"):
        open_repository(destination, passphrase=PASSPHRASE)
    assert open_repository(destination, passphrase=PASSPHRASE, key_file=exported).config.id \
        == repo.config.id


def test_key_derivation_is_rfc_7914_scrypt() -> None:
    # The second test vector of RFC 7914 (its first 32 bytes: SBR derives 256-bit keys), so
    # key files written by any earlier SBR, or by another scrypt, keep opening.
    assert _kek("password", b"NaCl", 1024, 8, 16).hex() == (
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162")


@pytest.mark.parametrize(("n", "r", "message"), [
    (2**24, 8, "asks scrypt for 16384 MiB"),  # a damaged or hostile key file
    (1000, 8, "scrypt parameters are invalid"),  # not a power of two
])
def test_key_file_with_impossible_scrypt_parameters_is_refused(
        tmp_path: Path, n: int, r: int, message: str) -> None:
    destination = make_destination(tmp_path / "r")
    repo = init_repository(destination, passphrase=PASSPHRASE)
    exported = json.loads(export_key(repo, PASSPHRASE))
    exported["kdf"].update(n=n, r=r)
    with pytest.raises(RepositoryCorrupt, match=message):
        open_repository(destination, passphrase=PASSPHRASE, key_file=exported)


def test_passphrase_change_keeps_the_data_key(tmp_path: Path) -> None:
    destination = make_destination(tmp_path / "r")
    repo = init_repository(destination, passphrase=PASSPHRASE)
    change_passphrase(repo, "new one")
    with pytest.raises(WrongPassphrase):
        open_repository(destination, passphrase=PASSPHRASE)
    reopened = open_repository(destination, passphrase="new one")
    assert reopened.sealer.blob_id(b"x") == repo.sealer.blob_id(b"x")


def test_altered_config_is_detected(tmp_path: Path) -> None:
    destination = make_destination(tmp_path / "r")
    init_repository(destination, passphrase=PASSPHRASE)
    config = json.loads(destination.get("config"))
    config["encryption"] = "none"
    destination.put("config", json.dumps(config).encode())
    with pytest.raises(RepositoryCorrupt, match="altered"):
        open_repository(destination, passphrase=PASSPHRASE)


def test_newer_format_is_refused_with_advice(tmp_path: Path) -> None:
    destination = make_destination(tmp_path / "r")
    init_repository(destination, passphrase=None, encryption="none")
    config = json.loads(destination.get("config"))
    config["version"] = 99
    destination.put("config", json.dumps(config).encode())
    with pytest.raises(RepositoryError, match="upgrade SBR"):
        open_repository(destination)


def test_init_refuses_bad_parameters_and_non_empty_destinations(tmp_path: Path) -> None:
    destination = make_destination(tmp_path / "r")
    for kwargs, message in [({"image_chunk_size": 100_000}, "power of two"),
                            ({"compression_level": 30}, "compression level"),
                            ({"encryption": "rot13"}, "encryption must be"),
                            ({"passphrase": ""}, "needs a passphrase")]:
        with pytest.raises(UsageError, match=message):
            init_repository(destination, **{"passphrase": PASSPHRASE, **kwargs})
    destination.put("stray", b"x")
    with pytest.raises(RepositoryError, match="not empty"):
        init_repository(destination, passphrase=PASSPHRASE)


def test_chunk_ids_are_keyed_per_repository() -> None:
    one, two = AesGcmSealer(MasterKeys.generate()), AesGcmSealer(MasterKeys.generate())
    assert one.blob_id(b"same content") != two.blob_id(b"same content")
    assert len(Sealer().blob_id(b"x")) == 32


@pytest.mark.parametrize("sealer", [Sealer(), AesGcmSealer(MasterKeys.generate())],
                         ids=["plain", "aes-gcm"])
def test_blob_round_trip_and_every_flipped_byte_is_caught(sealer: Sealer) -> None:
    data = b"compressible " * 500
    blob_id = sealer.blob_id(data)
    stored = encode_blob(sealer, blob_id, data, 3)
    assert len(stored) < len(data) // 4
    assert decode_blob(sealer, blob_id, stored, len(data), "blob") == data
    for position in range(0, len(stored), max(1, len(stored) // 40)):
        damaged = bytearray(stored)
        damaged[position] ^= 0x01
        with pytest.raises(RepositoryCorrupt):
            decode_blob(sealer, blob_id, bytes(damaged), len(data), "blob")


@pytest.mark.parametrize("sealer", [Sealer(), AesGcmSealer(MasterKeys.generate())],
                         ids=["plain", "aes-gcm"])
def test_pack_and_index_formats_round_trip_and_detect_truncation(sealer: Sealer) -> None:
    blobs = [os.urandom(1000), b"z" * 5000]
    encoded = [(sealer.blob_id(b), encode_blob(sealer, sealer.blob_id(b), b, 3)) for b in blobs]
    pack = b"".join(e for _, e in encoded) + build_pack_tail(
        sealer, [(BlobType.DATA, i, len(e), len(b)) for (i, e), b in
                 zip(encoded, blobs, strict=True)])
    entries = parse_pack(sealer, pack, "pack")
    assert [(e[1], e[2]) for e in entries] == [(encoded[0][0], 0),
                                               (encoded[1][0], len(encoded[0][1]))]
    with pytest.raises(RepositoryCorrupt):
        parse_pack(sealer, pack[:-5], "pack")
    index = encode_index(sealer, {b"p" * 32: entries})
    assert list(decode_index(sealer, index, "index")) == [(b"p" * 32, entries)]
    with pytest.raises(RepositoryCorrupt):
        list(decode_index(sealer, index[: len(index) // 2], "index"))


def test_downgrade_to_unencrypted_is_detected(tmp_path: Path) -> None:
    import hashlib

    destination = make_destination(tmp_path / "r")
    init_repository(destination, passphrase=PASSPHRASE)
    config = json.loads(destination.get("config"))
    config.pop("mac")
    config["encryption"] = "none"
    # Recomputing the unencrypted check value is easy; the key files give it away.
    config["mac"] = hashlib.sha256(json.dumps(config, sort_keys=True,
                                              separators=(",", ":")).encode()).hexdigest()
    destination.put("config", json.dumps(config).encode())
    with pytest.raises(RepositoryCorrupt, match="has key files"):
        open_repository(destination)


def test_init_after_an_interrupted_init_starts_afresh(tmp_path: Path) -> None:
    destination = make_destination(tmp_path / "r")
    destination.put("keys/leftover", b"{}")  # an init killed before it wrote its config
    repo = init_repository(destination, passphrase=PASSPHRASE)
    assert [i.key for i in destination.list("keys/")] != ["keys/leftover"]
    assert open_repository(destination, passphrase=PASSPHRASE).config.id == repo.config.id


def test_a_writer_whose_lock_was_removed_stops_before_writing_a_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sbr_core.repository import BackupWriter, locks

    monkeypatch.setattr(locks, "REFRESH_SECONDS", 0.05)
    destination = make_destination(tmp_path / "r")
    repo = init_repository(destination, passphrase=PASSPHRASE)
    with pytest.raises(RepositoryError, match="lock was removed"), \
            BackupWriter(repo, name="vm", kind="image") as writer:
        for info in destination.list("locks/"):
            destination.delete(info.key)  # what a gc does to a writer it judged dead
        import time

        time.sleep(0.3)
        writer.add_file("vm.xml", b"<domain/>")
        writer.commit()
    assert repo.backup_ids() == []
