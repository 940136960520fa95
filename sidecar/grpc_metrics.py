"""The gRPC server interceptor that records the standard grpc_server_* metrics and writes one access log line
per RPC (correlation id, rpc, code, duration).

It wraps each registered method's handler once and reuses the wrapper while the server returns the same
handler, so a call costs a dict lookup, a few counter increments and one histogram observation. Methods of
services that were not registered with Metrics (unknown paths) pass through uncounted.

Status codes: a handler that returns is OK unless it set another code on its context; context.abort (and
abort_with_status, which the servicers use for every DuoError) raises AbortError after setting the code;
asyncio.CancelledError is Canceled, or DeadlineExceeded when the call's deadline has passed; any other
exception is Unknown, as grpc.aio answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from sidecar.logs import RpcLogContext, current_rpc
from sidecar.metrics import GRPC_CODE_NAMES, MethodMetrics, Metrics

log = logging.getLogger("sidecar.access")

# Server-side trouble is logged at WARNING; the caller's own errors at INFO.
_SERVER_ERRORS = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}
)
# Successful calls of these methods are logged at DEBUG: they are the hot path (ResolveModel on every Duo
# request) or polled (health checks). Their failures are logged like any other.
QUIET_METHODS = frozenset(
    {
        "/gitlab.duo.routing.v1.RoutingService/ResolveModel",
        "/grpc.health.v1.Health/Check",
    }
)


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.UNKNOWN


class _Call:
    """Per-RPC bookkeeping shared by the four handler shapes."""

    __slots__ = ("context", "method", "quiet", "rpc", "start", "token")

    def __init__(self, method: MethodMetrics, quiet: bool, context: grpc.aio.ServicerContext) -> None:
        method.started.inc()
        self.method = method
        self.quiet = quiet
        self.context = context
        self.rpc = RpcLogContext(context)
        self.token = current_rpc.set(self.rpc)
        self.start = time.perf_counter()

    def finish(self, code: grpc.StatusCode | None) -> None:
        elapsed = time.perf_counter() - self.start
        method = self.method
        method.seconds.observe(elapsed)
        if code is None or code is grpc.StatusCode.OK:
            method.ok.inc()
            self._access(logging.DEBUG if self.quiet else logging.INFO, grpc.StatusCode.OK, elapsed)
        else:
            method.handled_child(code).inc()
            self._access(logging.WARNING if code in _SERVER_ERRORS else logging.INFO, code, elapsed)
        with contextlib.suppress(ValueError):  # a generator finalized in another context
            current_rpc.reset(self.token)

    def failed(self, exc: BaseException) -> None:
        self.finish(_code_of(exc, self.context))

    def returned(self) -> None:
        self.finish(self.context.code())

    def _access(self, level: int, code: grpc.StatusCode, elapsed: float) -> None:
        if not log.isEnabledFor(level):
            return
        method = self.method
        rpc = f"{method.service}/{method.name}"
        name = GRPC_CODE_NAMES.get(code, "Unknown")
        duration_ms = round(elapsed * 1000, 3)
        extra: dict[str, Any] = {
            "correlation_id": self.rpc.correlation_id,
            "rpc": rpc,
            "grpc_type": method.type,
            "code": name,
            "duration_ms": duration_ms,
        }
        if self.rpc.error_reason:
            extra["reason"] = self.rpc.error_reason
        log.log(level, "%s %s %.3f ms", rpc, name, duration_ms, extra=extra)


async def _count(requests: AsyncIterator[Any], method: MethodMetrics) -> AsyncIterator[Any]:
    async for request in requests:
        method.received.inc()
        yield request


def _wrap(handler: Any, method: MethodMetrics, quiet: bool) -> Any:
    """A handler of the same shape whose behavior records metrics and the access log around the original."""
    codec = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}

    if handler.unary_unary is not None:
        unary_unary: Callable[..., Awaitable[Any]] = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            method.received.inc()
            call = _Call(method, quiet, context)
            try:
                response = await unary_unary(request, context)
            except BaseException as exc:
                call.failed(exc)
                raise
            method.sent.inc()
            call.returned()
            return response

        return grpc.unary_unary_rpc_method_handler(unary, **codec)

    if handler.stream_unary is not None:
        stream_unary: Callable[..., Awaitable[Any]] = handler.stream_unary

        async def client_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            call = _Call(method, quiet, context)
            try:
                response = await stream_unary(_count(requests, method), context)
            except BaseException as exc:
                call.failed(exc)
                raise
            method.sent.inc()
            call.returned()
            return response

        return grpc.stream_unary_rpc_method_handler(client_stream, **codec)

    streaming: Callable[..., Any] = handler.unary_stream or handler.stream_stream
    bidi = handler.unary_stream is None
    make = grpc.stream_stream_rpc_method_handler if bidi else grpc.unary_stream_rpc_method_handler

    if inspect.isasyncgenfunction(streaming):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if bidi:
                request = _count(request, method)
            else:
                method.received.inc()
            call = _Call(method, quiet, context)
            try:
                async with contextlib.aclosing(streaming(request, context)) as responses:
                    async for response in responses:
                        method.sent.inc()
                        yield response
            except BaseException as exc:
                call.failed(exc)
                raise
            call.returned()

        return make(generator, **codec)

    # Writes through context.write (health's Watch): sent messages are not counted.
    async def writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if bidi:
            request = _count(request, method)
        else:
            method.received.inc()
        call = _Call(method, quiet, context)
        try:
            result = await streaming(request, context)
        except BaseException as exc:
            call.failed(exc)
            raise
        call.returned()
        return result

    return make(writer, **codec)


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """grpc_server_* metrics and the access log. Register it after the auth interceptor (see server.py)."""

    def __init__(self, metrics: Metrics, quiet_methods: frozenset[str] = QUIET_METHODS) -> None:
        self._methods = metrics.grpc.methods
        self._quiet = quiet_methods
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        path = details.method
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        method = self._methods.get(path)
        if method is None:
            return handler  # not a method of a registered service: not counted, keeps labels bounded
        method.activate()
        wrapped = _wrap(handler, method, path in self._quiet)
        self._wrapped[path] = (handler, wrapped)
        return wrapped
