"""Model Selection over gRPC with PostgreSQL storage: restarts onto the same database. (The scenarios of
test_model_selection.py run unchanged on PostgreSQL there, in test_model_selection_on_postgres.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import field_mask_pb2

from gitlab.duo.routing.v1 import admin_pb2, types_pb2
from tests.conftest import StartServer
from tests.model_selection import pin, resolve, seats

pytestmark = pytest.mark.asyncio


async def test_gitlab_com_changes_survive_a_restart_on_the_same_database(
    start_postgres_server: StartServer, tmp_path: Path
) -> None:
    """Everything lives in PostgreSQL: a new sidecar with an empty data directory serves the same answers."""
    first = await start_postgres_server("gitlab_com", data_dir=tmp_path / "first")
    info = await first.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
    assert info.storage_backend == "postgres"
    await seats(first, (1, 10), (1, 20), (2, 10))
    await seats(first, (2, 10), assigned=False)
    await pin(first, 20, "duo_chat", "claude_sonnet_4_6")
    await first.admin.SetUserDefaultNamespace(admin_pb2.SetUserDefaultNamespaceRequest(user_id=1, namespace_id=20))
    before = await resolve(first, 1, "duo_chat")
    await first.server.stop()

    second = await start_postgres_server("gitlab_com", data_dir=tmp_path / "second")
    after = await resolve(second, 1, "duo_chat")
    assert (after.model_identifier, after.source, after.governing_namespace_id) == (
        "claude_sonnet_4_6",
        types_pb2.SELECTION_SOURCE_DEFAULT_NAMESPACE,
        20,
    )
    assert after.config_version == before.config_version == "4"
    listed = await second.admin.ListSeatAssignments(admin_pb2.ListSeatAssignmentsRequest())
    assert [(s.user_id, s.namespace_id) for s in listed.seat_assignments] == [(1, 10), (1, 20)]
    audit = await second.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest())
    assert [e.action for e in audit.audit_events] == [
        "SetUserDefaultNamespace",
        "UpdateNamespaceModelSelection",
        "SyncSeatAssignments",
        "SyncSeatAssignments",
    ]
    await pin(second, 20, "duo_chat", "")  # and the new sidecar keeps counting from the stored version
    assert (await resolve(second, 1, "duo_chat")).config_version == "5"


async def test_self_managed_changes_and_api_tokens_survive_a_restart_on_the_same_database(
    start_postgres_server: StartServer, tmp_path: Path
) -> None:
    first = await start_postgres_server("self_managed", data_dir=tmp_path / "first")
    created = await first.admin.CreateSelfHostedModel(
        admin_pb2.CreateSelfHostedModelRequest(
            self_hosted_model=admin_pb2.SelfHostedModel(
                name="Mistral on vLLM",
                family=types_pb2.MODEL_FAMILY_MISTRAL,
                platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                endpoint="http://127.0.0.1:9/v1",
                identifier="custom_openai/mistral",
                api_token="secret-token-1",
            )
        )
    )
    model_id = created.self_hosted_model.id
    await first.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(
            feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id=model_id
        )
    )
    await first.admin.UpdateInstanceModelSelection(
        admin_pb2.UpdateInstanceModelSelectionRequest(feature="code_generations", offered_model_ref="claude_sonnet_4_6")
    )
    await first.admin.UpdateSelfHostedModel(
        admin_pb2.UpdateSelfHostedModelRequest(
            self_hosted_model=admin_pb2.SelfHostedModel(id=model_id, name="Mistral (renamed)"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        )
    )
    await first.server.stop()

    second = await start_postgres_server("self_managed", data_dir=tmp_path / "second")
    chat = await resolve(second, 1, "duo_chat")
    assert (chat.provider, chat.source) == (types_pb2.PROVIDER_SELF_HOSTED, types_pb2.SELECTION_SOURCE_FEATURE_SETTING)
    assert chat.config_version == "4"
    generations = await resolve(second, 1, "code_generations")
    assert (generations.model_identifier, generations.source) == (
        "claude_sonnet_4_6",
        types_pb2.SELECTION_SOURCE_INSTANCE,
    )
    stored = await second.admin.GetSelfHostedModel(admin_pb2.GetSelfHostedModelRequest(id=model_id))
    assert (stored.self_hosted_model.name, stored.self_hosted_model.api_token_set) == ("Mistral (renamed)", True)
    assert second.server.state is not None
    assert second.server.state.vault.api_token(model_id) == "secret-token-1"  # decrypts with the shared key file
