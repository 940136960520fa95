"""The storage interface, implemented by SQLite (embedded, sqlite.py) and PostgreSQL (fleet, postgres.py).

Every admin change runs in one StoreTx: read the state before, write, then record_change(), which bumps the
config version and writes the typed change record (what followers apply) and the audit event (for people) in the
same transaction.
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import NamedTuple

from sidecar.domain import (
    AuditEvent,
    Change,
    ChangeKind,
    ChangeRecord,
    DeploymentType,
    FeatureSetting,
    SeatChange,
    SelfHostedModel,
)
from sidecar.impact import SeatHolders
from sidecar.tokens import EncryptedToken
from sidecar.users import UserRouting


@dataclass
class StoredState:
    """Everything the snapshot is built from (per-user data is loaded per user: StoreTx.load_user)."""

    config_version: int
    self_hosted_models: list[SelfHostedModel] = field(default_factory=list)
    feature_settings: list[FeatureSetting] = field(default_factory=list)
    instance_pins: dict[str, str] = field(default_factory=dict)
    namespace_pins: list[tuple[int, str, str]] = field(default_factory=list)
    api_tokens: dict[str, EncryptedToken] = field(default_factory=dict)
    # Model allowlists that are on: (namespace_id, 0 for the instance; feature; model refs in the order given).
    allowlists: list[tuple[int, str, tuple[str, ...]]] = field(default_factory=list)
    # Change records after the version asked for, read in the same consistent view (oldest first, limited).
    changes: list[ChangeRecord] = field(default_factory=list)


class StoreHead(NamedTuple):
    """What a follower looks at first: the committed config version and the schema version."""

    config_version: int
    schema_version: int


def change_columns(change: Change) -> tuple[str, str, str]:
    """A change record as stored: kind, keys_json, user_ids_json."""
    return change.kind.value, json.dumps(list(change.keys)), json.dumps(list(change.user_ids))


def change_record(version: int, kind: str, keys_json: str, user_ids_json: str) -> ChangeRecord:
    keys = tuple(str(k) for k in json.loads(keys_json))
    user_ids = tuple(int(u) for u in json.loads(user_ids_json))
    return ChangeRecord(int(version), Change(ChangeKind(kind), keys, user_ids))


async def despite_cancellation(step: Awaitable[object]) -> None:
    """Runs a step that ends a transaction (COMMIT, ROLLBACK) to completion even if the awaiting task is
    cancelled meanwhile; the cancellation is re-raised once the step is done, so no transaction stays open."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def schema_too_new_message(where: str, found: int, known: int) -> str:
    return (
        f"{where}: database schema version {found} is newer than this sidecar supports ({known}); "
        "run the newer sidecar or restore a backup"
    )


def deployment_type_mismatch_message(where: str, recorded: str, configured: str) -> str:
    """Why a sidecar configured for one deployment type refuses a database recorded for another, and what to do."""

    def named(config_name: str) -> str:
        title = next((d.title for d in DeploymentType if d.config_name == config_name), config_name)
        return f"{title} ({config_name})"

    return (
        f"{where}: this database serves {named(recorded)}, but instance.deployment_type is {configured}: the "
        f"settings of one deployment type do not apply to another, so this sidecar refuses to start. Either set "
        f"instance.deployment_type back to {recorded}, or start {named(configured)} on a fresh database (a new "
        "storage.path or data directory, or an empty PostgreSQL database)"
    )


def seat_effects(
    held: set[tuple[int, int]], changes: Sequence[SeatChange]
) -> tuple[list[SeatChange], list[tuple[int, int]], list[tuple[int, int]]]:
    """The changes that alter the held seats (in order), and the net rows to add and to remove.

    Net, so an assign-then-remove in one batch writes nothing. `held` is updated in place.
    """
    effective: list[SeatChange] = []
    for change in changes:
        key = (change.user_id, change.namespace_id)
        if change.assigned and key not in held:
            held.add(key)
            effective.append(change)
        elif not change.assigned and key in held:
            held.discard(key)
            effective.append(change)
    net: dict[tuple[int, int], bool] = {}
    for change in effective:
        net[(change.user_id, change.namespace_id)] = change.assigned
    added = [key for key, assigned in net.items() if assigned]
    removed = [key for key, assigned in net.items() if not assigned]
    return effective, added, removed


class KeepToken:
    """Marker: leave a stored API token as it is."""


KEEP_TOKEN = KeepToken()


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer sidecar; this one refuses to touch it."""


class StoreUnavailableError(RuntimeError):
    """The store cannot be opened (such as a database server that cannot be reached); the message says why."""


class StoreTx(abc.ABC):
    @abc.abstractmethod
    async def get_self_hosted_model(self, model_id: str) -> SelfHostedModel | None: ...

    @abc.abstractmethod
    async def find_self_hosted_model_by_name(self, name: str) -> SelfHostedModel | None: ...

    @abc.abstractmethod
    async def put_self_hosted_model(self, model: SelfHostedModel, token: EncryptedToken | KeepToken | None) -> None: ...

    @abc.abstractmethod
    async def delete_self_hosted_model(self, model_id: str) -> None: ...

    @abc.abstractmethod
    async def features_using_model(self, model_id: str) -> list[str]: ...

    @abc.abstractmethod
    async def get_feature_setting(self, feature: str) -> FeatureSetting | None: ...

    @abc.abstractmethod
    async def put_feature_setting(self, setting: FeatureSetting) -> None: ...

    @abc.abstractmethod
    async def get_instance_pin(self, feature: str) -> str | None: ...

    @abc.abstractmethod
    async def set_instance_pin(self, feature: str, ref: str | None) -> None: ...

    @abc.abstractmethod
    async def get_namespace_pin(self, namespace_id: int, feature: str) -> str | None: ...

    @abc.abstractmethod
    async def set_namespace_pin(self, namespace_id: int, feature: str, ref: str | None) -> None: ...

    @abc.abstractmethod
    async def get_allowlist(self, namespace_id: int, feature: str) -> tuple[str, ...] | None:
        """A model allowlist's refs (namespace_id 0: the instance's); None when the allowlist is off."""

    @abc.abstractmethod
    async def set_allowlist(self, namespace_id: int, feature: str, refs: tuple[str, ...] | None) -> None:
        """Turns an allowlist on with these refs, or off (None), which forgets its refs."""

    @abc.abstractmethod
    async def apply_seat_changes(self, changes: Sequence[SeatChange]) -> list[SeatChange]:
        """Applies changes in order; returns those that changed the stored state."""

    @abc.abstractmethod
    async def user_has_seat(self, user_id: int, namespace_id: int) -> bool: ...

    @abc.abstractmethod
    async def get_default_namespace(self, user_id: int) -> int: ...

    @abc.abstractmethod
    async def set_default_namespace(self, user_id: int, namespace_id: int) -> None: ...

    @abc.abstractmethod
    async def encrypted_tokens(self) -> dict[str, EncryptedToken]:
        """Every stored API token, by model id."""

    @abc.abstractmethod
    async def set_encrypted_token(self, model_id: str, token: EncryptedToken) -> None: ...

    @abc.abstractmethod
    async def record_change(
        self, actor: str, action: str, resource: str, before_json: str, after_json: str, change: Change
    ) -> int:
        """Bumps the config version, writes the change record and the audit event; returns the new version."""

    @abc.abstractmethod
    async def record_audit_event(
        self, actor: str, action: str, resource: str, before_json: str, after_json: str, version: int
    ) -> None:
        """One more audit event of the change recorded as `version` (a change that touches several settings)."""


class Store(abc.ABC):
    backend_name: str
    # How often a follower catches up unasked: the safety net for a watch that can miss a change (LISTEN while
    # its connection is down). Backends whose watch misses nothing set it longer: each wake-up costs CPU.
    follow_poll_seconds: float = 1.0

    @abc.abstractmethod
    async def open(self) -> None:
        """Connects and applies pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def probe(self) -> None:
        """Raises when the store can no longer serve (closed, unreadable, its file gone); cheap enough to run
        every few seconds (the health probe does)."""

    @abc.abstractmethod
    async def load_state(self, changes_after: int | None = None, changes_limit: int = 0) -> StoredState:
        """Every table the snapshot is built from, in one consistent read; with `changes_after`, also up to
        `changes_limit` change records after that version, read in the same view."""

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[StoreTx]:
        """One write transaction; committed when the block exits normally, rolled back otherwise, and never
        left open, whatever happens to the awaiting task. Raises SchemaTooNewError when a newer sidecar has
        migrated the database since this one opened it: this sidecar must not write to it."""

    @abc.abstractmethod
    async def load_user(self, user_id: int) -> UserRouting:
        """One user's seats and default namespace: one indexed query."""

    @abc.abstractmethod
    async def list_seat_assignments(
        self, user_id: int, namespace_id: int, after: tuple[int, int] | None, limit: int
    ) -> list[tuple[int, int]]:
        """(user_id, namespace_id) pairs ordered by user then namespace, after the given key."""

    @abc.abstractmethod
    async def namespace_seat_holders(self, namespace_id: int) -> SeatHolders:
        """A namespace's seat holders as a change of its pins can affect them (sidecar.impact): one query."""

    @abc.abstractmethod
    async def list_audit_events(self, resource_prefix: str, before_id: int | None, limit: int) -> list[AuditEvent]:
        """Newest first, ids below before_id."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    async def changes_since(self, version: int, limit: int) -> list[ChangeRecord]:
        """Change records of versions after `version`, oldest first."""

    @abc.abstractmethod
    async def watch(self, on_change: Callable[[], None]) -> None:
        """Runs until cancelled, calling on_change soon after another process commits a change."""

    @abc.abstractmethod
    async def config_version(self) -> int:
        """The committed config version, read from the database (one cheap query)."""

    @abc.abstractmethod
    async def head(self) -> StoreHead:
        """The committed config version and the schema version (one cheap query)."""

    @abc.abstractmethod
    async def deployment_type(self) -> str | None:
        """The deployment type recorded for this database (a config name such as "gitlab_com"), None before the
        first sidecar started on it."""

    @abc.abstractmethod
    async def claim_deployment_type(self, deployment_type: str) -> str:
        """Records `deployment_type` unless a type is recorded already; returns the recorded one. Atomic: of
        sidecars starting together on a new database, one records its type and the others get it back."""
