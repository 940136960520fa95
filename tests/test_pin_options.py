"""The pin updates' options (DESIGN section 3, "Admin conveniences"): "apply to all" (apply_to_sub_features) and the
impact preview (validate_only), through real gRPC against a real sidecar on both storage backends, and the store
query behind the impact on both backends.

Model identifiers come from the catalog, never from this file: the catalog changes with GitLab's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from gitlab.duo.routing.v1 import admin_pb2
from sidecar.catalog import Catalog, FeatureInfo, load_catalog
from sidecar.domain import ChangeKind, SeatChange
from sidecar.store.base import Store
from tests.conftest import Sidecar, StartServer
from tests.helpers import error_details
from tests.model_selection import resolve, seats

pytestmark = pytest.mark.asyncio

OWNER = (("x-duo-actor", "owner@example.com"),)


# -- what the catalog offers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatModels:
    """duo_chat's models as the tests use them, read from a catalog."""

    default: str
    chosen: str  # selectable for duo_chat and every sub-feature, not the default
    other: str  # another one, selectable for duo_chat and its first sub-feature (by name)
    partial: str  # selectable for duo_chat, not for the sub-features in `skipped`
    skipped: frozenset[str]
    sub_features: tuple[str, ...]


def chat_models(catalog: Catalog) -> ChatModels:
    chat = catalog.features["duo_chat"]
    subs = [f for f in catalog.features.values() if f.parent == "duo_chat"]
    subs.sort(key=lambda f: f.name)
    chosen = next(
        m for m in chat.selectable_models if m != chat.default_model and all(s.is_selectable(m) for s in subs)
    )
    other = next(
        m for m in chat.selectable_models if m not in (chat.default_model, chosen) and subs[0].is_selectable(m)
    )
    # Offered by some sub-features and not by others: "apply to all" both sets and skips.
    partial = next(
        (
            m
            for m in chat.selectable_models
            if any(s.is_selectable(m) for s in subs) and not all(s.is_selectable(m) for s in subs)
        ),
        "",
    )
    return ChatModels(
        default=chat.default_model,
        chosen=chosen,
        other=other,
        partial=partial,
        skipped=frozenset(s.name for s in subs if partial and not s.is_selectable(partial)),
        sub_features=tuple(sorted(s.name for s in subs)),
    )


@pytest.fixture
def models() -> ChatModels:
    found = chat_models(load_catalog())
    assert found.partial, "the catalog offers no duo_chat model that only some duo_chat_* sub-features offer"
    return found


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, start_server: StartServer) -> StartServer:
    """A sidecar starter for each storage backend."""
    if request.param == "postgres":
        starter: StartServer = request.getfixturevalue("start_postgres_server")
        return starter
    return start_server


# -- calls ------------------------------------------------------------------------------------------------------


async def pin_namespace(
    sidecar: Sidecar, namespace: int, feature: str, ref: str, *, validate_only: bool = False, apply: bool = False
) -> admin_pb2.UpdateNamespaceModelSelectionResponse:
    response: admin_pb2.UpdateNamespaceModelSelectionResponse = await sidecar.admin.UpdateNamespaceModelSelection(
        admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=namespace,
            feature=feature,
            offered_model_ref=ref,
            validate_only=validate_only,
            apply_to_sub_features=apply,
        ),
        metadata=OWNER,
    )
    return response


async def pin_instance(
    sidecar: Sidecar, feature: str, ref: str, *, validate_only: bool = False, apply: bool = False
) -> admin_pb2.UpdateInstanceModelSelectionResponse:
    response: admin_pb2.UpdateInstanceModelSelectionResponse = await sidecar.admin.UpdateInstanceModelSelection(
        admin_pb2.UpdateInstanceModelSelectionRequest(
            feature=feature, offered_model_ref=ref, validate_only=validate_only, apply_to_sub_features=apply
        ),
        metadata=OWNER,
    )
    return response


async def version(sidecar: Sidecar) -> int:
    info = await sidecar.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
    return int(info.config_version)


async def audit_events(sidecar: Sidecar) -> list[admin_pb2.AuditEvent]:
    listed = await sidecar.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(page_size=1000))
    return list(listed.audit_events)


async def namespace_pins(sidecar: Sidecar, namespace: int) -> dict[str, str]:
    listed = await sidecar.admin.ListNamespaceModelSelections(
        admin_pb2.ListNamespaceModelSelectionsRequest(namespace_id=namespace, page_size=1000)
    )
    return {s.feature: s.offered_model_ref for s in listed.model_selections}


async def instance_pins(sidecar: Sidecar) -> dict[str, str]:
    listed = await sidecar.admin.ListInstanceModelSelections(
        admin_pb2.ListInstanceModelSelectionsRequest(page_size=1000)
    )
    return {s.feature: s.offered_model_ref for s in listed.model_selections}


async def no_context_answer(sidecar: Sidecar, user: int, feature: str) -> str:
    """The model a user's no-context request gets, or the error reason."""
    try:
        return (await resolve(sidecar, user, feature)).model_identifier
    except grpc.aio.AioRpcError as error:
        return error_details(error).reason


async def set_default(sidecar: Sidecar, user: int, namespace: int) -> None:
    await sidecar.admin.SetUserDefaultNamespace(
        admin_pb2.SetUserDefaultNamespaceRequest(user_id=user, namespace_id=namespace)
    )


def store_of(sidecar: Sidecar) -> Store:
    assert sidecar.server.state is not None
    return sidecar.server.state.store


# -- apply to all -----------------------------------------------------------------------------------------------


async def test_apply_to_sub_features_in_a_namespace_is_one_change(start: StartServer, models: ChatModels) -> None:
    sidecar = await start("gitlab_com")
    applied = [s for s in models.sub_features if s not in models.skipped]
    await pin_namespace(sidecar, 10, sorted(models.skipped)[0], models.default)  # a skipped sub-feature's own pin
    before = await version(sidecar)

    reply = await pin_namespace(sidecar, 10, "duo_chat", models.partial, apply=True)

    assert int(reply.config_version) == before + 1 == await version(sidecar)
    assert reply.validate_only is False
    assert reply.model_selection.effective_model_identifier == models.partial
    assert [s.feature for s in reply.sub_feature_selections] == applied
    assert all(
        s.explicitly_set and s.effective_model_identifier == models.partial for s in reply.sub_feature_selections
    )
    skipped = {s.feature: s for s in reply.skipped_sub_features}
    assert set(skipped) == models.skipped
    for name, entry in skipped.items():
        assert entry.reason == "MODEL_NOT_SELECTABLE"
        assert models.partial in entry.message and name in entry.message
    assert list(reply.impact.features) == ["duo_chat", *applied]
    assert (reply.impact.model_before, reply.impact.model_after) == (models.default, models.partial)

    events = [e for e in await audit_events(sidecar) if int(e.config_version) == before + 1]
    assert sorted(e.resource for e in events) == sorted(f"namespaces/10/features/{f}" for f in ["duo_chat", *applied])
    assert {e.action for e in events} == {"UpdateNamespaceModelSelection"}
    assert all(e.actor == "owner@example.com" for e in events)
    records = await store_of(sidecar).changes_since(before, 10)
    assert len(records) == 1 and records[0].version == before + 1
    assert records[0].change.kind is ChangeKind.NAMESPACE_SELECTION
    assert sorted(records[0].change.keys) == sorted(f"10/{f}" for f in ["duo_chat", *applied])

    pins = await namespace_pins(sidecar, 10)
    assert all(pins[f] == models.partial for f in ["duo_chat", *applied])
    assert pins[sorted(models.skipped)[0]] == models.default  # kept its own pin
    answer = await resolve(sidecar, 1, applied[0], 10)
    assert (answer.model_identifier, answer.effective_feature) == (models.partial, applied[0])

    # Clearing with apply_to_sub_features clears every sub-feature's own pin too, again in one change.
    cleared = await pin_namespace(sidecar, 10, "duo_chat", "", apply=True)
    assert int(cleared.config_version) == before + 2
    assert [s.feature for s in cleared.sub_feature_selections] == list(models.sub_features)
    assert not cleared.skipped_sub_features
    assert set((await namespace_pins(sidecar, 10)).values()) == {""}
    events = [e for e in await audit_events(sidecar) if int(e.config_version) == before + 2]
    assert len(events) == 1 + len(models.sub_features)
    assert (await resolve(sidecar, 1, applied[0], 10)).model_identifier == models.default


@pytest.mark.parametrize("deployment", ["dedicated", "self_managed"])
async def test_apply_to_sub_features_on_the_instance(
    start_server: StartServer, models: ChatModels, deployment: str
) -> None:
    sidecar = await start_server(deployment)
    applied = [s for s in models.sub_features if s not in models.skipped]
    before = await version(sidecar)
    reply = await pin_instance(sidecar, "duo_chat", models.partial, apply=True)
    assert int(reply.config_version) == before + 1
    assert [s.feature for s in reply.sub_feature_selections] == applied
    assert {s.feature for s in reply.skipped_sub_features} == models.skipped
    assert (reply.impact.seat_holders, reply.impact.no_context_users_changed) == (0, 0)
    pins = await instance_pins(sidecar)
    assert all(pins[f] == models.partial for f in ["duo_chat", *applied])
    assert all(pins[f] == "" for f in models.skipped)
    events = [e for e in await audit_events(sidecar) if int(e.config_version) == before + 1]
    assert sorted(e.resource for e in events) == sorted(f"instance/features/{f}" for f in ["duo_chat", *applied])
    (record,) = await store_of(sidecar).changes_since(before, 10)
    assert record.change.kind is ChangeKind.INSTANCE_SELECTION
    assert sorted(record.change.keys) == sorted(["duo_chat", *applied])
    answer = await resolve(sidecar, 5, applied[0])
    assert (answer.model_identifier, answer.effective_feature) == (models.partial, applied[0])


async def test_without_apply_to_sub_features_only_the_feature_is_pinned(
    start_server: StartServer, models: ChatModels
) -> None:
    sidecar = await start_server("gitlab_com")
    reply = await pin_namespace(sidecar, 10, "duo_chat", models.chosen)
    assert not reply.sub_feature_selections and not reply.skipped_sub_features
    assert list(reply.impact.features) == ["duo_chat"]
    pins = await namespace_pins(sidecar, 10)
    assert [f for f, ref in pins.items() if ref] == ["duo_chat"]


# -- refusals ---------------------------------------------------------------------------------------------------


def unselectable_for(info: FeatureInfo, catalog: Catalog) -> str:
    return next(m for m in catalog.models if not info.is_selectable(m))


@pytest.mark.parametrize("validate_only", [False, True], ids=["write", "validate_only"])
async def test_refusals_are_the_same_with_and_without_validate_only(
    start_server: StartServer, models: ChatModels, validate_only: bool
) -> None:
    sidecar = await start_server("gitlab_com")
    catalog = load_catalog()
    other_feature = next(f for f in catalog.features.values() if f.name != "duo_chat" and f.selectable_models)
    assert not any(f.parent == other_feature.name for f in catalog.features.values())
    before = await version(sidecar)
    events_before = len(await audit_events(sidecar))
    cases: list[tuple[dict[str, Any], grpc.StatusCode, str, str]] = [
        (
            {
                "namespace_id": 10,
                "feature": other_feature.name,
                "ref": other_feature.selectable_models[0],
                "apply": True,
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "NO_SUB_FEATURES",
            "apply_to_sub_features",
        ),
        (
            {"namespace_id": 10, "feature": "duo_chat", "ref": unselectable_for(catalog.features["duo_chat"], catalog)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "MODEL_NOT_SELECTABLE",
            "offered_model_ref",
        ),
        (
            {"namespace_id": 10, "feature": "no_such_feature", "ref": models.chosen},
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_FEATURE",
            "feature",
        ),
        (
            {"namespace_id": 0, "feature": "duo_chat", "ref": models.chosen},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            "namespace_id",
        ),
    ]
    for case, code, reason, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await pin_namespace(
                sidecar,
                case["namespace_id"],
                case["feature"],
                case["ref"],
                validate_only=validate_only,
                apply=case.get("apply", False),
            )
        details = error_details(raised.value)
        assert (details.code, details.reason, details.field_violations) == (code, reason, [field]), case
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pin_instance(sidecar, "duo_chat", models.chosen, validate_only=validate_only, apply=True)
    details = error_details(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WRONG_DEPLOYMENT_TYPE")
    assert await version(sidecar) == before
    assert len(await audit_events(sidecar)) == events_before


async def test_apply_to_sub_features_on_another_feature_is_refused_on_the_instance(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed")
    catalog = load_catalog()
    feature = next(f for f in catalog.features.values() if f.name != "duo_chat" and f.selectable_models)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pin_instance(sidecar, feature.name, feature.selectable_models[0], apply=True)
    details = error_details(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "NO_SUB_FEATURES")
    assert "duo_chat" in details.message


# -- validate_only ----------------------------------------------------------------------------------------------


async def test_validate_only_writes_nothing_and_says_what_would_change(start: StartServer, models: ChatModels) -> None:
    sidecar = await start("gitlab_com")
    await seats(sidecar, (1, 10))
    before = await version(sidecar)
    events_before = await audit_events(sidecar)
    answer_before = await resolve(sidecar, 1, "duo_chat")

    preview = await pin_namespace(sidecar, 10, "duo_chat", models.partial, validate_only=True, apply=True)

    assert preview.validate_only is True
    assert int(preview.config_version) == before
    assert preview.model_selection.offered_model_ref == models.partial  # as it would be
    assert preview.model_selection.effective_model_identifier == models.partial
    assert {s.feature for s in preview.skipped_sub_features} == models.skipped
    assert (preview.impact.model_before, preview.impact.model_after) == (models.default, models.partial)
    assert (preview.impact.seat_holders, preview.impact.no_context_users_changed) == (1, 1)
    # Nothing written: no version, no audit event, no change record, same answers, same stored pins.
    assert await version(sidecar) == before
    assert await audit_events(sidecar) == events_before
    assert await store_of(sidecar).changes_since(before, 10) == []
    assert await resolve(sidecar, 1, "duo_chat") == answer_before
    assert set((await namespace_pins(sidecar, 10)).values()) == {""}

    # The real call answers with the impact computed before it wrote.
    done = await pin_namespace(sidecar, 10, "duo_chat", models.partial, apply=True)
    assert done.impact == preview.impact
    assert int(done.config_version) == before + 1
    assert (await resolve(sidecar, 1, "duo_chat")).model_identifier == models.partial


@pytest.mark.parametrize("deployment", ["dedicated", "self_managed"])
async def test_validate_only_on_the_instance(start_server: StartServer, deployment: str, models: ChatModels) -> None:
    sidecar = await start_server(deployment)
    before = await version(sidecar)
    preview = await pin_instance(sidecar, "duo_chat_explain_code", models.chosen, validate_only=True)
    assert preview.validate_only is True and int(preview.config_version) == before
    assert (preview.impact.model_before, preview.impact.model_after) == (models.default, models.chosen)
    assert list(preview.impact.features) == ["duo_chat_explain_code"]
    assert await version(sidecar) == before
    assert (await resolve(sidecar, 5, "duo_chat_explain_code")).model_identifier == models.default


async def test_impact_counts_the_users_whose_no_context_answer_changes(start: StartServer, models: ChatModels) -> None:
    """A hand-built seat set covering every way a user relates to the namespace whose pin changes (10)."""
    sidecar = await start("gitlab_com")
    a, b = models.chosen, models.other
    for namespace, ref in ((20, a), (30, a), (50, b)):  # 40 and 41 keep the default
        await pin_namespace(sidecar, namespace, "duo_chat", ref)
    await seats(
        sidecar,
        (1, 10),  # sole seat: governed by 10                                    -> changes
        *((2, 10), (2, 20)),  # explicit default 10                               -> changes
        *((3, 10), (3, 20)),  # explicit default 20: routes through 20           -> unchanged
        *((4, 10), (4, 40)),  # no default, both on the default: unanimous      -> newly required
        *((5, 10), (5, 20), (5, 30)),  # no default, others agree on A: error   -> unanimous A
        *((6, 10), (6, 20), (6, 50)),  # no default, others disagree            -> error both times
        *((7, 10), (7, 40), (7, 99)),  # stale default (99 removed below)       -> newly required
        *((8, 20), (8, 40)),  # no seat in 10                                     -> not counted
        (9, 10),  # sole seat and explicit default 10                             -> changes, counted once
        *((11, 10), (11, 40), (11, 41)),  # no default, others on the default   -> newly required
    )
    await set_default(sidecar, 2, 10)
    await set_default(sidecar, 3, 20)
    await set_default(sidecar, 7, 99)
    await set_default(sidecar, 9, 10)
    await seats(sidecar, (7, 99), assigned=False)
    users = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]

    preview = await pin_namespace(sidecar, 10, "duo_chat", a, validate_only=True)
    assert preview.impact.seat_holders == 9
    assert preview.impact.no_context_users_changed == 7  # 1, 2, 9 governed; 4, 5, 7, 11 contested
    assert preview.impact.users_newly_requiring_default_namespace == 3  # 4, 7, 11

    # And the numbers are what really happens.
    before = {u: await no_context_answer(sidecar, u, "duo_chat") for u in users}
    done = await pin_namespace(sidecar, 10, "duo_chat", a)
    assert done.impact == preview.impact
    after = {u: await no_context_answer(sidecar, u, "duo_chat") for u in users}
    assert [u for u in users if before[u] != after[u]] == [1, 2, 4, 5, 7, 9, 11]
    newly = [u for u in users if before[u] != "DEFAULT_NAMESPACE_REQUIRED" and after[u] == "DEFAULT_NAMESPACE_REQUIRED"]
    assert newly == [4, 7, 11]

    # Putting it back undoes exactly that; a change to the same model changes nobody.
    same = await pin_namespace(sidecar, 10, "duo_chat", a, validate_only=True)
    assert (same.impact.no_context_users_changed, same.impact.seat_holders) == (0, 9)
    back = await pin_namespace(sidecar, 10, "duo_chat", "", validate_only=True)
    assert (back.impact.no_context_users_changed, back.impact.users_newly_requiring_default_namespace) == (7, 1)  # 5


async def test_impact_matches_what_happens_for_random_configurations(start: StartServer, models: ChatModels) -> None:
    """For random seats, defaults and pins (duo_chat and one sub-feature), the preview's counts equal the users
    whose no-context answers really change when the change is made."""
    sidecar = await start("gitlab_com")
    catalog = load_catalog()
    sub = sorted(f.name for f in catalog.features.values() if f.parent == "duo_chat")[0]
    refs = ["", models.chosen, models.other]
    rng = random.Random(15)
    namespaces = [10, 20, 30, 40, 50]
    users = list(range(1, 41))
    held: list[tuple[int, int]] = []
    for user in users:
        held += [(user, ns) for ns in rng.sample(namespaces, rng.choice([1, 1, 2, 2, 3]))]
    await seats(sidecar, *held)
    for user in users:
        mine = [ns for u, ns in held if u == user]
        if rng.random() < 0.3:
            await set_default(sidecar, user, rng.choice(mine))
    for namespace in namespaces:
        for feature in ("duo_chat", sub):
            ref = rng.choice(refs)
            if ref:
                await pin_namespace(sidecar, namespace, feature, ref)
    for _round in range(6):
        namespace, feature, ref = rng.choice(namespaces), rng.choice(["duo_chat", sub]), rng.choice(refs)
        apply = feature == "duo_chat" and rng.random() < 0.5
        preview = await pin_namespace(sidecar, namespace, feature, ref, validate_only=True, apply=apply)
        before = {u: await no_context_answer(sidecar, u, feature) for u in users}
        done = await pin_namespace(sidecar, namespace, feature, ref, apply=apply)
        after = {u: await no_context_answer(sidecar, u, feature) for u in users}
        assert done.impact == preview.impact
        changed = [u for u in users if before[u] != after[u]]
        newly = [
            u for u in changed if before[u] != "DEFAULT_NAMESPACE_REQUIRED" and after[u] == "DEFAULT_NAMESPACE_REQUIRED"
        ]
        assert preview.impact.no_context_users_changed == len(changed), (namespace, feature, ref, changed)
        assert preview.impact.users_newly_requiring_default_namespace == len(newly)
        assert preview.impact.seat_holders == len({u for u, ns in held if ns == namespace})


# -- the store query behind the impact ----------------------------------------------------------------------------


async def test_namespace_seat_holders(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.apply_seat_changes(
            [
                SeatChange(u, ns, True)
                for u, ns in [(1, 10), (2, 10), (2, 20), (3, 10), (3, 20), (4, 10), (4, 20), (4, 30), (5, 20), (6, 10)]
            ]
        )
        await tx.set_default_namespace(2, 10)  # governed by 10
        await tx.set_default_namespace(3, 20)  # routes through 20
        await tx.set_default_namespace(6, 77)  # stale, but 10 is the only seat: governed
    holders = await store.namespace_seat_holders(10)
    assert (holders.count, holders.governed) == (5, 3)  # users 1, 2, 3, 4, 6; governed 1, 2, 6
    assert sorted(sorted(others) for others in holders.contested) == [[20, 30]]  # user 4
    empty = await store.namespace_seat_holders(99)
    assert (empty.count, empty.governed, list(empty.contested)) == (0, 0, [])
