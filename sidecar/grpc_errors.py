"""Turns DuoError into a gRPC status with google.rpc details (ErrorInfo, BadRequest, PreconditionFailure)."""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sidecar.errors import ERROR_DOMAIN, DuoError, ErrorCode

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
    code = getattr(code_pb2, error.code.value)
    return rpc_status.to_status(status_pb2.Status(code=code, message=error.message, details=details))


def _storage_unavailable(exc: Exception) -> DuoError:
    return DuoError(
        ErrorCode.UNAVAILABLE,
        "STORAGE_UNAVAILABLE",
        f"the sidecar's database is unavailable ({type(exc).__name__}); nothing was changed, retry later",
    )


@contextlib.asynccontextmanager
async def errors_as_status(context: grpc.aio.ServicerContext, rpc: str) -> AsyncIterator[None]:
    """Inside a servicer method: DuoError and storage failures end the RPC with a documented status."""
    try:
        yield
    except DuoError as error:
        await context.abort_with_status(status_for(error))
    except sqlite3.Error as exc:
        log.exception("storage error in %s", rpc)
        await context.abort_with_status(status_for(_storage_unavailable(exc)))


def translate_errors(
    method: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Decorates a unary servicer method with errors_as_status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        async with errors_as_status(context, method.__name__):
            return await method(self, request, context)
        raise AssertionError("unreachable: abort raises")

    return wrapper
