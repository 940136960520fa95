"""Turns DuoError into a gRPC status with google.rpc details (ErrorInfo, BadRequest, PreconditionFailure)."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sidecar.errors import ERROR_DOMAIN, DuoError, ErrorCode
from sidecar.logs import note_error_reason
from sidecar.store import STORAGE_ERRORS

log = logging.getLogger(__name__)

R = TypeVar("R")


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_for(error: DuoError) -> Any:
    """A grpc.Status carrying the error's details in grpc-status-details-bin."""
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))]
    if error.field_violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in error.field_violations
                    ]
                )
            )
        )
    if error.precondition_violations:
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=v.type, subject=v.subject, description=v.description
                        )
                        for v in error.precondition_violations
                    ]
                )
            )
        )
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    code = getattr(code_pb2, error.code.value)
    return rpc_status.to_status(status_pb2.Status(code=code, message=error.message, details=details))


def _storage_unavailable(exc: Exception) -> DuoError:
    return DuoError(
        ErrorCode.UNAVAILABLE,
        "STORAGE_UNAVAILABLE",
        f"the sidecar's database is unavailable ({type(exc).__name__}); nothing was changed, retry later",
    )


# Errors that end an RPC with a documented status rather than UNKNOWN.
_ANSWERED_ERRORS: tuple[type[Exception], ...] = (DuoError, *STORAGE_ERRORS)

# Told of every storage failure that ends a call, with the RPC's name: the running sidecar's StoreProbe
# (sidecar.health_probe), which counts it and logs an outage once, not once per call. Per process: a sidecar
# process has one store (in tests, sidecars sharing a process share it).
storage_failure_listeners: list[Callable[[str, Exception], None]] = []


def describe_storage_error(error: BaseException) -> str:
    """The exception's type and message, for one log line."""
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


async def abort_for(error: Exception, context: grpc.aio.ServicerContext, rpc: str) -> None:
    """Ends the RPC with the documented status for a DuoError or a storage failure (and raises)."""
    if isinstance(error, DuoError):
        note_error_reason(error.reason)  # for the RPC's access log line
        await context.abort_with_status(status_for(error))
    # Not a traceback per call: an outage fails every call that needs the database, thousands a second.
    log.debug("storage error in %s", rpc, exc_info=error)
    for listener in storage_failure_listeners:
        listener(rpc, error)
    if not storage_failure_listeners:  # no sidecar is counting (a servicer run on its own)
        log.warning("storage error in %s: %s", rpc, describe_storage_error(error))
    unavailable = _storage_unavailable(error)
    note_error_reason(unavailable.reason)
    await context.abort_with_status(status_for(unavailable))


@contextlib.asynccontextmanager
async def errors_as_status(context: grpc.aio.ServicerContext, rpc: str) -> AsyncIterator[None]:
    """Inside a streaming servicer method: DuoError and storage failures end the RPC with a documented status."""
    try:
        yield
    except _ANSWERED_ERRORS as error:
        await abort_for(error, context, rpc)


def translate_errors(
    method: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Decorates a unary servicer method like errors_as_status; a plain try costs less on the hot path."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except _ANSWERED_ERRORS as error:
            await abort_for(error, context, name)
            raise AssertionError("unreachable: abort raises") from None

    return wrapper


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request that is not a valid protobuf message of the method's type."""

    problem: str


@dataclass(frozen=True)
class _Oversized:
    """Stands in for a request larger than its method's limit: refused without being parsed."""

    size: int
    limit: int


def _oversized_error(request: _Oversized) -> DuoError:
    return DuoError(
        ErrorCode.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
        f"the request message has {request.size} bytes; this method accepts at most {request.limit}",
        metadata={"size": str(request.size), "limit": str(request.limit)},
    )


def _refusal(request: Any) -> DuoError | None:
    if isinstance(request, _Undecodable):
        return _undecodable_error(request.problem)
    if isinstance(request, _Oversized):
        return _oversized_error(request)
    return None


def _undecodable_error(problem: str) -> DuoError:
    return DuoError(
        ErrorCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        f"the request is not a valid protobuf message for this method: {problem}",
    )


def _guard(handler: Any, max_bytes: int) -> Any:
    """The same method handler, answering INVALID_ARGUMENT (not gRPC's UNKNOWN) to undecodable requests, and
    RESOURCE_EXHAUSTED to requests over the method's own size limit, which are not parsed at all."""
    deserialize = handler.request_deserializer

    def safe_deserialize(data: bytes) -> Any:
        if len(data) > max_bytes:
            return _Oversized(len(data), max_bytes)
        try:
            return deserialize(data)
        except DecodeError as exc:
            return _Undecodable(str(exc)[:200])

    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    if handler.unary_unary:

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refusal = _refusal(request)
            if refusal is not None:
                await context.abort_with_status(status_for(refusal))
            return await behavior(request, context)

        return handler._replace(request_deserializer=safe_deserialize, unary_unary=unary)
    if handler.unary_stream:

        async def server_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            refusal = _refusal(request)
            if refusal is not None:
                await context.abort_with_status(status_for(refusal))
            async for response in behavior(request, context):
                yield response

        return handler._replace(request_deserializer=safe_deserialize, unary_stream=server_stream)

    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            refusal = _refusal(request)
            if refusal is not None:
                raise refusal
            yield request

    if handler.stream_unary:

        async def client_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await behavior(checked(requests), context)

        return handler._replace(request_deserializer=safe_deserialize, stream_unary=client_stream)

    async def bidi(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in behavior(checked(requests), context):
            yield response

    return handler._replace(request_deserializer=safe_deserialize, stream_stream=bidi)


class _Registration:
    """Stands in for the server while generated code registers a servicer, so the handlers can be guarded."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # rebuilt from the registered handlers below

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, handlers


def add_guarded_servicer(
    server: grpc.aio.Server,
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    max_request_bytes: Callable[[str], int],
    admit: Callable[[str, Any], Any] = lambda _method, handler: handler,
) -> None:
    """Registers a servicer like the generated add_*_to_server, with every handler guarded by _guard;
    max_request_bytes gives each method path its size limit, `admit` wraps it in its admission limit."""
    registration = _Registration()
    add_to_server(servicer, registration)
    guarded = {}
    for name, handler in registration.handlers.items():
        path = f"/{registration.service}/{name}"
        guarded[name] = _guard(admit(path, handler), max_request_bytes(path))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(registration.service, guarded),))
    server.add_registered_method_handlers(registration.service, guarded)
