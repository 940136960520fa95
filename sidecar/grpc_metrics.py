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
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Any

import grpc

from sidecar.logs import RpcLogContext, current_rpc
from sidecar.metrics import GRPC_CODE_NAMES, GRPC_SECONDS_BOUNDS, MethodMetrics, Metrics

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


def _access(method: MethodMetrics, rpc: RpcLogContext, level: int, code: grpc.StatusCode, elapsed: float) -> None:
    """The access log line of one call (the caller checked that `level` is enabled)."""
    name = f"{method.service}/{method.name}"
    code_name = GRPC_CODE_NAMES.get(code, "Unknown")
    duration_ms = round(elapsed * 1000, 3)
    extra: dict[str, Any] = {
        "correlation_id": rpc.correlation_id,
        "rpc": name,
        "grpc_type": method.type,
        "code": code_name,
        "duration_ms": duration_ms,
    }
    if rpc.error_reason:
        extra["reason"] = rpc.error_reason
    log.log(level, "%s %s %.3f ms", name, code_name, duration_ms, extra=extra)


def _finish(
    method: MethodMetrics, rpc: RpcLogContext, quiet: bool, code: grpc.StatusCode | None, elapsed: float
) -> None:
    """Counts a finished call and writes its access line; `code` None or OK is a success."""
    method.observe(elapsed)
    if code is None or code is grpc.StatusCode.OK:
        method.ok += 1
        level = logging.DEBUG if quiet else logging.INFO
        code = grpc.StatusCode.OK
    else:
        method.handled(code)
        level = logging.WARNING if code in _SERVER_ERRORS else logging.INFO
    if log.isEnabledFor(level):
        _access(method, rpc, level, code, elapsed)


async def _count(requests: AsyncIterator[Any], method: MethodMetrics) -> AsyncIterator[Any]:
    async for request in requests:
        method.received += 1
        yield request


def _wrap(handler: Any, method: MethodMetrics, quiet: bool) -> Any:
    """A handler of the same shape whose behavior records metrics and the access log around the original.

    Each behavior sets the RPC's log context (correlation id) for every line logged while it runs."""
    codec = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}

    if handler.unary_unary is not None:
        unary_unary: Callable[..., Awaitable[Any]] = handler.unary_unary
        debug = logging.DEBUG

        # The hot path (ResolveModel): written out, no helper calls on success unless the line is logged.
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            method.started += 1
            method.received += 1
            rpc = RpcLogContext(context)
            token = current_rpc.set(rpc)
            start = perf_counter()
            try:
                response = await unary_unary(request, context)
            except BaseException as exc:
                _finish(method, rpc, quiet, _code_of(exc, context), perf_counter() - start)
                current_rpc.reset(token)
                raise
            elapsed = perf_counter() - start
            code = context.code()
            method.sent += 1
            if code is None and quiet:
                method.buckets[bisect_left(GRPC_SECONDS_BOUNDS, elapsed)] += 1
                method.seconds_sum += elapsed
                method.ok += 1
                if log.isEnabledFor(debug):
                    _access(method, rpc, debug, grpc.StatusCode.OK, elapsed)
            else:
                _finish(method, rpc, quiet, code, elapsed)
            current_rpc.reset(token)
            return response

        return grpc.unary_unary_rpc_method_handler(unary, **codec)

    if handler.stream_unary is not None:
        stream_unary: Callable[..., Awaitable[Any]] = handler.stream_unary

        async def client_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            method.started += 1
            rpc = RpcLogContext(context)
            token = current_rpc.set(rpc)
            start = perf_counter()
            try:
                response = await stream_unary(_count(requests, method), context)
            except BaseException as exc:
                _finish(method, rpc, quiet, _code_of(exc, context), perf_counter() - start)
                current_rpc.reset(token)
                raise
            method.sent += 1
            _finish(method, rpc, quiet, context.code(), perf_counter() - start)
            current_rpc.reset(token)
            return response

        return grpc.stream_unary_rpc_method_handler(client_stream, **codec)

    streaming: Callable[..., Any] = handler.unary_stream or handler.stream_stream
    bidi = handler.unary_stream is None
    make = grpc.stream_stream_rpc_method_handler if bidi else grpc.unary_stream_rpc_method_handler

    if inspect.isasyncgenfunction(streaming):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            method.started += 1
            if bidi:
                request = _count(request, method)
            else:
                method.received += 1
            rpc = RpcLogContext(context)
            token = current_rpc.set(rpc)
            start = perf_counter()
            try:
                async with contextlib.aclosing(streaming(request, context)) as responses:
                    async for response in responses:
                        method.sent += 1
                        yield response
            except BaseException as exc:
                _finish(method, rpc, quiet, _code_of(exc, context), perf_counter() - start)
                _reset(token)
                raise
            _finish(method, rpc, quiet, context.code(), perf_counter() - start)
            _reset(token)

        return make(generator, **codec)

    # Writes through context.write (health's Watch): sent messages are not counted.
    async def writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        method.started += 1
        if bidi:
            request = _count(request, method)
        else:
            method.received += 1
        rpc = RpcLogContext(context)
        token = current_rpc.set(rpc)
        start = perf_counter()
        try:
            result = await streaming(request, context)
        except BaseException as exc:
            _finish(method, rpc, quiet, _code_of(exc, context), perf_counter() - start)
            current_rpc.reset(token)
            raise
        _finish(method, rpc, quiet, context.code(), perf_counter() - start)
        current_rpc.reset(token)
        return result

    return make(writer, **codec)


def _reset(token: Any) -> None:
    with contextlib.suppress(ValueError):  # a generator finalized from another context
        current_rpc.reset(token)


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
        wrapped = _wrap(handler, method, path in self._quiet)
        self._wrapped[path] = (handler, wrapped)
        return wrapped
