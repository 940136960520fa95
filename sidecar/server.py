"""Assembles the sidecar: store, snapshot, gRPC services, health, reflection; and shuts it down cleanly."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc
from sidecar import policy
from sidecar.admission import Admission, max_request_bytes
from sidecar.auth import Authenticator, Secrets
from sidecar.catalog import Catalog
from sidecar.catalog_refresh import CatalogRefresher, startup_catalog
from sidecar.changes import ChangeFollower
from sidecar.completion import Completer
from sidecar.config import Config, InstanceConfig
from sidecar.control import AdminCommands
from sidecar.domain import DeploymentType
from sidecar.edge import Edge
from sidecar.endpoints import EndpointPolicy, parse_cidrs
from sidecar.grpc_errors import StorageFailures
from sidecar.health_probe import StoreProbe
from sidecar.metrics import Metrics, MetricsServer
from sidecar.pipeline import ChangePipeline
from sidecar.servicers import AdminServicer, RoutingServicer
from sidecar.snapshot import InstanceOptions, Snapshot
from sidecar.state import ConfigState
from sidecar.store.base import Store, deployment_type_mismatch_message
from sidecar.store.postgres import PostgresStore, redact_dsn
from sidecar.store.sqlite import SQLiteStore
from sidecar.tokens import Keyring
from sidecar.upstream.targets import GatewaySettings
from sidecar.worker_board import WorkerBoard

log = logging.getLogger(__name__)

ROUTING_SERVICE = routing_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
# Not a service: reports whether the store answers, for operators and probes that want to know.
STORAGE_HEALTH_NAME = "gitlab.duo.routing.v1.Storage"
HEALTH_NAMES = ("", ROUTING_SERVICE, ADMIN_SERVICE, STORAGE_HEALTH_NAME)


def names_down_with_the_store(backend: str) -> tuple[str, ...]:
    """Health names that turn NOT_SERVING while the store is unusable.

    Embedded SQLite: the whole sidecar (a broken local database means a broken node). PostgreSQL: only admin
    writes and the storage name; routing keeps answering from memory, because a database outage is fleet-wide
    and taking every sidecar out of service would stop all GitLab Duo routing.
    """
    if backend == "sqlite":
        return HEALTH_NAMES
    return (ADMIN_SERVICE, STORAGE_HEALTH_NAME)


# The services whose methods get grpc_server_* series (other paths are not counted).
GRPC_SERVICES = (
    routing_pb2.DESCRIPTOR.services_by_name["RoutingService"],
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)


# Calls waiting in gRPC's own backlog cost about 15 KiB each: 10,000 keep the process well inside a 512 MiB limit.
PENDING_CALLS_BACKLOG = 10_000
REFUSAL_WINDOW_SECONDS = 0.25


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


def instance_options(instance: InstanceConfig) -> InstanceOptions:
    """The instance.* keys the routing rules read (check-config allows the first two on self_managed only)."""
    return InstanceOptions(
        self_hosted_ai_gateway=instance.self_hosted_ai_gateway,
        offline_license=instance.offline_license,
        offer_team_only_models=instance.offer_team_only_models,
    )


def auth_secrets(config: Config) -> Secrets:
    client, admin = config.auth.read_secret("client"), config.auth.read_secret("admin")
    return Secrets(client=client.encode() if client else None, admin=admin.encode() if admin else None)


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mutual TLS when a client CA is configured too."""
    server = config.server
    if not server.tls_cert_file:
        return None
    client_ca = Path(server.tls_client_ca_file).read_bytes() if server.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(server.tls_key_file).read_bytes(), Path(server.tls_cert_file).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _write_port_file(path: Path, port: int) -> None:
    """Tells the worker supervisor where this worker serves metrics (a tiny local write)."""
    path.write_text(str(port))


def open_store(config: Config) -> Store:
    timeout = config.storage.timeout_seconds  # every storage wait: connect, pool, statement, lock
    if config.storage.backend == "postgres":
        return PostgresStore(config.storage.dsn, timeout_seconds=timeout)
    return SQLiteStore(Path(config.storage.path), timeout_seconds=timeout)


class DeprecatedPins:
    """duo_routing_deprecated_model_pins, counted again only when the pins or the catalog changed."""

    def __init__(self, state: ConfigState) -> None:
        self._state = state
        self._counted: tuple[object, object, object] | None = None
        self._samples: list[tuple[tuple[str, ...], float]] = []

    def read(self) -> list[tuple[tuple[str, ...], float]]:
        snapshot = self._state.snapshot
        inputs = (snapshot.catalog, snapshot.instance_pins, snapshot.namespace_pins)
        if self._counted is None or any(a is not b for a, b in zip(inputs, self._counted, strict=True)):
            counts = policy.deprecated_pins(snapshot)
            self._samples = [(key, float(n)) for key, n in sorted(counts.items())]
            self._counted = inputs
        return self._samples


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = open_store(config)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.state: ConfigState | None = None
        self.pipeline: ChangePipeline | None = None
        self.follower: ChangeFollower | None = None
        self.board: WorkerBoard | None = None
        self.completer: Completer | None = None
        self.admission: Admission | None = None
        # Storage failures that end calls, told by the edge chain to the store probe.
        self.storage_failures = StorageFailures()
        self._refresh_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._follow_tasks: list[asyncio.Task[None]] = []
        self._health_tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        # One registry per sidecar: tests run several in one process.
        self.metrics = Metrics()
        self.metrics_server = MetricsServer(self.metrics.registry)
        self.metrics_port = 0

    async def start(self) -> int:
        """Opens the store, builds the snapshot and starts serving; returns the bound gRPC port."""
        instance = self.config.instance
        catalog = startup_catalog(instance.catalog_path, self.config.storage.data_dir / "catalog.json")
        await self.store.open()
        try:
            return await self._start_on_open_store(catalog)
        except BaseException:
            # Nothing may keep the process alive after a failed start: close what was opened.
            await self.metrics_server.stop()
            await self.store.close()
            raise

    async def _start_on_open_store(self, catalog: Catalog) -> int:
        instance = self.config.instance
        # The first start records the deployment type (a database from before migration 4: its next start); the
        # settings of another type would be silently ignored, so a sidecar configured for another type refuses.
        recorded = await self.store.claim_deployment_type(instance.deployment.config_name)
        if recorded != instance.deployment.config_name:
            storage = self.config.storage
            where = redact_dsn(storage.dsn) if storage.backend == "postgres" else storage.path
            raise StartupError(deployment_type_mismatch_message(where, recorded, instance.deployment.config_name))
        try:
            cipher = Keyring.open(self.config.storage.token_key_path)
        except (OSError, ValueError) as exc:
            raise StartupError(f"token key file (storage.token_key_file): {exc}") from None
        endpoints = EndpointPolicy(parse_cidrs(self.config.upstream.allowed_cidrs))
        # A worker listens for its peers' changes before it reads the state: none is missed in between.
        self.board = WorkerBoard.from_environment()
        if self.board is not None:
            await self.board.listen(self._peer_changed)
        state = await ConfigState.load(
            self.store,
            cipher,
            instance.deployment,
            catalog,
            self.config.storage.user_cache_size,
            instance_options(instance),
        )
        self.state = state
        # Workers apply a change by reading it from the store: as long to wait for them as for the store.
        self.pipeline = ChangePipeline(state, self.board, self.config.storage.timeout_seconds)
        self.follower = ChangeFollower(state, self.store.follow_poll_seconds)
        state.on_schema_too_new = self._schema_too_new
        if self.board is not None:
            state.on_version = self.board.publish
            self.board.publish(state.version)
        lost = state.vault.undecryptable()
        if lost:
            log.error(
                "the API tokens of self-hosted models %s cannot be decrypted with %s (a lost or replaced key file): "
                "requests to them fail until the key file is restored or the tokens are set again",
                ", ".join(lost),
                self.config.storage.token_key_path,
            )
        self.completer = Completer(self.config.upstream, gateway_settings(self.config), state.vault, endpoints)
        self.refresher = CatalogRefresher(
            state, self.completer, self.config.storage.data_dir / "catalog.json", instance.catalog_path
        )
        refresh_seconds = 0.0 if instance.catalog_path else instance.catalog_refresh_seconds
        self._register_metrics(state, self.completer, self.refresher, refresh_seconds)
        try:
            self.metrics_port = await self.metrics_server.start(self.config.metrics.listen)
        except OSError as exc:
            listen = self.config.metrics.listen
            raise StartupError(f"cannot serve metrics on {listen} (metrics.listen): {exc}") from None

        self.auth = Authenticator(
            auth_secrets(self.config),
            transitioning=self.config.auth.transitioning,
            open_reflection=self.config.auth.reflection == "open",
            on_failure=self.metrics.auth_failure,
        )
        server_config = self.config.server
        self.admission = Admission(
            {
                "routing": server_config.max_concurrent_routing_calls,
                "complete": server_config.max_concurrent_complete_calls,
                "admin": server_config.max_concurrent_admin_calls,
            },
            on_refused=lambda limit: self.metrics.overload_refusals.labels(limit).inc(),
        )
        for limit in self.admission.limits:
            self.metrics.overload_refusals.labels(limit)  # every series from the start: stable series count
        server = grpc.aio.server(
            # No interceptors: every call goes through the one chain of sidecar.edge (auth, limits, metrics and the
            # access log, error translation), built around each method's handler at registration.
            options=[
                # No SO_REUSEPORT unless this is one of several workers (sidecar.workers): a second sidecar on a
                # busy port must fail, not silently share it.
                ("grpc.so_reuseport", int(self.board is not None)),
                ("grpc.max_receive_message_length", server_config.max_receive_message_bytes),
                # gRPC's own backlog of calls not yet taken by the application sheds them as CANCELLED from 1,000
                # on; admission refuses the excess with a proper status instead, so let the backlog grow (bounded).
                ("grpc.server.max_pending_requests", PENDING_CALLS_BACKLOG),
                ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_BACKLOG),
            ],
        )
        edge = Edge(
            authenticator=self.auth,
            admission=self.admission,
            methods=self.metrics.grpc.methods,
            storage_failures=self.storage_failures,
            max_request_bytes=lambda method: max_request_bytes(method, server_config.max_receive_message_bytes),
        )
        reflected = (
            ROUTING_SERVICE,
            ADMIN_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        edge.register(
            server,
            [
                (
                    routing_pb2_grpc.add_RoutingServiceServicer_to_server,
                    RoutingServicer(state, self.completer, self.metrics, self.config.log.log_prompts),
                ),
                (
                    admin_pb2_grpc.add_AdminServiceServicer_to_server,
                    AdminServicer(
                        AdminCommands(self.pipeline, endpoints), self.refresher, self.completer, self.store.backend_name
                    ),
                ),
                (health_pb2_grpc.add_HealthServicer_to_server, self.health),
                (
                    reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                    reflection.aio.ReflectionServicer(reflected),
                ),
            ],
        )
        try:
            credentials = server_credentials(self.config)
            if credentials is None:
                self.port = server.add_insecure_port(self.config.server.listen)
            else:
                self.port = server.add_secure_port(self.config.server.listen, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {self.config.server.listen}: {exc}") from None
        await server.start()
        if self.board is not None:
            # Also tells the worker supervisor that this worker started: a refusal before this point is fatal.
            _write_port_file(self.board.metrics_port_file(self.board.index), self.metrics_port)
        self.server = server
        for name in HEALTH_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        probe = StoreProbe(
            self.store,
            self.health,
            names_down_with_the_store(self.store.backend_name),
            self.config.storage.probe_interval_seconds,
            self.metrics,
            self.storage_failures,
            timeout_seconds=self.config.storage.timeout_seconds,
        )
        self._probe_task = asyncio.create_task(probe.run())
        # Changes committed by other sidecars, workers or CLI commands sharing the store.
        follower = self.follower
        self._follow_tasks = [
            asyncio.create_task(self.store.watch(follower.changed)),
            asyncio.create_task(follower.run()),
        ]
        # An explicit catalog file is the operator's choice; only the default catalog follows the AI Gateway.
        if instance.catalog_refresh_seconds and not instance.catalog_path:
            self._refresh_task = asyncio.create_task(self.refresher.run_periodically(instance.catalog_refresh_seconds))
        if not self.auth.secrets.enabled:
            log.warning("authentication is OFF: any local process can call every RPC (development only)")
        elif self.auth.transitioning:
            log.warning("authentication is in transitioning mode: invalid tokens are counted, not refused")
        log.info(
            "duo-sidecar serving %s on %s (port %d), storage %s, catalog %s, config version %d",
            self.config.instance.deployment.title,
            self.config.server.listen,
            self.port,
            self.store.backend_name,
            catalog.version,
            state.version,
        )
        return self.port

    def _register_metrics(
        self, state: ConfigState, completer: Completer, refresher: CatalogRefresher, refresh_seconds: float
    ) -> None:
        """Hands the metrics what they read at scrape time, and the label sets, kept current on every publish."""
        metrics = self.metrics
        metrics.register_services(GRPC_SERVICES)
        metrics.gauge(
            "duo_routing_config_version",
            "Config version of the routing snapshot in use (bumped by every admin change).",
            lambda: state.version,
        )
        metrics.gauge(
            "duo_routing_snapshot_published_timestamp_seconds",
            "Unix time the routing snapshot in use was published (loaded at start or swapped after a change).",
            lambda: state.published_at,
        )
        metrics.gauge(
            "duo_routing_catalog_age_seconds",
            "Seconds since the model catalog in use was loaded at start or last fetched from the AI Gateway.",
            lambda: max(0.0, time.time() - refresher.refreshed_at),
        )
        refresher.on_failure = metrics.catalog_refresh_failed
        metrics.gauge(
            "duo_routing_catalog_refresh_interval_seconds",
            "instance.catalog_refresh_seconds in effect (0: the catalog is never refreshed).",
            lambda: refresh_seconds,
        )
        metrics.gauge_family(
            "duo_routing_catalog_info",
            "Always 1; catalog_version names the catalog in use.",
            ("catalog_version",),
            lambda: [((state.snapshot.catalog.version,), 1.0)],
        )
        metrics.gauge_family(
            "duo_routing_deprecated_model_pins",
            "Stored pins (instance and namespace) on a model deprecated globally or for the feature, by feature, "
            "model and the GitLab version that removes it; they are still served until then.",
            ("feature", "model", "removal_version"),
            DeprecatedPins(state).read,
        )
        metrics.gauge_family(
            "duo_routing_upstream_circuit_state",
            "Circuit breaker per upstream endpoint: 0 closed, 1 half-open (a trial may pass), 2 open (failing fast).",
            ("endpoint",),
            completer.circuit_states,
        )
        metrics.gauge_family(
            "duo_routing_upstream_in_flight",
            "Complete requests in flight per upstream endpoint (capped by upstream.max_in_flight_per_endpoint).",
            ("endpoint",),
            completer.in_flight,
        )
        labelled: list[Snapshot] = []

        def hand_over_labels(snapshot: Snapshot) -> None:
            last = labelled[0] if labelled else None
            same = last is not None and last.catalog is snapshot.catalog
            if same and last is not None and last.self_hosted_models is snapshot.self_hosted_models:
                return  # most publishes: seats, pins
            labelled[:] = [snapshot]
            models = {*snapshot.catalog.models, *(m.identifier for m in snapshot.self_hosted_models.values())}
            metrics.set_labels(snapshot.catalog.features, models)

        hand_over_labels(state.snapshot)
        state.on_publish = hand_over_labels

    def _peer_changed(self) -> None:
        """Another worker of this sidecar committed a change: catch up now, it waits for us."""
        if self.follower is not None:
            self.follower.changed()

    def _schema_too_new(self, message: str) -> None:
        """Admin writes are refused from now on; routing goes on from the snapshot."""
        self._health_tasks.add(
            asyncio.get_running_loop().create_task(
                self.health.set(ADMIN_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
            )
        )

    async def stop(self, drain_delay_seconds: float = 0.0) -> None:
        """Health goes NOT_SERVING; calls are still served for the drain delay, so load balancers and kubelets see
        it first; then new calls are refused with UNAVAILABLE, in-flight ones get the grace period, and the store
        closes."""
        await self.health.enter_graceful_shutdown()
        if drain_delay_seconds > 0:
            log.info("health is NOT_SERVING; serving for the drain delay of %.1f s", drain_delay_seconds)
            await asyncio.sleep(drain_delay_seconds)
        if self.admission is not None and self.server is not None:
            # Calls gRPC already accepted reach the application and are refused with UNAVAILABLE, rather than
            # being cancelled by the server's stop below.
            self.admission.refuse_new_calls()
            await asyncio.sleep(REFUSAL_WINDOW_SECONDS)
        if self._probe_task is not None:
            self._probe_task.cancel()
            self._probe_task = None
        for task in self._follow_tasks:
            task.cancel()
        self._follow_tasks = []
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            self._refresh_task = None
        if self.board is not None:
            self.board.close()  # peers stop waiting for this worker: it takes no new calls from here on
        if self.server is not None:
            await self.server.stop(self.config.server.grace_period_seconds)
            self.server = None
        if self.pipeline is not None:
            await self.pipeline.drain(self.config.server.grace_period_seconds)  # writes whose callers left
        await self.metrics_server.stop()
        if self.completer is not None:
            await self.completer.close()
        await self.store.close()
        log.info("duo-sidecar stopped")


def run_server(config: Config) -> None:
    """Serves until SIGTERM or SIGINT on the event loop server.event_loop names: uvloop (measured faster with
    grpc.aio: less CPU per streamed message, docs/performance.md) or asyncio's own."""
    factory = None
    if config.server.event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(config))


async def serve(config: Config) -> None:
    sidecar = Sidecar(config)
    await sidecar.start()
    # What startup built (the catalog, the snapshot, every module's objects) lives as long as the process: out of
    # the cyclic collector's way, so the first full collections under load do not walk it (a 10-20 ms pause each).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    # SIGTERM comes from an orchestrator that needs the drain delay; SIGINT is a person at a terminal.
    drain = config.server.drain_delay_seconds if received[0] is signal.SIGTERM else 0.0
    log.info(
        "shutting down (%s): drain delay %.1f s, grace period %.1f s",
        received[0].name,
        drain,
        config.server.grace_period_seconds,
    )
    await sidecar.stop(drain)
