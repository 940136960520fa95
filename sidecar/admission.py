"""Admission: a limit of calls in flight per kind of call, so overload is refused (RESOURCE_EXHAUSTED / OVERLOADED,
with RetryInfo, counted) instead of queued without bound or shed by gRPC as CANCELLED; and, once shutdown has
begun, new calls are refused with UNAVAILABLE / SHUTTING_DOWN while calls in flight finish.

Routing, completions and admin calls have separate limits: long Complete streams cannot starve ResolveModel, and
admin RPCs stay reachable while routing is saturated. A refused call is not deserialized.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from sidecar.errors import DuoError, ErrorCode
from sidecar.grpc_errors import status_for

ROUTING_SERVICE = "/gitlab.duo.routing.v1.RoutingService/"
COMPLETE_METHOD = "/gitlab.duo.routing.v1.RoutingService/Complete"
ADMIN_SERVICE = "/gitlab.duo.routing.v1.AdminService/"
RETRY_AFTER_SECONDS = 0.1


@dataclass
class Limit:
    name: str  # routing | complete | admin: the metric label, and the config key server.max_concurrent_<name>_calls
    capacity: int
    in_flight: int = 0


def limit_name(method: str) -> str | None:
    """Which limit a method path counts against; None: unlimited (health, reflection, unknown paths)."""
    if method == COMPLETE_METHOD:
        return "complete"
    if method.startswith(ROUTING_SERVICE):
        return "routing"
    if method.startswith(ADMIN_SERVICE):
        return "admin"
    return None


# What one request message may cost: a few dozen bytes for ResolveModel, prompts for Complete, seat batches of up to
# 10,000 changes for SyncSeatAssignments. Larger messages are refused before they are parsed.
ROUTING_REQUEST_BYTES = 16 * 1024
ADMIN_REQUEST_BYTES = 1024 * 1024


def max_request_bytes(method: str, largest: int) -> int:
    """The size limit of one request message of `method`; `largest` is server.max_receive_message_bytes."""
    if method == COMPLETE_METHOD:
        return largest
    if method.startswith(ROUTING_SERVICE):
        return min(ROUTING_REQUEST_BYTES, largest)
    return min(ADMIN_REQUEST_BYTES, largest)


class _Refused:
    """Stands in for the request of a call refused before its message was parsed."""


REFUSED = _Refused()


class Admission:
    """Wraps each method handler once, at registration (no per-call interceptor hop on the hot path)."""

    def __init__(self, capacities: Mapping[str, int], on_refused: Callable[[str], None]) -> None:
        self.limits = {name: Limit(name, capacity) for name, capacity in capacities.items()}
        self._on_refused = on_refused
        self.shutting_down = False

    def refuse_new_calls(self) -> None:
        """From now on every new call (but health) is refused with UNAVAILABLE: the sidecar is shutting down."""
        self.shutting_down = True

    def wrap(self, method: str, handler: Any) -> Any:
        """The method's handler, admitted under its limit (unlimited methods unchanged)."""
        name = limit_name(method)
        return handler if name is None else self._wrap(handler, self.limits[name])

    def _refusal(self, limit: Limit) -> DuoError:
        if self.shutting_down:
            return DuoError(
                ErrorCode.UNAVAILABLE,
                "SHUTTING_DOWN",
                "this sidecar is shutting down and takes no new calls; retry on another (or once it is back)",
                retry_after_seconds=RETRY_AFTER_SECONDS,
            )
        self._on_refused(limit.name)
        return DuoError(
            ErrorCode.RESOURCE_EXHAUSTED,
            "OVERLOADED",
            f"this sidecar has {limit.capacity} {limit.name} calls in flight, its limit "
            f"(server.max_concurrent_{limit.name}_calls); retry after a short delay",
            metadata={"limit": limit.name, "max_concurrent_calls": str(limit.capacity)},
            retry_after_seconds=RETRY_AFTER_SECONDS,
        )

    def _wrap(self, handler: Any, limit: Limit) -> Any:
        deserialize = handler.request_deserializer

        def admitted_deserialize(data: bytes) -> Any:
            # Over the limit: not worth parsing; the behavior below refuses it.
            if limit.in_flight >= limit.capacity or self.shutting_down:
                return REFUSED
            return deserialize(data) if deserialize is not None else data

        codec = {"request_deserializer": admitted_deserialize, "response_serializer": handler.response_serializer}

        def over(request: Any) -> bool:
            return request is REFUSED or limit.in_flight >= limit.capacity or self.shutting_down

        if handler.unary_unary is not None:
            unary_unary = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if over(request):
                    await context.abort_with_status(status_for(self._refusal(limit)))
                limit.in_flight += 1
                try:
                    return await unary_unary(request, context)
                finally:
                    limit.in_flight -= 1

            return grpc.unary_unary_rpc_method_handler(unary, **codec)

        if handler.unary_stream is not None:
            unary_stream = handler.unary_stream

            async def server_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if over(request):
                    await context.abort_with_status(status_for(self._refusal(limit)))
                limit.in_flight += 1
                try:
                    async for response in unary_stream(request, context):
                        yield response
                finally:
                    limit.in_flight -= 1

            return grpc.unary_stream_rpc_method_handler(server_stream, **codec)

        # Streamed requests are parsed as they are read, after admission: the deserializer check is moot.
        if handler.stream_unary is not None:
            stream_unary = handler.stream_unary

            async def client_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                if limit.in_flight >= limit.capacity or self.shutting_down:
                    await context.abort_with_status(status_for(self._refusal(limit)))
                limit.in_flight += 1
                try:
                    return await stream_unary(requests, context)
                finally:
                    limit.in_flight -= 1

            return grpc.stream_unary_rpc_method_handler(client_stream, **{**codec, "request_deserializer": deserialize})

        stream_stream = handler.stream_stream

        async def bidi(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if limit.in_flight >= limit.capacity or self.shutting_down:
                await context.abort_with_status(status_for(self._refusal(limit)))
            limit.in_flight += 1
            try:
                async for response in stream_stream(requests, context):
                    yield response
            finally:
                limit.in_flight -= 1

        return grpc.stream_stream_rpc_method_handler(bidi, **{**codec, "request_deserializer": deserialize})
