"""The embedded SQLite backend: one file, WAL, a single writer connection and a reader connection."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from sidecar.domain import (
    AuditEvent,
    Change,
    ChangeRecord,
    FeatureProvider,
    FeatureSetting,
    ModelFamily,
    Platform,
    SeatChange,
    SelfHostedModel,
)
from sidecar.store.base import (
    RECORD_DEPLOYMENT_TYPE_SQL,
    RECORDED_DEPLOYMENT_TYPE_SQL,
    KeepToken,
    Store,
    StoredState,
    StoreHead,
    StoreTx,
    change_columns,
    change_record,
    despite_cancellation,
    schema_too_new_message,
    seat_effects,
)
from sidecar.store.base import SchemaTooNewError as SchemaTooNewError  # re-exported: callers import it from here
from sidecar.store.migrations import LATEST_VERSION, MIGRATIONS
from sidecar.tokens import EncryptedToken
from sidecar.users import UserRouting

_SQL_VARIABLES_PER_QUERY = 500


class DatabaseLockedError(RuntimeError):
    """Another process holds the database's lock file in a conflicting mode."""


class DatabaseLock:
    """An advisory flock on `<db>.lock`: sidecars hold it shared while the database is open, restore exclusively.

    Shared, so processes that share one database keep working; exclusive, so a restore never swaps the file under
    a running sidecar and no sidecar starts halfway through a restore. The kernel drops it if the process dies.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self, *, exclusive: bool) -> None:
        # Read-only and 0644: flock needs no write access, so a lock file created by root does not lock out others.
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = "a running duo-sidecar (or duo-sidecar migrate)" if exclusive else "duo-sidecar restore"
            raise DatabaseLockedError(f"{self.db_path}: in use by {holder} (lock {self.path})") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _file_id(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


_MODEL_COLUMNS = (
    "id, name, family, platform, endpoint, identifier, api_token_ciphertext IS NOT NULL, create_time, update_time"
)


_AUDIT_COLUMNS = "id, time, actor, action, resource, before_json, after_json, config_version"
# How often other processes' commits are looked for (PRAGMA data_version is a cheap, local read).
WATCH_INTERVAL_SECONDS = 0.2


def _audit_event(r: sqlite3.Row | tuple[object, ...]) -> AuditEvent:
    return AuditEvent(
        id=int(str(r[0])),
        time=_time(str(r[1])),
        actor=str(r[2]),
        action=str(r[3]),
        resource=str(r[4]),
        before_json=str(r[5]),
        after_json=str(r[6]),
        config_version=int(str(r[7])),
    )


def _model(row: sqlite3.Row | tuple[object, ...]) -> SelfHostedModel:
    return SelfHostedModel(
        id=str(row[0]),
        name=str(row[1]),
        family=ModelFamily[str(row[2]).upper()],
        platform=Platform[str(row[3]).upper()],
        endpoint=str(row[4]),
        identifier=str(row[5]),
        api_token_set=bool(row[6]),
        create_time=_time(str(row[7])),
        update_time=_time(str(row[8])),
    )


class SQLiteTx(StoreTx):
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def _one(self, sql: str, *params: object) -> tuple[object, ...] | None:
        async with self._db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return tuple(row) if row is not None else None

    async def get_self_hosted_model(self, model_id: str) -> SelfHostedModel | None:
        row = await self._one(f"SELECT {_MODEL_COLUMNS} FROM self_hosted_models WHERE id = ?", model_id)
        return _model(row) if row else None

    async def find_self_hosted_model_by_name(self, name: str) -> SelfHostedModel | None:
        row = await self._one(f"SELECT {_MODEL_COLUMNS} FROM self_hosted_models WHERE name = ?", name)
        return _model(row) if row else None

    async def put_self_hosted_model(self, model: SelfHostedModel, token: EncryptedToken | KeepToken | None) -> None:
        await self._db.execute(
            """
            INSERT INTO self_hosted_models
                (id, name, family, platform, endpoint, identifier, create_time, update_time)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (id) DO UPDATE SET
                name = excluded.name, family = excluded.family, platform = excluded.platform,
                endpoint = excluded.endpoint, identifier = excluded.identifier,
                update_time = excluded.update_time
            """,
            (
                model.id,
                model.name,
                model.family.gitlab_name,
                model.platform.name.lower(),
                model.endpoint,
                model.identifier,
                model.create_time.isoformat(),
                model.update_time.isoformat(),
            ),
        )
        if not isinstance(token, KeepToken):
            await self._db.execute(
                "UPDATE self_hosted_models SET api_token_key_id = ?, api_token_ciphertext = ? WHERE id = ?",
                (token.key_id if token else None, token.ciphertext if token else None, model.id),
            )

    async def delete_self_hosted_model(self, model_id: str) -> None:
        await self._db.execute("DELETE FROM self_hosted_models WHERE id = ?", (model_id,))

    async def features_using_model(self, model_id: str) -> list[str]:
        async with self._db.execute(
            "SELECT feature FROM feature_settings WHERE self_hosted_model_id = ? ORDER BY feature",
            (model_id,),
        ) as cursor:
            return [str(row[0]) async for row in cursor]

    async def get_feature_setting(self, feature: str) -> FeatureSetting | None:
        row = await self._one("SELECT provider, self_hosted_model_id FROM feature_settings WHERE feature = ?", feature)
        if row is None:
            return None
        return FeatureSetting(feature, FeatureProvider[str(row[0]).upper()], str(row[1] or ""))

    async def put_feature_setting(self, setting: FeatureSetting) -> None:
        await self._db.execute(
            """
            INSERT INTO feature_settings (feature, provider, self_hosted_model_id, update_time)
            VALUES (?, ?, ?, ?)
            ON CONFLICT (feature) DO UPDATE SET provider = excluded.provider,
                self_hosted_model_id = excluded.self_hosted_model_id, update_time = excluded.update_time
            """,
            (
                setting.feature,
                setting.provider.name.lower(),
                setting.self_hosted_model_id or None,
                _now(),
            ),
        )

    async def get_instance_pin(self, feature: str) -> str | None:
        row = await self._one("SELECT offered_model_ref FROM instance_model_selections WHERE feature = ?", feature)
        return str(row[0]) if row else None

    async def set_instance_pin(self, feature: str, ref: str | None) -> None:
        if ref:
            await self._db.execute(
                """
                INSERT INTO instance_model_selections (feature, offered_model_ref, update_time) VALUES (?, ?, ?)
                ON CONFLICT (feature) DO UPDATE SET offered_model_ref = excluded.offered_model_ref,
                    update_time = excluded.update_time
                """,
                (feature, ref, _now()),
            )
        else:
            await self._db.execute("DELETE FROM instance_model_selections WHERE feature = ?", (feature,))

    async def get_namespace_pin(self, namespace_id: int, feature: str) -> str | None:
        row = await self._one(
            "SELECT offered_model_ref FROM namespace_model_selections WHERE namespace_id = ? AND feature = ?",
            namespace_id,
            feature,
        )
        return str(row[0]) if row else None

    async def set_namespace_pin(self, namespace_id: int, feature: str, ref: str | None) -> None:
        if ref:
            await self._db.execute(
                """
                INSERT INTO namespace_model_selections (namespace_id, feature, offered_model_ref, update_time)
                VALUES (?, ?, ?, ?)
                ON CONFLICT (namespace_id, feature) DO UPDATE SET
                    offered_model_ref = excluded.offered_model_ref, update_time = excluded.update_time
                """,
                (namespace_id, feature, ref, _now()),
            )
        else:
            await self._db.execute(
                "DELETE FROM namespace_model_selections WHERE namespace_id = ? AND feature = ?",
                (namespace_id, feature),
            )

    async def apply_seat_changes(self, changes: Sequence[SeatChange]) -> list[SeatChange]:
        users = sorted({c.user_id for c in changes})
        held: set[tuple[int, int]] = set()
        for start in range(0, len(users), _SQL_VARIABLES_PER_QUERY):
            chunk = users[start : start + _SQL_VARIABLES_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            async with self._db.execute(
                f"SELECT user_id, namespace_id FROM seat_assignments WHERE user_id IN ({marks})", chunk
            ) as cursor:
                held.update((int(r[0]), int(r[1])) for r in await cursor.fetchall())
        effective, added, removed = seat_effects(held, changes)
        await self._db.executemany(
            "INSERT OR IGNORE INTO seat_assignments (user_id, namespace_id) VALUES (?, ?)",
            added,
        )
        await self._db.executemany(
            "DELETE FROM seat_assignments WHERE user_id = ? AND namespace_id = ?",
            removed,
        )
        return effective

    async def user_has_seat(self, user_id: int, namespace_id: int) -> bool:
        row = await self._one(
            "SELECT 1 FROM seat_assignments WHERE user_id = ? AND namespace_id = ?", user_id, namespace_id
        )
        return row is not None

    async def get_default_namespace(self, user_id: int) -> int:
        row = await self._one("SELECT namespace_id FROM user_default_namespaces WHERE user_id = ?", user_id)
        return int(str(row[0])) if row else 0

    async def set_default_namespace(self, user_id: int, namespace_id: int) -> None:
        if namespace_id:
            await self._db.execute(
                """
                INSERT INTO user_default_namespaces (user_id, namespace_id, update_time) VALUES (?, ?, ?)
                ON CONFLICT (user_id) DO UPDATE SET namespace_id = excluded.namespace_id,
                    update_time = excluded.update_time
                """,
                (user_id, namespace_id, _now()),
            )
        else:
            await self._db.execute("DELETE FROM user_default_namespaces WHERE user_id = ?", (user_id,))

    async def encrypted_tokens(self) -> dict[str, EncryptedToken]:
        async with self._db.execute(
            "SELECT id, api_token_key_id, api_token_ciphertext FROM self_hosted_models "
            "WHERE api_token_ciphertext IS NOT NULL"
        ) as cursor:
            return {str(r[0]): EncryptedToken(str(r[1]), bytes(r[2])) for r in await cursor.fetchall()}

    async def set_encrypted_token(self, model_id: str, token: EncryptedToken) -> None:
        await self._db.execute(
            "UPDATE self_hosted_models SET api_token_key_id = ?, api_token_ciphertext = ? WHERE id = ?",
            (token.key_id, token.ciphertext, model_id),
        )

    async def record_change(
        self, actor: str, action: str, resource: str, before_json: str, after_json: str, change: Change
    ) -> int:
        await self._db.execute("UPDATE config_version SET version = version + 1 WHERE id = 1")
        row = await self._one("SELECT version FROM config_version WHERE id = 1")
        assert row is not None
        version = int(str(row[0]))
        await self._db.execute(
            "INSERT INTO config_changes (version, kind, keys_json, user_ids_json) VALUES (?, ?, ?, ?)",
            (version, *change_columns(change)),
        )
        await self._db.execute(
            """
            INSERT INTO audit_events (time, actor, action, resource, before_json, after_json, config_version)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            """,
            (_now(), actor, action, resource, before_json, after_json, version),
        )
        return version


class SQLiteStore(Store):
    backend_name = "sqlite"

    def __init__(self, path: Path, *, timeout_seconds: float = 5.0) -> None:
        self.path = path
        # storage.timeout_seconds: how long a statement waits for another connection's lock (busy_timeout) before
        # it fails with "database is locked", which callers answer with UNAVAILABLE.
        self.timeout_seconds = timeout_seconds
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._file_lock = DatabaseLock(path)
        self._file_id: tuple[int, int] | None = None

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute(f"PRAGMA busy_timeout = {int(self.timeout_seconds * 1000)}")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute("PRAGMA synchronous = FULL")
        return db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file_lock.acquire(exclusive=False)
        try:
            self._writer = await self._connect()
            await self._writer.execute("PRAGMA journal_mode = WAL")
            await self._migrate(self._writer)
            self._reader = await self._connect()
            self._file_id = _file_id(self.path)
        except BaseException:
            await self.close()  # releases the lock and any connection already opened
            raise

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        # While another process turns a fresh file to WAL, SQLite answers "database is locked" at once instead of
        # waiting for busy_timeout: several sidecars starting together on a new file retry for a while.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                await db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        try:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            async with db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cursor:
                row = await cursor.fetchone()
            current = int(row[0]) if row else 0
            if current > LATEST_VERSION:
                raise SchemaTooNewError(schema_too_new_message(str(self.path), current, LATEST_VERSION))
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.sqlite.split(";"):
                    if statement.strip():
                        await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, _now()),
                )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._reader = self._writer = None
        self._file_lock.release()

    def _read_db(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("store is not open")
        return self._reader

    async def schema_version(self) -> int:
        async with self._read_db().execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def config_version(self) -> int:
        return (await self.head()).config_version

    async def head(self) -> StoreHead:
        async with self._read_db().execute(
            "SELECT version, (SELECT COALESCE(MAX(version), 0) FROM schema_migrations) FROM config_version WHERE id = 1"
        ) as cursor:
            row = await cursor.fetchone()
        return StoreHead(int(row[0]), int(row[1])) if row else StoreHead(0, 0)

    async def deployment_type(self) -> str | None:
        async with self._read_db().execute(RECORDED_DEPLOYMENT_TYPE_SQL) as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else None

    async def claim_deployment_type(self, deployment_type: str) -> str:
        if self._writer is None:
            raise RuntimeError("store is not open")
        async with self._write_lock:
            # Autocommit: the INSERT is atomic by itself, and a type another process recorded first is kept.
            await self._writer.execute(RECORD_DEPLOYMENT_TYPE_SQL.format("?"), (deployment_type,))
            async with self._writer.execute(RECORDED_DEPLOYMENT_TYPE_SQL) as cursor:
                row = await cursor.fetchone()
        if row is None:
            raise RuntimeError(f"{self.path}: the deployment type was not recorded")
        return str(row[0])

    async def probe(self) -> None:
        """A read through the open connection, and the file must still be the one opened: a removed or
        replaced database file would silently lose every later write."""
        await self.schema_version()
        try:
            current = _file_id(self.path)
        except FileNotFoundError:
            raise sqlite3.OperationalError(f"{self.path} no longer exists") from None
        if current != self._file_id:
            raise sqlite3.OperationalError(f"{self.path} was replaced by another file")

    async def load_state(self, changes_after: int | None = None, changes_limit: int = 0) -> StoredState:
        db = self._read_db()
        try:
            await db.execute("BEGIN")  # one consistent read of every table
            async with db.execute("SELECT version FROM config_version WHERE id = 1") as cursor:
                row = await cursor.fetchone()
            state = StoredState(config_version=int(row[0]) if row else 0)
            async with db.execute(f"SELECT {_MODEL_COLUMNS} FROM self_hosted_models") as cursor:
                state.self_hosted_models = [_model(tuple(r)) async for r in cursor]
            async with db.execute("SELECT feature, provider, self_hosted_model_id FROM feature_settings") as cursor:
                state.feature_settings = [
                    FeatureSetting(str(r[0]), FeatureProvider[str(r[1]).upper()], str(r[2] or "")) async for r in cursor
                ]
            async with db.execute("SELECT feature, offered_model_ref FROM instance_model_selections") as cursor:
                state.instance_pins = {str(r[0]): str(r[1]) async for r in cursor}
            async with db.execute(
                "SELECT namespace_id, feature, offered_model_ref FROM namespace_model_selections"
            ) as cursor:
                state.namespace_pins = [(int(r[0]), str(r[1]), str(r[2])) for r in await cursor.fetchall()]
            async with db.execute(
                "SELECT id, api_token_key_id, api_token_ciphertext FROM self_hosted_models "
                "WHERE api_token_ciphertext IS NOT NULL"
            ) as cursor:
                state.api_tokens = {str(r[0]): EncryptedToken(str(r[1]), bytes(r[2])) for r in await cursor.fetchall()}
            if changes_after is not None:
                state.changes = await self._changes_since(db, changes_after, changes_limit)
        finally:
            # Queued on the connection's thread after BEGIN even if this task was cancelled before BEGIN ran.
            await despite_cancellation(db.commit())
        return state

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTx]:
        if self._writer is None:
            raise RuntimeError("store is not open")
        async with self._write_lock:
            db = self._writer
            # aiosqlite runs each statement on the connection's thread, in order, and a cancelled await does not
            # stop it: so BEGIN is inside the try (it may still run after a cancel), and COMMIT or ROLLBACK always
            # run to the end. rollback() and commit() do nothing when no transaction is open.
            try:
                await db.execute("BEGIN IMMEDIATE")
                async with db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cursor:
                    row = await cursor.fetchone()
                if row is not None and int(row[0]) > LATEST_VERSION:
                    raise SchemaTooNewError(schema_too_new_message(str(self.path), int(row[0]), LATEST_VERSION))
                yield SQLiteTx(db)
            except BaseException:
                await despite_cancellation(db.rollback())
                raise
            try:
                await despite_cancellation(db.commit())
            except BaseException:
                await despite_cancellation(db.rollback())
                raise

    async def load_user(self, user_id: int) -> UserRouting:
        async with self._read_db().execute(
            "SELECT namespace_id, 0 FROM seat_assignments WHERE user_id = ? "
            "UNION ALL SELECT namespace_id, 1 FROM user_default_namespaces WHERE user_id = ?",
            (user_id, user_id),
        ) as cursor:
            rows = await cursor.fetchall()
        seats = frozenset(int(r[0]) for r in rows if not r[1])
        default = next((int(r[0]) for r in rows if r[1]), 0)
        return UserRouting(seats, default)

    async def get_api_token(self, model_id: str) -> EncryptedToken | None:
        async with self._read_db().execute(
            "SELECT api_token_key_id, api_token_ciphertext FROM self_hosted_models WHERE id = ?", (model_id,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None or row[1] is None:
            return None
        return EncryptedToken(str(row[0]), bytes(row[1]))

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
        sql = (
            "SELECT user_id, namespace_id FROM seat_assignments WHERE "
            + " AND ".join(where)
            + " ORDER BY user_id, namespace_id LIMIT ?"
        )
        async with self._read_db().execute(sql, params) as cursor:
            return [(int(r[0]), int(r[1])) for r in await cursor.fetchall()]

    async def changes_since(self, version: int, limit: int) -> list[ChangeRecord]:
        return await self._changes_since(self._read_db(), version, limit)

    @staticmethod
    async def _changes_since(db: aiosqlite.Connection, version: int, limit: int) -> list[ChangeRecord]:
        async with db.execute(
            "SELECT version, kind, keys_json, user_ids_json FROM config_changes WHERE version > ? "
            "ORDER BY version LIMIT ?",
            (version, limit),
        ) as cursor:
            return [change_record(*r) for r in await cursor.fetchall()]

    async def watch(self, on_change: Callable[[], None], interval_seconds: float = WATCH_INTERVAL_SECONDS) -> None:
        """Calls on_change when another connection (process) commits: PRAGMA data_version moves then."""
        async with aiosqlite.connect(self.path) as db:
            seen = None
            while True:
                async with db.execute("PRAGMA data_version") as cursor:
                    row = await cursor.fetchone()
                current = int(row[0]) if row else 0
                if seen is not None and current != seen:
                    on_change()
                seen = current
                await asyncio.sleep(interval_seconds)

    async def list_audit_events(self, resource_prefix: str, before_id: int | None, limit: int) -> list[AuditEvent]:
        where = ["id < ?"]
        params: list[object] = [before_id if before_id is not None else 2**63 - 1]
        if resource_prefix:
            where.append("substr(resource, 1, ?) = ?")
            params += [len(resource_prefix), resource_prefix]
        params.append(limit)
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE " + " AND ".join(where) + " ORDER BY id DESC LIMIT ?"
        async with self._read_db().execute(sql, params) as cursor:
            return [_audit_event(r) for r in await cursor.fetchall()]
