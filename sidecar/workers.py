"""`duo-sidecar serve --workers N`: N server processes sharing the gRPC port (SO_REUSEPORT), one metrics
endpoint for all of them, and a supervisor that restarts a worker that crashes (1 s, 2 s, 4 s ... up to 30 s).

A worker that refuses to start (exit status 2 before it has started: configuration, a schema newer than this
version, an unreachable store) is not a crash: restarting cannot help, so the supervisor stops the others and
exits 2, as single-process serve does.

Workers share the store, so a change committed through one reaches the others by the store's change signal, as
between sidecars; the worker board (sidecar/worker_board.py) lets the worker that took an admin write wake the
others and wait until they serve it. The supervisor creates the token key first so that every worker uses the
same.
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
from sidecar.worker_board import WorkerBoard

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0  # after a crash; doubles with each crash in a row
MAX_RESTART_DELAY_SECONDS = 30.0
STABLE_SECONDS = 60.0  # a worker that ran this long before crashing restarts after RESTART_DELAY_SECONDS again
REFUSED_TO_START = 2  # `duo-sidecar serve` exit status when it refuses to start (configuration, schema, store)
STOP_MARGIN_SECONDS = 10.0  # beyond the grace period, before a worker that does not stop is killed
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
        self.started: dict[int, float] = {}  # loop time of each worker's spawn
        self.board: WorkerBoard | None = None
        self.stopping = False
        self.stop = asyncio.Event()
        self.exit_code = 0

    def _port_file(self, index: int) -> Path:
        assert self.board is not None
        return self.board.metrics_port_file(index)

    async def _spawn(self, index: int) -> None:
        assert self.board is not None
        arguments = [sys.executable, "-m", "sidecar.cli", "serve"]
        if self.config_path is not None:
            arguments += ["--config", str(self.config_path)]
        # The worker writes this file once it has started: its absence at exit tells a refusal from a crash.
        self._port_file(index).unlink(missing_ok=True)
        self.board.mark_starting(index)
        try:
            process = await asyncio.create_subprocess_exec(
                *arguments,
                env={
                    **os.environ,
                    # Its own metrics on any free port; it writes the port to _port_file(index), and the
                    # supervisor's endpoint (metrics.listen) serves them all. The board's variables make it a worker.
                    "DUO_SIDECAR_METRICS_LISTEN": "127.0.0.1:0",
                    **self.board.environment(index),
                },
            )
        except BaseException:
            self.board.mark_stopped(index)
            raise
        self.processes[index] = process
        self.started[index] = asyncio.get_running_loop().time()
        log.info("worker %d started (pid %d)", index, process.pid, extra={"worker": index, "pid": process.pid})

    async def _watch(self, index: int) -> None:
        assert self.board is not None
        loop = asyncio.get_running_loop()
        delay = RESTART_DELAY_SECONDS
        while True:
            process = self.processes[index]
            code = await process.wait()
            self.board.mark_stopped(index)
            if self.stopping:
                return
            fields = {"worker": index, "pid": process.pid, "exit_status": code}
            if code == REFUSED_TO_START and not self._port_file(index).exists():
                # It never started (configuration, schema newer than this version, store): restarting cannot
                # help, and a supervisor that neither serves nor exits hides the problem. Its reason is above.
                log.error(
                    "worker %d (pid %d) refused to start (exit status %d, reason above): stopping the other "
                    "workers and exiting with status %d",
                    index,
                    process.pid,
                    code,
                    REFUSED_TO_START,
                    extra=fields,
                )
                self.exit_code = REFUSED_TO_START
                self.stop.set()
                return
            if loop.time() - self.started[index] >= STABLE_SECONDS:
                delay = RESTART_DELAY_SECONDS
            log.error(
                "worker %d (pid %d) exited with status %s; restarting in %.0f s",
                index,
                process.pid,
                code,
                delay,
                extra=fields,
            )
            while True:
                await asyncio.sleep(delay)  # cancelled by run() when the supervisor stops
                delay = min(delay * 2, MAX_RESTART_DELAY_SECONDS)
                try:
                    await self._spawn(index)
                    break
                except OSError as exc:  # e.g. out of processes or file descriptors: may pass
                    log.error("worker %d could not be started: %s; retrying in %.0f s", index, exc, delay)

    async def _stop_workers(self) -> None:
        """SIGTERM to every worker (each drains its calls within the grace period), then wait; kill stragglers."""
        running = [p for p in self.processes.values() if p.returncode is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in running]
        if not waits:
            return
        _, late = await asyncio.wait(
            waits,
            timeout=self.config.server.drain_delay_seconds
            + self.config.server.grace_period_seconds
            + STOP_MARGIN_SECONDS,
        )
        for process in running:
            if process.returncode is None:
                log.error("worker pid %d did not stop in time: killing it", process.pid, extra={"pid": process.pid})
                process.kill()
        if late:
            await asyncio.wait(late)

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
        """Serves until SIGTERM or SIGINT (0), or until a worker refuses to start (2)."""
        Keyring.open(self.config.storage.token_key_path)  # one key, created before any worker can race for it
        self.board = WorkerBoard.create(self.runtime, self.workers)
        host, _, port = self.config.metrics.listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        for index in range(self.workers):
            await self._spawn(index)
        watchers = [asyncio.create_task(self._watch(i)) for i in range(self.workers)]
        log.info("supervising %d workers serving %s", self.workers, self.config.server.listen)
        await self.stop.wait()
        self.stopping = True
        for watcher in watchers:
            watcher.cancel()  # first, so that none spawns a worker while the others stop
        await asyncio.gather(*watchers, return_exceptions=True)
        await self._stop_workers()
        for index in self.processes:
            self.board.mark_stopped(index)
        self.board.close()
        await runner.cleanup()
        for path in self.runtime.iterdir():
            path.unlink()
        self.runtime.rmdir()
        return self.exit_code
