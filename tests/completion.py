"""Helpers for Complete tests: a request, a self-hosted model on a mock upstream, and stream readers."""

from __future__ import annotations

from typing import Any

import grpc

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2, types_pb2
from tests.conftest import Sidecar
from tests.upstreams import MockUpstream

TOKEN = "sk-live-0123456789abcdef"
MESSAGES = [
    routing_pb2.ChatMessage(role="system", content="You are a helpful assistant."),
    routing_pb2.ChatMessage(role="user", content="Say hello"),
]


def complete_request(feature: str = "duo_chat", user: int = 1, namespace: int = 0, **kwargs: Any) -> Any:
    return routing_pb2.CompleteRequest(
        user_id=user, feature=feature, root_namespace_id=namespace, messages=MESSAGES, **kwargs
    )


async def self_hosted(
    sidecar: Sidecar,
    upstream: MockUpstream,
    platform: types_pb2.Platform = types_pb2.PLATFORM_OPENAI_COMPATIBLE,
    feature: str = "duo_chat",
) -> admin_pb2.SelfHostedModel:
    azure = platform == types_pb2.PLATFORM_AZURE_OPENAI
    reply = await sidecar.admin.CreateSelfHostedModel(
        admin_pb2.CreateSelfHostedModelRequest(
            self_hosted_model=admin_pb2.SelfHostedModel(
                name=f"model on {upstream.port}",
                family=types_pb2.MODEL_FAMILY_MISTRAL,
                platform=platform,
                endpoint=upstream.url if azure else f"{upstream.url}/v1",
                identifier="azure/mistral-deployment" if azure else "custom_openai/mistral-7b-instruct",
                api_token=TOKEN,
            )
        )
    )
    model: admin_pb2.SelfHostedModel = reply.self_hosted_model
    await sidecar.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(
            feature=feature, provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id=model.id
        )
    )
    return model


async def model_at(
    sidecar: Sidecar, endpoint: str, name: str = "slow model", api_token: str = TOKEN
) -> admin_pb2.SelfHostedModel:
    """An OpenAI-compatible self-hosted model at `endpoint`, serving Duo Chat."""
    reply = await sidecar.admin.CreateSelfHostedModel(
        admin_pb2.CreateSelfHostedModelRequest(
            self_hosted_model=admin_pb2.SelfHostedModel(
                name=name,
                family=types_pb2.MODEL_FAMILY_MISTRAL,
                platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                endpoint=endpoint,
                identifier="custom_openai/mistral-7b-instruct",
                api_token=api_token,
            )
        )
    )
    model: admin_pb2.SelfHostedModel = reply.self_hosted_model
    await sidecar.admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(
            feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id=model.id
        )
    )
    return model


async def collect(call: Any) -> list[Any]:
    return [event async for event in call]


async def read_all(call: Any) -> list[Any]:
    """The rest of a stream read with read(); gRPC forbids mixing read() with async iteration."""
    events = []
    while (event := await call.read()) != grpc.aio.EOF:
        events.append(event)
    return events


FAST = {
    "DUO_SIDECAR_UPSTREAM_FIRST_TOKEN_TIMEOUT_SECONDS": "1",
    "DUO_SIDECAR_UPSTREAM_IDLE_TIMEOUT_SECONDS": "1",
    "DUO_SIDECAR_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "1",
}
