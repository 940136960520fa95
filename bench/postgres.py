"""The large data set in PostgreSQL, for `make bench BENCH_ARGS="--large --postgres DSN"`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.seed import LARGE_PINS, LARGE_SEATS, large_pins, large_seats


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """An empty database for one run, dropped afterwards."""
    name = f"duo_bench_{uuid.uuid4().hex[:12]}"

    async def execute(sql: str) -> None:
        connection = await asyncpg.connect(admin_dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    url = urlsplit(admin_dsn)
    try:
        yield urlunsplit((url.scheme, url.netloc, f"/{name}", url.query, url.fragment))
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def seed_large(dsn: str) -> float:
    """COPYs 1M seats and 100k pins into a migrated database; returns the seconds it took."""

    async def seed() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            now = datetime.now(UTC)
            await connection.copy_records_to_table(
                "namespace_model_selections",
                records=[(n, f, m, now) for n, f, m, _ in large_pins("")],
                columns=["namespace_id", "feature", "offered_model_ref", "update_time"],
            )
            await connection.copy_records_to_table(
                "seat_assignments", records=list(large_seats()), columns=["user_id", "namespace_id"]
            )
            counts = await connection.fetchrow(
                "SELECT (SELECT COUNT(*) FROM seat_assignments), (SELECT COUNT(*) FROM namespace_model_selections)"
            )
            if counts is None or tuple(counts) != (LARGE_SEATS, LARGE_PINS):
                raise RuntimeError(f"large seed wrote {counts}")
            await connection.execute("ANALYZE")
        finally:
            await connection.close()

    started = time.monotonic()
    asyncio.run(seed())
    return time.monotonic() - started
