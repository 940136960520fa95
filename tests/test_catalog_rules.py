"""Today's catalog rules against real sidecars of every deployment type (DESIGN section 3, "Everywhere"; issue 16):
load-balanced defaults, pins on deprecated models, team-only models, and databases whose pins name models that
left the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2
from sidecar.catalog import load_catalog
from tests.completion import collect, complete_request
from tests.conftest import Sidecar, StartServer, StartSidecar
from tests.helpers import REPO
from tests.model_selection import seats
from tests.scrape import scrape, value
from tests.test_admin_rpcs import rpc_error
from tests.test_cli import DuoAdmin
from tests.upstreams import serve_upstream

CATALOG = load_catalog()
DEPLOYMENTS = ["gitlab_com", "dedicated", "self_managed"]
GROUPED = next(f for f in CATALOG.features.values() if f.default_model_group)
AGENTS = CATALOG.features["duo_agent_platform"]
DEPRECATED = next(m for m in AGENTS.selectable_models if CATALOG.models[m].deprecation)  # deprecated globally
REMOVAL = CATALOG.models[DEPRECATED].deprecation.removal_version  # type: ignore[union-attr]
TEAM_ONLY_FEATURE = next(f for f in CATALOG.features.values() if f.team_only_models)
TEAM_ONLY = TEAM_ONLY_FEATURE.team_only_models[0]
NAMESPACE = 10  # GitLab.com pins go to this namespace; user 1 holds its only seat
BEFORE = REPO / "tests" / "data" / "model_definitions_2025.json"  # the catalog an older sidecar shipped


async def pin(sidecar: Sidecar, deployment: str, feature: str, model: str) -> None:
    if deployment == "gitlab_com":
        await sidecar.admin.UpdateNamespaceModelSelection(
            admin_pb2.UpdateNamespaceModelSelectionRequest(
                namespace_id=NAMESPACE, feature=feature, offered_model_ref=model
            )
        )
    else:
        await sidecar.admin.UpdateInstanceModelSelection(
            admin_pb2.UpdateInstanceModelSelectionRequest(feature=feature, offered_model_ref=model)
        )


async def selections(sidecar: Sidecar, deployment: str) -> dict[str, admin_pb2.ModelSelection]:
    if deployment == "gitlab_com":
        listed = await sidecar.admin.ListNamespaceModelSelections(
            admin_pb2.ListNamespaceModelSelectionsRequest(namespace_id=NAMESPACE, page_size=100)
        )
    else:
        listed = await sidecar.admin.ListInstanceModelSelections(
            admin_pb2.ListInstanceModelSelectionsRequest(page_size=100)
        )
    return {s.feature: s for s in listed.model_selections}


async def resolve(sidecar: Sidecar, feature: str, user: int = 1) -> routing_pb2.ResolveModelResponse:
    response: routing_pb2.ResolveModelResponse = await sidecar.routing.ResolveModel(
        routing_pb2.ResolveModelRequest(user_id=user, feature=feature)
    )
    return response


@pytest.mark.asyncio
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
async def test_a_balanced_default_is_one_real_model_per_user(
    start_server: StartServer, deployment: str, tmp_path: Path
) -> None:
    data = tmp_path / deployment
    sidecar = await start_server(deployment, data_dir=data)
    answers = {user: await resolve(sidecar, GROUPED.name, user) for user in range(1, 61)}
    for route in answers.values():
        assert route.model_identifier in GROUPED.default_models
        assert route.default_model_group == GROUPED.default_model_group and route.gitlab_default
    assert {r.model_identifier for r in answers.values()} == set(GROUPED.default_models)
    assert (await resolve(sidecar, "duo_chat")).default_model_group == ""

    await sidecar.server.stop()  # the same model for the same user after a restart (and on any other sidecar)
    again = await start_server(deployment, data_dir=data)
    for user, route in answers.items():
        assert (await resolve(again, GROUPED.name, user)).model_identifier == route.model_identifier

    listed = await again.admin.ListSelectableModels(admin_pb2.ListSelectableModelsRequest(feature=GROUPED.name))
    entry = listed.features[0]
    assert entry.default_model_group == GROUPED.default_model_group
    assert [m.identifier for m in entry.default_models] == list(GROUPED.default_models)
    assert GROUPED.default_model_group not in [m.identifier for m in entry.selectable_models]


@pytest.mark.asyncio
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
async def test_a_pin_on_a_deprecated_model_is_served_and_flagged(start_server: StartServer, deployment: str) -> None:
    sidecar = await start_server(deployment)
    if deployment == "gitlab_com":
        await seats(sidecar, (1, NAMESPACE))
    before = await scrape(sidecar)
    assert value(before, "duo_routing_deprecated_model_pins", feature=AGENTS.name, model=DEPRECATED,
                 removal_version=REMOVAL) == 0  # fmt: skip
    await pin(sidecar, deployment, AGENTS.name, DEPRECATED)

    route = await resolve(sidecar, AGENTS.name)  # no context: the sole seat namespace on GitLab.com
    assert (route.model_identifier, route.gitlab_default, route.pinned_model_unavailable) == (DEPRECATED, False, False)
    assert route.pinned_model_deprecated and route.deprecation_removal_version == REMOVAL

    listed = (await selections(sidecar, deployment))[AGENTS.name]
    assert listed.pinned_model_deprecated and listed.deprecation_removal_version == REMOVAL
    assert not (await selections(sidecar, deployment))["duo_chat"].pinned_model_deprecated

    status = await sidecar.admin.GetUserRoutingStatus(admin_pb2.GetUserRoutingStatusRequest(user_id=1))
    agents = next(f for f in status.features if f.feature == AGENTS.name)
    assert agents.resolution.pinned_model_deprecated and agents.resolution.deprecation_removal_version == REMOVAL

    after = await scrape(sidecar)
    labels = {"feature": AGENTS.name, "model": DEPRECATED, "removal_version": REMOVAL}
    assert value(after, "duo_routing_deprecated_model_pins", **labels) == 1
    await pin(sidecar, deployment, AGENTS.name, "")
    assert value(await scrape(sidecar), "duo_routing_deprecated_model_pins", **labels) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
async def test_team_only_models_need_the_operator(start_server: StartServer, deployment: str) -> None:
    plain = await start_server(deployment)
    refused = await rpc_error(pin(plain, deployment, TEAM_ONLY_FEATURE.name, TEAM_ONLY))
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MODEL_NOT_SELECTABLE")
    listed = await plain.admin.ListSelectableModels(
        admin_pb2.ListSelectableModelsRequest(feature=TEAM_ONLY_FEATURE.name)
    )
    assert TEAM_ONLY in [m.identifier for m in listed.features[0].team_only_models]
    assert TEAM_ONLY not in [m.identifier for m in listed.features[0].selectable_models]

    offering = await start_server(deployment, offer_team_only_models="true")
    if deployment == "gitlab_com":
        await seats(offering, (1, NAMESPACE))
    await pin(offering, deployment, TEAM_ONLY_FEATURE.name, TEAM_ONLY)
    route = await resolve(offering, TEAM_ONLY_FEATURE.name)
    assert (route.model_identifier, route.pinned_model_unavailable) == (TEAM_ONLY, False)
    listed = await offering.admin.ListSelectableModels(
        admin_pb2.ListSelectableModelsRequest(feature=TEAM_ONLY_FEATURE.name)
    )
    assert TEAM_ONLY in [m.identifier for m in listed.features[0].selectable_models]


def removed_since_before(feature: str) -> str:
    """A model the older catalog offered for the feature that today's no longer has at all."""
    before = json.loads(BEFORE.read_text())
    entry = next(u for u in before["unit_primitives"] if u["feature_setting"] == feature)
    return str(next(m for m in entry["selectable_models"] if m not in CATALOG.models))


@pytest.mark.asyncio
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
async def test_a_database_from_the_older_catalog_keeps_working(
    start_server: StartServer, deployment: str, tmp_path: Path
) -> None:
    data = tmp_path / deployment
    old = await start_server(deployment, data_dir=data, catalog_path=str(BEFORE))
    if deployment == "gitlab_com":
        await seats(old, (1, NAMESPACE))
    retired = removed_since_before("duo_chat")
    await pin(old, deployment, "duo_chat", retired)
    assert (await resolve(old, "duo_chat")).model_identifier == retired
    await old.server.stop()

    upgraded = await start_server(deployment, data_dir=data)  # today's bundled catalog: nothing fails at start
    route = await resolve(upgraded, "duo_chat_explain_code")
    assert (
        route.pinned_model_unavailable
        and route.model_identifier == CATALOG.features["duo_chat_explain_code"].default_model
    )
    listed = (await selections(upgraded, deployment))["duo_chat"]
    assert (listed.offered_model_ref, listed.pinned_model_unavailable) == (retired, True)
    assert listed.effective_model_identifier == CATALOG.features["duo_chat"].default_model


def test_duo_admin_lists_show_deprecated_pins(start_sidecar: StartSidecar) -> None:
    admin = DuoAdmin(start_sidecar("dedicated").address)
    admin.run("instance-models", "set", "--feature", AGENTS.name, "--model", DEPRECATED)
    listed = admin.run("instance-models", "list").stdout
    row = next(line for line in listed.splitlines() if line.startswith(AGENTS.name + " "))
    assert f"pinned model deprecated (removed in {REMOVAL})" in row
    catalog = admin.run("catalog", "--feature", GROUPED.name).stdout.splitlines()
    assert f"{GROUPED.default_model_group} ({','.join(GROUPED.default_models)})" in catalog[1]
    catalog = admin.run("catalog", "--feature", TEAM_ONLY_FEATURE.name).stdout.splitlines()
    assert "TEAM-ONLY" in catalog[0] and ",".join(TEAM_ONLY_FEATURE.team_only_models) in catalog[1]


@pytest.mark.asyncio
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
async def test_complete_asks_the_gateway_for_the_users_own_default(
    start_server: StartServer, deployment: str, tmp_path: Path
) -> None:
    """A balanced default is sent to the AI Gateway by name: the gateway would otherwise balance on its own, and the
    user's conversation and prompt cache would move between models."""
    async with serve_upstream() as gateway:
        sidecar = await start_server(deployment, ai_gateway_url=gateway.url)
        for user in (1, 2, 3, 4):
            events = await collect(sidecar.routing.Complete(complete_request(GROUPED.name, user=user)))
            route = events[0].route
            assert route.default_model_group == GROUPED.default_model_group
            metadata = gateway.requests[-1].body["model_metadata"]
            assert metadata["identifier"] == route.model_identifier in GROUPED.default_models
        await collect(sidecar.routing.Complete(complete_request("code_completions")))
        assert gateway.requests[-1].body["model_metadata"]["identifier"] == ""  # a plain default: the gateway's
