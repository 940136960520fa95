"""Keeps gRPC health truthful: probes the store every few seconds and turns every health name NOT_SERVING
while it is unusable, SERVING again once it recovers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from sidecar.metrics import Metrics
from sidecar.store.base import Store

log = logging.getLogger(__name__)


class StoreProbe:
    def __init__(
        self,
        store: Store,
        health_servicer: health.aio.HealthServicer,
        names: Sequence[str],
        interval_seconds: float,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.health = health_servicer
        self.names = tuple(names)
        self.interval = interval_seconds
        self.metrics = metrics
        self.healthy = True

    async def check(self) -> str:
        """ "" when the store answers, else why not."""
        try:
            async with asyncio.timeout(max(self.interval, 1.0) + 5.0):
                await self.store.probe()
        except TimeoutError:
            return "the store did not answer in time"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""

    async def _set(self, status: int) -> None:
        for name in self.names:
            await self.health.set(name, status)

    async def run(self) -> None:
        self.metrics.store_up.set(1)
        while True:
            await asyncio.sleep(self.interval)
            problem = await self.check()
            if problem and self.healthy:
                self.healthy = False
                self.metrics.store_up.set(0)
                log.error("storage is unusable, health is NOT_SERVING: %s", problem)
                await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
            elif not problem and not self.healthy:
                self.healthy = True
                self.metrics.store_up.set(1)
                log.warning("storage answers again, health is SERVING")
                await self._set(health_pb2.HealthCheckResponse.SERVING)
