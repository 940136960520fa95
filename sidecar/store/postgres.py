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
    SchemaTooNewError,
    Store,
    StoredState,
    StoreHead,
    StoreTx,
    StoreUnavailableError,
    change_columns,
    change_record,
    despite_cancellation,
    schema_too_new_message,
    seat_effects,
)
from sidecar.store.migrations import LATEST_VERSION, MIGRATIONS
from sidecar.tokens import EncryptedToken
from sidecar.users import UserRouting

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "duo_sidecar_changes"
WATCH_BACKOFF_MIN_SECONDS = 0.2
WATCH_BACKOFF_MAX_SECONDS = 5.0
WATCH_HEARTBEAT_SECONDS = 1.0
_AUDIT_COLUMNS = "id, time, actor, action, resource, before_json, after_json, config_version"


def _audit_event(r: asyncpg.Record) -> AuditEvent:
    return AuditEvent(
        id=int(r[0]),
        time=r[1],
        actor=r[2],
        action=r[3],
        resource=r[4],
        before_json=r[5],
        after_json=r[6],
        config_version=int(r[7]),
    )


"""Every committed change sends NOTIFY on this channel with the new config version as its payload."""

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

_MODEL_COLUMNS = (
    "id, name, family, platform, endpoint, identifier, api_token_ciphertext IS NOT NULL, create_time, update_time"
)


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


def _now() -> datetime:
    return datetime.now(UTC)


def _model(row: asyncpg.Record) -> SelfHostedModel:
    return SelfHostedModel(
        id=row[0],
        name=row[1],
        family=ModelFamily[row[2].upper()],
        platform=Platform[row[3].upper()],
        endpoint=row[4],
        identifier=row[5],
        api_token_set=bool(row[6]),
        create_time=row[7],
        update_time=row[8],
    )


def _setting(feature: str, provider: str, model_id: str | None) -> FeatureSetting:
    return FeatureSetting(feature, FeatureProvider[provider.upper()], model_id or "")


class PostgresTx(StoreTx):
    def __init__(self, db: _Connection) -> None:
        self._db = db

    async def get_self_hosted_model(self, model_id: str) -> SelfHostedModel | None:
        row = await self._db.fetchrow(f"SELECT {_MODEL_COLUMNS} FROM self_hosted_models WHERE id = $1", model_id)
        return _model(row) if row else None

    async def find_self_hosted_model_by_name(self, name: str) -> SelfHostedModel | None:
        row = await self._db.fetchrow(f"SELECT {_MODEL_COLUMNS} FROM self_hosted_models WHERE name = $1", name)
        return _model(row) if row else None

    async def put_self_hosted_model(self, model: SelfHostedModel, token: EncryptedToken | KeepToken | None) -> None:
        await self._db.execute(
            """
            INSERT INTO self_hosted_models
                (id, name, family, platform, endpoint, identifier, create_time, update_time)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (id) DO UPDATE SET
                name = excluded.name, family = excluded.family, platform = excluded.platform,
                endpoint = excluded.endpoint, identifier = excluded.identifier,
                update_time = excluded.update_time
            """,
            model.id,
            model.name,
            model.family.gitlab_name,
            model.platform.name.lower(),
            model.endpoint,
            model.identifier,
            model.create_time,
            model.update_time,
        )
        if not isinstance(token, KeepToken):
            await self._db.execute(
                "UPDATE self_hosted_models SET api_token_key_id = $1, api_token_ciphertext = $2 WHERE id = $3",
                token.key_id if token else None,
                token.ciphertext if token else None,
                model.id,
            )

    async def delete_self_hosted_model(self, model_id: str) -> None:
        await self._db.execute("DELETE FROM self_hosted_models WHERE id = $1", model_id)

    async def features_using_model(self, model_id: str) -> list[str]:
        rows = await self._db.fetch(
            'SELECT feature FROM feature_settings WHERE self_hosted_model_id = $1 ORDER BY feature COLLATE "C"',
            model_id,
        )
        return [row[0] for row in rows]

    async def get_feature_setting(self, feature: str) -> FeatureSetting | None:
        row = await self._db.fetchrow(
            "SELECT provider, self_hosted_model_id FROM feature_settings WHERE feature = $1", feature
        )
        return _setting(feature, row[0], row[1]) if row else None

    async def put_feature_setting(self, setting: FeatureSetting) -> None:
        await self._db.execute(
            """
            INSERT INTO feature_settings (feature, provider, self_hosted_model_id, update_time)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (feature) DO UPDATE SET provider = excluded.provider,
                self_hosted_model_id = excluded.self_hosted_model_id, update_time = excluded.update_time
            """,
            setting.feature,
            setting.provider.name.lower(),
            setting.self_hosted_model_id or None,
            _now(),
        )

    async def get_instance_pin(self, feature: str) -> str | None:
        value: str | None = await self._db.fetchval(
            "SELECT offered_model_ref FROM instance_model_selections WHERE feature = $1", feature
        )
        return value

    async def set_instance_pin(self, feature: str, ref: str | None) -> None:
        if ref:
            await self._db.execute(
                """
                INSERT INTO instance_model_selections (feature, offered_model_ref, update_time) VALUES ($1, $2, $3)
                ON CONFLICT (feature) DO UPDATE SET offered_model_ref = excluded.offered_model_ref,
                    update_time = excluded.update_time
                """,
                feature,
                ref,
                _now(),
            )
        else:
            await self._db.execute("DELETE FROM instance_model_selections WHERE feature = $1", feature)

    async def get_namespace_pin(self, namespace_id: int, feature: str) -> str | None:
        value: str | None = await self._db.fetchval(
            "SELECT offered_model_ref FROM namespace_model_selections WHERE namespace_id = $1 AND feature = $2",
            namespace_id,
            feature,
        )
        return value

    async def set_namespace_pin(self, namespace_id: int, feature: str, ref: str | None) -> None:
        if ref:
            await self._db.execute(
                """
                INSERT INTO namespace_model_selections (namespace_id, feature, offered_model_ref, update_time)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT (namespace_id, feature) DO UPDATE SET
                    offered_model_ref = excluded.offered_model_ref, update_time = excluded.update_time
                """,
                namespace_id,
                feature,
                ref,
                _now(),
            )
        else:
            await self._db.execute(
                "DELETE FROM namespace_model_selections WHERE namespace_id = $1 AND feature = $2",
                namespace_id,
                feature,
            )

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

    async def user_has_seat(self, user_id: int, namespace_id: int) -> bool:
        row = await self._db.fetchrow(
            "SELECT 1 FROM seat_assignments WHERE user_id = $1 AND namespace_id = $2", user_id, namespace_id
        )
        return row is not None

    async def get_default_namespace(self, user_id: int) -> int:
        value: int | None = await self._db.fetchval(
            "SELECT namespace_id FROM user_default_namespaces WHERE user_id = $1", user_id
        )
        return int(value) if value is not None else 0

    async def set_default_namespace(self, user_id: int, namespace_id: int) -> None:
        if namespace_id:
            await self._db.execute(
                """
                INSERT INTO user_default_namespaces (user_id, namespace_id, update_time) VALUES ($1, $2, $3)
                ON CONFLICT (user_id) DO UPDATE SET namespace_id = excluded.namespace_id,
                    update_time = excluded.update_time
                """,
                user_id,
                namespace_id,
                _now(),
            )
        else:
            await self._db.execute("DELETE FROM user_default_namespaces WHERE user_id = $1", user_id)

    async def encrypted_tokens(self) -> dict[str, EncryptedToken]:
        return await _encrypted_tokens(self._db)

    async def set_encrypted_token(self, model_id: str, token: EncryptedToken) -> None:
        await self._db.execute(
            "UPDATE self_hosted_models SET api_token_key_id = $1, api_token_ciphertext = $2 WHERE id = $3",
            token.key_id,
            token.ciphertext,
            model_id,
        )

    async def record_change(
        self, actor: str, action: str, resource: str, before_json: str, after_json: str, change: Change
    ) -> int:
        # The row lock (already held since the transaction began) serializes versions across every sidecar.
        version = int(
            await self._db.fetchval("UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version")
        )
        await self._db.execute(
            "INSERT INTO config_changes (version, kind, keys_json, user_ids_json) VALUES ($1, $2, $3, $4)",
            version,
            *change_columns(change),
        )
        await self._db.execute(
            """
            INSERT INTO audit_events (time, actor, action, resource, before_json, after_json, config_version)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """,
            _now(),
            actor,
            action,
            resource,
            before_json,
            after_json,
            version,
        )
        # Delivered when (and only if) the transaction commits; several in one transaction: the listener sees each.
        await self._db.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(version))
        return version


async def _rollback(db: _Connection) -> None:
    try:
        open_transaction = not db.is_closed() and db.is_in_transaction()
    except asyncpg.InterfaceError:  # dropped after a timeout or a cancel: the server ends its transaction
        return
    if open_transaction:
        await db.execute("ROLLBACK")


async def _changes_since(db: _Connection, version: int, limit: int) -> list[ChangeRecord]:
    rows = await db.fetch(
        "SELECT version, kind, keys_json, user_ids_json FROM config_changes WHERE version > $1 "
        "ORDER BY version LIMIT $2",
        version,
        limit,
    )
    return [change_record(*r) for r in rows]


async def _encrypted_tokens(db: _Connection) -> dict[str, EncryptedToken]:
    rows = await db.fetch(
        "SELECT id, api_token_key_id, api_token_ciphertext FROM self_hosted_models "
        "WHERE api_token_ciphertext IS NOT NULL"
    )
    return {r[0]: EncryptedToken(r[1], bytes(r[2])) for r in rows}


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
            current = int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))
            if current > LATEST_VERSION:
                raise SchemaTooNewError(schema_too_new_message(self.where, current, LATEST_VERSION))
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                await db.execute(migration.postgres)  # several statements: the simple query protocol runs them all
                await db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    _now(),
                )

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
            return int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    async def config_version(self) -> int:
        return (await self.head()).config_version

    async def head(self) -> StoreHead:
        async with self._acquire() as db:
            row = await db.fetchrow(
                "SELECT version, (SELECT COALESCE(MAX(version), 0) FROM schema_migrations) "
                "FROM config_version WHERE id = 1"
            )
        return StoreHead(int(row[0]), int(row[1])) if row else StoreHead(0, 0)

    async def deployment_type(self) -> str | None:
        async with self._acquire() as db:
            value = await db.fetchval(RECORDED_DEPLOYMENT_TYPE_SQL)
        return None if value is None else str(value)

    async def claim_deployment_type(self, deployment_type: str) -> str:
        async with self._acquire() as db:
            # One statement, atomic: of sidecars starting together, one inserts and the others keep its row.
            await db.execute(RECORD_DEPLOYMENT_TYPE_SQL.format("$1"), deployment_type)
            return str(await db.fetchval(RECORDED_DEPLOYMENT_TYPE_SQL))

    async def probe(self) -> None:
        """A round trip through the pool: raises when the database is unreachable or the store is closed, within
        storage.timeout_seconds (the pool's and the statement's bounds)."""
        await self.schema_version()

    async def load_state(self, changes_after: int | None = None, changes_limit: int = 0) -> StoredState:
        async with self._acquire() as db, db.transaction(isolation="repeatable_read", readonly=True):
            # One snapshot of every table.
            state = StoredState(
                config_version=int(await db.fetchval("SELECT version FROM config_version WHERE id = 1"))
            )
            state.self_hosted_models = [
                _model(r) for r in await db.fetch(f"SELECT {_MODEL_COLUMNS} FROM self_hosted_models")
            ]
            state.feature_settings = [
                _setting(r[0], r[1], r[2])
                for r in await db.fetch("SELECT feature, provider, self_hosted_model_id FROM feature_settings")
            ]
            state.instance_pins = {
                r[0]: r[1] for r in await db.fetch("SELECT feature, offered_model_ref FROM instance_model_selections")
            }
            state.namespace_pins = [
                (int(r[0]), r[1], r[2])
                for r in await db.fetch(
                    "SELECT namespace_id, feature, offered_model_ref FROM namespace_model_selections"
                )
            ]
            state.api_tokens = await _encrypted_tokens(db)
            if changes_after is not None:
                state.changes = await _changes_since(db, changes_after, changes_limit)
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
                row = await db.fetchrow(
                    "SELECT version, (SELECT COALESCE(MAX(version), 0) FROM schema_migrations) "
                    "FROM config_version WHERE id = 1 FOR UPDATE"
                )
                if row is not None and int(row[1]) > LATEST_VERSION:
                    raise SchemaTooNewError(schema_too_new_message(self.where, int(row[1]), LATEST_VERSION))
                yield PostgresTx(db)
            except BaseException:
                await despite_cancellation(_rollback(db))
                raise
            await despite_cancellation(db.execute("COMMIT"))

    async def load_user(self, user_id: int) -> UserRouting:
        async with self._acquire() as db:
            rows = await db.fetch(
                "SELECT namespace_id, false FROM seat_assignments WHERE user_id = $1 "
                "UNION ALL SELECT namespace_id, true FROM user_default_namespaces WHERE user_id = $1",
                user_id,
            )
        seats = frozenset(int(r[0]) for r in rows if not r[1])
        return UserRouting(seats, next((int(r[0]) for r in rows if r[1]), 0))

    async def get_api_token(self, model_id: str) -> EncryptedToken | None:
        async with self._acquire() as db:
            row = await db.fetchrow(
                "SELECT api_token_key_id, api_token_ciphertext FROM self_hosted_models WHERE id = $1", model_id
            )
        if row is None or row[1] is None:
            return None
        return EncryptedToken(row[0], bytes(row[1]))

    async def list_seat_assignments(
        self, user_id: int, namespace_id: int, after: tuple[int, int] | None, limit: int
    ) -> list[tuple[int, int]]:
        where = ["(user_id, namespace_id) > ($1, $2)"]
        params: list[object] = list(after or (0, 0))
        if user_id:
            params.append(user_id)
            where.append(f"user_id = ${len(params)}")
        if namespace_id:
            params.append(namespace_id)
            where.append(f"namespace_id = ${len(params)}")
        params.append(limit)
        sql = (
            "SELECT user_id, namespace_id FROM seat_assignments WHERE "
            + " AND ".join(where)
            + f" ORDER BY user_id, namespace_id LIMIT ${len(params)}"
        )
        async with self._acquire() as db:
            rows = await db.fetch(sql, *params)
        return [(int(r[0]), int(r[1])) for r in rows]

    async def changes_since(self, version: int, limit: int) -> list[ChangeRecord]:
        async with self._acquire() as db:
            return await _changes_since(db, version, limit)

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
        where = ["id < $1"]
        params: list[object] = [before_id if before_id is not None else 2**63 - 1]
        if resource_prefix:
            params.append(resource_prefix)
            where.append(f"starts_with(resource, ${len(params)})")
        params.append(limit)
        sql = (
            f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE "
            + " AND ".join(where)
            + f" ORDER BY id DESC LIMIT ${len(params)}"
        )
        async with self._acquire() as db:
            return [_audit_event(r) for r in await db.fetch(sql, *params)]
