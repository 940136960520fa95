"""The floor: a no-op grpc.aio server that answers ResolveModel with fixed, pre-serialized bytes.

Same process model as the sidecar (one process, grpc.aio, default server options), but no parsing,
no policy and no serialization: whatever it costs is the cost of gRPC itself.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc

SERVICE = "gitlab.duo.routing.v1.RoutingService"


async def serve(port: int, response: bytes) -> None:
    async def resolve_model(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    server = grpc.aio.server()
    # No (de)serializers: the request stays raw bytes and the response goes out as given.
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"ResolveModel": grpc.unary_unary_rpc_method_handler(resolve_model)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description="no-op ResolveModel server for the benchmark floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response-file", type=Path, required=True, help="serialized ResolveModelResponse")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.response_file.read_bytes()))


if __name__ == "__main__":
    main()
