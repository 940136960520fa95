"""Structured logs from a real `duo-sidecar serve` process: JSON lines with correlation ids, no secrets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc, types_pb2
from sidecar.config import ConfigError, load_config
from sidecar.logs import CorrelationFilter, JsonFormatter, RpcLogContext, TextFormatter, current_rpc
from tests.conftest import StartSidecar
from tests.helpers import SidecarProcess
from tests.upstreams import MockUpstream, serve_upstream

pytestmark = pytest.mark.asyncio

TOKEN = "sk-live-log-test-0123456789"
PROMPT = "my secret prompt about project falcon"


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[MockUpstream]:
    async with serve_upstream() as server:
        yield server


async def configure_self_hosted(channel: grpc.aio.Channel, upstream: MockUpstream) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    reply = await admin.CreateSelfHostedModel(
        admin_pb2.CreateSelfHostedModelRequest(
            self_hosted_model=admin_pb2.SelfHostedModel(
                name="vllm",
                family=types_pb2.MODEL_FAMILY_MISTRAL,
                platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                endpoint=f"{upstream.url}/v1",
                identifier="custom_openai/mistral-7b-instruct",
                api_token=TOKEN,
            )
        )
    )
    await admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(
            feature="duo_chat",
            provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED,
            self_hosted_model_id=reply.self_hosted_model.id,
        )
    )


def complete_request(correlation_id: str = "") -> routing_pb2.CompleteRequest:
    return routing_pb2.CompleteRequest(
        user_id=1,
        feature="duo_chat",
        messages=[routing_pb2.ChatMessage(role="user", content=PROMPT)],
        correlation_id=correlation_id,
    )


async def log_lines(sidecar: SidecarProcess, wanted: str) -> list[str]:
    """The process's log lines once one contains `wanted` (stderr is written line by line, but asynchronously)."""
    for _ in range(100):
        text = await asyncio.to_thread(sidecar.logs)
        if wanted in text:
            return [line for line in text.splitlines() if line.strip()]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no log line with {wanted!r}:\n{text}")


def access_lines(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["correlation_id"]: e for e in entries if e["logger"] == "sidecar.access"}


async def test_json_lines_with_correlation_ids_and_no_secrets(
    start_sidecar: StartSidecar, upstream: MockUpstream
) -> None:
    sidecar = start_sidecar("self_managed")
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        await configure_self_hosted(channel, upstream)
        routing = routing_pb2_grpc.RoutingServiceStub(channel)
        await routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="code_completions"))
        with pytest.raises(grpc.aio.AioRpcError):
            await routing.ResolveModel(
                routing_pb2.ResolveModelRequest(user_id=1, feature="no_such_feature"),
                metadata=(("x-request-id", "req-bad-1"),),
            )
        events = [e async for e in routing.Complete(complete_request("corr-complete-7"))]
        assert "".join(e.delta.text for e in events[1:-1]) == "Hello, world!"
        assert upstream.requests[-1].headers["X-Request-ID"] == "corr-complete-7"
        [e async for e in routing.Complete(complete_request(), metadata=(("x-correlation-id", "corr-meta-8"),))]
        assert upstream.requests[-1].headers["X-Request-ID"] == "corr-meta-8"
    lines = await log_lines(sidecar, "corr-meta-8")

    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in entries:
        assert {"time", "level", "logger", "msg"} <= entry.keys(), entry
        assert entry["time"].endswith("Z")
    access = access_lines(entries)
    assert access["req-bad-1"]["rpc"] == "gitlab.duo.routing.v1.RoutingService/ResolveModel"
    assert (access["req-bad-1"]["code"], access["req-bad-1"]["reason"]) == ("InvalidArgument", "UNKNOWN_FEATURE")
    assert access["req-bad-1"]["level"] == "info"
    complete = access["corr-complete-7"]
    assert (complete["rpc"], complete["code"], complete["grpc_type"]) == (
        "gitlab.duo.routing.v1.RoutingService/Complete",
        "OK",
        "server_stream",
    )
    assert complete["duration_ms"] > 0
    assert access["corr-meta-8"]["code"] == "OK"
    admin = [e for e in access.values() if e["rpc"].endswith("/CreateSelfHostedModel")]
    assert len(admin) == 1 and len(admin[0]["correlation_id"]) == 32  # generated
    # Successful ResolveModel calls are the hot path: DEBUG, not written at the default level.
    assert not [e for e in access.values() if e["rpc"].endswith("/ResolveModel") and e["code"] == "OK"]
    text = "\n".join(lines)
    for secret in (TOKEN, PROMPT, "Hello, world"):
        assert secret not in text


async def test_debug_level_and_log_prompts(start_sidecar: StartSidecar, upstream: MockUpstream) -> None:
    sidecar = start_sidecar("self_managed", extra_config='[log]\nlevel = "debug"\nlog_prompts = true\n')
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        await configure_self_hosted(channel, upstream)
        routing = routing_pb2_grpc.RoutingServiceStub(channel)
        await routing.ResolveModel(
            routing_pb2.ResolveModelRequest(user_id=1, feature="code_completions"),
            metadata=(("x-request-id", "req-ok-1"),),
        )
        [e async for e in routing.Complete(complete_request("corr-debug-2"))]
    lines = await log_lines(sidecar, '"Complete output"')
    entries = [json.loads(line) for line in lines]
    access = access_lines(entries)
    assert (access["req-ok-1"]["level"], access["req-ok-1"]["code"]) == ("debug", "OK")
    prompt = next(e for e in entries if e["msg"] == "Complete prompt")
    assert prompt["correlation_id"] == "corr-debug-2" and prompt["prompt"] == [["user", PROMPT]]
    output = next(e for e in entries if e["msg"] == "Complete output")
    assert output["completion"] == "Hello, world!"
    assert not [e for e in entries if e["logger"].startswith(("aiosqlite", "grpc", "asyncio"))]
    assert TOKEN not in "\n".join(lines)


async def test_text_format(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar("dedicated", extra_config='[log]\nformat = "text"\n')
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await routing_pb2_grpc.RoutingServiceStub(channel).ResolveModel(
                routing_pb2.ResolveModelRequest(user_id=-1, feature="duo_chat"),
                metadata=(("x-request-id", "req-text-3"),),
            )
    lines = await log_lines(sidecar, "req-text-3")
    line = next(line for line in lines if "req-text-3" in line)
    assert " INFO sidecar.access [req-text-3]: " in line
    assert line.endswith("ms") and "ResolveModel InvalidArgument" in line
    assert not lines[0].startswith("{")


async def test_log_format_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"DUO_SIDECAR_LOG_FORMAT.*json, text"):
        load_config(None, {"DUO_SIDECAR_LOG_FORMAT": "xml"})
    assert load_config(None, {}).log.format == "json"
    assert load_config(None, {}).log.log_prompts is False


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((("x-correlation-id", "b"), ("x-request-id", "a")), "a"),  # x-request-id wins
        ((("x-correlation-id", "b"),), "b"),
        ((("x-request-id", "x" * 129),), None),  # too long: generated instead
        ((("x-request-id", "bad\x7fid"),), None),
        ((), None),
    ],
)
async def test_correlation_id_from_metadata(metadata: tuple[tuple[str, str], ...], expected: str | None) -> None:
    rpc = RpcLogContext(_Context(metadata))
    if expected is None:
        assert len(rpc.correlation_id) == 32 and rpc.correlation_id == rpc.correlation_id
    else:
        assert rpc.correlation_id == expected


async def test_formatters_carry_the_correlation_id_and_extra_fields() -> None:
    token = current_rpc.set(RpcLogContext(_Context((("x-request-id", "r-1"),))))
    try:
        record = logging.LogRecord("sidecar.test", logging.INFO, __file__, 1, "hello %s", ("there",), None)
        record.rpc = "svc/M"
        CorrelationFilter().filter(record)
    finally:
        current_rpc.reset(token)
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["msg"], entry["correlation_id"], entry["rpc"], entry["level"]) == (
        "hello there",
        "r-1",
        "svc/M",
        "info",
    )
    assert TextFormatter().format(record).endswith("INFO sidecar.test [r-1]: hello there")
