"""The error details the sidecar sends (google.rpc ErrorInfo, BadRequest, PreconditionFailure) as plain types."""

from __future__ import annotations

from dataclasses import dataclass

# ErrorInfo.domain of every error the sidecar raises itself.
ERROR_DOMAIN = "routing.duo.gitlab.com"


@dataclass(frozen=True)
class FieldViolation:
    """One google.rpc.BadRequest.FieldViolation: the request field at fault and what is wrong with it."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One google.rpc.PreconditionFailure.Violation: type (the error's reason), subject and description."""

    type: str
    subject: str
    description: str
