"""Complete at real token pacing: every delta goes out as soon as its chunk arrives (the sidecar's flush policy is
"never wait": chunks that arrived together go out together, nothing is held back to save messages), the idle bound
restarts with every event, and the overhead histogram counts the sidecar's own time, not the upstream's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import pytest
from aiohttp import web

from gitlab.duo.routing.v1 import admin_pb2, types_pb2
from tests.completion import complete_request
from tests.conftest import Sidecar, StartServer
from tests.helpers import error_details
from tests.scrape import scrape, value

pytestmark = pytest.mark.asyncio

PACING_SECONDS = 0.3
TOKENS = ["one ", "two ", "three ", "four ", "five"]
# What a delta may lag behind its chunk on a busy 2-core test machine; holding a delta back for even one pacing
# interval (or merging two chunks) fails the test.
LAG_SECONDS = 0.15


@dataclass
class PacedUpstream:
    """An OpenAI-compatible server on 127.0.0.1 writing one SSE chunk per token, PACING_SECONDS apart, and noting
    when it wrote each (this event loop's clock, the one the test reads arrivals with)."""

    stall_after: int | None = None  # stop sending (connection open) after this many tokens
    written: list[float] = field(default_factory=list)
    port: int = 0

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, token in enumerate(TOKENS):
            if i:
                await asyncio.sleep(PACING_SECONDS)
            if i == self.stall_after:
                await asyncio.sleep(3600)
            chunk = {"choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.written.append(loop.time())
        await response.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@asynccontextmanager
async def paced_upstream(stall_after: int | None = None) -> AsyncIterator[PacedUpstream]:
    upstream = PacedUpstream(stall_after)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.chat_completions)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.port = runner.addresses[0][1]
    try:
        yield upstream
    finally:
        await runner.cleanup()


async def route_to(sidecar: Sidecar, upstream: PacedUpstream) -> None:
    model = (
        await sidecar.admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(
                self_hosted_model=admin_pb2.SelfHostedModel(
                    name="paced model",
                    family=types_pb2.MODEL_FAMILY_MISTRAL,
                    platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                    endpoint=f"http://127.0.0.1:{upstream.port}/v1",
                    identifier="custom_openai/paced",
                )
            )
        )
    ).self_hosted_model
    await sidecar.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(
            feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id=model.id
        )
    )


# Idle bound 1 s, below the whole answer (1.2 s): it must restart with every event, not bound the stream.
TIMEOUTS = {"DUO_SIDECAR_UPSTREAM_IDLE_TIMEOUT_SECONDS": "1", "DUO_SIDECAR_UPSTREAM_FIRST_TOKEN_TIMEOUT_SECONDS": "2"}


async def test_each_delta_leaves_when_its_chunk_arrives(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed", env=TIMEOUTS)
    async with paced_upstream() as upstream:
        await route_to(sidecar, upstream)
        loop = asyncio.get_running_loop()
        arrivals: list[tuple[float, str]] = []
        events = []
        async for event in sidecar.routing.Complete(complete_request()):
            events.append(event)
            if event.HasField("delta"):
                arrivals.append((loop.time(), event.delta.text))
    assert events[0].HasField("route") and events[-1].HasField("finished")
    # One delta per chunk, in order: nothing merged, nothing waited for.
    assert [text for _, text in arrivals] == TOKENS
    lags = [arrived - written for (arrived, _), written in zip(arrivals, upstream.written, strict=True)]
    assert all(0 <= lag < LAG_SECONDS for lag in lags), lags


async def test_an_upstream_that_stalls_mid_answer_fails_at_the_idle_bound(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed", env=TIMEOUTS)
    async with paced_upstream(stall_after=2) as upstream:
        await route_to(sidecar, upstream)
        loop = asyncio.get_running_loop()
        texts = []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for event in sidecar.routing.Complete(complete_request()):
                if event.HasField("delta"):
                    texts.append(event.delta.text)
        failed_at = loop.time()
    details = error_details(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_TIMEOUT")
    assert "in the middle of its answer" in raised.value.details()
    assert texts == TOKENS[:2]
    # The bound counts from the last delta, 1 s (upstream.idle_timeout_seconds), not from the start.
    assert 0.9 <= failed_at - upstream.written[-1] < 1.6


async def test_overhead_is_the_sidecars_own_time(start_server: StartServer) -> None:
    """duo_routing_overhead_seconds leaves out the time spent waiting on the upstream: over a 1.2 s paced answer
    the sidecar's own share is a few milliseconds."""
    sidecar = await start_server("self_managed", env=TIMEOUTS)
    async with paced_upstream() as upstream:
        await route_to(sidecar, upstream)
        before = await scrape(sidecar)
        events = [event async for event in sidecar.routing.Complete(complete_request())]
        after = await scrape(sidecar)
    assert len(events) == len(TOKENS) + 2
    moved = value(after, "duo_routing_overhead_seconds_count", provider="self_hosted") - value(
        before, "duo_routing_overhead_seconds_count", provider="self_hosted"
    )
    assert moved == 1
    overhead = value(after, "duo_routing_overhead_seconds_sum", provider="self_hosted") - value(
        before, "duo_routing_overhead_seconds_sum", provider="self_hosted"
    )
    waited = PACING_SECONDS * (len(TOKENS) - 1)
    assert 0 < overhead < 0.1 * waited, overhead
