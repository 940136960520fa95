"""Encryption at rest for self-hosted models' API tokens: AES-256-GCM under a dedicated key.

The key file is a keyring: one hex key per line, the first one encrypts, every one decrypts. The key id (a
digest of the key) is stored beside each ciphertext. `duo-sidecar rotate-key` puts a new key first,
re-encrypts every token, then drops the old keys; a running sidecar notices the file changed and follows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

_NONCE_BYTES = 12
KEY_BYTES = 32


class TokenKeyError(Exception):
    """A token cannot be decrypted with any key of the keyring; the message says which key it needs."""


@dataclass(frozen=True, slots=True)
class EncryptedToken:
    key_id: str
    ciphertext: bytes


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"duo-sidecar-token-key:" + key).hexdigest()[:16]


def read_keys(path: Path) -> list[bytes]:
    keys: list[bytes] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = bytes.fromhex(line)
        except ValueError:
            raise ValueError(f"{path}:{number}: not a hex key") from None
        if len(key) != KEY_BYTES:
            raise ValueError(f"{path}:{number}: expected {KEY_BYTES * 2} hex characters (a {KEY_BYTES}-byte key)")
        keys.append(key)
    if not keys:
        raise ValueError(f"{path}: holds no key")
    return keys


def write_keyring(path: Path, keys: list[bytes]) -> None:
    """Replaces the key file atomically, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(key.hex() + "\n" for key in keys))
    os.replace(partial, path)


class Keyring:
    def __init__(self, path: Path, keys: list[bytes]) -> None:
        self.path = path
        self._ciphers: dict[str, AESGCM] = {}
        self._primary = ""
        self._mtime = 0.0
        self._use(keys)

    @classmethod
    def open(cls, path: Path) -> Keyring:
        """Reads the key file, creating it with one new key (mode 0600) on first start."""
        if not path.exists():
            write_keyring(path, [AESGCM.generate_key(bit_length=256)])
            log.warning("created token encryption key %s (mode 0600); back it up with the database", path)
        return cls(path, read_keys(path))

    def _use(self, keys: list[bytes]) -> None:
        # Keys loaded earlier stay usable: this process may still hold tokens encrypted under them.
        for key in keys:
            self._ciphers.setdefault(key_id(key), AESGCM(key))
        self._primary = key_id(keys[0])
        self._mtime = self.path.stat().st_mtime if self.path.exists() else 0.0

    def has_key(self, key_id: str) -> bool:
        return key_id in self._ciphers

    def reload_if_changed(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            self._use(read_keys(self.path))
            log.info("token key file changed; encrypting under key %s", self._primary)

    def encrypt(self, token: str, associated_data: bytes) -> EncryptedToken:
        self.reload_if_changed()
        nonce = secrets.token_bytes(_NONCE_BYTES)
        cipher = self._ciphers[self._primary]
        return EncryptedToken(self._primary, nonce + cipher.encrypt(nonce, token.encode(), associated_data))

    def decrypt(self, encrypted: EncryptedToken, associated_data: bytes) -> str:
        cipher = self._ciphers.get(encrypted.key_id)
        if cipher is None:
            self.reload_if_changed()
            cipher = self._ciphers.get(encrypted.key_id)
        if cipher is None:
            raise TokenKeyError(
                f"a stored API token needs key {encrypted.key_id}, which is not in {self.path}; restore that key file"
            )
        nonce, body = encrypted.ciphertext[:_NONCE_BYTES], encrypted.ciphertext[_NONCE_BYTES:]
        try:
            return cipher.decrypt(nonce, body, associated_data).decode()
        except InvalidTag:
            raise TokenKeyError(f"a stored API token does not decrypt under key {encrypted.key_id}") from None
