"""The storage contract (sidecar.store.base), checked directly against every backend: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from sidecar.domain import (
    Change,
    ChangeKind,
    ChangeRecord,
    FeatureProvider,
    FeatureSetting,
    ModelFamily,
    Platform,
    SeatChange,
    SelfHostedModel,
)
from sidecar.store.base import KEEP_TOKEN, SchemaTooNewError, Store
from sidecar.store.migrations import LATEST_VERSION, MIGRATIONS
from sidecar.store.postgres import NOTIFY_CHANNEL, PostgresStore
from sidecar.tokens import EncryptedToken
from sidecar.users import UserRouting
from tests.conftest import Backend
from tests.helpers import free_port, run_cli

pytestmark = pytest.mark.asyncio


def model(model_id: str = "m1", name: str = "Mistral on vLLM", **changes: Any) -> SelfHostedModel:
    created = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    fields: dict[str, Any] = {
        "id": model_id,
        "name": name,
        "family": ModelFamily.MISTRAL,
        "platform": Platform.OPENAI_COMPATIBLE,
        "endpoint": "http://vllm.internal:8000/v1",
        "identifier": "custom_openai/mistral",
        "api_token_set": False,
        "create_time": created,
        "update_time": created,
        **changes,
    }
    return SelfHostedModel(**fields)


CONFIG_CHANGE = Change(ChangeKind.INSTANCE_SELECTION, ("duo_chat",))
TOKEN = EncryptedToken("key-1", b"\x00\x01ciphertext\xff")


async def change(store: Store, resource: str = "things/1", action: str = "Update") -> int:
    async with store.transaction() as tx:
        return await tx.record_change("tester", action, resource, '{"before": 1}', '{"after": 2}', CONFIG_CHANGE)


# -- migrations ---------------------------------------------------------------------------------------------


async def test_migrations_run_once_when_several_stores_start_at_once(backend: Backend) -> None:
    stores = [backend.new_store() for _ in range(4)]
    opened = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
    try:
        assert opened == [None] * 4
        assert [await s.schema_version() for s in stores] == [LATEST_VERSION] * 4
        assert await backend.fetchval("SELECT COUNT(*) FROM schema_migrations") == len(MIGRATIONS)
        assert await backend.fetchval("SELECT COUNT(*) FROM config_version") == 1
        assert await stores[0].config_version() == 0
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_migrations_are_idempotent(backend: Backend) -> None:
    for _ in range(2):
        store = backend.new_store()
        await store.open()
        assert await store.schema_version() == LATEST_VERSION
        await change(store)
        await store.close()
    assert await backend.fetchval("SELECT COUNT(*) FROM schema_migrations") == len(MIGRATIONS)
    store = backend.new_store()
    await store.open()
    try:
        assert await store.config_version() == 2  # the data survived the second open
    finally:
        await store.close()


async def test_a_schema_newer_than_this_sidecar_is_refused(backend: Backend) -> None:
    store = backend.new_store()
    await store.open()
    await store.close()
    newer = LATEST_VERSION + 1
    await backend.execute(
        f"INSERT INTO schema_migrations (version, name, applied_at) VALUES ({newer}, 'from the future', "
        "'2030-01-01T00:00:00+00:00')"
    )
    refused = backend.new_store()
    with pytest.raises(SchemaTooNewError) as raised:
        await refused.open()
    assert f"database schema version {newer} is newer than this sidecar supports ({LATEST_VERSION})" in str(
        raised.value
    )
    assert "run the newer sidecar or restore a backup" in str(raised.value)
    await refused.close()  # nothing left open; closing again is harmless
    assert await backend.fetchval("SELECT COUNT(*) FROM schema_migrations") == len(MIGRATIONS) + 1


# -- entities -----------------------------------------------------------------------------------------------


async def test_self_hosted_model_crud(store: Store) -> None:
    first = model()
    async with store.transaction() as tx:
        assert await tx.get_self_hosted_model("m1") is None
        await tx.put_self_hosted_model(first, TOKEN)
    async with store.transaction() as tx:
        stored = await tx.get_self_hosted_model("m1")
        assert stored == model(api_token_set=True)
        assert stored is not None and stored.create_time.utcoffset() == timedelta(0)
        assert await tx.find_self_hosted_model_by_name("Mistral on vLLM") == stored
        assert await tx.find_self_hosted_model_by_name("mistral on vllm") is None
        later = first.update_time + timedelta(minutes=5)
        await tx.put_self_hosted_model(
            model(name="Renamed", family=ModelFamily.GPT, platform=Platform.AZURE_OPENAI, update_time=later),
            KEEP_TOKEN,
        )
    assert (await store.load_state()).api_tokens == {"m1": TOKEN}
    async with store.transaction() as tx:
        renamed = await tx.get_self_hosted_model("m1")
        assert renamed is not None
        assert (renamed.name, renamed.family, renamed.platform) == ("Renamed", ModelFamily.GPT, Platform.AZURE_OPENAI)
        assert (renamed.api_token_set, renamed.create_time, renamed.update_time) == (True, first.create_time, later)
        assert await tx.find_self_hosted_model_by_name("Mistral on vLLM") is None
        await tx.put_self_hosted_model(model(name="Renamed"), None)  # None clears the token
    assert (await store.load_state()).api_tokens == {}
    async with store.transaction() as tx:
        cleared = await tx.get_self_hosted_model("m1")
        assert cleared is not None and cleared.api_token_set is False
        await tx.delete_self_hosted_model("m1")
        assert await tx.get_self_hosted_model("m1") is None
    assert (await store.load_state()).api_tokens == {}
    assert (await store.load_state()).self_hosted_models == []


async def test_feature_settings_and_the_features_using_a_model(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.put_self_hosted_model(model(), None)
        assert await tx.get_feature_setting("duo_chat") is None
        for feature in ("duo_chat_explain_code", "duo_chat", "code_generations", "Code_z"):
            await tx.put_feature_setting(FeatureSetting(feature, FeatureProvider.SELF_HOSTED, "m1"))
        await tx.put_feature_setting(FeatureSetting("code_completions", FeatureProvider.DISABLED))
    async with store.transaction() as tx:
        assert await tx.get_feature_setting("duo_chat") == FeatureSetting("duo_chat", FeatureProvider.SELF_HOSTED, "m1")
        assert await tx.get_feature_setting("code_completions") == FeatureSetting(
            "code_completions", FeatureProvider.DISABLED, ""
        )
        # Byte order, the same on both backends whatever the database's collation.
        assert await tx.features_using_model("m1") == [
            "Code_z",
            "code_generations",
            "duo_chat",
            "duo_chat_explain_code",
        ]
        await tx.put_feature_setting(FeatureSetting("duo_chat", FeatureProvider.VENDORED))
        assert await tx.get_feature_setting("duo_chat") == FeatureSetting("duo_chat", FeatureProvider.VENDORED, "")
        assert await tx.features_using_model("m1") == ["Code_z", "code_generations", "duo_chat_explain_code"]
        assert await tx.features_using_model("other") == []


async def test_instance_and_namespace_pins(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.get_instance_pin("duo_chat") is None
        assert await tx.get_namespace_pin(10, "duo_chat") is None
        await tx.set_instance_pin("duo_chat", "claude_sonnet_4_6")
        await tx.set_instance_pin("duo_chat", "claude_sonnet_4_5_20250929")  # replaces
        await tx.set_instance_pin("code_completions", "codestral_2508_vertex")
        await tx.set_namespace_pin(10, "duo_chat", "claude_sonnet_4_6")
        await tx.set_namespace_pin(10, "duo_chat", "claude_sonnet_4_5_20250929_vertex")
        await tx.set_namespace_pin(20, "duo_chat", "claude_sonnet_4_6")
    async with store.transaction() as tx:
        assert await tx.get_instance_pin("duo_chat") == "claude_sonnet_4_5_20250929"
        assert await tx.get_namespace_pin(10, "duo_chat") == "claude_sonnet_4_5_20250929_vertex"
        assert await tx.get_namespace_pin(20, "duo_chat") == "claude_sonnet_4_6"
        assert await tx.get_namespace_pin(20, "code_completions") is None
        await tx.set_instance_pin("duo_chat", None)  # None (or empty) removes the pin
        await tx.set_namespace_pin(10, "duo_chat", "")
        await tx.set_namespace_pin(30, "duo_chat", None)  # removing what is not there is fine
        assert await tx.get_instance_pin("duo_chat") is None
        assert await tx.get_namespace_pin(10, "duo_chat") is None
    state = await store.load_state()
    assert state.instance_pins == {"code_completions": "codestral_2508_vertex"}
    assert state.namespace_pins == [(20, "duo_chat", "claude_sonnet_4_6")]


async def test_model_allowlists(store: Store) -> None:
    """Namespace 0 is the instance's allowlist; a row exists while the allowlist is on, refs in the order given."""
    async with store.transaction() as tx:
        assert await tx.get_allowlist(10, "duo_agent_platform_agentic_chat") is None
        await tx.set_allowlist(10, "duo_agent_platform_agentic_chat", ("b_model", "a_model"))
        await tx.set_allowlist(20, "duo_agent_platform_agentic_chat", ())  # on, with no refs of its own
        await tx.set_allowlist(0, "duo_agent_platform_agentic_chat", ("a_model",))
        await tx.set_allowlist(0, "duo_agent_platform_agentic_chat", ("c_model", "a_model"))  # replaces
        await tx.set_allowlist(30, "duo_agent_platform_agentic_chat", ("a_model",))
        await tx.set_allowlist(30, "duo_agent_platform_agentic_chat", None)  # off: forgotten
        await tx.set_allowlist(40, "duo_agent_platform_agentic_chat", None)  # turning off what is off is fine
        assert await tx.get_allowlist(10, "duo_agent_platform_agentic_chat") == ("b_model", "a_model")
        assert await tx.get_allowlist(20, "duo_agent_platform_agentic_chat") == ()
        assert await tx.get_allowlist(30, "duo_agent_platform_agentic_chat") is None
    state = await store.load_state()
    assert sorted(state.allowlists) == [
        (0, "duo_agent_platform_agentic_chat", ("c_model", "a_model")),
        (10, "duo_agent_platform_agentic_chat", ("b_model", "a_model")),
        (20, "duo_agent_platform_agentic_chat", ()),
    ]


async def test_default_namespaces(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.get_default_namespace(1) == 0
        await tx.set_default_namespace(1, 10)
        await tx.set_default_namespace(1, 20)
        await tx.set_default_namespace(2, 10)
        assert await tx.get_default_namespace(1) == 20
        await tx.set_default_namespace(2, 0)  # 0 clears
        assert await tx.get_default_namespace(2) == 0
    assert (await store.load_user(1)).default_namespace == 20
    assert (await store.load_user(2)).default_namespace == 0


# -- seats --------------------------------------------------------------------------------------------------


async def test_seat_changes_return_only_effective_changes(store: Store) -> None:
    async with store.transaction() as tx:
        applied = await tx.apply_seat_changes(
            [
                SeatChange(1, 10, True),
                SeatChange(1, 10, True),  # already assigned by the change before
                SeatChange(1, 20, True),
                SeatChange(2, 10, False),  # never held
                SeatChange(3, 30, True),
            ]
        )
        assert applied == [SeatChange(1, 10, True), SeatChange(1, 20, True), SeatChange(3, 30, True)]
        assert await tx.user_has_seat(1, 20) and not await tx.user_has_seat(2, 10)
    async with store.transaction() as tx:
        applied = await tx.apply_seat_changes(
            [SeatChange(1, 10, True), SeatChange(1, 20, False), SeatChange(1, 20, False), SeatChange(4, 40, False)]
        )
        assert applied == [SeatChange(1, 20, False)]
        assert await tx.apply_seat_changes([]) == []
    assert await store.list_seat_assignments(0, 0, None, 100) == [(1, 10), (3, 30)]


async def test_assign_then_remove_in_one_batch_writes_nothing(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.apply_seat_changes([SeatChange(1, 10, True)])
    async with store.transaction() as tx:
        applied = await tx.apply_seat_changes(
            [
                SeatChange(2, 20, True),
                SeatChange(2, 20, False),  # assigned and removed again: nothing stored
                SeatChange(1, 10, False),
                SeatChange(1, 10, True),  # removed and assigned again: still held
            ]
        )
        assert applied == [
            SeatChange(2, 20, True),
            SeatChange(2, 20, False),
            SeatChange(1, 10, False),
            SeatChange(1, 10, True),
        ]
        assert not await tx.user_has_seat(2, 20)
        assert await tx.user_has_seat(1, 10)
    assert await store.list_seat_assignments(0, 0, None, 100) == [(1, 10)]


async def test_seat_assignments_page_by_keyset(store: Store) -> None:
    pairs = [(u, n) for u in (3, 1, 2, 10) for n in (30, 10, 20)]
    async with store.transaction() as tx:
        await tx.apply_seat_changes([SeatChange(u, n, True) for u, n in pairs])
    everything = sorted(pairs)
    assert await store.list_seat_assignments(0, 0, None, 100) == everything
    pages: list[tuple[int, int]] = []
    after: tuple[int, int] | None = None
    while True:
        page = await store.list_seat_assignments(0, 0, after, 5)
        pages += page
        if len(page) < 5:
            break
        after = page[-1]
    assert pages == everything
    assert await store.list_seat_assignments(2, 0, None, 100) == [(2, 10), (2, 20), (2, 30)]
    assert await store.list_seat_assignments(2, 0, (2, 10), 1) == [(2, 20)]
    assert await store.list_seat_assignments(0, 20, None, 100) == [(1, 20), (2, 20), (3, 20), (10, 20)]
    assert await store.list_seat_assignments(0, 20, (2, 20), 2) == [(3, 20), (10, 20)]
    assert await store.list_seat_assignments(3, 30, None, 100) == [(3, 30)]
    assert await store.list_seat_assignments(3, 40, None, 100) == []
    assert await store.list_seat_assignments(0, 0, (10, 30), 100) == []


# -- audit events and config versions -----------------------------------------------------------------------


async def test_config_version_is_bumped_once_per_change_and_written_to_the_audit_event(store: Store) -> None:
    assert await store.config_version() == 0
    before = datetime.now(UTC)
    versions = [await change(store, f"things/{i}") for i in range(3)]
    assert versions == [1, 2, 3]
    assert await store.config_version() == 3
    async with store.transaction() as tx:  # no record_change: no new version
        await tx.set_instance_pin("duo_chat", "claude_sonnet_4_6")
    assert await store.config_version() == 3
    async with store.transaction() as tx:  # two changes in one transaction: two versions
        assert await tx.record_change("a", "One", "x/1", "", "1", CONFIG_CHANGE) == 4
        assert await tx.record_change("a", "Two", "x/2", "", "2", CONFIG_CHANGE) == 5
    assert (await store.load_state()).config_version == await store.config_version() == 5
    newest = (await store.list_audit_events("", None, 1))[0]
    assert (newest.id, newest.actor, newest.action, newest.resource) == (5, "a", "Two", "x/2")
    assert (newest.before_json, newest.after_json, newest.config_version) == ("", "2", 5)
    oldest = (await store.list_audit_events("things/0", None, 10))[0]
    assert (oldest.before_json, oldest.after_json, oldest.config_version) == ('{"before": 1}', '{"after": 2}', 1)
    assert before - timedelta(seconds=5) <= oldest.time <= datetime.now(UTC) + timedelta(seconds=5)
    assert oldest.time.utcoffset() == timedelta(0)


async def test_changes_since_reads_the_typed_change_records_oldest_first(store: Store) -> None:
    for i in range(4):
        await change(store, f"things/{i}")
    assert [r.version for r in await store.changes_since(0, 100)] == [1, 2, 3, 4]
    assert [(r.version, r.change) for r in await store.changes_since(1, 2)] == [
        (2, CONFIG_CHANGE),
        (3, CONFIG_CHANGE),
    ]
    assert await store.changes_since(4, 100) == []
    async with store.transaction() as tx:
        users = Change(ChangeKind.SEAT_ASSIGNMENTS, user_ids=(7, 9))
        assert await tx.record_change("tester", "SyncSeatAssignments", "seatAssignments", "", "", users) == 5
    assert await store.changes_since(4, 100) == [ChangeRecord(5, users)]
    state = await store.load_state(changes_after=3, changes_limit=10)
    assert (state.config_version, [r.version for r in state.changes]) == (5, [4, 5])


async def test_watch_signals_changes_committed_elsewhere(backend: Backend, store: Store) -> None:
    signalled = asyncio.Event()
    watcher = asyncio.create_task(store.watch(signalled.set))
    other = backend.new_store()
    await other.open()
    try:
        await asyncio.sleep(0.5)  # listening (PostgreSQL signals once on connecting: nothing was missed)
        signalled.clear()
        await change(other)
        await asyncio.wait_for(signalled.wait(), 5)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await other.close()


async def test_audit_events_page_newest_first_by_keyset(store: Store) -> None:
    resources = ["namespaces/1/features/duo_chat", "namespaces/10/features/duo_chat", "seatAssignments"] * 3
    resources.append("namespaces/1_%/x")  # LIKE wildcards in a prefix are plain characters
    for resource in resources:
        await change(store, resource)
    events = await store.list_audit_events("", None, 100)
    assert [e.id for e in events] == list(range(len(resources), 0, -1))
    assert [e.config_version for e in events] == [e.id for e in events]
    pages: list[int] = []
    before: int | None = None
    while True:
        page = await store.list_audit_events("", before, 4)
        pages += [e.id for e in page]
        if len(page) < 4:
            break
        before = page[-1].id
    assert pages == [e.id for e in events]
    prefixed = await store.list_audit_events("namespaces/1/", None, 100)
    assert [e.id for e in prefixed] == [7, 4, 1]
    assert [e.id for e in await store.list_audit_events("namespaces/1/", 7, 1)] == [4]
    assert [e.id for e in await store.list_audit_events("namespaces/1", None, 100)] == [10, 8, 7, 5, 4, 2, 1]
    assert [e.id for e in await store.list_audit_events("namespaces/1_%", None, 100)] == [10]
    assert [e.id for e in await store.list_audit_events("namespaces/1_", None, 100)] == [10]
    assert await store.list_audit_events("nothing/", None, 100) == []
    assert await store.list_audit_events("", 1, 100) == []


async def test_concurrent_writers_get_distinct_consecutive_versions(backend: Backend, store: Store) -> None:
    """Two stores on one database (two sidecars sharing PostgreSQL, or two processes sharing the SQLite file)."""
    other = backend.new_store()
    await other.open()
    try:

        async def write(target: Store, i: int) -> int:
            async with target.transaction() as tx:
                await tx.apply_seat_changes([SeatChange(i, 1, True)])
                await asyncio.sleep(0)
                return await tx.record_change(
                    "tester", "SyncSeatAssignments", "seatAssignments", "", str(i), CONFIG_CHANGE
                )

        versions = await asyncio.gather(*(write(store if i % 2 else other, i) for i in range(1, 21)))
        assert sorted(versions) == list(range(1, 21))
        assert await other.config_version() == 20
        events = await store.list_audit_events("", None, 100)
        assert sorted(e.config_version for e in events) == list(range(1, 21))
    finally:
        await other.close()


# -- state, transactions, tokens ----------------------------------------------------------------------------


async def test_load_state_and_load_user_return_everything(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.put_self_hosted_model(model("m1", "One"), TOKEN)
        await tx.put_self_hosted_model(model("m2", "Two"), None)
        await tx.put_feature_setting(FeatureSetting("duo_chat", FeatureProvider.SELF_HOSTED, "m1"))
        await tx.set_instance_pin("code_completions", "codestral_2508_vertex")
        await tx.set_namespace_pin(10, "duo_chat", "claude_sonnet_4_6")
        await tx.apply_seat_changes([SeatChange(1, 10, True), SeatChange(2, 10, True)])
        await tx.set_default_namespace(1, 10)
        await tx.record_change("tester", "Everything", "all", "", "", CONFIG_CHANGE)
    state = await store.load_state()
    assert state.config_version == 1
    assert sorted(state.self_hosted_models, key=lambda m: m.id) == [
        model("m1", "One", api_token_set=True),
        model("m2", "Two"),
    ]
    assert state.feature_settings == [FeatureSetting("duo_chat", FeatureProvider.SELF_HOSTED, "m1")]
    assert state.instance_pins == {"code_completions": "codestral_2508_vertex"}
    assert state.namespace_pins == [(10, "duo_chat", "claude_sonnet_4_6")]
    assert await store.load_user(1) == UserRouting(frozenset({10}), 10)
    assert await store.load_user(2) == UserRouting(frozenset({10}), 0)
    assert await store.load_user(3) == UserRouting(frozenset(), 0)
    assert state.api_tokens == {"m1": TOKEN}


async def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    class Refused(Exception):
        pass

    with pytest.raises(Refused):
        async with store.transaction() as tx:
            await tx.put_self_hosted_model(model(), TOKEN)
            await tx.put_feature_setting(FeatureSetting("duo_chat", FeatureProvider.SELF_HOSTED, "m1"))
            await tx.set_instance_pin("duo_chat", "claude_sonnet_4_6")
            await tx.set_namespace_pin(10, "duo_chat", "claude_sonnet_4_6")
            await tx.apply_seat_changes([SeatChange(1, 10, True)])
            await tx.set_default_namespace(1, 10)
            await tx.record_change("tester", "Everything", "all", "", "", CONFIG_CHANGE)
            raise Refused
    state = await store.load_state()
    assert (state.config_version, state.self_hosted_models, state.feature_settings) == (0, [], [])
    assert (state.instance_pins, state.namespace_pins, state.api_tokens) == ({}, [], {})
    assert await store.load_user(1) == UserRouting(frozenset(), 0)
    assert await store.list_seat_assignments(0, 0, None, 10) == []
    assert await store.list_audit_events("", None, 10) == []
    assert await store.config_version() == 0
    assert await change(store) == 1  # the store still works after the rollback


async def test_encrypted_tokens_are_listed_and_replaced(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.put_self_hosted_model(model("m1", "One"), TOKEN)
        await tx.put_self_hosted_model(model("m2", "Two"), EncryptedToken("key-1", b"two"))
        await tx.put_self_hosted_model(model("m3", "Three"), None)
        assert await tx.encrypted_tokens() == {"m1": TOKEN, "m2": EncryptedToken("key-1", b"two")}
    rotated = {"m1": EncryptedToken("key-2", bytes(range(256))), "m2": EncryptedToken("key-2", b"")}
    async with store.transaction() as tx:
        for model_id, token in rotated.items():
            await tx.set_encrypted_token(model_id, token)
        assert await tx.encrypted_tokens() == rotated
    assert (await store.load_state()).api_tokens == rotated


async def test_a_closed_store_fails_its_probe(backend: Backend) -> None:
    store = backend.new_store()
    await store.open()
    await store.probe()
    await store.close()
    with pytest.raises(Exception, match="not open"):
        await store.probe()


# -- PostgreSQL only --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_every_commit_notifies_listeners_with_its_config_version(backend: Backend, store: Store) -> None:
    assert isinstance(store, PostgresStore)
    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(store.dsn)
    await listener.add_listener(NOTIFY_CHANNEL, lambda _c, _pid, _channel, payload: received.put_nowait(payload))
    try:
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.record_change("tester", "Rolled back", "x", "", "", CONFIG_CHANGE)
                raise RuntimeError("rolled back: no notification")
        async with store.transaction() as tx:
            await tx.set_instance_pin("duo_chat", "claude_sonnet_4_6")  # no change recorded: no notification
        assert await change(store) == 1
        async with store.transaction() as tx:
            await tx.record_change("tester", "One", "x/1", "", "", CONFIG_CHANGE)
            await tx.record_change("tester", "Two", "x/2", "", "", CONFIG_CHANGE)
        payloads = [await asyncio.wait_for(received.get(), 5) for _ in range(3)]
        assert payloads == ["1", "2", "3"]
        await asyncio.sleep(0.1)
        assert received.empty()
    finally:
        await listener.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_column_types(backend: Backend, store: Store) -> None:
    types = await backend.fetchval(
        "SELECT string_agg(table_name || '.' || column_name || ' ' || data_type, ', ' "
        "ORDER BY table_name, column_name) "
        "FROM information_schema.columns WHERE column_name IN ('api_token_ciphertext', 'time', 'create_time')"
    )
    assert types == (
        "audit_events.time timestamp with time zone, self_hosted_models.api_token_ciphertext bytea, "
        "self_hosted_models.create_time timestamp with time zone"
    )


async def test_duo_sidecar_migrate_on_postgres_never_prints_the_password(postgres_dsn: str, tmp_path: Path) -> None:
    url = urlsplit(postgres_dsn)
    user, _, host = url.netloc.rpartition("@")
    with_password = urlunsplit(url._replace(netloc=f"{user or 'postgres'}:hunter2@{host}"))  # trust auth ignores it
    config = tmp_path / "pg.toml"
    config.write_text(
        f'[storage]\nbackend = "postgres"\ndsn = "{with_password}"\ntoken_key_file = "{tmp_path / "token.key"}"\n'
    )
    for _ in range(2):  # the second run finds nothing to do
        result = await asyncio.to_thread(run_cli, "migrate", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"postgres database at postgresql://{user or 'postgres'}:***@{host}/duo_test_" in result.stdout
        assert f"schema version {LATEST_VERSION}" in result.stdout
        assert "hunter2" not in result.stdout + result.stderr

    unreachable = urlunsplit(url._replace(netloc=f"postgres:hunter2@127.0.0.1:{free_port()}"))
    config.write_text(f'[storage]\nbackend = "postgres"\ndsn = "{unreachable}"\ntoken_key_file = "{tmp_path / "k"}"\n')
    result = await asyncio.to_thread(run_cli, "migrate", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot connect to PostgreSQL" in result.stderr and "postgres:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
