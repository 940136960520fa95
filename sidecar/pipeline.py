"""The one way an admin change is made: commit it to the store with its change record and audit event, apply it
to this process's configuration, and wait until every worker of this sidecar serves it.

A write, once started, runs in a task of its own: a caller that is cancelled (a Rails request timeout) only stops
waiting, and the write commits or rolls back all the same. Writes of one process run one at a time, so they are
applied in the order they committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from sidecar.domain import Change
from sidecar.errors import DuoError, ErrorCode, failed_precondition
from sidecar.state import ConfigState, SnapshotPatch
from sidecar.store.base import SchemaTooNewError, StoreTx

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PROPAGATION_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Audit:
    """The audit event of a change, for people."""

    action: str
    resource: str
    before_json: str
    after_json: str


@dataclass(frozen=True)
class Staged(Generic[T]):
    """What a write did inside its transaction. `change` None: nothing changed, nothing is recorded."""

    result: T
    change: Change | None = None
    audit: Audit | None = None
    patch: SnapshotPatch | None = None  # the change applied to the snapshot
    effects: Callable[[], None] | None = None  # the change applied to the user cache or the token vault
    # A change that touches several settings in one version ("apply to all"): one more audit event for each other.
    more_audits: tuple[Audit, ...] = ()


Write = Callable[[StoreTx], Awaitable[Staged[T]]]


class Peers(Protocol):
    """The other workers of this sidecar (sidecar.worker_board.WorkerBoard)."""

    def notify_peers(self) -> None: ...

    async def wait_for_peers(self, version: int, timeout: float) -> list[int]: ...  # noqa: ASYNC109


class ChangePipeline:
    def __init__(
        self,
        state: ConfigState,
        peers: Peers | None = None,
        propagation_timeout: float = DEFAULT_PROPAGATION_TIMEOUT_SECONDS,
    ) -> None:
        self.state = state
        self.store = state.store
        self.peers = peers
        self.propagation_timeout = propagation_timeout
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Task[object]] = set()

    async def commit(self, actor: str, write: Write[T]) -> tuple[T, int]:
        """Runs `write` in one transaction and returns its result and the config version it produced (the
        version held, when it changed nothing)."""
        task: asyncio.Task[tuple[T, int]] = asyncio.create_task(self._commit(actor, write))
        self._writes.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the caller may have stopped waiting, its answer went nowhere

    async def drain(self, seconds: float) -> None:
        """Waits for writes in flight (at shutdown, before the store closes)."""
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=seconds)

    async def _commit(self, actor: str, write: Write[T]) -> tuple[T, int]:
        async with self._lock:
            if self.state.schema_problem:
                raise _schema_too_new(self.state.schema_problem)
            try:
                async with self.store.transaction() as tx:
                    staged = await write(tx)
                    if staged.change is None:
                        return staged.result, self.state.version
                    audit = staged.audit or Audit(staged.change.kind.value, "", "", "")
                    version = await tx.record_change(
                        actor, audit.action, audit.resource, audit.before_json, audit.after_json, staged.change
                    )
                    for more in staged.more_audits:
                        await tx.record_audit_event(
                            actor, more.action, more.resource, more.before_json, more.after_json, version
                        )
            except SchemaTooNewError as exc:
                self.state.schema_too_new(str(exc))
                raise _schema_too_new(str(exc)) from None
            await self.state.apply_committed(version, staged.patch, staged.effects)
        await self._propagate(version)
        return staged.result, version

    async def _propagate(self, version: int) -> None:
        """Returns once every worker of this sidecar serves `version`."""
        if self.peers is None:
            return
        self.peers.notify_peers()
        lagging = await self.peers.wait_for_peers(version, self.propagation_timeout)
        if lagging:
            workers = ", ".join(str(i) for i in lagging)
            raise DuoError(
                ErrorCode.DEADLINE_EXCEEDED,
                "CHANGE_NOT_PROPAGATED",
                f"the change was committed as configuration version {version}, but worker(s) {workers} of this "
                f"sidecar did not serve it within {self.propagation_timeout:g} s; they apply it when they can "
                "reach the store again. Do not repeat the change: read it back (duo-admin) to confirm",
                metadata={"config_version": str(version), "workers": workers},
            )


def _schema_too_new(message: str) -> DuoError:
    return failed_precondition(
        "SCHEMA_TOO_NEW",
        f"{message}. This sidecar no longer changes configuration; upgrade it to the version that migrated the "
        "database (it keeps routing from its last snapshot until then)",
        subject="schema",
    )
