"""`python -m bench.user_choice`: ResolveModel with a user's model choice (issue 15) against the no-op floor, by
bench.run's method (same h2load, same loads, alternating runs, CPU pinning), in one run.

    .venv/bin/python -m bench.user_choice [--rounds N] [--seconds S]

Scenarios: the choice applied in the context namespace (an allowlist turns its pin into a default), and rule 4,
a multi-seat user without context or default namespace whose choice every seat namespace allows. A same-feature
request without a choice runs alongside, so the cost of the choice shows as the difference of two ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import grpc

from bench import h2load, run
from bench.seed import Scenario
from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, types_pb2
from sidecar.catalog import load_catalog
from tests.helpers import BIN, free_port, wait_serving, write_config

AGENTIC = "duo_agent_platform_agentic_chat"
_INFO = load_catalog().features[AGENTIC]
PINNED, CHOSEN = [m for m in _INFO.selectable_models if m != _INFO.default_model and "__default__" not in m][:2]
NAMESPACES = (96_000_001, 96_000_002)
CONTEXT_USER = 22_000_001  # one seat; asks about NAMESPACES[0]
MULTI_SEAT_USER = 22_000_002  # seats in both, no default namespace, asks with no context
SCENARIOS = (
    Scenario(
        "no choice, context namespace",
        routing_pb2.ResolveModelRequest(user_id=CONTEXT_USER, feature=AGENTIC, root_namespace_id=NAMESPACES[0]),
        types_pb2.SELECTION_SOURCE_CONTEXT_NAMESPACE,
        PINNED,
    ),
    Scenario(
        "user choice applied, context namespace",
        routing_pb2.ResolveModelRequest(
            user_id=CONTEXT_USER, feature=AGENTIC, root_namespace_id=NAMESPACES[0], user_selected_model=CHOSEN
        ),
        types_pb2.SELECTION_SOURCE_USER,
        CHOSEN,
    ),
    Scenario(
        "user choice applied, multi-seat without context (rule 4)",
        routing_pb2.ResolveModelRequest(user_id=MULTI_SEAT_USER, feature=AGENTIC, user_selected_model=CHOSEN),
        types_pb2.SELECTION_SOURCE_USER,
        CHOSEN,
    ),
)


def seed(address: str) -> None:
    """Both namespaces pin PINNED with an allowlist holding CHOSEN, through the real admin RPCs."""
    metadata = (("x-duo-actor", "bench"),)
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for namespace_id in NAMESPACES:
            admin.UpdateNamespaceModelSelection(
                admin_pb2.UpdateNamespaceModelSelectionRequest(
                    namespace_id=namespace_id, feature=AGENTIC, offered_model_ref=PINNED
                ),
                metadata=metadata,
                timeout=30,
            )
            admin.UpdateNamespaceModelAllowlist(
                admin_pb2.UpdateNamespaceModelAllowlistRequest(
                    namespace_id=namespace_id, feature=AGENTIC, enabled=True, model_refs=[CHOSEN]
                ),
                metadata=metadata,
                timeout=30,
            )
        seats = [(CONTEXT_USER, NAMESPACES[0]), *((MULTI_SEAT_USER, ns) for ns in NAMESPACES)]
        batch = admin_pb2.SyncSeatAssignmentsRequest(
            assignments=[admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=True) for u, n in seats]
        )
        admin.SyncSeatAssignments(iter([batch]), metadata=metadata, timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.user_choice", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per server and point (3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run (2)")
    args = parser.parse_args(argv)
    pin = (os.cpu_count() or 1) >= 2
    settings = run.Settings(args.rounds, args.seconds, False, "0" if pin else "", "1" if pin else "")
    h2load.ensure_installed()
    started = time.monotonic()
    machine_before, own_before = run.cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="duo-bench-choice-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        port = free_port()
        config = write_config(workdir, "gitlab_com", port)
        command = run.pinned([str(BIN / "duo-sidecar"), "serve", "--config", str(config)], settings.server_cpus)

        def serving(server: run.Server) -> None:
            wait_serving(server.address, timeout=120, process=server.process)

        sidecar = stack.enter_context(run.running(command, port, workdir / "sidecar.log", serving))
        seed(sidecar.address)
        scenarios = [run.bench_scenario(s, sidecar, settings, workdir) for s in SCENARIOS]
        report = run.Report(
            h2load=h2load.version(),
            settings=settings,
            large_seed_seconds=0.0,
            sidecar_startup_seconds=sidecar.startup_seconds,
            sidecar_rss_mib_at_serving=0.0,
            sidecar_rss_mib_at_end=sidecar.rss_mib(),
            sidecar_peak_rss_mib=sidecar.rss_mib("VmHWM"),
            scenarios=scenarios,
        )
    machine_after, own_after = run.cpu_seconds()
    report.other_cpu_seconds = max(0.0, (machine_after - machine_before) - (own_after - own_before))
    checks = [p.passed for s in report.scenarios for p in s.points] + [s.half_load.passed for s in report.scenarios]
    report.targets, report.failed = len(checks), checks.count(False)
    report.total_seconds = time.monotonic() - started
    run.print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
