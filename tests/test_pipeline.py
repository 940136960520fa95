"""The change pipeline: changes are applied strictly in version order in every process, a full reload accounts for
the users of every version it jumps over, the workers of one sidecar are read-your-writes, and a newer schema
stops writes but not routing."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2, routing_pb2_grpc
from sidecar.catalog import load_catalog
from sidecar.domain import Change, ChangeKind, DeploymentType, SeatChange
from sidecar.state import ConfigState
from sidecar.store.base import Store, StoredState
from sidecar.store.migrations import LATEST_VERSION
from sidecar.tokens import Keyring
from sidecar.users import UserRouting
from tests.conftest import Backend
from tests.fleet import Client, config_for, fresh_postgres, model_of, wait_for, workers_up
from tests.helpers import error_details, run_sidecar

SEATS = Change(ChangeKind.SEAT_ASSIGNMENTS)


async def seat_change(store: Store, user: int, namespace: int, assigned: bool = True) -> int:
    """A seat change committed by another process (its own store object)."""
    async with store.transaction() as tx:
        await tx.apply_seat_changes([SeatChange(user, namespace, assigned)])
        change = Change(ChangeKind.SEAT_ASSIGNMENTS, user_ids=(user,))
        return await tx.record_change("other", "SyncSeatAssignments", "seatAssignments", "", "", change)


async def pin_change(store: Store, namespace: int, ref: str) -> int:
    async with store.transaction() as tx:
        await tx.set_namespace_pin(namespace, "duo_chat", ref)
        change = Change(ChangeKind.NAMESPACE_SELECTION, (f"{namespace}/duo_chat",))
        return await tx.record_change("other", "UpdateNamespaceModelSelection", "namespaces", "", "", change)


def record_sql(version: int, user: int) -> str:
    return (
        "INSERT INTO config_changes (version, kind, keys_json, user_ids_json) "
        f"VALUES ({version}, 'seat_assignments', '[]', '[{user}]')"
    )


@pytest_asyncio.fixture
async def other(backend: Backend) -> AsyncIterator[Store]:
    """A second store on the same database: another sidecar's writes."""
    opened = backend.new_store()
    await opened.open()
    yield opened
    await opened.close()


@pytest_asyncio.fixture
async def state(store: Store, tmp_path: Path) -> ConfigState:
    return await ConfigState.load(store, Keyring.open(tmp_path / "k"), DeploymentType.GITLAB_COM, load_catalog())


@pytest.mark.asyncio
async def test_a_reload_forgets_users_changed_between_reading_the_records_and_loading_the_state(
    state: ConfigState, store: Store, other: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seat_change(other, 1, 10)
    await state.catch_up()
    assert await state.user_routing(1) == UserRouting(frozenset({10}), 0)  # cached now
    await pin_change(other, 10, "claude_sonnet_4_6")  # a configuration change: the catch-up reloads

    load_state = store.load_state

    async def load_state_after_another_commit(changes_after: int | None = None, changes_limit: int = 0) -> StoredState:
        await seat_change(other, 1, 10, assigned=False)  # lands between the records read and the state loaded
        return await load_state(changes_after, changes_limit)

    monkeypatch.setattr(store, "load_state", load_state_after_another_commit)
    await state.catch_up()
    monkeypatch.undo()
    assert state.version == await store.config_version() == 3
    assert state.snapshot.namespace_pins[10]["duo_chat"] == "claude_sonnet_4_6"
    assert await state.user_routing(1) == UserRouting(frozenset(), 0)  # not the removed seat


@pytest.mark.asyncio
async def test_a_version_visible_before_an_earlier_one_is_waited_for_not_skipped(
    backend: Backend, state: ConfigState, store: Store, other: Store
) -> None:
    await seat_change(other, 1, 10)
    await seat_change(other, 2, 10)
    await state.catch_up()
    assert await state.user_routing(1) == UserRouting(frozenset({10}), 0)
    assert await state.user_routing(2) == UserRouting(frozenset({10}), 0)
    # Version 4 becomes visible while version 3 is not (a writer that took 3 has not committed yet): written
    # here by hand, as PostgreSQL's row lock and SQLite's single writer never let it happen by themselves.
    await backend.execute(record_sql(4, user=2))
    await backend.execute("DELETE FROM seat_assignments WHERE user_id = 2")
    await backend.execute("UPDATE config_version SET version = 4")
    catching_up = asyncio.create_task(state.catch_up())
    await asyncio.sleep(0.2)
    assert not catching_up.done() and state.version == 2  # waits at the gap, applies nothing past it
    await backend.execute("DELETE FROM seat_assignments WHERE user_id = 1")
    await backend.execute(record_sql(3, user=1))
    assert await catching_up == 2
    assert state.version == 4
    assert await state.user_routing(1) == UserRouting(frozenset(), 0)
    assert await state.user_routing(2) == UserRouting(frozenset(), 0)


@pytest.mark.asyncio
async def test_a_gap_that_never_fills_ends_in_a_full_reload_that_drops_every_cached_user(
    backend: Backend, state: ConfigState, store: Store, other: Store
) -> None:
    """Versions without change records (written by an older sidecar) cannot say which users they touched."""
    await seat_change(other, 1, 10)
    await state.catch_up()
    assert await state.user_routing(1) == UserRouting(frozenset({10}), 0)
    await backend.execute("DELETE FROM seat_assignments WHERE user_id = 1")
    await backend.execute("UPDATE config_version SET version = 2")  # no change record
    await seat_change(other, 2, 10)  # version 3, with its record
    async with asyncio.timeout(10):
        await state.catch_up()
    assert state.version == 3
    assert await state.user_routing(1) == UserRouting(frozenset(), 0)


# -- processes ---------------------------------------------------------------------------------------------


@contextmanager
def workers_sidecar(tmp_path: Path, storage: str) -> Iterator[Client]:
    config, port = config_for(tmp_path / "node", storage, tmp_path / "token.key")
    config.write_text(config.read_text().replace("[server]\n", "[server]\nworkers = 2\n"))
    with run_sidecar(config, port) as supervisor:
        # Health answers as soon as one worker serves; an admin call waits for every running worker, so the test
        # starts once both are up (a worker still starting counts as running and would be waited for).
        metrics = re.search(r'\[metrics\]\nlisten = "([^"]+)"', config.read_text())
        assert metrics is not None
        wait_for(lambda: workers_up(metrics.group(1)) == {"0", "1"}, 30)
        client = Client(supervisor)
        try:
            yield client
        finally:
            client.channel.close()


def answer_on_a_new_connection(address: str) -> str:
    # A local subchannel pool: a new TCP connection, which the kernel hands to either worker.
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        request = routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat", root_namespace_id=10)
        return str(routing_pb2_grpc.RoutingServiceStub(channel).ResolveModel(request, timeout=5).model_identifier)


def check_read_your_writes(client: Client) -> None:
    address = client.channel._channel.target().decode()
    models = ["claude_sonnet_4_6", "claude_sonnet_4_5_20250929_vertex", "claude_sonnet_4_5_20250929"]
    for round_ in range(6):
        model = models[round_ % len(models)]
        client.pin(10, model)
        answers = [answer_on_a_new_connection(address) for _ in range(50)]
        assert answers == [model] * 50, f"round {round_}: {answers.count(model)} of 50 saw {model}"


def test_workers_on_sqlite_serve_a_change_when_the_admin_call_returns(tmp_path: Path) -> None:
    with workers_sidecar(tmp_path, f'[storage]\npath = "{tmp_path / "db" / "s.db"}"') as client:
        check_read_your_writes(client)


def test_workers_on_postgres_serve_a_change_when_the_admin_call_returns(tmp_path: Path) -> None:
    with fresh_postgres() as dsn, workers_sidecar(tmp_path, f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"') as c:
        check_read_your_writes(c)


def test_a_newer_schema_stops_writes_but_not_routing(tmp_path: Path) -> None:
    database = tmp_path / "db" / "s.db"
    config, port = config_for(tmp_path / "node", f'[storage]\npath = "{database}"', tmp_path / "token.key")
    with run_sidecar(config, port) as sidecar:
        client = Client(sidecar)
        client.seats((1, 10))
        client.pin(10, "claude_sonnet_4_6")
        # A newer sidecar migrates the database while this one runs.
        with sqlite3.connect(database) as db:
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from the future', '')",
                (LATEST_VERSION + 1,),
            )
        with pytest.raises(grpc.RpcError) as refused:
            client.pin(10, "claude_sonnet_4_5_20250929_vertex")
        details = error_details(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SCHEMA_TOO_NEW")
        assert "newer than this sidecar supports" in details.message
        with sqlite3.connect(database) as db:
            assert db.execute("SELECT offered_model_ref FROM namespace_model_selections").fetchall() == [
                ("claude_sonnet_4_6",)
            ]
        assert model_of(client, 1) == "claude_sonnet_4_6"  # routing goes on from the snapshot
        health = health_pb2_grpc.HealthStub(client.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="gitlab.duo.routing.v1.AdminService"), timeout=2)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        client.channel.close()
    assert sidecar.logs().count("this sidecar no longer writes") == 1


def test_the_follower_notices_a_newer_schema_without_a_write(tmp_path: Path) -> None:
    database = tmp_path / "db" / "s.db"
    config, port = config_for(tmp_path / "node", f'[storage]\npath = "{database}"', tmp_path / "token.key")
    with run_sidecar(config, port) as sidecar:
        client = Client(sidecar)
        with sqlite3.connect(database) as db:
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from the future', '')",
                (LATEST_VERSION + 1,),
            )
        health = health_pb2_grpc.HealthStub(client.channel)
        admin = health_pb2.HealthCheckRequest(service="gitlab.duo.routing.v1.AdminService")
        wait_for(lambda: health.Check(admin, timeout=2).status == health_pb2.HealthCheckResponse.NOT_SERVING, 5)
        with pytest.raises(grpc.RpcError) as refused:
            client.admin.SetUserDefaultNamespace(
                admin_pb2.SetUserDefaultNamespaceRequest(user_id=1, namespace_id=0), timeout=5
            )
        assert error_details(refused.value).reason == "SCHEMA_TOO_NEW"
        client.channel.close()
