"""`duo-sidecar rotate-key`: a new token key, every API token re-encrypted under it, the old key dropped.

Safe while sidecars run: the key file first holds the new key and the old ones, so every process can
decrypt either; the tokens are re-encrypted in one transaction; only then is the old key removed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar.domain import Change, ChangeKind
from sidecar.store.base import Store
from sidecar.tokens import Keyring, TokenKeyError, key_id, read_keys, write_keyring


@dataclass(frozen=True)
class RotationResult:
    old_key_ids: list[str]
    new_key_id: str
    tokens: int
    config_version: int


async def rotate_key(store: Store, key_path: Path, actor: str) -> RotationResult:
    try:
        old_keys = read_keys(key_path)
    except FileNotFoundError:
        raise TokenKeyError(f"{key_path} does not exist: there is no key to rotate (the sidecar creates it)") from None
    new_key = AESGCM.generate_key(bit_length=256)
    write_keyring(key_path, [new_key, *old_keys])
    keyring = Keyring(key_path, [new_key, *old_keys])
    try:
        async with store.transaction() as tx:
            tokens = await tx.encrypted_tokens()
            for model_id, encrypted in tokens.items():
                plain = keyring.decrypt(encrypted, model_id.encode())
                await tx.set_encrypted_token(model_id, keyring.encrypt(plain, model_id.encode()))
            version = await tx.record_change(
                actor,
                "RotateTokenKey",
                "tokenKey",
                json.dumps({"key_id": key_id(old_keys[0])}),
                json.dumps({"key_id": key_id(new_key), "tokens_reencrypted": len(tokens)}),
                Change(ChangeKind.API_TOKENS, tuple(sorted(tokens))),
            )
    except BaseException:
        write_keyring(key_path, old_keys)  # nothing changed in storage: put the old keyring back
        raise
    write_keyring(key_path, [new_key])
    return RotationResult([key_id(k) for k in old_keys], key_id(new_key), len(tokens), version)
