"""Model Selection calls on an in-process sidecar: resolve, seats and namespace pins."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2
from tests.conftest import Sidecar


async def resolve(sidecar: Sidecar, user: int, feature: str, namespace: int = 0) -> routing_pb2.ResolveModelResponse:
    request = routing_pb2.ResolveModelRequest(user_id=user, feature=feature, root_namespace_id=namespace)
    response: routing_pb2.ResolveModelResponse = await sidecar.routing.ResolveModel(request)
    return response


async def seats(sidecar: Sidecar, *pairs: tuple[int, int], assigned: bool = True) -> None:
    async def batches() -> AsyncIterator[admin_pb2.SyncSeatAssignmentsRequest]:
        yield admin_pb2.SyncSeatAssignmentsRequest(
            assignments=[admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=assigned) for u, n in pairs]
        )

    await sidecar.admin.SyncSeatAssignments(batches())


async def pin(sidecar: Sidecar, namespace: int, feature: str, model: str) -> None:
    await sidecar.admin.UpdateNamespaceModelSelection(
        admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=namespace, feature=feature, offered_model_ref=model
        ),
        metadata=sidecar.actor("owner@example.com"),
    )
