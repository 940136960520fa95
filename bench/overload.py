"""Overload: a real `duo-sidecar serve` process on 127.0.0.1 pushed past its admission and size limits.

    python -m bench.overload             # about 3 minutes on 2 cores
    python -m bench.overload --json      # the report as JSON on stdout (progress goes to stderr)
    python -m bench.overload --strict    # exit 1 when a check fails (default: always exit 0)
    python -m bench.overload --no-pin    # let the OS place the sidecar and the load (default, with 2 CPUs or
                                         # more: the sidecar on CPU 0, the clients and the mock upstream on the rest)

1. ResolveModel floods (GitLab.com rules) at 64, 1000 and 5000 calls in flight, from grpc.aio clients in 2
   processes (4 channels each, each its own connection), every refused or answered call followed at once by the
   next: admitted calls per second, p50/p99 latency of admitted calls, refusals by status code, and the server's
   RSS peak (a fresh server per point). Request mixes: "cached", one user the sidecar has cached (answered from
   memory, no await), and "cold", a never-seen user per call (one store read each, during which the call holds
   a slot of server.max_concurrent_routing_calls), both with the default limit of 256; and "cold" again with the
   limit at 1, so the refusal path runs under the flood too (a CPU-bound flood waits in gRPC's backlog instead).
2. Complete past server.max_concurrent_complete_calls=32: 200 Complete streams in flight from 2 processes, each
   one repeated as soon as it ends, against a mock OpenAI-compatible upstream streaming 20 chunks 20 ms apart;
   meanwhile this process calls ResolveModel every 10 ms and the admin GetServerInfo every 100 ms, which have
   limits of their own and must keep answering.
3. Hostile large messages: 100 ResolveModel requests of just under 4 MiB (one huge string field), 4 at a time,
   without a token and then with a valid client token, on a sidecar with authentication on: codes and RSS peak.

Checks (FAIL lines): no call ends CANCELLED, UNKNOWN or INTERNAL (client side, or grpc_server_handled_total);
every RESOURCE_EXHAUSTED refusal of phases 1 and 2 says OVERLOADED; every probe of phase 2 answers OK; phase 3
answers UNAUTHENTICATED without a token and RESOURCE_EXHAUSTED / REQUEST_TOO_LARGE with one, and the RSS peak
stays under the operator guide's pod limit of 512 MiB. Each phase is bounded in time; every process started
here is stopped at the end. Results also go to var/bench/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from bench.complete import MESSAGES
from bench.floor import CHUNKS
from bench.run import METHOD, Server, cpu_seconds, pinned, running
from bench.seed import SCENARIOS, route_to_upstream, seed_admin
from duo_common.tokens import sign_token
from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc
from sidecar.config import ServerConfig, load_config
from sidecar.metrics import GRPC_CODE_NAMES
from tests.helpers import BIN, REPO, free_port, wait_serving, write_config

OUTPUT = REPO / "var" / "bench" / "overload.json"
COMPLETE_METHOD = "/gitlab.duo.routing.v1.RoutingService/Complete"

RESOLVE_LEVELS = (64, 1000, 5000)
DEFAULT_ROUTING_LIMIT = ServerConfig().max_concurrent_routing_calls
# (request mix, server.max_concurrent_routing_calls). A ResolveModel handler holds its slot only while it awaits
# the store, so a CPU-bound flood of cached calls waits in gRPC's backlog and never reaches the default limit; the
# last mix forces the limit down to 1 so the refusal path itself runs under the flood.
FLOODS = (("cached", DEFAULT_ROUTING_LIMIT), ("cold", DEFAULT_ROUTING_LIMIT), ("cold", 1))
CLIENT_PROCESSES = 2
CHANNELS_PER_PROCESS = 4
# The warm-up lasts at least this, and until every caller has had an answer: calls started before its end are left
# out of the figures (not of the totals).
WARMUP_SECONDS = 0.5
CALL_TIMEOUT_SECONDS = 30.0  # generous, so a slow answer shows as latency, not as DEADLINE_EXCEEDED
REASON_SAMPLE = 200  # refusals per client process whose google.rpc.Status is decoded for its reason
COLD_FIRST_USER = 50_000_000  # never-seen users; client process k takes COLD_FIRST_USER + k * COLD_USER_SPAN + i
COLD_USER_SPAN = 10_000_000

COMPLETE_LIMIT = 32
COMPLETE_CONCURRENCY = 200
CHUNK_DELAY_SECONDS = 0.02
PROBE_RESOLVE_SECONDS = 0.01
PROBE_ADMIN_SECONDS = 0.1
PROBE_TIMEOUT_SECONDS = 5.0
IDLE_PROBE_SECONDS = 1.0

LARGE_REQUESTS = 100
LARGE_PARALLEL = 4
LARGE_FEATURE_BYTES = 4 * 1024 * 1024 - 64  # the whole message stays just under server.max_receive_message_bytes
POD_LIMIT_MIB = 512

BAD_CODES = ("CANCELLED", "UNKNOWN", "INTERNAL")
T = TypeVar("T")

# The mock upstream of tests/upstreams.py in its own process: CHUNKS chunks, CHUNK_DELAY_SECONDS apart.
UPSTREAM = """
import asyncio
from tests.upstreams import serve_upstream

def configure(upstream):
    upstream.chunks = [f"token{{i}} " for i in range({chunks})]
    upstream.chunk_delay = {delay}
    upstream.requests = type("Discard", (list,), {{"append": lambda self, item: None}})()

async def main():
    async with serve_upstream(configure) as upstream:
        print(upstream.port, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass(frozen=True)
class Settings:
    seconds: float  # measured per ResolveModel point
    complete_seconds: float
    # On 2 cores the sidecar gets one and everything else (clients, mock upstream, probes) the other, as in
    # bench.run: the sidecar is one process with one event loop, and without pinning the load generators took
    # CPU from it and the numbers mostly showed that. "": no pinning.
    server_cpus: str = ""
    load_cpus: str = ""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout stays clean for --json


def percentile(values: list[float], quantile: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason the sidecar attaches to its errors, or "-" without one."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # grpc-status-details-bin disagrees with the call's code or message
        return "?"
    if status is None:
        return "-"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return "-"


# -- the load: client processes ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSpec:
    address: str
    kind: str  # cached | cold (ResolveModel) | complete
    concurrency: int
    seconds: float
    index: int
    channels: int = CHANNELS_PER_PROCESS
    warmup: float = WARMUP_SECONDS


@dataclass
class ClientResult:
    """What one client process saw. Window: calls started between warm-up and the end of the run."""

    ok_ms: list[float] = field(default_factory=list)  # latency (Complete: whole stream) of admitted calls, window
    ttft_ms: list[float] = field(default_factory=list)  # Complete: time to the first delta, admitted, window
    refused_ms: list[float] = field(default_factory=list)  # time to the refusal, window
    ok_done_in_window: int = 0  # admitted calls answered inside the window, whenever they started: the throughput
    refused_done_in_window: int = 0
    codes: dict[str, int] = field(default_factory=dict)  # window
    all_codes: dict[str, int] = field(default_factory=dict)  # every call, warm-up and drain included
    reasons: dict[str, int] = field(default_factory=dict)  # "CODE/REASON" of the first REASON_SAMPLE errors
    steady_after_seconds: float = 0.0  # from "go" until every caller had an answer (and the warm-up had passed)


Call = Callable[[], Awaitable[float]]  # one call; returns the time to the first delta (0 unless Complete)


def client_calls(spec: ClientSpec, channel: grpc.aio.Channel) -> Call:
    if spec.kind == "complete":
        stream = channel.unary_stream(
            COMPLETE_METHOD, request_serializer=None, response_deserializer=routing_pb2.CompleteResponse.FromString
        )
        request = routing_pb2.CompleteRequest(
            user_id=1,
            feature="duo_chat",
            messages=[routing_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES],
        ).SerializeToString()

        async def complete() -> float:
            started = time.perf_counter()
            first = 0.0
            async for event in stream(request, timeout=CALL_TIMEOUT_SECONDS):
                if not first and event.HasField("delta"):
                    first = time.perf_counter() - started
            return first

        return complete

    unary = channel.unary_unary(METHOD)  # raw bytes both ways: the client spends no time on protobuf
    if spec.kind == "cached":
        cached = SCENARIOS[1].request.SerializeToString()

        async def resolve_cached() -> float:
            await unary(cached, timeout=CALL_TIMEOUT_SECONDS)
            return 0.0

        return resolve_cached

    users = iter(
        range(COLD_FIRST_USER + spec.index * COLD_USER_SPAN, COLD_FIRST_USER + (spec.index + 1) * COLD_USER_SPAN)
    )

    async def resolve_cold() -> float:
        request = routing_pb2.ResolveModelRequest(user_id=next(users), feature="duo_chat")
        await unary(request.SerializeToString(), timeout=CALL_TIMEOUT_SECONDS)
        return 0.0

    return resolve_cold


async def client(spec: ClientSpec) -> ClientResult:
    """Connects and says "ready". On "go", keeps `concurrency` calls in flight. Once every caller has had an answer
    (the first round of a large flood takes seconds) and the warm-up has passed, says "steady". On "measure",
    records the calls started in the next `seconds`, then starts no more and returns once every call has ended."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [grpc.aio.insecure_channel(spec.address, options=options) for _ in range(spec.channels)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), timeout=20)
        calls = [client_calls(spec, c) for c in channels]
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        go = time.perf_counter()
        window = [math.inf, math.inf]  # begin and end of the measured window, set on "measure"
        result = ClientResult()
        codes: Counter[str] = Counter()
        all_codes: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        answered = 0  # callers that have had at least one answer
        everyone_answered = asyncio.Event()

        async def worker(call: Call) -> None:
            nonlocal answered
            waiting = True
            while (started := time.perf_counter()) < window[1]:
                code, first = "OK", 0.0
                try:
                    first = await call()
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                    if reasons.total() < REASON_SAMPLE:
                        reasons[f"{code}/{error_reason(error)}"] += 1
                finished = time.perf_counter()
                all_codes[code] += 1
                if waiting:
                    waiting, answered = False, answered + 1
                    if answered == spec.concurrency:
                        everyone_answered.set()
                if window[0] <= finished < window[1]:  # throughput: answers in the window, whenever asked
                    if code == "OK":
                        result.ok_done_in_window += 1
                    else:
                        result.refused_done_in_window += 1
                if started < window[0]:
                    continue
                codes[code] += 1
                elapsed_ms = (finished - started) * 1000
                if code == "OK":
                    result.ok_ms.append(elapsed_ms)
                    if first:
                        result.ttft_ms.append(first * 1000)
                else:
                    result.refused_ms.append(elapsed_ms)

        async def control() -> None:
            await everyone_answered.wait()
            await asyncio.sleep(max(0.0, go + spec.warmup - time.perf_counter()))
            result.steady_after_seconds = time.perf_counter() - go
            print("steady", flush=True)
            measure = await asyncio.to_thread(sys.stdin.readline)
            now = time.perf_counter()
            window[:] = [now, now + spec.seconds] if measure else [now, now]  # no line: the parent is gone

        await asyncio.gather(control(), *(worker(calls[i % len(calls)]) for i in range(spec.concurrency)))
        result.codes, result.all_codes, result.reasons = dict(codes), dict(all_codes), dict(reasons)
        return result
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def client_main(spec_json: str) -> int:
    spec = ClientSpec(**json.loads(spec_json))
    result = asyncio.run(client(spec))
    print(json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


@contextmanager
def client_processes(
    address: str, kind: str, concurrency: int, seconds: float, cpus: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """CLIENT_PROCESSES client processes sharing `concurrency`, connected and waiting for "go"; always stopped."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(CLIENT_PROCESSES):
            share = concurrency // CLIENT_PROCESSES + (index < concurrency % CLIENT_PROCESSES)
            spec = ClientSpec(address, kind, share, seconds, index)
            command = [sys.executable, "-m", "bench.overload", "--client", json.dumps(dataclasses.asdict(spec))]
            processes.append(
                subprocess.Popen(pinned(command, cpus), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
            )
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"a client process could not connect to {address} (exit {process.wait()})")
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    processes: list[subprocess.Popen[bytes]],
    server: Server,
    seconds: float,
    during: Callable[[], Awaitable[T]] | None = None,
) -> tuple[list[ClientResult], float, T | None]:
    """Starts every client at once, and once all are steady measures for `seconds`, running `during` meanwhile.
    Returns what each client saw, the share of one core the server used in the window, and what `during` gave."""
    try:

        def send(line: bytes) -> None:
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(line)
                process.stdin.flush()

        def steady(process: subprocess.Popen[bytes]) -> None:
            assert process.stdout is not None
            if process.stdout.readline().strip() != b"steady":
                raise RuntimeError(f"a client process exited with {process.wait()} before its calls were answered")

        send(b"go\n")
        await asyncio.wait_for(
            asyncio.gather(*(asyncio.to_thread(steady, p) for p in processes)), timeout=CALL_TIMEOUT_SECONDS + 30
        )
        send(b"measure\n")
        before, started = server_cpu_seconds(server.process.pid), time.monotonic()
        extra = asyncio.ensure_future(during()) if during is not None else None
        await asyncio.sleep(seconds)
        cpu_share = ratio(server_cpu_seconds(server.process.pid) - before, time.monotonic() - started)

        def collect(process: subprocess.Popen[bytes]) -> ClientResult:
            out, _ = process.communicate(timeout=CALL_TIMEOUT_SECONDS + 30)
            if process.returncode != 0:
                raise RuntimeError(f"a client process exited with {process.returncode}")
            return ClientResult(**json.loads(out.decode().strip().splitlines()[-1]))

        results = await asyncio.gather(*(asyncio.to_thread(collect, p) for p in processes))
        if server.process.poll() is not None:
            raise RuntimeError(f"the sidecar exited with {server.process.returncode} under load ({server.log})")
        return list(results), cpu_share, (await extra if extra is not None else None)
    except BaseException:
        # Unblocks the threads reading the clients' output, which asyncio.run would otherwise wait for.
        for process in processes:
            if process.poll() is None:
                process.kill()
        raise


@dataclass
class Load:
    """Client results of one run, merged."""

    seconds: float
    steady_after_seconds: float  # from the start until every caller had had an answer: the warm-up
    ok_per_second: float
    refused_per_second: float
    ok_p50_ms: float
    ok_p99_ms: float
    ok_max_ms: float
    refused_p50_ms: float
    refused_p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    codes: dict[str, int]  # calls started in the window
    all_codes: dict[str, int]  # every call
    reasons: dict[str, int]  # sampled


def merge(results: list[ClientResult], seconds: float) -> Load:
    ok = [v for r in results for v in r.ok_ms]
    refused = [v for r in results for v in r.refused_ms]
    ttft = [v for r in results for v in r.ttft_ms]
    codes: Counter[str] = Counter()
    all_codes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for r in results:
        codes.update(r.codes)
        all_codes.update(r.all_codes)
        reasons.update(r.reasons)
    return Load(
        seconds=seconds,
        steady_after_seconds=max(r.steady_after_seconds for r in results),
        ok_per_second=sum(r.ok_done_in_window for r in results) / seconds,
        refused_per_second=sum(r.refused_done_in_window for r in results) / seconds,
        ok_p50_ms=percentile(ok, 0.5),
        ok_p99_ms=percentile(ok, 0.99),
        ok_max_ms=max(ok, default=0.0),
        refused_p50_ms=percentile(refused, 0.5),
        refused_p99_ms=percentile(refused, 0.99),
        ttft_p50_ms=percentile(ttft, 0.5),
        ttft_p99_ms=percentile(ttft, 0.99),
        codes=dict(codes),
        all_codes=dict(all_codes),
        reasons=dict(reasons),
    )


def code_problems(where: str, codes: dict[str, int], reasons: dict[str, int]) -> list[str]:
    problems = [f"{where}: {codes[c]} calls ended {c}" for c in BAD_CODES if codes.get(c)]
    wrong = {
        k: v for k, v in reasons.items() if k.startswith("RESOURCE_EXHAUSTED/") and k != "RESOURCE_EXHAUSTED/OVERLOADED"
    }
    problems += [f"{where}: {n} refusals with {k} instead of RESOURCE_EXHAUSTED/OVERLOADED" for k, n in wrong.items()]
    return problems


# -- the sidecar: processes and /metrics -----------------------------------------------------------


@dataclass
class Sidecar:
    server: Server
    metrics_listen: str

    @property
    def address(self) -> str:
        return self.server.address


@contextmanager
def sidecar(
    directory: Path, deployment: str, cpus: str, extra: str = "", env: dict[str, str] | None = None
) -> Iterator[Sidecar]:
    """A fresh `duo-sidecar serve` on its own database in `directory`, stopped at the end."""
    directory.mkdir(parents=True)
    port = free_port()
    config = write_config(directory, deployment, port, extra)
    # taskset and env(1) exec the sidecar, so the pid (and /proc/<pid>/status) is the sidecar's own.
    variables = [f"{k}={v}" for k, v in (env or {}).items()]
    command = pinned(["env", *variables, str(BIN / "duo-sidecar"), "serve", "--config", str(config)], cpus)

    def serving(server: Server) -> None:
        wait_serving(server.address, process=server.process)

    try:
        with running(command, port, directory / "sidecar.log", serving) as server:
            yield Sidecar(server, load_config(config).metrics.listen)
    except (RuntimeError, TimeoutError):
        progress((directory / "sidecar.log").read_text(errors="replace")[-3000:])
        raise


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Sidecar) -> Samples:
    """The sidecar's /metrics once every call started has been counted as handled (or after 5 s)."""
    url = f"http://{server.metrics_listen}/metrics"
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        started = sum(v for (name, _), v in samples.items() if name == "grpc_server_started_total")
        handled = sum(v for (name, _), v in samples.items() if name == "grpc_server_handled_total")
        if started == handled or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def handled_codes(samples: Samples, method: str) -> dict[str, int]:
    """grpc_server_handled_total of one method, by grpc_code."""
    codes: dict[str, int] = {}
    for (name, labels), v in samples.items():
        label = dict(labels)
        if name == "grpc_server_handled_total" and label.get("grpc_method") == method and v:
            codes[label["grpc_code"]] = int(v)
    return codes


def refusals(samples: Samples) -> dict[str, int]:
    """duo_routing_overload_refusals_total by limit."""
    return {
        dict(labels)["limit"]: int(v)
        for (name, labels), v in samples.items()
        if name == "duo_routing_overload_refusals_total"
    }


def server_problems(where: str, handled: dict[str, int]) -> list[str]:
    bad = {GRPC_CODE_NAMES[getattr(grpc.StatusCode, code)] for code in BAD_CODES}
    return [f"{where}: the server counted {n} calls as {code}" for code, n in handled.items() if code in bad]


# -- phase 1: ResolveModel floods -------------------------------------------------------------------


@dataclass
class FloodPoint:
    mix: str
    routing_limit: int  # server.max_concurrent_routing_calls
    in_flight: int
    load: Load
    server_cpu_share: float  # of one core, over the window
    rss_at_serving_mib: float
    rss_peak_mib: float
    server_refusals: dict[str, int]  # duo_routing_overload_refusals_total by limit, whole run
    server_handled: dict[str, int]  # grpc_server_handled_total of ResolveModel by code, whole run
    problems: list[str]


def flood(workdir: Path, mix: str, routing_limit: int, in_flight: int, settings: Settings) -> FloodPoint:
    seconds = settings.seconds
    directory = workdir / f"flood-{mix}-{routing_limit}-{in_flight}"
    env = {"DUO_SIDECAR_SERVER_MAX_CONCURRENT_ROUTING_CALLS": str(routing_limit)}
    with sidecar(directory, "gitlab_com", settings.server_cpus, env=env) as server:
        seed_admin(server.address)
        with grpc.insecure_channel(server.address) as channel:  # the cached user is cached from here on
            routing_pb2_grpc.RoutingServiceStub(channel).ResolveModel(SCENARIOS[1].request, timeout=10)
        rss_at_serving = server.server.rss_mib()
        with client_processes(server.address, mix, in_flight, seconds, settings.load_cpus) as processes:
            results, cpu_share, _ = asyncio.run(drive(processes, server.server, seconds))
        samples = scrape(server)
        load = merge(results, seconds)
        point = FloodPoint(
            mix=mix,
            routing_limit=routing_limit,
            in_flight=in_flight,
            load=load,
            server_cpu_share=cpu_share,
            rss_at_serving_mib=rss_at_serving,
            rss_peak_mib=server.server.rss_mib("VmHWM"),
            server_refusals=refusals(samples),
            server_handled=handled_codes(samples, "ResolveModel"),
            problems=[],
        )
    where = f"ResolveModel {mix}, limit {routing_limit}, {in_flight} in flight"
    point.problems = code_problems(where, load.all_codes, load.reasons) + server_problems(where, point.server_handled)
    progress(
        f"{where}: {load.ok_per_second:.0f} OK/s, p50/p99 {load.ok_p50_ms:.1f}/{load.ok_p99_ms:.1f} ms, "
        f"{load.refused_per_second:.0f} refused/s, codes {load.codes}, RSS peak {point.rss_peak_mib:.0f} MiB"
    )
    return point


# -- phase 2: Complete past its limit ---------------------------------------------------------------


@dataclass
class Probe:
    calls: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    codes: dict[str, int]


async def probe(call: Callable[[], Awaitable[Any]], interval: float, seconds: float) -> Probe:
    """Calls one after another, `interval` apart, for `seconds`."""
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        try:
            await call()
            codes["OK"] += 1
            latencies.append((time.perf_counter() - started) * 1000)
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] += 1
        await asyncio.sleep(interval)
    return Probe(
        sum(codes.values()),
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        max(latencies, default=0.0),
        dict(codes),
    )


async def probes(address: str, seconds: float) -> tuple[Probe, Probe]:
    """ResolveModel and GetServerInfo probes side by side, on a channel of their own."""
    async with grpc.aio.insecure_channel(address) as channel:
        routing = routing_pb2_grpc.RoutingServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        request = routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat")

        async def resolve() -> Any:
            return await routing.ResolveModel(request, timeout=PROBE_TIMEOUT_SECONDS)

        async def info() -> Any:
            return await admin.GetServerInfo(admin_pb2.GetServerInfoRequest(), timeout=PROBE_TIMEOUT_SECONDS)

        resolved, informed = await asyncio.gather(
            probe(resolve, PROBE_RESOLVE_SECONDS, seconds), probe(info, PROBE_ADMIN_SECONDS, seconds)
        )
        return resolved, informed


@dataclass
class CompleteRun:
    limit: int
    in_flight: int
    chunks: int
    chunk_delay_ms: float
    load: Load
    server_cpu_share: float
    rss_peak_mib: float
    idle_resolve: Probe
    idle_admin: Probe
    resolve: Probe  # under load
    admin: Probe  # under load
    server_refusals: dict[str, int]
    server_handled: dict[str, int]  # grpc_server_handled_total of Complete by code
    problems: list[str]


@contextmanager
def mock_upstream(cpus: str) -> Iterator[str]:
    process = subprocess.Popen(
        pinned([sys.executable, "-c", UPSTREAM.format(chunks=CHUNKS, delay=CHUNK_DELAY_SECONDS)], cpus),
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        yield f"http://127.0.0.1:{int(process.stdout.readline())}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def completions(workdir: Path, settings: Settings) -> CompleteRun:
    seconds = settings.complete_seconds
    env = {"DUO_SIDECAR_SERVER_MAX_CONCURRENT_COMPLETE_CALLS": str(COMPLETE_LIMIT)}
    with (
        mock_upstream(settings.load_cpus) as upstream_url,
        sidecar(workdir / "complete", "self_managed", settings.server_cpus, env=env) as server,
    ):
        route_to_upstream(server.address, upstream_url)
        idle_resolve, idle_admin = asyncio.run(probes(server.address, IDLE_PROBE_SECONDS))
        with client_processes(
            server.address, "complete", COMPLETE_CONCURRENCY, seconds, settings.load_cpus
        ) as processes:

            async def under_load() -> tuple[Probe, Probe]:
                return await probes(server.address, seconds)

            results, cpu_share, measured = asyncio.run(drive(processes, server.server, seconds, under_load))
            assert measured is not None
            resolve, admin = measured
        samples = scrape(server)
        load = merge(results, seconds)
        report = CompleteRun(
            limit=COMPLETE_LIMIT,
            in_flight=COMPLETE_CONCURRENCY,
            chunks=CHUNKS,
            chunk_delay_ms=CHUNK_DELAY_SECONDS * 1000,
            load=load,
            server_cpu_share=cpu_share,
            rss_peak_mib=server.server.rss_mib("VmHWM"),
            idle_resolve=idle_resolve,
            idle_admin=idle_admin,
            resolve=resolve,
            admin=admin,
            server_refusals=refusals(samples),
            server_handled=handled_codes(samples, "Complete"),
            problems=[],
        )
    where = f"Complete x {COMPLETE_CONCURRENCY}"
    report.problems = code_problems(where, load.all_codes, load.reasons) + server_problems(where, report.server_handled)
    for name, p in (("ResolveModel probe", resolve), ("GetServerInfo probe", admin)):
        if set(p.codes) != {"OK"}:
            report.problems.append(f"{name} during the Complete flood: {p.codes}")
    progress(
        f"{where} (limit {COMPLETE_LIMIT}): {load.ok_per_second:.1f} completions/s, "
        f"TTFT p99 {load.ttft_p99_ms:.1f} ms, "
        f"{load.refused_per_second:.0f} refused/s, codes {load.codes}; ResolveModel p99 {resolve.p99_ms:.1f} ms, "
        f"GetServerInfo p99 {admin.p99_ms:.1f} ms"
    )
    return report


# -- phase 3: hostile large messages ----------------------------------------------------------------


@dataclass
class LargeBatch:
    token: str  # none | client
    requests: int
    seconds: float
    codes: dict[str, int]
    reasons: dict[str, int]


@dataclass
class LargeRun:
    request_bytes: int
    parallel: int
    batches: list[LargeBatch]
    rss_at_serving_mib: float
    rss_peak_before_mib: float
    rss_peak_after_mib: float
    rss_after_mib: float
    problems: list[str]


async def send_large(
    address: str, request: bytes, metadata: tuple[tuple[str, str], ...]
) -> tuple[Counter[str], Counter[str]]:
    codes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    options = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        unary = channel.unary_unary(METHOD)

        async def sender() -> None:
            for _ in range(LARGE_REQUESTS // LARGE_PARALLEL):
                try:
                    await unary(request, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1
                    reasons[f"{error.code().name}/{error_reason(error)}"] += 1

        await asyncio.gather(*(sender() for _ in range(LARGE_PARALLEL)))
    return codes, reasons


def large_messages(workdir: Path, settings: Settings) -> LargeRun:
    directory = workdir / "large"
    secret = "client-secret-for-overload"
    secrets = workdir / "secrets"
    secrets.mkdir()
    (secrets / "client.secret").write_text(secret)
    (secrets / "admin.secret").write_text("admin-secret-for-overload")
    auth = (
        f'[auth]\nclient_secret_file = "{secrets / "client.secret"}"\n'
        f'admin_secret_file = "{secrets / "admin.secret"}"\n'
    )
    request = routing_pb2.ResolveModelRequest(user_id=1, feature="x" * LARGE_FEATURE_BYTES).SerializeToString()
    with sidecar(directory, "self_managed", settings.server_cpus, auth) as server:
        rss_at_serving, peak_before = server.server.rss_mib(), server.server.rss_mib("VmHWM")
        batches = []
        for token in ("none", "client"):
            metadata = (("authorization", sign_token(secret)),) if token == "client" else ()
            started = time.monotonic()
            codes, reasons = asyncio.run(send_large(server.address, request, metadata))
            batches.append(LargeBatch(token, codes.total(), time.monotonic() - started, dict(codes), dict(reasons)))
        report = LargeRun(
            request_bytes=len(request),
            parallel=LARGE_PARALLEL,
            batches=batches,
            rss_at_serving_mib=rss_at_serving,
            rss_peak_before_mib=peak_before,
            rss_peak_after_mib=server.server.rss_mib("VmHWM"),
            rss_after_mib=server.server.rss_mib(),
            problems=[],
        )
    expected = {"none": {"UNAUTHENTICATED": LARGE_REQUESTS}, "client": {"RESOURCE_EXHAUSTED": LARGE_REQUESTS}}
    for batch in batches:
        if batch.codes != expected[batch.token]:
            report.problems.append(
                f"large messages, token {batch.token}: {batch.codes}, expected {expected[batch.token]}"
            )
    if batches[1].reasons.keys() - {"RESOURCE_EXHAUSTED/REQUEST_TOO_LARGE"}:
        report.problems.append(f"large messages with a token: reasons {batches[1].reasons}")
    if report.rss_peak_after_mib >= POD_LIMIT_MIB:
        report.problems.append(
            f"RSS peak {report.rss_peak_after_mib:.0f} MiB, over the pod limit of {POD_LIMIT_MIB} MiB"
        )
    progress(
        f"large messages: {', '.join(f'{b.token}: {b.codes}' for b in batches)}; "
        f"RSS peak {peak_before:.0f} -> {report.rss_peak_after_mib:.0f} MiB"
    )
    return report


# -- the report -------------------------------------------------------------------------------------


@dataclass
class Report:
    settings: Settings
    client_processes: int
    channels_per_process: int
    cpus: int
    floods: list[FloodPoint]
    complete: CompleteRun
    large: LargeRun
    failures: list[str] = field(default_factory=list)
    total_seconds: float = 0.0
    other_cpu_seconds: float = 0.0  # CPU the rest of the machine used meanwhile


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(codes.items(), key=lambda kv: -kv[1])) or "-"


def print_report(report: Report) -> None:
    s = report.settings
    pinning = f"sidecar on CPU {s.server_cpus}, the rest on {s.load_cpus}" if s.server_cpus else "no CPU pinning"
    print()
    print(
        f"Overload: one `duo-sidecar serve` process on 127.0.0.1, {report.cpus} CPUs, {pinning}; load from "
        f"{report.client_processes} grpc.aio client processes x {report.channels_per_process} connections, each "
        f"call followed at once by the next (refusals included)"
    )
    print(
        f"{s.seconds:g} s measured per point after a warm-up (at least {WARMUP_SECONDS:g} s, and until every "
        f"caller has had an answer); OK/s: admitted calls answered in that window; latency and codes: calls started "
        f"in it; a fresh sidecar per point (RSS peak = its VmHWM)"
    )
    print()
    print(
        "1. ResolveModel floods, GitLab.com rules; limit: server.max_concurrent_routing_calls "
        f"(default {DEFAULT_ROUTING_LIMIT}); cached: one cached user; cold: a never-seen user per call"
    )
    print(
        f"  {'mix':<6}  {'limit':>5}  {'in flight':>9}  {'warm-up s':>9}  {'OK/s':>7}  {'OK p50 / p99 ms':>17}  "
        f"{'refused/s':>9}  "
        f"{'refusal p50 ms':>14}  {'server CPU':>10}  {'RSS peak MiB':>12}  codes (window)"
    )
    for p in report.floods:
        lo = p.load
        print(
            f"  {p.mix:<6}  {p.routing_limit:>5}  {p.in_flight:>9}  {lo.steady_after_seconds:>9.1f}  "
            f"{lo.ok_per_second:>7.0f}  "
            f"{lo.ok_p50_ms:>7.1f} / {lo.ok_p99_ms:>7.1f}  "
            f"{lo.refused_per_second:>9.0f}  {lo.refused_p50_ms:>14.1f}  {p.server_cpu_share:>10.0%}  "
            f"{p.rss_peak_mib:>12.0f}  {_codes(lo.codes)}"
        )
    print("  server side, whole run (warm-up and drain included): grpc_server_handled_total / overload refusals")
    for p in report.floods:
        client_refused = p.load.all_codes.get("RESOURCE_EXHAUSTED", 0)
        print(
            f"  {p.mix:<6}  {p.routing_limit:>5}  {p.in_flight:>9}  handled {_codes(p.server_handled)}; "
            f"refusals {_codes(p.server_refusals)}; "
            f"clients saw {client_refused} RESOURCE_EXHAUSTED; reasons (sample) {_codes(p.load.reasons)}"
        )
    c = report.complete
    lo = c.load
    print()
    print(
        f"2. Complete past its limit: server.max_concurrent_complete_calls = {c.limit}, {c.in_flight} in flight, "
        f"upstream {c.chunks} chunks {c.chunk_delay_ms:g} ms apart, {report.settings.complete_seconds:g} s after a "
        f"{lo.steady_after_seconds:.1f} s warm-up"
    )
    print(
        f"  admitted {lo.ok_per_second:.1f} completions/s; "
        f"TTFT p50 / p99 {lo.ttft_p50_ms:.1f} / {lo.ttft_p99_ms:.1f} ms; "
        f"whole stream p50 / p99 {lo.ok_p50_ms:.1f} / {lo.ok_p99_ms:.1f} ms"
    )
    print(
        f"  refused {lo.refused_per_second:.0f}/s (p50 {lo.refused_p50_ms:.1f} ms); codes {_codes(lo.codes)}; "
        f"reasons (sample) {_codes(lo.reasons)}"
    )
    print(
        f"  server CPU {c.server_cpu_share:.0%} of a core, RSS peak {c.rss_peak_mib:.0f} MiB; "
        f"handled {_codes(c.server_handled)}; refusals {_codes(c.server_refusals)}"
    )
    print(f"  {'probe':<28}  {'calls':>5}  {'p50 ms':>7}  {'p99 ms':>7}  {'max ms':>7}  codes")
    for name, q in (
        ("ResolveModel, idle", c.idle_resolve),
        ("ResolveModel, under flood", c.resolve),
        ("GetServerInfo, idle", c.idle_admin),
        ("GetServerInfo, under flood", c.admin),
    ):
        print(f"  {name:<28}  {q.calls:>5}  {q.p50_ms:>7.2f}  {q.p99_ms:>7.2f}  {q.max_ms:>7.2f}  {_codes(q.codes)}")
    g = report.large
    print()
    print(
        f"3. Hostile large messages: {LARGE_REQUESTS} ResolveModel requests of {g.request_bytes} bytes, "
        f"{g.parallel} at a time, authentication on"
    )
    for b in g.batches:
        print(f"  token {b.token:<6}  {b.seconds:5.1f} s  codes {_codes(b.codes)}; reasons {_codes(b.reasons)}")
    print(
        f"  RSS {g.rss_at_serving_mib:.0f} MiB at SERVING; peak {g.rss_peak_before_mib:.0f} MiB before, "
        f"{g.rss_peak_after_mib:.0f} MiB after (pod limit {POD_LIMIT_MIB} MiB); {g.rss_after_mib:.0f} MiB at the end"
    )
    print()
    share = ratio(report.other_cpu_seconds, report.total_seconds * report.cpus)
    print(
        f"other processes used {report.other_cpu_seconds:.1f} CPU-seconds meanwhile ({share:.0%} of the machine)"
        + ("; they make these numbers noisier, rerun on a quiet machine" if share > 0.05 else "")
    )
    for failure in report.failures:
        print(f"FAIL {failure}")
    outcome = "all PASS" if not report.failures else f"{len(report.failures)} FAIL"
    print(f"checks: {outcome}; total {report.total_seconds:.0f} s; wrote {OUTPUT}")


def benchmark(settings: Settings) -> Report:
    with tempfile.TemporaryDirectory(prefix="duo-bench-overload-") as tmp:
        workdir = Path(tmp)
        floods = [flood(workdir, mix, limit, n, settings) for mix, limit in FLOODS for n in RESOLVE_LEVELS]
        complete = completions(workdir, settings)
        large = large_messages(workdir, settings)
    report = Report(
        settings=settings,
        client_processes=CLIENT_PROCESSES,
        channels_per_process=CHANNELS_PER_PROCESS,
        cpus=os.cpu_count() or 1,
        floods=floods,
        complete=complete,
        large=large,
    )
    report.failures = [p for f in floods for p in f.problems] + complete.problems + large.problems
    return report


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops every process started here


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per ResolveModel point (3)")
    parser.add_argument(
        "--complete-seconds", type=float, default=5.0, help="measured seconds of the Complete flood (5)"
    )
    parser.add_argument("--no-pin", action="store_true", help="let the OS place the sidecar and the load")
    parser.add_argument("--client", metavar="SPEC", help=argparse.SUPPRESS)  # a load-generating child process
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args.client)
    signal.signal(signal.SIGTERM, _terminate)
    cpus = os.cpu_count() or 1
    settings = Settings(args.seconds, args.complete_seconds)
    if not args.no_pin and cpus >= 2:
        settings = dataclasses.replace(settings, server_cpus="0", load_cpus=f"1-{cpus - 1}")
        os.sched_setaffinity(0, range(1, cpus))  # this process probes and sends the large messages

    started = time.monotonic()
    machine_before, own_before = cpu_seconds()
    try:
        report = benchmark(settings)
    except KeyboardInterrupt:
        progress("interrupted; every process started here was stopped")
        return 130
    machine_after, own_after = cpu_seconds()  # every child has been waited for by now
    report.other_cpu_seconds = max(0.0, (machine_after - machine_before) - (own_after - own_before))
    report.total_seconds = time.monotonic() - started

    document = json.dumps(dataclasses.asdict(report), indent=2) + "\n"
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(document)
    if args.json:
        print(document, end="")
        for failure in report.failures:
            progress(f"FAIL {failure}")
    else:
        print_report(report)
    return 1 if args.strict and report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
