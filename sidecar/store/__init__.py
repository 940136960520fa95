"""Storage backends behind one interface (sidecar.store.base.Store)."""

from __future__ import annotations

import sqlite3

from sidecar.store.base import StoreUnavailableError
from sidecar.store.postgres import POSTGRES_ERRORS

# What a backend raises when its database cannot be used right now: callers answer UNAVAILABLE, nothing changed.
STORAGE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, StoreUnavailableError, TimeoutError, *POSTGRES_ERRORS)
