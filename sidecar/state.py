"""The configuration this process routes on: the snapshot, the per-user cache and the API tokens, and the config
version they reflect.

Every committed change reaches them strictly in version order, with no gap and no duplicate: a change this process
committed right after the version it holds is patched in from memory (apply_committed); anything else is read from
the store's change records (catch_up), and a full reload accounts for every user touched by the versions it jumps
over. One lock orders both paths.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import immutables

from sidecar.catalog import Catalog
from sidecar.domain import ChangeRecord, DeploymentType
from sidecar.snapshot import NO_OPTIONS, InstanceOptions, Snapshot, offered_catalog
from sidecar.store.base import Store, StoredState, schema_too_new_message
from sidecar.store.migrations import LATEST_VERSION
from sidecar.tokens import Keyring
from sidecar.users import NO_USER_DATA, UserDirectory, UserRouting
from sidecar.vault import TokenVault

log = logging.getLogger(__name__)

DEFAULT_USER_CACHE_SIZE = 200_000
# Beyond this many versions to replay, a full reload that drops the whole user cache is cheaper.
MAX_CHANGES_TO_REPLAY = 5_000
# A version visible before an earlier one is waited for this long (the earlier writer is mid-commit), then the
# state is reloaded in full; records that never appear (written by an older sidecar) end up there too.
GAP_WAIT_SECONDS = 1.0
GAP_POLL_SECONDS = 0.01


def build_snapshot(
    deployment: DeploymentType, catalog: Catalog, state: StoredState, options: InstanceOptions = NO_OPTIONS
) -> Snapshot:
    pins: dict[int, dict[str, str]] = {}
    for namespace_id, feature, ref in state.namespace_pins:
        pins.setdefault(namespace_id, {})[feature] = ref
    allowlists: dict[int, dict[str, tuple[str, ...]]] = {}
    for namespace_id, feature, refs in state.allowlists:
        allowlists.setdefault(namespace_id, {})[feature] = refs
    return Snapshot(
        deployment_type=deployment,
        catalog=offered_catalog(catalog, options),
        config_version=state.config_version,
        self_hosted_models=immutables.Map({m.id: m for m in state.self_hosted_models}),
        feature_settings=immutables.Map({s.feature: s for s in state.feature_settings}),
        instance_pins=immutables.Map(state.instance_pins),
        namespace_pins=immutables.Map({ns: immutables.Map(p) for ns, p in pins.items()}),
        options=options,
        instance_allowlists=immutables.Map(allowlists.pop(0, {})),
        namespace_allowlists=immutables.Map({ns: immutables.Map(a) for ns, a in allowlists.items()}),
    )


def contiguous(records: Sequence[ChangeRecord], after: int) -> list[ChangeRecord]:
    """The records that follow `after` without a gap."""
    run: list[ChangeRecord] = []
    for record in records:
        if record.version != after + len(run) + 1:
            break
        run.append(record)
    return run


SnapshotPatch = Callable[[Snapshot], Snapshot]


class ConfigState:
    def __init__(self, store: Store, snapshot: Snapshot, users: UserDirectory, vault: TokenVault) -> None:
        self.store = store
        self.users = users
        self.vault = vault
        self._snapshot = snapshot
        self.published_at = time.time()  # feeds duo_routing_snapshot_published_timestamp_seconds
        self._apply_lock = asyncio.Lock()
        # Told every version this process serves (the worker board); and once, when the schema is too new.
        self.on_version: Callable[[int], None] = lambda _version: None
        self.on_publish: Callable[[Snapshot], None] = lambda _snapshot: None
        self.on_schema_too_new: Callable[[str], None] = lambda _message: None
        self.schema_problem = ""

    @classmethod
    async def load(
        cls,
        store: Store,
        keyring: Keyring,
        deployment: DeploymentType,
        catalog: Catalog,
        user_cache_size: int = DEFAULT_USER_CACHE_SIZE,
        options: InstanceOptions = NO_OPTIONS,
    ) -> ConfigState:
        state = await store.load_state()
        users = UserDirectory(store.load_user, user_cache_size)
        snapshot = build_snapshot(deployment, catalog, state, options)
        return cls(store, snapshot, users, TokenVault(keyring, state.api_tokens))

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def version(self) -> int:
        """Every change up to this version, and none after it, is reflected in this process."""
        return self._snapshot.config_version

    def _publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self.published_at = time.time()
        self.on_version(snapshot.config_version)
        self.on_publish(snapshot)

    async def user_routing(self, user_id: int) -> UserRouting:
        """A user's seats and default namespace; only GitLab.com routing reads them. Cached: no I/O when warm."""
        if user_id <= 0 or self._snapshot.deployment_type is not DeploymentType.GITLAB_COM:
            return NO_USER_DATA
        return self.users.cached(user_id) or await self.users.get(user_id)

    async def replace_catalog(self, catalog: Catalog) -> None:
        """Swaps in a refreshed catalog; pins it no longer offers route to defaults from now on."""
        async with self._apply_lock:
            self._publish(self._snapshot.with_catalog(offered_catalog(catalog, self._snapshot.options)))

    # -- applying changes ---------------------------------------------------------------------------

    async def apply_committed(
        self, version: int, patch: SnapshotPatch | None, effects: Callable[[], None] | None
    ) -> None:
        """A change this process has just committed as `version`: patched in from memory when it directly follows
        the version held, otherwise read from the store together with the changes before it."""
        async with self._apply_lock:
            if version <= self.version:
                return  # a catch-up already read it from the store
            if version == self.version + 1:
                if effects is not None:
                    effects()
                snapshot = patch(self._snapshot) if patch is not None else self._snapshot
                self._publish(snapshot.with_version(version))
                return
            await self._catch_up(until=version)

    async def catch_up(self) -> int:
        """Applies every change committed after the version held (by anyone); returns how many versions."""
        async with self._apply_lock:
            return await self._catch_up(until=None)

    async def reload(self) -> None:
        """Rebuilds everything from the store (a key rotation, an operator's request)."""
        async with self._apply_lock:
            await self._reload()

    async def _catch_up(self, until: int | None) -> int:
        start = self.version
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GAP_WAIT_SECONDS
        while True:
            head = await self.store.head()
            self._check_schema(head.schema_version)
            target = max(head.config_version, until or 0)
            if self.version >= target:
                return self.version - start
            records = await self.store.changes_since(self.version, MAX_CHANGES_TO_REPLAY + 1)
            run = contiguous(records, self.version)
            if not run:
                if loop.time() < deadline:
                    await asyncio.sleep(GAP_POLL_SECONDS)
                    continue
                log.warning(
                    "configuration version %d has no change record after %.1f s (written by an older sidecar?); "
                    "reloading everything",
                    self.version + 1,
                    GAP_WAIT_SECONDS,
                )
                await self._reload()
                continue
            if len(records) > MAX_CHANGES_TO_REPLAY or any(not r.change.kind.per_user for r in run):
                await self._reload()
            else:
                self.users.forget(u for r in run for u in r.change.user_ids)
                self._publish(self._snapshot.with_version(run[-1].version))
            deadline = loop.time() + GAP_WAIT_SECONDS  # progress: a new gap gets its own wait

    async def _reload(self) -> None:
        """Reads the whole configuration and, in the same view, the change records it jumps over: their users are
        dropped from the cache (all users when the records do not cover the jump)."""
        before = self.version
        state = await self.store.load_state(changes_after=before, changes_limit=MAX_CHANGES_TO_REPLAY + 1)
        run = contiguous(state.changes, before)
        jumped = state.config_version - before
        if jumped == 0:
            pass
        elif 0 < jumped <= len(run) and len(state.changes) <= MAX_CHANGES_TO_REPLAY:
            self.users.forget(u for r in run[:jumped] for u in r.change.user_ids)
        else:
            self.users.clear()
        self.vault.replace_all(state.api_tokens)
        held = self._snapshot
        self._publish(build_snapshot(held.deployment_type, held.catalog, state, held.options))
        log.info("reloaded the configuration: version %d -> %d", before, state.config_version)

    def _check_schema(self, schema_version: int) -> None:
        if schema_version > LATEST_VERSION:
            self.schema_too_new(schema_too_new_message(self.store.backend_name, schema_version, LATEST_VERSION))

    def schema_too_new(self, message: str) -> None:
        """A write found the schema newer than this sidecar knows."""
        if not self.schema_problem:
            self.schema_problem = message
            log.error("%s: this sidecar no longer writes and keeps routing from its last snapshot", message)
            self.on_schema_too_new(message)
