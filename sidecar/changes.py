"""Follows changes that other processes commit to the shared store (other sidecars, other workers, CLI commands
such as rotate-key) and brings this process's configuration up to date.

The store says that something changed (PostgreSQL LISTEN/NOTIFY, SQLite's data_version, a worker's datagram);
the change records say what (sidecar.state.ConfigState.catch_up applies them in version order).
"""

from __future__ import annotations

import asyncio
import logging

from sidecar.state import ConfigState

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # after a failed catch-up: the signal that asked for it will not come again


class ChangeFollower:
    def __init__(self, state: ConfigState, poll_seconds: float) -> None:
        self.state = state
        self.poll_seconds = poll_seconds
        self._signal = asyncio.Event()
        self._signal.set()  # catch up at once: a change may have landed between loading the state and now
        self.connected = True

    def changed(self) -> None:
        """Called when another process may have committed something."""
        self._signal.set()

    async def run(self) -> None:
        """Catches up on every signal, and at least every poll interval as a safety net."""
        while True:
            try:
                async with asyncio.timeout(self.poll_seconds if self.connected else RETRY_SECONDS):
                    await self._signal.wait()
            except TimeoutError:
                pass
            self._signal.clear()
            try:
                applied = await self.state.catch_up()
            except Exception as exc:  # the store is unreachable: keep serving, say so once
                if self.connected:
                    log.warning("cannot follow configuration changes (%s); serving the last snapshot", exc)
                self.connected = False
                continue
            if not self.connected:
                log.warning("following configuration changes again")
            self.connected = True
            if applied:
                log.info("caught up with %d configuration versions, now at %d", applied, self.state.version)
