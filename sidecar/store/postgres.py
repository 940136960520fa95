"""The fleet backend: PostgreSQL through an asyncpg connection pool, shared by many sidecars.

Same schema (sidecar.store.migrations, the `postgres` SQL), same semantics as the SQLite backend. Where SQLite
relies on its single writer, this backend serializes writers explicitly: every write transaction starts by locking
the config_version row (SELECT ... FOR UPDATE), so reads inside a transaction see every earlier commit and config
versions are handed out in commit order. Each committed change also sends NOTIFY duo_sidecar_changes with the new
config version (pg_notify in the same transaction, delivered at commit), the change signal other sidecars listen to.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from sidecar.domain import (
    AuditEvent,
    ChangeRecord,
    SeatChange,
)
from sidecar.impact import SeatHolders
from sidecar.store.base import (
    SchemaTooNewError,
    Store,
    StoredState,
    StoreHead,
    StoreTx,
    StoreUnavailableError,
    despite_cancellation,
    schema_too_new_message,
    seat_effects,
)
from sidecar.store.migrations import LATEST_VERSION, MIGRATIONS
from sidecar.store.sql import POSTGRES, Session, SqlTx, numbered
from sidecar.users import UserRouting

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "duo_sidecar_changes"
WATCH_BACKOFF_MIN_SECONDS = 0.2
WATCH_BACKOFF_MAX_SECONDS = 5.0
WATCH_HEARTBEAT_SECONDS = 1.0

MIGRATION_LOCK_KEY = 0x6475_6F5F_6D69_6772  # "duo_migr": pg_advisory_xact_lock key held while migrating

# Errors that mean "the database is unreachable or refused the statement"; the gRPC layer maps them to UNAVAILABLE.
POSTGRES_ERRORS: tuple[type[Exception], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)

_CONNECT_ERRORS: tuple[type[Exception], ...] = (*POSTGRES_ERRORS, OSError, TimeoutError)

# Of those, the ones that mean the database does not answer at all (a partition, a server down or restarting).
POSTGRES_UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.InterfaceError,  # such as a connection dropped because a statement timed out
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)

DEFAULT_TIMEOUT_SECONDS = 5.0  # storage.timeout_seconds
# The server gives up on a statement or a lock wait a little before the client does (storage.timeout_seconds): a
# slow but reachable server answers with its own error, and the connection stays usable.
SERVER_TIMEOUT_SHARE = 0.9
# Unanswered TCP keepalive probes after which either end drops a connection that idles on a dead network.
KEEPALIVE_PROBES = 3


def _server_settings(timeout_seconds: float) -> dict[str, str]:
    """Session settings sent at connect: the server's own bounds, so nothing waits on it longer than the client
    does, and no transaction (and no row lock that every writer queues on) outlives a client that vanished."""
    milliseconds = int(timeout_seconds * 1000)
    server_side = str(int(milliseconds * SERVER_TIMEOUT_SHARE))
    return {
        "application_name": "duo-sidecar",
        "timezone": "UTC",
        "statement_timeout": server_side,
        "lock_timeout": server_side,
        "idle_in_transaction_session_timeout": str(milliseconds),
        "tcp_keepalives_idle": str(math.ceil(timeout_seconds)),
        "tcp_keepalives_interval": str(math.ceil(timeout_seconds / KEEPALIVE_PROBES)),
        "tcp_keepalives_count": str(KEEPALIVE_PROBES),
        "tcp_user_timeout": str(milliseconds),
    }


def _bound_socket(transport: object, timeout_seconds: float | None) -> None:
    """The client's side of the keepalives and user timeout (asyncpg has no option for them): the kernel drops
    a connection whose sent data stays unacknowledged for the bound, or that idles on a dead network."""
    if not timeout_seconds or not isinstance(transport, asyncio.BaseTransport):
        return
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket: no network to lose
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), math.ceil(timeout_seconds)),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), math.ceil(timeout_seconds / KEEPALIVE_PROBES)),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(timeout_seconds * 1000)),
    ]
    for level, option, value in options:
        if option is not None:
            try:
                sock.setsockopt(level, option, value)
            except OSError as exc:  # not on this platform: the statement timeouts still bound every wait
                log.debug("cannot set socket option %s: %s", option, exc)


if TYPE_CHECKING:
    _BaseConnection = asyncpg.Connection[asyncpg.Record]
else:
    _BaseConnection = asyncpg.Connection


class _BoundedConnection(_BaseConnection):
    """A connection that gives up on a dead network within the bound, instead of waiting on it again.

    When a statement times out (command_timeout) or its task is cancelled, asyncpg sends a CancelRequest over a
    new connection, and every later use of this one (ROLLBACK, the pool's reset on release) first waits for that
    cancel to be acknowledged: on a partitioned network, another full timeout each. This connection is dropped
    instead. The server ends the statement and rolls back when it sees the close, or by itself when it cannot
    (statement_timeout, idle_in_transaction_session_timeout, keepalives: _server_settings).
    """

    def __init__(
        self,
        protocol: Any,
        transport: object,
        loop: asyncio.AbstractEventLoop,
        addr: Any,
        config: Any,
        params: Any,
    ) -> None:
        super().__init__(protocol, transport, loop, addr, config, params)
        _bound_socket(transport, config.command_timeout)

    def _cancel_current_command(self, waiter: Any, cancel_waiter: Any = None) -> None:
        # Called by asyncpg's protocol in place of sending the cancel. It still uses the connection after this call
        # returns (it then fails the statement with TimeoutError): terminate right after, before anyone resumes.
        asyncio.get_running_loop().call_soon(self.terminate)


_Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"  # generic in the stubs only

# The first statement of every write transaction: the config_version row lock that serializes writers.
_HEAD_FOR_UPDATE = POSTGRES.head + " FOR UPDATE"


def redact_dsn(dsn: str) -> str:
    """The DSN without its password (in the user info or a password= parameter), for messages and logs."""
    try:
        url = urlsplit(dsn)
    except ValueError:
        return "<unparsable dsn>"
    netloc = url.netloc
    userinfo, at, hostinfo = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    query = urlencode(
        [(k, "***" if k == "password" else v) for k, v in parse_qsl(url.query, keep_blank_values=True)], safe="/"
    )
    return urlunsplit((url.scheme, netloc, url.path, query, url.fragment))


class _Postgres(Session):
    """A connection running the shared statements (sidecar.store.sql): `$n` placeholders, TIMESTAMPTZ."""

    sql = POSTGRES

    def __init__(self, db: _Connection) -> None:
        self._db = db

    async def rows(self, sql: str, *params: object) -> Sequence[asyncpg.Record]:
        return await self._db.fetch(sql, *params)

    async def row(self, sql: str, *params: object) -> asyncpg.Record | None:
        return await self._db.fetchrow(sql, *params)

    async def run(self, sql: str, *params: object) -> None:
        await self._db.execute(sql, *params)

    @staticmethod
    def dialect(sql: str) -> str:
        return numbered(sql)

    @staticmethod
    def stamp(time: datetime) -> datetime:
        return time  # TIMESTAMPTZ


class PostgresTx(_Postgres, SqlTx):
    async def _next_version(self) -> int:
        # The row lock (already held since the transaction began) serializes versions across every sidecar.
        return int(
            await self._db.fetchval("UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version")
        )

    async def _announce(self, version: int) -> None:
        # Delivered when (and only if) the transaction commits; several in one transaction: the listener sees each.
        await self._db.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(version))

    async def apply_seat_changes(self, changes: Sequence[SeatChange]) -> list[SeatChange]:
        users = sorted({c.user_id for c in changes})
        rows = await self._db.fetch(
            "SELECT user_id, namespace_id FROM seat_assignments WHERE user_id = ANY($1::bigint[])", users
        )
        held = {(int(r[0]), int(r[1])) for r in rows}
        effective, added, removed = seat_effects(held, changes)
        if added:
            await self._db.execute(
                """
                INSERT INTO seat_assignments (user_id, namespace_id)
                SELECT * FROM unnest($1::bigint[], $2::bigint[]) ON CONFLICT DO NOTHING
                """,
                [u for u, _ in added],
                [n for _, n in added],
            )
        if removed:
            await self._db.execute(
                """
                DELETE FROM seat_assignments AS s USING unnest($1::bigint[], $2::bigint[]) AS d (user_id, namespace_id)
                WHERE s.user_id = d.user_id AND s.namespace_id = d.namespace_id
                """,
                [u for u, _ in removed],
                [n for _, n in removed],
            )
        return effective


async def _rollback(db: _Connection) -> None:
    try:
        open_transaction = not db.is_closed() and db.is_in_transaction()
    except asyncpg.InterfaceError:  # dropped after a timeout or a cancel: the server ends its transaction
        return
    if open_transaction:
        await db.execute("ROLLBACK")


class PostgresStore(Store):
    backend_name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        min_connections: int = 1,
        max_connections: int = 8,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.dsn = dsn
        self.where = redact_dsn(dsn)
        self._min = min_connections
        self._max = max_connections
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self.timeout_seconds = timeout_seconds
        self._no_answer = f"{self.where}: no answer within {timeout_seconds:g} s (storage.timeout_seconds)"

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min,
                max_size=self._max,
                # Connect (timeout), each statement (command_timeout) and, at the server, statements, locks and
                # idle transactions: each bounded by storage.timeout_seconds. The pool waits in _acquire.
                timeout=self.timeout_seconds,
                command_timeout=self.timeout_seconds,
                server_settings=_server_settings(self.timeout_seconds),
                connection_class=_BoundedConnection,
            )
        except _CONNECT_ERRORS as exc:
            why = str(exc) or f"no answer within {self.timeout_seconds:g} s (storage.timeout_seconds)"
            raise StoreUnavailableError(f"{self.where}: cannot connect to PostgreSQL: {why}") from exc
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def _migrate(self) -> None:
        async with self._acquire() as db, db.transaction():
            # One migrator at a time across every sidecar; the lock ends with the transaction.
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            current = int(await db.fetchval(POSTGRES.schema_version))
            if current > LATEST_VERSION:
                raise SchemaTooNewError(schema_too_new_message(self.where, current, LATEST_VERSION))
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                await db.execute(migration.postgres)  # several statements: the simple query protocol runs them all
                await db.execute(POSTGRES.insert_migration, migration.version, migration.name, datetime.now(UTC))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(10):
                await pool.close()  # waits for connections in use to be released
        except TimeoutError:
            pool.terminate()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[_Connection]:
        if self._pool is None:
            raise RuntimeError("store is not open")
        try:
            # The timeout bounds waiting for a free connection (connecting one included) and, on release, the
            # reset of a connection that went dead meanwhile; a statement that timed out dropped its connection.
            async with self._pool.acquire(timeout=self.timeout_seconds) as db:
                yield db
        except TimeoutError as exc:
            raise StoreUnavailableError(self._no_answer) from exc
        except asyncpg.InterfaceError as exc:
            if isinstance(exc.__context__, TimeoutError):  # using the connection a timeout dropped, e.g. ROLLBACK
                raise StoreUnavailableError(self._no_answer) from exc.__context__
            raise

    async def schema_version(self) -> int:
        async with self._acquire() as db:
            return await _Postgres(db).schema_version()

    async def config_version(self) -> int:
        return (await self.head()).config_version

    async def head(self) -> StoreHead:
        async with self._acquire() as db:
            return await _Postgres(db).head()

    async def deployment_type(self) -> str | None:
        async with self._acquire() as db:
            return await _Postgres(db).deployment_type()

    async def claim_deployment_type(self, deployment_type: str) -> str:
        async with self._acquire() as db:
            # One statement, atomic: of sidecars starting together, one inserts and the others keep its row.
            return str(await _Postgres(db).claim_deployment_type(deployment_type))

    async def probe(self) -> None:
        """A round trip through the pool: raises when the database is unreachable or the store is closed, within
        storage.timeout_seconds (the pool's and the statement's bounds)."""
        await self.schema_version()

    async def load_state(self, changes_after: int | None = None, changes_limit: int = 0) -> StoredState:
        async with self._acquire() as db, db.transaction(isolation="repeatable_read", readonly=True):
            # One snapshot of every table.
            state = await _Postgres(db).state(changes_after, changes_limit)
        return state

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTx]:
        async with self._acquire() as db:
            # COMMIT and ROLLBACK run to the end even if the awaiting task is cancelled: no transaction stays open
            # (and a connection the pool takes back in a transaction is rolled back by its reset anyway).
            try:
                await db.execute("BEGIN")
                # Writers queue here, as on SQLite's single writer: what this transaction reads before its writes
                # is not changed by another sidecar until it commits, and versions are handed out in commit order.
                row = await db.fetchrow(_HEAD_FOR_UPDATE)
                if row is not None and int(row[1]) > LATEST_VERSION:
                    raise SchemaTooNewError(schema_too_new_message(self.where, int(row[1]), LATEST_VERSION))
                yield PostgresTx(db)
            except BaseException:
                await despite_cancellation(_rollback(db))
                raise
            await despite_cancellation(db.execute("COMMIT"))

    async def load_user(self, user_id: int) -> UserRouting:
        async with self._acquire() as db:
            return await _Postgres(db).load_user(user_id)

    async def list_seat_assignments(
        self, user_id: int, namespace_id: int, after: tuple[int, int] | None, limit: int
    ) -> list[tuple[int, int]]:
        async with self._acquire() as db:
            return await _Postgres(db).list_seat_assignments(user_id, namespace_id, after, limit)

    async def namespace_seat_holders(self, namespace_id: int) -> SeatHolders:
        async with self._acquire() as db, db.transaction(readonly=True):
            # For a large namespace the planner would hash or merge-scan every seat and JIT-compile the plan: seconds
            # with a million seats. Probing each holder's seats by index costs in proportion to the holders alone.
            await db.execute("SET LOCAL jit = off; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
            return await _Postgres(db).namespace_seat_holders(namespace_id)

    async def changes_since(self, version: int, limit: int) -> list[ChangeRecord]:
        async with self._acquire() as db:
            return await _Postgres(db).changes_since(version, limit)

    async def watch(self, on_change: Callable[[], None]) -> None:
        """LISTENs on a dedicated connection; reconnects with backoff and signals after every reconnect,
        so a change made while this sidecar was cut off is caught up too."""
        backoff = WATCH_BACKOFF_MIN_SECONDS
        failing = False  # an outage is logged when it starts and when it ends, not at every retry
        while True:
            try:
                connection = await asyncpg.connect(
                    self.dsn,
                    timeout=self.timeout_seconds,
                    command_timeout=self.timeout_seconds,
                    server_settings=_server_settings(self.timeout_seconds),
                    connection_class=_BoundedConnection,
                )
            except _CONNECT_ERRORS as exc:
                log.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "cannot listen for changes on %s (%s); retrying every %.1f s at most",
                    self.where,
                    str(exc) or type(exc).__name__,
                    WATCH_BACKOFF_MAX_SECONDS,
                )
                failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, WATCH_BACKOFF_MAX_SECONDS)
                continue
            lost = asyncio.Event()
            try:
                connection.add_termination_listener(lambda _connection, lost=lost: lost.set())
                await connection.add_listener(NOTIFY_CHANNEL, lambda *_args: on_change())
                if failing:
                    log.warning("listening for changes on %s again", self.where)
                failing = False
                backoff = WATCH_BACKOFF_MIN_SECONDS
                on_change()  # whatever happened while not listening
                while not lost.is_set() and not connection.is_closed():
                    # asyncpg notices a dead server only when it talks to it: within command_timeout.
                    try:
                        await connection.execute("SELECT 1")
                    except _CONNECT_ERRORS:
                        break
                    await asyncio.sleep(WATCH_HEARTBEAT_SECONDS)
                log.warning("lost the change listener connection to %s; reconnecting", self.where)
                failing = True
            except _CONNECT_ERRORS as exc:  # LISTEN itself failed
                log.log(logging.DEBUG if failing else logging.WARNING, "cannot listen on %s: %s", self.where, exc)
                failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, WATCH_BACKOFF_MAX_SECONDS)
            finally:
                connection.terminate()

    async def list_audit_events(self, resource_prefix: str, before_id: int | None, limit: int) -> list[AuditEvent]:
        async with self._acquire() as db:
            return await _Postgres(db).list_audit_events(resource_prefix, before_id, limit)
