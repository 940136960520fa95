"""The edge chain (sidecar.edge) on its own, around a service with one method of each kind of RPC: every kind passes
through auth, limits, metrics and error translation the same way, and its servicer only raises."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2

from duo_common.tokens import sign_token
from sidecar.admission import Admission
from sidecar.auth import Authenticator, Secrets
from sidecar.edge import Edge
from sidecar.errors import invalid_argument
from sidecar.grpc_errors import StorageFailures
from sidecar.metrics import MethodMetrics
from tests.conftest import StartServer
from tests.helpers import error_details
from tests.scrape import scrape, value

# Named like the admin service, so the admin limit and the admin secret apply to it.
SERVICE = "gitlab.duo.routing.v1.AdminService"
KINDS = {  # method name: (request streaming, response streaming, grpc_type)
    "Unary": (False, False, "unary"),
    "ServerStream": (False, True, "server_stream"),
    "ClientStream": (True, False, "client_stream"),
    "Bidi": (True, True, "bidi_stream"),
}
MAX_REQUEST_BYTES = 64
Request, Response = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
VALID = Request(service="x").SerializeToString()
REPLY = Response(status=Response.SERVING)
ADMIN_SECRET = "admin-secret-for-the-edge-chain"
NO_AUTH = Secrets(client=None, admin=None)


class Servicer:
    """One method of each kind, none of them decorated: each records its requests, answers once, then raises
    `error` if one is set (after its one response, for the streaming ones)."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.error: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def _then(self) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error

    async def Unary(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.requests.append(request)
        await self._then()
        return REPLY

    async def ServerStream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.requests.append(request)
        yield REPLY
        await self._then()

    async def ClientStream(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        async for request in requests:
            self.requests.append(request)
        await self._then()
        return REPLY

    async def Bidi(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            self.requests.append(request)
            yield REPLY
        await self._then()


_CONSTRUCTORS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_to_server(servicer: Servicer, server: Any) -> None:
    """What generated add_*Servicer_to_server code does."""
    handlers = {
        name: _CONSTRUCTORS[(streaming_request, streaming_response)](
            getattr(servicer, name),
            request_deserializer=Request.FromString,
            response_serializer=Response.SerializeToString,
        )
        for name, (streaming_request, streaming_response, _) in KINDS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class Chain:
    def __init__(self, secrets: Secrets) -> None:
        self.servicer = Servicer()
        self.metrics = {f"/{SERVICE}/{name}": MethodMetrics(SERVICE, name, kind) for name, (*_, kind) in KINDS.items()}
        self.overloaded: list[str] = []
        self.auth_failures: list[tuple[str, bool]] = []
        self.storage_failures: list[tuple[str, Exception]] = []
        self.admission = Admission({"admin": 1}, self.overloaded.append)
        failures = StorageFailures()
        failures.subscribe(lambda rpc, error: self.storage_failures.append((rpc, error)))
        self.edge = Edge(
            authenticator=Authenticator(
                secrets, transitioning=False, open_reflection=False, on_failure=lambda *f: self.auth_failures.append(f)
            ),
            admission=self.admission,
            methods=self.metrics,
            storage_failures=failures,
            max_request_bytes=lambda method: MAX_REQUEST_BYTES,
        )
        self.server = grpc.aio.server()
        self.edge.register(self.server, [(add_to_server, self.servicer)])
        self.channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        await self.server.stop(None)

    def count(self, name: str, code: grpc.StatusCode) -> int:
        method = self.metrics[f"/{SERVICE}/{name}"]
        return method.ok if code is grpc.StatusCode.OK else method.errors.get(code, 0)

    async def call(
        self, name: str, payload: bytes | None = VALID, token: str | None = None, path: str = ""
    ) -> tuple[grpc.StatusCode, str, int]:
        """(code, ErrorInfo reason, responses received) of one call sending `payload` as its one request (None: a
        request stream sends none; a call refused before reading may otherwise end INTERNAL, grpc/grpc#36066)."""
        assert self.channel is not None
        streaming_request, streaming_response, _ = KINDS.get(name, (False, False, ""))
        metadata = (("authorization", token),) if token else ()
        path = path or f"/{SERVICE}/{name}"
        responses = 0
        try:
            if streaming_request:
                make = self.channel.stream_stream if streaming_response else self.channel.stream_unary
                call: Any = make(path)(iter([] if payload is None else [payload]), metadata=metadata, timeout=10)
            else:
                make = self.channel.unary_stream if streaming_response else self.channel.unary_unary
                call = make(path)(payload or b"", metadata=metadata, timeout=10)
            if streaming_response:
                async for _ in call:
                    responses += 1
            else:
                await call
                responses = 1
        except grpc.aio.AioRpcError as error:
            reason = error_details(error).reason if error.code() is not grpc.StatusCode.UNIMPLEMENTED else ""
            return error.code(), reason, responses
        return grpc.StatusCode.OK, "", responses


@pytest_asyncio.fixture
async def start_chain() -> AsyncIterator[Callable[..., Any]]:
    chains: list[Chain] = []

    async def start(secrets: Secrets = NO_AUTH) -> Chain:
        chain = Chain(secrets)
        chains.append(chain)
        await chain.start()
        return chain

    yield start
    for chain in chains:
        await chain.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(KINDS))
async def test_every_kind_answers_a_duo_error_with_its_status_and_counts_it(
    start_chain: Callable[..., Any], name: str
) -> None:
    chain: Chain = await start_chain()
    assert await chain.call(name) == (grpc.StatusCode.OK, "", 1)
    chain.servicer.error = invalid_argument("service", "service must be something else")
    code, reason, responses = await chain.call(name)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert responses == (1 if KINDS[name][1] else 0)  # a stream keeps what it sent before the error
    assert chain.count(name, grpc.StatusCode.OK) == 1
    assert chain.count(name, grpc.StatusCode.INVALID_ARGUMENT) == 1
    method = chain.metrics[f"/{SERVICE}/{name}"]
    assert (method.started, method.received, method.sent) == (2, 2, 1 + responses)
    assert chain.admission.limits["admin"].in_flight == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(KINDS))
async def test_every_kind_answers_a_storage_failure_unavailable_and_tells_the_listeners(
    start_chain: Callable[..., Any], name: str
) -> None:
    chain: Chain = await start_chain()
    failure = sqlite3.OperationalError("database is locked")
    chain.servicer.error = failure
    code, reason, _ = await chain.call(name)
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
    assert chain.storage_failures == [(name, failure)]
    assert chain.count(name, grpc.StatusCode.UNAVAILABLE) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(KINDS))
async def test_malformed_and_oversized_requests_are_refused_before_the_servicer_sees_them(
    start_chain: Callable[..., Any], name: str
) -> None:
    chain: Chain = await start_chain()
    code, reason, _ = await chain.call(name, b"\xff\xff\xff")
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    too_large = Request(service="x" * MAX_REQUEST_BYTES).SerializeToString()
    code, reason, _ = await chain.call(name, too_large)
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE")
    assert chain.servicer.requests == []
    assert chain.count(name, grpc.StatusCode.INVALID_ARGUMENT) == 1
    assert chain.count(name, grpc.StatusCode.RESOURCE_EXHAUSTED) == 1


@pytest.mark.asyncio
async def test_calls_past_the_limit_are_refused_counted_and_not_parsed_then_refused_at_shutdown(
    start_chain: Callable[..., Any],
) -> None:
    chain: Chain = await start_chain()
    chain.servicer.gate = asyncio.Event()
    held = asyncio.create_task(chain.call("Unary"))
    await chain.servicer.entered.wait()
    # Malformed too: refused for the limit before it is parsed.
    assert (await chain.call("Unary", b"\xff"))[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
    assert (await chain.call("ServerStream"))[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
    assert chain.overloaded == ["admin", "admin"]
    assert chain.count("Unary", grpc.StatusCode.RESOURCE_EXHAUSTED) == 1
    assert chain.count("Unary", grpc.StatusCode.INVALID_ARGUMENT) == 0
    chain.servicer.gate.set()
    assert await held == (grpc.StatusCode.OK, "", 1)
    assert chain.admission.limits["admin"].in_flight == 0
    chain.admission.refuse_new_calls()
    assert (await chain.call("Unary"))[:2] == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    assert chain.count("Unary", grpc.StatusCode.UNAVAILABLE) == 1
    assert chain.overloaded == ["admin", "admin"]  # a refusal for shutdown is not overload


@pytest.mark.asyncio
async def test_auth_refuses_first_and_nothing_else_sees_the_call(start_chain: Callable[..., Any]) -> None:
    chain: Chain = await start_chain(Secrets(client=None, admin=ADMIN_SECRET.encode()))
    for name, (streaming_request, *_) in KINDS.items():
        code, reason, _ = await chain.call(name, None if streaming_request else b"\xff" * (MAX_REQUEST_BYTES + 1))
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "AUTH_TOKEN_MISSING")
        method = chain.metrics[f"/{SERVICE}/{name}"]
        assert (method.started, method.received) == (0, 0)  # not in grpc_server_*, not parsed
    assert chain.servicer.requests == []
    assert chain.auth_failures == [("AUTH_TOKEN_MISSING", True)] * len(KINDS)
    assert await chain.call("Unary", token=sign_token(ADMIN_SECRET)) == (grpc.StatusCode.OK, "", 1)
    # A path with no method: the same refusal without a token, UNIMPLEMENTED with one.
    unknown = f"/{SERVICE}/NoSuchMethod"
    assert (await chain.call("Other", path=unknown))[:2] == (grpc.StatusCode.UNAUTHENTICATED, "AUTH_TOKEN_MISSING")
    assert (await chain.call("Other", path=unknown, token=sign_token(ADMIN_SECRET)))[0] is grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.asyncio
async def test_a_service_must_have_grpc_server_series_before_it_is_chained() -> None:
    edge = Edge(
        authenticator=Authenticator(NO_AUTH, transitioning=False, open_reflection=False),
        admission=Admission({"admin": 1}, lambda limit: None),
        methods={},
        storage_failures=StorageFailures(),
        max_request_bytes=lambda method: MAX_REQUEST_BYTES,
    )
    with pytest.raises(RuntimeError, match="no grpc_server_"):
        edge.register(grpc.aio.server(), [(add_to_server, Servicer())])


@pytest.mark.asyncio
async def test_a_real_sidecar_answers_malformed_requests_invalid_argument_and_counts_them(
    start_server: StartServer,
) -> None:
    sidecar = await start_server("gitlab_com")
    resolve = sidecar.channel.unary_unary("/gitlab.duo.routing.v1.RoutingService/ResolveModel")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await resolve(b"\xff\xff\xff")
    details = error_details(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    sync = sidecar.channel.stream_unary("/gitlab.duo.routing.v1.AdminService/SyncSeatAssignments")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sync(iter([b"\x0a\x05\xff"]))  # field 1 (assignments) cut short
    assert error_details(raised.value).reason == "MALFORMED_REQUEST"
    samples = await scrape(sidecar)
    for service, method, kind in (
        ("RoutingService", "ResolveModel", "unary"),
        ("AdminService", "SyncSeatAssignments", "client_stream"),
    ):
        labels = {"grpc_service": f"gitlab.duo.routing.v1.{service}", "grpc_method": method, "grpc_type": kind}
        assert value(samples, "grpc_server_handled_total", grpc_code="InvalidArgument", **labels) == 1, method
