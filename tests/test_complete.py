"""Complete against real HTTP upstreams on 127.0.0.1: OpenAI-compatible (vLLM), Azure OpenAI and the AI Gateway."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from aiohttp import web

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2, types_pb2
from sidecar.catalog import load_catalog
from sidecar.servicers import RoutingServicer
from tests.completion import FAST, MESSAGES, TOKEN, collect, complete_request, model_at, read_all, self_hosted
from tests.conftest import Sidecar, StartServer
from tests.helpers import REPO, ErrorDetails, duo_admin_path, error_details
from tests.upstreams import MockUpstream, serve_upstream

pytestmark = pytest.mark.asyncio


async def failure(call: Any) -> tuple[ErrorDetails, list[Any]]:
    events: list[Any] = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for event in call:
            events.append(event)
    details = error_details(raised.value)
    assert details.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    return details, events


async def still_serving(sidecar: Sidecar) -> None:
    answer = await sidecar.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="code_completions"))
    assert answer.model_identifier


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[MockUpstream]:
    async with serve_upstream() as server:
        yield server


async def test_openai_compatible_stream_in_order_with_usage(
    start_server: StartServer, upstream: MockUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sidecar = await start_server("self_managed")
    model = await self_hosted(sidecar, upstream)
    events = await collect(
        sidecar.routing.Complete(
            complete_request(
                "duo_chat_explain_code",
                parameters=routing_pb2.GenerationParameters(max_tokens=64, temperature=0.2, stop_sequences=["\n\n"]),
                correlation_id="req-42",
            )
        )
    )
    route = events[0].route
    assert route.provider == types_pb2.PROVIDER_SELF_HOSTED and route.self_hosted_model_id == model.id
    deltas = [e.delta.text for e in events[1:-1]]
    assert "".join(deltas) == "Hello, world!" and all(deltas)  # in order; chunks that arrived together share a delta
    finished = events[-1].finished
    assert finished.finish_reason == "stop"
    assert (finished.usage.input_tokens, finished.usage.output_tokens, finished.usage.estimated) == (11, 4, False)

    seen = upstream.requests[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["X-Request-ID"] == "req-42"
    assert seen.body["model"] == "mistral-7b-instruct"
    assert seen.body["messages"] == [{"role": m.role, "content": m.content} for m in MESSAGES]
    assert seen.body["stream"] is True
    assert (seen.body["max_tokens"], seen.body["stop"]) == (64, ["\n\n"])
    assert seen.body["temperature"] == pytest.approx(0.2)
    # The token reaches the upstream and nothing else.
    assert TOKEN not in str(events)
    assert TOKEN not in caplog.text
    audit = await sidecar.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest())
    assert TOKEN not in str(audit)


async def test_deltas_arrive_unbuffered(start_server: StartServer, upstream: MockUpstream) -> None:
    upstream.gate = asyncio.Event()
    sidecar = await start_server("self_managed")
    await self_hosted(sidecar, upstream)
    call = sidecar.routing.Complete(complete_request())
    assert (await call.read()).HasField("route")
    first = await asyncio.wait_for(call.read(), timeout=5)
    # The upstream is holding the rest of the answer: the first delta was forwarded on its own.
    assert first.delta.text == "Hello"
    upstream.gate.set()
    rest = await read_all(call)
    assert "".join(e.delta.text for e in rest[:-1]) == ", world!"


AZURE_API_VERSION = "2025-01-01-preview"


async def test_azure_openai(start_server: StartServer, upstream: MockUpstream) -> None:
    upstream.usage = None
    # Not the default (2024-10-21, see sidecar/config.py): only the override can put this version on the wire.
    sidecar = await start_server("self_managed", env={"DUO_SIDECAR_UPSTREAM_AZURE_API_VERSION": AZURE_API_VERSION})
    await self_hosted(sidecar, upstream, platform=types_pb2.PLATFORM_AZURE_OPENAI)
    events = await collect(sidecar.routing.Complete(complete_request()))
    assert "".join(e.delta.text for e in events[1:-1]) == "Hello, world!"
    assert events[-1].finished.usage.estimated is True  # no usage chunk: estimated
    seen = upstream.requests[-1]
    assert seen.path == "/openai/deployments/mistral-deployment/chat/completions"
    assert seen.query == {"api-version": AZURE_API_VERSION}
    assert seen.headers["api-key"] == TOKEN
    assert "Authorization" not in seen.headers
    assert "model" not in seen.body


async def gateway_sidecar(start_server: StartServer, upstream: MockUpstream, tmp_path: Path, **env: str) -> Sidecar:
    token_file = tmp_path / "cloud-connector.token"
    token_file.write_text("cc-token-xyz\n")
    return await start_server(
        "gitlab_com",
        env={
            "DUO_SIDECAR_INSTANCE_AI_GATEWAY_URL": upstream.url,
            "DUO_SIDECAR_INSTANCE_CLOUD_CONNECTOR_TOKEN_FILE": str(token_file),
            "DUO_SIDECAR_INSTANCE_INSTANCE_ID": "instance-uuid-1",
            **env,
        },
    )


async def test_ai_gateway_gets_gitlabs_headers_and_model_metadata(
    start_server: StartServer, upstream: MockUpstream, tmp_path: Path
) -> None:
    sidecar = await gateway_sidecar(start_server, upstream, tmp_path)
    await sidecar.admin.UpdateNamespaceModelSelection(
        admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=10, feature="duo_chat", offered_model_ref="claude_sonnet_4_6"
        )
    )
    events = await collect(sidecar.routing.Complete(complete_request("duo_chat", user=7, namespace=10)))
    assert events[0].route.model_identifier == "claude_sonnet_4_6"
    assert "".join(e.delta.text for e in events[1:-1]) == "Hello, world!"
    assert events[-1].finished.usage.estimated is True
    seen = upstream.requests[-1]
    assert seen.path == "/v1/prompts/duo_chat"
    headers = seen.headers
    assert headers["Authorization"] == "Bearer cc-token-xyz"
    assert headers["X-Gitlab-Authentication-Type"] == "oidc"
    assert headers["X-Gitlab-Instance-Id"] == "instance-uuid-1"
    assert headers["X-Gitlab-Realm"] == "saas"
    assert headers["X-Gitlab-Feature-Enabled-By-Namespace-Ids"] == "10"
    assert headers["X-Gitlab-Unit-Primitive"] == load_catalog().features["duo_chat"].unit_primitives[0]
    assert len(headers["X-Gitlab-Global-User-Id"]) == 64 and headers["X-Gitlab-Global-User-Id"] != "7"
    assert seen.body["model_metadata"] == {
        "provider": "gitlab",
        "feature_setting": "duo_chat",
        "identifier": "claude_sonnet_4_6",
    }
    assert seen.body["inputs"]["messages"][1] == {"role": "user", "content": "Say hello"}
    assert seen.body["stream"] is True

    # The GitLab default is named by an empty identifier, as Rails does.
    await collect(sidecar.routing.Complete(complete_request("code_completions", user=7, namespace=10)))
    assert upstream.requests[-1].body["model_metadata"] == {
        "provider": "gitlab",
        "feature_setting": "code_completions",
        "identifier": "",
    }
    assert (
        upstream.requests[-1].headers["X-Gitlab-Unit-Primitive"]
        == load_catalog().features["code_completions"].unit_primitives[0]
    )


async def test_disabled_feature_and_routing_errors_fail_before_any_upstream_request(
    start_server: StartServer, upstream: MockUpstream, tmp_path: Path
) -> None:
    sidecar = await start_server("self_managed")
    await sidecar.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_DISABLED)
    )
    details, events = await failure(sidecar.routing.Complete(complete_request()))
    assert (details.code, details.reason, events) == (grpc.StatusCode.FAILED_PRECONDITION, "FEATURE_DISABLED", [])

    com = await gateway_sidecar(start_server, upstream, tmp_path)

    async def seats() -> AsyncIterator[admin_pb2.SyncSeatAssignmentsRequest]:
        yield admin_pb2.SyncSeatAssignmentsRequest(
            assignments=[admin_pb2.SeatAssignment(user_id=1, namespace_id=n, assigned=True) for n in (10, 20)]
        )

    await com.admin.SyncSeatAssignments(seats())
    await com.admin.UpdateNamespaceModelSelection(
        admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=10, feature="duo_chat", offered_model_ref="claude_sonnet_4_6"
        )
    )
    details, events = await failure(com.routing.Complete(complete_request()))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DEFAULT_NAMESPACE_REQUIRED")
    assert details.metadata["candidate_namespace_ids"] == "10,20"
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("configure", "code", "reason"),
    [
        ({"behavior": "hang"}, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_TIMEOUT"),
        ({"behavior": "garbage"}, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_PROTOCOL_ERROR"),
        ({"behavior": "status", "status": 401}, grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_CREDENTIALS_REJECTED"),
        ({"behavior": "status", "status": 429}, grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
        ({"behavior": "status", "status": 500}, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR"),
    ],
    ids=["hangs-before-first-token", "garbage", "401", "429", "500"],
)  # fmt: skip
async def test_upstream_faults(
    start_server: StartServer, upstream: MockUpstream, configure: dict[str, Any], code: grpc.StatusCode, reason: str
) -> None:
    for name, value in configure.items():
        setattr(upstream, name, value)
    sidecar = await start_server("self_managed", env=FAST)
    model = await self_hosted(sidecar, upstream)
    details, events = await failure(sidecar.routing.Complete(complete_request()))
    assert (details.code, details.reason) == (code, reason)
    assert events[0].HasField("route") and len(events) == 1
    assert details.metadata["upstream"] == f"self-hosted model '{model.name}'"
    if reason == "UPSTREAM_CREDENTIALS_REJECTED":
        assert model.name in details.message
    assert TOKEN not in details.message
    await still_serving(sidecar)


async def test_upstream_dies_mid_stream(start_server: StartServer, upstream: MockUpstream) -> None:
    upstream.behavior = "die_mid_stream"
    sidecar = await start_server("self_managed", env=FAST)
    await self_hosted(sidecar, upstream)
    details, events = await failure(sidecar.routing.Complete(complete_request()))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_STREAM_BROKEN")
    assert "".join(e.delta.text for e in events[1:]) == "Hello, "  # what arrived was forwarded, no retry after it
    assert len(upstream.requests) == 1
    await still_serving(sidecar)


async def test_upstream_down_is_unavailable(start_server: StartServer, tmp_path: Path) -> None:
    async with serve_upstream() as gone:
        pass  # the port is closed now
    sidecar = await start_server("self_managed", env=FAST)
    await self_hosted(sidecar, gone)
    details, _ = await failure(sidecar.routing.Complete(complete_request()))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert f"127.0.0.1:{gone.port}" in details.message
    await still_serving(sidecar)


async def test_retries_only_before_the_first_token(start_server: StartServer, upstream: MockUpstream) -> None:
    upstream.behavior = "fail_then_ok"
    upstream.failures_before_ok = 1
    sidecar = await start_server("self_managed", env=FAST)
    await self_hosted(sidecar, upstream)
    events = await collect(sidecar.routing.Complete(complete_request()))
    assert "".join(e.delta.text for e in events[1:-1]) == "Hello, world!"
    assert len(upstream.requests) == 2


async def test_client_cancel_closes_the_upstream_request(start_server: StartServer, upstream: MockUpstream) -> None:
    upstream.gate = asyncio.Event()  # the upstream keeps the stream open after the first chunk
    sidecar = await start_server("self_managed")
    await self_hosted(sidecar, upstream)
    call = sidecar.routing.Complete(complete_request())
    await call.read()
    assert (await call.read()).delta.text == "Hello"
    call.cancel()
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=5)
    assert upstream.disconnects == 1
    await still_serving(sidecar)


async def test_callers_leaving_before_the_first_token_free_their_upstream_slots(
    start_server: StartServer, upstream: MockUpstream
) -> None:
    """The upstream request starts while the route is being sent: a caller that leaves at any point before the
    first token (before the route, while it is sent, after it) closes that request and gives back its in-flight
    slot. With 2 slots and no short timeouts to clean up after a leak, one leak shows by the next calls."""
    upstream.behavior = "hang"  # headers, then nothing: no first token
    sidecar = await start_server("self_managed", env={"DUO_SIDECAR_UPSTREAM_MAX_IN_FLIGHT_PER_ENDPOINT": "2"})
    await self_hosted(sidecar, upstream)
    for i in range(24):
        call = sidecar.routing.Complete(complete_request())
        if i % 4 == 3:
            assert (await call.read()).HasField("route")  # the first token is still to come
        else:
            await asyncio.sleep(i * 0.0002)  # somewhere between the call's start and its first token
        call.cancel()
        await asyncio.wait_for(upstream.until(lambda: upstream.disconnects == len(upstream.requests)), 5)
    upstream.behavior = "ok"
    for _ in range(3):
        events = await collect(sidecar.routing.Complete(complete_request()))
        assert "".join(e.delta.text for e in events[1:-1]) == "Hello, world!"


async def test_a_handler_closed_while_the_route_is_sent_stops_its_upstream_request(
    start_server: StartServer, upstream: MockUpstream
) -> None:
    """The window the test above cannot aim at: gRPC drops the handler while it sends the route, when the upstream
    request has already started beside it. Closing the handler there closes the request and frees its slot."""
    upstream.behavior = "hang"
    sidecar = await start_server("self_managed")
    await self_hosted(sidecar, upstream)
    server = sidecar.server
    assert server.state is not None and server.completer is not None
    servicer = RoutingServicer(server.state, server.completer, server.metrics)

    class Context:  # what the handler asks of grpc's context on its way out
        def time_remaining(self) -> float | None:
            return None

    handler = servicer.Complete(complete_request(), Context())
    assert (await anext(handler)).HasField("route")
    await asyncio.wait_for(upstream.until(lambda: bool(upstream.requests)), 5)  # it went out beside the route
    await handler.aclose()  # type: ignore[attr-defined]  # as the caller's cancellation does while the route is on its way
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=5)
    assert [in_flight for _, in_flight in server.completer.in_flight()] == [0.0]


async def test_deadline_shorter_than_the_upstream(start_server: StartServer, upstream: MockUpstream) -> None:
    upstream.behavior = "hang"
    sidecar = await start_server("self_managed")
    await self_hosted(sidecar, upstream)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(sidecar.routing.Complete(complete_request(), timeout=0.5))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=5)
    await still_serving(sidecar)


async def test_circuit_opens_after_repeated_failures(start_server: StartServer, upstream: MockUpstream) -> None:
    upstream.behavior, upstream.status = "status", 500
    env = {**FAST, "DUO_SIDECAR_UPSTREAM_CIRCUIT_FAILURE_THRESHOLD": "2", "DUO_SIDECAR_UPSTREAM_RETRIES": "0"}
    sidecar = await start_server("self_managed", env=env)
    await self_hosted(sidecar, upstream)
    for _ in range(2):
        details, _ = await failure(sidecar.routing.Complete(complete_request()))
        assert details.reason == "UPSTREAM_ERROR"
    details, _ = await failure(sidecar.routing.Complete(complete_request()))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "CIRCUIT_OPEN")
    assert len(upstream.requests) == 2  # failed fast, the upstream was spared


async def test_in_flight_requests_are_bounded(start_server: StartServer, upstream: MockUpstream) -> None:
    upstream.gate = asyncio.Event()
    sidecar = await start_server("self_managed", env={"DUO_SIDECAR_UPSTREAM_MAX_IN_FLIGHT_PER_ENDPOINT": "1"})
    await self_hosted(sidecar, upstream)
    first = sidecar.routing.Complete(complete_request())
    await first.read()
    await first.read()
    details, _ = await failure(sidecar.routing.Complete(complete_request()))
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_CONCURRENCY_LIMIT")
    upstream.gate.set()
    assert (await read_all(first))[-1].HasField("finished")
    events = await collect(sidecar.routing.Complete(complete_request()))  # the slot is free again
    assert events[-1].HasField("finished")


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([], "messages"),
        ([routing_pb2.ChatMessage(role="user", content="x")] * 101, "messages"),
        ([routing_pb2.ChatMessage(role="tool", content="x")], "messages[0].role"),
        ([routing_pb2.ChatMessage(role="user", content="x" * 400_001)], "messages[0].content"),
    ],
    ids=["none", "too-many", "bad-role", "too-long"],
)
async def test_bad_messages(start_server: StartServer, messages: list[Any], field: str) -> None:
    sidecar = await start_server("dedicated")
    request = routing_pb2.CompleteRequest(user_id=1, feature="duo_chat", messages=messages)
    details, events = await failure(sidecar.routing.Complete(request))
    assert (details.code, details.field_violations, events) == (grpc.StatusCode.INVALID_ARGUMENT, [field], [])


async def test_test_self_hosted_model_reports_the_round_trip(start_server: StartServer, upstream: MockUpstream) -> None:
    sidecar = await start_server("self_managed")
    model = await self_hosted(sidecar, upstream)
    ok = await sidecar.admin.TestSelfHostedModel(admin_pb2.TestSelfHostedModelRequest(id=model.id))
    assert (ok.success, ok.http_status, ok.sample_output) == (True, 200, "Hello, world!")
    assert ok.latency_ms > 0
    assert upstream.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"
    upstream.behavior, upstream.status, upstream.error_body = "status", 401, '{"error": "invalid api key"}'
    refused = await sidecar.admin.TestSelfHostedModel(admin_pb2.TestSelfHostedModelRequest(id=model.id))
    assert (refused.success, refused.http_status) == (False, 401)
    assert "invalid api key" in refused.error_message


async def test_refresh_catalog_keeps_the_last_good_copy(
    start_server: StartServer, upstream: MockUpstream, tmp_path: Path
) -> None:
    definitions = json.loads((REPO / "sidecar" / "data" / "model_definitions.json").read_text())
    for feature in definitions["unit_primitives"]:
        feature["selectable_models"] = [m for m in feature["selectable_models"] if m != "claude_sonnet_4_5_20250929"]
    upstream.catalog = definitions
    data = tmp_path / "data"
    sidecar = await gateway_sidecar(start_server, upstream, tmp_path, DUO_SIDECAR_STORAGE_PATH=str(data / "s.db"))
    await sidecar.admin.UpdateNamespaceModelSelection(
        admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=10, feature="duo_chat", offered_model_ref="claude_sonnet_4_5_20250929"
        )
    )
    before = await sidecar.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
    refreshed = await sidecar.admin.RefreshCatalog(admin_pb2.RefreshCatalogRequest())
    assert refreshed.changed and refreshed.catalog_version != before.catalog_version
    assert list(refreshed.unavailable_pins) == ["namespaces/10:duo_chat:claude_sonnet_4_5_20250929"]
    assert upstream.requests[-1].raw_path == "/v1/models%2Fdefinitions"
    assert upstream.requests[-1].headers["Authorization"] == "Bearer cc-token-xyz"
    answer = await sidecar.routing.ResolveModel(
        routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat", root_namespace_id=10)
    )
    assert answer.pinned_model_unavailable and answer.model_identifier == "claude_sonnet_4_6_vertex"

    upstream.catalog_status = 500
    details = error_details(await _rpc_error(sidecar.admin.RefreshCatalog(admin_pb2.RefreshCatalogRequest())))
    assert details.code == grpc.StatusCode.UNAVAILABLE
    info = await sidecar.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
    assert info.catalog_version == refreshed.catalog_version  # the last good copy stays

    upstream.catalog_status, upstream.catalog = 200, {"models": "not a list"}
    details = error_details(await _rpc_error(sidecar.admin.RefreshCatalog(admin_pb2.RefreshCatalogRequest())))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "CATALOG_REFRESH_FAILED")

    await sidecar.server.stop()
    restarted = await gateway_sidecar(start_server, upstream, tmp_path, DUO_SIDECAR_STORAGE_PATH=str(data / "s.db"))
    info = await restarted.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
    assert info.catalog_version == refreshed.catalog_version  # the refreshed copy survives a restart


async def _rpc_error(call: Any) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded")


async def run_duo_admin(sidecar: Sidecar, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        duo_admin_path(),
        "--address",
        f"127.0.0.1:{sidecar.server.port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_duo_admin_complete_and_test_model(start_server: StartServer, upstream: MockUpstream) -> None:
    sidecar = await start_server("self_managed")
    model = await self_hosted(sidecar, upstream)
    code, out, err = await run_duo_admin(
        sidecar, "complete", "--user", "1", "--feature", "duo_chat", "--message", "Say hello", "--max-tokens", "20"
    )
    assert code == 0, err
    assert out == "Hello, world!\n"
    assert "model: custom_openai/mistral-7b-instruct (feature_setting)" in err
    assert "finish_reason: stop; tokens in 11, out 4" in err

    code, out, err = await run_duo_admin(
        sidecar, "--json", "complete", "--user", "1", "--feature", "duo_chat", "--message", "x"
    )
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and "route" in lines[0] and "finished" in lines[-1]

    code, out, err = await run_duo_admin(sidecar, "test-model", model.id)
    assert code == 0, err
    assert "success:       true" in out and "sample_output: Hello, world!" in out
    assert TOKEN not in out + err

    upstream.behavior, upstream.status = "status", 401
    code, out, err = await run_duo_admin(sidecar, "complete", "--user", "1", "--feature", "duo_chat", "--message", "x")
    assert code == 1
    assert "error: FAILED_PRECONDITION" in err and "reason: UPSTREAM_CREDENTIALS_REJECTED" in err
    assert "Traceback" not in err


async def test_refresh_is_refused_when_the_operator_pinned_a_catalog_file(
    start_server: StartServer, upstream: MockUpstream, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text((REPO / "sidecar" / "data" / "model_definitions.json").read_text())
    sidecar = await gateway_sidecar(start_server, upstream, tmp_path, DUO_SIDECAR_INSTANCE_CATALOG_PATH=str(catalog))
    details = error_details(await _rpc_error(sidecar.admin.RefreshCatalog(admin_pb2.RefreshCatalogRequest())))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CATALOG_PINNED")
    assert upstream.requests == []


# -- upstreams that misbehave in ways MockUpstream does not: each a real HTTP server on 127.0.0.1 --------------


@asynccontextmanager
async def serve_handler(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.1 answering every POST with `handler`; yields its base URL (…/v1 for vLLM)."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# Small bounds so that "twice the bound" and "the bound" are easy to tell apart; one retry, as by default.
BOUNDS = {
    "DUO_SIDECAR_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "0.5",
    "DUO_SIDECAR_UPSTREAM_FIRST_TOKEN_TIMEOUT_SECONDS": "1",
    "DUO_SIDECAR_UPSTREAM_IDLE_TIMEOUT_SECONDS": "1",
    "DUO_SIDECAR_UPSTREAM_RETRIES": "1",
}
FIRST_TOKEN_BOUND = 1.0
SLACK = 0.4  # scheduling on a busy 2-core machine; twice the bound would be 1 s or more late


async def timed_failure(sidecar: Sidecar) -> tuple[ErrorDetails, float]:
    started = time.monotonic()
    details, _ = await failure(sidecar.routing.Complete(complete_request()))
    return details, time.monotonic() - started


@pytest.mark.parametrize("answer", ["never", "headers-only"])
async def test_an_upstream_that_never_answers_fails_at_the_first_token_bound(
    start_server: StartServer, answer: str
) -> None:
    """The configured bound is what the caller waits: a timeout is not retried (retries are for connection
    errors and 5xx), and connecting, waiting for headers and for the first token share one deadline."""
    requests = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        if answer == "headers-only":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
        await asyncio.sleep(3600)  # the connection stays open; nothing (more) comes
        raise AssertionError("unreachable")

    async with serve_handler(handler) as url:
        sidecar = await start_server("self_managed", env=BOUNDS)
        await model_at(sidecar, f"{url}/v1")
        details, elapsed = await timed_failure(sidecar)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_TIMEOUT")
    assert FIRST_TOKEN_BOUND - 0.05 <= elapsed < FIRST_TOKEN_BOUND + SLACK, elapsed
    assert requests == 1  # never retried
    assert "1 s" in details.message  # the message names the bound that ran out


async def test_a_retry_after_a_5xx_stays_within_the_first_token_bound(start_server: StartServer) -> None:
    """A 503 is retried, and the retry gets what is left of the bound, not a fresh one."""
    requests = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        if requests == 1:
            await asyncio.sleep(0.3)
            return web.Response(status=503, text="overloaded")
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async with serve_handler(handler) as url:
        sidecar = await start_server("self_managed", env=BOUNDS)
        await model_at(sidecar, f"{url}/v1")
        details, elapsed = await timed_failure(sidecar)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_TIMEOUT")
    assert requests == 2
    assert FIRST_TOKEN_BOUND - 0.05 <= elapsed < FIRST_TOKEN_BOUND + SLACK, elapsed


async def test_connection_retries_stay_within_the_first_token_bound(start_server: StartServer) -> None:
    """A host that never completes the TCP handshake (its accept queue is full, so the SYNs are dropped): each
    attempt gives up after connect_timeout_seconds and is retried, but all of them share first_token_timeout."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # fills the queue: later SYNs get no answer
            env = {**BOUNDS, "DUO_SIDECAR_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "0.3", "DUO_SIDECAR_UPSTREAM_RETRIES": "5"}
            sidecar = await start_server("self_managed", env=env)
            await model_at(sidecar, f"http://127.0.0.1:{port}/v1")
            details, elapsed = await timed_failure(sidecar)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_TIMEOUT")
    # Six attempts of 0.3 s plus their backoff would be 3.3 s.
    assert 0.5 <= elapsed < FIRST_TOKEN_BOUND + SLACK, elapsed


async def test_test_self_hosted_model_waits_no_longer_than_the_bound(start_server: StartServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async with serve_handler(handler) as url:
        sidecar = await start_server("self_managed", env=BOUNDS)
        model = await model_at(sidecar, f"{url}/v1")
        started = time.monotonic()
        tested = await sidecar.admin.TestSelfHostedModel(admin_pb2.TestSelfHostedModelRequest(id=model.id))
        elapsed = time.monotonic() - started
    assert not tested.success and "1 s" in tested.error_message
    assert elapsed < FIRST_TOKEN_BOUND + SLACK, elapsed


# -- secrets in upstream text --------------------------------------------------------------------------------


def token_fragments(text: str, secret: str = TOKEN, length: int = 8) -> list[str]:
    """Every piece of `secret` at least `length` characters long that appears in `text`."""
    return [secret[i : i + length] for i in range(len(secret) - length + 1) if secret[i : i + length] in text]


PREFIX = '{"error": {"message": "'
# The token straddles character 300 of the upstream's answer, where the excerpt is cut.
SPANNING_THE_CUT = PREFIX + "x" * (285 - len(PREFIX)) + TOKEN + ' is not a valid key"}}'


def sse(*lines: str) -> bytes:
    return "".join(f"{line}\n\n" for line in lines).encode()


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (401, SPANNING_THE_CUT, "UPSTREAM_CREDENTIALS_REJECTED"),
        (500, f"upstream config: key ending {TOKEN[5:]} rejected by the proxy", "UPSTREAM_ERROR"),
        (401, f"the key {TOKEN[:6]}...{TOKEN[-10:]} expired", "UPSTREAM_CREDENTIALS_REJECTED"),
        (200, sse('data: {"error": {"message": "' + "y" * 280 + TOKEN + '"}}'), "UPSTREAM_ERROR"),
        (200, sse("Authorization: Bearer " + "z" * 40 + TOKEN), "UPSTREAM_PROTOCOL_ERROR"),
        (200, sse("data: {not json " + "w" * 55 + TOKEN), "UPSTREAM_PROTOCOL_ERROR"),
    ],
    ids=["token-across-the-cut", "token-tail", "token-pieces", "mid-stream-error", "echoed-header", "bad-json"],
)
async def test_no_part_of_the_api_token_reaches_the_caller(
    start_server: StartServer, status: int, body: str | bytes, reason: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if status != 200:
            return web.Response(status=status, text=str(body), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body if isinstance(body, bytes) else body.encode())
        await response.write_eof()
        return response

    async with serve_handler(handler) as url:
        sidecar = await start_server("self_managed", env=FAST)
        model = await model_at(sidecar, f"{url}/v1")
        details, _ = await failure(sidecar.routing.Complete(complete_request()))
        tested = await sidecar.admin.TestSelfHostedModel(admin_pb2.TestSelfHostedModelRequest(id=model.id))
    assert details.reason == reason
    assert "[redacted]" in details.message
    assert token_fragments(details.message) == []
    assert token_fragments(str(details.metadata)) == []
    assert not tested.success and "[redacted]" in tested.error_message
    assert token_fragments(tested.error_message) == []


async def test_redact_hides_secrets_and_their_long_pieces_before_cutting() -> None:
    from sidecar.upstream.base import redact

    assert redact(f"key {TOKEN} refused", [TOKEN]) == "key [redacted] refused"
    # Cut after redacting: the token across the cut leaves no piece behind.
    assert redact("x" * 10 + TOKEN, [TOKEN], 15) == "x" * 10 + "[reda"
    # Pieces of 8 characters or more go, wherever they are; shorter ones say nothing about the key.
    assert redact(f"a{TOKEN[3:11]}b {TOKEN[-7:]} {TOKEN[:5]}", [TOKEN]) == f"a[redacted]b {TOKEN[-7:]} {TOKEN[:5]}"
    # Two secrets, overlapping matches, and a short secret redacted where it appears whole.
    assert redact(f"{TOKEN}{TOKEN[4:]}|pw=abc|", [TOKEN, "abc", ""]) == "[redacted]|pw=[redacted]|"
    assert redact("nothing secret here", []) == "nothing secret here"


# -- endpoints refused at connection time ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_an_endpoint_refused_at_connection_time_says_endpoint_not_allowed(
    start_server: StartServer, upstream: MockUpstream, tmp_path: Path, host: str
) -> None:
    """The model was registered while its address was allowed; now it is not (the name resolves elsewhere, or the
    operator narrowed upstream.allowed_cidrs). Nothing is sent, and the caller reads why."""
    data = tmp_path / "data"
    before = await start_server(
        "self_managed", data_dir=data, env={"DUO_SIDECAR_UPSTREAM_ALLOWED_CIDRS": "127.0.0.0/8, ::1/128"}
    )
    model = await model_at(before, f"http://{host}:{upstream.port}/v1", name="vllm")
    await before.server.stop()
    sidecar = await start_server(
        "self_managed", data_dir=data, env={"DUO_SIDECAR_UPSTREAM_ALLOWED_CIDRS": "10.0.0.0/8"}
    )

    details, events = await failure(sidecar.routing.Complete(complete_request()))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ENDPOINT_NOT_ALLOWED")
    assert len(events) == 1 and events[0].HasField("route")
    assert "127.0.0.1 is outside the allowed networks (10.0.0.0/8)" in details.message, details.message
    assert "self-hosted model 'vllm'" in details.message and "Cannot connect" not in details.message
    assert details.metadata["upstream"] == "self-hosted model 'vllm'"

    tested = await sidecar.admin.TestSelfHostedModel(admin_pb2.TestSelfHostedModelRequest(id=model.id))
    assert not tested.success and tested.http_status == 0
    assert tested.error_message.startswith("ENDPOINT_NOT_ALLOWED: "), tested.error_message
    assert "127.0.0.1 is outside the allowed networks (10.0.0.0/8)" in tested.error_message
    assert upstream.requests == []  # nothing was sent

    # A refusal is the configuration's doing, not the endpoint's failure: the circuit stays closed.
    for _ in range(sidecar.config.upstream.circuit_failure_threshold):
        details, _ = await failure(sidecar.routing.Complete(complete_request()))
        assert details.reason == "ENDPOINT_NOT_ALLOWED"


async def test_a_token_that_is_not_unicode_is_a_protocol_error(start_server: StartServer) -> None:
    """JSON can spell a lone surrogate ("\\ud800"), which no gRPC string can carry: the upstream broke the protocol,
    and the caller hears that (UNAVAILABLE, UPSTREAM_PROTOCOL_ERROR), never INTERNAL."""
    chunk = '{"choices": [{"index": 0, "delta": {"content": "ok \\ud800"}, "finish_reason": null}]}'

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(f"data: {chunk}", "data: [DONE]"))
        await response.write_eof()
        return response

    async with serve_handler(handler) as url:
        sidecar = await start_server("self_managed", env=FAST)
        await model_at(sidecar, f"{url}/v1")
        details, _ = await failure(sidecar.routing.Complete(complete_request()))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_PROTOCOL_ERROR")
    assert "invalid JSON" in details.message
