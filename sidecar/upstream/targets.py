"""Builds the HTTP request for each kind of upstream, in the protocol it documents."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from sidecar.upstream.base import ChatMessage, CompletionParams, UpstreamRequest


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _openai_body(messages: Sequence[ChatMessage], params: CompletionParams) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if params.max_tokens:
        body["max_tokens"] = params.max_tokens
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.stop:
        body["stop"] = list(params.stop)
    return body


def openai_compatible(
    *,
    model_name: str,
    endpoint: str,
    identifier: str,
    api_token: str | None,
    messages: Sequence[ChatMessage],
    params: CompletionParams,
    correlation_id: str,
) -> UpstreamRequest:
    """POST {endpoint}/chat/completions (vLLM and any OpenAI-compatible server), bearer token."""
    served_name = identifier.removeprefix("custom_openai/")
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream", "X-Request-ID": correlation_id}
    if api_token:
        headers["Authorization"] = f"Bearer {api_token}"
    return UpstreamRequest(
        endpoint_key=origin(endpoint),
        description=f"self-hosted model '{model_name}'",
        url=f"{endpoint.rstrip('/')}/chat/completions",
        headers=headers,
        body={"model": served_name, **_openai_body(messages, params)},
        protocol="openai_sse",
        secret=api_token or "",
    )


def azure_openai(
    *,
    model_name: str,
    endpoint: str,
    identifier: str,
    api_token: str | None,
    api_version: str,
    messages: Sequence[ChatMessage],
    params: CompletionParams,
    correlation_id: str,
) -> UpstreamRequest:
    """POST {endpoint}/openai/deployments/<deployment>/chat/completions?api-version=..., api-key header."""
    deployment = quote(identifier.removeprefix("azure/"), safe="")
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream", "X-Request-ID": correlation_id}
    if api_token:
        headers["api-key"] = api_token
    return UpstreamRequest(
        endpoint_key=origin(endpoint),
        description=f"self-hosted model '{model_name}'",
        url=f"{endpoint.rstrip('/')}/openai/deployments/{deployment}/chat/completions?api-version={quote(api_version)}",
        headers=headers,
        body=_openai_body(messages, params),
        protocol="openai_sse",
        secret=api_token or "",
    )


@dataclass(frozen=True)
class GatewaySettings:
    """What the sidecar needs to call the GitLab AI Gateway on the instance's behalf."""

    base_url: str
    cloud_connector_token: str
    instance_id: str
    realm: str  # "saas" on GitLab.com, "self-managed" on Dedicated and Self-Managed
    prompt_version: str

    def headers(self, *, user_id: int, unit_primitive: str, namespace_ids: Sequence[int]) -> dict[str, str]:
        """GitLab's AI Gateway headers (DESIGN section 2)."""
        headers = {
            "X-Gitlab-Authentication-Type": "oidc",
            "X-Gitlab-Instance-Id": self.instance_id,
            "X-Gitlab-Realm": self.realm,
            "X-Gitlab-Global-User-Id": global_user_id(self.instance_id, user_id) if user_id else "",
            "X-Gitlab-Feature-Enabled-By-Namespace-Ids": ",".join(str(n) for n in namespace_ids),
            "X-Gitlab-Unit-Primitive": unit_primitive,
        }
        if self.cloud_connector_token:
            headers["Authorization"] = f"Bearer {self.cloud_connector_token}"
        return headers


def global_user_id(instance_id: str, user_id: int) -> str:
    """A stable pseudonymous user id: the AI Gateway never learns the instance's user ids."""
    return hashlib.sha256(f"{instance_id}:{user_id}".encode()).hexdigest()


def ai_gateway(
    *,
    gateway: GatewaySettings,
    feature: str,
    unit_primitive: str,
    model_identifier: str,
    gitlab_default: bool,
    user_id: int,
    namespace_ids: Sequence[int],
    messages: Sequence[ChatMessage],
    params: CompletionParams,
    correlation_id: str,
) -> UpstreamRequest:
    """POST {aig}/v1/prompts/{feature}: the AI Gateway endpoint that takes model_metadata, so the gateway
    runs exactly the model the routing rules chose; the rendered messages travel as the prompt's inputs."""
    inputs: dict[str, Any] = {"messages": [{"role": m.role, "content": m.content} for m in messages]}
    if params.max_tokens:
        inputs["max_tokens"] = params.max_tokens
    if params.temperature is not None:
        inputs["temperature"] = params.temperature
    if params.stop:
        inputs["stop_sequences"] = list(params.stop)
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "X-Request-ID": correlation_id,
        **gateway.headers(user_id=user_id, unit_primitive=unit_primitive, namespace_ids=namespace_ids),
    }
    return UpstreamRequest(
        endpoint_key=origin(gateway.base_url),
        description="the GitLab AI Gateway",
        url=f"{gateway.base_url.rstrip('/')}/v1/prompts/{quote(feature, safe='')}",
        headers=headers,
        body={
            "inputs": inputs,
            "prompt_version": gateway.prompt_version,
            "stream": True,
            "model_metadata": {
                "provider": "gitlab",
                "feature_setting": feature,
                "identifier": "" if gitlab_default else model_identifier,
            },
        },
        protocol="raw_text",
        secret=gateway.cloud_connector_token,
    )
