"""Shared fixtures: real sidecars (processes or in this event loop) on 127.0.0.1, and fresh stores of each backend."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio

from gitlab.duo.routing.v1 import admin_pb2_grpc, routing_pb2_grpc
from sidecar.config import Config, load_config
from sidecar.server import Sidecar as SidecarServer
from sidecar.store.base import Store
from sidecar.store.postgres import PostgresStore
from sidecar.store.sqlite import SQLiteStore
from tests.helpers import SidecarProcess, free_port, run_sidecar, write_config
from tests.postgres import DSN_VARIABLE, UNSET, admin_dsn, fresh_database

# Sidecars started by tests stop at once on SIGTERM; the drain delay has its own test (it passes its own value).
os.environ.setdefault("DUO_SIDECAR_SERVER_DRAIN_DELAY_SECONDS", "0")

StartSidecar = Callable[..., SidecarProcess]


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[StartSidecar]:
    """start_sidecar("gitlab_com") runs `duo-sidecar serve` on a fresh database under tmp_path."""
    with ExitStack() as stack:

        def start(
            deployment_type: str = "self_managed", extra_config: str = "", directory: Path | None = None
        ) -> SidecarProcess:
            port = free_port()
            workdir = directory or tmp_path / f"sidecar-{port}"
            workdir.mkdir(parents=True, exist_ok=True)
            config = write_config(workdir, deployment_type, port, extra_config)
            return stack.enter_context(run_sidecar(config, port))

        yield start


@dataclass
class Sidecar:
    """An in-process sidecar on a real socket, with stubs from a real channel."""

    server: SidecarServer
    channel: grpc.aio.Channel
    routing: Any
    admin: Any
    config: Config

    def actor(self, name: str) -> tuple[tuple[str, str], ...]:
        return (("x-duo-actor", name),)


StartServer = Callable[..., Awaitable[Sidecar]]


@pytest_asyncio.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """await start_server("gitlab_com") starts a sidecar in this event loop on 127.0.0.1."""
    started: list[Sidecar] = []

    async def start(
        deployment_type: str = "self_managed",
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        **instance: str,
    ) -> Sidecar:
        directory = data_dir or tmp_path / f"data-{len(started)}"
        env = {
            "DUO_SIDECAR_SERVER_LISTEN": "127.0.0.1:0",
            "DUO_SIDECAR_METRICS_LISTEN": "127.0.0.1:0",  # the bound port is Sidecar.metrics_port
            "DUO_SIDECAR_SERVER_GRACE_PERIOD_SECONDS": "1",
            "DUO_SIDECAR_INSTANCE_DEPLOYMENT_TYPE": deployment_type,
            "DUO_SIDECAR_STORAGE_PATH": str(directory / "sidecar.db"),
            **{f"DUO_SIDECAR_INSTANCE_{key.upper()}": value for key, value in instance.items()},
            **(env or {}),
        }
        config = load_config(None, env)
        server = SidecarServer(config)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        sidecar = Sidecar(
            server,
            channel,
            routing_pb2_grpc.RoutingServiceStub(channel),
            admin_pb2_grpc.AdminServiceStub(channel),
            config,
        )
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        await sidecar.channel.close()
        if sidecar.server.server is not None:
            await sidecar.server.stop()


@pytest_asyncio.fixture
async def postgres_dsn() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards (see tests/postgres.py)."""
    async with fresh_database(admin_dsn()) as dsn:
        yield dsn


@pytest_asyncio.fixture
async def start_postgres_server(postgres_dsn: str, start_server: StartServer, tmp_path: Path) -> StartServer:
    """start_server with storage on this test's PostgreSQL database; every sidecar shares it and one token key.

    postgres_dsn comes first so the database outlives the sidecars (fixtures are torn down in reverse order).
    """

    async def start(
        deployment_type: str = "self_managed",
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        **instance: str,
    ) -> Sidecar:
        storage = {
            "DUO_SIDECAR_STORAGE_BACKEND": "postgres",
            "DUO_SIDECAR_STORAGE_DSN": postgres_dsn,
            "DUO_SIDECAR_STORAGE_TOKEN_KEY_FILE": str(tmp_path / "postgres-token.key"),
        }
        return await start_server(deployment_type, data_dir, {**storage, **(env or {})}, **instance)

    return start


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not os.environ.get(DSN_VARIABLE) and not os.environ.get("CI"):
        skipped = [r for r in terminalreporter.stats.get("skipped", []) if UNSET in str(r.longrepr)]
        if skipped:
            terminalreporter.write_line(f"{len(skipped)} PostgreSQL tests skipped: {UNSET}", yellow=True)


BACKENDS = ["sqlite", "postgres"]


@dataclass
class Backend:
    """One fresh database of one backend: new stores on it, and raw SQL outside any store."""

    name: str
    new_store: Callable[[], Store]
    fetchval: Callable[[str], Awaitable[Any]]
    execute: Callable[[str], Awaitable[None]]


@pytest_asyncio.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "store.db"

        async def sqlite_fetchval(sql: str) -> Any:
            with sqlite3.connect(path) as db:
                return db.execute(sql).fetchone()[0]

        async def sqlite_execute(sql: str) -> None:
            with sqlite3.connect(path) as db:
                db.execute(sql)

        yield Backend("sqlite", lambda: SQLiteStore(path), sqlite_fetchval, sqlite_execute)
        return

    async with fresh_database(admin_dsn()) as dsn:

        async def pg_fetchval(sql: str) -> Any:
            db = await asyncpg.connect(dsn)
            try:
                return await db.fetchval(sql)
            finally:
                await db.close()

        async def pg_execute(sql: str) -> None:
            db = await asyncpg.connect(dsn)
            try:
                await db.execute(sql)
            finally:
                await db.close()

        yield Backend("postgres", lambda: PostgresStore(dsn), pg_fetchval, pg_execute)


@pytest_asyncio.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    opened = backend.new_store()
    await opened.open()
    yield opened
    await opened.close()
