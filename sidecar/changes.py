"""Follows changes that other processes commit to the shared store (other sidecars, other workers, CLI
commands such as rotate-key) and brings this process's snapshot and user cache up to date.

The store says that something changed (PostgreSQL LISTEN/NOTIFY, SQLite's data_version); the audit log
says what: every committed change is an audit event carrying the config version it produced.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable

from sidecar.control import ControlPlane
from sidecar.domain import AuditEvent

log = logging.getLogger(__name__)

# Beyond this many missed changes, dropping the whole user cache is cheaper than reading them.
MAX_EVENTS_TO_REPLAY = 5_000
# Changes to per-user data only; everything else is configuration held in the snapshot.
USER_ACTIONS = frozenset({"SyncSeatAssignments", "SetUserDefaultNamespace"})


def users_touched(events: Iterable[AuditEvent]) -> set[int]:
    users: set[int] = set()
    for event in events:
        if event.action == "SyncSeatAssignments":
            after = json.loads(event.after_json or "{}")
            users.update(int(pair[0]) for key in ("assigned", "removed") for pair in after.get(key, []))
        elif event.action == "SetUserDefaultNamespace":
            users.add(int(event.resource.split("/")[1]))
    return users


class ChangeFollower:
    def __init__(self, control: ControlPlane, poll_seconds: float = 1.0) -> None:
        self.control = control
        self.poll_seconds = poll_seconds
        self._signal = asyncio.Event()
        self.connected = True

    def changed(self) -> None:
        """Called by the store's watcher when another process committed something."""
        self._signal.set()

    async def run(self) -> None:
        """Catches up on every signal, and at least every poll interval as a safety net."""
        while True:
            try:
                async with asyncio.timeout(self.poll_seconds):
                    await self._signal.wait()
            except TimeoutError:
                pass
            self._signal.clear()
            try:
                await self.catch_up()
                self.connected = True
            except Exception as exc:
                if self.connected:
                    log.warning("cannot follow configuration changes (%s); serving the last snapshot", exc)
                self.connected = False

    async def catch_up(self) -> int:
        """Applies what other processes committed since this one last caught up; returns how many changes."""
        control = self.control
        store = control.store
        since = control.synced_version
        if await store.config_version() <= since:
            return 0
        events = await store.changes_since(since, MAX_EVENTS_TO_REPLAY + 1)
        if len(events) > MAX_EVENTS_TO_REPLAY:
            control.users.clear()
            await control.reload()
        else:
            control.users.forget(users_touched(events))
            if any(e.action not in USER_ACTIONS for e in events):
                await control.reload()
            else:
                control.advance_to(max(e.config_version for e in events))
        log.info("caught up with %d configuration changes made elsewhere (since version %d)", len(events), since)
        return len(events)
