"""Helpers for tests that drive real sidecar processes with blocking gRPC clients (fleet, pipeline, convergence)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
from prometheus_client.parser import text_string_to_metric_families

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc
from tests.helpers import SidecarProcess, free_port
from tests.postgres import admin_dsn, fresh_database
from tests.tcp_proxy import TcpProxy


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


def through(proxy: TcpProxy, dsn: str) -> str:
    """The DSN with the proxy in place of the database server's address."""
    url = urlsplit(dsn)
    user = f"{url.username}@" if url.username else ""
    return urlunsplit((url.scheme, f"{user}127.0.0.1:{proxy.port}", url.path, url.query, url.fragment))


def workers_up(metrics_address: str) -> set[str]:
    """The workers whose metrics the supervisor scraped (the ones that are up)."""
    try:
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return set()
    return {
        sample.labels["worker"]
        for family in text_string_to_metric_families(text)
        if family.name == "duo_routing_config_version"
        for sample in family.samples
    }
