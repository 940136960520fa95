"""Fleet mode: sidecars (and workers) sharing one store see each other's changes within a second, and a sidecar
cut off from PostgreSQL keeps serving its last snapshot and catches up when the database is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest

from tests.fleet import Client, config_for, fresh_postgres, model_of, through, wait_for
from tests.helpers import free_port, run_sidecar
from tests.tcp_proxy import TcpProxy

PROPAGATION_SECONDS = 1.0
DEFAULT_MODEL = "claude_sonnet_4_6_vertex"  # duo_chat for a user with no seat and no namespace pin


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
    first.pin(10, "claude_sonnet_4_6")
    wait_for(
        lambda: model_of(second, 2, namespace=10) == "claude_sonnet_4_6", PROPAGATION_SECONDS
    )  # the pin has arrived...
    assert model_of(second, 1) == DEFAULT_MODEL  # ...but user 1 holds no seat in 10 yet (and is now cached)
    first.seats((1, 10))
    # Only the seat, written through the other sidecar, can route user 1 to namespace 10's model.
    wait_for(lambda: model_of(second, 1) == "claude_sonnet_4_6", PROPAGATION_SECONDS)
    first.pin(10, "claude_sonnet_4_5_20250929")
    wait_for(lambda: model_of(second, 1) == "claude_sonnet_4_5_20250929", PROPAGATION_SECONDS)
    # A seat change reaches a user the other sidecar has cached: a second seat pinning another model.
    first.seats((1, 20))
    first.pin(20, "claude_sonnet_4_5_20250929_vertex")
    wait_for(lambda: second.resolve(1) == grpc.StatusCode.FAILED_PRECONDITION, PROPAGATION_SECONDS)
    # And the other way round.
    second.pin(30, "claude_sonnet_4_5_20250929_vertex")
    wait_for(lambda: model_of(first, 2, namespace=30) == "claude_sonnet_4_5_20250929_vertex", PROPAGATION_SECONDS)


def test_two_sidecars_on_one_postgres_database(tmp_path: Path) -> None:
    with fresh_postgres() as dsn:
        storage = f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"'
        with sidecars([storage, storage], tmp_path) as (first, second):
            check_propagation(first, second)


def test_two_sidecar_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    storage = f'[storage]\npath = "{tmp_path / "shared" / "sidecar.db"}"'
    with sidecars([storage, storage], tmp_path) as (first, second):
        check_propagation(first, second)


def test_sidecar_cut_off_from_postgres_serves_its_snapshot_and_catches_up(tmp_path: Path) -> None:
    with fresh_postgres() as dsn:
        target = urlsplit(dsn)
        with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
            direct = f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"'
            proxied = f'[storage]\nbackend = "postgres"\ndsn = "{through(proxy, dsn)}"'
            with sidecars([direct, proxied], tmp_path) as (first, second):
                first.seats((1, 10))
                first.pin(10, "claude_sonnet_4_6")
                wait_for(lambda: model_of(second, 1) == "claude_sonnet_4_6", PROPAGATION_SECONDS)

                proxy.cut()
                # Cut off: the second sidecar still answers from its snapshot and cache...
                for _ in range(20):
                    assert model_of(second, 1) == "claude_sonnet_4_6"
                # ...refuses writes it cannot commit, with a status a caller can retry...
                with pytest.raises(grpc.RpcError) as refused:
                    second.pin(10, "claude_sonnet_4_5_20250929_vertex")
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                # ...and misses nothing that happens meanwhile.
                first.pin(10, "claude_sonnet_4_5_20250929")
                time.sleep(1.5)
                assert model_of(second, 1) == "claude_sonnet_4_6"

                proxy.restore()
                waited = wait_for(lambda: model_of(second, 1) == "claude_sonnet_4_5_20250929", 15)
                first.pin(10, "claude_sonnet_4_5_20250929_vertex")  # a setting changed once the database is back
                # Right after the outage the change listener may still be in its reconnect backoff: the follower's
                # 1 s poll is the bound then (plus a read on a pool that is reconnecting), not LISTEN's few ms.
                wait_for(lambda: model_of(second, 1) == "claude_sonnet_4_5_20250929_vertex", 3 * PROPAGATION_SECONDS)
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
        client.pin(10, "claude_sonnet_4_6")
        # The change landed on one worker; the other follows through the store within a second.
        waited = wait_for(lambda: set(_config_versions(metrics).values()) == {1.0}, PROPAGATION_SECONDS)
        assert waited < PROPAGATION_SECONDS
        for _ in range(10):  # fresh connections, spread over the workers by the kernel
            fresh = Client(supervisor)
            assert model_of(fresh, 1, namespace=10) == "claude_sonnet_4_6"
            fresh.channel.close()
        client.channel.close()


def test_health_during_a_postgres_outage_keeps_routing_in_service(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    with fresh_postgres() as dsn:
        target = urlsplit(dsn)
        with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
            storage = f'[storage]\nbackend = "postgres"\ndsn = "{through(proxy, dsn)}"\nprobe_interval_seconds = 0.2'
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
