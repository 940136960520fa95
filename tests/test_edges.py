"""Operating promises at the edges (DESIGN section 8): overload is refused with RESOURCE_EXHAUSTED and counted, never
shed as CANCELLED; a request costs memory only up to its method's size limit; shutdown is visible in health before
new calls are refused."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from duo_common.tokens import sign_token
from gitlab.duo.routing.v1 import admin_pb2, routing_pb2, routing_pb2_grpc
from sidecar.server import REFUSAL_WINDOW_SECONDS
from tests.completion import complete_request, read_all, self_hosted
from tests.conftest import StartServer
from tests.helpers import BIN, error_details, free_port, wait_serving, write_config
from tests.scrape import scrape
from tests.upstreams import serve_upstream


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    raise AssertionError("no RetryInfo")


@pytest.mark.asyncio
async def test_completions_over_the_limit_are_refused_and_counted_while_routing_and_admin_go_on(
    start_server: StartServer,
) -> None:
    gate = asyncio.Event()
    async with serve_upstream(lambda u: setattr(u, "gate", gate)) as upstream:
        sidecar = await start_server(env={"DUO_SIDECAR_SERVER_MAX_CONCURRENT_COMPLETE_CALLS": "3"})
        await self_hosted(sidecar, upstream)
        admitted = [sidecar.routing.Complete(complete_request()) for _ in range(3)]
        for call in admitted:
            await call.read()  # the first delta: the stream is in flight, held by the upstream's gate
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sidecar.routing.Complete(complete_request()).read()
            details = error_details(refused.value)
            assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
            assert details.metadata == {"limit": "complete", "max_concurrent_calls": "3"}
            assert retry_delay(refused.value) == pytest.approx(0.1)
        # Routing and admin calls have their own limits: they are answered meanwhile.
        resolved = await sidecar.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"))
        assert resolved.model_identifier
        await sidecar.admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
        gate.set()
        for call in admitted:
            await read_all(call)
            assert await call.code() == grpc.StatusCode.OK
        metrics = await scrape(sidecar)
        assert metrics[("duo_routing_overload_refusals_total", frozenset({("limit", "complete")}))] == 5
        handled_refused = {
            dict(labels)["grpc_method"]: value
            for (name, labels), value in metrics.items()
            if name == "grpc_server_handled_total" and dict(labels)["grpc_code"] == "ResourceExhausted" and value
        }
        assert handled_refused == {"Complete": 5}


async def _flood(address: str, calls: int) -> collections.Counter[str]:
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(4)]
    stubs = [routing_pb2_grpc.RoutingServiceStub(c) for c in channels]
    codes: collections.Counter[str] = collections.Counter()

    async def one(i: int) -> None:
        request = routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat")
        try:
            await stubs[i % len(stubs)].ResolveModel(request, timeout=60)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] += 1

    await asyncio.gather(*(one(i) for i in range(calls)))
    for channel in channels:
        await channel.close()
    return codes


def test_a_flood_far_beyond_capacity_is_never_shed_as_cancelled(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, "self_managed", port)
    process = subprocess.Popen([str(BIN / "duo-sidecar"), "serve", "--config", str(config)], cwd=tmp_path)
    try:
        wait_serving(f"127.0.0.1:{port}", process=process)
        codes = asyncio.run(_flood(f"127.0.0.1:{port}", 5000))
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes  # gRPC's own backlog used to answer CANCELLED
        assert sum(codes.values()) == 5000
    finally:
        process.terminate()
        process.wait(timeout=20)


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_hostile_large_requests_keep_memory_bounded(tmp_path: Path) -> None:
    """100 ResolveModel requests just under the receive limit, 4 at a time, without and with a valid token."""
    secret = "client-secret-for-memory"
    (tmp_path / "client.secret").write_text(secret)
    (tmp_path / "admin.secret").write_text("admin-secret-for-memory")
    port = free_port()
    config = write_config(
        tmp_path,
        "self_managed",
        port,
        f'[auth]\nclient_secret_file = "{tmp_path / "client.secret"}"\n'
        f'admin_secret_file = "{tmp_path / "admin.secret"}"\n',
    )
    process = subprocess.Popen([str(BIN / "duo-sidecar"), "serve", "--config", str(config)], cwd=tmp_path)
    try:
        wait_serving(f"127.0.0.1:{port}", process=process)
        baseline = _rss_peak_kib(process.pid)
        # A valid message: one huge string field, so parsing it would cost its size again.
        huge = routing_pb2.ResolveModelRequest(user_id=1, feature="x" * (4 * 1024 * 1024 - 64))
        codes: collections.Counter[str] = collections.Counter()
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
        ) as channel:
            stub = routing_pb2_grpc.RoutingServiceStub(channel)

            def send(metadata: tuple[tuple[str, str], ...]) -> None:
                for _ in range(25):
                    try:
                        stub.ResolveModel(huge, timeout=30, metadata=metadata)
                        codes["OK"] += 1
                    except grpc.RpcError as error:
                        codes[error.code().name] += 1

            for metadata in ((), (("authorization", sign_token(secret)),)):
                threads = [threading.Thread(target=send, args=(metadata,)) for _ in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        peak = _rss_peak_kib(process.pid)
        assert codes == {"UNAUTHENTICATED": 100, "RESOURCE_EXHAUSTED": 100}
        # The operator guide's pod limit is 512Mi; the sidecar must stay well inside it.
        print(f"RSS peak {peak // 1024} MiB, baseline {baseline // 1024} MiB")
        assert peak < 256 * 1024, f"RSS peak {peak // 1024} MiB (baseline {baseline // 1024} MiB)"
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_shutdown_turns_health_not_serving_serves_through_the_drain_delay_then_refuses(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, "self_managed", port)
    env = {**os.environ, "DUO_SIDECAR_SERVER_DRAIN_DELAY_SECONDS": "1.0"}
    process = subprocess.Popen([str(BIN / "duo-sidecar"), "serve", "--config", str(config)], cwd=tmp_path, env=env)
    address = f"127.0.0.1:{port}"
    wait_serving(address, process=process)
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def call_continuously() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = routing_pb2_grpc.RoutingServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"), timeout=5)
                    outcomes.append((time.monotonic(), "OK"))
                except grpc.RpcError as error:
                    outcomes.append((time.monotonic(), error.code().name))
                    time.sleep(0.005)

    callers = [threading.Thread(target=call_continuously) for _ in range(3)]
    for caller in callers:
        caller.start()
    time.sleep(0.3)
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        while health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
            time.sleep(0.005)
        not_serving_after = time.monotonic() - sent
    assert process.wait(timeout=20) == 0
    stop.set()
    for caller in callers:
        caller.join()
    assert not_serving_after < 0.5
    during_drain = [code for at, code in outcomes if sent <= at < sent + 0.9]
    assert during_drain and set(during_drain) == {"OK"}, collections.Counter(during_drain)
    after = [code for at, code in outcomes if sent + 1.05 <= at < sent + 1.0 + REFUSAL_WINDOW_SECONDS]
    assert after and set(after) == {"UNAVAILABLE"}, collections.Counter(after)
    # gRPC's own stop, after the refusal window, still cancels a call that reaches it in that instant: not
    # before (a client that honours the refusals' RetryInfo is not calling then).
    stopped = sent + 1.0 + REFUSAL_WINDOW_SECONDS
    cancelled = [round(at - sent, 3) for at, code in outcomes if code == "CANCELLED" and at < stopped]
    assert not cancelled, cancelled
