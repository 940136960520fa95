"""The admin client and `duo-admin` load none of the server: no sidecar module and none of its dependencies."""

from __future__ import annotations

import os
import subprocess
import sys

# Top-level modules only the server needs; the client may use grpc, protobuf, the generated code and duo_common.
SERVER_ONLY = ("sidecar", "asyncpg", "aiohttp", "aiosqlite", "cryptography", "prometheus_client", "immutables")


def test_the_admin_client_loads_none_of_the_server() -> None:
    program = "import sys, duo_admin, duo_admin.client, duo_admin.cli; print('\\n'.join(sorted(sys.modules)))"
    # A fresh interpreter: this one has the whole server loaded already. Run from / so that the working directory
    # (the repository root, on sys.path under `python -c`) cannot supply the `sidecar` package by accident.
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=os.sep, timeout=60
    )
    loaded = result.stdout.split()
    assert "duo_admin.cli" in loaded
    server = [name for name in loaded if name.partition(".")[0] in SERVER_ONLY]
    assert server == [], f"importing the admin client loaded server modules: {server}"
    assert "duo_common.tokens" in loaded  # the shared package, not a copy of it
