"""The floors: no-op grpc.aio servers that answer with fixed, pre-serialized bytes.

Same process model as the sidecar (one process, grpc.aio, default server options), but no parsing, no policy
and no serialization: whatever they cost is the cost of gRPC itself.

- ResolveModel answers the bytes of --response-file (bench/run.py).
- With --complete-route-file, bench.Floor/CompletePaced<ms> (ms in PACINGS_MS) streams what a 20-chunk Complete
  streams, with the upstream's pacing (bench/upstream.py): the route (the file's bytes), the first delta at
  once, 19 more <ms> apart, and `finished` <ms> after the last (bench/complete.py).

With --relay-upstream HOST:PORT as well, bench.Floor/CompleteRelay<ms> is the least a proxy can do: it reads the
same answer from bench/upstream.py over a kept-alive raw asyncio connection (no HTTP client, no SSE parsing) and
sends a pre-serialized delta per read: what receiving the tokens costs on top of sending them.

--uvloop runs the server on uvloop instead of asyncio's own event loop: benchmarks run the floor both ways and
compare with the faster one (DESIGN section 6).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from gitlab.duo.routing.v1 import routing_pb2

SERVICE = "gitlab.duo.routing.v1.RoutingService"
FLOOR_SERVICE = "bench.Floor"
PACINGS_MS = (0, 5, 20)
CHUNKS = 20


def complete_method(pacing_ms: int, relay: bool = False) -> str:
    return f"/{FLOOR_SERVICE}/Complete{'Relay' if relay else 'Paced'}{pacing_ms}"


def complete_messages(route: bytes, chunks: int = CHUNKS) -> tuple[bytes, list[bytes], bytes]:
    """The route as given, one delta per upstream chunk (the text bench/upstream.py sends), and `finished`."""
    deltas = [
        routing_pb2.CompleteResponse(delta=routing_pb2.TextDelta(text=f"token{i} ")).SerializeToString()
        for i in range(chunks)
    ]
    finished = routing_pb2.CompleteResponse(
        finished=routing_pb2.CompletionFinished(
            finish_reason="stop", usage=routing_pb2.TokenUsage(input_tokens=11, output_tokens=chunks)
        )
    ).SerializeToString()
    return route, deltas, finished


def _paced_complete(route: bytes, deltas: list[bytes], finished: bytes, pacing_seconds: float) -> grpc.RpcMethodHandler:
    async def complete(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield route
        yield deltas[0]
        for delta in deltas[1:]:
            if pacing_seconds:
                await asyncio.sleep(pacing_seconds)
            yield delta
        if pacing_seconds:
            await asyncio.sleep(pacing_seconds)
        yield finished

    return grpc.unary_stream_rpc_method_handler(complete)


def _relay_complete(
    route: bytes, deltas: list[bytes], finished: bytes, upstream: str, pacing_ms: int
) -> grpc.RpcMethodHandler:
    host, port = upstream.rsplit(":", 1)
    body = b'{"model":"bench","messages":[{"role":"user","content":"hi"}],"stream":true}'
    request = (
        b"POST /pace/%d/v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (pacing_ms, host.encode(), len(body), body)
    )
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def complete(request_bytes: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        reader, writer = idle.pop() if idle else await asyncio.open_connection(host, int(port))
        yield route
        writer.write(request)
        await reader.readuntil(b"\r\n\r\n")
        sent = 0
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield deltas[min(sent, len(deltas) - 1)]
            sent += 1
            if data.endswith(b"0\r\n\r\n"):
                break
        idle.append((reader, writer))
        yield finished

    return grpc.unary_stream_rpc_method_handler(complete)


async def serve(port: int, response: bytes, route: bytes | None, upstream: str = "") -> None:
    async def resolve_model(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    server = grpc.aio.server()
    # No (de)serializers: the request stays raw bytes and the responses go out as given.
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"ResolveModel": grpc.unary_unary_rpc_method_handler(resolve_model)}
    )
    handlers = [handler]
    if route is not None:
        messages = complete_messages(route)
        methods = {f"CompletePaced{ms}": _paced_complete(*messages, ms / 1000) for ms in PACINGS_MS}
        if upstream:
            methods |= {f"CompleteRelay{ms}": _relay_complete(*messages, upstream, ms) for ms in PACINGS_MS}
        handlers.append(grpc.method_handlers_generic_handler(FLOOR_SERVICE, methods))
    server.add_generic_rpc_handlers(handlers)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description="no-op gRPC servers for the benchmark floors")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response-file", type=Path, help="serialized ResolveModelResponse")
    parser.add_argument("--complete-route-file", type=Path, help="serialized CompleteResponse carrying the route")
    parser.add_argument("--relay-upstream", default="", help="HOST:PORT of bench/upstream.py, for CompleteRelay")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    response = args.response_file.read_bytes() if args.response_file else b""
    route = args.complete_route_file.read_bytes() if args.complete_route_file else None
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.port, response, route, args.relay_upstream))
    else:
        asyncio.run(serve(args.port, response, route, args.relay_upstream))


if __name__ == "__main__":
    main()
