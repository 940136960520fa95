"""Dedicated and Self-Managed against real sidecars (DESIGN section 3, "DEDICATED and SELF_MANAGED"): self-hosted
models and feature settings on both, and Self-Managed's hybrid (own AI Gateway) and offline-license instances."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2, types_pb2
from sidecar.catalog import load_catalog
from tests.completion import collect, complete_request
from tests.conftest import Sidecar, StartServer, StartSidecar
from tests.helpers import error_details, run_cli
from tests.scrape import scrape, value
from tests.test_admin_rpcs import create, rpc_error, vllm_model
from tests.test_cli import DuoAdmin

PINNED = "claude_sonnet_4_5_20250929"  # selectable for duo_chat in the bundled catalog
ADMIN = (("x-duo-actor", "admin@example.com"),)


async def resolve(sidecar: Sidecar, feature: str, user: int = 1) -> routing_pb2.ResolveModelResponse:
    response: routing_pb2.ResolveModelResponse = await sidecar.routing.ResolveModel(
        routing_pb2.ResolveModelRequest(user_id=user, feature=feature)
    )
    return response


async def serve_by(sidecar: Sidecar, feature: str, provider: admin_pb2.FeatureProvider, model_id: str = "") -> None:
    await sidecar.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(feature=feature, provider=provider, self_hosted_model_id=model_id),
        metadata=ADMIN,
    )


async def pin_instance(sidecar: Sidecar, feature: str, model: str) -> admin_pb2.UpdateInstanceModelSelectionResponse:
    response: admin_pb2.UpdateInstanceModelSelectionResponse = await sidecar.admin.UpdateInstanceModelSelection(
        admin_pb2.UpdateInstanceModelSelectionRequest(feature=feature, offered_model_ref=model), metadata=ADMIN
    )
    return response


async def instance_selections(sidecar: Sidecar) -> dict[str, admin_pb2.ModelSelection]:
    listed = await sidecar.admin.ListInstanceModelSelections(
        admin_pb2.ListInstanceModelSelectionsRequest(page_size=100)
    )
    return {s.feature: s for s in listed.model_selections}


async def feature_settings(sidecar: Sidecar) -> dict[str, admin_pb2.FeatureSetting]:
    listed = await sidecar.admin.ListFeatureSettings(admin_pb2.ListFeatureSettingsRequest(page_size=100))
    return {s.feature: s for s in listed.feature_settings}


@pytest.mark.parametrize("deployment", ["dedicated", "self_managed"])
@pytest.mark.asyncio
async def test_self_hosted_models_and_feature_settings(start_server: StartServer, deployment: str) -> None:
    sidecar = await start_server(deployment)
    model = await create(sidecar, vllm_model())
    assert [
        m.id
        for m in (await sidecar.admin.ListSelfHostedModels(admin_pb2.ListSelfHostedModelsRequest())).self_hosted_models
    ] == [model.id]
    await pin_instance(sidecar, "duo_chat", PINNED)
    await serve_by(sidecar, "duo_chat", admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, model.id)

    route = await resolve(sidecar, "duo_chat_explain_code")  # the sub-feature follows duo_chat's setting
    assert route.provider == types_pb2.PROVIDER_SELF_HOSTED
    assert route.source == types_pb2.SELECTION_SOURCE_FEATURE_SETTING
    assert (route.self_hosted_model_id, route.model_identifier) == (model.id, "custom_openai/mistral-7b")
    assert route.effective_feature == "duo_chat"

    await serve_by(sidecar, "code_completions", admin_pb2.FEATURE_PROVIDER_DISABLED)
    disabled = await resolve(sidecar, "code_completions")
    assert (disabled.provider, disabled.model_identifier) == (types_pb2.PROVIDER_DISABLED, "")

    settings = await feature_settings(sidecar)
    assert settings["duo_chat"].provider == admin_pb2.FEATURE_PROVIDER_SELF_HOSTED
    assert settings["code_completions"].provider == admin_pb2.FEATURE_PROVIDER_DISABLED
    assert not any(s.no_model_configured for s in settings.values())  # GitLab-managed defaults serve the rest

    # Vendored again: the instance pin applies, as on Self-Managed.
    await serve_by(sidecar, "duo_chat", admin_pb2.FEATURE_PROVIDER_VENDORED)
    route = await resolve(sidecar, "duo_chat")
    assert (route.model_identifier, route.source) == (PINNED, types_pb2.SELECTION_SOURCE_INSTANCE)
    # Still refused: the GitLab.com settings.
    refused = await rpc_error(
        sidecar.admin.SetUserDefaultNamespace(admin_pb2.SetUserDefaultNamespaceRequest(user_id=1, namespace_id=1))
    )
    assert refused.reason == "WRONG_DEPLOYMENT_TYPE"
    info = await sidecar.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
    assert (info.self_hosted_ai_gateway, info.offline_license) == (False, False)


@pytest.mark.asyncio
async def test_dedicated_settings_survive_a_restart(start_server: StartServer, tmp_path: Path) -> None:
    data = tmp_path / "dedicated"
    first = await start_server("dedicated", data_dir=data)
    model = await create(first, vllm_model())
    await serve_by(first, "duo_chat", admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, model.id)
    await first.server.stop()
    again = await start_server("dedicated", data_dir=data)
    assert (await resolve(again, "duo_chat")).self_hosted_model_id == model.id


@pytest.mark.asyncio
async def test_hybrid_instance_has_no_gitlab_managed_default(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed", self_hosted_ai_gateway="true")
    info = await sidecar.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
    assert (info.self_hosted_ai_gateway, info.offline_license) == (True, False)

    refused = await rpc_error(resolve(sidecar, "duo_chat"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_MODEL_CONFIGURED")
    assert refused.metadata["feature"] == "duo_chat" and refused.metadata["cause"] == "self_hosted_ai_gateway"
    assert "assigns a self-hosted model" in refused.message and "pins a GitLab-managed model" in refused.message

    model = await create(sidecar, vllm_model())
    await serve_by(sidecar, "duo_chat", admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, model.id)
    await pin_instance(sidecar, "code_completions", load_catalog().features["code_completions"].selectable_models[0])
    assert (await resolve(sidecar, "duo_chat_fix_code")).provider == types_pb2.PROVIDER_SELF_HOSTED
    pinned = await resolve(sidecar, "code_completions")
    assert (pinned.provider, pinned.source) == (
        types_pb2.PROVIDER_GITLAB_AI_GATEWAY,
        types_pb2.SELECTION_SOURCE_INSTANCE,
    )

    catalog = load_catalog()
    served = {"duo_chat", "code_completions"} | {f for f, i in catalog.features.items() if i.parent == "duo_chat"}
    settings = await feature_settings(sidecar)
    without = {name for name, s in settings.items() if s.no_model_configured}
    assert without == set(catalog.features) - served and "code_generations" in without
    status = await sidecar.admin.GetUserRoutingStatus(admin_pb2.GetUserRoutingStatusRequest(user_id=7))
    by_feature = {f.feature: f for f in status.features}
    assert by_feature["code_generations"].error_reason == "NO_MODEL_CONFIGURED"
    assert "assigns a self-hosted model" in by_feature["code_generations"].error_message
    assert by_feature["duo_chat"].resolution.provider == types_pb2.PROVIDER_SELF_HOSTED
    assert {name for name, f in by_feature.items() if f.error_reason == "NO_MODEL_CONFIGURED"} == without

    with pytest.raises(grpc.aio.AioRpcError) as raised:  # Complete refuses before anything is sent
        await collect(sidecar.routing.Complete(complete_request("code_generations")))
    streamed = error_details(raised.value)
    assert (streamed.code, streamed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_MODEL_CONFIGURED")

    samples = await scrape(sidecar)
    assert value(samples, "duo_routing_no_model_configured_total", feature="duo_chat") == 1
    assert value(samples, "duo_routing_no_model_configured_total", feature="code_generations") == 1


@pytest.mark.asyncio
async def test_offline_license_never_uses_gitlab_managed_models(start_server: StartServer, tmp_path: Path) -> None:
    data = tmp_path / "sm"
    online = await start_server("self_managed", data_dir=data)
    await pin_instance(online, "duo_chat", PINNED)  # stored while the license was online
    await online.server.stop()

    sidecar = await start_server("self_managed", data_dir=data, offline_license="true")
    info = await sidecar.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
    assert (info.self_hosted_ai_gateway, info.offline_license) == (False, True)

    refused = await rpc_error(resolve(sidecar, "duo_chat"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_MODEL_CONFIGURED")
    assert (refused.metadata["cause"], refused.metadata["pinned_model"]) == ("offline_license", PINNED)
    assert "never used" in refused.message and "pins a GitLab-managed model" not in refused.message
    selections = await instance_selections(sidecar)
    chat = selections["duo_chat"]
    assert (chat.offered_model_ref, chat.pinned_model_unreachable, chat.effective_model_identifier) == (
        PINNED,
        True,
        "",
    )
    assert selections["duo_chat_explain_code"].pinned_model_unreachable  # follows duo_chat's pin
    assert not selections["code_completions"].pinned_model_unreachable

    write = await rpc_error(pin_instance(sidecar, "code_generations", PINNED))
    assert (write.code, write.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "GITLAB_MANAGED_MODEL_UNREACHABLE")
    assert "license is offline" in write.message and "self-hosted model" in write.message

    model = await create(sidecar, vllm_model())
    await serve_by(sidecar, "duo_chat", admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, model.id)
    assert (await resolve(sidecar, "duo_chat")).self_hosted_model_id == model.id
    settings = await feature_settings(sidecar)
    assert not settings["duo_chat"].no_model_configured and settings["code_generations"].no_model_configured

    cleared = await pin_instance(sidecar, "duo_chat", "")  # clearing the unreachable pin is allowed
    assert not cleared.model_selection.pinned_model_unreachable and not cleared.model_selection.offered_model_ref


def test_duo_admin_shows_features_without_a_model(start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUO_SIDECAR_INSTANCE_SELF_HOSTED_AI_GATEWAY", "true")
    running = start_sidecar("self_managed")
    admin = DuoAdmin(running.address)
    listed = admin.run("features", "list").stdout
    rows = {line.split()[0]: line for line in listed.splitlines()[1:] if line.strip()}
    assert "no model configured" in rows["duo_chat"] and "no model configured" in rows["code_completions"]
    status = admin.run("user-status", "--user", "1").stdout
    assert "NO_MODEL_CONFIGURED" in status
    assert admin.json("server-info")["self_hosted_ai_gateway"] is True


@pytest.mark.parametrize("deployment", ["gitlab_com", "dedicated"])
def test_check_config_refuses_hybrid_and_offline_elsewhere(tmp_path: Path, deployment: str) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text(f'[instance]\ndeployment_type = "{deployment}"\noffline_license = true\n')
    result = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config}: [instance] offline_license: applies only to self_managed" in result.stderr
    config.write_text('[instance]\ndeployment_type = "self_managed"\noffline_license = true\n')
    result = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "GitLab Self-Managed with offline license (no GitLab-managed models)" in result.stdout
