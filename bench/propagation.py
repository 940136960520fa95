"""Propagation: how long an admin change takes to reach ResolveModel on every sidecar sharing one PostgreSQL database.

    python -m bench.propagation                        # 3 sidecars, 200 changes
    python -m bench.propagation --changes 100 --json   # the report as JSON on stdout
    python -m bench.propagation --postgres postgresql://postgres@127.0.0.1:5432/test --strict

Starts real `duo-sidecar serve` processes (GitLab.com rules, auth off) on a fresh database of the given server,
then makes admin changes one after another, change k on sidecar k mod N, cycling through three kinds: a namespace
pin for duo_chat to another model, a seat for a new user in a pinned namespace, and a new default namespace for
a user holding seats in several. From the moment the admin RPC returns, ResolveModel is polled on every sidecar
at once (grpc.aio, about every millisecond) until each gives the answer the change implies; a change not
visible everywhere within the timeout counts as a failure. The sidecar that took the write must answer the new
value on its first call (read-your-writes).

Targets (DESIGN section 6, "visible on every other sidecar within 1 s"): p99 of "visible on all" <= 100 ms,
every change visible within 1 s, no read-your-writes violations, no failures. Everything runs on 127.0.0.1; the
sidecars and the database are always removed at the end. Results also go to var/bench/propagation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc

from bench import postgres
from bench.run import Server, running
from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc, types_pb2
from sidecar.catalog import load_catalog
from tests.helpers import BIN, REPO, free_port, wait_serving, write_config

OUTPUT = REPO / "var" / "bench" / "propagation.json"
LOGS = REPO / "var" / "bench" / "propagation-logs"  # sidecar logs are kept here when something went wrong
DEFAULT_DSN = os.environ.get("DUO_SIDECAR_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_P99_MS = 100.0
DESIGN_LIMIT_MS = 1000.0
METADATA = (("x-duo-actor", "bench-propagation"),)
FEATURE = "duo_chat"

# GitLab.com-sized ids, apart from those of bench.seed.
NAMESPACES = tuple(range(96_000_001, 96_000_009))  # every one pinned before the measured changes start
CONTEXT_USER = 22_000_001  # asks in the context of a namespace: sees that namespace's pin, whatever its seats
MULTI_SEAT_USER = 22_000_002  # a seat in every namespace above; its default namespace moves around
FIRST_NEW_USER = 22_100_001  # each seat change gives the next of these its only seat

PIN, SEAT, DEFAULT = "namespace pin", "seat assignment", "default namespace"
KINDS = (PIN, SEAT, DEFAULT)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout stays clean for --json


# -- answers and changes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The parts of a ResolveModel answer a change alters; `error` is the status code of a failed call."""

    model: str = ""
    source: str = ""
    namespace: int = 0
    error: str = ""

    def __str__(self) -> str:
        if self.error:
            return f"error {self.error}"
        return f"{self.model} via {self.source} (namespace {self.namespace})"


def route(model: str, source: int, namespace: int) -> Answer:
    return Answer(model, types_pb2.SelectionSource.Name(source).removeprefix("SELECTION_SOURCE_"), namespace)


@dataclass(frozen=True)
class Plan:
    """One admin change: what to call, what ResolveModel answers before it, and what it must answer after."""

    kind: str
    description: str
    probe: routing_pb2.ResolveModelRequest
    before: Answer
    expected: Answer
    write: Callable[[Any], Awaitable[Any]]  # given the writing sidecar's AdminService stub


class Workload:
    """Plans the next change of each kind from a model of what the database holds."""

    def __init__(self) -> None:
        info = load_catalog().features[FEATURE]
        self.default_model = info.default_model
        # Pins never use the default model, so a seat in a pinned namespace always changes the model too.
        self.models = [m for m in info.selectable_models if m != self.default_model]
        self.pins = {n: self.models[i % len(self.models)] for i, n in enumerate(NAMESPACES)}
        self.default_namespace = NAMESPACES[0]
        self.counts = dict.fromkeys(KINDS, 0)

    async def seed(self, admin: Any) -> None:
        """The starting state: every namespace pinned, the multi-seat user with seats everywhere and a default."""
        for namespace, model in self.pins.items():
            await pin(admin, namespace, model)
        await seats(admin, [(MULTI_SEAT_USER, n) for n in NAMESPACES])
        await admin.SetUserDefaultNamespace(
            admin_pb2.SetUserDefaultNamespaceRequest(user_id=MULTI_SEAT_USER, namespace_id=self.default_namespace),
            metadata=METADATA,
            timeout=10,
        )

    def seeded(self) -> list[tuple[routing_pb2.ResolveModelRequest, Answer]]:
        """Probes that show the starting state, with their answers."""
        probes = [
            (context_probe(n), route(m, types_pb2.SELECTION_SOURCE_CONTEXT_NAMESPACE, n)) for n, m in self.pins.items()
        ]
        probes.append((no_context_probe(MULTI_SEAT_USER), self.default_answer(self.default_namespace)))
        return probes

    def default_answer(self, namespace: int) -> Answer:
        return route(self.pins[namespace], types_pb2.SELECTION_SOURCE_DEFAULT_NAMESPACE, namespace)

    def plan(self, kind: str) -> Plan:
        count = self.counts[kind]
        self.counts[kind] += 1
        if kind == PIN:
            namespace = NAMESPACES[count % len(NAMESPACES)]
            old = self.pins[namespace]
            new = self.models[(self.models.index(old) + 1) % len(self.models)]
            self.pins[namespace] = new
            source = types_pb2.SELECTION_SOURCE_CONTEXT_NAMESPACE
            return Plan(
                kind,
                f"namespace {namespace} pins {FEATURE} to {new} (was {old})",
                context_probe(namespace),
                route(old, source, namespace),
                route(new, source, namespace),
                lambda admin: pin(admin, namespace, new),
            )
        if kind == SEAT:
            user = FIRST_NEW_USER + count
            namespace = NAMESPACES[count % len(NAMESPACES)]
            return Plan(
                kind,
                f"user {user} gets a seat in namespace {namespace} (pinned to {self.pins[namespace]})",
                no_context_probe(user),
                route(self.default_model, types_pb2.SELECTION_SOURCE_GITLAB_DEFAULT, 0),
                route(self.pins[namespace], types_pb2.SELECTION_SOURCE_SOLE_SEAT_NAMESPACE, namespace),
                lambda admin: seats(admin, [(user, namespace)]),
            )
        old_namespace = self.default_namespace
        namespace = NAMESPACES[(NAMESPACES.index(old_namespace) + 1) % len(NAMESPACES)]
        self.default_namespace = namespace
        request = admin_pb2.SetUserDefaultNamespaceRequest(user_id=MULTI_SEAT_USER, namespace_id=namespace)
        return Plan(
            kind,
            f"user {MULTI_SEAT_USER} sets default namespace {namespace} (was {old_namespace})",
            no_context_probe(MULTI_SEAT_USER),
            self.default_answer(old_namespace),
            self.default_answer(namespace),
            lambda admin: admin.SetUserDefaultNamespace(request, metadata=METADATA, timeout=10),
        )


def context_probe(namespace: int) -> routing_pb2.ResolveModelRequest:
    return routing_pb2.ResolveModelRequest(user_id=CONTEXT_USER, feature=FEATURE, root_namespace_id=namespace)


def no_context_probe(user: int) -> routing_pb2.ResolveModelRequest:
    return routing_pb2.ResolveModelRequest(user_id=user, feature=FEATURE, root_namespace_id=0)


async def pin(admin: Any, namespace: int, model: str) -> Any:
    request = admin_pb2.UpdateNamespaceModelSelectionRequest(
        namespace_id=namespace, feature=FEATURE, offered_model_ref=model
    )
    return await admin.UpdateNamespaceModelSelection(request, metadata=METADATA, timeout=10)


async def seats(admin: Any, pairs: list[tuple[int, int]]) -> Any:
    batch = admin_pb2.SyncSeatAssignmentsRequest(
        assignments=[admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=True) for u, n in pairs]
    )
    return await admin.SyncSeatAssignments(iter([batch]), metadata=METADATA, timeout=10)


def kind_for(index: int, sidecars: int) -> str:
    # Shifted once per round of sidecars, so every kind is written on every sidecar (not kind k on sidecar k).
    return KINDS[(index + index // sidecars) % len(KINDS)]


# -- polling --------------------------------------------------------------------------------------


@dataclass
class Node:
    index: int
    routing: Any  # RoutingServiceStub on a grpc.aio channel
    admin: Any  # AdminServiceStub on the same channel
    server: Server


async def resolve(node: Node, request: routing_pb2.ResolveModelRequest) -> tuple[Answer, str]:
    """The answer and the config version it was computed from."""
    try:
        response: routing_pb2.ResolveModelResponse = await node.routing.ResolveModel(request, timeout=1)
    except grpc.RpcError as error:
        return Answer(error=str(error.code().name)), ""
    return route(response.model_identifier, response.source, response.governing_namespace_id), response.config_version


@dataclass
class Sighting:
    """What polling one sidecar saw after a change."""

    visible_ms: float | None  # from the admin RPC's return to the first answer with the new value
    first: Answer
    last: Answer
    last_config_version: str
    calls: int


async def watch(
    node: Node, request: routing_pb2.ResolveModelRequest, expected: Answer, start: float, limit: float, poll: float
) -> Sighting:
    """Polls until the sidecar answers `expected`; the time counts until that answer arrived."""
    first: Answer | None = None
    calls = 0
    while True:
        answer, version = await resolve(node, request)
        now = time.perf_counter()
        calls += 1
        if first is None:
            first = answer
        if answer == expected:
            return Sighting((now - start) * 1000, first, answer, version, calls)
        if now - start >= limit:
            return Sighting(None, first, answer, version, calls)
        await asyncio.sleep(poll)


# -- the benchmark --------------------------------------------------------------------------------


@dataclass
class Change:
    index: int
    kind: str
    writer: int
    description: str
    expected: str
    write_ms: float = 0.0
    config_version: str = ""  # the version the admin RPC reported, when it reports one
    write_error: str = ""
    read_your_writes: bool = True
    first_answer_on_writer: str = ""
    visible_ms: list[float | None] = field(default_factory=list)  # per sidecar
    visible_on_all_ms: float | None = None
    polls: list[int] = field(default_factory=list)
    before_ms: list[float] = field(default_factory=list)  # round trip of the read before the write, per sidecar
    unexpected_before: list[str] = field(default_factory=list)  # sidecars not answering the predicted old value
    lagging: list[str] = field(default_factory=list)  # sidecars that never showed the change, with their answer

    @property
    def failed(self) -> bool:
        return bool(self.write_error) or self.visible_on_all_ms is None


class SetupError(Exception):
    """The benchmark could not get to its first measured change."""


@dataclass(frozen=True)
class Settings:
    sidecars: int
    changes: int
    timeout_seconds: float
    poll_ms: float
    postgres_dsn: str


async def measure(settings: Settings, servers: list[Server]) -> list[Change]:
    channels = [grpc.aio.insecure_channel(s.address) for s in servers]
    try:
        nodes = [
            Node(i, routing_pb2_grpc.RoutingServiceStub(c), admin_pb2_grpc.AdminServiceStub(c), s)
            for i, (c, s) in enumerate(zip(channels, servers, strict=True))
        ]
        workload = Workload()
        try:
            await workload.seed(nodes[0].admin)
        except grpc.RpcError as error:
            raise SetupError(f"seeding through sidecar 0 failed: {error.code().name}: {error.details()}") from None
        start = time.perf_counter()
        for request, expected in workload.seeded():  # also opens every connection before the first measurement
            sightings = await asyncio.gather(*(watch(n, request, expected, start, 10, 0.01) for n in nodes))
            for node, sighting in zip(nodes, sightings, strict=True):
                if sighting.visible_ms is None:
                    raise SetupError(f"sidecar {node.index} never showed the seeded state: {sighting.last}")
        log(f"seeded {len(NAMESPACES)} pins, {len(NAMESPACES)} seats, 1 default namespace; visible on every sidecar")

        changes = []
        for index in range(settings.changes):
            change = await one_change(index, workload, nodes, settings)
            changes.append(change)
            for node in nodes:
                if node.server.process.poll() is not None:
                    tail = node.server.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"sidecar {node.index} exited with {node.server.process.returncode}:\n{tail}")
            if change.failed:
                log(f"  change {index} ({change.kind} on sidecar {change.writer}) FAILED: {failure_text(change)}")
            if (index + 1) % 50 == 0 or index + 1 == settings.changes:
                log(f"  {index + 1}/{settings.changes} changes")
        return changes
    finally:
        for channel in channels:
            await channel.close()


async def one_change(index: int, workload: Workload, nodes: list[Node], settings: Settings) -> Change:
    writer = nodes[index % len(nodes)]
    plan = workload.plan(kind_for(index, len(nodes)))
    change = Change(index, plan.kind, writer.index, plan.description, str(plan.expected))

    async def before(node: Node) -> tuple[Answer, float]:
        started = time.perf_counter()
        answer, _ = await resolve(node, plan.probe)
        return answer, (time.perf_counter() - started) * 1000

    befores = await asyncio.gather(*(before(n) for n in nodes))  # also caches the user everywhere
    change.before_ms = [ms for _, ms in befores]
    change.unexpected_before = [
        f"sidecar {n.index}: {a}" for n, (a, _) in zip(nodes, befores, strict=True) if a != plan.before
    ]

    started = time.perf_counter()
    try:
        response = await plan.write(writer.admin)
    except grpc.RpcError as error:
        change.write_ms = (time.perf_counter() - started) * 1000
        change.write_error = f"{error.code().name}: {error.details()}"
        return change
    returned = time.perf_counter()
    change.write_ms = (returned - started) * 1000
    change.config_version = str(getattr(response, "config_version", ""))

    timeout, poll = settings.timeout_seconds, settings.poll_ms / 1000
    sightings = await asyncio.gather(*(watch(n, plan.probe, plan.expected, returned, timeout, poll) for n in nodes))
    mine = sightings[writer.index]
    change.read_your_writes = mine.first == plan.expected
    change.first_answer_on_writer = str(mine.first)
    change.visible_ms = [s.visible_ms for s in sightings]
    change.polls = [s.calls for s in sightings]
    change.lagging = [
        f"sidecar {n.index} still answered {s.last} (config version {s.last_config_version or '?'}) "
        f"after {s.calls} calls"
        for n, s in zip(nodes, sightings, strict=True)
        if s.visible_ms is None
    ]
    if not change.lagging:
        change.visible_on_all_ms = max(s.visible_ms or 0.0 for s in sightings)
    return change


def failure_text(change: Change) -> str:
    if change.write_error:
        return f"the admin RPC failed: {change.write_error}"
    made = f" (the write made config version {change.config_version})" if change.config_version else ""
    return "; ".join(change.lagging) + made


# -- results --------------------------------------------------------------------------------------


def percentile(values: list[float], quantile: float) -> float | None:
    """Nearest rank: the smallest value with at least `quantile` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)] if ordered else None


@dataclass
class Stats:
    """Latencies in ms. A change not visible within the timeout counts as slower than every other one (a percentile
    that falls on such a change is None); a change whose admin RPC failed has no latency."""

    changes: int
    visible: int  # visible within the timeout
    timed_out: int
    write_failed: int
    failures: int  # timed_out + write_failed
    read_your_writes_violations: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, changes: list[Change], latency: Callable[[Change], float | None], reader: bool = False) -> Stats:
        written = [c for c in changes if not c.write_error]
        values = [math.inf if (v := latency(c)) is None else v for c in written]

        def finite(value: float | None) -> float | None:
            return None if value is None or math.isinf(value) else value

        timed_out = values.count(math.inf)
        write_failed = len(changes) - len(written)
        return cls(
            changes=len(changes),
            visible=len(values) - timed_out,
            timed_out=timed_out,
            write_failed=write_failed,
            failures=timed_out + write_failed,
            # Only the writing sidecar must show its own change at once.
            read_your_writes_violations=0 if reader else sum(not c.read_your_writes for c in written),
            p50_ms=finite(percentile(values, 0.5)),
            p99_ms=finite(percentile(values, 0.99)),
            max_ms=finite(max(values, default=None)),
        )


@dataclass
class Report:
    settings: Settings
    overall: Stats  # latency: visible on all sidecars
    by_kind: dict[str, Stats]
    by_writer: dict[str, Stats]  # latency: visible on all, for changes written on that sidecar
    by_reader: dict[str, Stats]  # latency: visible on that sidecar, for changes written on another one
    write_p50_ms: float | None
    write_p99_ms: float | None
    # ResolveModel round trip of the reads before each change (every sidecar at once, nothing changing): the
    # floor under "visible", which counts until the new answer has arrived.
    read_p50_ms: float | None
    read_p99_ms: float | None
    target_p99_ms: float
    p99_within_target: bool
    all_within_design_limit: bool  # every change visible on all within 1 s
    passed: bool
    unexpected_before: int  # changes where a sidecar did not answer the predicted old value beforehand
    total_seconds: float
    failures: list[dict[str, object]]
    changes: list[Change]
    logs: str = ""


def build_report(settings: Settings, changes: list[Change], total_seconds: float) -> Report:
    def on_all(change: Change) -> float | None:
        return change.visible_on_all_ms

    def on(reader: int) -> Callable[[Change], float | None]:
        return lambda change: change.visible_ms[reader]

    by_reader = {
        f"sidecar {r}": Stats.of([c for c in changes if c.writer != r and not c.write_error], on(r), reader=True)
        for r in range(settings.sidecars)
    }
    overall = Stats.of(changes, on_all)
    writes = [c.write_ms for c in changes]
    reads = [ms for c in changes for ms in c.before_ms]
    p99_ok = overall.p99_ms is not None and overall.p99_ms <= TARGET_P99_MS
    within_limit = overall.failures == 0 and overall.max_ms is not None and overall.max_ms <= DESIGN_LIMIT_MS
    return Report(
        settings=settings,
        overall=overall,
        by_kind={k: Stats.of(s, on_all) for k in KINDS if (s := [c for c in changes if c.kind == k])},
        by_writer={
            f"sidecar {w}": Stats.of(s, on_all)
            for w in range(settings.sidecars)
            if (s := [c for c in changes if c.writer == w])
        },
        by_reader=by_reader,
        write_p50_ms=percentile(writes, 0.5),
        write_p99_ms=percentile(writes, 0.99),
        read_p50_ms=percentile(reads, 0.5),
        read_p99_ms=percentile(reads, 0.99),
        target_p99_ms=TARGET_P99_MS,
        p99_within_target=p99_ok,
        all_within_design_limit=within_limit,
        passed=p99_ok and within_limit and overall.read_your_writes_violations == 0,
        unexpected_before=sum(bool(c.unexpected_before) for c in changes),
        total_seconds=total_seconds,
        failures=[
            {
                "change": c.index,
                "kind": c.kind,
                "written_on": f"sidecar {c.writer}",
                "what": c.description,
                "expected": c.expected,
                "problem": failure_text(c),
            }
            for c in changes
            if c.failed
        ],
        changes=changes,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _latencies(s: Stats, timeout: float) -> str:
    """p50 / p99 / max; a percentile that falls on a timed-out change shows as more than the timeout."""

    def ms(value: float | None) -> str:
        return f">{timeout * 1000:.0f}" if value is None and s.timed_out else _ms(value)

    return f"{ms(s.p50_ms)} / {ms(s.p99_ms)} / {ms(s.max_ms)}"


def _row(name: str, s: Stats, timeout: float, rywv: bool = True) -> str:
    latency = _latencies(s, timeout)
    violations = str(s.read_your_writes_violations) if rywv else "n/a"
    return f"  {name:<20} {s.changes:>7}  {latency:>22}  {violations:>16}  {s.failures:>8}"


def print_report(report: Report) -> None:
    s = report.settings
    header = f"  {'':<20} {'changes':>7}  {'p50 / p99 / max ms':>22}  {'read-your-writes':>16}  {'failures':>8}"
    print()
    print(f"Propagation: {s.sidecars} duo-sidecar processes (gitlab_com, auth off) on one fresh PostgreSQL database")
    print(
        f"{s.changes} admin changes, change k written on sidecar k mod {s.sidecars}; after each admin RPC returns, "
        f"ResolveModel polled on every sidecar concurrently every ~{s.poll_ms:g} ms; {s.timeout_seconds:g} s timeout"
    )
    print()
    print("visible on ALL sidecars, from the admin RPC's return")
    print(header)
    for kind, stats in report.by_kind.items():
        print(_row(kind, stats, s.timeout_seconds))
    for writer, stats in report.by_writer.items():
        print(_row(f"written on {writer}", stats, s.timeout_seconds))
    print(_row("all changes", report.overall, s.timeout_seconds))
    print()
    print("visible on one sidecar, for changes written on another")
    print(header)
    for reader, stats in report.by_reader.items():
        print(_row(f"read on {reader}", stats, s.timeout_seconds, rywv=False))
    print()
    print(f"admin RPC latency p50 / p99: {_ms(report.write_p50_ms)} / {_ms(report.write_p99_ms)} ms")
    print(
        f"ResolveModel round trip with nothing changing (the reads before each change, every sidecar at once) "
        f"p50 / p99: {_ms(report.read_p50_ms)} / {_ms(report.read_p99_ms)} ms"
    )
    if report.unexpected_before:
        print(f"{report.unexpected_before} changes found a sidecar not answering the expected old value beforehand:")
        for c in [c for c in report.changes if c.unexpected_before][:10]:
            print(f"  change {c.index} ({c.kind}): {'; '.join(c.unexpected_before)}")
    for failure in report.failures:
        print(
            f"FAILURE change {failure['change']} ({failure['kind']}, written on {failure['written_on']}): "
            f"{failure['what']}; expected {failure['expected']}; {failure['problem']}"
        )
    violations = [c for c in report.changes if not c.read_your_writes and not c.write_error]
    for c in violations[:10]:
        print(
            f"READ-YOUR-WRITES change {c.index} ({c.kind}, sidecar {c.writer}): {c.description}; first answer "
            f"{c.first_answer_on_writer}, expected {c.expected}"
        )
    o = report.overall
    verdict = "PASS" if report.p99_within_target else "FAIL"
    print()
    print(
        f"changes: {o.changes}; visible on all sidecars: {o.visible}; failures: {o.failures} ({o.timed_out} not "
        f"visible everywhere within {s.timeout_seconds:g} s, {o.write_failed} admin RPCs failed); "
        f"read-your-writes violations: {o.read_your_writes_violations}"
    )
    print(f"visible on all p50 / p99 / max: {_latencies(o, s.timeout_seconds)} ms")
    print(f"target p99 <= {TARGET_P99_MS:g} ms: {verdict}")
    limit = "PASS" if report.all_within_design_limit else "FAIL"
    print(f"design limit, every change visible on all within {DESIGN_LIMIT_MS / 1000:g} s: {limit}")
    print(
        f"total {report.total_seconds:.0f} s; wrote {OUTPUT}"
        + (f"; sidecar logs in {report.logs}" if report.logs else "")
    )


# -- processes ------------------------------------------------------------------------------------


def start_sidecars(stack: ExitStack, count: int, dsn: str, workdir: Path) -> list[Server]:
    servers = []
    key = workdir / "token.key"  # shared: every sidecar must read tokens the others encrypted
    for index in range(count):
        directory = workdir / f"sidecar-{index}"
        directory.mkdir()
        port = free_port()
        # Lands in write_config's [storage] section, right after its path.
        config = write_config(
            directory, "gitlab_com", port, f'backend = "postgres"\ndsn = "{dsn}"\ntoken_key_file = "{key}"\n'
        )
        command = [str(BIN / "duo-sidecar"), "serve", "--config", str(config)]
        log_file = workdir / f"sidecar-{index}.log"
        try:
            server = stack.enter_context(
                running(command, port, log_file, lambda s: wait_serving(s.address, timeout=30, process=s.process))
            )
        except (RuntimeError, TimeoutError):
            log(log_file.read_text(errors="replace")[-3000:])
            raise
        log(f"sidecar {index} SERVING on {server.address} after {server.startup_seconds:.2f} s")
        servers.append(server)
    return servers


def keep_logs(workdir: Path) -> str:
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    for path in workdir.glob("sidecar-*.log"):
        shutil.copy(path, LOGS / path.name)
    return str(LOGS)


def benchmark(settings: Settings) -> Report:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="duo-bench-propagation-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        dsn = stack.enter_context(postgres.fresh_database(settings.postgres_dsn))
        log(f"fresh database {dsn.rsplit('/', 1)[-1]}")
        servers = start_sidecars(stack, settings.sidecars, dsn, workdir)
        try:
            changes = asyncio.run(measure(settings, servers))
        except BaseException:
            log(f"stopped; sidecar logs in {keep_logs(workdir)}")
            raise
        report = build_report(settings, changes, time.monotonic() - started)
        if report.overall.failures or report.overall.read_your_writes_violations:
            report.logs = keep_logs(workdir)
    return report


def without_password(dsn: str) -> str:
    url = urlsplit(dsn)
    if url.password is None:
        return dsn
    netloc = f"{url.username}:***@{url.hostname}" + (f":{url.port}" if url.port else "")
    return urlunsplit((url.scheme, netloc, url.path, url.query, url.fragment))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops the sidecars and drops the database


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.propagation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sidecars", type=int, default=3, help="sidecar processes sharing the database (3)")
    parser.add_argument("--changes", type=int, default=200, help="admin changes to measure (200)")
    parser.add_argument(
        "--postgres", metavar="DSN", default=DEFAULT_DSN, help=f"server for the fresh database ({DEFAULT_DSN})"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before a change counts as failed (5)")
    parser.add_argument("--poll-ms", type=float, default=1.0, help="pause between ResolveModel calls per sidecar (1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed or a change failed")
    args = parser.parse_args(argv)
    if args.sidecars < 2 or args.changes < 1 or args.timeout <= 0 or args.poll_ms < 0:
        parser.error("needs --sidecars >= 2, --changes >= 1, --timeout > 0 and --poll-ms >= 0")
    settings = Settings(args.sidecars, args.changes, args.timeout, args.poll_ms, args.postgres)
    signal.signal(signal.SIGTERM, _terminate)

    try:
        report = benchmark(settings)
    except KeyboardInterrupt:
        log("interrupted; sidecars stopped and database dropped")
        return 130
    except SetupError as error:
        log(f"error: {error}")
        return 2
    document = dataclasses.asdict(report)
    document["settings"]["postgres_dsn"] = without_password(args.postgres)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print_report(report)
    return 1 if args.strict and not report.passed else 0


if __name__ == "__main__":
    sys.exit(main())
