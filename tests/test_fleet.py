"""Fleet mode: sidecars (and workers) sharing one store see each other's changes within a second, and a sidecar
cut off from PostgreSQL keeps serving its last snapshot and catches up when the database is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc
from tests.helpers import SidecarProcess, free_port, run_sidecar
from tests.postgres import admin_dsn, fresh_database
from tests.tcp_proxy import TcpProxy

PROPAGATION_SECONDS = 1.0


class Client:
    def __init__(self, sidecar: SidecarProcess) -> None:
        self.channel = grpc.insecure_channel(sidecar.address)
        self.routing = routing_pb2_grpc.RoutingServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def resolve(self, user: int, feature: str = "duo_chat", namespace: int = 0) -> Any:
        request = routing_pb2.ResolveModelRequest(user_id=user, feature=feature, root_namespace_id=namespace)
        try:
            return self.routing.ResolveModel(request, timeout=5)
        except grpc.RpcError as error:
            return error.code()

    def pin(self, namespace: int, model: str, feature: str = "duo_chat") -> None:
        self.admin.UpdateNamespaceModelSelection(
            admin_pb2.UpdateNamespaceModelSelectionRequest(
                namespace_id=namespace, feature=feature, offered_model_ref=model
            ),
            timeout=10,
        )

    def seats(self, *pairs: tuple[int, int]) -> None:
        self.admin.SyncSeatAssignments(
            iter([admin_pb2.SyncSeatAssignmentsRequest(
                assignments=[admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=True) for u, n in pairs]
            )]),
            timeout=10,
        )  # fmt: skip


def wait_for(condition: Callable[[], bool], seconds: float) -> float:
    """How long until the condition held; fails after `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"not within {seconds} s")


def model_of(client: Client, user: int, namespace: int = 0) -> str:
    answer = client.resolve(user, namespace=namespace)
    return answer if isinstance(answer, grpc.StatusCode) else answer.model_identifier  # type: ignore[no-any-return]


def config_for(directory: Path, storage: str, key_file: Path) -> tuple[Path, int]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = directory / "sidecar.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
grace_period_seconds = 1.0
[metrics]
listen = "127.0.0.1:{free_port()}"
[instance]
deployment_type = "gitlab_com"
{storage}
token_key_file = "{key_file}"
"""
    )
    return path, port


@contextmanager
def sidecars(storages: list[str], tmp_path: Path) -> Iterator[list[Client]]:
    with ExitStack() as stack:
        clients = []
        for i, storage in enumerate(storages):
            config, port = config_for(tmp_path / f"node-{i}", storage, tmp_path / "token.key")
            process = stack.enter_context(run_sidecar(config, port))
            client = Client(process)
            stack.callback(client.channel.close)
            clients.append(client)
        yield clients


def check_propagation(first: Client, second: Client) -> None:
    first.seats((1, 10))
    assert wait_for(lambda: model_of(second, 1) == "claude_sonnet_4_20250514_vertex", PROPAGATION_SECONDS) >= 0
    first.pin(10, "gpt_5")
    assert wait_for(lambda: model_of(second, 1) == "gpt_5", PROPAGATION_SECONDS) < PROPAGATION_SECONDS
    # A seat change reaches a user the other sidecar has cached: a second seat pinning another model.
    first.seats((1, 20))
    first.pin(20, "gpt_5_mini")
    wait_for(lambda: second.resolve(1) == grpc.StatusCode.FAILED_PRECONDITION, PROPAGATION_SECONDS)
    # And the other way round.
    second.pin(30, "gpt_5_mini")
    wait_for(lambda: model_of(first, 2, namespace=30) == "gpt_5_mini", PROPAGATION_SECONDS)


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A fresh database for blocking tests (sidecar processes, blocking gRPC calls)."""
    database = fresh_database(admin_dsn())
    loop = asyncio.new_event_loop()  # one loop for both halves: a second one would finalize the first half
    try:
        dsn = loop.run_until_complete(database.__aenter__())
        try:
            yield dsn
        finally:
            loop.run_until_complete(database.__aexit__(None, None, None))
    finally:
        loop.close()


def test_two_sidecars_on_one_postgres_database(tmp_path: Path) -> None:
    with fresh_postgres() as dsn:
        storage = f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"'
        with sidecars([storage, storage], tmp_path) as (first, second):
            check_propagation(first, second)


def test_two_sidecar_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    storage = f'[storage]\npath = "{tmp_path / "shared" / "sidecar.db"}"'
    with sidecars([storage, storage], tmp_path) as (first, second):
        check_propagation(first, second)


def _through(proxy: TcpProxy, dsn: str) -> str:
    url = urlsplit(dsn)
    user = f"{url.username}@" if url.username else ""
    return urlunsplit((url.scheme, f"{user}127.0.0.1:{proxy.port}", url.path, url.query, url.fragment))


def test_sidecar_cut_off_from_postgres_serves_its_snapshot_and_catches_up(tmp_path: Path) -> None:
    with fresh_postgres() as dsn:
        target = urlsplit(dsn)
        with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
            direct = f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"'
            proxied = f'[storage]\nbackend = "postgres"\ndsn = "{_through(proxy, dsn)}"'
            with sidecars([direct, proxied], tmp_path) as (first, second):
                first.seats((1, 10))
                first.pin(10, "gpt_5")
                wait_for(lambda: model_of(second, 1) == "gpt_5", PROPAGATION_SECONDS)

                proxy.cut()
                # Cut off: the second sidecar still answers from its snapshot and cache...
                for _ in range(20):
                    assert model_of(second, 1) == "gpt_5"
                # ...refuses writes it cannot commit, with a status a caller can retry...
                with pytest.raises(grpc.RpcError) as refused:
                    second.pin(10, "gpt_5_mini")
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                # ...and misses nothing that happens meanwhile.
                first.pin(10, "claude_sonnet_4_5_20250929")
                time.sleep(1.5)
                assert model_of(second, 1) == "gpt_5"

                proxy.restore()
                waited = wait_for(lambda: model_of(second, 1) == "claude_sonnet_4_5_20250929", 15)
                first.pin(10, "gpt_5_mini")  # a setting changed once the database is back
                wait_for(lambda: model_of(second, 1) == "gpt_5_mini", PROPAGATION_SECONDS)
                assert waited < 15


def _config_versions(metrics_address: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "duo_routing_config_version"
        for sample in family.samples
    }


def test_workers_share_the_port_and_see_each_others_changes(tmp_path: Path) -> None:
    config, port = config_for(tmp_path / "node", f'[storage]\npath = "{tmp_path / "db" / "s.db"}"', tmp_path / "k")
    metrics = f"127.0.0.1:{free_port()}"
    config.write_text(config.read_text().replace("[metrics]\n", f'[metrics]\nlisten = "{metrics}"\n#'))
    config.write_text(config.read_text().replace("[server]\n", "[server]\nworkers = 2\n"))
    with run_sidecar(config, port) as supervisor:
        wait_for(lambda: len(_config_versions(metrics)) == 2, 20)  # both workers up
        client = Client(supervisor)
        client.pin(10, "gpt_5")
        # The change landed on one worker; the other follows through the store within a second.
        waited = wait_for(lambda: set(_config_versions(metrics).values()) == {1.0}, PROPAGATION_SECONDS)
        assert waited < PROPAGATION_SECONDS
        for _ in range(10):  # fresh connections, spread over the workers by the kernel
            fresh = Client(supervisor)
            assert model_of(fresh, 1, namespace=10) == "gpt_5"
            fresh.channel.close()
        client.channel.close()


def test_health_during_a_postgres_outage_keeps_routing_in_service(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    with fresh_postgres() as dsn:
        target = urlsplit(dsn)
        with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
            storage = f'[storage]\nbackend = "postgres"\ndsn = "{_through(proxy, dsn)}"\nprobe_interval_seconds = 0.2'
            with sidecars([storage], tmp_path) as (client,):
                health = health_pb2_grpc.HealthStub(client.channel)

                def status(name: str) -> int:
                    return int(health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status)

                proxy.cut()
                wait_for(lambda: status("gitlab.duo.routing.v1.Storage") == not_serving, 10)
                assert status("gitlab.duo.routing.v1.AdminService") == not_serving
                assert status("gitlab.duo.routing.v1.RoutingService") == serving
                assert status("") == serving
                proxy.restore()
                wait_for(lambda: status("gitlab.duo.routing.v1.Storage") == serving, 15)
