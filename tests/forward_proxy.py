"""A tiny HTTP forward proxy on 127.0.0.1, in the test's event loop: CONNECT tunnels (for https:// targets) and
absolute-form requests (for http:// targets). It notes each request line it handled and the Proxy-Authorization
that came with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ProxySeen:
    method: str
    target: str
    proxy_authorization: str | None


@dataclass
class ForwardProxy:
    seen: list[ProxySeen] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = dict(line.split(": ", 1) for line in header_lines if line)
        authorization = headers.pop("Proxy-Authorization", None)
        self.seen.append(ProxySeen(method, target, authorization))
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            # Absolute-form: the rest of this connection goes to the target's server; later requests on it keep
            # their absolute form, which an HTTP/1.1 server accepts.
            parts = urlsplit(target)
            upstream_reader, upstream_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            lines = [request_line] + [f"{name}: {value}" for name, value in headers.items()]
            upstream_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))


@asynccontextmanager
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    proxy = ForwardProxy()
    handlers: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.add(writer)
        try:
            await proxy.handle(reader, writer)
        except OSError:
            writer.close()
        finally:
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()  # the client side of every tunnel: its pipes end, and so do the handlers
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
