"""PostgreSQL for tests: a fresh database per test, created from DUO_SIDECAR_TEST_POSTGRES_DSN and dropped after.

Without that variable the PostgreSQL variants fail under CI (CI always provides the server) and are skipped
elsewhere, saying why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

DSN_VARIABLE = "DUO_SIDECAR_TEST_POSTGRES_DSN"
UNSET = (
    f"{DSN_VARIABLE} is not set: PostgreSQL tests need a server where the DSN's user may CREATE DATABASE, "
    "such as postgresql://postgres@127.0.0.1:5432/test"
)


def admin_dsn() -> str:
    """The DSN tests create their databases through; fails under CI and skips elsewhere when it is not set."""
    dsn = os.environ.get(DSN_VARIABLE, "")
    if dsn:
        return dsn
    if os.environ.get("CI"):
        pytest.fail(f"{UNSET} (CI must run the PostgreSQL tests)", pytrace=False)
    pytest.skip(f"PostgreSQL variant skipped: {UNSET}")


def with_database(dsn: str, database: str) -> str:
    url = urlsplit(dsn)
    return urlunsplit((url.scheme, url.netloc, f"/{database}", url.query, url.fragment))


@asynccontextmanager
async def fresh_database(admin: str) -> AsyncIterator[str]:
    """Creates an empty database, yields its DSN, then drops it (closing any connection left to it)."""
    name = f"duo_test_{uuid.uuid4().hex[:16]}"
    connection = await asyncpg.connect(admin)
    try:
        # template0: never has connections, so concurrent test runs can all copy it.
        await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await connection.close()
    try:
        yield with_database(admin, name)
    finally:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
