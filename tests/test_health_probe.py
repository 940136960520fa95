"""Health tells the truth: NOT_SERVING while the store is unusable, SERVING again once it recovers."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.server import HEALTH_NAMES
from tests.conftest import Sidecar, StartServer
from tests.scrape import scrape, value

pytestmark = pytest.mark.asyncio

FAST_PROBE = {"DUO_SIDECAR_STORAGE_PROBE_INTERVAL_SECONDS": "0.2"}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def statuses(sidecar: Sidecar) -> set[int]:
    stub = health_pb2_grpc.HealthStub(sidecar.channel)
    return {(await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)).status for name in HEALTH_NAMES}


async def wait_for(sidecar: Sidecar, status: int, limit_seconds: float = 5.0) -> float:
    """Seconds until every health name reports `status`."""
    started = time.monotonic()
    while await statuses(sidecar) != {status}:
        assert time.monotonic() - started < limit_seconds, f"health is not {status} after {limit_seconds} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_removed_database_file_turns_health_not_serving_until_it_is_back(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com", env=FAST_PROBE)
    assert await statuses(sidecar) == {SERVING}
    database = Path(sidecar.config.storage.path)
    moved = database.with_name("moved-away.db")
    os.replace(database, moved)  # what `rm` or a careless restore does: later writes would go nowhere
    try:
        assert await wait_for(sidecar, NOT_SERVING) < 5
        assert value(await scrape(sidecar), "duo_routing_store_up") == 0
        # The snapshot is still in memory, but the sidecar does not claim to be healthy.
    finally:
        os.replace(moved, database)
    await wait_for(sidecar, SERVING)
    assert value(await scrape(sidecar), "duo_routing_store_up") == 1


async def test_a_closed_store_turns_health_not_serving(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed", env=FAST_PROBE)
    await sidecar.server.store.close()
    assert await wait_for(sidecar, NOT_SERVING) < 5
    await sidecar.server.store.open()
    await wait_for(sidecar, SERVING)
