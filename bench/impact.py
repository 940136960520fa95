"""The impact preview's latency (DESIGN section 3, "Admin conveniences": validate_only) with 1,000,000 seats.

    .venv/bin/python -m bench.impact                                    # SQLite
    .venv/bin/python -m bench.impact --postgres postgresql://postgres@127.0.0.1:5432/postgres   # and PostgreSQL

Loads 1,000,000 seat assignments and 100,000 namespace pins straight into a migrated database, starts a real
`duo-sidecar serve` on it, and times UpdateNamespaceModelSelection with validate_only through real gRPC: on the
largest namespace (100,000 seat holders, a fifth of them with seats elsewhere too, a third of those with an
explicit default) and on ordinary namespaces. Target: under one second each. Prints p50 and max per backend, and the CPU
time per call of the sidecar and its PostgreSQL server processes (wall time on a busy machine is mostly waiting for
a CPU; the load average is printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc

from bench import postgres
from bench.run import pinned, running
from bench.seed import LARGE_PINS, LARGE_SEATS, large_pins
from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc
from sidecar.catalog import load_catalog
from sidecar.config import load_config
from tests.helpers import BIN, free_port, wait_serving, write_config

LARGEST_NAMESPACE = 1
LARGEST_HOLDERS = 100_000
MULTI_SEAT_SHARE = 5  # one user in five holds a second seat
TARGET_SECONDS = 1.0
CALLS = 20


def seats_and_defaults() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """1,000,000 (user, namespace) seats over namespaces 1..100,000, the first one with 100,000 holders; and the
    explicit defaults (user, namespace) of half the multi-seat users."""
    seats: list[tuple[int, int]] = []
    defaults: list[tuple[int, int]] = []
    user = largest = 0
    while len(seats) < LARGE_SEATS:
        user += 1
        # The largest namespace's holders are spread over the user ids, as they would be.
        in_largest = user % 8 == 0 and largest < LARGEST_HOLDERS
        largest += in_largest
        home = LARGEST_NAMESPACE if in_largest else user * 7919 % (LARGE_PINS - 1) + 2
        seats.append((user, home))
        if user % MULTI_SEAT_SHARE == 0 and len(seats) < LARGE_SEATS:
            other = (user * 104_729) % (LARGE_PINS - 1) + 2
            other = other if other != home else other % (LARGE_PINS - 1) + 2
            seats.append((user, other))
            if (user // MULTI_SEAT_SHARE) % 3 == 0:  # a third of them chose a default
                defaults.append((user, home if user % 4 else other))
    return seats, defaults


def seed_sqlite(database: Path) -> float:
    started = time.monotonic()
    now = datetime.now(UTC).isoformat()
    seats, defaults = seats_and_defaults()
    with sqlite3.connect(database) as db:
        db.executemany(
            "INSERT INTO namespace_model_selections (namespace_id, feature, offered_model_ref, update_time) "
            "VALUES (?, ?, ?, ?)",
            large_pins(now),
        )
        db.executemany("INSERT INTO seat_assignments (user_id, namespace_id) VALUES (?, ?)", seats)
        db.executemany(
            "INSERT INTO user_default_namespaces (user_id, namespace_id, update_time) VALUES (?, ?, ?)",
            [(u, n, now) for u, n in defaults],
        )
        db.execute("ANALYZE")
    db.close()
    return time.monotonic() - started


def seed_postgres(dsn: str) -> float:
    async def seed() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            now = datetime.now(UTC)
            seats, defaults = seats_and_defaults()
            await connection.copy_records_to_table(
                "namespace_model_selections",
                records=[(n, f, m, now) for n, f, m, _ in large_pins("")],
                columns=["namespace_id", "feature", "offered_model_ref", "update_time"],
            )
            await connection.copy_records_to_table(
                "seat_assignments", records=seats, columns=["user_id", "namespace_id"]
            )
            await connection.copy_records_to_table(
                "user_default_namespaces",
                records=[(u, n, now) for u, n in defaults],
                columns=["user_id", "namespace_id", "update_time"],
            )
            await connection.execute("ANALYZE")
        finally:
            await connection.close()

    started = time.monotonic()
    asyncio.run(seed())
    return time.monotonic() - started


TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of these processes so far (this machine's /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS_PER_SECOND


def postgres_backends(dsn: str) -> list[int]:
    """The PostgreSQL server processes serving the sidecar's connections (the server runs on this machine)."""

    async def pids() -> list[int]:
        connection = await asyncpg.connect(dsn)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity "
                "WHERE application_name = 'duo-sidecar' AND datname = current_database()"
            )
            return [int(r[0]) for r in rows]
        finally:
            await connection.close()

    return asyncio.run(pids())


@dataclass(frozen=True)
class Timing:
    label: str
    seconds: list[float]
    cpu_seconds: float  # the sidecar's and its database server processes', over all calls
    impact: admin_pb2.SelectionImpact

    def line(self) -> str:
        p50, worst = statistics.median(self.seconds), max(self.seconds)
        verdict = "ok" if worst < TARGET_SECONDS else "MISSED"
        return (
            f"  {self.label:<24} p50 {p50 * 1000:7.1f} ms  max {worst * 1000:7.1f} ms  CPU/call "
            f"{self.cpu_seconds / len(self.seconds) * 1000:6.1f} ms  ({len(self.seconds)} calls, {verdict}); "
            f"seat holders {self.impact.seat_holders}, no-context answers changed "
            f"{self.impact.no_context_users_changed}, newly requiring a default "
            f"{self.impact.users_newly_requiring_default_namespace}"
        )


def time_previews(address: str, namespaces: list[int], model: str, pids: list[int]) -> Timing:
    seconds: list[float] = []
    impact = admin_pb2.SelectionImpact()
    cpu_before = cpu_seconds(pids)
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for namespace in namespaces:
            started = time.perf_counter()
            reply = admin.UpdateNamespaceModelSelection(
                admin_pb2.UpdateNamespaceModelSelectionRequest(
                    namespace_id=namespace, feature="duo_chat", offered_model_ref=model, validate_only=True
                ),
                timeout=30,
            )
            seconds.append(time.perf_counter() - started)
            if not reply.validate_only:
                raise RuntimeError("the preview wrote something")
            impact = reply.impact
    label = f"namespace {namespaces[0]}" if len(set(namespaces)) == 1 else f"{len(namespaces)} ordinary namespaces"
    return Timing(label, seconds, cpu_seconds(pids) - cpu_before, impact)


def bench_backend(name: str, postgres_admin_dsn: str) -> list[Timing]:
    with tempfile.TemporaryDirectory(prefix="duo-bench-impact-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        port = free_port()
        storage = ""
        if postgres_admin_dsn:
            dsn = stack.enter_context(postgres.fresh_database(postgres_admin_dsn))
            storage = f'backend = "postgres"\ndsn = "{dsn}"\ntoken_key_file = "{workdir / "token.key"}"\n'
        config = write_config(workdir, "gitlab_com", port, storage)
        subprocess.run([str(BIN / "duo-sidecar"), "migrate", "--config", str(config)], check=True, capture_output=True)
        print(f"{name}: seeding 1,000,000 seats and 100,000 namespace pins", flush=True)
        seeded = seed_postgres(dsn) if postgres_admin_dsn else seed_sqlite(Path(load_config(config).storage.path))
        print(f"{name}: seeded in {seeded:.1f} s", flush=True)

        def serving(server: object) -> None:
            wait_serving(f"127.0.0.1:{port}", timeout=300)

        command = pinned([str(BIN / "duo-sidecar"), "serve", "--config", str(config)], "")
        sidecar = stack.enter_context(running(command, port, workdir / "sidecar.log", serving))
        chat = load_catalog().features["duo_chat"]
        model = next(m for m in chat.selectable_models if m != chat.default_model)
        pids = [sidecar.process.pid]
        time_previews(sidecar.address, [LARGEST_NAMESPACE], model, pids)  # warm up: connections, caches
        if postgres_admin_dsn:
            pids += postgres_backends(dsn)
        ordinary = [2 + (i * 4_999) % (LARGE_PINS - 1) for i in range(CALLS)]
        return [
            time_previews(sidecar.address, [LARGEST_NAMESPACE] * CALLS, model, pids),
            time_previews(sidecar.address, ordinary, model, pids),
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", metavar="DSN", default="", help="also on PostgreSQL (an admin DSN)")
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    args = parser.parse_args(argv)
    results: dict[str, list[Timing]] = {}
    if not args.no_sqlite:
        results["SQLite"] = bench_backend("SQLite", "")
    if args.postgres:
        results["PostgreSQL"] = bench_backend("PostgreSQL", args.postgres)
    missed = False
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nvalidate_only on duo_chat through gRPC, 1,000,000 seats and 100,000 namespace pins loaded (load {load}):")
    for backend, timings in results.items():
        print(f"{backend}:")
        for timing in timings:
            print(timing.line())
            missed = missed or max(timing.seconds) >= TARGET_SECONDS
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
