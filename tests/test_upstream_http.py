"""The upstream HTTP client (sidecar/upstream/http.py) against real servers on 127.0.0.1: TLS, forward proxies,
netrc logins, keep-alive reuse, stale pooled connections, hostile response heads, and bodies of every framing."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import uvloop

from gitlab.duo.routing.v1 import admin_pb2
from sidecar.endpoints import EndpointPolicy, GuardedResolver
from sidecar.upstream.http import ConnectionBroken, ConnectionPool, Environment
from tests import certs
from tests.completion import FAST, collect, complete_request, model_at, self_hosted
from tests.conftest import Sidecar, StartServer
from tests.forward_proxy import forward_proxy
from tests.helpers import error_details
from tests.upstreams import serve_upstream

PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


@pytest.fixture
def pki(tmp_path: Path) -> certs.TestPKI:
    return certs.make_pki(tmp_path)


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No proxy and no netrc from the machine running the tests."""
    for name in (*PROXY_VARIABLES, "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


def server_tls(pki: certs.TestPKI) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context


def answer_text(events: list[object]) -> str:
    return "".join(e.delta.text for e in events[1:-1])  # type: ignore[attr-defined]


async def failure_reason(sidecar: Sidecar) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(sidecar.routing.Complete(complete_request()))
    details = error_details(raised.value)
    return details.code, details.reason, details.message


# -- TLS, proxies, netrc ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_https_upstream_is_verified_against_the_trusted_cas(
    start_server: StartServer, pki: certs.TestPKI, no_proxies: pytest.MonkeyPatch
) -> None:
    async with serve_upstream(tls=server_tls(pki)) as upstream:
        untrusting = await start_server("self_managed", env=FAST)
        await self_hosted(untrusting, upstream)
        code, reason, message = await failure_reason(untrusting)
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
        assert "CERTIFICATE_VERIFY_FAILED" in message, message
        assert upstream.requests == []

        no_proxies.setenv("SSL_CERT_FILE", str(pki.ca))  # what an operator does for a private CA
        trusting = await start_server("self_managed", env=FAST)
        await self_hosted(trusting, upstream)
        assert answer_text(await collect(trusting.routing.Complete(complete_request()))) == "Hello, world!"


@pytest.mark.asyncio
async def test_an_http_upstream_through_a_proxy_gets_absolute_form_requests_with_proxy_credentials(
    start_server: StartServer, no_proxies: pytest.MonkeyPatch
) -> None:
    async with serve_upstream() as upstream, forward_proxy() as proxy:
        no_proxies.setenv("http_proxy", f"http://proxy%20user:s3cret@127.0.0.1:{proxy.port}")
        no_proxies.setenv("no_proxy", "127.0.0.1")  # the test's gRPC channel goes direct; the upstream is localhost
        sidecar = await start_server("self_managed", env=FAST)
        await model_at(sidecar, f"http://localhost:{upstream.port}/v1")
        for _ in range(2):
            assert answer_text(await collect(sidecar.routing.Complete(complete_request()))) == "Hello, world!"
    expected = "Basic " + base64.b64encode(b"proxy user:s3cret").decode()
    assert [(s.method, s.target, s.proxy_authorization) for s in proxy.seen] == [
        # One connection to the proxy, kept for the second request (which the proxy passes on as it is).
        ("POST", f"http://localhost:{upstream.port}/v1/chat/completions", expected)
    ]
    assert len(upstream.requests) == 2
    assert "Proxy-Authorization" not in upstream.requests[0].headers
    assert upstream.requests[0].headers["Authorization"].startswith("Bearer ")


@pytest.mark.asyncio
async def test_an_https_upstream_through_a_proxy_is_tunnelled_and_still_verified(
    start_server: StartServer, pki: certs.TestPKI, no_proxies: pytest.MonkeyPatch
) -> None:
    async with serve_upstream(tls=server_tls(pki)) as upstream, forward_proxy() as proxy:
        no_proxies.setenv("https_proxy", proxy.url)
        no_proxies.setenv("no_proxy", "127.0.0.1")  # the test's gRPC channel goes direct; the upstream is localhost
        no_proxies.setenv("SSL_CERT_FILE", str(pki.ca))
        sidecar = await start_server("self_managed", env=FAST)
        await model_at(sidecar, f"https://localhost:{upstream.port}/v1")
        assert answer_text(await collect(sidecar.routing.Complete(complete_request()))) == "Hello, world!"
        assert [(s.method, s.target, s.proxy_authorization) for s in proxy.seen] == [
            ("CONNECT", f"localhost:{upstream.port}", None)
        ]

        no_proxies.delenv("SSL_CERT_FILE")
        untrusting = await start_server("self_managed", env=FAST)
        await model_at(untrusting, f"https://localhost:{upstream.port}/v1")
        code, reason, message = await failure_reason(untrusting)
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
        assert "CERTIFICATE_VERIFY_FAILED" in message, message
    assert len(upstream.requests) == 1


@pytest.mark.asyncio
async def test_no_proxy_hosts_are_reached_directly(start_server: StartServer, no_proxies: pytest.MonkeyPatch) -> None:
    async with serve_upstream() as upstream, forward_proxy() as proxy:
        no_proxies.setenv("http_proxy", proxy.url)
        no_proxies.setenv("no_proxy", "localhost,127.0.0.1")
        sidecar = await start_server("self_managed", env=FAST)
        await self_hosted(sidecar, upstream)
        assert answer_text(await collect(sidecar.routing.Complete(complete_request()))) == "Hello, world!"
    assert proxy.seen == []
    assert len(upstream.requests) == 1


@pytest.mark.asyncio
async def test_a_netrc_login_is_sent_unless_the_request_has_its_own_credentials(
    start_server: StartServer, no_proxies: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login vllm password from-netrc\n")
    netrc.chmod(0o600)
    no_proxies.setenv("NETRC", str(netrc))
    async with serve_upstream() as upstream:
        sidecar = await start_server("self_managed", env=FAST)
        await self_hosted(sidecar, upstream)  # with an API token: its bearer header wins
        await collect(sidecar.routing.Complete(complete_request()))
        model = await model_at(sidecar, f"{upstream.url}/v1", "no token", api_token="")
        tested = await sidecar.admin.TestSelfHostedModel(admin_pb2.TestSelfHostedModelRequest(id=model.id))
        assert tested.success, tested.error_message
    assert upstream.requests[0].headers["Authorization"].startswith("Bearer ")
    assert upstream.requests[1].headers["Authorization"] == "Basic " + base64.b64encode(b"vllm:from-netrc").decode()


# -- connections -----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_completions_reuse_one_connection(start_server: StartServer, no_proxies: pytest.MonkeyPatch) -> None:
    async with serve_upstream() as upstream:
        sidecar = await start_server("self_managed", env=FAST)
        await self_hosted(sidecar, upstream)
        for _ in range(3):
            assert answer_text(await collect(sidecar.routing.Complete(complete_request()))) == "Hello, world!"
    assert len(upstream.peers) == 3 and len(set(upstream.peers)) == 1


SSE_ANSWER = (
    b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}\n\n'
    b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


def content_length(body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


def chunked(body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces = [piece + b"\n\n" for piece in body.split(b"\n\n") if piece]  # one chunk per event
    return head + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


@dataclass
class RawUpstream:
    """A bare HTTP/1.1 server: `answer(connection, request)` (both counted from 0) gives the bytes to write (a
    list: pieces written 50 ms apart), or None to close the connection without answering; `close_after` closes it
    after writing."""

    answer: Callable[[int, int], bytes | list[bytes] | None]
    close_after: bool = False
    connections: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # a connection ended (either side closed it)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = self.connections
        self.connections += 1
        index = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.requests.append((connection, head.split(b"\r\n", 1)[0]))
                answer = self.answer(connection, index)
                index += 1
                if answer is None:
                    break
                for i, piece in enumerate([answer] if isinstance(answer, bytes) else answer):
                    if i:
                        await asyncio.sleep(0.05)
                    writer.write(piece)
                    await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()
            self.ended.set()


@asynccontextmanager
async def raw_upstream(
    answer: Callable[[int, int], bytes | list[bytes] | None], close_after: bool = False
) -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream(answer, close_after)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()


@pytest.mark.asyncio
async def test_stopping_the_sidecar_closes_its_kept_connections(
    start_server: StartServer, no_proxies: pytest.MonkeyPatch
) -> None:
    async with raw_upstream(lambda connection, index: content_length(SSE_ANSWER)) as upstream:
        sidecar = await start_server("self_managed", env=FAST)
        await model_at(sidecar, f"http://127.0.0.1:{upstream.port}/v1")
        assert answer_text(await collect(sidecar.routing.Complete(complete_request()))) == "Hi"
        await asyncio.sleep(0.1)
        assert not upstream.ended.is_set()  # kept for the next request
        await sidecar.server.stop()
        await asyncio.wait_for(upstream.ended.wait(), timeout=5)


@pytest.mark.asyncio
async def test_a_pooled_connection_the_upstream_closed_is_replaced_without_failing_the_request(
    start_server: StartServer, no_proxies: pytest.MonkeyPatch
) -> None:
    """The upstream drops a kept-alive connection just as the next request arrives on it (its idle timeout raced
    the request): the request goes again on a new connection, even with retries off."""
    async with raw_upstream(lambda connection, index: None if index == 1 else content_length(SSE_ANSWER)) as upstream:
        sidecar = await start_server("self_managed", env={**FAST, "DUO_SIDECAR_UPSTREAM_RETRIES": "0"})
        await model_at(sidecar, f"http://127.0.0.1:{upstream.port}/v1")
        for _ in range(2):
            assert answer_text(await collect(sidecar.routing.Complete(complete_request()))) == "Hi"
    assert [connection for connection, _ in upstream.requests] == [0, 0, 1]


@pytest.mark.parametrize(
    ("framing", "close_after"),
    [(content_length, False), (chunked, False), (lambda body: content_length(body, b"Connection: close\r\n"), True)],
    ids=["content-length", "chunked", "connection-close"],
)
@pytest.mark.asyncio
async def test_every_body_framing_is_read_and_a_closed_connection_is_not_reused(
    start_server: StartServer,
    no_proxies: pytest.MonkeyPatch,
    framing: Callable[[bytes], bytes],
    close_after: bool,
) -> None:
    async with raw_upstream(lambda connection, index: framing(SSE_ANSWER), close_after) as upstream:
        sidecar = await start_server("self_managed", env=FAST)
        await model_at(sidecar, f"http://127.0.0.1:{upstream.port}/v1")
        for _ in range(2):
            assert answer_text(await collect(sidecar.routing.Complete(complete_request()))) == "Hi"
    assert upstream.connections == (2 if close_after else 1)


@pytest.mark.asyncio
async def test_a_connection_is_kept_when_the_body_ends_after_the_answer_did(
    start_server: StartServer, no_proxies: pytest.MonkeyPatch
) -> None:
    """The answer ends with its [DONE] event; the chunked body's last chunk comes a little later. The connection
    is still reused: the rest of the body is read before it is handed out again."""
    whole = chunked(SSE_ANSWER)
    pieces = [whole.removesuffix(b"0\r\n\r\n"), b"0\r\n\r\n"]
    async with raw_upstream(lambda connection, index: pieces) as upstream:
        sidecar = await start_server("self_managed", env=FAST)
        await model_at(sidecar, f"http://127.0.0.1:{upstream.port}/v1")
        for _ in range(2):
            assert answer_text(await collect(sidecar.routing.Complete(complete_request()))) == "Hi"
            await asyncio.sleep(0.1)  # the last chunk has come
    assert upstream.connections == 1


@pytest.mark.asyncio
async def test_a_body_delimited_by_the_connection_closing_is_read_to_its_end(
    start_server: StartServer, no_proxies: pytest.MonkeyPatch
) -> None:
    close_delimited = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + SSE_ANSWER
    async with raw_upstream(lambda connection, index: close_delimited, close_after=True) as upstream:
        sidecar = await start_server("self_managed", env=FAST)
        await model_at(sidecar, f"http://127.0.0.1:{upstream.port}/v1")
        assert answer_text(await collect(sidecar.routing.Complete(complete_request()))) == "Hi"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"a" * 65536 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 60) for i in range(1100)) + b"\r\n",
        b"this is not HTTP at all\r\n\r\n",
    ],
    ids=["one-long-header", "many-headers", "not-http"],
)
@pytest.mark.asyncio
async def test_a_hostile_response_head_fails_the_request(
    start_server: StartServer, no_proxies: pytest.MonkeyPatch, answer: bytes
) -> None:
    async with raw_upstream(lambda connection, index: answer) as upstream:
        sidecar = await start_server("self_managed", env={**FAST, "DUO_SIDECAR_UPSTREAM_RETRIES": "0"})
        await model_at(sidecar, f"http://127.0.0.1:{upstream.port}/v1")
        code, reason, message = await failure_reason(sidecar)
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert "response head is longer" in message or "malformed HTTP response" in message, message


# -- the pool on both event loops ------------------------------------------------------------------------------


async def _large_bodies_and_errors() -> None:
    """A body far larger than the read buffer arrives whole (reading pauses and resumes), and a connection cut
    in the middle of a body is an error for the reader, after the bytes that did arrive."""
    large = bytes(range(256)) * 4096 * 4  # 4 MiB
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10

    def answer(connection: int, index: int) -> bytes | None:
        return content_length(large) if connection == 0 else cut

    async with raw_upstream(answer, close_after=True) as upstream:
        url = f"http://127.0.0.1:{upstream.port}"
        pool = ConnectionPool(
            url, limit=2, connect_timeout=5, resolver=GuardedResolver(EndpointPolicy()), environment=Environment()
        )
        response = await pool.request("POST", f"{url}/v1/chat/completions", {}, json.dumps({}).encode())
        received = bytearray()
        while data := await response.readany():
            received += data
            await asyncio.sleep(0)  # a slow reader: the buffer fills up and the socket is paused
        assert received == large
        response.release()

        response = await pool.request("POST", f"{url}/v1/chat/completions", {}, b"{}")
        assert await response.readany() == b"x" * 10
        with pytest.raises(ConnectionBroken, match="before the response ended"):
            await response.readany()
        response.close()
        await pool.close()


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_large_bodies_and_cut_connections_on_both_event_loops(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_large_bodies_and_errors())


async def _through_a_tls_tunnel(pki: certs.TestPKI) -> None:
    async with serve_upstream(tls=server_tls(pki)) as upstream, forward_proxy() as proxy:
        client_tls = ssl.create_default_context(cafile=str(pki.ca))
        pool = ConnectionPool(
            upstream.url,
            limit=2,
            connect_timeout=5,
            resolver=GuardedResolver(EndpointPolicy()),
            environment=Environment(proxy_host="127.0.0.1", proxy_port=proxy.port),
            ssl_context=lambda: client_tls,
        )
        for _ in range(2):
            response = await pool.request(
                "POST", f"{upstream.url}/v1/chat/completions", {"Content-Type": "application/json"}, b"{}"
            )
            assert b"[DONE]" in await response.read(1 << 20)
            response.release()
        await pool.close()
    assert [s.method for s in proxy.seen] == ["CONNECT"]


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_tls_tunnel_through_a_proxy_on_both_event_loops(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], pki: certs.TestPKI
) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_through_a_tls_tunnel(pki))
