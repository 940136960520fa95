"""Runs h2load (Debian's nghttp2-client) with gRPC framing and reads its results."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import statistics
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# gRPC over HTTP/2 needs these; h2load adds :method POST itself because of -d.
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
# Each run opens new connections; let them settle before measuring.
WARMUP_MS = 500
# A rate-limited run counts when it reaches this share of the rate asked.
RATE_TOLERANCE = 0.95

_FINISHED = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def ensure_installed() -> None:
    """Installs h2load from Debian when it is missing (the bench machines run as root)."""
    if shutil.which("h2load"):
        return
    if os.geteuid() != 0:
        raise SystemExit("h2load is missing: run `apt-get install -y nghttp2-client` as root")
    print("h2load is missing: installing Debian's nghttp2-client", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], check=True)


def version() -> str:
    return subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (not compressed), then the length as 4 big-endian bytes."""
    return struct.pack(">BI", 0, len(message)) + message


@dataclass(frozen=True)
class Load:
    clients: int
    streams: int  # max concurrent streams per client (h2load -m)
    rps_per_client: float | None = None  # None: as fast as the server answers

    @property
    def concurrency(self) -> int:
        return self.clients * self.streams


@dataclass(frozen=True)
class Run:
    """One h2load run."""

    rps: float
    latencies_us: list[int]  # of the requests that got HTTP 200
    problem: str  # empty when every request got HTTP 200 and nothing failed


@dataclass(frozen=True)
class Result:
    """Several runs of one server at one load."""

    requests: int
    rps: float  # median of the runs, so one disturbed run does not decide
    round_rps: list[float]
    p50_ms: float  # percentiles over every request of every run
    p99_ms: float
    problem: str


def percentile(sorted_values: list[int], pct: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(runs: list[Run]) -> Result:
    latencies = sorted(us for r in runs for us in r.latencies_us)
    problems = "; ".join(r.problem for r in runs if r.problem)
    if not latencies:
        return Result(0, 0.0, [r.rps for r in runs], 0.0, 0.0, problems or "no request completed")
    return Result(
        requests=len(latencies),
        rps=statistics.median(r.rps for r in runs),
        round_rps=[r.rps for r in runs],
        p50_ms=percentile(latencies, 50) / 1000,
        p99_ms=percentile(latencies, 99) / 1000,
        problem=problems,
    )


def _int_groups(pattern: re.Pattern[str], output: str) -> list[int] | None:
    found = pattern.search(output)
    return [int(g) for g in found.groups()] if found else None


def run(
    url: str,
    body: Path,
    load: Load,
    seconds: float,
    log_file: Path,
    cpus: str = "",
    headers: Callable[[], tuple[str, ...]] = tuple,
) -> Run:
    """One timed h2load run, optionally pinned to `cpus`; latencies come from its per-request log.

    h2load 1.52's --rps now and then stops sending for part or all of a run (seen here with both servers
    idle), so a rate-limited run that falls short of the rate is run again, at most twice.
    """
    result = _run_once(url, body, load, seconds, log_file, cpus, headers())
    for _retry in range(2):
        if not _short_of_rate(result, load):
            return result
        print(f"    (h2load sent only {result.rps:.0f} req/s of the rate asked; running again)", flush=True)
        result = _run_once(url, body, load, seconds, log_file, cpus, headers())
    if _short_of_rate(result, load):
        asked = f"{result.rps:.0f} of the {(load.rps_per_client or 0) * load.clients:.0f} req/s asked"
        why = "h2load --rps stalled, or the server is saturated"
        return dataclasses.replace(result, problem=f"reached {asked} ({why})")
    return result


def _short_of_rate(result: Run, load: Load) -> bool:
    if load.rps_per_client is None or result.problem:
        return False
    return result.rps < RATE_TOLERANCE * load.rps_per_client * load.clients


def _run_once(
    url: str, body: Path, load: Load, seconds: float, log_file: Path, cpus: str, headers: tuple[str, ...]
) -> Run:
    command = [
        *(["taskset", "--cpu-list", cpus] if cpus else []),
        "h2load",
        f"--clients={load.clients}",
        f"--max-concurrent-streams={load.streams}",
        "--threads=1",
        f"--duration={round(seconds * 1000)}ms",
        f"--warm-up-time={WARMUP_MS}ms",
        f"--data={body}",
        f"--log-file={log_file}",
        *(f"--header={h}" for h in (*GRPC_HEADERS, *headers)),
    ]
    if load.rps_per_client is not None:
        command.append(f"--rps={load.rps_per_client:.3f}")
    command.append(url)
    log_file.unlink(missing_ok=True)  # h2load appends to an existing log
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    output = done.stdout + done.stderr

    finished = _FINISHED.search(output)
    requests = _int_groups(_REQUESTS, output)
    status = _int_groups(_STATUS, output)
    if done.returncode != 0 or finished is None or requests is None or status is None:
        tail = " | ".join(output.strip().splitlines()[-3:])
        return Run(0.0, [], f"h2load exited {done.returncode}: {tail}")

    # Log columns: start time (us since epoch), HTTP status (-1 for a failed stream), latency (us).
    latencies: list[int] = []
    bad_status = 0
    for line in log_file.read_text().splitlines():
        _start, code, micros = line.split("\t")[:3]
        if code == "200":
            latencies.append(int(micros))
        else:
            bad_status += 1

    _total, _started, done_count, _ok, failed, errored, timeout = requests
    problems = []
    if failed or errored or timeout:
        problems.append(f"{failed} failed, {errored} errored, {timeout} timed out")
    if status[0] != done_count or any(status[1:]):
        problems.append(f"status codes 2xx/3xx/4xx/5xx = {'/'.join(map(str, status))} of {done_count}")
    if bad_status:
        problems.append(f"{bad_status} logged requests without HTTP 200")
    if not latencies:
        problems.append("no request completed")
    return Run(float(finished.group(1)), latencies, ", ".join(problems))
