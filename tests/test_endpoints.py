"""Endpoint safety for self-hosted models: no link-local or cloud metadata addresses, optional allow-list."""

from __future__ import annotations

import socket
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from gitlab.duo.routing.v1 import admin_pb2, types_pb2
from sidecar.endpoints import EndpointPolicy, GuardedResolver, parse_cidrs
from sidecar.errors import DuoError
from tests.conftest import Sidecar, StartServer
from tests.helpers import error_details

pytestmark = pytest.mark.asyncio


def _model(endpoint: str) -> admin_pb2.SelfHostedModel:
    return admin_pb2.SelfHostedModel(
        name=f"model at {endpoint}",
        family=types_pb2.MODEL_FAMILY_MISTRAL,
        platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
        endpoint=endpoint,
        identifier="custom_openai/m",
    )


async def _create(sidecar: Sidecar, endpoint: str) -> tuple[grpc.StatusCode, str, list[str], str]:
    try:
        reply = await sidecar.admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(self_hosted_model=_model(endpoint))
        )
    except grpc.aio.AioRpcError as error:
        details = error_details(error)
        return details.code, details.reason, details.field_violations, ""
    return grpc.StatusCode.OK, "", [], str(reply.self_hosted_model.id)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254/latest/v1",
        "http://169.254.0.1:8000/v1",
        "http://[fd00:ec2::254]/v1",
        "http://[fe80::1]:8000/v1",
        "http://[::ffff:169.254.169.254]/v1",
    ],
)
async def test_metadata_and_link_local_endpoints_are_refused(start_server: StartServer, endpoint: str) -> None:
    sidecar = await start_server("self_managed")
    code, reason, fields, _ = await _create(sidecar, endpoint)
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ENDPOINT_NOT_ALLOWED",
        ["self_hosted_model.endpoint"],
    )


async def test_private_ranges_are_allowed_by_default_and_the_allow_list_narrows(start_server: StartServer) -> None:
    sidecar = await start_server("self_managed")
    for endpoint in ("http://10.1.2.3:8000/v1", "https://192.168.7.9/v1", "http://127.0.0.1:8000/v1"):
        code, *_ = await _create(sidecar, endpoint)
        assert code == grpc.StatusCode.OK, endpoint

    narrowed = await start_server("self_managed", env={"DUO_SIDECAR_UPSTREAM_ALLOWED_CIDRS": "10.0.0.0/8, fd12::/16"})
    code, reason, *_ = await _create(narrowed, "http://127.0.0.1:8000/v1")
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ENDPOINT_NOT_ALLOWED")
    code, _, _, model_id = await _create(narrowed, "http://10.9.8.7/v1")
    assert code == grpc.StatusCode.OK
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await narrowed.admin.UpdateSelfHostedModel(
            admin_pb2.UpdateSelfHostedModelRequest(
                self_hosted_model=admin_pb2.SelfHostedModel(id=model_id, endpoint="http://169.254.169.254/v1"),
                update_mask=field_mask_pb2.FieldMask(paths=["endpoint"]),
            )
        )
    assert error_details(raised.value).reason == "ENDPOINT_NOT_ALLOWED"


async def test_unresolvable_host_is_accepted_and_checked_on_connection(start_server: StartServer) -> None:
    """DNS may not know the host yet; nothing can be refused, and the connection-time check still applies."""
    sidecar = await start_server("self_managed")
    code, _, _, model_id = await _create(sidecar, "http://no-such-host.invalid/v1")
    assert code == grpc.StatusCode.OK
    tested = await sidecar.admin.TestSelfHostedModel(admin_pb2.TestSelfHostedModelRequest(id=model_id))
    assert not tested.success and "cannot reach" in tested.error_message


async def test_names_resolving_to_metadata_addresses_are_refused() -> None:
    async def fake_getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    policy = EndpointPolicy(getaddrinfo=fake_getaddrinfo)
    with pytest.raises(DuoError) as raised:
        await policy.check("http://innocent.example/v1", "endpoint")
    assert raised.value.reason == "ENDPOINT_NOT_ALLOWED"


async def test_connection_time_resolution_drops_refused_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS may change after registration: the resolver used for every connection filters again."""
    resolver = GuardedResolver(EndpointPolicy(parse_cidrs("10.0.0.0/8")))

    async def inner(host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        return [
            {"hostname": host, "host": "169.254.169.254", "port": port, "family": family, "proto": 0, "flags": 0},
            {"hostname": host, "host": "10.0.0.5", "port": port, "family": family, "proto": 0, "flags": 0},
        ]

    monkeypatch.setattr(resolver._inner, "resolve", inner)
    assert [r["host"] for r in await resolver.resolve("vllm.internal", 80)] == ["10.0.0.5"]

    async def only_metadata(host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        return (await inner(host, port, family))[:1]

    monkeypatch.setattr(resolver._inner, "resolve", only_metadata)
    with pytest.raises(OSError, match="may not contact"):
        await resolver.resolve("vllm.internal", 80)
    await resolver.close()


async def test_allow_list_parsing() -> None:
    assert [str(n) for n in parse_cidrs("10.0.0.0/8,  192.168.1.7")] == ["10.0.0.0/8", "192.168.1.7/32"]
    with pytest.raises(ValueError, match="not a CIDR"):
        parse_cidrs("10.0.0.0/8, intranet")
