"""Catalog refresh from a local fake AI Gateway (issue 16): today's shape, the older shape the sidecar shipped
before, malformed catalogs (the last good copy stays; a metric and a log line say why) and a catalog that removes a
pinned model. Each against a real sidecar of every deployment type that pins models."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2
from tests.conftest import Sidecar, StartServer
from tests.helpers import REPO, error_details
from tests.scrape import scrape, value
from tests.upstreams import MockUpstream, serve_upstream

pytestmark = pytest.mark.asyncio

TODAY = REPO / "sidecar" / "data" / "model_definitions.json"
BEFORE = REPO / "tests" / "data" / "model_definitions_2025.json"  # the older shape, as the sidecar shipped it


def today() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(TODAY.read_text())
    return document


def feature_entry(document: dict[str, Any], feature: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(u for u in document["unit_primitives"] if u["feature_setting"] == feature)
    return entry


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[MockUpstream]:
    async with serve_upstream() as upstream:
        upstream.catalog = today()
        yield upstream


async def refreshing(start_server: StartServer, gateway: MockUpstream, tmp_path: Path, deployment: str) -> Sidecar:
    token = tmp_path / "cloud-connector.token"
    token.write_text("cc-token\n")
    return await start_server(
        deployment,
        data_dir=tmp_path / deployment,
        env={
            "DUO_SIDECAR_INSTANCE_AI_GATEWAY_URL": gateway.url,
            "DUO_SIDECAR_INSTANCE_CLOUD_CONNECTOR_TOKEN_FILE": str(token),
        },
    )


async def refresh(sidecar: Sidecar) -> admin_pb2.RefreshCatalogResponse:
    response: admin_pb2.RefreshCatalogResponse = await sidecar.admin.RefreshCatalog(admin_pb2.RefreshCatalogRequest())
    return response


async def catalog_version(sidecar: Sidecar) -> str:
    return str((await sidecar.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())).catalog_version)


async def test_todays_shape_is_taken(start_server: StartServer, gateway: MockUpstream, tmp_path: Path) -> None:
    sidecar = await refreshing(start_server, gateway, tmp_path, "self_managed")
    same = await refresh(sidecar)
    assert not same.changed and same.catalog_version == await catalog_version(sidecar)

    changed = today()
    chat = feature_entry(changed, "duo_chat")
    dropped = next(m for m in chat["selectable_models"] if m not in chat["default_models"])
    chat["selectable_models"].remove(dropped)
    gateway.catalog = changed
    refreshed = await refresh(sidecar)
    assert refreshed.changed and refreshed.catalog_version == await catalog_version(sidecar)
    listed = await sidecar.admin.ListSelectableModels(admin_pb2.ListSelectableModelsRequest(feature="duo_chat"))
    assert dropped not in [m.identifier for m in listed.features[0].selectable_models]
    group = await sidecar.admin.ListSelectableModels(
        admin_pb2.ListSelectableModelsRequest(feature="glab_ask_git_command")
    )
    assert group.features[0].default_model_group == "__default__glab_ask_git_command"


async def test_the_older_shape_is_still_accepted(
    start_server: StartServer, gateway: MockUpstream, tmp_path: Path
) -> None:
    sidecar = await refreshing(start_server, gateway, tmp_path, "dedicated")
    before = json.loads(BEFORE.read_text())
    gateway.catalog = before
    refreshed = await refresh(sidecar)
    assert refreshed.changed
    old_default = feature_entry(before, "code_completions")["default_model"]
    route = await sidecar.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="code_completions"))
    assert (route.model_identifier, route.default_model_group) == (old_default, "")


MALFORMED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "not an object": lambda d: ["models"],
    "models not a list": lambda d: {**d, "models": "not a list"},
    "a selectable model that is not defined": lambda d: _edit(d, "duo_chat", selectable_models=["no_such_model"]),
    "a default that is not defined": lambda d: _edit(d, "code_completions", default_models=["no_such_model"]),
    "a default that is not selectable": lambda d: _edit(
        d, "duo_chat", selectable_models=[m for m in feature_entry(d, "duo_chat")["selectable_models"]
                                          if m not in feature_entry(d, "duo_chat")["default_models"]]
    ),
    "no features": lambda d: {**d, "unit_primitives": []},
}  # fmt: skip


def _edit(document: dict[str, Any], feature: str, **fields: Any) -> dict[str, Any]:
    edited = copy.deepcopy(document)
    feature_entry(edited, feature).update(fields)
    return edited


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_catalog_keeps_the_last_good_copy(
    start_server: StartServer, gateway: MockUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    sidecar = await refreshing(start_server, gateway, tmp_path, "gitlab_com")
    good = await catalog_version(sidecar)
    before = await scrape(sidecar)
    gateway.catalog = MALFORMED[case](today())
    with (
        caplog.at_level(logging.WARNING, logger="sidecar.catalog_refresh"),
        pytest.raises(grpc.aio.AioRpcError) as raised,
    ):
        await refresh(sidecar)
    details = error_details(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "CATALOG_REFRESH_FAILED")
    assert "the current catalog stays in use" in details.message
    assert await catalog_version(sidecar) == good
    after = await scrape(sidecar)
    failures = "duo_routing_catalog_refresh_failures_total"
    assert value(after, failures, reason="malformed") == value(before, failures, reason="malformed") + 1
    logged = [r.getMessage() for r in caplog.records if "catalog refresh failed (malformed)" in r.getMessage()]
    assert logged and f"keeping catalog {good}" in logged[0]
    route = await sidecar.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"))
    assert route.model_identifier  # still routing on the last good copy

    gateway.catalog_status = 503
    with pytest.raises(grpc.aio.AioRpcError):
        await refresh(sidecar)
    assert value(await scrape(sidecar), failures, reason="unreachable") == 1


@pytest.mark.parametrize("deployment", ["gitlab_com", "dedicated", "self_managed"])
async def test_a_catalog_that_removes_a_pinned_model(
    start_server: StartServer, gateway: MockUpstream, tmp_path: Path, deployment: str
) -> None:
    sidecar = await refreshing(start_server, gateway, tmp_path, deployment)
    document = today()
    chat = feature_entry(document, "duo_chat")
    needed = {
        m
        for u in document["unit_primitives"]
        for m in (*u["default_models"], *(u.get("models_for_tags") or {}).values())
    }
    pinned = next(m for m in chat["selectable_models"] if m not in needed)  # the catalog can drop it altogether
    namespace = 10 if deployment == "gitlab_com" else 0
    if namespace:
        await sidecar.admin.UpdateNamespaceModelSelection(
            admin_pb2.UpdateNamespaceModelSelectionRequest(
                namespace_id=10, feature="duo_chat", offered_model_ref=pinned
            )
        )
    else:
        await sidecar.admin.UpdateInstanceModelSelection(
            admin_pb2.UpdateInstanceModelSelectionRequest(feature="duo_chat", offered_model_ref=pinned)
        )
    without = today()
    without["models"] = [m for m in without["models"] if m["identifier"] != pinned]
    for entry in without["unit_primitives"]:
        for key in ("selectable_models", "beta_models"):
            entry[key] = [m for m in entry.get(key) or [] if m != pinned]
        entry["deprecated_models"] = [d for d in entry.get("deprecated_models") or [] if d["identifier"] != pinned]
    gateway.catalog = without
    refreshed = await refresh(sidecar)
    scope = "namespaces/10" if namespace else "instance"
    assert f"{scope}:duo_chat:{pinned}" in refreshed.unavailable_pins

    async def served() -> routing_pb2.ResolveModelResponse:
        request = routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat", root_namespace_id=namespace)
        response: routing_pb2.ResolveModelResponse = await sidecar.routing.ResolveModel(request)
        return response

    route = await served()
    assert route.pinned_model_unavailable and route.gitlab_default
    assert route.model_identifier == chat["default_models"][0]
    await sidecar.server.stop()
    sidecar = await refreshing(start_server, gateway, tmp_path, deployment)  # the refreshed copy is used at start
    assert (await served()).pinned_model_unavailable
