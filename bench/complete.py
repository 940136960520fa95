"""Complete at real token pacing: what the sidecar adds to time to first token over the same mock upstream called
directly, and its CPU per 20-chunk completion against the streaming floor, all in one run with one client.

For each upstream pacing (chunks back to back, 5 ms apart, 20 ms apart; bench/upstream.py) and concurrency
(1 and 32 completions in flight), closed loop, a few seconds per cell:
- direct: the upstream called over HTTP by aiohttp (time to the first content line);
- floor: a no-op grpc.aio server streaming route, 20 deltas and finished with the same pacing (bench/floor.py),
  run on asyncio's loop and on uvloop; the faster of the two is the floor (DESIGN section 6);
- sidecar: Complete routed to the upstream as a self-hosted model.

CPU is each server process's own (all threads, from /proc/<pid>/task/*/schedstat, nanoseconds) over the cell,
divided by the completions it served. `python -m bench.complete` (run by `make bench`); --strict exits 1 when a
target is missed. Results also go to var/bench/complete.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import grpc

from bench.floor import PACINGS_MS, complete_method
from bench.run import Server, running, wait_connectable
from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc, types_pb2
from tests.helpers import BIN, REPO, free_port, wait_serving, write_config

CONCURRENCIES = (1, 32)
MAX_ADDED_P50_MS = 1.0  # at concurrency 1
MAX_ADDED_P99_MS = 3.0  # at concurrency 1
MAX_CPU_RATIO = 1.3  # sidecar CPU per completion over the floor's, every pacing and concurrency
OUTPUT = REPO / "var" / "bench" / "complete.json"
MESSAGES = [{"role": "user", "content": "Write a haiku about routing."}]
SIDECAR_METHOD = "/gitlab.duo.routing.v1.RoutingService/Complete"


@dataclass
class Cell:
    """One server (or the upstream called directly) at one pacing and concurrency."""

    completions: int
    seconds: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    total_p50_ms: float
    messages_per_completion: float
    cpu_ms_per_completion: float  # 0 for direct: the upstream's CPU is not measured


@dataclass
class Point:
    pacing_ms: int
    concurrency: int
    direct: Cell
    floor_asyncio: Cell
    floor_uvloop: Cell
    sidecar: Cell
    sidecar_asyncio: Cell | None = None  # --compare-loops: the same sidecar on asyncio's loop (server.event_loop)
    relay: Cell | None = None  # --relay: the uvloop floor reading the upstream raw and relaying a delta per read

    @property
    def floor(self) -> Cell:
        return min((self.floor_asyncio, self.floor_uvloop), key=lambda c: c.cpu_ms_per_completion)

    @property
    def floor_name(self) -> str:
        return "uvloop" if self.floor is self.floor_uvloop else "asyncio"

    @property
    def added_ttft_p50_ms(self) -> float:
        return self.sidecar.ttft_p50_ms - self.direct.ttft_p50_ms

    @property
    def added_ttft_p99_ms(self) -> float:
        return self.sidecar.ttft_p99_ms - self.direct.ttft_p99_ms

    @property
    def cpu_ratio(self) -> float:
        floor = self.floor.cpu_ms_per_completion
        return self.sidecar.cpu_ms_per_completion / floor if floor else 0.0

    @property
    def sidecar_cpu_ms_per_delta(self) -> float:
        deltas = self.sidecar.messages_per_completion - 2  # route and finished
        return self.sidecar.cpu_ms_per_completion / deltas if deltas > 0 else 0.0

    def checks(self) -> list[tuple[str, float, float]]:
        """(what, measured, limit): each a target of DESIGN section 6."""
        where = f"pacing {self.pacing_ms} ms, concurrency {self.concurrency}"
        checks = [(f"CPU per completion / floor, {where}", self.cpu_ratio, MAX_CPU_RATIO)]
        if self.concurrency == 1:
            checks.append((f"added TTFT p50 ms, {where}", self.added_ttft_p50_ms, MAX_ADDED_P50_MS))
            checks.append((f"added TTFT p99 ms, {where}", self.added_ttft_p99_ms, MAX_ADDED_P99_MS))
        return checks


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far (run time from schedstat: nanoseconds, not clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


def idle_cpu_ms_per_second(servers: dict[str, Server], seconds: float = 2.0) -> dict[str, float]:
    """What each server burns doing nothing (timers, store polling): part of every cell's CPU, more so the longer
    a completion takes at concurrency 1."""
    before = {name: cpu_ns(server.process.pid) for name, server in servers.items()}
    time.sleep(seconds)
    return {name: (cpu_ns(server.process.pid) - before[name]) / 1e6 / seconds for name, server in servers.items()}


def percentile(values: list[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


Call = Callable[[], Awaitable[tuple[float, float, int]]]  # (ttft ms, total ms, messages)


async def load(call: Call, concurrency: int, seconds: float, minimum: int, pid: int | None) -> Cell:
    """Closed loop: `concurrency` workers call back to back for `seconds` and at least `minimum` calls."""
    results: list[tuple[float, float, int]] = []
    started = time.perf_counter()
    cpu_before = cpu_ns(pid) if pid else 0

    async def worker() -> None:
        while time.perf_counter() - started < seconds or len(results) < minimum:
            results.append(await call())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = cpu_ns(pid) - cpu_before if pid else 0
    elapsed = time.perf_counter() - started
    ttft = [r[0] for r in results]
    return Cell(
        completions=len(results),
        seconds=elapsed,
        ttft_p50_ms=statistics.median(ttft),
        ttft_p99_ms=percentile(ttft, 0.99),
        total_p50_ms=statistics.median(r[1] for r in results),
        messages_per_completion=sum(r[2] for r in results) / len(results),
        cpu_ms_per_completion=cpu / 1e6 / len(results),
    )


@contextmanager
def started_upstream() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream"],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        yield f"http://127.0.0.1:{int(process.stdout.readline())}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def create_models(address: str, upstream_url: str) -> dict[int, str]:
    """One self-hosted model per pacing, all at the mock upstream: {pacing ms: model id}."""
    ids = {}
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for pacing in PACINGS_MS:
            model = admin.CreateSelfHostedModel(
                admin_pb2.CreateSelfHostedModelRequest(
                    self_hosted_model=admin_pb2.SelfHostedModel(
                        name=f"bench vLLM paced {pacing} ms",
                        family=types_pb2.MODEL_FAMILY_MISTRAL,
                        platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                        endpoint=f"{upstream_url}/pace/{pacing}/v1",
                        identifier="custom_openai/bench",
                        api_token="bench-token",
                    )
                ),
                timeout=30,
            ).self_hosted_model
            ids[pacing] = model.id
    return ids


def route_duo_chat(address: str, model_id: str) -> None:
    with grpc.insecure_channel(address) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).UpdateFeatureSetting(
            admin_pb2.UpdateFeatureSettingRequest(
                feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id=model_id
            ),
            timeout=30,
        )


REQUEST = routing_pb2.CompleteRequest(
    user_id=1,
    feature="duo_chat",
    messages=[routing_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES],
)


def first_route(address: str) -> bytes:
    """The route message the sidecar streams first, for the floor to send the same bytes."""
    with grpc.insecure_channel(address) as channel:
        stream = routing_pb2_grpc.RoutingServiceStub(channel).Complete(REQUEST, timeout=30)
        route = next(iter(stream))
        stream.cancel()
    if not route.HasField("route"):
        raise RuntimeError(f"the sidecar's first Complete message is not the route: {route}")
    return bytes(route.SerializeToString())


@dataclass
class Settings:
    seconds: float
    minimum: int  # completions per cell at concurrency 1, for a p99 worth the name
    relay: bool = False


async def measure(
    upstream_url: str, sidecars: dict[str, Server], floors: dict[str, Server], models: dict[str, dict[int, str]],
    settings: Settings,
) -> list[Point]:  # fmt: skip
    body = {"model": "bench", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    servers = floors | sidecars
    channels = {name: grpc.aio.insecure_channel(server.address) for name, server in servers.items()}
    pids = {name: server.process.pid for name, server in servers.items()}
    points = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

            def direct(pacing: int) -> Call:
                url = f"{upstream_url}/pace/{pacing}/v1/chat/completions"

                async def call() -> tuple[float, float, int]:
                    started = time.perf_counter()
                    first = 0.0
                    lines = 0
                    async with session.post(url, json=body) as response:
                        async for line in response.content:
                            if line.startswith(b"data:"):
                                lines += 1
                                if not first and b'"content"' in line:
                                    first = time.perf_counter() - started
                    return first * 1000, (time.perf_counter() - started) * 1000, lines

                return call

            def grpc_call(name: str, method: str) -> Call:
                stream = channels[name].unary_stream(
                    method,
                    request_serializer=routing_pb2.CompleteRequest.SerializeToString,
                    response_deserializer=routing_pb2.CompleteResponse.FromString,
                )

                async def call() -> tuple[float, float, int]:
                    started = time.perf_counter()
                    first = 0.0
                    messages = 0
                    async for event in stream(REQUEST, timeout=60):
                        messages += 1
                        if not first and event.HasField("delta"):
                            first = time.perf_counter() - started
                    return first * 1000, (time.perf_counter() - started) * 1000, messages

                return call

            for pacing in PACINGS_MS:
                for name, sidecar in sidecars.items():
                    route_duo_chat(sidecar.address, models[name][pacing])
                calls: dict[str, Call] = {
                    "direct": direct(pacing),
                    **{name: grpc_call(name, complete_method(pacing)) for name in floors},
                    **{name: grpc_call(name, SIDECAR_METHOD) for name in sidecars},
                }
                if settings.relay:
                    calls["relay"] = grpc_call("floor_uvloop", complete_method(pacing, relay=True))
                for call in calls.values():  # warm every path up (connections, caches) at this pacing
                    await asyncio.gather(*(call() for _ in range(4)))
                for concurrency in CONCURRENCIES:
                    cells = {}
                    for name, call in calls.items():
                        minimum = settings.minimum if concurrency == 1 else concurrency
                        pid = pids["floor_uvloop"] if name == "relay" else pids.get(name)
                        cells[name] = await load(call, concurrency, settings.seconds, minimum, pid)
                    point = Point(pacing, concurrency, **cells)
                    points.append(point)
                    print_point(point, flush=True)
    finally:
        for channel in channels.values():
            await channel.close()
    return points


HEADER = (
    f"  {'pacing':>6} {'conc':>4}  {'direct TTFT':>13}  {'floor TTFT':>13}  {'sidecar TTFT':>13}  {'added TTFT':>13}  "
    f"{'msgs/compl':>10}  {'sidecar CPU ms':>14}  {'floor CPU ms asyncio/uvloop':>27}  {'ratio':>5}  verdict"
)


def print_point(p: Point, flush: bool = False) -> None:
    passed = all(value <= limit for _, value, limit in p.checks())
    print(
        f"  {p.pacing_ms:>4}ms {p.concurrency:>4}  "
        f"{p.direct.ttft_p50_ms:>6.2f}/{p.direct.ttft_p99_ms:<6.2f}  "
        f"{p.floor.ttft_p50_ms:>6.2f}/{p.floor.ttft_p99_ms:<6.2f}  "
        f"{p.sidecar.ttft_p50_ms:>6.2f}/{p.sidecar.ttft_p99_ms:<6.2f}  "
        f"{p.added_ttft_p50_ms:>+6.2f}/{p.added_ttft_p99_ms:<+6.2f}  "
        f"{p.sidecar.messages_per_completion:>4.1f} ({p.floor.messages_per_completion:>2.0f})  "
        f"{p.sidecar.cpu_ms_per_completion:>6.2f} ({p.sidecar_cpu_ms_per_delta:>4.2f}/d)  "
        f"{p.floor_asyncio.cpu_ms_per_completion:>13.2f} / {p.floor_uvloop.cpu_ms_per_completion:<11.2f}  "
        f"{p.cpu_ratio:>5.2f}  {'PASS' if passed else 'FAIL'}"
        + (
            f"  (sidecar on asyncio: {p.sidecar_asyncio.cpu_ms_per_completion:.2f} ms, ratio "
            f"{p.sidecar_asyncio.cpu_ms_per_completion / p.floor.cpu_ms_per_completion:.2f})"
            if p.sidecar_asyncio is not None
            else ""
        )
        + (
            f"  (relay floor: {p.relay.cpu_ms_per_completion:.2f} ms, {p.relay.messages_per_completion:.1f} msgs)"
            if p.relay is not None
            else ""
        ),
        flush=flush,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.complete", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell (3)")
    parser.add_argument("--minimum", type=int, default=25, help="completions per cell at concurrency 1 (25)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--compare-loops", action="store_true", help="also measure the sidecar on asyncio's loop (server.event_loop)"
    )
    parser.add_argument(
        "--relay", action="store_true", help="also measure a raw relay floor: upstream read and one delta per read"
    )
    args = parser.parse_args(argv)
    settings = Settings(args.seconds, args.minimum, args.relay)
    load_before = os.getloadavg()
    started = time.monotonic()

    print(
        f"Complete: 20-chunk streamed completions at 0, 5 and 20 ms token pacing; {args.seconds:g} s per cell "
        f"(at least {args.minimum} completions at concurrency 1); load average {load_before[0]:.2f}",
        flush=True,
    )
    print("  TTFT p50/p99 ms; msgs/compl: the sidecar's (the floor's); CPU per completion (per delta); ratio: "
          "sidecar CPU / the faster floor's")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="duo-bench-complete-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        upstream_url = stack.enter_context(started_upstream())
        sidecars, models = {}, {}
        for name in ("sidecar", "sidecar_asyncio") if args.compare_loops else ("sidecar",):
            port = free_port()
            directory = workdir / name
            directory.mkdir()
            config = write_config(directory, "self_managed", port, '[log]\nlevel = "warning"\n')
            command = [str(BIN / "duo-sidecar"), "serve", "--config", str(config)]
            env = {"DUO_SIDECAR_SERVER_EVENT_LOOP": "asyncio"} if name == "sidecar_asyncio" else None
            sidecars[name] = stack.enter_context(
                running(command, port, directory / "sidecar.log", lambda s: wait_serving(s.address), env)
            )
            models[name] = create_models(sidecars[name].address, upstream_url)
        sidecar = sidecars["sidecar"]
        route_duo_chat(sidecar.address, models["sidecar"][0])
        route_file = workdir / "route.bin"
        route_file.write_bytes(first_route(sidecar.address))
        floors = {}
        for name, extra in (("floor_asyncio", []), ("floor_uvloop", ["--uvloop"])):
            floor_port = free_port()
            relay = f"--relay-upstream={upstream_url.removeprefix('http://')}"
            command = [sys.executable, "-m", "bench.floor", f"--port={floor_port}",
                       f"--complete-route-file={route_file}", relay, *extra]  # fmt: skip
            floors[name] = stack.enter_context(running(command, floor_port, workdir / f"{name}.log", wait_connectable))
        idle = idle_cpu_ms_per_second({**sidecars, **floors})
        print("  idle CPU, ms per second: " + ", ".join(f"{name} {ms:.1f}" for name, ms in idle.items()), flush=True)
        print(HEADER, flush=True)
        points = asyncio.run(measure(upstream_url, sidecars, floors, models, settings))

    failed = 0
    print()
    for point in points:
        for what, value, limit in point.checks():
            if value > limit:
                failed += 1
                print(f"  FAIL {what}: {value:.2f} (target <= {limit:g})")
    checks = sum(len(p.checks()) for p in points)
    print(
        f"Complete targets: {checks}, {'all PASS' if not failed else f'{failed} FAIL'}; "
        f"{time.monotonic() - started:.0f} s; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    report = [
        {**asdict(p), "floor": p.floor_name, "cpu_ratio": p.cpu_ratio, "added_ttft_p50_ms": p.added_ttft_p50_ms,
         "added_ttft_p99_ms": p.added_ttft_p99_ms, "sidecar_cpu_ms_per_delta": p.sidecar_cpu_ms_per_delta}
        for p in points
    ]  # fmt: skip
    OUTPUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUTPUT}")
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
