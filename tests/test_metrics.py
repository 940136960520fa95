"""/metrics scraped from real in-process sidecars after real RPCs: exact counters, formats, promtool, cardinality."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from duo_common.tokens import sign_token
from gitlab.duo.routing.v1 import admin_pb2, routing_pb2
from sidecar.metrics import Metrics
from sidecar.server import StartupError
from tests.completion import FAST, collect, complete_request, self_hosted
from tests.conftest import Sidecar, StartServer
from tests.error_reasons import code_error_reasons
from tests.helpers import REPO
from tests.scrape import Samples, parse, scrape, scrape_text, value
from tests.upstreams import MockUpstream, serve_upstream

pytestmark = pytest.mark.asyncio

ROUTING = "gitlab.duo.routing.v1.RoutingService"


def promtool() -> str:
    """promtool's path; `make test` installs it, so CI fails without it, and elsewhere the check is skipped."""
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool is missing: `make promtool-deps` installs Debian's prometheus package"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def rpc(method: str, service: str = ROUTING, kind: str = "unary") -> dict[str, str]:
    return {"grpc_service": service, "grpc_method": method, "grpc_type": kind}


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def seats(sidecar: Sidecar, *pairs: tuple[int, int]) -> None:
    async def batches() -> AsyncIterator[admin_pb2.SyncSeatAssignmentsRequest]:
        yield admin_pb2.SyncSeatAssignmentsRequest(
            assignments=[admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=True) for u, n in pairs]
        )

    await sidecar.admin.SyncSeatAssignments(batches())


async def two_seats_with_a_pin(sidecar: Sidecar) -> None:
    """User 1 holds seats in 10 and 20, and 10 pins gpt_5 for Duo Chat: no-context Duo Chat needs a default."""
    await seats(sidecar, (1, 10), (1, 20))
    await sidecar.admin.UpdateNamespaceModelSelection(
        admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=10, feature="duo_chat", offered_model_ref="claude_sonnet_4_6"
        )
    )


async def test_default_namespace_required_and_a_resolution_move_exact_counters(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await two_seats_with_a_pin(sidecar)
    before = await scrape(sidecar)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sidecar.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    answer = await sidecar.routing.ResolveModel(
        routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat", root_namespace_id=10)
    )
    assert answer.model_identifier == "claude_sonnet_4_6"
    after = await scrape(sidecar)

    resolve = rpc("ResolveModel")
    assert moved(before, after, "grpc_server_started_total", **resolve) == 2
    assert moved(before, after, "grpc_server_msg_received_total", **resolve) == 2
    assert moved(before, after, "grpc_server_msg_sent_total", **resolve) == 1
    assert moved(before, after, "grpc_server_handled_total", grpc_code="FailedPrecondition", **resolve) == 1
    assert moved(before, after, "grpc_server_handled_total", grpc_code="OK", **resolve) == 1
    assert moved(before, after, "grpc_server_handling_seconds_count", **resolve) == 2
    assert moved(before, after, "grpc_server_handling_seconds_bucket", le="+Inf", **resolve) == 2
    assert moved(before, after, "duo_routing_default_namespace_required_total", feature="duo_chat") == 1
    resolution = {"feature": "duo_chat", "provider": "gitlab_ai_gateway", "source": "context_namespace"}
    assert moved(before, after, "duo_routing_resolutions_total", **resolution) == 1
    # Every code exists for RoutingService from the start, so error ratios are defined before the first error.
    assert ("grpc_server_handled_total", frozenset({**resolve, "grpc_code": "Unauthenticated"}.items())) in before

    # The admin calls above: a client stream and a unary call, counted under their types.
    sync = rpc("SyncSeatAssignments", "gitlab.duo.routing.v1.AdminService", "client_stream")
    assert value(after, "grpc_server_handled_total", grpc_code="OK", **sync) == 1
    assert value(after, "grpc_server_msg_received_total", **sync) == 1
    assert value(after, "duo_routing_config_version") == 2
    assert value(after, "duo_routing_store_up") == 1


async def test_snapshot_swap_time_and_config_version_follow_admin_changes(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    before = await scrape(sidecar)
    assert value(before, "duo_routing_config_version") == 0
    await asyncio.sleep(0.05)
    await seats(sidecar, (5, 50))
    after = await scrape(sidecar)
    assert value(after, "duo_routing_config_version") == 1
    published = value(after, "duo_routing_snapshot_published_timestamp_seconds")
    assert published > value(before, "duo_routing_snapshot_published_timestamp_seconds") > 0
    assert value(after, "duo_routing_catalog_refresh_interval_seconds") == 3600
    assert 0 <= value(after, "duo_routing_catalog_age_seconds") < 60


async def test_pinned_model_unavailable_and_catalog_refresh(start_server: StartServer, tmp_path: Path) -> None:
    definitions = json.loads((REPO / "sidecar" / "data" / "model_definitions.json").read_text())
    for feature in definitions["unit_primitives"]:
        feature["selectable_models"] = [m for m in feature["selectable_models"] if m != "claude_sonnet_4_5_20250929"]
    async with serve_upstream() as upstream:
        upstream.catalog = definitions
        sidecar = await start_server("gitlab_com", env={"DUO_SIDECAR_INSTANCE_AI_GATEWAY_URL": upstream.url})
        await sidecar.admin.UpdateNamespaceModelSelection(
            admin_pb2.UpdateNamespaceModelSelectionRequest(
                namespace_id=10, feature="duo_chat", offered_model_ref="claude_sonnet_4_5_20250929"
            )
        )
        before = await scrape(sidecar)
        refreshed = await sidecar.admin.RefreshCatalog(admin_pb2.RefreshCatalogRequest())
        answer = await sidecar.routing.ResolveModel(
            routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat", root_namespace_id=10)
        )
        assert answer.pinned_model_unavailable
        after = await scrape(sidecar)
    assert moved(before, after, "duo_routing_pinned_model_unavailable_total", feature="duo_chat") == 1
    assert value(after, "duo_routing_catalog_info", catalog_version=refreshed.catalog_version) == 1
    assert value(after, "duo_routing_catalog_age_seconds") <= value(before, "duo_routing_catalog_age_seconds") + 1


async def test_text_and_openmetrics_formats(start_server: StartServer) -> None:
    sidecar = await start_server("dedicated")
    content_type, text = await scrape_text(sidecar)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# TYPE grpc_server_handled_total counter" in text
    assert "process_resident_memory_bytes" in text  # process metrics come along
    content_type, text = await scrape_text(sidecar, "application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert "# TYPE grpc_server_handled counter" in text


async def test_each_sidecar_has_its_own_registry(start_server: StartServer) -> None:
    first = await start_server("dedicated")
    second = await start_server("dedicated")
    assert first.server.metrics_port != second.server.metrics_port
    await first.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"))
    assert value(await scrape(first), "grpc_server_handled_total", grpc_code="OK", **rpc("ResolveModel")) == 1
    assert value(await scrape(second), "grpc_server_handled_total", grpc_code="OK", **rpc("ResolveModel")) == 0


async def test_unknown_methods_are_not_counted(start_server: StartServer) -> None:
    sidecar = await start_server("dedicated")
    call = sidecar.channel.unary_unary("/gitlab.duo.routing.v1.RoutingService/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(b"")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    _, text = await scrape_text(sidecar)
    assert "NoSuchMethod" not in text


async def test_busy_metrics_port_is_a_startup_error(start_server: StartServer) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StartupError, match=r"metrics\.listen"):
            await start_server("dedicated", env={"DUO_SIDECAR_METRICS_LISTEN": f"127.0.0.1:{port}"})


async def test_promtool_accepts_a_real_scrape(start_server: StartServer, tmp_path: Path) -> None:
    async with serve_upstream() as upstream:
        sidecar = await start_server("self_managed")
        await self_hosted(sidecar, upstream)
        await collect(sidecar.routing.Complete(complete_request()))
        await sidecar.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="code_completions"))
        _, text = await scrape_text(sidecar)
    assert "gen_ai_client_token_usage_bucket" in text and "duo_routing_upstream_circuit_state" in text
    checked = await asyncio.to_thread(
        subprocess.run, [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # no lint findings either


async def test_promtool_accepts_the_alerting_rules() -> None:
    rules = str(REPO / "docs" / "alerts.rules.yml")
    checked = await asyncio.to_thread(
        subprocess.run, [promtool(), "check", "rules", rules], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


ALERT_TESTS = REPO / "tests" / "alerts.rules.test.yml"


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", (REPO / "docs" / "alerts.rules.yml").read_text(), flags=re.MULTILINE)


def alerts_tested_firing(text: str) -> set[str]:
    """Alerts that some promtool test expects to fire: an `alertname:` whose `exp_alerts` is not empty."""
    fired: set[str] = set()
    name = ""
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("alertname:"):
            name = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("exp_alerts:") and name:
            if stripped.split(":", 1)[1].strip() != "[]":
                fired.add(name)
            name = ""
    return fired


async def test_every_alert_fires_in_a_promtool_unit_test() -> None:
    """tests/alerts.rules.test.yml: each alert fires with its labels and rendered annotations, and the cases that
    must not fire (caller-side codes for DuoRoutingCompleteErrors, a single 401) do not."""
    alerts = alert_names()
    assert len(alerts) == len(set(alerts)) >= 12
    missing = set(alerts) - alerts_tested_firing(ALERT_TESTS.read_text())
    assert not missing, f"alerts without a promtool test that makes them fire: {sorted(missing)}"
    tested = await asyncio.to_thread(
        subprocess.run, [promtool(), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


async def test_upstream_refusals_alert_on_the_outcomes_complete_records(
    start_server: StartServer, upstream: MockUpstream
) -> None:
    """A token that expired (401) or a 429 storm fails Complete with caller-side codes (FailedPrecondition,
    ResourceExhausted) that DuoRoutingCompleteErrors leaves out: their own alerts match the outcome values a real
    Complete records, and every outcome the rules name is one the sidecar can record."""
    rules = (REPO / "docs" / "alerts.rules.yml").read_text()
    named: set[str] = set()
    for values in re.findall(r'outcome=~?"([^"]+)"', rules):
        named.update(values.split("|"))
    recordable = {reason.lower() for _, reason in code_error_reasons()} | {"ok", "cancelled", "deadline_exceeded"}
    assert named and named <= recordable, sorted(named - recordable)
    assert {"DuoRoutingUpstreamCredentialsRejected", "DuoRoutingUpstreamRateLimited"} <= set(alert_names())

    sidecar = await start_server("self_managed", env=FAST)
    await self_hosted(sidecar, upstream)
    upstream.behavior = "status"
    for status in (401, 429):
        upstream.status = status
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(sidecar.routing.Complete(complete_request()))
    after = await scrape(sidecar)
    labels = {"provider": "self_hosted", "model": "custom_openai/mistral-7b-instruct"}
    for outcome in ("upstream_credentials_rejected", "upstream_rate_limited"):
        assert outcome in named
        assert value(after, "duo_routing_upstream_requests_total", outcome=outcome, **labels) == 1
    complete = rpc("Complete", kind="server_stream")
    assert value(after, "grpc_server_handled_total", grpc_code="FailedPrecondition", **complete) == 1
    assert value(after, "grpc_server_handled_total", grpc_code="ResourceExhausted", **complete) == 1


async def test_every_metric_is_documented_and_the_rules_use_real_ones(start_server: StartServer) -> None:
    sidecar = await start_server("dedicated")
    _, text = await scrape_text(sidecar)
    exported = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
    sre = (REPO / "docs" / "sre.md").read_text()
    for name in exported:
        if name.startswith(("duo_routing_", "grpc_server_", "gen_ai_client_")):
            assert f"`{name}`" in sre, f"{name} is not documented in docs/sre.md"
    rules = (REPO / "docs" / "alerts.rules.yml").read_text()
    used = set(re.findall(r"\b((?:duo_routing|grpc_server|gen_ai_client|process)_\w+)", rules))
    assert used
    for name in used:
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in exported or base in exported, f"docs/alerts.rules.yml uses {name}, which is not exported"


async def test_complete_upstream_metrics(start_server: StartServer, upstream: MockUpstream) -> None:
    sidecar = await start_server("self_managed")
    await self_hosted(sidecar, upstream)
    before = await scrape(sidecar)
    events = await collect(sidecar.routing.Complete(complete_request()))
    assert events[-1].finished.usage.input_tokens == 11
    after = await scrape(sidecar)

    model = "custom_openai/mistral-7b-instruct"
    labels = {"provider": "self_hosted", "model": model}
    genai = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "openai_compatible",
        "gen_ai_request_model": model,
    }
    assert moved(before, after, "duo_routing_upstream_requests_total", outcome="ok", **labels) == 1
    assert moved(before, after, "duo_routing_upstream_time_to_first_token_seconds_count", **labels) == 1
    assert moved(before, after, "gen_ai_client_operation_duration_seconds_count", error_type="", **genai) == 1
    assert value(after, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **genai) == 11
    assert value(after, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **genai) == 4
    assert value(after, "gen_ai_client_token_usage_count", gen_ai_token_type="output", **genai) == 1
    assert moved(before, after, "duo_routing_overhead_seconds_count", provider="self_hosted") == 1
    overhead = value(after, "duo_routing_overhead_seconds_sum", provider="self_hosted")
    total = value(after, "grpc_server_handling_seconds_sum", **rpc("Complete", kind="server_stream"))
    assert 0 < overhead < total
    complete = rpc("Complete", kind="server_stream")
    assert moved(before, after, "grpc_server_msg_sent_total", **complete) == len(events) >= 3  # route, text, end
    assert moved(before, after, "grpc_server_handled_total", grpc_code="OK", **complete) == 1
    assert moved(before, after, "duo_routing_resolutions_total", feature="duo_chat", provider="self_hosted",
                 source="feature_setting") == 1  # fmt: skip
    endpoint = f"{upstream.url}/v1"
    assert value(after, "duo_routing_upstream_circuit_state", endpoint=endpoint) == 0
    assert value(after, "duo_routing_upstream_in_flight", endpoint=endpoint) == 0


async def test_circuit_open_and_failure_outcomes(start_server: StartServer, upstream: MockUpstream) -> None:
    upstream.behavior, upstream.status = "status", 500
    env = {**FAST, "DUO_SIDECAR_UPSTREAM_CIRCUIT_FAILURE_THRESHOLD": "2", "DUO_SIDECAR_UPSTREAM_RETRIES": "0"}
    sidecar = await start_server("self_managed", env=env)
    await self_hosted(sidecar, upstream)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(sidecar.routing.Complete(complete_request()))
    after = await scrape(sidecar)
    labels = {"provider": "self_hosted", "model": "custom_openai/mistral-7b-instruct"}
    assert value(after, "duo_routing_upstream_requests_total", outcome="upstream_error", **labels) == 2
    assert value(after, "duo_routing_upstream_requests_total", outcome="circuit_open", **labels) == 1
    assert value(after, "duo_routing_upstream_circuit_state", endpoint=f"{upstream.url}/v1") == 2
    complete = rpc("Complete", kind="server_stream")
    assert value(after, "grpc_server_handled_total", grpc_code="Unavailable", **complete) == 3
    genai = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "openai_compatible",
        "gen_ai_request_model": labels["model"],
    }
    assert value(after, "gen_ai_client_operation_duration_seconds_count", error_type="Unavailable", **genai) == 3


async def test_in_flight_cancel_and_deadline(start_server: StartServer, upstream: MockUpstream) -> None:
    upstream.gate = asyncio.Event()  # the upstream holds the stream after its first chunk
    sidecar = await start_server("self_managed")
    await self_hosted(sidecar, upstream)
    endpoint = f"{upstream.url}/v1"
    call = sidecar.routing.Complete(complete_request())
    await call.read()
    assert (await call.read()).delta.text == "Hello"
    assert value(await scrape(sidecar, settled=False), "duo_routing_upstream_in_flight", endpoint=endpoint) == 1
    call.cancel()
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=5)

    upstream.gate = None
    upstream.behavior = "hang"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(sidecar.routing.Complete(complete_request(), timeout=0.5))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    complete = rpc("Complete", kind="server_stream")
    labels = {"provider": "self_hosted", "model": "custom_openai/mistral-7b-instruct"}
    for _ in range(200):  # the server notices a cancellation or a deadline a moment after the client
        after = await scrape(sidecar)
        settled = (
            value(after, "grpc_server_handled_total", grpc_code="DeadlineExceeded", **complete) == 1
            and value(after, "duo_routing_upstream_requests_total", outcome="deadline_exceeded", **labels) == 1
            and value(after, "duo_routing_upstream_in_flight", endpoint=endpoint) == 0
        )
        if settled:
            break
        await asyncio.sleep(0.05)
    assert value(after, "grpc_server_handled_total", grpc_code="Canceled", **complete) == 1
    assert value(after, "grpc_server_handled_total", grpc_code="DeadlineExceeded", **complete) == 1
    assert value(after, "duo_routing_upstream_requests_total", outcome="cancelled", **labels) == 1
    assert value(after, "duo_routing_upstream_requests_total", outcome="deadline_exceeded", **labels) == 1
    assert value(after, "duo_routing_upstream_in_flight", endpoint=endpoint) == 0


async def test_auth_failures_are_counted_by_reason(start_server: StartServer) -> None:
    secrets = {"DUO_SIDECAR_AUTH_CLIENT_SECRET": "c" * 32, "DUO_SIDECAR_AUTH_ADMIN_SECRET": "a" * 32}
    sidecar = await start_server("dedicated", env=secrets)
    request = routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sidecar.routing.ResolveModel(request)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await sidecar.routing.ResolveModel(request, metadata=(("authorization", sign_token("c" * 32)),))
    after = await scrape(sidecar)
    assert value(after, "duo_routing_auth_failures_total", reason="AUTH_TOKEN_MISSING", enforced="true") == 1
    # Authentication runs first: a refused call never reaches the gRPC metrics, an accepted one does.
    assert value(after, "grpc_server_started_total", **rpc("ResolveModel")) == 1
    assert value(after, "grpc_server_handled_total", grpc_code="OK", **rpc("ResolveModel")) == 1


async def test_auth_failure_reasons_are_bounded() -> None:
    metrics = Metrics()
    metrics.auth_failure("AUTH_TOKEN_EXPIRED", False)
    metrics.auth_failure("Bearer v2.deadbeef", True)  # never a token or free text as a label value
    samples = parse(exposition_text(metrics))
    assert value(samples, "duo_routing_auth_failures_total", reason="AUTH_TOKEN_EXPIRED", enforced="false") == 1
    assert value(samples, "duo_routing_auth_failures_total", reason="other", enforced="true") == 1


def exposition_text(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[MockUpstream]:
    async with serve_upstream() as server:
        yield server


async def test_series_stay_bounded_under_10000_distinct_requests(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await two_seats_with_a_pin(sidecar)
    features = list((await sidecar.admin.ListSelectableModels(admin_pb2.ListSelectableModelsRequest())).features)
    names = [f.feature for f in features]

    async def resolve(i: int) -> None:
        kind = i % 5
        feature = names[(i // 5) % len(names)] if kind < 3 else f"bogus_feature_{i}"
        request = routing_pb2.ResolveModelRequest(
            user_id=1 if kind == 0 else 100_000 + i,
            feature=feature,
            root_namespace_id=0 if kind in (0, 3) else 1_000_000 + i,
        )
        metadata = (("x-request-id", f"req-{i}"), ("x-duo-actor", f"user-{i}"))
        with contextlib.suppress(grpc.aio.AioRpcError):
            await sidecar.routing.ResolveModel(request, metadata=metadata)

    async def pin(i: int) -> None:
        request = admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=2_000_000 + i, feature=f"bogus_feature_{i}", offered_model_ref=f"bogus_model_{i}"
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            await sidecar.admin.UpdateNamespaceModelSelection(request)

    # Warm-up: every kind of call for every feature once, so that every series that can exist does.
    for i in range(5 * len(names)):
        await resolve(i)
    await pin(0)
    warm = await scrape(sidecar)
    assert value(warm, "duo_routing_default_namespace_required_total", feature="duo_chat") > 0
    for start in range(0, 10_000, 500):
        await asyncio.gather(*(resolve(i) for i in range(start, start + 500)))
    await asyncio.gather(*(pin(i) for i in range(200)))
    after = await scrape(sidecar)

    resolve_calls = value(after, "grpc_server_started_total", **rpc("ResolveModel"))
    assert resolve_calls - value(warm, "grpc_server_started_total", **rpc("ResolveModel")) == 10_000
    series = {key for key in after if not key[0].startswith(("process_", "python_"))}
    warm_series = {key for key in warm if not key[0].startswith(("process_", "python_"))}
    assert series == warm_series
    for name, labels in series:
        for label, label_value in labels:
            assert not label_value.startswith(("bogus", "req-", "user-")), (name, label, label_value)
    assert len(sidecar.server.metrics._resolution_children) <= len(names) * 3 * 7
