"""duo_admin.client against real sidecar processes: error details, pagination, seat batches."""

from __future__ import annotations

import socket

import pytest

from duo_admin.client import (
    MAX_SEAT_CHANGES_PER_MESSAGE,
    AdminClient,
    DuoAdminError,
    RoutingClient,
    default_actor,
    seat_batches,
)
from gitlab.duo.routing.v1 import admin_pb2
from tests.conftest import StartSidecar
from tests.helpers import free_port


def _seat(user_id: int, namespace_id: int, assigned: bool = True) -> admin_pb2.SeatAssignment:
    return admin_pb2.SeatAssignment(user_id=user_id, namespace_id=namespace_id, assigned=assigned)


def _model(name: str, endpoint: str = "http://vllm.internal:8000/v1") -> admin_pb2.SelfHostedModel:
    return admin_pb2.SelfHostedModel(
        name=name,
        family="MODEL_FAMILY_MIXTRAL",
        platform="PLATFORM_OPENAI_COMPATIBLE",
        endpoint=endpoint,
        identifier=f"custom_openai/{name}",
    )


def test_gitlab_com_pages_batches_and_error_details(start_sidecar: StartSidecar) -> None:
    address = start_sidecar("gitlab_com").address
    with AdminClient(address, actor="client-test") as admin, RoutingClient(address) as routing:
        changes = [_seat(user_id, 10) for user_id in range(1, 25)] + [_seat(24, 20)]
        synced = admin.sync_seat_assignments(changes, batch_size=10)
        assert (synced.assigned_count, synced.removed_count, synced.unchanged_count) == (25, 0, 0)

        first_page = admin.list_seat_assignments(page_size=7)
        assert len(first_page.seat_assignments) == 7 and first_page.next_page_token
        seats = [(s.user_id, s.namespace_id) for s in admin.iter_seat_assignments(page_size=7)]
        assert seats == [(s.user_id, s.namespace_id) for s in changes]
        assert [s.namespace_id for s in admin.iter_seat_assignments(user_id=24, page_size=1)] == [10, 20]

        # Each message is applied atomically and audited on its own: 25 changes in batches of 10 are 3 events.
        events = list(admin.iter_audit_events(page_size=2))
        assert [e.action for e in events] == ["SyncSeatAssignments"] * 3
        assert {e.actor for e in events} == {"client-test"}

        all_features = admin.list_selectable_models(page_size=1000)
        assert not all_features.next_page_token
        paged = [s.feature for s in admin.iter_selectable_models(page_size=5)]
        assert paged == [s.feature for s in all_features.features] and len(paged) > 10
        assert len(list(admin.iter_namespace_model_selections(20, page_size=4))) == len(paged)

        admin.update_namespace_model_selection(20, "duo_chat", "claude_sonnet_4_6")
        with pytest.raises(DuoAdminError) as refused:
            routing.resolve_model(24, "duo_chat")
        error = refused.value
        assert error.code == "FAILED_PRECONDITION"
        assert error.message.startswith("I'm sorry, you have not selected a default GitLab Duo namespace")
        assert error.reason == "DEFAULT_NAMESPACE_REQUIRED"
        assert error.domain == "routing.duo.gitlab.com"
        assert error.metadata == {"user_id": "24", "feature": "duo_chat", "candidate_namespace_ids": "10,20"}
        assert [v.type for v in error.precondition_violations] == ["DEFAULT_NAMESPACE_REQUIRED"]
        assert error.precondition_violations[0].subject == "users/24"

        with pytest.raises(DuoAdminError) as invalid:
            admin.update_namespace_model_selection(20, "duo_chat", "no_such_model")
        assert (invalid.value.code, invalid.value.reason) == ("INVALID_ARGUMENT", "MODEL_NOT_SELECTABLE")
        assert [v.field for v in invalid.value.field_violations] == ["offered_model_ref"]

        assert admin.set_user_default_namespace(24, 20).default_namespace_id == 20
        resolved = routing.resolve_model(24, "duo_chat")
        assert (resolved.model_identifier, resolved.governing_namespace_id) == ("claude_sonnet_4_6", 20)
        status = admin.get_user_routing_status(24)
        assert list(status.seat_namespace_ids) == [10, 20] and status.explicit_default_valid


def test_self_hosted_models_update_mask_and_not_found(start_sidecar: StartSidecar) -> None:
    with AdminClient(start_sidecar("self_managed").address) as admin:
        with pytest.raises(DuoAdminError) as invalid:
            admin.create_self_hosted_model(_model("bad", endpoint="not a url"))
        assert (invalid.value.code, invalid.value.reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
        assert [v.field for v in invalid.value.field_violations] == ["self_hosted_model.endpoint"]

        ids = {name: admin.create_self_hosted_model(_model(name)).self_hosted_model.id for name in "cab"}
        assert [m.name for m in admin.iter_self_hosted_models(page_size=2)] == ["a", "b", "c"]

        # Only the masked field changes, whatever else the message holds.
        change = _model("a-renamed", endpoint="http://ignored.example/v1")
        change.id = ids["a"]
        updated = admin.update_self_hosted_model(change, ["name"]).self_hosted_model
        assert (updated.name, updated.endpoint) == ("a-renamed", "http://vllm.internal:8000/v1")

        admin.update_feature_setting("code_completions", "FEATURE_PROVIDER_SELF_HOSTED", ids["b"])
        with pytest.raises(DuoAdminError) as in_use:
            admin.delete_self_hosted_model(ids["b"])
        assert (in_use.value.reason, in_use.value.metadata["features"]) == ("MODEL_IN_USE", "code_completions")

        admin.delete_self_hosted_model(ids["c"])
        with pytest.raises(DuoAdminError) as missing:
            admin.get_self_hosted_model(ids["c"])
        assert (missing.value.code, missing.value.reason) == ("NOT_FOUND", "SELF_HOSTED_MODEL_NOT_FOUND")
        assert str(missing.value) == f"NOT_FOUND: no self-hosted model with id '{ids['c']}'"

        assert admin.get_server_info().storage_backend == "sqlite"
        assert [e.action for e in admin.iter_audit_events(resource_prefix="featureSettings/")] == [
            "UpdateFeatureSetting"
        ]


def test_unreachable_sidecar_raises_unavailable() -> None:
    address = f"127.0.0.1:{free_port()}"
    with AdminClient(address, timeout=3) as admin, pytest.raises(DuoAdminError) as unreachable:
        admin.get_server_info()
    assert unreachable.value.code == "UNAVAILABLE"
    assert unreachable.value.message.startswith(f"cannot reach the sidecar at {address} (")
    assert not unreachable.value.reason


def test_every_call_has_a_deadline() -> None:
    with socket.socket() as silent:  # accepts connections, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with AdminClient(address, timeout=0.3) as admin, pytest.raises(DuoAdminError) as late:
            admin.get_server_info()
    assert late.value.code == "DEADLINE_EXCEEDED"
    assert late.value.message == f"the sidecar at {address} did not answer within 0.3 s"


def test_seat_batches_respect_the_server_limit() -> None:
    changes = (_seat(user_id, 1) for user_id in range(1, 2 * MAX_SEAT_CHANGES_PER_MESSAGE + 2))
    sizes = [len(batch.assignments) for batch in seat_batches(changes)]
    assert sizes == [MAX_SEAT_CHANGES_PER_MESSAGE, MAX_SEAT_CHANGES_PER_MESSAGE, 1]
    assert list(seat_batches([])) == []
    with pytest.raises(ValueError):
        seat_batches([], batch_size=MAX_SEAT_CHANGES_PER_MESSAGE + 1)


def test_default_actor_names_user_and_host() -> None:
    user, at, host = default_actor().partition("@")
    assert user and at and host
    with pytest.raises(ValueError):
        AdminClient(timeout=0)
    with pytest.raises(ValueError, match="printable ASCII"):
        AdminClient(actor="jürgen")  # gRPC would refuse the metadata value
