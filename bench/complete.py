"""Complete: what the sidecar adds to time to first token and total time, against the same mock upstream
called directly, in the same run, at concurrency 1 and 32; and the sidecar's CPU per 20-chunk completion.

The mock upstream is an OpenAI-compatible SSE server (tests/upstreams.py) in its own process; the sidecar
routes a Self-Managed feature to it as a self-hosted model. `python -m bench.complete` (run by `make bench`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc

from bench.run import running
from bench.seed import route_to_upstream
from gitlab.duo.routing.v1 import routing_pb2, routing_pb2_grpc
from tests.helpers import BIN, REPO, free_port, wait_serving, write_config

CHUNKS = 20
REQUESTS = {1: 300, 32: 1600}
MAX_ADDED_P50_MS = 1.0
MAX_ADDED_P99_MS = 3.0
MAX_CPU_MS_PER_COMPLETION = 1.5
OUTPUT = REPO / "var" / "bench" / "complete.json"
MESSAGES = [{"role": "user", "content": "Write a haiku about routing."}]

UPSTREAM = """
import asyncio, sys
from tests.upstreams import serve_upstream

async def main() -> None:
    async with serve_upstream(lambda u: setattr(u, "chunks", [f"token{{i}} " for i in range({chunks})])) as upstream:
        upstream.requests = type("Discard", (list,), {{"append": lambda self, item: None}})()
        print(upstream.port, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


async def _load(
    call: Callable[[], Awaitable[tuple[float, float]]], concurrency: int, total: int
) -> list[tuple[float, float]]:
    results: list[tuple[float, float]] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            results.append(await call())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def measure(upstream_url: str, sidecar: str, sidecar_pid: int) -> dict[str, object]:
    body = {"model": "bench", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    report: dict[str, object] = {}
    async with aiohttp.ClientSession() as session, grpc.aio.insecure_channel(sidecar) as channel:
        stub = routing_pb2_grpc.RoutingServiceStub(channel)
        request = routing_pb2.CompleteRequest(
            user_id=1,
            feature="duo_chat",
            messages=[routing_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES],
        )

        async def direct() -> tuple[float, float]:
            started = time.perf_counter()
            first = 0.0
            async with session.post(f"{upstream_url}/v1/chat/completions", json=body) as response:
                async for line in response.content:
                    if not first and b'"content"' in line:
                        first = time.perf_counter() - started
            return first * 1000, (time.perf_counter() - started) * 1000

        async def through_sidecar() -> tuple[float, float]:
            started = time.perf_counter()
            first = 0.0
            async for event in stub.Complete(request, timeout=30):
                if not first and event.HasField("delta"):
                    first = time.perf_counter() - started
            return first * 1000, (time.perf_counter() - started) * 1000

        for call in (direct, through_sidecar):  # warm both paths up
            await _load(call, 4, 50)
        for concurrency, total in REQUESTS.items():
            point: dict[str, float] = {}
            for name, call in (("direct", direct), ("sidecar", through_sidecar)):
                cpu_before = _cpu_seconds(sidecar_pid)
                results = await _load(call, concurrency, total)
                cpu = _cpu_seconds(sidecar_pid) - cpu_before
                ttft = [r[0] for r in results]
                point[f"{name}_ttft_p50_ms"] = statistics.median(ttft)
                point[f"{name}_ttft_p99_ms"] = _percentile(ttft, 0.99)
                point[f"{name}_total_p50_ms"] = statistics.median(r[1] for r in results)
                if name == "sidecar":
                    point["sidecar_cpu_ms_per_completion"] = cpu * 1000 / total
            point["added_ttft_p50_ms"] = point["sidecar_ttft_p50_ms"] - point["direct_ttft_p50_ms"]
            point["added_ttft_p99_ms"] = point["sidecar_ttft_p99_ms"] - point["direct_ttft_p99_ms"]
            report[f"concurrency_{concurrency}"] = point
    return report


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="duo-bench-complete-") as tmp:
        workdir = Path(tmp)
        upstream = subprocess.Popen(
            [sys.executable, "-c", UPSTREAM.format(chunks=CHUNKS)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            assert upstream.stdout is not None
            upstream_url = f"http://127.0.0.1:{int(upstream.stdout.readline())}"
            port = free_port()
            config = write_config(workdir, "self_managed", port, '[log]\nlevel = "warning"\n')
            command = [str(BIN / "duo-sidecar"), "serve", "--config", str(config)]
            with running(command, port, workdir / "sidecar.log", lambda s: wait_serving(s.address)) as sidecar:
                route_to_upstream(sidecar.address, upstream_url)
                report = asyncio.run(measure(upstream_url, sidecar.address, sidecar.process.pid))
        finally:
            upstream.send_signal(signal.SIGTERM)
            upstream.wait(timeout=10)

    print()
    print(f"Complete: {CHUNKS}-chunk streamed completion, mock OpenAI-compatible upstream on 127.0.0.1")
    print(f"  {'concurrency':>11}  {'direct TTFT p50/p99 ms':>22}  {'sidecar TTFT p50/p99 ms':>23}  "
          f"{'added p50/p99 ms':>16}  {'total p50 direct/sidecar':>24}  {'sidecar CPU ms/compl.':>21}")  # fmt: skip
    failed = 0
    for concurrency in REQUESTS:
        p: dict[str, float] = report[f"concurrency_{concurrency}"]  # type: ignore[assignment]
        print(
            f"  {concurrency:>11}  {p['direct_ttft_p50_ms']:>10.2f} / {p['direct_ttft_p99_ms']:>9.2f}  "
            f"{p['sidecar_ttft_p50_ms']:>11.2f} / {p['sidecar_ttft_p99_ms']:>9.2f}  "
            f"{p['added_ttft_p50_ms']:>7.2f} / {p['added_ttft_p99_ms']:>6.2f}  "
            f"{p['direct_total_p50_ms']:>11.2f} / {p['sidecar_total_p50_ms']:>10.2f}  "
            f"{p['sidecar_cpu_ms_per_completion']:>21.2f}"
        )
    single: dict[str, float] = report["concurrency_1"]  # type: ignore[assignment]
    checks = [
        ("added TTFT p50 at concurrency 1", single["added_ttft_p50_ms"], MAX_ADDED_P50_MS),
        ("added TTFT p99 at concurrency 1", single["added_ttft_p99_ms"], MAX_ADDED_P99_MS),
        ("sidecar CPU per completion", single["sidecar_cpu_ms_per_completion"], MAX_CPU_MS_PER_COMPLETION),
    ]
    for name, value, limit in checks:
        verdict = "PASS" if value <= limit else "FAIL"
        failed += verdict == "FAIL"
        print(f"  {name}: {value:.2f} ms (<= {limit:g}) {verdict}")
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUTPUT}")
    return 1 if "--strict" in sys.argv and failed else 0


if __name__ == "__main__":
    sys.exit(main())
