"""Errors at the gRPC boundary, the last step of the edge chain (sidecar.edge): DuoError, a storage failure or a
request that cannot be parsed, turned into a gRPC status with google.rpc details (ErrorInfo, BadRequest,
PreconditionFailure, RetryInfo)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sidecar.errors import ERROR_DOMAIN, DuoError, ErrorCode
from sidecar.store import STORAGE_ERRORS

log = logging.getLogger(__name__)


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


# Errors that end an RPC with a documented status rather than UNKNOWN.
ANSWERED_ERRORS: tuple[type[Exception], ...] = (DuoError, *STORAGE_ERRORS)

StorageFailureListener = Callable[[str, Exception], None]


def describe_storage_error(error: BaseException) -> str:
    """The exception's type and message, for one log line."""
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class StorageFailures:
    """Told of every storage failure that ends a call, with the RPC's name. The server hands one to the edge chain
    and to its StoreProbe (sidecar.health_probe), which counts each failure and logs an outage once, not once per
    call."""

    def __init__(self) -> None:
        self._listeners: list[StorageFailureListener] = []

    def subscribe(self, listener: StorageFailureListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: StorageFailureListener) -> None:
        self._listeners.remove(listener)

    def report(self, rpc: str, error: Exception) -> None:
        # Not a traceback per call: an outage fails every call that needs the database, thousands a second.
        log.debug("storage error in %s", rpc, exc_info=error)
        for listener in self._listeners:
            listener(rpc, error)
        if not self._listeners:  # nothing is counting (a chain without a sidecar around it)
            log.warning("storage error in %s: %s", rpc, describe_storage_error(error))


def answer_for(error: Exception, rpc: str, storage_failures: StorageFailures) -> DuoError:
    """What a call that raised one of ANSWERED_ERRORS ends with: the DuoError itself, or for a storage failure
    (reported to `storage_failures`) UNAVAILABLE / STORAGE_UNAVAILABLE."""
    if isinstance(error, DuoError):
        return error
    storage_failures.report(rpc, error)
    return DuoError(
        ErrorCode.UNAVAILABLE,
        "STORAGE_UNAVAILABLE",
        f"the sidecar's database is unavailable ({type(error).__name__}); nothing was changed, retry later",
    )


def request_parser(deserialize: Callable[[bytes], Any] | None, max_bytes: int) -> Callable[[bytes], Any]:
    """Parses one request message of a method: RESOURCE_EXHAUSTED / REQUEST_TOO_LARGE over the method's own size
    limit (not parsed at all), INVALID_ARGUMENT / MALFORMED_REQUEST when it is not a valid message (gRPC itself
    would answer UNKNOWN)."""

    def parse(data: bytes) -> Any:
        if len(data) > max_bytes:
            raise DuoError(
                ErrorCode.RESOURCE_EXHAUSTED,
                "REQUEST_TOO_LARGE",
                f"the request message has {len(data)} bytes; this method accepts at most {max_bytes}",
                metadata={"size": str(len(data)), "limit": str(max_bytes)},
            )
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except DecodeError as exc:
            raise DuoError(
                ErrorCode.INVALID_ARGUMENT,
                "MALFORMED_REQUEST",
                f"the request is not a valid protobuf message for this method: {str(exc)[:200]}",
            ) from None

    return parse
