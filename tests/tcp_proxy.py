"""A TCP forwarder on 127.0.0.1 that a test can cut and restore, to take a database away from a sidecar, or
black-hole and heal, to partition the network between them."""

from __future__ import annotations

import asyncio
import threading


def _reading(writer: asyncio.StreamWriter, on: bool) -> None:
    transport = writer.transport
    if isinstance(transport, asyncio.ReadTransport) and not transport.is_closing():
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()


async def _cancel_the_other_tasks() -> None:
    others = asyncio.all_tasks() - {asyncio.current_task()}
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class TcpProxy:
    """Runs in its own thread and event loop, so blocking test code does not stall the traffic."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()  # cleared while black-holed
        self._flowing.set()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)  # lets held connections finish
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        """The proxy thread: the loop until __exit__ stops it, then its leftover tasks cancelled and the loop closed."""
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(_cancel_the_other_tasks())
            self._loop.close()

    def _run(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # read just before the black hole opened: held, not delivered
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        if not self._flowing.is_set():
            # Accepted (as the kernel would, before a partition shows), but nothing gets through.
            _reading(client_writer, False)
            await self._flowing.wait()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer))

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()  # an abrupt loss, as when the network or the server goes away
        self._writers.clear()

    async def _blackhole(self) -> None:
        self._flowing.clear()
        for writer in self._writers:
            _reading(writer, False)  # the socket stays open; nothing is read, nothing forwarded

    async def _heal(self) -> None:
        self._writers = {writer for writer in self._writers if not writer.transport.is_closing()}
        for writer in self._writers:
            _reading(writer, True)
        self._flowing.set()

    def restore(self) -> None:
        """Accepts connections again, on the same port."""
        self._run(self._start())

    def cut(self) -> None:
        """Drops every connection and refuses new ones."""
        self._run(self._stop())

    def blackhole(self) -> None:
        """A network partition: connections stay open and new ones are accepted, but no byte gets through in
        either direction, and nothing is closed or reset, so only the peers' own timeouts notice."""
        self._run(self._blackhole())

    def heal(self) -> None:
        """Ends the partition: traffic held meanwhile is delivered, and flows again."""
        self._run(self._heal())
