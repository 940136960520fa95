"""Keeps gRPC health truthful: probes the store every few seconds and, while it is unusable, turns NOT_SERVING the
health names that depend on it (sidecar.server.names_down_with_the_store: every name with embedded SQLite; with
PostgreSQL only AdminService and the storage name, routing keeps answering from memory), SERVING again once it
recovers; and says so once per outage, however many calls fail.

How soon health turns NOT_SERVING after the database stops answering: at once when a call finds it unreachable
(storage.timeout_seconds after the call started waiting), else within storage.probe_interval_seconds +
storage.timeout_seconds (the next probe, which waits no longer than a call does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from sidecar.grpc_errors import StorageFailures, describe_storage_error
from sidecar.metrics import Metrics
from sidecar.store import STORAGE_UNREACHABLE_ERRORS
from sidecar.store.base import Store

log = logging.getLogger(__name__)

# Failures of a database that answers but refuses (a lock held too long, a full disk) say nothing about when it
# is over, and the probe may pass meanwhile: they are logged at most this often, with the count since.
REFUSED_LOG_INTERVAL_SECONDS = 60.0
# The stores bound their own waits by storage.timeout_seconds; this backstop, a little later, covers a store that
# cannot (a file system that hangs), and lets a store's own, more telling error arrive first.
PROBE_BACKSTOP_SECONDS = 1.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StoreProbe:
    def __init__(
        self,
        store: Store,
        health_servicer: health.aio.HealthServicer,
        names: Sequence[str],
        interval_seconds: float,
        metrics: Metrics,
        storage_failures: StorageFailures,
        timeout_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.storage_failures = storage_failures  # calls that failed on the store, told by the edge chain
        self.health = health_servicer
        self.names = tuple(names)
        self.interval = interval_seconds
        self.timeout = timeout_seconds
        self.metrics = metrics
        self.healthy = True
        self._applied = SERVING  # what the health servicer says now
        self._failed_calls = 0  # since health turned NOT_SERVING
        self._refused_calls = 0  # refused by a database that answers, since the last line that said so
        self._refused_logged_at: float | None = None
        self._woken = asyncio.Event()  # a call found the store unreachable: health follows without waiting

    async def check(self) -> str:
        """ "" when the store answers, else why not."""
        try:
            async with asyncio.timeout(self.timeout + PROBE_BACKSTOP_SECONDS):
                await self.store.probe()
        except TimeoutError:
            return f"the store did not answer within {self.timeout:g} s (storage.timeout_seconds)"
        except Exception as exc:
            return describe_storage_error(exc)
        return ""

    def call_failed(self, rpc: str, error: Exception) -> None:
        """A call ended with STORAGE_UNAVAILABLE (told through StorageFailures): always counted; logged once per
        outage, or at most once a minute while a database that answers refuses."""
        self.metrics.storage_errors.labels(rpc).inc()
        why = f"{describe_storage_error(error)} (in {rpc})"
        if not self.healthy:
            self._failed_calls += 1  # said when the outage started
        elif isinstance(error, STORAGE_UNREACHABLE_ERRORS):
            self._unusable(why)
            self._failed_calls = 1
            self._woken.set()
        else:
            self._refused_calls += 1
            now = time.monotonic()
            if self._refused_logged_at is None or now - self._refused_logged_at >= REFUSED_LOG_INTERVAL_SECONDS:
                more = self._refused_calls - 1
                earlier = f"; {more} more since the last such line" if more else ""
                log.error(
                    "storage failed: %s%s; such calls fail with UNAVAILABLE, counted in "
                    "duo_routing_storage_errors_total, and are logged at most once a minute",
                    why,
                    earlier,
                    exc_info=error,
                )
                self._refused_calls = 0
                self._refused_logged_at = now

    def _unusable(self, why: str) -> None:
        self.healthy = False
        self._failed_calls = 0
        self.metrics.store_up.set(0)
        log.error("storage is unusable, health is NOT_SERVING: %s", why)

    def _observe(self, problem: str) -> None:
        if problem:
            if self.healthy:
                self._unusable(problem)
            return
        if not self.healthy:
            failed = f"; {self._failed_calls} calls failed meanwhile" if self._failed_calls else ""
            log.warning("storage answers again, health is SERVING%s", failed)
            self.healthy = True
        self.metrics.store_up.set(1)

    async def _apply(self) -> None:
        status = SERVING if self.healthy else NOT_SERVING
        if status != self._applied:
            self._applied = status
            for name in self.names:
                await self.health.set(name, status)

    async def run(self) -> None:
        self.metrics.store_up.set(1)
        self.storage_failures.subscribe(self.call_failed)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self._woken.wait()
                if self._woken.is_set():
                    # A call's report: health follows now; the next probe comes an interval later.
                    self._woken.clear()
                else:
                    self._observe(await self.check())
                await self._apply()
        finally:
            self.storage_failures.unsubscribe(self.call_failed)
