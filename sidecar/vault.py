"""The API tokens of self-hosted models, held encrypted in memory and decrypted only for the upstream request
that needs one."""

from __future__ import annotations

from sidecar.errors import failed_precondition
from sidecar.store.base import KEEP_TOKEN, KeepToken
from sidecar.tokens import EncryptedToken, Keyring, TokenKeyError


class TokenVault:
    def __init__(self, keyring: Keyring, tokens: dict[str, EncryptedToken]) -> None:
        self.keyring = keyring
        self._tokens = dict(tokens)

    def api_token(self, model_id: str) -> str | None:
        encrypted = self._tokens.get(model_id)
        if encrypted is None:
            return None
        try:
            return self.keyring.decrypt(encrypted, model_id.encode())
        except TokenKeyError as exc:
            raise failed_precondition(
                "TOKEN_KEY_UNAVAILABLE",
                f"the API token of self-hosted model {model_id} cannot be decrypted: {exc}. Restore the key file "
                "from backup, or set the token again (duo-admin models update ID --api-token-file PATH)",
                subject=f"selfHostedModels/{model_id}",
            ) from None

    def encrypt(self, model_id: str, token: str | None) -> EncryptedToken | KeepToken | None:
        """None: keep the stored token; "": remove it."""
        if token is None:
            return KEEP_TOKEN
        return self.keyring.encrypt(token, model_id.encode()) if token else None

    def undecryptable(self) -> list[str]:
        """Models whose stored API token no key of the keyring opens (a lost or replaced key file)."""
        return sorted(m for m, e in self._tokens.items() if not self.keyring.has_key(e.key_id))

    def remember(self, model_id: str, token: EncryptedToken | KeepToken | None) -> None:
        """A committed change of one model's token."""
        if isinstance(token, EncryptedToken):
            self._tokens[model_id] = token
        elif token is None:
            self._tokens.pop(model_id, None)

    def replace_all(self, tokens: dict[str, EncryptedToken]) -> None:
        """Every token as a full reload read them."""
        self._tokens = dict(tokens)
