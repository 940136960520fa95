"""Domain errors, free of gRPC types; sidecar.grpc_errors turns them into google.rpc.Status.

The detail types (and the ErrorInfo domain) are the ones the clients decode into, defined once in duo_common.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from duo_common.errors import ERROR_DOMAIN, FieldViolation, PreconditionViolation

__all__ = [
    "ERROR_DOMAIN",
    "DuoError",
    "ErrorCode",
    "FieldViolation",
    "PreconditionViolation",
    "failed_precondition",
    "invalid_argument",
    "not_found",
]


class ErrorCode(enum.Enum):
    """The gRPC status codes the sidecar returns on purpose (names match grpc.StatusCode)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


@dataclass
class DuoError(Exception):
    """An error meant for the caller: a status code, an UPPER_SNAKE_CASE reason and a message a person can act on."""

    code: ErrorCode
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    precondition_violations: tuple[PreconditionViolation, ...] = ()
    retry_after_seconds: float | None = None  # sent as google.rpc.RetryInfo

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def invalid_argument(field_name: str, message: str, reason: str = "INVALID_ARGUMENT") -> DuoError:
    return DuoError(
        ErrorCode.INVALID_ARGUMENT,
        reason,
        message,
        metadata={"field": field_name},
        field_violations=(FieldViolation(field_name, message),),
    )


def not_found(kind: str, key: str, message: str) -> DuoError:
    return DuoError(ErrorCode.NOT_FOUND, f"{kind.upper()}_NOT_FOUND", message, metadata={kind: key})


def failed_precondition(
    reason: str, message: str, subject: str = "", metadata: Mapping[str, str] | None = None
) -> DuoError:
    return DuoError(
        ErrorCode.FAILED_PRECONDITION,
        reason,
        message,
        metadata=dict(metadata or {}),
        precondition_violations=(PreconditionViolation(reason, subject, message),),
    )
