"""Storage backends behind one interface (sidecar.store.base.Store)."""

from __future__ import annotations

import sqlite3

from sidecar.store.base import StoreUnavailableError
from sidecar.store.postgres import POSTGRES_ERRORS, POSTGRES_UNREACHABLE_ERRORS

# What a backend raises when its database cannot be used right now: callers answer UNAVAILABLE, nothing changed.
STORAGE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, StoreUnavailableError, TimeoutError, *POSTGRES_ERRORS)

# Of those, the ones that mean the database does not answer at all (storage.timeout_seconds ran out, the network or
# the server is gone), rather than refusing one statement: health need not wait for its next probe to say so.
STORAGE_UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    StoreUnavailableError,
    TimeoutError,
    ConnectionError,
    *POSTGRES_UNREACHABLE_ERRORS,
)
