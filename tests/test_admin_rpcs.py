"""Every admin RPC through real gRPC: the happy paths, the deployment rules and each kind of bad input."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2, types_pb2
from sidecar.tokens import EncryptedToken, Keyring
from tests.conftest import Sidecar, StartServer
from tests.helpers import ErrorDetails, error_details

pytestmark = pytest.mark.asyncio

TOKEN = "sk-very-secret-token-0123456789"


def vllm_model(name: str = "Mistral 7B on vLLM", **overrides: Any) -> admin_pb2.SelfHostedModel:
    fields: dict[str, Any] = {
        "name": name,
        "family": types_pb2.MODEL_FAMILY_MISTRAL,
        "platform": types_pb2.PLATFORM_OPENAI_COMPATIBLE,
        "endpoint": "http://vllm.internal:8000/v1",
        "identifier": "custom_openai/mistral-7b",
        "api_token": TOKEN,
    }
    fields.update(overrides)
    return admin_pb2.SelfHostedModel(**fields)


async def create(sidecar: Sidecar, model: admin_pb2.SelfHostedModel) -> admin_pb2.SelfHostedModel:
    reply = await sidecar.admin.CreateSelfHostedModel(
        admin_pb2.CreateSelfHostedModelRequest(self_hosted_model=model), metadata=sidecar.actor("admin@example.com")
    )
    created: admin_pb2.SelfHostedModel = reply.self_hosted_model
    return created


async def rpc_error(call: Any) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    details = error_details(raised.value)
    assert details.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    return details


async def test_self_hosted_model_lifecycle_never_returns_the_token(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed")
    created = await create(sidecar, vllm_model())
    assert created.id and created.api_token == "" and created.api_token_set is True
    assert created.create_time.seconds > 0

    got = await sidecar.admin.GetSelfHostedModel(admin_pb2.GetSelfHostedModelRequest(id=created.id))
    assert got.self_hosted_model == created

    updated = await sidecar.admin.UpdateSelfHostedModel(
        admin_pb2.UpdateSelfHostedModelRequest(
            self_hosted_model=admin_pb2.SelfHostedModel(id=created.id, endpoint="https://vllm2.internal/v1", name="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["endpoint"]),
        )
    )
    assert updated.self_hosted_model.endpoint == "https://vllm2.internal/v1"
    assert updated.self_hosted_model.name == "Mistral 7B on vLLM"  # not in the mask
    assert updated.self_hosted_model.api_token_set is True

    cleared = await sidecar.admin.UpdateSelfHostedModel(
        admin_pb2.UpdateSelfHostedModelRequest(
            self_hosted_model=admin_pb2.SelfHostedModel(id=created.id),
            update_mask=field_mask_pb2.FieldMask(paths=["api_token"]),
        )
    )
    assert cleared.self_hosted_model.api_token_set is False

    await sidecar.admin.DeleteSelfHostedModel(admin_pb2.DeleteSelfHostedModelRequest(id=created.id))
    missing = await rpc_error(sidecar.admin.GetSelfHostedModel(admin_pb2.GetSelfHostedModelRequest(id=created.id)))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "SELF_HOSTED_MODEL_NOT_FOUND")

    events = await sidecar.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest())
    assert [e.action for e in events.audit_events] == [
        "DeleteSelfHostedModel",
        "UpdateSelfHostedModel",
        "UpdateSelfHostedModel",
        "CreateSelfHostedModel",
    ]
    create_event = events.audit_events[-1]
    assert create_event.actor == "admin@example.com"
    assert json.loads(create_event.after_json)["endpoint"] == "http://vllm.internal:8000/v1"
    assert json.loads(events.audit_events[2].before_json)["endpoint"] == "http://vllm.internal:8000/v1"
    assert TOKEN not in str(events)


async def test_token_is_stored_encrypted(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed")
    model = await create(sidecar, vllm_model())
    await sidecar.server.stop()
    database = sidecar.config.storage.path
    with closing(sqlite3.connect(database)) as connection:
        row = connection.execute(
            "SELECT api_token_key_id, api_token_ciphertext FROM self_hosted_models WHERE id = ?", (model.id,)
        ).fetchone()
    assert row is not None and row[1] is not None, "no token stored"
    stored = EncryptedToken(str(row[0]), bytes(row[1]))
    assert TOKEN.encode() not in stored.ciphertext
    # It is the token, encrypted under the key file's key and bound to this model.
    keyring = Keyring.open(sidecar.config.storage.token_key_path)
    assert keyring.decrypt(stored, model.id.encode()) == TOKEN
    for path in [Path(database), Path(database + "-wal")]:
        if path.exists():
            assert TOKEN.encode() not in path.read_bytes()


async def test_feature_setting_to_self_hosted_model_and_back(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed")
    model = await create(sidecar, vllm_model())
    reply = await sidecar.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(
            feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id=model.id
        )
    )
    assert reply.feature_setting.provider == admin_pb2.FEATURE_PROVIDER_SELF_HOSTED
    answer = await sidecar.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat_fix_code"))
    assert answer.provider == types_pb2.PROVIDER_SELF_HOSTED
    assert (answer.self_hosted_model_id, answer.model_identifier) == (model.id, "custom_openai/mistral-7b")
    assert answer.self_hosted_model_family == types_pb2.MODEL_FAMILY_MISTRAL
    assert answer.self_hosted_model_endpoint == "http://vllm.internal:8000/v1"
    assert TOKEN not in str(answer)

    in_use = await rpc_error(sidecar.admin.DeleteSelfHostedModel(admin_pb2.DeleteSelfHostedModelRequest(id=model.id)))
    assert (in_use.code, in_use.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MODEL_IN_USE")
    assert "duo_chat" in in_use.message

    await sidecar.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_DISABLED)
    )
    disabled = await sidecar.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"))
    assert disabled.provider == types_pb2.PROVIDER_DISABLED
    assert disabled.source == types_pb2.SELECTION_SOURCE_FEATURE_SETTING
    await sidecar.admin.DeleteSelfHostedModel(admin_pb2.DeleteSelfHostedModelRequest(id=model.id))

    listed = await sidecar.admin.ListFeatureSettings(admin_pb2.ListFeatureSettingsRequest(page_size=1000))
    by_feature = {s.feature: s for s in listed.feature_settings}
    assert by_feature["duo_chat"].provider == admin_pb2.FEATURE_PROVIDER_DISABLED
    assert by_feature["duo_chat"].explicitly_set is True
    # A sub-feature without a setting of its own shows the one it follows.
    sub = by_feature["duo_chat_explain_code"]
    assert (sub.provider, sub.explicitly_set) == (admin_pb2.FEATURE_PROVIDER_DISABLED, False)
    assert by_feature["code_completions"].provider == admin_pb2.FEATURE_PROVIDER_VENDORED
    assert by_feature["code_completions"].explicitly_set is False


async def test_incompatible_family_is_refused_with_gitlabs_message(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed")
    model = await create(
        sidecar,
        vllm_model("CodeGemma", family=types_pb2.MODEL_FAMILY_CODEGEMMA, identifier="custom_openai/codegemma"),
    )
    refused = await rpc_error(
        sidecar.admin.UpdateFeatureSetting(
            admin_pb2.UpdateFeatureSettingRequest(
                feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id=model.id
            )
        )
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.message == "CodeGemma is incompatible with the GitLab Duo Chat feature"
    # Code completion accepts the same family.
    await sidecar.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(
            feature="code_completions", provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id=model.id
        )
    )
    # Changing the family of a model in use to one its feature refuses is refused too.
    mistral = await create(sidecar, vllm_model())
    await sidecar.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(
            feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id=mistral.id
        )
    )
    refused = await rpc_error(
        sidecar.admin.UpdateSelfHostedModel(
            admin_pb2.UpdateSelfHostedModelRequest(
                self_hosted_model=admin_pb2.SelfHostedModel(id=mistral.id, family=types_pb2.MODEL_FAMILY_CODEGEMMA),
                update_mask=field_mask_pb2.FieldMask(paths=["family"]),
            )
        )
    )
    assert refused.message == "Mistral 7B on vLLM is incompatible with the GitLab Duo Chat feature"


async def test_pin_must_be_selectable(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    refused = await rpc_error(
        sidecar.admin.UpdateNamespaceModelSelection(
            admin_pb2.UpdateNamespaceModelSelectionRequest(
                namespace_id=10, feature="code_completions", offered_model_ref="claude_sonnet_4_6"
            )
        )
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.reason == "MODEL_NOT_SELECTABLE"
    assert refused.field_violations == ["offered_model_ref"]
    assert "codestral_2501_fireworks" in refused.message  # names the allowed models


@pytest.mark.parametrize(
    ("deployment", "call", "reason"),
    [
        ("gitlab_com", "instance_pin", "WRONG_DEPLOYMENT_TYPE"),
        ("dedicated", "namespace_pin", "WRONG_DEPLOYMENT_TYPE"),
        ("self_managed", "namespace_pin", "WRONG_DEPLOYMENT_TYPE"),
        ("dedicated", "self_hosted_model", "WRONG_DEPLOYMENT_TYPE"),
        ("gitlab_com", "feature_setting", "WRONG_DEPLOYMENT_TYPE"),
        ("dedicated", "default_namespace", "WRONG_DEPLOYMENT_TYPE"),
        ("self_managed", "list_namespace_pins", "WRONG_DEPLOYMENT_TYPE"),
        ("gitlab_com", "list_instance_pins", "WRONG_DEPLOYMENT_TYPE"),
        ("dedicated", "list_feature_settings", "WRONG_DEPLOYMENT_TYPE"),
        ("self_managed", "seats", "WRONG_DEPLOYMENT_TYPE"),
    ],
)
async def test_deployment_rules(start_server: StartServer, deployment: str, call: str, reason: str) -> None:
    sidecar = await start_server(deployment)
    calls = {
        "instance_pin": lambda: sidecar.admin.UpdateInstanceModelSelection(
            admin_pb2.UpdateInstanceModelSelectionRequest(feature="duo_chat", offered_model_ref="claude_sonnet_4_6")
        ),
        "namespace_pin": lambda: sidecar.admin.UpdateNamespaceModelSelection(
            admin_pb2.UpdateNamespaceModelSelectionRequest(
                namespace_id=1, feature="duo_chat", offered_model_ref="claude_sonnet_4_6"
            )
        ),
        "self_hosted_model": lambda: sidecar.admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(self_hosted_model=vllm_model())
        ),
        "feature_setting": lambda: sidecar.admin.UpdateFeatureSetting(
            admin_pb2.UpdateFeatureSettingRequest(feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_DISABLED)
        ),
        "default_namespace": lambda: sidecar.admin.SetUserDefaultNamespace(
            admin_pb2.SetUserDefaultNamespaceRequest(user_id=1, namespace_id=1)
        ),
        "list_namespace_pins": lambda: sidecar.admin.ListNamespaceModelSelections(
            admin_pb2.ListNamespaceModelSelectionsRequest(namespace_id=1)
        ),
        "list_instance_pins": lambda: sidecar.admin.ListInstanceModelSelections(
            admin_pb2.ListInstanceModelSelectionsRequest()
        ),
        "list_feature_settings": lambda: sidecar.admin.ListFeatureSettings(admin_pb2.ListFeatureSettingsRequest()),
        "seats": lambda: sidecar.admin.SyncSeatAssignments(
            iter(
                [
                    admin_pb2.SyncSeatAssignmentsRequest(
                        assignments=[admin_pb2.SeatAssignment(user_id=1, namespace_id=2)]
                    )
                ]
            )
        ),
    }
    details = await rpc_error(calls[call]())
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert "this sidecar serves" in details.message


BAD_MODELS = [
    ("empty name", {"name": " "}, "self_hosted_model.name"),
    ("no family", {"family": 0}, "self_hosted_model.family"),
    ("unknown family", {"family": 99}, "self_hosted_model.family"),
    ("no platform", {"platform": 0}, "self_hosted_model.platform"),
    ("ftp endpoint", {"endpoint": "ftp://x/v1"}, "self_hosted_model.endpoint"),
    ("endpoint without host", {"endpoint": "http:///v1"}, "self_hosted_model.endpoint"),
    ("credentials in endpoint", {"endpoint": "http://u:p@vllm/v1"}, "self_hosted_model.endpoint"),
    ("identifier without prefix", {"identifier": "mistral"}, "self_hosted_model.identifier"),
    ("identifier of another platform", {"identifier": "azure/gpt"}, "self_hosted_model.identifier"),
    ("token with a newline", {"api_token": "abc\ndef"}, "self_hosted_model.api_token"),
    ("overlong name", {"name": "n" * 300}, "self_hosted_model.name"),
    # Text that urllib refuses (ValueError: UNKNOWN before) or reads as a port in another script.
    ("superscript port", {"endpoint": "http://vllm:\u00b2/v1"}, "self_hosted_model.endpoint"),
    ("port out of range", {"endpoint": "http://vllm:99999/v1"}, "self_hosted_model.endpoint"),
    ("arabic-indic port", {"endpoint": "http://vllm:\u0665\u0660/v1"}, "self_hosted_model.endpoint"),
    ("unclosed IPv6 host", {"endpoint": "http://[::1/v1"}, "self_hosted_model.endpoint"),
    ("NUL in name", {"name": "a\x00b"}, "self_hosted_model.name"),
    ("NUL in identifier", {"identifier": "custom_openai/a\x00b"}, "self_hosted_model.identifier"),
]


@pytest.mark.parametrize(("case", "overrides", "field"), BAD_MODELS, ids=[c[0] for c in BAD_MODELS])
async def test_bad_self_hosted_models(
    start_server: StartServer, case: str, overrides: dict[str, Any], field: str
) -> None:
    sidecar = await start_server("self_managed")
    details = await rpc_error(
        sidecar.admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(self_hosted_model=vllm_model(**overrides))
        )
    )
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, case
    assert details.field_violations == [field]
    listed = await sidecar.admin.ListSelfHostedModels(admin_pb2.ListSelfHostedModelsRequest())
    assert list(listed.self_hosted_models) == []  # nothing half-written


async def test_duplicate_names_and_bedrock_are_refused(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed")
    await create(sidecar, vllm_model())
    duplicate = await rpc_error(
        sidecar.admin.CreateSelfHostedModel(admin_pb2.CreateSelfHostedModelRequest(self_hosted_model=vllm_model()))
    )
    assert (duplicate.code, duplicate.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MODEL_NAME_TAKEN")
    bedrock = await rpc_error(
        sidecar.admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(
                self_hosted_model=vllm_model(
                    "Claude on Bedrock",
                    family=types_pb2.MODEL_FAMILY_CLAUDE_3,
                    platform=types_pb2.PLATFORM_BEDROCK,
                    identifier="bedrock/anthropic.claude-3",
                )
            )
        )
    )
    assert (bedrock.code, bedrock.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PLATFORM_NOT_SUPPORTED")


async def test_invalid_arguments_across_rpcs(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    admin = sidecar.admin
    cases = [
        (sidecar.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=0, feature="duo_chat")), "user_id"),
        (sidecar.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="nope")), "feature"),
        (admin.UpdateNamespaceModelSelection(admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=0, feature="duo_chat", offered_model_ref="claude_sonnet_4_6")), "namespace_id"),
        (admin.UpdateNamespaceModelSelection(admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=1, feature="", offered_model_ref="claude_sonnet_4_6")), "feature"),
        (admin.ListNamespaceModelSelections(admin_pb2.ListNamespaceModelSelectionsRequest(namespace_id=-1)),
         "namespace_id"),
        (admin.ListSelectableModels(admin_pb2.ListSelectableModelsRequest(page_size=-1)), "page_size"),
        (admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(page_token="%%%")), "page_token"),
        (admin.ListSeatAssignments(admin_pb2.ListSeatAssignmentsRequest(page_token="Mg==")), "page_token"),
        (admin.SetUserDefaultNamespace(admin_pb2.SetUserDefaultNamespaceRequest(user_id=0, namespace_id=1)),
         "user_id"),
        (admin.GetUserRoutingStatus(admin_pb2.GetUserRoutingStatusRequest(user_id=-3)), "user_id"),
        (admin.GetSelfHostedModel(admin_pb2.GetSelfHostedModelRequest(id="")), "id"),
        (admin.UpdateFeatureSetting(admin_pb2.UpdateFeatureSettingRequest(feature="duo_chat", provider=cast(Any, 42))),
         "provider"),
    ]  # fmt: skip
    for call, field in cases:
        details = await rpc_error(call)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert details.field_violations == [field]
        assert details.message


async def test_seat_sync_validates_each_batch_atomically(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")

    async def batches() -> AsyncIterator[admin_pb2.SyncSeatAssignmentsRequest]:
        yield admin_pb2.SyncSeatAssignmentsRequest(
            assignments=[admin_pb2.SeatAssignment(user_id=1, namespace_id=10, assigned=True)]
        )
        yield admin_pb2.SyncSeatAssignmentsRequest(
            assignments=[
                admin_pb2.SeatAssignment(user_id=2, namespace_id=10, assigned=True),
                admin_pb2.SeatAssignment(user_id=3, namespace_id=0, assigned=True),
            ]
        )

    details = await rpc_error(sidecar.admin.SyncSeatAssignments(batches()))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.field_violations == ["assignments[1].namespace_id"]
    listed = await sidecar.admin.ListSeatAssignments(admin_pb2.ListSeatAssignmentsRequest())
    # The first batch committed; the bad one wrote nothing.
    assert [(s.user_id, s.namespace_id) for s in listed.seat_assignments] == [(1, 10)]


async def test_seat_sync_counts_and_lists_with_pagination(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")

    async def batches() -> AsyncIterator[admin_pb2.SyncSeatAssignmentsRequest]:
        yield admin_pb2.SyncSeatAssignmentsRequest(
            assignments=[
                admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=True) for u in (1, 2, 3) for n in (10, 20)
            ]
        )
        yield admin_pb2.SyncSeatAssignmentsRequest(
            assignments=[
                admin_pb2.SeatAssignment(user_id=1, namespace_id=10, assigned=True),
                admin_pb2.SeatAssignment(user_id=3, namespace_id=20, assigned=False),
                admin_pb2.SeatAssignment(user_id=9, namespace_id=20, assigned=False),
            ]
        )

    reply = await sidecar.admin.SyncSeatAssignments(batches())
    assert (reply.assigned_count, reply.removed_count, reply.unchanged_count) == (6, 1, 2)
    seen: list[tuple[int, int]] = []
    token = ""
    while True:
        page = await sidecar.admin.ListSeatAssignments(
            admin_pb2.ListSeatAssignmentsRequest(page_size=2, page_token=token)
        )
        seen += [(s.user_id, s.namespace_id) for s in page.seat_assignments]
        token = page.next_page_token
        if not token:
            break
    assert seen == [(1, 10), (1, 20), (2, 10), (2, 20), (3, 10)]
    by_namespace = await sidecar.admin.ListSeatAssignments(admin_pb2.ListSeatAssignmentsRequest(namespace_id=20))
    assert [s.user_id for s in by_namespace.seat_assignments] == [1, 2]
    first = await sidecar.admin.ListSeatAssignments(admin_pb2.ListSeatAssignmentsRequest(page_size=1))
    reused = await rpc_error(
        sidecar.admin.ListSeatAssignments(
            admin_pb2.ListSeatAssignmentsRequest(namespace_id=20, page_token=first.next_page_token)
        )
    )
    assert (reused.code, reused.field_violations) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])
    assert "different list or different filters" in reused.message


async def test_list_pagination_over_features(start_server: StartServer) -> None:
    sidecar = await start_server("dedicated")
    names: list[str] = []
    token = ""
    while True:
        page = await sidecar.admin.ListSelectableModels(
            admin_pb2.ListSelectableModelsRequest(page_size=5, page_token=token)
        )
        assert len(page.features) <= 5
        names += [f.feature for f in page.features]
        token = page.next_page_token
        if not token:
            break
    assert names == sorted(names) and len(names) == len(set(names)) >= 18
    chat = await sidecar.admin.ListSelectableModels(admin_pb2.ListSelectableModelsRequest(feature="duo_chat"))
    entry = chat.features[0]
    assert entry.default_model.identifier == "claude_sonnet_4_6_vertex"
    assert "claude_sonnet_4_6" in [m.identifier for m in entry.selectable_models]
    assert types_pb2.MODEL_FAMILY_MISTRAL in entry.compatible_families
    sub = await sidecar.admin.ListSelectableModels(admin_pb2.ListSelectableModelsRequest(feature="duo_chat_fix_code"))
    assert sub.features[0].parent_feature == "duo_chat"


async def test_server_info_and_audit_filter(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await sidecar.admin.UpdateNamespaceModelSelection(
        admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=7, feature="duo_chat", offered_model_ref="claude_sonnet_4_6"
        ),
        metadata=sidecar.actor("alice"),
    )
    await sidecar.admin.UpdateNamespaceModelSelection(
        admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=8, feature="duo_chat", offered_model_ref="claude_sonnet_4_6"
        )
    )
    info = await sidecar.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
    assert info.deployment_type == admin_pb2.DEPLOYMENT_TYPE_GITLAB_COM
    assert (info.config_version, info.storage_backend) == ("2", "sqlite")
    assert len(info.catalog_version) == 12 and info.version
    filtered = await sidecar.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(resource_prefix="namespaces/7/"))
    assert [(e.actor, e.resource) for e in filtered.audit_events] == [("alice", "namespaces/7/features/duo_chat")]
    everything = await sidecar.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(page_size=1))
    assert everything.audit_events[0].actor == "unknown" and everything.next_page_token
    rest = await sidecar.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(page_size=1, page_token=everything.next_page_token)
    )
    assert rest.audit_events[0].actor == "alice" and not rest.next_page_token
