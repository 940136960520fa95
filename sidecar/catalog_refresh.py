"""Refreshes the model catalog from the AI Gateway, keeping the last good copy on any failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.catalog import Catalog, CatalogError, bundled_features_metadata, load_catalog, parse_catalog
from sidecar.completion import Completer
from sidecar.errors import DuoError, ErrorCode, failed_precondition
from sidecar.snapshot import Snapshot, offered_catalog
from sidecar.state import ConfigState

log = logging.getLogger(__name__)

DEFINITIONS_PATH = "/v1/models%2Fdefinitions"
CATALOG_REFRESH_FAILED = "CATALOG_REFRESH_FAILED"


@dataclass(frozen=True)
class RefreshResult:
    catalog_version: str
    changed: bool
    unavailable_pins: list[str]


def unavailable_pins(snapshot: Snapshot, catalog: Catalog) -> list[str]:
    """Pins that the catalog no longer offers, as '<scope>:<feature>:<model>'."""
    found: list[str] = []

    def check(scope: str, feature: str, ref: str) -> None:
        info = catalog.features.get(feature)
        if info is None or not info.is_selectable(ref):
            found.append(f"{scope}:{feature}:{ref}")

    for feature, ref in snapshot.instance_pins.items():
        check("instance", feature, ref)
    for namespace_id, pins in snapshot.namespace_pins.items():
        for feature, ref in pins.items():
            check(f"namespaces/{namespace_id}", feature, ref)
    return sorted(found)


def startup_catalog(explicit_path: str, cache_path: Path) -> Catalog:
    """The configured catalog file, else the last good refreshed copy, else the bundled catalog."""
    if explicit_path:
        return load_catalog(Path(explicit_path))
    if cache_path.exists():
        try:
            catalog = load_catalog(cache_path)
            log.info("using the catalog refreshed earlier from the AI Gateway (%s)", cache_path)
            return catalog
        except CatalogError as exc:
            log.warning("ignoring the refreshed catalog copy %s: %s", cache_path, exc)
    return load_catalog()


class CatalogRefresher:
    def __init__(self, state: ConfigState, completer: Completer, cache_path: Path, pinned_path: str = "") -> None:
        self.state = state
        self.pinned_path = pinned_path  # instance.catalog_path: the operator's catalog is never replaced
        self.completer = completer
        self.cache_path = cache_path
        self.refreshed_at = time.time()  # the catalog was loaded at start; later, when last fetched successfully
        # Told each failed refresh: "unreachable" (the fetch failed) or "malformed" (the document was refused).
        self.on_failure: Callable[[str], None] = lambda _kind: None

    async def refresh(self) -> RefreshResult:
        """Fetches, validates and swaps in the AI Gateway's catalog; on any failure the catalog in use stays, and
        the failure is counted (on_failure) and logged with its reason."""
        try:
            return await self._refresh()
        except DuoError as error:
            if error.reason != "CATALOG_PINNED":
                kind = "malformed" if error.reason == CATALOG_REFRESH_FAILED else "unreachable"
                self.on_failure(kind)
                log.warning(
                    "catalog refresh failed (%s), keeping catalog %s: %s",
                    kind,
                    self.state.snapshot.catalog.version,
                    error,
                    extra={"reason": error.reason},
                )
            raise

    async def _refresh(self) -> RefreshResult:
        if self.pinned_path:
            raise failed_precondition(
                "CATALOG_PINNED",
                f"the model catalog comes from {self.pinned_path} (instance.catalog_path) and is not refreshed from "
                "the AI Gateway; edit that file and restart, or unset instance.catalog_path",
                subject="instance.catalog_path",
            )
        gateway = self.completer.gateway
        url = gateway.base_url.rstrip("/") + DEFINITIONS_PATH
        headers = gateway.headers(user_id=0, unit_primitive="", namespace_ids=[])
        document = await self.completer.fetch_json(url, headers, "the AI Gateway's model catalog")
        try:
            catalog = parse_catalog(document, bundled_features_metadata())
        except CatalogError as exc:
            raise DuoError(
                ErrorCode.UNAVAILABLE,
                CATALOG_REFRESH_FAILED,
                f"the AI Gateway's model catalog is malformed ({exc}); the current catalog stays in use",
            ) from None
        if not catalog.features:
            raise DuoError(
                ErrorCode.UNAVAILABLE,
                CATALOG_REFRESH_FAILED,
                "the AI Gateway's model catalog lists no features; the current catalog stays in use",
            )
        self.refreshed_at = time.time()
        previous = self.state.snapshot.catalog
        changed = catalog.version != previous.version
        if changed:
            self._save(document)
            await self.state.replace_catalog(catalog)
            log.info("model catalog refreshed: %s -> %s", previous.version, catalog.version)
        # The catalog as offered (team-only models with instance.offer_team_only_models), as routing sees it.
        offered = self.state.snapshot.catalog if changed else offered_catalog(catalog, self.state.snapshot.options)
        return RefreshResult(catalog.version, changed, unavailable_pins(self.state.snapshot, offered))

    def _save(self, document: object) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache_path.with_suffix(".tmp")
        partial.write_text(json.dumps(document, indent=1))
        os.replace(partial, self.cache_path)

    async def run_periodically(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            with contextlib.suppress(DuoError):  # counted and logged by refresh()
                await self.refresh()
