"""Per-user routing data (seats and default namespace), cached in memory in front of the store.

At GitLab.com scale every sidecar cannot hold every user: a bounded LRU keeps the users it has seen, a miss
costs one indexed query, and every change (local or signalled by another sidecar) updates or drops the
users it touches, so a cached entry is never stale.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from sidecar.domain import SeatChange


@dataclass(frozen=True, slots=True)
class UserRouting:
    seats: frozenset[int]
    default_namespace: int  # 0: none stored


NO_USER_DATA = UserRouting(frozenset(), 0)

LoadUser = Callable[[int], Awaitable[UserRouting]]


class UserDirectory:
    def __init__(self, load: LoadUser, capacity: int) -> None:
        self._load = load
        self._capacity = capacity
        self._entries: OrderedDict[int, UserRouting] = OrderedDict()
        # Bumped by every invalidation: a load that overlapped one may have read stale rows, so it is not cached.
        self._generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, user_id: int) -> UserRouting | None:
        """The user's data when cached (no I/O): the hot path."""
        entry = self._entries.get(user_id)
        if entry is not None:
            self._entries.move_to_end(user_id)
        return entry

    async def get(self, user_id: int) -> UserRouting:
        entry = self.cached(user_id)
        if entry is not None:
            return entry
        generation = self._generation
        entry = await self._load(user_id)
        if generation == self._generation:
            self._remember(user_id, entry)
        return entry

    def _remember(self, user_id: int, entry: UserRouting) -> None:
        self._entries[user_id] = entry
        self._entries.move_to_end(user_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def apply_seat_changes(self, changes: Iterable[SeatChange]) -> None:
        """A committed seat change, patched into the cached users it touches."""
        self._generation += 1
        for change in changes:
            entry = self._entries.get(change.user_id)
            if entry is None:
                continue
            seats = entry.seats | {change.namespace_id} if change.assigned else entry.seats - {change.namespace_id}
            self._entries[change.user_id] = UserRouting(seats, entry.default_namespace)

    def set_default_namespace(self, user_id: int, namespace_id: int) -> None:
        self._generation += 1
        entry = self._entries.get(user_id)
        if entry is not None:
            self._entries[user_id] = UserRouting(entry.seats, namespace_id)

    def forget(self, user_ids: Iterable[int]) -> None:
        users = set(user_ids)
        if users:
            self._generation += 1
        for user_id in users:
            self._entries.pop(user_id, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
