"""`duo-sidecar serve --workers N`: N server processes sharing the gRPC port (SO_REUSEPORT), one metrics
endpoint for all of them, and a supervisor that restarts a worker that dies.

Workers share the store, so a change committed through one reaches the others by the store's change
signal, as between sidecars. The supervisor creates the token key first so that every worker uses the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, exposition
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import Config
from sidecar.tokens import Keyring

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0
SCRAPE_TIMEOUT_SECONDS = 5.0


class _Families:
    """A collector that yields metric families gathered from the workers."""

    def __init__(self, families: Sequence[Any]) -> None:
        self._families = families

    def collect(self) -> Sequence[Any]:
        return self._families


class Supervisor:
    def __init__(self, config: Config, config_path: Path | None, workers: int) -> None:
        self.config = config
        self.config_path = config_path
        self.workers = workers
        self.runtime = Path(tempfile.mkdtemp(prefix="duo-sidecar-workers-"))
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False

    def _port_file(self, index: int) -> Path:
        return self.runtime / f"worker-{index}.metrics-port"

    async def _spawn(self, index: int) -> None:
        arguments = [sys.executable, "-m", "sidecar.cli", "serve"]
        if self.config_path is not None:
            arguments += ["--config", str(self.config_path)]
        self._port_file(index).unlink(missing_ok=True)
        self.processes[index] = await asyncio.create_subprocess_exec(
            *arguments,
            env={
                **os.environ,
                "DUO_SIDECAR_SERVER_REUSE_PORT": "true",
                "DUO_SIDECAR_METRICS_LISTEN": "127.0.0.1:0",
                "DUO_SIDECAR_METRICS_PORT_FILE": str(self._port_file(index)),
            },
        )
        log.info("worker %d started (pid %d)", index, self.processes[index].pid)

    async def _watch(self, index: int) -> None:
        while not self.stopping:
            code = await self.processes[index].wait()
            if self.stopping:
                return
            log.error("worker %d exited with %s; restarting in %.0f s", index, code, RESTART_DELAY_SECONDS)
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            if not self.stopping:
                await self._spawn(index)

    async def _scrape(self, session: aiohttp.ClientSession, index: int) -> list[Any]:
        try:
            port = int(self._port_file(index).read_text())
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
        except (OSError, ValueError, aiohttp.ClientError, TimeoutError):
            return []  # starting or restarting: its series come back on the next scrape
        families = list(text_string_to_metric_families(text))
        for family in families:
            family.samples = [s._replace(labels={**s.labels, "worker": str(index)}) for s in family.samples]
        return families

    async def _metrics(self, request: web.Request) -> web.Response:
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            scraped = await asyncio.gather(*(self._scrape(session, i) for i in range(self.workers)))
        merged: dict[str, Any] = {}
        for families in scraped:
            for family in families:
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(list(merged.values())))
        encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    async def run(self) -> int:
        Keyring.open(self.config.storage.token_key_path)  # one key, created before any worker can race for it
        host, _, port = self.config.metrics.listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        for index in range(self.workers):
            await self._spawn(index)
        watchers = [asyncio.create_task(self._watch(i)) for i in range(self.workers)]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("serving with %d workers on %s", self.workers, self.config.server.listen)
        await stop.wait()
        self.stopping = True
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)  # each drains its calls within the grace period
        await asyncio.gather(*(p.wait() for p in self.processes.values()))
        for watcher in watchers:
            watcher.cancel()
        await runner.cleanup()
        for path in self.runtime.iterdir():
            path.unlink()
        self.runtime.rmdir()
        return 0
