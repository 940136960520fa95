"""GitLab's Model Selection definition of done, checked through real gRPC against a real sidecar."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from gitlab.duo.routing.v1 import admin_pb2, types_pb2
from sidecar.catalog import load_catalog
from sidecar.policy import DEFAULT_NAMESPACE_REQUIRED_MESSAGE
from tests.conftest import StartServer
from tests.helpers import REPO, error_details
from tests.model_selection import pin, resolve, seats

pytestmark = pytest.mark.asyncio

CATALOG = load_catalog()
CHAT_DEFAULT = CATALOG.features["duo_chat"].default_model


async def test_namespace_owner_on_gitlab_com_sets_model_per_feature(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await pin(sidecar, 10, "duo_chat", "claude_sonnet_4_6")
    await pin(sidecar, 10, "code_completions", "codestral_2508_vertex")
    chat = await resolve(sidecar, 1, "duo_chat", 10)
    completions = await resolve(sidecar, 1, "code_completions", 10)
    generations = await resolve(sidecar, 1, "code_generations", 10)
    assert (chat.model_identifier, chat.model_name, chat.gitlab_default) == (
        "claude_sonnet_4_6",
        CATALOG.models["claude_sonnet_4_6"].name,
        False,
    )
    assert chat.source == types_pb2.SELECTION_SOURCE_CONTEXT_NAMESPACE
    assert chat.governing_namespace_id == 10
    assert completions.model_identifier == "codestral_2508_vertex"
    assert (
        generations.gitlab_default
        and generations.model_identifier == CATALOG.features["code_generations"].default_model
    )


@pytest.mark.parametrize("deployment", ["dedicated", "self_managed"])
async def test_instance_owner_sets_model_per_feature(start_server: StartServer, deployment: str) -> None:
    sidecar = await start_server(deployment)
    reply = await sidecar.admin.UpdateInstanceModelSelection(
        admin_pb2.UpdateInstanceModelSelectionRequest(
            feature="duo_chat", offered_model_ref="claude_sonnet_4_5_20250929"
        )
    )
    assert reply.model_selection.effective_model_identifier == "claude_sonnet_4_5_20250929"
    answer = await resolve(sidecar, 5, "duo_chat_explain_code")
    assert answer.model_identifier == "claude_sonnet_4_5_20250929"
    assert answer.source == types_pb2.SELECTION_SOURCE_INSTANCE
    assert answer.provider == types_pb2.PROVIDER_GITLAB_AI_GATEWAY
    assert answer.config_version == reply.config_version
    await sidecar.admin.UpdateInstanceModelSelection(
        admin_pb2.UpdateInstanceModelSelectionRequest(feature="duo_chat", offered_model_ref="")
    )
    restored = await resolve(sidecar, 5, "duo_chat")
    assert (restored.model_identifier, restored.gitlab_default) == (CHAT_DEFAULT, True)
    assert restored.source == types_pb2.SELECTION_SOURCE_GITLAB_DEFAULT


async def test_no_context_request_routes_through_the_sole_seat(start_server: StartServer) -> None:
    """Single-seat users see no change: their only namespace is the detected default, no banner."""
    sidecar = await start_server("gitlab_com")
    await seats(sidecar, (1, 10))
    await pin(sidecar, 10, "duo_chat", "claude_sonnet_4_6")
    answer = await resolve(sidecar, 1, "duo_chat")
    assert answer.model_identifier == "claude_sonnet_4_6"
    assert answer.source == types_pb2.SELECTION_SOURCE_SOLE_SEAT_NAMESPACE
    assert answer.governing_namespace_id == 10
    assert answer.default_namespace_prompt is False


async def test_no_seats_gets_the_gitlab_default(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await pin(sidecar, 10, "duo_chat", "claude_sonnet_4_6")
    answer = await resolve(sidecar, 2, "duo_chat")
    assert (answer.model_identifier, answer.source) == (CHAT_DEFAULT, types_pb2.SELECTION_SOURCE_GITLAB_DEFAULT)


async def test_multi_seat_user_is_prompted_and_told_where_to_set_a_default(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await seats(sidecar, (1, 10), (1, 20))
    unpinned = await resolve(sidecar, 1, "duo_chat")
    assert unpinned.default_namespace_prompt is True
    assert unpinned.source == types_pb2.SELECTION_SOURCE_UNANIMOUS_SEAT_NAMESPACES

    await pin(sidecar, 20, "duo_chat", "claude_sonnet_4_6")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await resolve(sidecar, 1, "duo_chat")
    details = error_details(raised.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "DEFAULT_NAMESPACE_REQUIRED"
    assert details.message == DEFAULT_NAMESPACE_REQUIRED_MESSAGE
    assert details.metadata == {"user_id": "1", "feature": "duo_chat", "candidate_namespace_ids": "10,20"}
    # Requests whose answer does not depend on the namespace still work, with the banner.
    completions = await resolve(sidecar, 1, "code_completions")
    assert completions.default_namespace_prompt is True
    # Requests with context are unaffected apart from the banner.
    in_context = await resolve(sidecar, 1, "duo_chat", 20)
    assert (in_context.model_identifier, in_context.default_namespace_prompt) == ("claude_sonnet_4_6", True)


async def test_default_namespace_routes_every_no_context_request(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await seats(sidecar, (1, 10), (1, 20))
    await pin(sidecar, 10, "duo_chat", "claude_sonnet_4_6")
    await pin(sidecar, 20, "duo_chat", "claude_sonnet_4_5_20250929")
    await sidecar.admin.SetUserDefaultNamespace(admin_pb2.SetUserDefaultNamespaceRequest(user_id=1, namespace_id=20))
    for feature in ("duo_chat", "duo_chat_fix_code", "code_completions"):
        answer = await resolve(sidecar, 1, feature)
        assert answer.source == types_pb2.SELECTION_SOURCE_DEFAULT_NAMESPACE
        assert answer.governing_namespace_id == 20
        assert answer.default_namespace_prompt is False
    assert (await resolve(sidecar, 1, "duo_chat")).model_identifier == "claude_sonnet_4_5_20250929"
    assert (await resolve(sidecar, 1, "code_completions")).gitlab_default is True


async def test_default_namespace_requires_a_seat_and_goes_stale_when_the_seat_is_lost(
    start_server: StartServer,
) -> None:
    sidecar = await start_server("gitlab_com")
    await seats(sidecar, (1, 10), (1, 20))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sidecar.admin.SetUserDefaultNamespace(
            admin_pb2.SetUserDefaultNamespaceRequest(user_id=1, namespace_id=30)
        )
    details = error_details(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_SEAT_IN_NAMESPACE")

    await pin(sidecar, 10, "duo_chat", "claude_sonnet_4_6")
    await pin(sidecar, 20, "duo_chat", "claude_sonnet_4_5_20250929_vertex")
    await sidecar.admin.SetUserDefaultNamespace(admin_pb2.SetUserDefaultNamespaceRequest(user_id=1, namespace_id=20))
    assert (await resolve(sidecar, 1, "duo_chat")).model_identifier == "claude_sonnet_4_5_20250929_vertex"
    await seats(sidecar, (1, 20), assigned=False)
    # The stale default is never used; with one seat left, that seat governs.
    answer = await resolve(sidecar, 1, "duo_chat")
    assert (answer.model_identifier, answer.source) == (
        "claude_sonnet_4_6",
        types_pb2.SELECTION_SOURCE_SOLE_SEAT_NAMESPACE,
    )
    status = await sidecar.admin.GetUserRoutingStatus(admin_pb2.GetUserRoutingStatusRequest(user_id=1))
    assert (status.explicit_default_namespace_id, status.explicit_default_valid) == (20, False)
    assert status.effective_default_namespace_id == 10


async def test_changes_apply_at_once_without_flags_or_grace_period(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await seats(sidecar, (1, 10))
    before = await resolve(sidecar, 1, "duo_chat")
    await pin(sidecar, 10, "duo_chat", "claude_sonnet_4_6")
    after = await resolve(sidecar, 1, "duo_chat")
    assert (before.model_identifier, after.model_identifier) == (CHAT_DEFAULT, "claude_sonnet_4_6")
    assert int(after.config_version) > int(before.config_version)


async def test_user_routing_status_explains_every_feature(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await seats(sidecar, (1, 10), (1, 20))
    await pin(sidecar, 10, "duo_chat", "claude_sonnet_4_6")
    status = await sidecar.admin.GetUserRoutingStatus(admin_pb2.GetUserRoutingStatusRequest(user_id=1))
    assert list(status.seat_namespace_ids) == [10, 20]
    assert status.default_namespace_prompt is True
    by_feature = {f.feature: f for f in status.features}
    assert by_feature["duo_chat"].error_reason == "DEFAULT_NAMESPACE_REQUIRED"
    assert by_feature["duo_chat_explain_code"].error_reason == "DEFAULT_NAMESPACE_REQUIRED"
    assert (
        by_feature["code_completions"].resolution.model_identifier == CATALOG.features["code_completions"].default_model
    )


async def test_pinned_model_that_left_the_catalog_falls_back_after_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A catalog refresh may drop a pinned model: requests keep working on the default and say so."""
    data = tmp_path / "shared"
    first = await start_server("gitlab_com", data_dir=data)
    await pin(first, 10, "duo_chat", "claude_sonnet_4_5_20250929")
    await first.server.stop()

    definitions = json.loads((REPO / "sidecar" / "data" / "model_definitions.json").read_text())
    for feature in definitions["unit_primitives"]:
        feature["selectable_models"] = [m for m in feature["selectable_models"] if m != "claude_sonnet_4_5_20250929"]
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(definitions))
    second = await start_server("gitlab_com", data_dir=data, catalog_path=str(catalog))
    answer = await resolve(second, 1, "duo_chat", 10)
    assert answer.model_identifier == CHAT_DEFAULT
    assert answer.pinned_model_unavailable is True
    listed = await second.admin.ListNamespaceModelSelections(
        admin_pb2.ListNamespaceModelSelectionsRequest(namespace_id=10)
    )
    chat = next(s for s in listed.model_selections if s.feature == "duo_chat")
    assert (chat.offered_model_ref, chat.pinned_model_unavailable) == ("claude_sonnet_4_5_20250929", True)


# -- the same scenarios on PostgreSQL --------------------------------------------------------------------------

Scenario = Callable[[StartServer, Path], Awaitable[None]]

SCENARIOS: dict[str, Scenario] = {
    "namespace_pins": lambda start, _: test_namespace_owner_on_gitlab_com_sets_model_per_feature(start),
    "instance_pins_dedicated": lambda start, _: test_instance_owner_sets_model_per_feature(start, "dedicated"),
    "instance_pins_self_managed": lambda start, _: test_instance_owner_sets_model_per_feature(start, "self_managed"),
    "sole_seat": lambda start, _: test_no_context_request_routes_through_the_sole_seat(start),
    "multi_seat_prompt": lambda start, _: test_multi_seat_user_is_prompted_and_told_where_to_set_a_default(start),
    "default_namespace": lambda start, _: test_default_namespace_routes_every_no_context_request(start),
    "stale_default": lambda start, _: test_default_namespace_requires_a_seat_and_goes_stale_when_the_seat_is_lost(
        start
    ),
    "changes_apply_at_once": lambda start, _: test_changes_apply_at_once_without_flags_or_grace_period(start),
    "pin_left_catalog_after_restart": test_pinned_model_that_left_the_catalog_falls_back_after_restart,
}


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_model_selection_on_postgres(
    scenario: Scenario, start_postgres_server: StartServer, tmp_path: Path
) -> None:
    await scenario(start_postgres_server, tmp_path)
