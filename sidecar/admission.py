"""Admission, the limits step of the edge chain (sidecar.edge): a limit of calls in flight per kind of call, so
overload is refused (RESOURCE_EXHAUSTED / OVERLOADED, with RetryInfo, counted) instead of queued without bound or
shed by gRPC as CANCELLED; and, once shutdown has begun, new calls are refused with UNAVAILABLE / SHUTTING_DOWN
while calls in flight finish. Also each method's request size limit, checked before a message is parsed.

Routing, completions and admin calls have separate limits: long Complete streams cannot starve ResolveModel, and
admin RPCs stay reachable while routing is saturated. A refused call is not parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sidecar.errors import DuoError, ErrorCode

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


class Admission:
    """The limits of one process. The edge chain takes a place (`enter`) before a call is parsed or counted, and
    gives it back (`leave`) when the call ends."""

    def __init__(self, capacities: Mapping[str, int], on_refused: Callable[[str], None]) -> None:
        self.limits = {name: Limit(name, capacity) for name, capacity in capacities.items()}
        self._on_refused = on_refused
        self.shutting_down = False

    def refuse_new_calls(self) -> None:
        """From now on every new call (but health) is refused with UNAVAILABLE: the sidecar is shutting down."""
        self.shutting_down = True

    def limit_for(self, method: str) -> Limit | None:
        """The limit a method path counts against (None: unlimited)."""
        name = limit_name(method)
        return None if name is None else self.limits[name]

    def enter(self, limit: Limit) -> DuoError | None:
        """Takes a place under `limit`; when there is none, the refusal (counted) and no place is taken."""
        if limit.in_flight < limit.capacity and not self.shutting_down:
            limit.in_flight += 1
            return None
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

    @staticmethod
    def leave(limit: Limit) -> None:
        limit.in_flight -= 1
