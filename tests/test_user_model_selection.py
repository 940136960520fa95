"""User model selection (issue 15) through real gRPC against a real sidecar: the user's choice on ResolveModel and
Complete, allowlists, ListUserSelectableModels and GetUserRoutingStatus, and every refusal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2, types_pb2
from sidecar.catalog import load_catalog
from tests.completion import collect, complete_request
from tests.conftest import Sidecar, StartServer
from tests.helpers import REPO, error_details
from tests.model_selection import pin, seats
from tests.upstreams import MockUpstream, serve_upstream

pytestmark = pytest.mark.asyncio

AGENTIC = "duo_agent_platform_agentic_chat"
CATALOG = load_catalog()
INFO = CATALOG.features[AGENTIC]
# Read from the catalog: three selectable models that are not the default, one the feature does not offer.
A, B, C = [m for m in INFO.selectable_models if m != INFO.default_model and "__default__" not in m][:3]
FOREIGN = next(
    m for m in CATALOG.models if not INFO.is_selectable(m) and m not in INFO.team_only_models and "__default__" not in m
)
UNKNOWN = "no_such_model_v0"


async def choose(
    sidecar: Sidecar, choice: str, namespace: int = 0, user: int = 1, feature: str = AGENTIC
) -> routing_pb2.ResolveModelResponse:
    request = routing_pb2.ResolveModelRequest(
        user_id=user, feature=feature, root_namespace_id=namespace, user_selected_model=choice
    )
    response: routing_pb2.ResolveModelResponse = await sidecar.routing.ResolveModel(request)
    return response


async def namespace_allowlist(
    sidecar: Sidecar, namespace: int, refs: list[str], enabled: bool = True, feature: str = AGENTIC
) -> admin_pb2.UpdateNamespaceModelAllowlistResponse:
    response: admin_pb2.UpdateNamespaceModelAllowlistResponse = await sidecar.admin.UpdateNamespaceModelAllowlist(
        admin_pb2.UpdateNamespaceModelAllowlistRequest(
            namespace_id=namespace, feature=feature, enabled=enabled, model_refs=refs
        ),
        metadata=sidecar.actor("owner@example.com"),
    )
    return response


async def instance_allowlist(
    sidecar: Sidecar, refs: list[str], enabled: bool = True, feature: str = AGENTIC
) -> admin_pb2.UpdateInstanceModelAllowlistResponse:
    response: admin_pb2.UpdateInstanceModelAllowlistResponse = await sidecar.admin.UpdateInstanceModelAllowlist(
        admin_pb2.UpdateInstanceModelAllowlistRequest(feature=feature, enabled=enabled, model_refs=refs),
        metadata=sidecar.actor("admin@example.com"),
    )
    return response


async def picker(sidecar: Sidecar, namespace: int = 0, user: int = 1, feature: str = AGENTIC) -> Any:
    return await sidecar.routing.ListUserSelectableModels(
        routing_pb2.ListUserSelectableModelsRequest(user_id=user, feature=feature, root_namespace_id=namespace)
    )


async def namespace_selection(sidecar: Sidecar, namespace: int, feature: str = AGENTIC) -> admin_pb2.ModelSelection:
    listed = await sidecar.admin.ListNamespaceModelSelections(
        admin_pb2.ListNamespaceModelSelectionsRequest(namespace_id=namespace, page_size=1000)
    )
    selection: admin_pb2.ModelSelection = next(s for s in listed.model_selections if s.feature == feature)
    return selection


async def test_namespace_allowlist_turns_a_hard_pin_into_a_default(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await pin(sidecar, 10, AGENTIC, A)
    pinned = await choose(sidecar, B, 10)
    assert (pinned.model_identifier, pinned.source) == (A, types_pb2.SELECTION_SOURCE_CONTEXT_NAMESPACE)
    assert pinned.user_selection == types_pb2.USER_SELECTION_IGNORED_PINNED
    assert (await namespace_selection(sidecar, 10)).hard_pin is True

    reply = await namespace_allowlist(sidecar, 10, [B, B, FOREIGN, UNKNOWN, C])
    assert [(d.model_ref, d.reason) for d in reply.dropped_model_refs] == [
        (B, "DUPLICATE"),
        (FOREIGN, "NOT_SELECTABLE_FOR_FEATURE"),
        (UNKNOWN, "UNKNOWN_MODEL"),
    ]
    assert all(d.message for d in reply.dropped_model_refs)
    selection = reply.model_selection
    assert (selection.feature, selection.namespace_id, selection.user_selectable) == (AGENTIC, 10, True)
    assert (selection.hard_pin, selection.offered_model_ref, selection.effective_model_identifier) == (False, A, A)
    assert selection.allowlist.enabled is True
    assert list(selection.allowlist.model_refs) == [B, C]
    assert list(selection.allowlist.allowed_model_identifiers) == [A, B, C]
    assert list(selection.allowlist.stale_model_refs) == []

    chosen = await choose(sidecar, B, 10)
    assert (chosen.model_identifier, chosen.source, chosen.user_selection) == (
        B,
        types_pb2.SELECTION_SOURCE_USER,
        types_pb2.USER_SELECTION_APPLIED,
    )
    assert (chosen.model_name, chosen.gitlab_default, chosen.governing_namespace_id) == (
        CATALOG.model(B).name,
        False,
        10,
    )
    assert chosen.config_version == reply.config_version
    outside = await choose(sidecar, FOREIGN, 10)
    assert (outside.model_identifier, outside.user_selection) == (A, types_pb2.USER_SELECTION_IGNORED_UNKNOWN_MODEL)
    not_allowed = next(m for m in INFO.selectable_models if m not in (A, B, C))
    refused = await choose(sidecar, not_allowed, 10)
    assert (refused.model_identifier, refused.user_selection) == (A, types_pb2.USER_SELECTION_IGNORED_NOT_ALLOWED)
    # Another namespace is not affected; the list shows the allowlist.
    elsewhere = await choose(sidecar, B, 20)
    assert (elsewhere.model_identifier, elsewhere.governing_namespace_id) == (B, 20)
    listed = await namespace_selection(sidecar, 10)
    assert listed.allowlist == selection.allowlist
    chat = await namespace_selection(sidecar, 10, "duo_chat")
    assert (chat.user_selectable, chat.HasField("allowlist"), chat.hard_pin) == (False, False, False)

    off = await namespace_allowlist(sidecar, 10, [], enabled=False)
    assert (off.model_selection.allowlist.enabled, list(off.model_selection.allowlist.model_refs)) == (False, [])
    assert off.model_selection.hard_pin is True
    assert (await choose(sidecar, B, 10)).user_selection == types_pb2.USER_SELECTION_IGNORED_PINNED

    audit = await sidecar.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource_prefix=f"namespaces/10/features/{AGENTIC}/allowlist")
    )
    events = [(e.action, e.actor, json.loads(e.before_json), json.loads(e.after_json)) for e in audit.audit_events]
    assert events == [
        (
            "UpdateNamespaceModelAllowlist",
            "owner@example.com",
            {"enabled": True, "model_refs": [B, C]},
            {"enabled": False, "model_refs": []},
        ),
        (
            "UpdateNamespaceModelAllowlist",
            "owner@example.com",
            {"enabled": False, "model_refs": []},
            {"enabled": True, "model_refs": [B, C]},
        ),
    ]
    # The same allowlist again changes nothing: no new version, no audit event.
    again = await namespace_allowlist(sidecar, 10, [], enabled=False)
    assert again.config_version == off.config_version


@pytest.mark.parametrize("deployment", ["dedicated", "self_managed"])
async def test_instance_allowlist(start_server: StartServer, deployment: str) -> None:
    sidecar = await start_server(deployment)
    free = await choose(sidecar, C)
    assert (free.model_identifier, free.source, free.user_selection) == (
        C,
        types_pb2.SELECTION_SOURCE_USER,
        types_pb2.USER_SELECTION_APPLIED,
    )
    await sidecar.admin.UpdateInstanceModelSelection(
        admin_pb2.UpdateInstanceModelSelectionRequest(feature=AGENTIC, offered_model_ref=A)
    )
    assert (await choose(sidecar, C)).user_selection == types_pb2.USER_SELECTION_IGNORED_PINNED
    reply = await instance_allowlist(sidecar, [B, UNKNOWN])
    assert [(d.model_ref, d.reason) for d in reply.dropped_model_refs] == [(UNKNOWN, "UNKNOWN_MODEL")]
    assert list(reply.model_selection.allowlist.allowed_model_identifiers) == [A, B]
    assert reply.model_selection.namespace_id == 0
    assert (await choose(sidecar, B)).model_identifier == B
    ignored = await choose(sidecar, C)
    assert (ignored.model_identifier, ignored.source, ignored.user_selection) == (
        A,
        types_pb2.SELECTION_SOURCE_INSTANCE,
        types_pb2.USER_SELECTION_IGNORED_NOT_ALLOWED,
    )
    listed = await sidecar.admin.ListInstanceModelSelections(
        admin_pb2.ListInstanceModelSelectionsRequest(page_size=1000)
    )
    agentic = next(s for s in listed.model_selections if s.feature == AGENTIC)
    assert agentic.allowlist == reply.model_selection.allowlist
    audit = await sidecar.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource_prefix=f"instance/features/{AGENTIC}/allowlist")
    )
    assert [(e.action, e.actor) for e in audit.audit_events] == [("UpdateInstanceModelAllowlist", "admin@example.com")]
    assert json.loads(audit.audit_events[0].after_json) == {"enabled": True, "model_refs": [B]}
    assert json.loads(audit.audit_events[0].before_json) == {"enabled": False, "model_refs": []}


async def test_self_managed_disabled_feature_offers_no_choice(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed")
    await sidecar.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(feature=AGENTIC, provider=admin_pb2.FEATURE_PROVIDER_DISABLED)
    )
    answer = await choose(sidecar, B)
    assert (answer.provider, answer.user_selection) == (
        types_pb2.PROVIDER_DISABLED,
        types_pb2.USER_SELECTION_IGNORED_SELF_HOSTED,
    )
    shown = await picker(sidecar)
    assert (shown.user_may_choose, shown.choice_unavailable_reason) == (
        False,
        types_pb2.USER_SELECTION_IGNORED_SELF_HOSTED,
    )
    assert not shown.HasField("default_model") and list(shown.selectable_models) == []


async def test_choice_on_a_feature_that_is_not_user_selectable_is_ignored_and_said(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    chat = CATALOG.features["duo_chat"]
    other = next(m for m in chat.selectable_models if m != chat.default_model)
    answer = await choose(sidecar, other, 10, feature="duo_chat")
    assert (answer.model_identifier, answer.user_selection) == (
        chat.default_model,
        types_pb2.USER_SELECTION_IGNORED_NOT_USER_SELECTABLE,
    )
    shown = await picker(sidecar, 10, feature="duo_chat")
    assert (shown.user_may_choose, shown.choice_unavailable_reason) == (
        False,
        types_pb2.USER_SELECTION_IGNORED_NOT_USER_SELECTABLE,
    )
    assert shown.default_model.identifier == chat.default_model


async def test_no_choice_says_none_was_requested(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    assert (await choose(sidecar, "", 10)).user_selection == types_pb2.USER_SELECTION_UNSPECIFIED


async def test_multi_seat_user_without_default_namespace(start_server: StartServer) -> None:
    """Rule 4: the choice is judged in every candidate namespace."""
    sidecar = await start_server("gitlab_com")
    await seats(sidecar, (1, 10), (1, 20))
    await pin(sidecar, 10, AGENTIC, A)
    await pin(sidecar, 20, AGENTIC, C)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await choose(sidecar, "")
    assert error_details(raised.value).reason == "DEFAULT_NAMESPACE_REQUIRED"
    shown = await picker(sidecar)
    assert (list(shown.candidate_namespace_ids), shown.depends_on_default_namespace) == ([10, 20], True)
    assert (shown.user_may_choose, shown.HasField("default_model")) == (False, False)

    await namespace_allowlist(sidecar, 10, [B])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await choose(sidecar, B)  # 20 still hard-pins C: the answer depends on the default namespace, as without
    assert error_details(raised.value).reason == "DEFAULT_NAMESPACE_REQUIRED"
    await namespace_allowlist(sidecar, 20, [B])
    agreed = await choose(sidecar, B)
    assert (agreed.model_identifier, agreed.source, agreed.governing_namespace_id) == (
        B,
        types_pb2.SELECTION_SOURCE_USER,
        0,
    )
    assert agreed.default_namespace_prompt is True
    shown = await picker(sidecar)
    assert [m.identifier for m in shown.selectable_models] == [m for m in INFO.selectable_models if m == B]
    assert (shown.user_may_choose, shown.depends_on_default_namespace) == (True, True)
    assert list(shown.candidate_namespace_ids) == [10, 20]
    completed = await sidecar.routing.ResolveModel(
        routing_pb2.ResolveModelRequest(user_id=1, feature=AGENTIC, root_namespace_id=20, user_selected_model=A)
    )
    assert completed.user_selection == types_pb2.USER_SELECTION_IGNORED_NOT_ALLOWED


async def test_user_selectable_models_for_the_picker(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await seats(sidecar, (1, 10))
    free = await picker(sidecar, 10)
    assert free.feature == AGENTIC
    assert [m.identifier for m in free.selectable_models] == list(INFO.selectable_models)
    assert free.user_may_choose is True
    assert free.choice_unavailable_reason == types_pb2.USER_SELECTION_UNSPECIFIED
    assert (free.governing_namespace_id, list(free.candidate_namespace_ids)) == (10, [])
    assert free.default_model.identifier == (await choose(sidecar, "", 10)).model_identifier
    first = free.selectable_models[0]
    model = CATALOG.model(first.identifier)
    assert (first.name, first.provider, first.cost_indicator) == (model.name, model.provider, model.cost_indicator)
    assert not free.HasField("pinned_model")

    await pin(sidecar, 10, AGENTIC, A)
    hard = await picker(sidecar)  # no context: the sole seat governs
    assert (hard.user_may_choose, hard.choice_unavailable_reason) == (False, types_pb2.USER_SELECTION_IGNORED_PINNED)
    assert (hard.pinned_model.identifier, hard.default_model.identifier) == (A, A)
    assert (hard.pinned_model.name, hard.governing_namespace_id) == (CATALOG.model(A).name, 10)
    assert list(hard.selectable_models) == []

    await namespace_allowlist(sidecar, 10, [C, B])
    soft = await picker(sidecar)
    assert not soft.HasField("pinned_model")
    assert soft.default_model.identifier == A
    assert [m.identifier for m in soft.selectable_models] == [m for m in INFO.selectable_models if m in (A, B, C)]
    assert soft.config_version == (await choose(sidecar, "")).config_version


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"user_id": 0, "feature": AGENTIC}, "user_id"),
        ({"user_id": 1, "feature": ""}, "feature"),
        ({"user_id": 1, "feature": "no_such_feature"}, "feature"),
        ({"user_id": 1, "feature": AGENTIC, "root_namespace_id": -1}, "root_namespace_id"),
    ],
)
async def test_picker_refuses_bad_input(start_server: StartServer, request_fields: dict[str, Any], field: str) -> None:
    sidecar = await start_server("gitlab_com")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sidecar.routing.ListUserSelectableModels(routing_pb2.ListUserSelectableModelsRequest(**request_fields))
    details = error_details(raised.value)
    assert (details.code, details.field_violations) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


async def test_a_choice_never_fails_a_request(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    for choice in (UNKNOWN, "\x00", "💥" * 50, "a" * 4000, "__default__x", "../../etc/passwd"):
        answer = await choose(sidecar, choice, 10)
        assert answer.user_selection == types_pb2.USER_SELECTION_IGNORED_UNKNOWN_MODEL
        assert answer.model_identifier == (await choose(sidecar, "", 10)).model_identifier


async def test_get_user_routing_status_shows_what_a_choice_would_resolve_to(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await seats(sidecar, (1, 10))
    await pin(sidecar, 10, AGENTIC, A)
    await namespace_allowlist(sidecar, 10, [B])
    status = await sidecar.admin.GetUserRoutingStatus(
        admin_pb2.GetUserRoutingStatusRequest(user_id=1, user_selected_model=B)
    )
    by_feature = {f.feature: f for f in status.features}
    agentic = by_feature[AGENTIC]
    assert (agentic.user_selectable, agentic.user_may_choose) == (True, True)
    assert list(agentic.user_selectable_model_identifiers) == [m for m in INFO.selectable_models if m in (A, B)]
    assert (agentic.resolution.model_identifier, agentic.resolution.user_selection) == (
        B,
        types_pb2.USER_SELECTION_APPLIED,
    )
    chat = by_feature["duo_chat"]
    assert (chat.user_selectable, chat.user_may_choose, list(chat.user_selectable_model_identifiers)) == (
        False,
        False,
        [],
    )
    assert chat.resolution.user_selection == types_pb2.USER_SELECTION_UNSPECIFIED
    without = await sidecar.admin.GetUserRoutingStatus(admin_pb2.GetUserRoutingStatusRequest(user_id=1))
    plain = next(f for f in without.features if f.feature == AGENTIC)
    assert (plain.resolution.model_identifier, plain.resolution.user_selection) == (
        A,
        types_pb2.USER_SELECTION_UNSPECIFIED,
    )


async def allowlist_refusal(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return error_details(raised.value)


async def test_allowlist_refusals(start_server: StartServer) -> None:
    com = await start_server("gitlab_com")
    dedicated = await start_server("dedicated")
    too_many = [A] * 101
    cases = [
        (namespace_allowlist(dedicated, 10, [A]), grpc.StatusCode.FAILED_PRECONDITION, "WRONG_DEPLOYMENT_TYPE", []),
        (instance_allowlist(com, [A]), grpc.StatusCode.FAILED_PRECONDITION, "WRONG_DEPLOYMENT_TYPE", []),
        (
            namespace_allowlist(com, 10, ["gpt_5"], feature="duo_chat"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "FEATURE_NOT_USER_SELECTABLE",
            [],
        ),
        (
            instance_allowlist(dedicated, [], feature="code_completions"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "FEATURE_NOT_USER_SELECTABLE",
            [],
        ),
        (namespace_allowlist(com, 10, too_many), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["model_refs"]),
        (instance_allowlist(dedicated, too_many), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["model_refs"]),
        (
            namespace_allowlist(com, 10, [A], enabled=False),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            ["model_refs"],
        ),
        (namespace_allowlist(com, 0, [A]), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["namespace_id"]),
        (namespace_allowlist(com, -3, [A]), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["namespace_id"]),
        (
            namespace_allowlist(com, 10, [A], feature=""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            ["feature"],
        ),
        (
            instance_allowlist(dedicated, [A], feature="no_such_feature"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_FEATURE",
            ["feature"],
        ),
    ]
    for call, code, reason, fields in cases:
        details = await allowlist_refusal(call)
        assert (details.code, details.reason, details.field_violations) == (code, reason, fields), details.message
    # Nothing was written: exactly 100 refs are fine.
    assert (await com.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest())).audit_events == []
    hundred = [m for m in INFO.selectable_models][:3] * 34
    accepted = await namespace_allowlist(com, 10, hundred[:100])
    assert len(accepted.dropped_model_refs) == 97
    assert {d.reason for d in accepted.dropped_model_refs} == {"DUPLICATE"}


async def test_allowlist_keeps_working_when_the_catalog_drops_an_allowed_model(
    start_server: StartServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = await start_server("gitlab_com", data_dir=data)
    await namespace_allowlist(first, 10, [B, C])
    await first.server.stop()

    definitions = json.loads((REPO / "sidecar" / "data" / "model_definitions.json").read_text())
    for feature in definitions["unit_primitives"]:
        if feature["feature_setting"] == AGENTIC:
            feature["selectable_models"] = [m for m in feature["selectable_models"] if m != C]
    newer = tmp_path / "definitions.json"
    newer.write_text(json.dumps(definitions))
    second = await start_server("gitlab_com", data_dir=data, catalog_path=str(newer))
    selection = await namespace_selection(second, 10)
    assert list(selection.allowlist.model_refs) == [B, C]
    assert list(selection.allowlist.stale_model_refs) == [C]
    assert C not in selection.allowlist.allowed_model_identifiers and B in selection.allowlist.allowed_model_identifiers
    assert (await choose(second, B, 10)).user_selection == types_pb2.USER_SELECTION_APPLIED
    stale = await choose(second, C, 10)
    assert (stale.user_selection, stale.model_identifier) == (
        types_pb2.USER_SELECTION_IGNORED_UNKNOWN_MODEL,
        (await choose(second, "", 10)).model_identifier,
    )


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[MockUpstream]:
    async with serve_upstream() as server:
        yield server


async def test_complete_routes_to_the_users_choice(
    start_server: StartServer, upstream: MockUpstream, tmp_path: Path
) -> None:
    token_file = tmp_path / "cloud-connector.token"
    token_file.write_text("cc-token-xyz\n")
    sidecar = await start_server(
        "gitlab_com",
        env={
            "DUO_SIDECAR_INSTANCE_AI_GATEWAY_URL": upstream.url,
            "DUO_SIDECAR_INSTANCE_CLOUD_CONNECTOR_TOKEN_FILE": str(token_file),
        },
    )
    await pin(sidecar, 10, AGENTIC, A)
    await namespace_allowlist(sidecar, 10, [B])
    events = await collect(
        sidecar.routing.Complete(complete_request(AGENTIC, user=7, namespace=10, user_selected_model=B))
    )
    route = events[0].route
    assert (route.model_identifier, route.source, route.user_selection) == (
        B,
        types_pb2.SELECTION_SOURCE_USER,
        types_pb2.USER_SELECTION_APPLIED,
    )
    assert upstream.requests[-1].body["model_metadata"] == {
        "provider": "gitlab",
        "feature_setting": AGENTIC,
        "identifier": B,
    }
    events = await collect(
        sidecar.routing.Complete(complete_request(AGENTIC, user=7, namespace=10, user_selected_model=C))
    )
    assert events[0].route.user_selection == types_pb2.USER_SELECTION_IGNORED_NOT_ALLOWED
    assert upstream.requests[-1].body["model_metadata"]["identifier"] == A


async def test_allowlist_reaches_another_sidecar_on_the_same_postgres(
    start_postgres_server: StartServer, tmp_path: Path
) -> None:
    first = await start_postgres_server("gitlab_com", data_dir=tmp_path / "first")
    second = await start_postgres_server("gitlab_com", data_dir=tmp_path / "second")
    await pin(first, 10, AGENTIC, A)
    reply = await namespace_allowlist(first, 10, [B])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (answer := await choose(second, B, 10)).config_version != reply.config_version:
        assert loop.time() < deadline, "the allowlist did not reach the other sidecar within 5 s"
        await asyncio.sleep(0.02)
    assert (answer.model_identifier, answer.user_selection) == (B, types_pb2.USER_SELECTION_APPLIED)
    assert (await namespace_selection(second, 10)).allowlist == reply.model_selection.allowlist


async def test_team_only_models_are_dropped_and_a_balanced_default_is_named(start_server: StartServer) -> None:
    assert INFO.team_only_models and INFO.default_model_group, "the bundled catalog has both for agentic chat"
    sidecar = await start_server("gitlab_com")
    team_only = INFO.team_only_models[0]
    reply = await namespace_allowlist(sidecar, 10, [team_only, B])
    assert [(d.model_ref, d.reason) for d in reply.dropped_model_refs] == [(team_only, "TEAM_ONLY_MODEL")]
    assert (await choose(sidecar, team_only, 10)).user_selection == types_pb2.USER_SELECTION_IGNORED_UNKNOWN_MODEL
    balanced = await picker(sidecar, 10)
    assert (balanced.default_model.identifier, balanced.default_model_group) == (
        (await choose(sidecar, "", 10)).model_identifier,
        INFO.default_model_group,
    )
    await pin(sidecar, 10, AGENTIC, A)
    assert (await picker(sidecar, 10)).default_model_group == ""
