"""Assembles the sidecar: store, snapshot, gRPC services, health, reflection; and shuts it down cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc
from sidecar.catalog_refresh import CatalogRefresher, startup_catalog
from sidecar.completion import Completer
from sidecar.config import Config
from sidecar.control import ControlPlane
from sidecar.domain import DeploymentType
from sidecar.servicers import AdminServicer, RoutingServicer
from sidecar.store.base import Store
from sidecar.store.sqlite import SQLiteStore
from sidecar.tokens import TokenCipher, load_or_create_key
from sidecar.upstream.targets import GatewaySettings

log = logging.getLogger(__name__)

ROUTING_SERVICE = routing_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
HEALTH_NAMES = ("", ROUTING_SERVICE, ADMIN_SERVICE)


class StartupError(RuntimeError):
    """The sidecar cannot start; the message says why."""


def gateway_settings(config: Config) -> GatewaySettings:
    token_file = config.instance.cloud_connector_token_file
    return GatewaySettings(
        base_url=config.instance.ai_gateway_url,
        cloud_connector_token=Path(token_file).read_text().strip() if token_file else "",
        instance_id=config.instance.instance_id,
        realm="saas" if config.instance.deployment is DeploymentType.GITLAB_COM else "self-managed",
        prompt_version=config.upstream.ai_gateway_prompt_version,
    )


def open_store(config: Config) -> Store:
    return SQLiteStore(Path(config.storage.path))


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = open_store(config)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.control: ControlPlane | None = None
        self.completer: Completer | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        """Opens the store, builds the snapshot and starts serving; returns the bound gRPC port."""
        instance = self.config.instance
        catalog = startup_catalog(instance.catalog_path, self.config.storage.data_dir / "catalog.json")
        await self.store.open()
        cipher = TokenCipher(load_or_create_key(self.config.storage.token_key_path))
        self.control = await ControlPlane.load(self.store, cipher, instance.deployment, catalog)
        self.completer = Completer(self.config.upstream, gateway_settings(self.config), self.control)
        self.refresher = CatalogRefresher(self.control, self.completer, self.config.storage.data_dir / "catalog.json")

        # No SO_REUSEPORT: a second sidecar on a busy port must fail, not silently share it.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        routing_pb2_grpc.add_RoutingServiceServicer_to_server(RoutingServicer(self.control, self.completer), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.control, self.refresher, self.store.backend_name), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                ROUTING_SERVICE,
                ADMIN_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            self.port = server.add_insecure_port(self.config.server.listen)
        except RuntimeError as exc:
            await self.store.close()
            raise StartupError(f"cannot listen on {self.config.server.listen}: {exc}") from None
        await server.start()
        self.server = server
        for name in HEALTH_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        # An explicit catalog file is the operator's choice; only the default catalog follows the AI Gateway.
        if instance.catalog_refresh_seconds and not instance.catalog_path:
            self._refresh_task = asyncio.create_task(self.refresher.run_periodically(instance.catalog_refresh_seconds))
        if not self.config.auth.client_secret_file and not self.config.auth.admin_secret_file:
            log.warning("authentication is OFF: any local process can call every RPC (development only)")
        log.info(
            "duo-sidecar serving %s on %s (port %d), storage %s, catalog %s, config version %d",
            self.config.instance.deployment.title,
            self.config.server.listen,
            self.port,
            self.store.backend_name,
            catalog.version,
            self.control.snapshot.config_version,
        )
        return self.port

    async def stop(self) -> None:
        """Health goes NOT_SERVING, new RPCs are refused, in-flight ones get the grace period, then the store closes."""
        await self.health.enter_graceful_shutdown()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            self._refresh_task = None
        if self.server is not None:
            await self.server.stop(self.config.server.grace_period_seconds)
            self.server = None
        if self.completer is not None:
            await self.completer.close()
        await self.store.close()
        log.info("duo-sidecar stopped")


async def serve(config: Config) -> None:
    sidecar = Sidecar(config)
    await sidecar.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: grace period %.1fs", config.server.grace_period_seconds)
    await sidecar.stop()
