"""Bounded storage waits: a database that stops answering without closing anything (a network partition, a lock
held by another process) fails calls with UNAVAILABLE within storage.timeout_seconds instead of hanging them to
their deadline; health follows within the same bound; the outage is logged once and every failed call counted;
and the sidecar catches up once the network heals."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc
from sidecar.config import ConfigError, load_config
from tests.fleet import fresh_postgres, through, wait_for
from tests.helpers import SidecarProcess, free_port, run_sidecar
from tests.tcp_proxy import TcpProxy

BOUND = 2.0  # storage.timeout_seconds of the sidecar under test
PROBE_INTERVAL = 0.5  # storage.probe_interval_seconds
MARGIN = 1.5  # scheduling and process noise on a busy 2-core machine
CALL_DEADLINE = 30.0  # what a caller would wait: a hang shows as DEADLINE_EXCEEDED after this
STORAGE = "gitlab.duo.routing.v1.Storage"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OUTAGE_LINE = "storage is unusable, health is NOT_SERVING"
REFUSED_LINE = "storage failed: "
RECOVERY_LINE = "storage answers again"


class Node:
    """A sidecar process and blocking stubs on it."""

    def __init__(self, process: SidecarProcess, metrics_port: int) -> None:
        self.process = process
        self.metrics_port = metrics_port
        self.channel = grpc.insecure_channel(process.address)
        self.routing = routing_pb2_grpc.RoutingServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def resolve(self, user: int, namespace: int = 0) -> Any:
        """The answer, or the status code it failed with."""
        request = routing_pb2.ResolveModelRequest(user_id=user, feature="duo_chat", root_namespace_id=namespace)
        try:
            return self.routing.ResolveModel(request, timeout=CALL_DEADLINE)
        except grpc.RpcError as error:
            return error.code()

    def pin(self, namespace: int, model: str) -> grpc.StatusCode:
        request = admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=namespace, feature="duo_chat", offered_model_ref=model
        )
        try:
            self.admin.UpdateNamespaceModelSelection(request, timeout=CALL_DEADLINE)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    def seat(self, user: int, namespace: int) -> None:
        assignment = admin_pb2.SeatAssignment(user_id=user, namespace_id=namespace, assigned=True)
        self.admin.SyncSeatAssignments(
            iter([admin_pb2.SyncSeatAssignmentsRequest(assignments=[assignment])]), timeout=CALL_DEADLINE
        )

    def model(self, user: int, namespace: int = 0) -> str:
        answer = self.resolve(user, namespace)
        return str(answer) if isinstance(answer, grpc.StatusCode) else str(answer.model_identifier)

    def storage_health(self) -> int:
        return int(self.health.Check(health_pb2.HealthCheckRequest(service=STORAGE), timeout=2).status)

    def storage_errors(self) -> dict[str, float]:
        """duo_routing_storage_errors_total by grpc_method."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            sample.labels["grpc_method"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "duo_routing_storage_errors"
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    def log_messages(self) -> list[str]:
        messages = []
        for line in self.process.logs().splitlines():
            try:
                messages.append(str(json.loads(line)["msg"]))
            except (ValueError, KeyError):
                messages.append(line)  # such as a traceback printed outside the logger
        return messages


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


@contextmanager
def node(directory: Path, storage: str, key_file: Path) -> Iterator[Node]:
    """A gitlab_com sidecar process with the given [storage] lines."""
    directory.mkdir(parents=True, exist_ok=True)
    port, metrics_port = free_port(), free_port()
    config = directory / "sidecar.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
grace_period_seconds = 1.0
[metrics]
listen = "127.0.0.1:{metrics_port}"
[instance]
deployment_type = "gitlab_com"
[storage]
token_key_file = "{key_file}"
{storage}
"""
    )
    with run_sidecar(config, port) as process:
        client = Node(process, metrics_port)
        try:
            yield client
        finally:
            client.channel.close()


def test_the_bound_is_configured_checked_and_overridable() -> None:
    assert load_config(None, {}).storage.timeout_seconds == 5.0
    assert load_config(None, {"DUO_SIDECAR_STORAGE_TIMEOUT_SECONDS": "2.5"}).storage.timeout_seconds == 2.5
    for wrong in ("0", "-1", "nan", "86400"):
        with pytest.raises(ConfigError, match="DUO_SIDECAR_STORAGE_TIMEOUT_SECONDS"):
            load_config(None, {"DUO_SIDECAR_STORAGE_TIMEOUT_SECONDS": wrong})


def test_a_partitioned_postgres_fails_calls_within_the_bound_and_health_follows(tmp_path: Path) -> None:
    with fresh_postgres() as dsn, ExitStack() as stack:
        target = urlsplit(dsn)
        proxy = stack.enter_context(TcpProxy(target.hostname or "127.0.0.1", target.port or 5432))
        key = tmp_path / "token.key"
        other = stack.enter_context(node(tmp_path / "other", f'backend = "postgres"\ndsn = "{dsn}"', key))
        sidecar = stack.enter_context(
            node(
                tmp_path / "partitioned",
                f'backend = "postgres"\ndsn = "{through(proxy, dsn)}"\n'
                f"timeout_seconds = {BOUND}\nprobe_interval_seconds = {PROBE_INTERVAL}",
                key,
            )
        )
        other.seat(1, 10)
        assert other.pin(10, "claude_sonnet_4_6") == grpc.StatusCode.OK
        wait_for(lambda: sidecar.model(1) == "claude_sonnet_4_6", 5)  # user 1 is now in the partitioned sidecar's cache

        # 1. A call that needs the database: a user it has not cached. It used to wait for its deadline.
        proxy.blackhole()
        partitioned_at = time.monotonic()
        answer, elapsed = timed(lambda: sidecar.resolve(1001))
        assert answer == grpc.StatusCode.UNAVAILABLE
        assert elapsed < BOUND + MARGIN, f"ResolveModel of an uncached user took {elapsed:.2f} s"
        print(f"partition 1: ResolveModel UNAVAILABLE after {elapsed:.2f} s")
        wait_for(lambda: sidecar.storage_health() == NOT_SERVING, 5)
        not_serving_after = time.monotonic() - partitioned_at
        assert not_serving_after < BOUND + PROBE_INTERVAL + MARGIN
        print(f"partition 1: Storage health NOT_SERVING after {not_serving_after:.2f} s")
        # Routing from memory goes on; every call that needs the database fails fast, and is counted.
        assert sidecar.model(1) == "claude_sonnet_4_6"
        for user in (1002, 1003):
            answer, elapsed = timed(lambda user=user: sidecar.resolve(user))  # type: ignore[misc]
            assert answer == grpc.StatusCode.UNAVAILABLE and elapsed < BOUND + MARGIN
        answer, elapsed = timed(lambda: sidecar.pin(20, "claude_sonnet_4_5_20250929_vertex"))
        assert answer == grpc.StatusCode.UNAVAILABLE
        assert elapsed < BOUND + MARGIN, f"an admin write took {elapsed:.2f} s"
        print(f"partition 1: UpdateNamespaceModelSelection UNAVAILABLE after {elapsed:.2f} s")
        assert other.pin(10, "claude_sonnet_4_5_20250929") == grpc.StatusCode.OK  # changed meanwhile, elsewhere

        # Healed: health comes back by itself and the change made meanwhile is caught up.
        proxy.heal()
        healed = wait_for(lambda: sidecar.storage_health() == SERVING, BOUND + PROBE_INTERVAL + 5)
        caught_up = wait_for(lambda: sidecar.model(1) == "claude_sonnet_4_5_20250929", 10)
        print(f"healed: SERVING after {healed:.2f} s, caught up after {healed + caught_up:.2f} s")
        assert sidecar.pin(20, "claude_sonnet_4_5_20250929_vertex") == grpc.StatusCode.OK
        wait_for(lambda: other.model(2, namespace=20) == "claude_sonnet_4_5_20250929_vertex", 5)

        # 2. An admin write is the first to meet the partition: its transaction's statement times out on a pooled
        # connection, and nothing after that (ROLLBACK, returning the connection) waits on the dead link again.
        proxy.blackhole()
        answer, elapsed = timed(lambda: sidecar.pin(20, "claude_sonnet_4_6"))
        assert answer == grpc.StatusCode.UNAVAILABLE
        assert elapsed < BOUND + MARGIN, f"an admin write took {elapsed:.2f} s"
        print(f"partition 2: UpdateNamespaceModelSelection UNAVAILABLE after {elapsed:.2f} s")
        wait_for(lambda: sidecar.storage_health() == NOT_SERVING, 1)  # that call's failure said it at once
        proxy.heal()
        wait_for(lambda: sidecar.storage_health() == SERVING, BOUND + PROBE_INTERVAL + 5)

        # 3. No call at all: the probe alone notices, within its interval and the bound.
        proxy.blackhole()
        partitioned_at = time.monotonic()
        wait_for(lambda: sidecar.storage_health() == NOT_SERVING, 10)
        not_serving_after = time.monotonic() - partitioned_at
        assert not_serving_after < BOUND + PROBE_INTERVAL + MARGIN
        print(f"partition 3 (no calls): Storage health NOT_SERVING after {not_serving_after:.2f} s")
        proxy.heal()
        wait_for(lambda: sidecar.storage_health() == SERVING, BOUND + PROBE_INTERVAL + 5)
        assert sidecar.pin(20, "claude_sonnet_4_6") == grpc.StatusCode.OK

        # Each outage said once when it started and once when it ended; no traceback per failed call.
        messages = sidecar.log_messages()
        assert sum(m.startswith(OUTAGE_LINE) for m in messages) == 3, messages
        assert sum(m.startswith(RECOVERY_LINE) for m in messages) == 3, messages
        assert not [m for m in messages if m.startswith("storage error in")]
        assert sidecar.storage_errors() == {"ResolveModel": 3, "UpdateNamespaceModelSelection": 2}


def test_a_held_sqlite_write_lock_fails_an_admin_write_within_the_bound(tmp_path: Path) -> None:
    database = tmp_path / "data" / "sidecar.db"
    bound = 1.0
    storage = f'path = "{database}"\ntimeout_seconds = {bound}\nprobe_interval_seconds = {PROBE_INTERVAL}'
    with node(tmp_path / "node", storage, tmp_path / "token.key") as sidecar:
        holder = sqlite3.connect(database, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # another process's writer, holding the lock
            answer, elapsed = timed(lambda: sidecar.pin(10, "claude_sonnet_4_6"))
            assert answer == grpc.StatusCode.UNAVAILABLE
            assert elapsed < bound + MARGIN, f"an admin write took {elapsed:.2f} s"
            print(f"SQLite write lock held: UpdateNamespaceModelSelection UNAVAILABLE after {elapsed:.2f} s")
            assert sidecar.pin(10, "claude_sonnet_4_6") == grpc.StatusCode.UNAVAILABLE
            # Contention, not an outage: reads (and so health) go on.
            assert sidecar.storage_health() == SERVING
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert sidecar.pin(10, "claude_sonnet_4_6") == grpc.StatusCode.OK
        # Said once (contention has no end to announce), not once per call; every failed call counted.
        messages = sidecar.log_messages()
        refused = [m for m in messages if m.startswith(REFUSED_LINE)]
        assert len(refused) == 1 and "database is locked" in refused[0], messages
        assert not [m for m in messages if m.startswith((OUTAGE_LINE, RECOVERY_LINE))]
        assert sidecar.storage_errors() == {"UpdateNamespaceModelSelection": 2}
