"""Authentication and roles on every service, over plain TCP, TLS and mutual TLS."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from duo_common.tokens import ALLOWED_SKEW_SECONDS, sign_token
from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc
from sidecar.auth import Authenticator, Role, Secrets
from tests.certs import make_pki
from tests.conftest import Sidecar, StartServer
from tests.helpers import error_details
from tests.scrape import scrape

pytestmark = pytest.mark.asyncio

CLIENT_SECRET = "client-secret-0123456789abcdef"
ADMIN_SECRET = "admin-secret-0123456789abcdef00"

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED

TOKENS: dict[str, Callable[[], str | None]] = {
    "none": lambda: None,
    "garbage": lambda: "Bearer not-a-token",
    "wrong scheme": lambda: sign_token(CLIENT_SECRET).replace("Bearer", "Basic"),
    "wrong secret": lambda: sign_token("some-other-secret-0123456789"),
    "expired": lambda: sign_token(ADMIN_SECRET, int(time.time()) - 120),
    "future": lambda: sign_token(ADMIN_SECRET, int(time.time()) + 120),
    "non-hex hmac": lambda: f"Bearer v2.{'g' * 64}.{int(time.time())}",
    "client": lambda: sign_token(CLIENT_SECRET),
    "admin": lambda: sign_token(ADMIN_SECRET),
    "admin, upper-case hex": lambda: sign_token(ADMIN_SECRET).upper().replace("BEARER V2", "Bearer v2"),
}
# (token, expected on RoutingService, expected on AdminService)
OUTCOMES = [
    ("none", UNAUTHENTICATED, UNAUTHENTICATED),
    ("garbage", UNAUTHENTICATED, UNAUTHENTICATED),
    ("wrong scheme", UNAUTHENTICATED, UNAUTHENTICATED),
    ("wrong secret", DENIED, DENIED),
    ("expired", DENIED, DENIED),
    ("future", DENIED, DENIED),
    ("non-hex hmac", UNAUTHENTICATED, UNAUTHENTICATED),
    ("client", OK, DENIED),
    ("admin", OK, OK),
    ("admin, upper-case hex", OK, OK),  # hex is hex, as in Gitaly
]
REASONS = {
    "none": "AUTH_TOKEN_MISSING",
    "garbage": "AUTH_TOKEN_MALFORMED",
    "wrong scheme": "AUTH_TOKEN_MALFORMED",
    "wrong secret": "AUTH_TOKEN_INVALID",
    "expired": "AUTH_TOKEN_EXPIRED",
    "future": "AUTH_TOKEN_EXPIRED",
    "non-hex hmac": "AUTH_TOKEN_MALFORMED",
    "client": "AUTH_WRONG_ROLE",
}
AUTH_ENV = {"DUO_SIDECAR_AUTH_CLIENT_SECRET": CLIENT_SECRET, "DUO_SIDECAR_AUTH_ADMIN_SECRET": ADMIN_SECRET}


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        reason = error_details(error).reason if error.code() in (UNAUTHENTICATED, DENIED) else ""
        return error.code(), reason
    return OK, ""


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", token),) if token else ()


async def _check_outcomes(channel: grpc.aio.Channel) -> None:
    routing = routing_pb2_grpc.RoutingServiceStub(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    for name, on_routing, on_admin in OUTCOMES:
        token = TOKENS[name]()
        code, reason = await _code(
            routing.ResolveModel(
                routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"), metadata=_metadata(token)
            )
        )
        assert code == on_routing, f"{name} token on RoutingService"
        if code != OK:
            assert reason == REASONS[name]
        code, reason = await _code(admin.GetServerInfo(admin_pb2.GetServerInfoRequest(), metadata=_metadata(token)))
        assert code == on_admin, f"{name} token on AdminService"
        if code != OK:
            assert reason == REASONS[name]
    # Streaming RPCs are guarded too.
    stream = routing.Complete(routing_pb2.CompleteRequest(user_id=1, feature="duo_chat"), metadata=_metadata(None))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stream:
            pass
    assert raised.value.code() == UNAUTHENTICATED
    # Health needs no token, so orchestrators can probe it.
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("transport", ["tcp", "tls", "mtls"])
async def test_every_auth_outcome_on_both_services(start_server: StartServer, tmp_path: Path, transport: str) -> None:
    pki = make_pki(tmp_path)
    env = dict(AUTH_ENV)
    if transport != "tcp":
        env |= {
            "DUO_SIDECAR_SERVER_TLS_CERT_FILE": str(pki.server_cert),
            "DUO_SIDECAR_SERVER_TLS_KEY_FILE": str(pki.server_key),
        }
    if transport == "mtls":
        env["DUO_SIDECAR_SERVER_TLS_CLIENT_CA_FILE"] = str(pki.ca)
    sidecar = await start_server("self_managed", env=env)
    address = f"127.0.0.1:{sidecar.server.port}"
    if transport == "tcp":
        channel = grpc.aio.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(),
            private_key=pki.client_key.read_bytes() if transport == "mtls" else None,
            certificate_chain=pki.client_cert.read_bytes() if transport == "mtls" else None,
        )
        channel = grpc.aio.secure_channel(address, credentials)
    async with channel:
        await _check_outcomes(channel)

    if transport == "mtls":
        # Without a client certificate the TLS handshake itself fails.
        anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        async with grpc.aio.secure_channel(address, anonymous) as channel:
            code, _ = await _code(
                routing_pb2_grpc.RoutingServiceStub(channel).ResolveModel(
                    routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"),
                    metadata=_metadata(TOKENS["admin"]()),
                    timeout=5,
                )
            )
        assert code == grpc.StatusCode.UNAVAILABLE
    if transport == "tls":
        # A plaintext client cannot talk to a TLS port.
        async with grpc.aio.insecure_channel(address) as channel:
            code, _ = await _code(
                admin_pb2_grpc.AdminServiceStub(channel).GetServerInfo(admin_pb2.GetServerInfoRequest(), timeout=5)
            )
        assert code == grpc.StatusCode.UNAVAILABLE


async def test_reflection_follows_the_admin_rule(start_server: StartServer) -> None:
    sidecar = await start_server("dedicated", env=AUTH_ENV)

    async def list_services(token: str | None) -> grpc.StatusCode:
        stub = reflection_pb2_grpc.ServerReflectionStub(sidecar.channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=_metadata(token)
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as error:
            return error.code()
        return OK

    assert await list_services(None) == UNAUTHENTICATED
    assert await list_services(TOKENS["client"]()) == DENIED
    assert await list_services(TOKENS["admin"]()) == OK
    opened = await start_server("dedicated", env={**AUTH_ENV, "DUO_SIDECAR_AUTH_REFLECTION": "open"})
    sidecar = opened
    assert await list_services(None) == OK


async def auth_failures(sidecar: Sidecar) -> dict[tuple[str, str], float]:
    """The non-zero series of duo_routing_auth_failures_total by (reason, enforced), scraped from /metrics."""
    return {
        (dict(labels)["reason"], dict(labels)["enforced"]): count
        for (name, labels), count in (await scrape(sidecar)).items()
        if name == "duo_routing_auth_failures_total" and count
    }


async def test_transitioning_mode_lets_calls_through_and_counts_them(start_server: StartServer) -> None:
    sidecar = await start_server("dedicated", env={**AUTH_ENV, "DUO_SIDECAR_AUTH_TRANSITIONING": "true"})
    routing = routing_pb2_grpc.RoutingServiceStub(sidecar.channel)
    answer = await routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"))
    assert answer.model_identifier
    await routing.ResolveModel(
        routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"), metadata=_metadata(TOKENS["expired"]())
    )
    await routing.ResolveModel(
        routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"), metadata=_metadata(TOKENS["client"]())
    )
    assert await auth_failures(sidecar) == {("AUTH_TOKEN_MISSING", "false"): 1, ("AUTH_TOKEN_EXPIRED", "false"): 1}


async def test_duo_admin_signs_from_a_secret_file(start_server: StartServer, tmp_path: Path) -> None:
    import asyncio
    import os

    from tests.helpers import duo_admin_path

    sidecar = await start_server("dedicated", env=AUTH_ENV)
    secret_file = tmp_path / "admin.secret"
    secret_file.write_text(ADMIN_SECRET + "\n")
    base = [duo_admin_path(), "--address", f"127.0.0.1:{sidecar.server.port}"]

    async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            *base,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode()

    code, out = await run("server-info")
    assert code == 1 and "UNAUTHENTICATED" in out and "reason: AUTH_TOKEN_MISSING" in out
    code, out = await run("--secret-file", str(secret_file), "server-info")
    assert code == 0 and re.search(r"deployment_type:\s+dedicated", out)
    code, out = await run("server-info", env={"DUO_ADMIN_SECRET_FILE": str(secret_file)})
    assert code == 0
    code, out = await run("server-info", env={"DUO_ADMIN_SECRET": CLIENT_SECRET})
    assert code == 1 and "PERMISSION_DENIED" in out and "AUTH_WRONG_ROLE" in out


UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
# Paths this server does not serve: a method of each service, another service, a look-alike package.
UNKNOWN_ADMIN_PATHS = [
    "/gitlab.duo.routing.v1.AdminService/DeleteEverything",
    "/gitlab.duo.routing.v2.AdminService/GetServerInfo",
    "/no.such.Service/Method",
    "/grpc.reflection.v1alpha.ServerReflection/Nope",
    "/",
    "/x",
]
UNKNOWN_ROUTING_PATH = "/gitlab.duo.routing.v1.RoutingService/ResolveEverything"


async def _raw_call(channel: grpc.aio.Channel, path: str, shape: str, token: str | None) -> tuple[Any, str, str]:
    """Calls `path` as a method of the given shape (an empty message, if it takes one): (code, message, reason).

    The streaming-request shapes send no message: a refused call ends before the server reads one, and a
    grpc.aio client still writing then may report INTERNAL instead of the server's status (grpc/grpc#36066).
    """
    metadata = _metadata(token)
    try:
        if shape == "unary":
            await channel.unary_unary(path)(b"", metadata=metadata, timeout=30)
        elif shape == "server stream":
            async for _ in channel.unary_stream(path)(b"", metadata=metadata, timeout=30):
                pass
        else:
            streaming = channel.stream_unary if shape == "client stream" else channel.stream_stream
            call = streaming(path)(metadata=metadata, timeout=30)
            if await call.code() != OK:
                raise grpc.aio.AioRpcError(
                    await call.code(),
                    await call.initial_metadata(),
                    await call.trailing_metadata(),
                    await call.details(),
                    await call.debug_error_string(),
                )
    except grpc.aio.AioRpcError as error:
        reason = error_details(error).reason if error.code() in (UNAUTHENTICATED, DENIED) else ""
        return error.code(), error.details() or "", reason
    return OK, "", ""


SHAPES = ["unary", "server stream", "client stream", "bidi stream"]


async def test_unknown_methods_reveal_nothing_without_a_token(start_server: StartServer) -> None:
    """Probing paths without a valid token gets exactly the refusal a real method gets; only a caller with a
    secret for that path learns UNIMPLEMENTED. Health stays open."""
    sidecar = await start_server("dedicated", env=AUTH_ENV)
    channel = sidecar.channel
    real = await _raw_call(channel, "/gitlab.duo.routing.v1.AdminService/GetServerInfo", "unary", None)
    assert real[0] == UNAUTHENTICATED and real[2] == "AUTH_TOKEN_MISSING"
    for path in [*UNKNOWN_ADMIN_PATHS, UNKNOWN_ROUTING_PATH]:
        for shape in SHAPES:
            assert await _raw_call(channel, path, shape, None) == real, (path, shape)
            garbage = await _raw_call(channel, path, shape, TOKENS["garbage"]())
            assert garbage[::2] == (UNAUTHENTICATED, "AUTH_TOKEN_MALFORMED"), (path, shape)
            for name in ("wrong secret", "expired"):
                assert (await _raw_call(channel, path, shape, TOKENS[name]()))[0] == DENIED, (path, shape, name)
    for path in UNKNOWN_ADMIN_PATHS:
        # The client secret may not call admin methods, real or not.
        client = await _raw_call(channel, path, "unary", TOKENS["client"]())
        assert client[::2] == (DENIED, "AUTH_WRONG_ROLE"), path
        assert (await _raw_call(channel, path, "unary", TOKENS["admin"]()))[0] == UNIMPLEMENTED, path
    for token in ("client", "admin"):
        assert (await _raw_call(channel, UNKNOWN_ROUTING_PATH, "unary", TOKENS[token]()))[0] == UNIMPLEMENTED
    # Refusals are counted like any other (by reason, not by path: a caller cannot add label values).
    missing = (await auth_failures(sidecar))[("AUTH_TOKEN_MISSING", "true")]
    assert missing >= len(UNKNOWN_ADMIN_PATHS) * len(SHAPES)
    # Health needs no token; its own namespace is public knowledge (grpc.health.v1).
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await _raw_call(channel, "/grpc.health.v1.Health/Nope", "unary", None))[0] == UNIMPLEMENTED


async def test_unknown_methods_without_enforced_authentication_are_unimplemented(start_server: StartServer) -> None:
    """In transitioning mode calls with bad tokens go through, so an unknown method is UNIMPLEMENTED for anyone."""
    sidecar = await start_server("dedicated", env={**AUTH_ENV, "DUO_SIDECAR_AUTH_TRANSITIONING": "true"})
    for shape in SHAPES:
        assert (await _raw_call(sidecar.channel, UNKNOWN_ADMIN_PATHS[0], shape, None))[0] == UNIMPLEMENTED


async def test_a_verified_token_is_remembered_but_its_window_and_role_still_apply() -> None:
    """The verification cache never lets through what verifying again would refuse."""
    now = [1_000_000.0]
    failures: list[str] = []
    auth = Authenticator(
        Secrets(client=b"c" * 32, admin=b"a" * 32),
        transitioning=False,
        open_reflection=False,
        on_failure=lambda reason, enforced: failures.append(reason),
        clock=lambda: now[0],
    )
    client_token = sign_token(b"c" * 32, timestamp=int(now[0]))
    metadata = (("authorization", client_token),)
    assert auth.refusal(Role.CLIENT, "/m", metadata) is None
    assert auth.refusal(Role.CLIENT, "/m", metadata) is None  # from the cache
    wrong_role = auth.refusal(Role.ADMIN, "/m", metadata)
    assert wrong_role is not None and wrong_role.reason == "AUTH_WRONG_ROLE"
    forged = "Bearer v2." + "0" * 64 + f".{int(now[0])}"
    assert (auth.refusal(Role.CLIENT, "/m", (("authorization", forged),)) or wrong_role).reason == "AUTH_TOKEN_INVALID"
    now[0] += ALLOWED_SKEW_SECONDS + 1
    expired = auth.refusal(Role.CLIENT, "/m", metadata)
    assert expired is not None and expired.reason == "AUTH_TOKEN_EXPIRED"
    assert failures == ["AUTH_WRONG_ROLE", "AUTH_TOKEN_INVALID", "AUTH_TOKEN_EXPIRED"]
