"""Property-based: random and hostile values in every request message of both services, through a real
server. Every answer is a documented status code, never UNKNOWN or INTERNAL, and the server keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc
from tests.helpers import free_port, run_sidecar, write_config

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,  # Complete and TestSelfHostedModel: the upstream is down in this test
}
INTERESTING_STRINGS = [
    "", "duo_chat", "duo_chat_fix_code", "code_completions", "claude_sonnet_4_6", "claude_sonnet_4_5_20250929",
    "custom_openai/x", "azure/x", "bedrock/x", "http://127.0.0.1:9/v1", "http://169.254.169.254/", "*", "name",
    "endpoint", "api_token", "\x00", "💥" * 10, "a" * 5000, "../../etc/passwd", "' OR 1=1 --", "%s%n",
    "system", "user", "assistant",
]  # fmt: skip
INTERESTING_INTS = [0, 1, -1, 2, 10, 20, 2**31 - 1, -(2**31), 2**53, 2**63 - 1, -(2**63)]

_INT_RANGES = {
    pb_descriptor.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    pb_descriptor.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
}


def _scalar(field: Any) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return st.one_of(st.sampled_from([i for i in INTERESTING_INTS if low <= i <= high]), st.integers(low, high))
    if kind == pb_descriptor.FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.sampled_from([*numbers, -1, 42, 2**31 - 1])
    if kind == pb_descriptor.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (pb_descriptor.FieldDescriptor.TYPE_FLOAT, pb_descriptor.FieldDescriptor.TYPE_DOUBLE):
        return st.floats(width=32 if kind == pb_descriptor.FieldDescriptor.TYPE_FLOAT else 64)
    if kind == pb_descriptor.FieldDescriptor.TYPE_STRING:
        return st.one_of(
            st.sampled_from(INTERESTING_STRINGS), st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
        )
    raise AssertionError(f"no strategy for field {field.full_name}")


def message_strategy(descriptor: Any, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of any shape the contract allows, with hostile values in every field."""
    message_class: Any = {
        "google.protobuf.Timestamp": timestamp_pb2.Timestamp,
        "google.protobuf.FieldMask": field_mask_pb2.FieldMask,
    }.get(descriptor.full_name)
    if message_class is None:
        module = admin_pb2 if descriptor.file.name.endswith("admin.proto") else routing_pb2
        message_class = getattr(module, descriptor.name)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            if depth >= 2:
                continue
            element: st.SearchStrategy[Any] = message_strategy(field.message_type, depth + 1)
        else:
            element = _scalar(field)
        if field.is_repeated:
            fields[field.name] = st.lists(element, max_size=4)
        else:
            fields[field.name] = st.one_of(st.none(), element)
    if descriptor.full_name == "google.protobuf.FieldMask":
        fields = {"paths": st.lists(st.sampled_from(["name", "family", "endpoint", "api_token", "*", "id", "x"]))}
    if descriptor.full_name == "google.protobuf.Timestamp":
        fields = {"seconds": st.integers(0, 2**33), "nanos": st.integers(0, 999_999_999)}

    def build(**values: Any) -> Message:
        message: Message = message_class(**{k: v for k, v in values.items() if v is not None})
        return message

    return st.builds(build, **fields)


def _methods() -> Iterator[tuple[str, Any, Any]]:
    for module, service in ((routing_pb2, "RoutingService"), (admin_pb2, "AdminService")):
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            yield service, method, message_strategy(method.input_type)


METHODS = list(_methods())


@pytest.fixture(scope="module", params=["gitlab_com", "self_managed", "dedicated"])
def sidecar_address(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    extra = "[upstream]\nconnect_timeout_seconds = 0.5\nfirst_token_timeout_seconds = 1\nretries = 0\n"
    config = write_config(tmp_path_factory.mktemp(request.param), request.param, port, extra)
    text = config.read_text().replace("[instance]\n", '[instance]\nai_gateway_url = "http://127.0.0.1:9"\n')
    config.write_text(text)
    with run_sidecar(config, port) as sidecar:
        yield sidecar.address


def _call(channel: grpc.Channel, service: str, method: Any, request: Message) -> grpc.StatusCode:
    stub: Any = (
        routing_pb2_grpc.RoutingServiceStub if service == "RoutingService" else admin_pb2_grpc.AdminServiceStub
    )(channel)
    rpc = getattr(stub, method.name)
    try:
        if method.client_streaming:
            rpc(iter([request, request]), timeout=10)
        elif method.server_streaming:
            for _ in rpc(request, timeout=10):
                pass
        else:
            rpc(request, timeout=10)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("service", "method", "strategy"), METHODS, ids=[f"{s}.{m.name}" for s, m, _ in METHODS])
def test_hostile_requests_get_documented_statuses(
    sidecar_address: str, service: str, method: Any, strategy: Any
) -> None:
    with grpc.insecure_channel(sidecar_address) as channel:

        @settings(
            max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
        )
        @given(request=strategy)
        def check(request: Message) -> None:
            code = _call(channel, service, method, request)
            assert code in DOCUMENTED, f"{service}.{method.name} answered {code} to {str(request)[:500]}"

        check()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_undecodable_bytes_are_invalid_argument(sidecar_address: str) -> None:
    """A request that is not a valid protobuf message is bad input, not a server error."""
    garbage = b"\xff\xff\xff\xff\x0f garbage"
    with grpc.insecure_channel(sidecar_address) as channel:
        calls: list[Callable[[], object]] = [
            lambda: channel.unary_unary("/gitlab.duo.routing.v1.RoutingService/ResolveModel")(garbage, timeout=5),
            lambda: channel.unary_unary("/gitlab.duo.routing.v1.AdminService/GetSelfHostedModel")(garbage, timeout=5),
            lambda: list(channel.unary_stream("/gitlab.duo.routing.v1.RoutingService/Complete")(garbage, timeout=5)),
            lambda: channel.stream_unary("/gitlab.duo.routing.v1.AdminService/SyncSeatAssignments")(
                iter([garbage]), timeout=5
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
