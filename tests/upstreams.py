"""Real HTTP servers on 127.0.0.1 that speak the upstream protocols Complete uses, with knobs for faults."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class SeenRequest:
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class MockUpstream:
    """One server; `behavior` decides each answer. Tests read `requests` and `disconnects` afterwards."""

    chunks: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    behavior: str = "ok"  # ok | hang | die_mid_stream | garbage | status | fail_then_ok
    status: int = 200
    error_body: str = '{"error": {"message": "nope"}}'
    failures_before_ok: int = 0
    chunk_delay: float = 0.0
    usage: tuple[int, int] | None = (11, 4)
    gate: asyncio.Event | None = None  # when set, the stream pauses after the first chunk until the gate opens
    catalog: Any = None
    catalog_status: int = 200
    requests: list[SeenRequest] = field(default_factory=list)
    disconnects: int = 0
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a request arrived or a stream was cut
    port: int = 0
    scheme: str = "http"
    peers: list[tuple[str, int]] = field(default_factory=list)  # the client end of each request's connection

    async def until(self, condition: Callable[[], bool]) -> None:
        """Returns once `condition` holds: it is checked whenever a request arrives or a stream is cut."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def _record(self, request: web.Request) -> SeenRequest:
        body: Any = None
        if request.can_read_body:
            text = await request.text()
            try:
                body = json.loads(text)
            except json.JSONDecodeError:
                body = text
        seen = SeenRequest(request.path, request.raw_path, dict(request.query), dict(request.headers), body)
        self.requests.append(seen)
        self.changed.set()
        if request.transport is not None:
            self.peers.append(request.transport.get_extra_info("peername")[:2])
        return seen

    def _fault(self) -> web.Response | None:
        if self.behavior == "status":
            return web.Response(status=self.status, text=self.error_body, content_type="application/json")
        if self.behavior == "fail_then_ok" and self.failures_before_ok > 0:
            self.failures_before_ok -= 1
            return web.Response(status=503, text="overloaded")
        return None

    async def _stream(self, request: web.Request, pieces: list[bytes], content_type: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        try:
            if self.behavior == "hang":
                await asyncio.sleep(3600)
            if self.behavior == "garbage":
                await response.write(b"this is not a server-sent event stream\n\n")
                return response
            for i, piece in enumerate(pieces):
                await response.write(piece)
                if self.behavior == "die_mid_stream" and i == 1:
                    assert request.transport is not None
                    await asyncio.sleep(0.2)  # let the sidecar forward what arrived before the crash
                    request.transport.close()  # the connection drops without finishing the chunked body
                    return response
                if i == 0 and self.gate is not None:
                    await self.gate.wait()
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            self.disconnected.set()
            self.changed.set()
            raise
        return response

    def _openai_pieces(self) -> list[bytes]:
        pieces = []
        for i, text in enumerate(self.chunks):
            delta = {"content": text, **({"role": "assistant"} if i == 0 else {})}
            chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            pieces.append(f"data: {json.dumps(chunk)}\n\n".encode())
        pieces.append(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n')
        if self.usage:
            usage = {"prompt_tokens": self.usage[0], "completion_tokens": self.usage[1]}
            pieces.append(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        pieces.append(b"data: [DONE]\n\n")
        return pieces

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return self._fault() or await self._stream(request, self._openai_pieces(), "text/event-stream")

    async def prompts(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        pieces = [c.encode() for c in self.chunks]
        return self._fault() or await self._stream(request, pieces, "text/event-stream")

    async def definitions(self, request: web.Request) -> web.Response:
        await self._record(request)
        if self.catalog_status != 200:
            return web.Response(status=self.catalog_status, text="catalog unavailable")
        return web.json_response(self.catalog)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat_completions)
        app.router.add_post("/v1/prompts/{prompt_id}", self.prompts)
        app.router.add_get("/v1/models%2Fdefinitions", self.definitions)
        app.router.add_get("/v1/models/definitions", self.definitions)
        return app


@asynccontextmanager
async def serve_upstream(
    configure: Callable[[MockUpstream], None] | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[MockUpstream]:
    """The upstream on 127.0.0.1; with `tls` (a server context), on https://."""
    upstream = MockUpstream(scheme="https" if tls else "http")
    if configure:
        configure(upstream)
    # handler_cancellation: a handler learns at once that the sidecar closed the connection.
    runner = web.AppRunner(upstream.app(), handle_signals=False, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    upstream.port = runner.addresses[0][1]
    try:
        yield upstream
    finally:
        await runner.cleanup()
