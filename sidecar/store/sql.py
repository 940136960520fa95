"""The SQL both backends run, written once, and the code around it that does not depend on the backend.

Statements are written with `?` placeholders (SQLite's style); `numbered` turns them into PostgreSQL's `$1, $2 ...`
once, at import (`SQLITE` and `POSTGRES`). `Session` is one connection as these statements use it: each backend
supplies how a statement runs and how a timestamp is stored (SQLite: ISO text; PostgreSQL: TIMESTAMPTZ), and
`SqlTx` implements every StoreTx method whose SQL is the same on both. What really differs (SQLite's chunked
IN (...) and PRAGMAs, PostgreSQL's arrays, FOR UPDATE and pg_notify, transactions) stays in sqlite.py and
postgres.py.
"""

from __future__ import annotations

import abc
import functools
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple, TypeAlias

from sidecar.domain import (
    AuditEvent,
    Change,
    ChangeRecord,
    FeatureProvider,
    FeatureSetting,
    ModelFamily,
    Platform,
    SelfHostedModel,
)
from sidecar.impact import SeatHolders
from sidecar.store.base import KeepToken, StoredState, StoreHead, StoreTx, change_columns, change_record
from sidecar.tokens import EncryptedToken
from sidecar.users import UserRouting

# A result row: a sqlite3.Row or tuple, or an asyncpg.Record (indexable by column position).
Row: TypeAlias = Any

MODEL_COLUMNS = (
    "id, name, family, platform, endpoint, identifier, api_token_ciphertext IS NOT NULL, create_time, update_time"
)
AUDIT_COLUMNS = "id, time, actor, action, resource, before_json, after_json, config_version"
SCHEMA_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
HEAD = f"SELECT version, ({SCHEMA_VERSION}) FROM config_version WHERE id = 1"


def _upsert(table: str, keys: str, values: str) -> str:
    """Inserts a row, or replaces the values and update_time of the row with the same keys."""
    columns = f"{keys}, {values}, update_time"
    marks = ", ".join("?" * len(columns.split(", ")))
    updates = ", ".join(f"{c} = excluded.{c}" for c in (*values.split(", "), "update_time"))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({keys}) DO UPDATE SET {updates}"


class Statements(NamedTuple):
    """Every statement both backends run; the defaults are the SQLite spelling."""

    schema_version: str = SCHEMA_VERSION
    head: str = HEAD
    config_version: str = "SELECT version FROM config_version WHERE id = 1"
    insert_migration: str = "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"
    recorded_deployment_type: str = "SELECT deployment_type FROM instance_settings WHERE id = 1"
    record_deployment_type: str = (
        "INSERT INTO instance_settings (id, deployment_type) VALUES (1, ?) ON CONFLICT (id) DO NOTHING"
    )
    model_by_id: str = f"SELECT {MODEL_COLUMNS} FROM self_hosted_models WHERE id = ?"
    model_by_name: str = f"SELECT {MODEL_COLUMNS} FROM self_hosted_models WHERE name = ?"
    models: str = f"SELECT {MODEL_COLUMNS} FROM self_hosted_models"
    put_model: str = """
        INSERT INTO self_hosted_models
            (id, name, family, platform, endpoint, identifier, create_time, update_time)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET
            name = excluded.name, family = excluded.family, platform = excluded.platform,
            endpoint = excluded.endpoint, identifier = excluded.identifier,
            update_time = excluded.update_time
        """
    set_model_token: str = "UPDATE self_hosted_models SET api_token_key_id = ?, api_token_ciphertext = ? WHERE id = ?"
    delete_model: str = "DELETE FROM self_hosted_models WHERE id = ?"
    encrypted_tokens: str = (
        "SELECT id, api_token_key_id, api_token_ciphertext FROM self_hosted_models "
        "WHERE api_token_ciphertext IS NOT NULL"
    )
    # Byte order (SQLite's BINARY; PostgreSQL's "C", set below), not the database's locale.
    features_using_model: str = "SELECT feature FROM feature_settings WHERE self_hosted_model_id = ? ORDER BY feature"
    feature_setting: str = "SELECT provider, self_hosted_model_id FROM feature_settings WHERE feature = ?"
    feature_settings: str = "SELECT feature, provider, self_hosted_model_id FROM feature_settings"
    put_feature_setting: str = _upsert("feature_settings", "feature", "provider, self_hosted_model_id")
    instance_pin: str = "SELECT offered_model_ref FROM instance_model_selections WHERE feature = ?"
    instance_pins: str = "SELECT feature, offered_model_ref FROM instance_model_selections"
    put_instance_pin: str = _upsert("instance_model_selections", "feature", "offered_model_ref")
    delete_instance_pin: str = "DELETE FROM instance_model_selections WHERE feature = ?"
    namespace_pin: str = (
        "SELECT offered_model_ref FROM namespace_model_selections WHERE namespace_id = ? AND feature = ?"
    )
    namespace_pins: str = "SELECT namespace_id, feature, offered_model_ref FROM namespace_model_selections"
    put_namespace_pin: str = _upsert("namespace_model_selections", "namespace_id, feature", "offered_model_ref")
    delete_namespace_pin: str = "DELETE FROM namespace_model_selections WHERE namespace_id = ? AND feature = ?"
    allowlist: str = "SELECT model_refs_json FROM model_allowlists WHERE namespace_id = ? AND feature = ?"
    allowlists: str = "SELECT namespace_id, feature, model_refs_json FROM model_allowlists"
    put_allowlist: str = _upsert("model_allowlists", "namespace_id, feature", "model_refs_json")
    delete_allowlist: str = "DELETE FROM model_allowlists WHERE namespace_id = ? AND feature = ?"
    has_seat: str = "SELECT 1 FROM seat_assignments WHERE user_id = ? AND namespace_id = ?"
    default_namespace: str = "SELECT namespace_id FROM user_default_namespaces WHERE user_id = ?"
    put_default_namespace: str = _upsert("user_default_namespaces", "user_id", "namespace_id")
    delete_default_namespace: str = "DELETE FROM user_default_namespaces WHERE user_id = ?"
    # A user's seats (second column 0) and default namespace (1), in one round trip.
    user_routing: str = (
        "SELECT namespace_id, 0 FROM seat_assignments WHERE user_id = ? "
        "UNION ALL SELECT namespace_id, 1 FROM user_default_namespaces WHERE user_id = ?"
    )
    insert_change: str = "INSERT INTO config_changes (version, kind, keys_json, user_ids_json) VALUES (?, ?, ?, ?)"
    insert_audit_event: str = """
        INSERT INTO audit_events (time, actor, action, resource, before_json, after_json, config_version)
        VALUES (?, ?, ?, ?, ?, ?, ?)
        """
    changes_since: str = (
        "SELECT version, kind, keys_json, user_ids_json FROM config_changes WHERE version > ? ORDER BY version LIMIT ?"
    )
    # The seat holders of one namespace as far as a change of its pins can affect them (sidecar.impact), in one
    # query that walks the namespace's seats by index once: first (0, holders, 0), then (user, other seat namespace,
    # default) for every holder who has seats elsewhere too, default being 1 when the user's explicit default is
    # this namespace, 2 when it is another one where the user holds a seat, 0 when there is no valid default.
    namespace_seat_holders: str = """
        SELECT 0, COUNT(*), 0 FROM seat_assignments WHERE namespace_id = ?
        UNION ALL
        SELECT o.user_id, o.namespace_id, CASE
            WHEN d.namespace_id = mine.namespace_id THEN 1
            WHEN EXISTS (
                SELECT 1 FROM seat_assignments AS v WHERE v.user_id = mine.user_id AND v.namespace_id = d.namespace_id
            ) THEN 2
            ELSE 0 END
        FROM seat_assignments AS mine
        JOIN seat_assignments AS o ON o.user_id = mine.user_id AND o.namespace_id <> mine.namespace_id
        LEFT JOIN user_default_namespaces AS d ON d.user_id = mine.user_id
        WHERE mine.namespace_id = ?
        """


@functools.cache
def numbered(sql: str) -> str:
    """The statement with PostgreSQL's placeholders: the n-th `?` becomes `$n` (no statement has a `?` literal)."""
    counter = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _match: f"${next(counter)}", sql)


SQLITE = Statements()
POSTGRES = Statements(*map(numbered, SQLITE))._replace(
    features_using_model=numbered(SQLITE.features_using_model + ' COLLATE "C"'),
)


def as_time(value: datetime | str) -> datetime:
    """A stored timestamp: PostgreSQL returns a datetime, SQLite the ISO text it was given."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def read_model(row: Row) -> SelfHostedModel:
    """A row of MODEL_COLUMNS."""
    return SelfHostedModel(
        id=str(row[0]),
        name=str(row[1]),
        family=ModelFamily[str(row[2]).upper()],
        platform=Platform[str(row[3]).upper()],
        endpoint=str(row[4]),
        identifier=str(row[5]),
        api_token_set=bool(row[6]),
        create_time=as_time(row[7]),
        update_time=as_time(row[8]),
    )


def read_audit_event(row: Row) -> AuditEvent:
    """A row of AUDIT_COLUMNS."""
    return AuditEvent(
        id=int(row[0]),
        time=as_time(row[1]),
        actor=str(row[2]),
        action=str(row[3]),
        resource=str(row[4]),
        before_json=str(row[5]),
        after_json=str(row[6]),
        config_version=int(row[7]),
    )


def _refs(refs_json: str) -> tuple[str, ...]:
    return tuple(str(ref) for ref in json.loads(refs_json))


def read_setting(feature: str, provider: str, model_id: str | None) -> FeatureSetting:
    return FeatureSetting(feature, FeatureProvider[str(provider).upper()], str(model_id or ""))


class Session(abc.ABC):
    """One open connection, as the shared statements use it; each backend says how a statement runs."""

    sql: ClassVar[Statements]

    @abc.abstractmethod
    async def rows(self, sql: str, *params: object) -> Sequence[Row]: ...

    @abc.abstractmethod
    async def row(self, sql: str, *params: object) -> Row | None: ...

    @abc.abstractmethod
    async def run(self, sql: str, *params: object) -> None: ...

    @staticmethod
    @abc.abstractmethod
    def dialect(sql: str) -> str:
        """A statement built at run time (written with `?`) in this backend's placeholders."""

    @staticmethod
    @abc.abstractmethod
    def stamp(time: datetime) -> object:
        """A timestamp as this backend stores it."""

    def now(self) -> object:
        return self.stamp(datetime.now(UTC))

    async def schema_version(self) -> int:
        row = await self.row(self.sql.schema_version)
        return int(row[0]) if row else 0

    async def head(self) -> StoreHead:
        row = await self.row(self.sql.head)
        return StoreHead(int(row[0]), int(row[1])) if row else StoreHead(0, 0)

    async def deployment_type(self) -> str | None:
        row = await self.row(self.sql.recorded_deployment_type)
        return None if row is None or row[0] is None else str(row[0])

    async def claim_deployment_type(self, deployment_type: str) -> str | None:
        """Records the type unless one is recorded already (one atomic statement); returns the recorded one."""
        await self.run(self.sql.record_deployment_type, deployment_type)
        return await self.deployment_type()

    async def state(self, changes_after: int | None, changes_limit: int) -> StoredState:
        """Every table (inside the backend's one consistent read)."""
        row = await self.row(self.sql.config_version)
        state = StoredState(config_version=int(row[0]) if row else 0)
        state.self_hosted_models = [read_model(r) for r in await self.rows(self.sql.models)]
        state.feature_settings = [read_setting(r[0], r[1], r[2]) for r in await self.rows(self.sql.feature_settings)]
        state.instance_pins = {str(r[0]): str(r[1]) for r in await self.rows(self.sql.instance_pins)}
        state.namespace_pins = [(int(r[0]), str(r[1]), str(r[2])) for r in await self.rows(self.sql.namespace_pins)]
        state.api_tokens = await self.encrypted_tokens()
        state.allowlists = [(int(r[0]), str(r[1]), _refs(r[2])) for r in await self.rows(self.sql.allowlists)]
        if changes_after is not None:
            state.changes = await self.changes_since(changes_after, changes_limit)
        return state

    async def encrypted_tokens(self) -> dict[str, EncryptedToken]:
        rows = await self.rows(self.sql.encrypted_tokens)
        return {str(r[0]): EncryptedToken(str(r[1]), bytes(r[2])) for r in rows}

    async def changes_since(self, version: int, limit: int) -> list[ChangeRecord]:
        return [change_record(*r) for r in await self.rows(self.sql.changes_since, version, limit)]

    async def load_user(self, user_id: int) -> UserRouting:
        rows = await self.rows(self.sql.user_routing, user_id, user_id)
        seats = frozenset(int(r[0]) for r in rows if not r[1])
        return UserRouting(seats, next((int(r[0]) for r in rows if r[1]), 0))

    async def namespace_seat_holders(self, namespace_id: int) -> SeatHolders:
        rows = await self.rows(self.sql.namespace_seat_holders, namespace_id, namespace_id)
        count = 0
        others: dict[int, list[int]] = {}
        default: dict[int, int] = {}
        for row in rows:
            user_id = int(row[0])
            if user_id == 0:  # user ids are positive: this is the count
                count = int(row[1])
            else:
                others.setdefault(user_id, []).append(int(row[1]))
                default[user_id] = int(row[2])
        # Governed by this namespace: its only seat holders, and those whose explicit default it is.
        governed = count - len(others) + sum(1 for state in default.values() if state == 1)
        contested = [seats for user_id, seats in others.items() if default[user_id] == 0]
        return SeatHolders(count, governed, contested)

    async def list_seat_assignments(
        self, user_id: int, namespace_id: int, after: tuple[int, int] | None, limit: int
    ) -> list[tuple[int, int]]:
        where = ["(user_id, namespace_id) > (?, ?)"]
        params: list[object] = list(after or (0, 0))
        if user_id:
            where.append("user_id = ?")
            params.append(user_id)
        if namespace_id:
            where.append("namespace_id = ?")
            params.append(namespace_id)
        params.append(limit)
        where_sql = " AND ".join(where)
        sql = f"SELECT user_id, namespace_id FROM seat_assignments WHERE {where_sql} ORDER BY user_id, namespace_id"
        sql += " LIMIT ?"
        return [(int(r[0]), int(r[1])) for r in await self.rows(self.dialect(sql), *params)]

    async def list_audit_events(self, resource_prefix: str, before_id: int | None, limit: int) -> list[AuditEvent]:
        where = ["id < ?"]
        params: list[object] = [before_id if before_id is not None else 2**63 - 1]
        if resource_prefix:
            where.append("substr(resource, 1, ?) = ?")
            params += [len(resource_prefix), resource_prefix]
        params.append(limit)
        where_sql = " AND ".join(where)
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit_events WHERE {where_sql} ORDER BY id DESC LIMIT ?"
        return [read_audit_event(r) for r in await self.rows(self.dialect(sql), *params)]


class SqlTx(Session, StoreTx):
    """The StoreTx methods whose SQL is the same on both backends (inside the backend's write transaction)."""

    @abc.abstractmethod
    async def _next_version(self) -> int:
        """Bumps config_version and returns the new version."""

    async def _announce(self, version: int) -> None:
        """Runs last in record_change, in the same transaction: the backend's change signal, if it sends one."""

    async def _put_or_delete(self, put: str, delete: str, keys: tuple[object, ...], value: object) -> None:
        if value:
            await self.run(put, *keys, value, self.now())
        else:
            await self.run(delete, *keys)

    async def get_self_hosted_model(self, model_id: str) -> SelfHostedModel | None:
        row = await self.row(self.sql.model_by_id, model_id)
        return read_model(row) if row else None

    async def find_self_hosted_model_by_name(self, name: str) -> SelfHostedModel | None:
        row = await self.row(self.sql.model_by_name, name)
        return read_model(row) if row else None

    async def put_self_hosted_model(self, model: SelfHostedModel, token: EncryptedToken | KeepToken | None) -> None:
        await self.run(
            self.sql.put_model,
            model.id,
            model.name,
            model.family.gitlab_name,
            model.platform.name.lower(),
            model.endpoint,
            model.identifier,
            self.stamp(model.create_time),
            self.stamp(model.update_time),
        )
        if not isinstance(token, KeepToken):
            key_id, ciphertext = (token.key_id, token.ciphertext) if token else (None, None)
            await self.run(self.sql.set_model_token, key_id, ciphertext, model.id)

    async def delete_self_hosted_model(self, model_id: str) -> None:
        await self.run(self.sql.delete_model, model_id)

    async def features_using_model(self, model_id: str) -> list[str]:
        return [str(r[0]) for r in await self.rows(self.sql.features_using_model, model_id)]

    async def get_feature_setting(self, feature: str) -> FeatureSetting | None:
        row = await self.row(self.sql.feature_setting, feature)
        return read_setting(feature, row[0], row[1]) if row else None

    async def put_feature_setting(self, setting: FeatureSetting) -> None:
        await self.run(
            self.sql.put_feature_setting,
            setting.feature,
            setting.provider.name.lower(),
            setting.self_hosted_model_id or None,
            self.now(),
        )

    async def get_instance_pin(self, feature: str) -> str | None:
        row = await self.row(self.sql.instance_pin, feature)
        return str(row[0]) if row else None

    async def set_instance_pin(self, feature: str, ref: str | None) -> None:
        await self._put_or_delete(self.sql.put_instance_pin, self.sql.delete_instance_pin, (feature,), ref)

    async def get_namespace_pin(self, namespace_id: int, feature: str) -> str | None:
        row = await self.row(self.sql.namespace_pin, namespace_id, feature)
        return str(row[0]) if row else None

    async def set_namespace_pin(self, namespace_id: int, feature: str, ref: str | None) -> None:
        keys = (namespace_id, feature)
        await self._put_or_delete(self.sql.put_namespace_pin, self.sql.delete_namespace_pin, keys, ref)

    async def get_allowlist(self, namespace_id: int, feature: str) -> tuple[str, ...] | None:
        row = await self.row(self.sql.allowlist, namespace_id, feature)
        return _refs(row[0]) if row else None

    async def set_allowlist(self, namespace_id: int, feature: str, refs: tuple[str, ...] | None) -> None:
        if refs is None:
            await self.run(self.sql.delete_allowlist, namespace_id, feature)
        else:
            await self.run(self.sql.put_allowlist, namespace_id, feature, json.dumps(list(refs)), self.now())

    async def user_has_seat(self, user_id: int, namespace_id: int) -> bool:
        return await self.row(self.sql.has_seat, user_id, namespace_id) is not None

    async def get_default_namespace(self, user_id: int) -> int:
        row = await self.row(self.sql.default_namespace, user_id)
        return int(row[0]) if row else 0

    async def set_default_namespace(self, user_id: int, namespace_id: int) -> None:
        sql = self.sql
        await self._put_or_delete(sql.put_default_namespace, sql.delete_default_namespace, (user_id,), namespace_id)

    async def set_encrypted_token(self, model_id: str, token: EncryptedToken) -> None:
        await self.run(self.sql.set_model_token, token.key_id, token.ciphertext, model_id)

    async def record_change(
        self, actor: str, action: str, resource: str, before_json: str, after_json: str, change: Change
    ) -> int:
        version = await self._next_version()
        await self.run(self.sql.insert_change, version, *change_columns(change))
        await self.run(
            self.sql.insert_audit_event, self.now(), actor, action, resource, before_json, after_json, version
        )
        await self._announce(version)
        return version

    async def record_audit_event(
        self, actor: str, action: str, resource: str, before_json: str, after_json: str, version: int
    ) -> None:
        await self.run(
            self.sql.insert_audit_event, self.now(), actor, action, resource, before_json, after_json, version
        )
