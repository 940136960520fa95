"""`make bench`: ResolveModel on the real sidecar against a no-op grpc.aio floor, same h2load, one run.

    make bench                       # the normal set, about 2 minutes on 2 cores
    make bench BENCH_ARGS=--large    # first preload 1,000,000 seats and 100,000 namespace pins
    make bench BENCH_ARGS=--strict   # exit 1 when a target is missed (default: always exit 0)

Targets (DESIGN section 6), for a context request, a multi-seat and a sole-seat no-context request, with
authentication (v2 HMAC tokens on every call) and metrics on: at 64 streams in flight the sidecar serves >= 85%
of the floor's requests per second, and at half the floor's top throughput its p99 is within 1.5x of the floor's
p99 at that rate. The floor runs on asyncio's loop and on uvloop; the faster is the floor. One stream in flight is
shown for context. All servers listen on 127.0.0.1 only. Results also go to var/bench/resolve.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc

from bench import h2load, postgres
from bench.h2load import Load, Result
from bench.seed import SCENARIOS, Scenario, seed_admin, seed_large
from duo_common.tokens import sign_token
from gitlab.duo.routing.v1 import routing_pb2, routing_pb2_grpc, types_pb2
from sidecar.config import load_config
from tests.helpers import BIN, REPO, free_port, wait_serving, write_config

METHOD = "/gitlab.duo.routing.v1.RoutingService/ResolveModel"
OUTPUT = REPO / "var" / "bench" / "resolve.json"
# 1 and 64 streams in flight, spread over a few connections as several client processes would.
LOADS = (Load(clients=1, streams=1), Load(clients=4, streams=16))
MIN_THROUGHPUT_RATIO = 0.85  # at the top load; the others are shown for context
MAX_HALF_LOAD_P99_RATIO = 1.5


@dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: float
    large: bool
    # On 2 cores, the server under test gets one and h2load the other: without pinning, run-to-run
    # noise (both servers alike) was larger than the differences being measured.
    server_cpus: str
    h2load_cpus: str
    postgres_dsn: str = ""  # admin DSN: the run gets a fresh database there instead of SQLite
    auth: bool = True  # the sidecar checks tokens, and h2load sends a fresh one with every run (to the floor too)


# -- processes ------------------------------------------------------------------------------------


@dataclass
class Server:
    address: str
    process: subprocess.Popen[bytes]
    log: Path
    startup_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.address}{METHOD}"

    def rss_mib(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # the kernel reports kB
        return 0.0


@contextmanager
def running(
    command: list[str], port: int, log: Path, wait: Callable[[Server], None], env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Starts a server process, waits until it answers, and always stops it (also on error or Ctrl-C).
    `env`: variables set on top of this process's environment."""
    started = time.monotonic()
    with log.open("ab") as out:
        environment = {**os.environ, **env} if env else None
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=environment)
    server = Server(f"127.0.0.1:{port}", process, log)
    try:
        wait(server)
        server.startup_seconds = time.monotonic() - started
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def pinned(command: list[str], cpus: str) -> list[str]:
    # taskset execs the command, so the pid stays the server's and every thread inherits the CPU set.
    return ["taskset", "--cpu-list", cpus, *command] if cpus else command


def wait_connectable(server: Server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.address) as channel:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.log.name}: exited with {server.process.returncode}")
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{server.address} not accepting connections after {timeout}s") from None


def call_once(address: str, request: bytes, authorization: str = "") -> bytes:
    """One real gRPC call with raw bytes both ways; raises grpc.RpcError unless grpc-status is 0."""
    metadata = (("authorization", authorization),) if authorization else None
    with grpc.insecure_channel(address) as channel:
        response, call = channel.unary_unary(METHOD).with_call(request, timeout=10, metadata=metadata)
        if call.code() != grpc.StatusCode.OK:
            raise RuntimeError(f"{address}: ResolveModel returned {call.code()}")
        return bytes(response)


# -- results --------------------------------------------------------------------------------------


@dataclass
class Point:
    clients: int
    streams: int
    floor: Result  # the faster of the two
    sidecar: Result
    ratio: float
    passed: bool | None  # None: shown for context, no target
    floor_asyncio: Result
    floor_uvloop: Result


@dataclass
class HalfLoad:
    target_rps: float
    rps_per_client: float
    clients: int
    streams: int
    floor: Result  # the floor that was faster at full load
    sidecar: Result
    p99_ratio: float
    passed: bool


@dataclass
class ScenarioReport:
    name: str
    request: dict[str, object]
    resolved: str
    response_bytes: int
    points: list[Point]
    half_load: HalfLoad


@dataclass
class Report:
    h2load: str
    settings: Settings
    large_seed_seconds: float
    sidecar_startup_seconds: float
    sidecar_rss_mib_at_serving: float
    sidecar_rss_mib_at_end: float
    sidecar_peak_rss_mib: float
    scenarios: list[ScenarioReport]
    cold_miss: dict[str, float] = dataclasses.field(default_factory=dict)
    targets: int = 0
    failed: int = 0
    total_seconds: float = 0.0
    # CPU the rest of the machine used meanwhile: other work on a shared machine makes the ratios noisy.
    other_cpu_seconds: float = 0.0


def cpu_seconds() -> tuple[float, float]:
    """Busy CPU seconds of the whole machine, and of this process with its finished children."""
    # Interrupt time is left out: most of it is the loopback traffic of the benchmark itself.
    user, nice, system = map(int, Path("/proc/stat").read_text().split()[1:4])
    machine = (user + nice + system) / os.sysconf("SC_CLK_TCK")
    usages = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    return machine, sum(u.ru_utime + u.ru_stime for u in usages)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


# -- the benchmark --------------------------------------------------------------------------------


def expect_route(scenario: Scenario, raw: bytes) -> str:
    """Proves the sidecar answered through the pinned namespace, not through a default."""
    response = routing_pb2.ResolveModelResponse.FromString(raw)
    source = types_pb2.SelectionSource.Name(response.source)
    if (
        response.source != scenario.expected_source
        or response.model_identifier != scenario.expected_model
        or response.gitlab_default
    ):
        raise RuntimeError(f"{scenario.name}: unexpected route {source} {response.model_identifier!r}")
    return f"{response.model_identifier} via {source}, namespace {response.governing_namespace_id}"


Floors = dict[str, "Server"]  # "asyncio" and "uvloop"


def compare(
    floors: Floors, sidecar: Server, body: Path, load: Load, settings: Settings, workdir: Path, secret: str
) -> dict[str, Result]:
    """Alternates the floors and the sidecar (ABC CBA ...), so drift on a shared machine hits all alike."""
    order = [*((f"floor_{name}", server) for name, server in floors.items()), ("sidecar", sidecar)]
    runs: dict[str, list[h2load.Run]] = {name: [] for name, _ in order}

    def headers() -> tuple[str, ...]:
        return (f"authorization: {sign_token(secret)}",) if secret else ()

    for _ in range(settings.rounds):
        for name, server in order:
            log = workdir / "h2load.log"
            runs[name].append(h2load.run(server.url, body, load, settings.seconds, log, settings.h2load_cpus, headers))
            if server.process.poll() is not None:
                tail = server.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the {name} exited with {server.process.returncode} under load:\n{tail}")
        order.reverse()
    results = {name: h2load.summarize(runs[name]) for name in runs}
    rate = f", --rps {load.rps_per_client:.1f} per client" if load.rps_per_client else ""
    print(
        f"  {load.concurrency:>2} streams ({load.clients} x {load.streams}{rate}): "
        + ", ".join(f"{name} {r.rps:7.1f} req/s p99 {r.p99_ms:6.2f} ms" for name, r in results.items()),
        flush=True,
    )
    return results


def bench_scenario(
    scenario: Scenario, sidecar: Server, settings: Settings, workdir: Path, secret: str
) -> ScenarioReport:
    request = scenario.request.SerializeToString()
    token = sign_token(secret) if secret else ""
    raw = call_once(sidecar.address, request, token)
    resolved = expect_route(scenario, raw)
    # The floor answers with the sidecar's own bytes, so both send the same-sized response.
    response_file = workdir / "floor-response.bin"
    response_file.write_bytes(raw)
    body = workdir / "request.grpc"
    body.write_bytes(h2load.grpc_frame(request))

    with ExitStack() as stack:
        floors: Floors = {}
        for loop in ("asyncio", "uvloop"):
            port = free_port()
            floor_command = [sys.executable, "-m", "bench.floor", f"--port={port}", f"--response-file={response_file}"]
            floor_command += ["--uvloop"] if loop == "uvloop" else []
            floor_log = workdir / f"floor-{port}.log"
            floor = stack.enter_context(
                running(pinned(floor_command, settings.server_cpus), port, floor_log, wait_connectable)
            )
            floor_raw = call_once(floor.address, request)
            if len(floor_raw) != len(raw):
                raise RuntimeError(f"floor answered {len(floor_raw)} bytes, the sidecar {len(raw)}")
            floors[loop] = floor
        print(f"{scenario.name}: {resolved}; all answer OK (grpc-status 0) with {len(raw)} bytes", flush=True)

        points = []
        for load in LOADS:
            results = compare(floors, sidecar, body, load, settings, workdir, secret)
            floor_result = max(results["floor_asyncio"], results["floor_uvloop"], key=lambda r: r.rps)
            sidecar_result = results["sidecar"]
            ratio = _ratio(sidecar_result.rps, floor_result.rps)
            valid = not any(r.problem for r in results.values())
            passed = valid and ratio >= MIN_THROUGHPUT_RATIO if load is LOADS[-1] else None
            points.append(
                Point(
                    load.clients,
                    load.streams,
                    floor_result,
                    sidecar_result,
                    ratio,
                    passed,
                    results["floor_asyncio"],
                    results["floor_uvloop"],
                )
            )

        top = points[-1]
        target = top.floor.rps / 2
        faster = "uvloop" if top.floor is top.floor_uvloop else "asyncio"
        half = Load(top.clients, top.streams, rps_per_client=target / top.clients)
        results = compare({faster: floors[faster]}, sidecar, body, half, settings, workdir, secret)
        floor_result, sidecar_result = results[f"floor_{faster}"], results["sidecar"]
    p99_ratio = _ratio(sidecar_result.p99_ms, floor_result.p99_ms)
    valid = not floor_result.problem and not sidecar_result.problem
    return ScenarioReport(
        name=scenario.name,
        request={
            "user_id": scenario.request.user_id,
            "feature": scenario.request.feature,
            "root_namespace_id": scenario.request.root_namespace_id,
        },
        resolved=resolved,
        response_bytes=len(raw),
        points=points,
        half_load=HalfLoad(
            target_rps=target,
            rps_per_client=target / top.clients,
            clients=top.clients,
            streams=top.streams,
            floor=floor_result,
            sidecar=sidecar_result,
            p99_ratio=p99_ratio,
            passed=valid and p99_ratio <= MAX_HALF_LOAD_P99_RATIO,
        ),
    )


COLD_USERS = 2000


def cold_misses(address: str, secret: str) -> dict[str, float]:
    """Latency of ResolveModel for users the sidecar has not seen (one store query each), against the same
    calls once they are cached; sequential, from one client."""

    def timed(users: range) -> list[float]:
        latencies = []
        with grpc.insecure_channel(address) as channel:
            stub = routing_pb2_grpc.RoutingServiceStub(channel)
            for user in users:
                started = time.perf_counter()
                metadata = (("authorization", sign_token(secret)),) if secret else None
                request = routing_pb2.ResolveModelRequest(user_id=user, feature="duo_chat")
                stub.ResolveModel(request, timeout=10, metadata=metadata)
                latencies.append((time.perf_counter() - started) * 1000)
        return sorted(latencies)

    users = range(300_001, 300_001 + COLD_USERS)  # seeded users no scenario touched
    cold, warm = timed(users), timed(users)

    def pick(values: list[float], quantile: float) -> float:
        return values[min(len(values) - 1, int(quantile * len(values)))]

    return {
        "users": float(COLD_USERS),
        "cold_p50_ms": pick(cold, 0.5),
        "cold_p99_ms": pick(cold, 0.99),
        "warm_p50_ms": pick(warm, 0.5),
        "warm_p99_ms": pick(warm, 0.99),
    }


def benchmark(settings: Settings) -> Report:
    with tempfile.TemporaryDirectory(prefix="duo-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        port = free_port()
        storage = ""
        if settings.postgres_dsn:
            dsn = stack.enter_context(postgres.fresh_database(settings.postgres_dsn))
            # Lands in write_config's [storage] section, right after its path.
            storage = f'backend = "postgres"\ndsn = "{dsn}"\ntoken_key_file = "{workdir / "token.key"}"\n'
        client_secret = admin_secret = auth = ""
        if settings.auth:
            client_secret, admin_secret = secrets.token_hex(16), secrets.token_hex(16)
            auth = "\n[auth]\n"
            for role, secret in (("client", client_secret), ("admin", admin_secret)):
                (workdir / f"{role}.secret").write_text(secret)
                auth += f'{role}_secret_file = "{workdir / f"{role}.secret"}"\n'
        config = write_config(workdir, "gitlab_com", port, storage + auth)
        seed_seconds = 0.0
        if settings.large:
            where = "PostgreSQL" if storage else "SQLite"
            print(f"seeding 1,000,000 seat assignments and 100,000 namespace pins into {where}", flush=True)
            migrate = [str(BIN / "duo-sidecar"), "migrate", "--config", str(config)]
            subprocess.run(migrate, check=True, capture_output=True)
            seed_seconds = postgres.seed_large(dsn) if storage else seed_large(Path(load_config(config).storage.path))

        def serving(server: Server) -> None:
            wait_serving(server.address, timeout=300 if settings.large else 30, process=server.process)

        command = pinned([str(BIN / "duo-sidecar"), "serve", "--config", str(config)], settings.server_cpus)
        try:
            sidecar = stack.enter_context(running(command, port, workdir / "sidecar.log", serving))
        except (RuntimeError, TimeoutError):
            print((workdir / "sidecar.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        rss_at_serving = sidecar.rss_mib()
        print(f"sidecar SERVING after {sidecar.startup_seconds:.2f} s, RSS {rss_at_serving:.1f} MiB", flush=True)
        seed_admin(sidecar.address, sign_token(admin_secret) if admin_secret else "")

        scenarios = [bench_scenario(s, sidecar, settings, workdir, client_secret) for s in SCENARIOS]
        cold = cold_misses(sidecar.address, client_secret) if settings.large else {}
        return Report(
            h2load=h2load.version(),
            settings=settings,
            large_seed_seconds=seed_seconds,
            sidecar_startup_seconds=sidecar.startup_seconds,
            sidecar_rss_mib_at_serving=rss_at_serving,
            sidecar_rss_mib_at_end=sidecar.rss_mib(),
            sidecar_peak_rss_mib=sidecar.rss_mib("VmHWM"),
            scenarios=scenarios,
            cold_miss=cold,
        )


# -- output ---------------------------------------------------------------------------------------


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else "PASS" if passed else "FAIL"


def _latency(result: Result) -> str:
    return f"{result.p50_ms:6.2f} / {result.p99_ms:6.2f}"


def print_report(report: Report) -> None:
    s = report.settings
    pinning = (
        f"servers pinned to CPU {s.server_cpus}, h2load to CPU {s.h2load_cpus}" if s.server_cpus else "no CPU pinning"
    )
    print()
    print(f"ResolveModel: sidecar vs no-op grpc.aio floor, both on 127.0.0.1, loaded by {report.h2load}")
    print(
        f"{s.rounds} alternating rounds of {s.seconds:g} s per point (after {h2load.WARMUP_MS} ms warm-up), "
        f"{pinning}; req/s is the median round, p50/p99 are over every request, from h2load's per-request log"
    )
    if s.large:
        backend = "PostgreSQL" if s.postgres_dsn else "SQLite"
        print(f"with 1,000,000 seat assignments and 100,000 namespace pins loaded ({backend})")
    for scenario in report.scenarios:
        request = ", ".join(f"{k} {v}" for k, v in scenario.request.items())
        print()
        print(f"[{scenario.name}] {request}")
        print(f"  -> {scenario.resolved}; response {scenario.response_bytes} bytes")
        print(
            f"  {'streams':>7}  {'clients x m':>11}  {'floor req/s asyncio/uvloop':>26}  {'sidecar req/s':>13}  "
            f"{'ratio':>5}  {f'>={MIN_THROUGHPUT_RATIO:.2f}':>6}  {'floor p50 / p99 ms':>18}  "
            f"{'sidecar p50 / p99 ms':>20}"
        )
        for p in scenario.points:
            print(
                f"  {p.clients * p.streams:>7}  {f'{p.clients} x {p.streams}':>11}  "
                f"{f'{p.floor_asyncio.rps:.1f} / {p.floor_uvloop.rps:.1f}':>26}  "
                f"{p.sidecar.rps:>13.1f}  {p.ratio:>5.2f}  {_verdict(p.passed):>6}  "
                f"{_latency(p.floor):>18}  {_latency(p.sidecar):>20}"
            )
            for name, result in (("asyncio floor", p.floor_asyncio), ("uvloop floor", p.floor_uvloop),
                                 ("sidecar", p.sidecar)):  # fmt: skip
                if result.problem:
                    print(f"           INVALID {name} runs: {result.problem}")
        h = scenario.half_load
        print(
            f"  half load: {h.target_rps:.0f} req/s = half the floor's {h.clients * h.streams}-stream throughput "
            f"({h.clients} x {h.streams}, h2load --rps {h.rps_per_client:.1f} per client)"
        )
        print(
            f"    floor {h.floor.rps:.1f} req/s p50 / p99 {_latency(h.floor).strip()} ms; sidecar {h.sidecar.rps:.1f} "
            f"req/s p50 / p99 {_latency(h.sidecar).strip()} ms; p99 ratio {h.p99_ratio:.2f} "
            f"(<= {MAX_HALF_LOAD_P99_RATIO}) {_verdict(h.passed)}"
        )
        for name, result in (("floor", h.floor), ("sidecar", h.sidecar)):
            if result.problem:
                print(f"    INVALID {name} runs: {result.problem}")
    print()
    if s.large:
        print(f"large data set written in {report.large_seed_seconds:.1f} s")
    if report.cold_miss:
        c = report.cold_miss
        print(
            f"cold misses ({c['users']:.0f} never-seen users, sequential): p50 / p99 {c['cold_p50_ms']:.2f} / "
            f"{c['cold_p99_ms']:.2f} ms; the same users warm: {c['warm_p50_ms']:.2f} / {c['warm_p99_ms']:.2f} ms"
        )
    print(
        f"sidecar: SERVING {report.sidecar_startup_seconds:.2f} s after start; RSS "
        f"{report.sidecar_rss_mib_at_serving:.1f} MiB at SERVING, {report.sidecar_rss_mib_at_end:.1f} MiB "
        f"at the end (peak {report.sidecar_peak_rss_mib:.1f} MiB)"
    )
    share = _ratio(report.other_cpu_seconds, report.total_seconds * (os.cpu_count() or 1))
    print(
        f"other processes used {report.other_cpu_seconds:.1f} CPU-seconds meanwhile ({share:.0%} of the machine)"
        + ("; they make these numbers noisier, rerun on a quiet machine" if share > 0.05 else "")
    )
    outcome = "all PASS" if not report.failed else f"{report.failed} FAIL"
    print(f"targets: {report.targets}, {outcome}; total {report.total_seconds:.0f} s; wrote {OUTPUT}")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops the servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--large", action="store_true", help="preload 1M seats and 100k namespace pins")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per server and point (3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run (2)")
    parser.add_argument("--no-pin", action="store_true", help="let the OS place servers and h2load")
    parser.add_argument("--postgres", metavar="DSN", default="", help="run on a fresh database of this server")
    args = parser.parse_args(argv)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    settings = Settings(args.rounds, args.seconds, args.large, "0" if pin else "", "1" if pin else "", args.postgres)
    signal.signal(signal.SIGTERM, _terminate)

    h2load.ensure_installed()
    started = time.monotonic()
    machine_before, own_before = cpu_seconds()
    try:
        report = benchmark(settings)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    machine_after, own_after = cpu_seconds()  # every child has been waited for by now
    report.other_cpu_seconds = max(0.0, (machine_after - machine_before) - (own_after - own_before))
    checks = [p.passed for s in report.scenarios for p in s.points if p.passed is not None]
    checks += [s.half_load.passed for s in report.scenarios]
    report.targets = len(checks)
    report.failed = checks.count(False)
    report.total_seconds = time.monotonic() - started

    print_report(report)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    return 1 if args.strict and report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
