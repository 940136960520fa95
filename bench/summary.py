"""The last table of `make bench`: every performance target of DESIGN section 6 with what this run measured.

Reads var/bench/resolve.json (bench/run.py) and var/bench/complete.json (bench/complete.py); a part that did not
run is reported as missing. `python -m bench.summary`; --strict exits 1 when a target is missed or missing.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from bench.complete import MAX_ADDED_P50_MS, MAX_ADDED_P99_MS, MAX_CPU_RATIO
from bench.complete import OUTPUT as COMPLETE_OUTPUT
from bench.run import MAX_HALF_LOAD_P99_RATIO, MIN_THROUGHPUT_RATIO
from bench.run import OUTPUT as RESOLVE_OUTPUT

Row = tuple[str, str, str, bool | None]  # what, target, measured, passed (None: missing)


def _load(path: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def resolve_rows(report: dict[str, Any] | None) -> list[Row]:
    if report is None:
        return [("ResolveModel", f">= {MIN_THROUGHPUT_RATIO} of the floor", "not run", None)]
    rows: list[Row] = []
    for scenario in report["scenarios"]:
        top = scenario["points"][-1]
        streams = top["clients"] * top["streams"]
        faster = "uvloop" if top["floor"] == top["floor_uvloop"] else "asyncio"
        rows.append(
            (
                f"ResolveModel {scenario['name']}, {streams} streams, throughput",
                f">= {MIN_THROUGHPUT_RATIO:.2f} x floor",
                f"{top['ratio']:.2f} ({top['sidecar']['rps']:.0f} / {top['floor']['rps']:.0f} req/s, {faster} floor)",
                top["passed"],
            )
        )
        half = scenario["half_load"]
        rows.append(
            (
                f"ResolveModel {scenario['name']}, half load, p99",
                f"<= {MAX_HALF_LOAD_P99_RATIO} x floor",
                f"{half['p99_ratio']:.2f} ({half['sidecar']['p99_ms']:.2f} / {half['floor']['p99_ms']:.2f} ms)",
                half["passed"],
            )
        )
    return rows


def complete_rows(points: list[dict[str, Any]] | None) -> list[Row]:
    if points is None:
        return [("Complete", f"CPU <= {MAX_CPU_RATIO} x streaming floor", "not run", None)]
    rows: list[Row] = []
    for p in points:
        where = f"{p['pacing_ms']} ms pacing, concurrency {p['concurrency']}"
        floor = p[f"floor_{p['floor']}"]["cpu_ms_per_completion"]
        rows.append(
            (
                f"Complete {where}, CPU per completion",
                f"<= {MAX_CPU_RATIO} x floor",
                f"{p['cpu_ratio']:.2f} ({p['sidecar']['cpu_ms_per_completion']:.2f} / {floor:.2f} ms, {p['floor']})",
                p["cpu_ratio"] <= MAX_CPU_RATIO,
            )
        )
        if p["concurrency"] == 1:
            rows.append(
                (
                    f"Complete {where}, added TTFT p50 / p99",
                    f"<= {MAX_ADDED_P50_MS:g} / {MAX_ADDED_P99_MS:g} ms",
                    f"{p['added_ttft_p50_ms']:+.2f} / {p['added_ttft_p99_ms']:+.2f} ms",
                    p["added_ttft_p50_ms"] <= MAX_ADDED_P50_MS and p["added_ttft_p99_ms"] <= MAX_ADDED_P99_MS,
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    rows = resolve_rows(_load(RESOLVE_OUTPUT)) + complete_rows(_load(COMPLETE_OUTPUT))
    width = max(len(r[0]) for r in rows)
    print()
    print(f"Performance targets (DESIGN section 6); load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"  {'what':<{width}}  {'target':<20}  {'measured':<44}  verdict")
    for what, target, measured, passed in rows:
        verdict = "MISSING" if passed is None else "PASS" if passed else "FAIL"
        print(f"  {what:<{width}}  {target:<20}  {measured:<44}  {verdict}")
    missed = sum(1 for r in rows if not r[3])
    print(f"  {len(rows)} targets, {'all PASS' if not missed else f'{missed} not met'}")
    return 1 if "--strict" in args and missed else 0


if __name__ == "__main__":
    sys.exit(main())
