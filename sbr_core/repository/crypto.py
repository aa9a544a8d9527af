"""Blob ids, sealing and key files of a repository.

An encrypted repository has two random 256-bit master keys: ``data_key`` seals every stored
object with AES-256-GCM, and ``id_key`` makes chunk ids HMAC-SHA256 of the content, so that
an id says nothing about the content to someone without the key. The master keys are kept in
``keys/<id>`` objects, each wrapping them under a key derived from a passphrase with scrypt.
An unencrypted repository uses plain SHA-256 ids and stores objects as they are; the ids
still let verify detect any damaged byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import time
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sbr_core.errors import RepositoryCorrupt, WrongPassphrase

NONCE_BYTES = 12
TAG_BYTES = 16
ID_BYTES = 32
#: scrypt cost: 2**15 x 8 x 128 bytes = 32 MiB of memory and ~0.1 s per attempt.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MAX_SCRYPT_MEMORY = 1 << 30  # a key file asking for more is damaged or hostile
_KEY_AAD = b"sbr-repository-key-v1"


@attrs.frozen(repr=False)
class MasterKeys:
    """The two secrets of an encrypted repository (never printed: ``repr`` hides them)."""

    data_key: bytes
    id_key: bytes

    @classmethod
    def generate(cls) -> MasterKeys:
        return cls(os.urandom(32), os.urandom(32))

    def __repr__(self) -> str:
        return "MasterKeys(<hidden>)"


class Sealer:
    """Turns plaintext into stored bytes and back, and names content by its id."""

    encrypted = False
    overhead = 0

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return hashlib.sha256(data).digest()

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return plaintext

    def open(self, stored: bytes | memoryview, aad: bytes, what: str) -> bytes:
        return bytes(stored)

    def mac(self, data: bytes) -> str:
        """A tag over repository parameters, so they cannot be changed unnoticed."""
        return hashlib.sha256(data).hexdigest()


class AesGcmSealer(Sealer):
    """AES-256-GCM with a random 96-bit nonce per object; the object's id is bound as AAD."""

    encrypted = True
    overhead = NONCE_BYTES + TAG_BYTES

    def __init__(self, keys: MasterKeys) -> None:
        self.keys = keys
        self._aead = AESGCM(keys.data_key)
        self._id_key = keys.id_key

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return hmac.digest(self._id_key, data, "sha256")

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, stored: bytes | memoryview, aad: bytes, what: str) -> bytes:
        view = memoryview(stored)
        try:
            return self._aead.decrypt(bytes(view[:NONCE_BYTES]), bytes(view[NONCE_BYTES:]), aad)
        except (InvalidTag, ValueError):
            raise RepositoryCorrupt(f"{what} failed its authentication check (damaged or "
                                    "altered)") from None

    def mac(self, data: bytes) -> str:
        return hmac.new(self._id_key, b"sbr-config\0" + data, "sha256").hexdigest()


def _kek(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # hashlib's scrypt (OpenSSL's, as cryptography's is) lets go of the GIL, so the CLI
    # imports and reads while the key is derived; cryptography's holds it throughout.
    need = 128 * r * (n + 2) + 128 * r * p  # OpenSSL's own reckoning of the memory it uses
    if need > MAX_SCRYPT_MEMORY:
        raise RepositoryCorrupt(f"the key file asks scrypt for {need >> 20} MiB of memory "
                                f"(at most {MAX_SCRYPT_MEMORY >> 20} MiB is allowed)")
    try:
        return hashlib.scrypt(passphrase.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                              maxmem=need + 2**20, dklen=32)
    except ValueError as exc:  # n not a power of two, r or p zero
        raise RepositoryCorrupt(f"the key file's scrypt parameters are invalid: {exc}") from None


def wrap_keys(keys: MasterKeys, passphrase: str, repository_id: str) -> dict[str, Any]:
    """A key file: the master keys sealed under a passphrase-derived key."""
    salt = os.urandom(16)
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(_kek(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)).encrypt(
        nonce, keys.data_key + keys.id_key, _KEY_AAD + repository_id.encode())
    return {
        "version": 1,
        "repository": repository_id,
        "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                "salt": base64.b64encode(salt).decode()},
        "cipher": "aes-256-gcm",
        "sealed": base64.b64encode(nonce + sealed).decode(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
    }


def unwrap_keys(key_file: dict[str, Any], passphrase: str, repository_id: str) -> MasterKeys:
    """Open a key file; raises WrongPassphrase if the passphrase does not open it."""
    try:
        kdf = key_file["kdf"]
        if kdf["name"] != "scrypt" or key_file["cipher"] != "aes-256-gcm":
            raise RepositoryCorrupt(f"key file uses {kdf['name']}/{key_file['cipher']}, which "
                                    "this version of SBR does not know")
        salt = base64.b64decode(kdf["salt"])
        blob = base64.b64decode(key_file["sealed"])
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    except (KeyError, TypeError, ValueError):
        raise RepositoryCorrupt("key file is malformed") from None
    if key_file.get("repository") != repository_id:
        raise WrongPassphrase("key file belongs to another repository")
    try:
        plain = AESGCM(_kek(passphrase, salt, n, r, p)).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], _KEY_AAD + repository_id.encode())
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase for this repository") from None
    return MasterKeys(plain[:32], plain[32:64])


def key_file_bytes(key_file: dict[str, Any]) -> bytes:
    return json.dumps(key_file, indent=1, sort_keys=True).encode() + b"\n"
