"""An admin write, once started, commits or rolls back whatever happens to its caller, and never leaves a
transaction open: a cancellation injected at every await on the database, one run per await point, on both backends.

The injection is deterministic: the k-th call into the database driver cancels the victim task just before it
awaits, so the driver's statement still runs (aiosqlite runs it on its own thread) while the awaiting task is gone.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest
import pytest_asyncio

from sidecar.catalog import load_catalog
from sidecar.control import AdminCommands
from sidecar.domain import Change, ChangeKind, DeploymentType, SeatChange
from sidecar.endpoints import EndpointPolicy
from sidecar.pipeline import ChangePipeline
from sidecar.state import ConfigState
from sidecar.store.base import Store
from sidecar.store.postgres import PostgresStore
from sidecar.store.sqlite import SQLiteStore
from sidecar.tokens import Keyring
from tests.conftest import Backend

pytestmark = pytest.mark.asyncio

# Every driver entry point a write goes through, per backend.
DRIVER_CALLS: dict[str, tuple[type, tuple[str, ...]]] = {
    "sqlite": (aiosqlite.Connection, ("execute", "executemany", "commit", "rollback")),
    "postgres": (asyncpg.connection.Connection, ("execute", "executemany", "fetch", "fetchrow", "fetchval")),
}
MAX_AWAIT_POINTS = 60


@dataclass
class CancelAt:
    """Cancels `victim` when the k-th driver call is made by a task that `counts` (then stays quiet)."""

    k: int
    counts: Callable[[], bool] = lambda: True
    victim: asyncio.Task[Any] | None = None
    calls: int = 0
    fired: bool = False
    seen: list[str] = field(default_factory=list)

    def before_call(self, name: str) -> None:
        if self.fired or not self.counts():
            return
        self.calls += 1
        self.seen.append(name)
        if self.calls == self.k and self.victim is not None:
            self.fired = True
            self.victim.cancel()


@contextmanager
def injected(backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[CancelAt]]:
    """Hooks the driver; the test appends the CancelAt of the current round."""
    rounds: list[CancelAt] = []
    cls, names = DRIVER_CALLS[backend]
    for name in names:
        original = getattr(cls, name)

        @functools.wraps(original)
        def hooked(self: Any, *args: Any, __original: Any = original, __name: str = name, **kwargs: Any) -> Any:
            if rounds:
                rounds[-1].before_call(__name)
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, hooked)
    yield rounds
    monkeypatch.undo()


async def open_transactions(backend: Backend, store: Store) -> int:
    if isinstance(store, SQLiteStore):
        writer = store._writer
        assert writer is not None
        return int(writer.in_transaction)
    assert isinstance(store, PostgresStore)
    # A connection dropped by a cancel ends its transaction when the server reads the close: allow it that long.
    for _ in range(100):
        count = int(
            await backend.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'duo-sidecar' AND state LIKE 'idle in transaction%'"
            )
        )
        if count == 0:
            break
        await asyncio.sleep(0.01)
    return count


@pytest_asyncio.fixture
async def commands(store: Store, tmp_path: Path) -> AsyncIterator[AdminCommands]:
    keyring = Keyring.open(tmp_path / "token.key")
    state = await ConfigState.load(store, keyring, DeploymentType.GITLAB_COM, load_catalog())
    pipeline = ChangePipeline(state)
    yield AdminCommands(pipeline, EndpointPolicy())
    await pipeline.drain(10)


async def assert_memory_matches_store(commands: AdminCommands) -> None:
    stored = await commands.state.store.load_state()
    snapshot = commands.snapshot
    assert snapshot.config_version == stored.config_version
    pins = {(ns, f): ref for ns, f, ref in stored.namespace_pins}
    assert {(ns, f): ref for ns, m in snapshot.namespace_pins.items() for f, ref in m.items()} == pins


async def test_a_cancelled_caller_leaves_the_write_whole_and_the_store_writable(
    backend: Backend, store: Store, commands: AdminCommands, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = ["claude_sonnet_4_6", "claude_sonnet_4_5_20250929_vertex"]
    seen_points = 0
    with injected(backend.name, monkeypatch) as rounds:
        for k in range(1, MAX_AWAIT_POINTS):
            round_ = CancelAt(k)
            rounds.append(round_)
            before = commands.snapshot.config_version
            # A pin and a seat batch for the same user: one write each, both cancelled at their k-th await.
            caller = asyncio.create_task(commands.update_namespace_selection("t", 10, "duo_chat", refs[k % 2]))
            round_.victim = caller
            pin_done = await _outcome(caller)
            round_.fired, round_.calls = False, 0
            seats = asyncio.create_task(
                commands.sync_seats("t", [SeatChange(7, 10, k % 2 == 0), SeatChange(7, 20, True)])
            )
            round_.victim = seats
            seats_done = await _outcome(seats)
            rounds.pop()
            await commands.pipeline.drain(10)  # the writes go on without their callers; wait for them here
            # Each write happened completely (its version, its snapshot) or not at all; memory equals the store.
            await assert_memory_matches_store(commands)
            assert commands.snapshot.config_version - before in (0, 1, 2)
            stored_user = await commands.state.store.load_user(7)
            assert await commands.state.user_routing(7) == stored_user
            assert await open_transactions(backend, store) == 0
            # The next write works at once.
            async with asyncio.timeout(5):
                await commands.update_namespace_selection("t", 30, "duo_chat", refs[k % 2])
            seen_points = max(seen_points, len(round_.seen))
            if pin_done and seats_done and not round_.fired:
                break  # k is past the last await point of both writes
        else:
            pytest.fail(f"writes still had await points after {MAX_AWAIT_POINTS}")
    assert seen_points >= 5  # the hook did see the driver calls


async def _outcome(task: asyncio.Task[Any]) -> bool:
    """True when the call returned, False when the caller was cancelled."""
    try:
        await task
    except asyncio.CancelledError:
        return False
    return True


async def test_cancelling_the_transaction_itself_at_any_await_never_leaves_it_open(
    backend: Backend, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the pipeline: the task that runs store.transaction() is cancelled (as at shutdown)."""
    change = Change(ChangeKind.INSTANCE_SELECTION, ("duo_chat",))
    with injected(backend.name, monkeypatch) as rounds:
        for k in range(1, MAX_AWAIT_POINTS):
            version = await store.config_version()

            async def write(ref: str) -> int:
                async with store.transaction() as tx:
                    await tx.set_instance_pin("duo_chat", ref)
                    return await tx.record_change("t", "Pin", "instance/features/duo_chat", "", ref, change)

            task = asyncio.create_task(write(f"model_{k}"))
            round_ = CancelAt(k, counts=lambda task=task: asyncio.current_task() is task, victim=task)  # type: ignore[misc]
            rounds.append(round_)
            done = await _outcome(task)
            rounds.pop()
            assert await open_transactions(backend, store) == 0
            after = await store.load_state()
            # Committed whole (version, pin and change record) or not at all.
            if after.config_version == version + 1:
                assert after.instance_pins["duo_chat"] == f"model_{k}"
                assert [r.version for r in await store.changes_since(version, 10)] == [version + 1]
            else:
                assert after.config_version == version
                assert after.instance_pins.get("duo_chat") != f"model_{k}"
                assert await store.changes_since(version, 10) == []
            async with asyncio.timeout(5):  # not wedged: the next transaction starts at once
                async with store.transaction() as tx:
                    await tx.set_instance_pin("other", "x")
            if done and not round_.fired:
                break
        else:
            pytest.fail(f"the write still had await points after {MAX_AWAIT_POINTS}")
