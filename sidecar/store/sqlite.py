"""The embedded SQLite backend: one file, WAL, a single writer connection and a reader connection."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from sidecar.domain import (
    AuditEvent,
    ChangeRecord,
    SeatChange,
)
from sidecar.impact import SeatHolders
from sidecar.store.base import SchemaTooNewError as SchemaTooNewError  # re-exported: callers import it from here
from sidecar.store.base import (
    Store,
    StoredState,
    StoreHead,
    StoreTx,
    despite_cancellation,
    schema_too_new_message,
    seat_effects,
)
from sidecar.store.migrations import LATEST_VERSION, MIGRATIONS
from sidecar.store.sql import SQLITE, Session, SqlTx
from sidecar.users import UserRouting

log = logging.getLogger(__name__)

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


# How often other processes' commits are looked for (PRAGMA data_version is a cheap, local read).
WATCH_INTERVAL_SECONDS = 0.2


class _SQLite(Session):
    """A connection running the shared statements (sidecar.store.sql): `?` placeholders, ISO text timestamps."""

    sql = SQLITE

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def rows(self, sql: str, *params: object) -> Sequence[sqlite3.Row]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def row(self, sql: str, *params: object) -> sqlite3.Row | None:
        async with self._db.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def run(self, sql: str, *params: object) -> None:
        await self._db.execute(sql, params)

    @staticmethod
    def dialect(sql: str) -> str:
        return sql

    @staticmethod
    def stamp(time: datetime) -> str:
        return time.isoformat()  # TEXT columns: ISO 8601, read back by sql.as_time


class SQLiteTx(_SQLite, SqlTx):
    async def _next_version(self) -> int:
        await self._db.execute("UPDATE config_version SET version = version + 1 WHERE id = 1")
        row = await self.row(self.sql.config_version)
        assert row is not None
        return int(row[0])

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


async def _despite_fresh_file_lock(db: aiosqlite.Connection, sql: str, deadline: float) -> None:
    """Runs `sql`, retrying "database is locked" until `deadline`: while another process turns a fresh file to WAL,
    SQLite answers that at once instead of waiting for busy_timeout, so sidecars starting together on a new file
    (both the journal mode switch and the first write transaction) retry for a while."""
    while True:
        try:
            await db.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


class SQLiteStore(Store):
    backend_name = "sqlite"
    follow_poll_seconds = 10.0  # watch() misses no commit: data_version moves with every one

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
            deadline = asyncio.get_running_loop().time() + 10
            await _despite_fresh_file_lock(self._writer, "PRAGMA journal_mode = WAL", deadline)
            await self._migrate(self._writer, deadline)
            self._reader = await self._connect()
            self._file_id = _file_id(self.path)
        except BaseException:
            await self.close()  # releases the lock and any connection already opened
            raise

    async def _migrate(self, db: aiosqlite.Connection, deadline: float) -> None:
        await _despite_fresh_file_lock(db, "BEGIN IMMEDIATE", deadline)
        try:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            async with db.execute(SQLITE.schema_version) as cursor:
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
                    SQLITE.insert_migration,
                    (migration.version, migration.name, _SQLite.stamp(datetime.now(UTC))),
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
        return await _SQLite(self._read_db()).schema_version()

    async def config_version(self) -> int:
        return (await self.head()).config_version

    async def head(self) -> StoreHead:
        return await _SQLite(self._read_db()).head()

    async def deployment_type(self) -> str | None:
        return await _SQLite(self._read_db()).deployment_type()

    async def claim_deployment_type(self, deployment_type: str) -> str:
        if self._writer is None:
            raise RuntimeError("store is not open")
        async with self._write_lock:
            # Autocommit: the INSERT is atomic by itself, and a type another process recorded first is kept.
            recorded = await _SQLite(self._writer).claim_deployment_type(deployment_type)
        if recorded is None:
            raise RuntimeError(f"{self.path}: the deployment type was not recorded")
        return recorded

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
            state = await _SQLite(db).state(changes_after, changes_limit)
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
                async with db.execute(SQLITE.schema_version) as cursor:
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
        return await _SQLite(self._read_db()).load_user(user_id)

    async def list_seat_assignments(
        self, user_id: int, namespace_id: int, after: tuple[int, int] | None, limit: int
    ) -> list[tuple[int, int]]:
        return await _SQLite(self._read_db()).list_seat_assignments(user_id, namespace_id, after, limit)

    async def namespace_seat_holders(self, namespace_id: int) -> SeatHolders:
        return await _SQLite(self._read_db()).namespace_seat_holders(namespace_id)

    async def changes_since(self, version: int, limit: int) -> list[ChangeRecord]:
        return await _SQLite(self._read_db()).changes_since(version, limit)

    async def watch(self, on_change: Callable[[], None], interval_seconds: float = WATCH_INTERVAL_SECONDS) -> None:
        """Calls on_change when another connection (process) commits: PRAGMA data_version moves then.

        Polled on the event loop with a plain sqlite3 connection that never waits for a lock (timeout 0): the
        pragma reads SQLite's shared-memory WAL index, a few microseconds, where a trip through aiosqlite's thread
        and back five times a second was most of an idle sidecar's CPU. The value is per connection, so after an
        error (a busy lock included) the connection is opened afresh and on_change called: a change may have been
        missed."""
        connection: sqlite3.Connection | None = None
        seen: int | None = None
        failing = False
        try:
            while True:
                try:
                    if connection is None:
                        connection = sqlite3.connect(self.path, timeout=0, check_same_thread=False)
                    row = connection.execute("PRAGMA data_version").fetchone()
                except sqlite3.Error as exc:
                    if not failing:
                        log.warning("cannot watch %s for changes by other processes (%s); retrying", self.path, exc)
                    failing = True
                    if connection is not None:
                        connection.close()
                    connection, seen = None, None
                else:
                    current = int(row[0]) if row else 0
                    if failing or (seen is not None and current != seen):
                        on_change()
                    failing, seen = False, current
                await asyncio.sleep(interval_seconds)
        finally:
            if connection is not None:
                connection.close()

    async def list_audit_events(self, resource_prefix: str, before_id: int | None, limit: int) -> list[AuditEvent]:
        return await _SQLite(self._read_db()).list_audit_events(resource_prefix, before_id, limit)
