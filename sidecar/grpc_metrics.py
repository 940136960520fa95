"""The metrics and access-log step of the edge chain (sidecar.edge): the standard grpc_server_* metrics and one
access log line per RPC (correlation id, rpc, code, duration, reason), recorded by a CallRecord per call.

A call costs a few attribute increments and one histogram observation; no label lookup, no lock (MethodMetrics).
Methods of services that were not registered with Metrics are not served through the chain at all.

Status codes: a handler that returns is OK unless it set another code on its context; context.abort (and
abort_with_status, with which the chain ends every refused or failed call) raises AbortError after setting the
code; asyncio.CancelledError is Canceled, or DeadlineExceeded when the call's deadline has passed; any other
exception is Unknown, as grpc.aio answers it (or the code the handler set before raising).
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from time import perf_counter
from typing import Any

import grpc

from sidecar.logs import RpcLogContext, current_rpc
from sidecar.metrics import GRPC_CODE_NAMES, GRPC_SECONDS_BOUNDS, MethodMetrics

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


def code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a call that raised `exc` ends with."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    # AbortError: the code the call was aborted with. Anything else: gRPC answers UNKNOWN, or the code the handler
    # set before raising (the generated base servicer's UNIMPLEMENTED).
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN


class CallRecord:
    """One call in grpc_server_* and the access log, from its start to its status. While it runs, the call's log
    context (correlation id, error reason) is current for every line logged."""

    __slots__ = ("method", "quiet", "rpc", "start", "token")

    def __init__(self, method: MethodMetrics, quiet: bool, context: grpc.aio.ServicerContext, unary: bool) -> None:
        method.started += 1
        if unary:
            method.received += 1  # streamed requests are counted as they are read (`received`)
        self.method = method
        self.quiet = quiet
        self.rpc = RpcLogContext(context)
        self.token = current_rpc.set(self.rpc)
        self.start = perf_counter()

    def received(self) -> None:
        """One more message of a request stream read."""
        self.method.received += 1

    def sent(self) -> None:
        """One more message of a response stream sent."""
        self.method.sent += 1

    def succeeded(self, context: grpc.aio.ServicerContext, unary: bool) -> None:
        """The handler returned (a unary response: one message sent): OK, unless it set another code on its
        context."""
        elapsed = perf_counter() - self.start
        code = context.code()
        method = self.method
        if unary:
            method.sent += 1
        if code is None and self.quiet:
            # The hot path (ResolveModel): no helper calls unless the line is logged.
            method.buckets[bisect_left(GRPC_SECONDS_BOUNDS, elapsed)] += 1
            method.seconds_sum += elapsed
            method.ok += 1
            if log.isEnabledFor(logging.DEBUG):
                self._access(logging.DEBUG, grpc.StatusCode.OK, elapsed)
        else:
            self._finish(code, elapsed)
        self._leave()

    def ended(self, code: grpc.StatusCode) -> None:
        """The call ended with an exception that gives it `code` (code_of)."""
        self._finish(code, perf_counter() - self.start)
        self._leave()

    def _finish(self, code: grpc.StatusCode | None, elapsed: float) -> None:
        method = self.method
        method.observe(elapsed)
        if code is None or code is grpc.StatusCode.OK:
            method.ok += 1
            level = logging.DEBUG if self.quiet else logging.INFO
            code = grpc.StatusCode.OK
        else:
            method.handled(code)
            level = logging.WARNING if code in _SERVER_ERRORS else logging.INFO
        if log.isEnabledFor(level):
            self._access(level, code, elapsed)

    def _access(self, level: int, code: grpc.StatusCode, elapsed: float) -> None:
        method, rpc = self.method, self.rpc
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

    def _leave(self) -> None:
        try:  # noqa: SIM105 - a plain try costs nothing on the hot path
            current_rpc.reset(self.token)
        except ValueError:  # a streaming handler finalized from another context
            pass
