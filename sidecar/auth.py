"""Checks Gitaly-style v2 HMAC bearer tokens: `Bearer v2.<hex HMAC-SHA256(secret, unix_ts)>.<unix_ts>`.

The format and its signing (what clients need) are in duo_common.tokens; this module is the server's side.

The client secret may call RoutingService; the admin secret may call everything. Health is open.
The first step of the edge chain (sidecar.edge) checks every call before any limit, metric or handler sees it.

A method this server does not have needs the admin secret like any other: without a valid token the caller
gets the same UNAUTHENTICATED/PERMISSION_DENIED as on a real method, so probing paths reveals nothing about
the API; only a caller holding the admin secret learns UNIMPLEMENTED.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from duo_common.tokens import ALLOWED_SKEW_SECONDS, TOKEN_PATTERN
from sidecar.errors import DuoError, ErrorCode
from sidecar.grpc_errors import status_for

log = logging.getLogger(__name__)

ROUTING_PREFIX = "/gitlab.duo.routing.v1.RoutingService/"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")


class Role(enum.Enum):
    CLIENT = "client"
    ADMIN = "admin"


@dataclass(frozen=True)
class Secrets:
    client: bytes | None
    admin: bytes | None

    @property
    def enabled(self) -> bool:
        return self.admin is not None


def _failure(code: ErrorCode, reason: str, message: str) -> DuoError:
    return DuoError(code, reason, message)


def authenticate(authorization: str | None, required: Role, secrets: Secrets, now: float) -> Role:
    """The caller's role, or a DuoError: UNAUTHENTICATED when no usable token, PERMISSION_DENIED when refused."""
    if not authorization:
        raise _failure(
            ErrorCode.UNAUTHENTICATED,
            "AUTH_TOKEN_MISSING",
            "no authorization metadata; send 'authorization: Bearer v2.<hmac>.<timestamp>'",
        )
    match = TOKEN_PATTERN.fullmatch(authorization)
    if match is None:
        raise _failure(
            ErrorCode.UNAUTHENTICATED,
            "AUTH_TOKEN_MALFORMED",
            "the authorization token is not 'Bearer v2.<hex hmac>.<unix timestamp>'",
        )
    presented, signed = match.group(1).lower().encode(), match.group(2)
    timestamp = int(signed)
    skew = timestamp - now
    if abs(skew) > ALLOWED_SKEW_SECONDS:
        when = "in the future" if skew > 0 else "expired"
        raise _failure(
            ErrorCode.PERMISSION_DENIED,
            "AUTH_TOKEN_EXPIRED",
            f"the token is {when} ({abs(skew):.0f} s off; at most {ALLOWED_SKEW_SECONDS} s): check the clocks",
        )
    message = signed.encode()
    role: Role | None = None
    for candidate, secret in ((Role.ADMIN, secrets.admin), (Role.CLIENT, secrets.client)):
        if secret is None:
            continue
        expected = hmac.new(secret, message, hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(expected, presented) and role is None:
            role = candidate
    if role is None:
        raise _failure(
            ErrorCode.PERMISSION_DENIED, "AUTH_TOKEN_INVALID", "the token was not signed with a known secret"
        )
    if required is Role.ADMIN and role is not Role.ADMIN:
        raise _failure(
            ErrorCode.PERMISSION_DENIED,
            "AUTH_WRONG_ROLE",
            "this RPC needs the admin secret; the client secret signed it",
        )
    return role


def required_role(method: str, open_reflection: bool) -> Role | None:
    """Who may call a method; None means anyone (health). Unknown methods need the admin secret."""
    if method.startswith(ROUTING_PREFIX):
        return Role.CLIENT
    if method.startswith(HEALTH_PREFIX):
        return None
    if open_reflection and method.startswith(REFLECTION_PREFIXES):
        return None
    return Role.ADMIN


AuthFailureHook = Callable[[str, bool], None]
VERIFIED_TOKENS_KEPT = 4096


class Authenticator:
    """The auth step of the edge chain (sidecar.edge): refuses calls without a valid token; in transitioning mode
    lets them through and only counts them."""

    def __init__(
        self,
        secrets: Secrets,
        *,
        transitioning: bool,
        open_reflection: bool,
        on_failure: AuthFailureHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secrets = secrets
        self.transitioning = transitioning
        self.open_reflection = open_reflection
        self.on_failure = on_failure
        self.clock = clock
        # Tokens already verified, with their role and timestamp: Rails signs one token a second and sends it
        # with many calls, and two HMACs per call were 5% of ResolveModel's CPU. The window is still checked.
        self._verified: dict[str, tuple[Role, int]] = {}

    @property
    def enabled(self) -> bool:
        return self.secrets.enabled

    def required_role(self, method: str) -> Role | None:
        """Who may call `method` on this server; None: anyone, or authentication is off."""
        return required_role(method, self.open_reflection) if self.enabled else None

    def refusal(self, required: Role, method: str, metadata: Iterable[tuple[str, Any]] | None) -> DuoError | None:
        """Why a call to `method` with this invocation metadata is refused; None lets it through (in transitioning
        mode, after counting and logging what would have been refused)."""
        authorization = None
        for key, value in metadata or ():
            if key == "authorization":
                authorization = value
                break
        now = self.clock()
        if authorization is not None:
            known = self._verified.get(authorization)
            if known is not None:
                role, signed_at = known
                fresh = abs(signed_at - now) <= ALLOWED_SKEW_SECONDS
                if fresh and (required is not Role.ADMIN or role is Role.ADMIN):
                    return None
        try:
            role = authenticate(authorization, required, self.secrets, now)
        except DuoError as refusal:
            enforced = not self.transitioning
            if self.on_failure is not None:
                self.on_failure(refusal.reason, enforced)
            if enforced:
                return refusal
            # The path is the caller's text: bounded and quoted in the log line.
            log.warning("transitioning: would refuse %.200r (%s)", method, refusal.reason)
            return None
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            self._verified.clear()  # tokens live 30 s: the ones still in use come back at once
        self._verified[str(authorization)] = (role, int(str(authorization).rpartition(".")[2]))
        return None


class UnknownMethods(grpc.GenericRpcHandler):
    """Answers calls to paths this server has no method for (registered last, after every service): without a
    valid token the caller gets the refusal a real method gives, since UNIMPLEMENTED would tell an unauthenticated
    caller which methods exist; with one, gRPC's own UNIMPLEMENTED."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        required = self._authenticator.required_role(method)
        if required is None:
            return None
        refusal = self._authenticator.refusal(required, method, handler_call_details.invocation_metadata)
        if refusal is None:
            return None
        status = status_for(refusal)

        # Bidirectional streaming: ends the call without reading a request, whatever the caller's shape.
        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await context.abort_with_status(status)
            yield  # pragma: no cover - makes this an async generator

        return grpc.stream_stream_rpc_method_handler(refuse)
