"""Encryption at rest for self-hosted models' API tokens: AES-256-GCM under a dedicated key.

The key id (a digest of the key) is stored beside each ciphertext so a rotated key can be told apart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

_NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class EncryptedToken:
    key_id: str
    ciphertext: bytes


class TokenCipher:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the token encryption key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"duo-sidecar-token-key:" + key).hexdigest()[:16]

    def encrypt(self, token: str, associated_data: bytes) -> EncryptedToken:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return EncryptedToken(self.key_id, nonce + self._aead.encrypt(nonce, token.encode(), associated_data))

    def decrypt(self, encrypted: EncryptedToken, associated_data: bytes) -> str:
        if encrypted.key_id != self.key_id:
            raise ValueError(f"token was encrypted with key {encrypted.key_id}, not the configured {self.key_id}")
        nonce, body = encrypted.ciphertext[:_NONCE_BYTES], encrypted.ciphertext[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, body, associated_data).decode()


def load_or_create_key(path: Path) -> bytes:
    """Reads a hex key file, creating it (mode 0600) on first start."""
    if path.exists():
        key = bytes.fromhex(path.read_text().strip())
        if len(key) != 32:
            raise ValueError(f"{path}: expected 64 hex characters (a 32-byte key)")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    log.warning("created token encryption key %s (mode 0600); back it up with the database", path)
    return key
