"""Prometheus metrics: one registry per Sidecar, served on its own HTTP port (`metrics.listen`).

Cardinality is bounded by construction: no user, namespace, request or token labels. Feature labels come
from the catalog, model labels from the catalog and the registered self-hosted models, gRPC method labels
from the registered services; anything else is `other`. docs/sre.md describes every metric.

Hot-path cost: what every call records (the grpc_server_* metrics, duo_routing_resolutions_total) lives in
plain per-method and per-series objects created once (per method at start, per feature/provider/source on
first use); a call bumps their attributes on the event loop, with no label lookup and no lock, and the
collectors turn them into samples at scrape time: about 1.5 us a call on the bench machines. State that can be
read (config version, breakers, in-flight counts) is read at scrape time. Less frequent events (Complete,
errors, auth failures) use ordinary prometheus_client metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import grpc
import prometheus_client
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sidecar import __version__

log = logging.getLogger(__name__)

# `_created` series double the series count and no alert here uses them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

OTHER = "other"

# ResolveModel takes well under a millisecond; Complete streams for up to minutes.
GRPC_SECONDS_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
GRPC_SECONDS_BOUNDS = (*GRPC_SECONDS_BUCKETS, math.inf)
_GRPC_SECONDS_LE = tuple(floatToGoString(b) for b in GRPC_SECONDS_BOUNDS)  # type: ignore[no-untyped-call]
OVERHEAD_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# OpenTelemetry GenAI semantic conventions' advice for gen_ai.client.operation.duration and token usage.
GENAI_SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)

# go-grpc-prometheus spells codes the way grpc-go's codes.Code.String() does.
GRPC_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
# Services whose methods get every series up front: a handled_total series for every code (error ratios are
# then defined before the first error) and the latency histogram. The others get the counters and OK up front,
# the histogram when first called and other codes on first use.
FULLY_INITIALIZED_SERVICES = frozenset({"gitlab.duo.routing.v1.RoutingService"})

# The auth step's refusal reasons, created at zero so that rate() works before the first failure.
KNOWN_AUTH_REASONS = (
    "AUTH_TOKEN_MISSING",
    "AUTH_TOKEN_MALFORMED",
    "AUTH_TOKEN_EXPIRED",
    "AUTH_TOKEN_INVALID",
    "AUTH_WRONG_ROLE",
)
_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class Resolved(Protocol):
    """What a routing decision tells the metrics (sidecar.policy.Resolution has it)."""

    @property
    def provider(self) -> _Named: ...

    @property
    def source(self) -> _Named: ...

    @property
    def pinned_model_unavailable(self) -> bool: ...


# A gauge read at scrape time: one value, or (label values, value) pairs.
GaugeRead = Callable[[], float]
GaugeFamilyRead = Callable[[], Iterable[tuple[Sequence[str], float]]]


def grpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming and server_streaming:
        return "bidi_stream"
    if client_streaming:
        return "client_stream"
    return "server_stream" if server_streaming else "unary"


class MethodMetrics:
    """One gRPC method's counts, as plain numbers bumped on the event loop and turned into samples at scrape
    time (GrpcServerMetrics.collect): the edge chain does attribute increments, no label lookup and no lock."""

    __slots__ = (
        "buckets",
        "errors",
        "full",
        "name",
        "ok",
        "path",
        "received",
        "seconds_sum",
        "sent",
        "service",
        "started",
        "type",
    )

    def __init__(self, service: str, name: str, kind: str) -> None:
        self.service = service
        self.name = name
        self.type = kind
        self.path = f"/{service}/{name}"
        self.full = service in FULLY_INITIALIZED_SERVICES
        self.started = 0
        self.received = 0
        self.sent = 0
        self.ok = 0
        self.errors: dict[grpc.StatusCode, int] = {}
        self.buckets = [0] * len(GRPC_SECONDS_BOUNDS)
        self.seconds_sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(GRPC_SECONDS_BOUNDS, seconds)] += 1
        self.seconds_sum += seconds

    def handled(self, code: grpc.StatusCode) -> None:
        """Counts a call that ended with `code` other than OK (OK: `ok += 1`)."""
        self.errors[code] = self.errors.get(code, 0) + 1


class GrpcServerMetrics(Collector):
    """go-grpc-prometheus / py-grpc-prometheus server metrics, under their usual names and labels."""

    LABELS = ("grpc_type", "grpc_service", "grpc_method")

    def __init__(self) -> None:
        self.methods: dict[str, MethodMetrics] = {}

    def register_services(self, services: Iterable[ServiceDescriptor]) -> None:
        for service in services:
            for method in service.methods:
                kind = grpc_type(method.client_streaming, method.server_streaming)
                entry = MethodMetrics(service.full_name, method.name, kind)
                self.methods[entry.path] = entry

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        labels = list(self.LABELS)
        started = CounterMetricFamily("grpc_server_started_total", "RPCs started on the server.", labels=labels)
        handled = CounterMetricFamily(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            labels=[*labels, "grpc_code"],
        )
        received = CounterMetricFamily(
            "grpc_server_msg_received_total", "RPC stream messages received on the server.", labels=labels
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent_total", "gRPC stream messages sent by the server.", labels=labels
        )
        seconds = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Response latency (seconds) of gRPC that had been application-level handled by the server.",
            labels=labels,
        )
        for m in self.methods.values():
            values = [m.type, m.service, m.name]
            started.add_metric(values, m.started)
            received.add_metric(values, m.received)
            sent.add_metric(values, m.sent)
            handled.add_metric([*values, "OK"], m.ok)
            # RoutingService has every code from the start, so error ratios exist before the first error;
            # other methods show the codes they have returned.
            for code, code_name in GRPC_CODE_NAMES.items():
                if code is not grpc.StatusCode.OK and (m.full or code in m.errors):
                    handled.add_metric([*values, code_name], m.errors.get(code, 0))
            count = sum(m.buckets)
            if m.full or count:  # the histogram is 21 series: rarely called methods show it once called
                cumulative, acc = [], 0
                for le, n in zip(_GRPC_SECONDS_LE, m.buckets, strict=True):
                    acc += n
                    cumulative.append((le, acc))
                seconds.add_metric(values, cumulative, m.seconds_sum)
        yield started
        yield handled
        yield received
        yield sent
        yield seconds


class Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class FastCounter(Collector):
    """A labelled counter for the hot path: each series is a plain number bumped on the event loop
    (`child.value += 1`), turned into samples at scrape time."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.series: dict[tuple[str, ...], Count] = {}

    def child(self, *values: str) -> Count:
        count = self.series.get(values)
        if count is None:
            count = self.series[values] = Count()
        return count

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, count in self.series.items():
            family.add_metric(list(values), count.value)
        yield family


class _UpstreamSeries:
    """The series one (provider, model, gen_ai provider) counts in, each looked up once: prometheus_client's
    labels() validates and takes a lock on every call, six times per Complete otherwise."""

    __slots__ = ("_by_error_type", "_by_outcome", "_gen_ai", "_metrics", "_route", "first_token", "input_tokens",
                 "output_tokens", "overhead")  # fmt: skip

    def __init__(self, metrics: Metrics, provider: str, model: str, gen_ai_provider: str) -> None:
        self._metrics = metrics
        self._route = (provider, model)
        self._gen_ai = ("chat", gen_ai_provider, model)
        self.first_token = metrics.upstream_ttft.labels(provider, model)
        self.input_tokens = metrics.genai_tokens.labels(*self._gen_ai, "input")
        self.output_tokens = metrics.genai_tokens.labels(*self._gen_ai, "output")
        self.overhead = metrics.overhead.labels(provider)
        # Outcomes (error reasons) and error types (gRPC code names) are bounded label sets.
        self._by_outcome: dict[str, Any] = {}
        self._by_error_type: dict[str, Any] = {}

    def requests(self, outcome: str) -> Any:
        child = self._by_outcome.get(outcome)
        if child is None:
            child = self._by_outcome[outcome] = self._metrics.upstream_requests.labels(*self._route, outcome)
        return child

    def duration(self, error_type: str) -> Any:
        child = self._by_error_type.get(error_type)
        if child is None:
            child = self._by_error_type[error_type] = self._metrics.genai_duration.labels(*self._gen_ai, error_type)
        return child


class UpstreamCall:
    """Measures one Complete's trip to its upstream; the servicer reports what happened."""

    __slots__ = ("_series",)

    def __init__(self, series: _UpstreamSeries) -> None:
        self._series = series

    def first_token(self, seconds: float) -> None:
        self._series.first_token.observe(seconds)

    def usage(self, input_tokens: int, output_tokens: int) -> None:
        self._series.input_tokens.observe(input_tokens)
        self._series.output_tokens.observe(output_tokens)

    def done(
        self, outcome: str, error_type: str, upstream_seconds: float, handler_seconds: float, waited: float
    ) -> None:
        """outcome: ok, cancelled, deadline_exceeded or the error reason (lower case); error_type: a gRPC code name
        or "" on success; waited: seconds spent waiting on the upstream, the rest of handler_seconds is ours."""
        series = self._series
        series.requests(outcome).inc()
        series.duration(error_type).observe(upstream_seconds)
        series.overhead.observe(max(0.0, handler_seconds - waited))


def outcome_label(reason: str) -> str:
    return reason.lower() if _REASON.fullmatch(reason) else "error"


def error_outcome(reason: str, code: str) -> tuple[str, str]:
    """(outcome, error_type) of a Complete that failed with an error of `reason` and status `code` (a
    grpc.StatusCode name): the reason and the code's Prometheus name."""
    return outcome_label(reason), GRPC_CODE_NAMES[grpc.StatusCode[code]]


def interrupted_outcome(exc: BaseException, time_remaining: float | None) -> tuple[str, str]:
    """(outcome, error_type) of a Complete that ended by an exception other than a DuoError."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        if time_remaining is not None and time_remaining <= 0:
            return "deadline_exceeded", "DeadlineExceeded"
        return "cancelled", "Canceled"
    return "error", "Unknown"


class Metrics:
    """Every metric of one sidecar, in its own registry (several sidecars may share a process in tests).

    A leaf: owners count through its methods, register gauges read at scrape time, and hand over the label sets
    (features, models) when the catalog or the models change; it imports nothing else of the sidecar."""

    def __init__(self, features: Iterable[str] = (), models: Iterable[str] = ()) -> None:
        self._features = frozenset(features)
        self._models = frozenset(models)
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.grpc = GrpcServerMetrics()
        registry.register(self.grpc)

        # -- routing --------------------------------------------------------------------------------------
        self.resolutions = FastCounter(
            "duo_routing_resolutions_total",
            "Successful routing decisions (ResolveModel and Complete) by requested feature, provider and rule.",
            ("feature", "provider", "source"),
        )
        registry.register(self.resolutions)
        self.default_namespace_required = Counter(
            "duo_routing_default_namespace_required_total",
            "Requests refused with DEFAULT_NAMESPACE_REQUIRED: a multi-seat user has no default Duo namespace.",
            ("feature",),
            registry=registry,
        )
        self.no_model_configured = Counter(
            "duo_routing_no_model_configured_total",
            "Requests refused with NO_MODEL_CONFIGURED: a hybrid or offline instance has no model for the feature.",
            ("feature",),
            registry=registry,
        )
        self.pinned_model_unavailable = Counter(
            "duo_routing_pinned_model_unavailable_total",
            "Requests whose pinned model left the catalog and were served the feature's default instead.",
            ("feature",),
            registry=registry,
        )
        self.catalog_refresh_failures = Counter(
            "duo_routing_catalog_refresh_failures_total",
            "Catalog refreshes from the AI Gateway that kept the catalog in use: reason unreachable (the fetch "
            "failed) or malformed (the document was refused: unparsable, or failing the gateway's own checks).",
            ("reason",),
            registry=registry,
        )
        for kind in ("unreachable", "malformed"):
            self.catalog_refresh_failures.labels(kind)
        self.auth_failures = Counter(
            "duo_routing_auth_failures_total",
            "Calls whose credentials failed; enforced=false: transitioning mode let the call through.",
            ("reason", "enforced"),
            registry=registry,
        )
        for reason in KNOWN_AUTH_REASONS:
            for enforced in ("true", "false"):
                self.auth_failures.labels(reason, enforced)
        self.store_up = Gauge(
            "duo_routing_store_up",
            "1 when the last storage probe succeeded, 0 when the store is unusable (health is NOT_SERVING).",
            registry=registry,
        )
        self.store_up.set(0)
        self.storage_errors = Counter(
            "duo_routing_storage_errors_total",
            "Calls that failed with STORAGE_UNAVAILABLE because the database failed or did not answer in time.",
            ("grpc_method",),
            registry=registry,
        )
        self.overload_refusals = Counter(
            "duo_routing_overload_refusals_total",
            "Calls refused with RESOURCE_EXHAUSTED / OVERLOADED: the limit of calls in flight was reached.",
            ("limit",),
            registry=registry,
        )
        build = Gauge(
            "duo_routing_build_info", "Always 1; labels name the sidecar version.", ("version",), registry=registry
        )
        build.labels(__version__).set(1)

        # -- Complete and its upstreams -----------------------------------------------------------------
        self.upstream_requests = Counter(
            "duo_routing_upstream_requests_total",
            "Complete requests sent upstream, by provider, model and outcome (ok, cancelled, or the error reason).",
            ("provider", "model", "outcome"),
            registry=registry,
        )
        self.upstream_ttft = Histogram(
            "duo_routing_upstream_time_to_first_token_seconds",
            "From starting the upstream request to its first text chunk.",
            ("provider", "model"),
            registry=registry,
            buckets=GENAI_SECONDS_BUCKETS,
        )
        self.overhead = Histogram(
            "duo_routing_overhead_seconds",
            "Complete: the sidecar's own time, i.e. handler time minus time spent waiting on the upstream.",
            ("provider",),
            registry=registry,
            buckets=OVERHEAD_SECONDS_BUCKETS,
        )
        genai = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
        self.genai_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (OpenTelemetry GenAI semantic conventions), upstream start to last chunk.",
            (*genai, "error_type"),
            registry=registry,
            buckets=GENAI_SECONDS_BUCKETS,
        )
        self.genai_tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per Complete (OpenTelemetry GenAI semantic conventions); estimated on the AI Gateway route.",
            (*genai, "gen_ai_token_type"),
            registry=registry,
            buckets=GENAI_TOKEN_BUCKETS,
        )

        self._resolution_children: dict[tuple[str, Any, Any], Count] = {}
        self._upstream_series: dict[tuple[str, str, str], _UpstreamSeries] = {}
        self._gauges = _Gauges()
        registry.register(self._gauges)

    # -- wiring ----------------------------------------------------------------------------------------

    def register_services(self, services: Sequence[ServiceDescriptor]) -> None:
        """Creates the grpc_server_* children of every method of these services."""
        self.grpc.register_services(services)

    def gauge(self, name: str, documentation: str, read: GaugeRead) -> None:
        """A gauge whose value `read` returns at scrape time."""
        self._gauges.add(name, documentation, (), lambda: [((), read())])

    def gauge_family(self, name: str, documentation: str, labelnames: Sequence[str], read: GaugeFamilyRead) -> None:
        """A labelled gauge whose (label values, value) pairs `read` returns at scrape time."""
        self._gauges.add(name, documentation, tuple(labelnames), read)

    def set_labels(self, features: Iterable[str], models: Iterable[str]) -> None:
        """The feature and model label values allowed from now on (the catalog or the models changed)."""
        features, models = frozenset(features), frozenset(models)
        if features != self._features:
            self._resolution_children.clear()  # children were chosen under the old label set
        if models != self._models:
            self._upstream_series.clear()  # keeps the cache as small as the label set
        self._features, self._models = features, models

    # -- labels ----------------------------------------------------------------------------------------

    def feature_label(self, feature: str) -> str:
        return feature if feature in self._features else OTHER

    def model_label(self, model: str) -> str:
        return model if model in self._models else OTHER

    # -- routing ---------------------------------------------------------------------------------------

    def resolved(self, feature: str, resolution: Resolved) -> None:
        """A successful routing decision for `feature` (as requested)."""
        key = (feature, resolution.provider, resolution.source)
        child = self._resolution_children.get(key)
        if child is None:
            child = self._resolution_child(key)
        child.value += 1
        if resolution.pinned_model_unavailable:
            self.pinned_model_unavailable.labels(self.feature_label(feature)).inc()

    def _resolution_child(self, key: tuple[str, Any, Any]) -> Count:
        feature, provider, source = key
        label = self.feature_label(feature)
        child = self.resolutions.child(label, provider.name.lower(), source.name.lower())
        if label != OTHER:  # only catalog features are remembered: the dict stays as small as the label set
            self._resolution_children[key] = child
        return child

    def default_namespace_required_for(self, feature: str) -> None:
        """A request refused with DEFAULT_NAMESPACE_REQUIRED."""
        self.default_namespace_required.labels(self.feature_label(feature)).inc()

    def no_model_configured_for(self, feature: str) -> None:
        """A request refused with NO_MODEL_CONFIGURED."""
        self.no_model_configured.labels(self.feature_label(feature)).inc()

    def catalog_refresh_failed(self, kind: str) -> None:
        """A catalog refresh that kept the catalog in use; kind is unreachable or malformed."""
        self.catalog_refresh_failures.labels(kind if kind in ("unreachable", "malformed") else OTHER).inc()

    def auth_failure(self, reason: str, enforced: bool) -> None:
        """For the auth step of the edge chain: a call whose credentials failed. `reason` is the ErrorInfo reason
        (UPPER_SNAKE_CASE, e.g. AUTH_TOKEN_EXPIRED); enforced=False means transitioning mode let it through."""
        label = reason if _REASON.fullmatch(reason) else OTHER
        self.auth_failures.labels(label, "true" if enforced else "false").inc()

    # -- Complete --------------------------------------------------------------------------------------

    def upstream_call(self, provider: str, model: str, gen_ai_provider: str) -> UpstreamCall:
        """One Complete's trip: provider (gitlab_ai_gateway, self_hosted), the model's identifier (an unknown one
        is counted as other) and the OpenTelemetry gen_ai.provider.name."""
        key = (provider, self.model_label(model), gen_ai_provider)
        series = self._upstream_series.get(key)
        if series is None:  # bounded: providers x (catalog models and "other") x gen_ai providers
            series = self._upstream_series[key] = _UpstreamSeries(self, *key)
        return UpstreamCall(series)


class _Gauges(Collector):
    """Gauges their owners registered, read at scrape time: nothing to update on the hot path."""

    def __init__(self) -> None:
        self._gauges: list[tuple[str, str, tuple[str, ...], GaugeFamilyRead]] = []

    def add(self, name: str, documentation: str, labelnames: tuple[str, ...], read: GaugeFamilyRead) -> None:
        self._gauges.append((name, documentation, labelnames, read))

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for name, documentation, labelnames, read in self._gauges:
            family = GaugeMetricFamily(name, documentation, labels=list(labelnames))
            for values, value in read():
                family.add_metric(list(values), value)
            yield family


class MetricsServer:
    """Serves GET /metrics: Prometheus text format, or OpenMetrics when the Accept header asks for it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics(self, request: web.Request) -> web.Response:
        registry: Any = self.registry
        names = request.query.getall("name[]", [])
        if names:
            registry = registry.restricted_registry(names)
        encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(registry), headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    async def start(self, listen: str) -> int:
        """Binds `listen` (HOST:PORT, port 0 picks one) and returns the bound port; OSError if it cannot."""
        host, _, port = listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_port=False)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
