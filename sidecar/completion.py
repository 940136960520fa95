"""Complete: sends a routed request to its upstream and streams the answer back, with deadlines,
retries before the first token, a circuit breaker and an in-flight cap per endpoint.

Timeouts are what the configuration says a caller waits: upstream.first_token_timeout_seconds bounds everything
up to the first token (connecting, retries, response headers), upstream.connect_timeout_seconds each connection
attempt within it, upstream.idle_timeout_seconds each later wait between chunks.

No silent fallback: a request routed to a model either reaches that model or fails.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.catalog import FeatureInfo
from sidecar.config import UpstreamConfig
from sidecar.domain import Platform, Provider, SelfHostedModel
from sidecar.endpoints import EndpointPolicy, EndpointRefused, GuardedResolver
from sidecar.errors import DuoError, ErrorCode, failed_precondition, invalid_argument
from sidecar.policy import Resolution
from sidecar.upstream import targets
from sidecar.upstream.base import (
    ChatMessage,
    CompletionParams,
    Event,
    TextDelta,
    UpstreamRequest,
    error_for_status,
    retryable_status,
    stream_reader,
    upstream_error,
)
from sidecar.upstream.http import ConnectionPool, ConnectTimeout, Environment, InvalidRequest, Response
from sidecar.upstream.resilience import BreakerState, CircuitBreaker, InFlightLimit
from sidecar.vault import TokenVault

log = logging.getLogger(__name__)

_ERROR_BODY_BYTES = 4096
_JSON_BODY_BYTES = 64 * 1024 * 1024  # the AI Gateway's model catalog, with room to grow
_RETRY_BACKOFF_SECONDS = 0.1
TEST_PROMPT = "Reply with the single word OK."


@dataclass(frozen=True)
class CompletionInput:
    user_id: int
    messages: tuple[ChatMessage, ...]
    params: CompletionParams
    correlation_id: str


@dataclass(frozen=True)
class ModelTestResult:
    success: bool
    latency_ms: float
    http_status: int
    error_message: str
    sample_output: str


MAX_MESSAGES = 100
MAX_CONTENT_CHARACTERS = 400_000  # what the AI Gateway accepts
MAX_OUTPUT_TOKENS = 1_000_000
MAX_STOP_SEQUENCES = 4
MAX_STOP_SEQUENCE_CHARACTERS = 256
MAX_CORRELATION_ID_LENGTH = 128
ROLES = ("system", "user", "assistant")


def completion_input(
    user_id: int,
    messages: Sequence[tuple[str, str]],
    max_tokens: int,
    temperature: float | None,
    stop: Sequence[str],
    correlation_id: str,
) -> CompletionInput:
    """Checks a Complete request's bounds; violations name the field."""
    if not messages:
        raise invalid_argument("messages", "messages must hold at least one message")
    if len(messages) > MAX_MESSAGES:
        raise invalid_argument("messages", f"at most {MAX_MESSAGES} messages, got {len(messages)}")
    for i, (role, content) in enumerate(messages):
        if role not in ROLES:
            raise invalid_argument(f"messages[{i}].role", f"role must be one of {', '.join(ROLES)}, got {role[:40]!r}")
        if len(content) > MAX_CONTENT_CHARACTERS:
            raise invalid_argument(
                f"messages[{i}].content", f"content must be at most {MAX_CONTENT_CHARACTERS} characters"
            )
    if not 0 <= max_tokens <= MAX_OUTPUT_TOKENS:
        raise invalid_argument("parameters.max_tokens", f"max_tokens must be between 0 and {MAX_OUTPUT_TOKENS}")
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise invalid_argument("parameters.temperature", "temperature must be between 0 and 2")
    if len(stop) > MAX_STOP_SEQUENCES or any(not s or len(s) > MAX_STOP_SEQUENCE_CHARACTERS for s in stop):
        raise invalid_argument(
            "parameters.stop_sequences",
            f"at most {MAX_STOP_SEQUENCES} non-empty stop sequences, each at most "
            f"{MAX_STOP_SEQUENCE_CHARACTERS} characters",
        )
    if len(correlation_id) > MAX_CORRELATION_ID_LENGTH or not correlation_id.isprintable():
        raise invalid_argument(
            "correlation_id", f"correlation_id must be printable, at most {MAX_CORRELATION_ID_LENGTH} characters"
        )
    return CompletionInput(
        user_id=user_id,
        messages=tuple(ChatMessage(role, content) for role, content in messages),
        params=CompletionParams(max_tokens, temperature, tuple(stop)),
        correlation_id=correlation_id or uuid.uuid4().hex,
    )


class _Retryable(Exception):
    def __init__(self, error: DuoError) -> None:
        super().__init__(error.message)
        self.error = error


_BREAKER_VALUES = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}


class _Watchdog:
    """Bounds each wait for the upstream's next event as asyncio.timeout around every read would, with one timer
    per completion instead of one per chunk: when the timer fires it checks whether the current bound has passed,
    and sets itself for that bound if not. The first event is bounded by the first-token deadline, each later one
    by idle_seconds from when the caller asked for it; while an event is with the caller nothing is bounded."""

    __slots__ = ("_armed_at", "_handle", "_idle", "_loop", "_task", "bound", "expired", "first", "reading")

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, idle_seconds: float) -> None:
        self._loop = loop
        self._idle = idle_seconds
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = deadline
        self.bound = deadline
        self.first = True
        self.reading = True
        self.expired = False

    def resumed(self) -> None:
        """The caller asks for the next event: it has idle_seconds from now to come. The caller may be another
        task than the one that asked for the first event (the servicer asks for that one while it sends the
        route), so the task to interrupt is taken again."""
        self._task = asyncio.current_task()
        self.first = False
        self.bound = self._loop.time() + self._idle
        self.reading = True
        if self.bound < self._armed_at:  # the idle bound comes before the first-token deadline the timer is set for
            self._arm(self.bound)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._check)

    async def __aenter__(self) -> _Watchdog:
        self._task = asyncio.current_task()
        self._arm(self.bound)
        return self

    def _check(self) -> None:
        self._handle = None
        now = self._loop.time()
        if not self.reading:
            self._arm(now + self._idle)
        elif now < self.bound:
            self._arm(self.bound)
        elif self._task is not None:
            self.expired = True
            self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._handle is not None:
            self._handle.cancel()
        # Our cancel became a TimeoutError, unless someone else cancelled the task too (asyncio.timeout's rule).
        cancelled = self.expired and exc_type is asyncio.CancelledError and self._task is not None
        if cancelled and self._task is not None and self._task.uncancel() == 0:
            raise TimeoutError from None


class Completer:
    def __init__(
        self,
        config: UpstreamConfig,
        gateway: targets.GatewaySettings,
        vault: TokenVault,
        endpoints: EndpointPolicy,
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.vault = vault
        self.endpoints = endpoints
        self._pools: dict[str, ConnectionPool] = {}
        self._refusals: dict[str, str | None] = {}  # per endpoint, with its pool
        self._tls: ssl.SSLContext | None = None
        self.breakers: dict[str, CircuitBreaker] = {}
        self.limits: dict[str, InFlightLimit] = {}

    def circuit_states(self) -> list[tuple[tuple[str], float]]:
        """Per endpoint: 0 closed, 1 half-open (the next call is the trial), 2 open
        (duo_routing_upstream_circuit_state)."""
        states = []
        for endpoint, breaker in sorted(self.breakers.items()):
            state = breaker.state
            if state is BreakerState.OPEN and breaker.retry_after_seconds() <= 0:
                state = BreakerState.HALF_OPEN
            states.append(((endpoint,), _BREAKER_VALUES[state]))
        return states

    def in_flight(self) -> list[tuple[tuple[str], float]]:
        """Per endpoint: requests in flight (duo_routing_upstream_in_flight)."""
        return [((endpoint,), float(limit.in_flight)) for endpoint, limit in sorted(self.limits.items())]

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()

    def _policy_for(self, endpoint_key: str) -> EndpointPolicy:
        """The allow-list is for self-hosted endpoints; the AI Gateway is the operator's own configuration."""
        if endpoint_key == targets.origin(self.gateway.base_url):
            return EndpointPolicy()
        return self.endpoints

    def _pool(self, endpoint_key: str) -> ConnectionPool:
        """The endpoint's connections; the environment (proxy, netrc) is read once, when the pool is made, and so
        is whether the endpoint's host is an IP address the endpoint rules refuse (checked here as well as on
        connecting: behind a proxy, the proxy is what the connection reaches)."""
        pool = self._pools.get(endpoint_key)
        if pool is None:
            self._refusals[endpoint_key] = self._policy_for(endpoint_key).address_refusal(endpoint_key)
            pool = ConnectionPool(
                endpoint_key,
                limit=self.config.max_in_flight_per_endpoint,
                connect_timeout=self.config.connect_timeout_seconds,
                resolver=GuardedResolver(self._policy_for(endpoint_key)),
                environment=Environment.read(endpoint_key),
                ssl_context=self._tls_context,
            )
            self._pools[endpoint_key] = pool
        return pool

    def _tls_context(self) -> ssl.SSLContext:
        """The default verification, as aiohttp had it (SSL_CERT_FILE and SSL_CERT_DIR apply); made once."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    # -- targets ----------------------------------------------------------------------------------

    def target(self, resolution: Resolution, info: FeatureInfo, request: CompletionInput) -> UpstreamRequest:
        """The upstream request for a resolved route."""
        if resolution.provider is Provider.SELF_HOSTED and resolution.self_hosted_model is not None:
            return self._self_hosted(
                resolution.self_hosted_model, request.messages, request.params, request.correlation_id
            )
        if resolution.provider is Provider.GITLAB_AI_GATEWAY:
            return targets.ai_gateway(
                gateway=self.gateway,
                feature=resolution.effective_feature,
                unit_primitive=info.unit_primitives[0] if info.unit_primitives else info.name,
                model_identifier=resolution.model_identifier,
                # A model drawn from a balanced default is named, so the gateway runs the user's own model.
                gitlab_default=resolution.gitlab_default and not resolution.default_model_group,
                user_id=request.user_id,
                namespace_ids=[resolution.governing_namespace_id] if resolution.governing_namespace_id else [],
                messages=request.messages,
                params=request.params,
                correlation_id=request.correlation_id,
            )
        raise failed_precondition(
            "FEATURE_DISABLED",
            f"the {info.title} feature is disabled by the instance admin; nothing was sent to any model",
            subject=f"featureSettings/{resolution.effective_feature}",
            metadata={"feature": info.name},
        )

    def _self_hosted(
        self, model: SelfHostedModel, messages: Sequence[ChatMessage], params: CompletionParams, correlation_id: str
    ) -> UpstreamRequest:
        token = self.vault.api_token(model.id)
        if model.platform is Platform.AZURE_OPENAI:
            return targets.azure_openai(
                model_name=model.name,
                endpoint=model.endpoint,
                identifier=model.identifier,
                api_token=token,
                api_version=self.config.azure_api_version,
                messages=messages,
                params=params,
                correlation_id=correlation_id,
            )
        if model.platform is Platform.OPENAI_COMPATIBLE:
            return targets.openai_compatible(
                model_name=model.name,
                endpoint=model.endpoint,
                identifier=model.identifier,
                api_token=token,
                messages=messages,
                params=params,
                correlation_id=correlation_id,
            )
        raise failed_precondition(
            "PLATFORM_NOT_SUPPORTED",
            f"self-hosted model '{model.name}' is served by {model.platform.name.lower()}, which this sidecar "
            "cannot call yet",
            subject=f"selfHostedModels/{model.id}",
        )

    # -- the exchange ------------------------------------------------------------------------------

    def _breaker(self, key: str) -> CircuitBreaker:
        breaker = self.breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(self.config.circuit_failure_threshold, self.config.circuit_open_seconds)
            self.breakers[key] = breaker
        return breaker

    def _limit(self, key: str) -> InFlightLimit:
        limit = self.limits.get(key)
        if limit is None:
            limit = InFlightLimit(self.config.max_in_flight_per_endpoint)
            self.limits[key] = limit
        return limit

    def stream(self, target: UpstreamRequest) -> AsyncGenerator[Event]:
        """Events from the upstream, guarded by the endpoint's in-flight cap and circuit breaker."""
        return self._exchange(target, self.config.retries, self._breaker(target.endpoint_key), guarded=True)

    async def _exchange(
        self, target: UpstreamRequest, retries: int, breaker: CircuitBreaker | None, guarded: bool = False
    ) -> AsyncGenerator[Event]:
        """The upstream's events. One deadline, upstream.first_token_timeout_seconds from now, bounds everything
        before the first token: connecting, every retry and its backoff, the response headers and the first token.
        Retries (connection errors and HTTP 5xx only) get what is left of it, never a fresh bound. Guarded: within
        the endpoint's in-flight cap, and only while its circuit breaker lets requests through.

        One generator from the socket to the caller: each chunk is read, parsed and handed on here, the stage
        every streamed token passes through."""
        limit = self._limit(target.endpoint_key) if guarded else None
        if limit is not None and not limit.try_acquire():
            raise upstream_error(
                ErrorCode.RESOURCE_EXHAUSTED,
                "UPSTREAM_CONCURRENCY_LIMIT",
                target,
                f"{self.config.max_in_flight_per_endpoint} requests to {target.description} are already in flight; "
                "retry later",
            )
        try:
            if guarded and breaker is not None and not breaker.allow():
                raise upstream_error(
                    ErrorCode.UNAVAILABLE,
                    "CIRCUIT_OPEN",
                    target,
                    f"{target.description} failed repeatedly; requests fail fast for another "
                    f"{breaker.retry_after_seconds():.0f} s",
                )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.first_token_timeout_seconds
            response = await self._open_with_retries(target, retries, breaker, deadline)
            reader = stream_reader(target)
            readany = response.readany
            watchdog = _Watchdog(loop, deadline, self.config.idle_timeout_seconds)
            try:
                try:
                    async with watchdog:
                        while not reader.done:
                            try:
                                data = await readany()
                            except OSError as exc:
                                raise upstream_error(
                                    ErrorCode.UNAVAILABLE,
                                    "UPSTREAM_STREAM_BROKEN",
                                    target,
                                    f"{target.description} broke off the stream: {type(exc).__name__}",
                                ) from None
                            if not data:
                                break
                            text = reader.feed(data)
                            if text:
                                watchdog.reading = False
                                yield TextDelta(text)
                                watchdog.resumed()
                        text, finished = reader.end()
                        watchdog.reading = False
                        if text:
                            yield TextDelta(text)
                        yield finished
                except TimeoutError:
                    raise (
                        self._first_token_timeout(target)
                        if watchdog.first
                        else upstream_error(
                            ErrorCode.UNAVAILABLE,
                            "UPSTREAM_TIMEOUT",
                            target,
                            f"{target.description} sent nothing for {self.config.idle_timeout_seconds:g} s "
                            "(upstream.idle_timeout_seconds) in the middle of its answer",
                        )
                    ) from None
            except DuoError as error:
                response.close()
                if breaker is not None and error.code is ErrorCode.UNAVAILABLE:
                    breaker.record_failure()
                raise
            except BaseException:
                response.close()  # a cancelled caller closes the upstream connection at once
                raise
            response.release()
            if breaker is not None:
                breaker.record_success()
        finally:
            if limit is not None:
                if breaker is not None:
                    breaker.release_trial()
                limit.release()

    async def _open_with_retries(
        self, target: UpstreamRequest, retries: int, breaker: CircuitBreaker | None, deadline: float
    ) -> Response:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                return await self._open(target, deadline)
            except _Retryable as retryable:
                if breaker is not None:
                    breaker.record_failure()
                closed = breaker is None or breaker.state is BreakerState.CLOSED
                backoff = _RETRY_BACKOFF_SECONDS * (attempt + 1)
                if attempt >= retries or not closed or loop.time() + backoff >= deadline:
                    raise retryable.error from None
                attempt += 1
                log.info("retrying %s after: %s", target.description, retryable.error.message)
                await asyncio.sleep(backoff)
            except DuoError as error:
                if breaker is not None and error.reason == "UPSTREAM_TIMEOUT":
                    breaker.record_failure()  # the endpoint failed, though a timeout is not retried
                raise

    def _first_token_timeout(self, target: UpstreamRequest) -> DuoError:
        return upstream_error(
            ErrorCode.UNAVAILABLE,
            "UPSTREAM_TIMEOUT",
            target,
            f"{target.description} sent no first token within {self.config.first_token_timeout_seconds:g} s "
            "(upstream.first_token_timeout_seconds, connecting and retries included)",
        )

    async def _open(self, target: UpstreamRequest, deadline: float) -> Response:
        """The upstream's response (status below 400), by `deadline` (event loop time). Raises _Retryable for what
        may be retried: connection errors (a connect timeout included) and HTTP 5xx; a DuoError for the rest."""
        pool = self._pool(target.endpoint_key)
        refused = self._refusals[target.endpoint_key]
        if refused is not None:
            raise _endpoint_not_allowed(target, refused)
        try:
            async with asyncio.timeout_at(deadline):
                response = await pool.request("POST", target.url, target.headers, orjson.dumps(target.body))
        except ConnectTimeout:  # before the deadline: upstream.connect_timeout_seconds ran out
            raise _Retryable(
                upstream_error(
                    ErrorCode.UNAVAILABLE,
                    "UPSTREAM_TIMEOUT",
                    target,
                    f"cannot reach {target.description} at {target.endpoint_key}: no connection within "
                    f"{self.config.connect_timeout_seconds:g} s (upstream.connect_timeout_seconds)",
                )
            ) from None
        except TimeoutError:
            raise self._first_token_timeout(target) from None  # the deadline: not retried, nothing is left of it
        except InvalidRequest:
            raise failed_precondition(
                "UPSTREAM_MISCONFIGURED",
                f"{target.description} has an invalid endpoint URL",
                subject=target.endpoint_key,
            ) from None
        except EndpointRefused as refusal:
            raise _endpoint_not_allowed(target, refusal.why) from None
        except OSError as exc:  # ConnectionBroken included: connecting failed, or the connection did before an answer
            raise _Retryable(
                upstream_error(
                    ErrorCode.UNAVAILABLE,
                    "UPSTREAM_UNAVAILABLE",
                    target,
                    f"cannot reach {target.description} at {target.endpoint_key}: {_describe(exc, target)}",
                )
            ) from None
        if response.status < 400:
            return response
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self.config.idle_timeout_seconds)):
                body = (await response.read(_ERROR_BODY_BYTES)).decode("utf-8", errors="replace")
        except (TimeoutError, OSError):
            body = ""
        finally:
            response.close()
        error = error_for_status(target, response.status, body)
        if retryable_status(response.status):
            raise _Retryable(error)
        raise error

    # -- admin helpers -----------------------------------------------------------------------------

    async def test_model(self, model: SelfHostedModel) -> ModelTestResult:
        """A real round trip to a self-hosted model, bypassing the breaker so an admin always gets an answer."""
        target = self._self_hosted(
            model, (ChatMessage("user", TEST_PROMPT),), CompletionParams(max_tokens=16), f"test-{uuid.uuid4().hex}"
        )
        start = time.perf_counter()
        produced: list[str] = []
        try:
            async for event in self._exchange(target, retries=0, breaker=None):
                if isinstance(event, TextDelta):
                    produced.append(event.text)
        except DuoError as error:
            # The endpoint's own failures speak for themselves; a refusal by the sidecar's endpoint rules names
            # its reason, which the response has no field for.
            said = f"{error.reason}: {error.message}" if error.reason == ENDPOINT_NOT_ALLOWED else error.message
            return ModelTestResult(
                False, (time.perf_counter() - start) * 1000, int(error.metadata.get("http_status", "0")), said, ""
            )
        return ModelTestResult(True, (time.perf_counter() - start) * 1000, 200, "", "".join(produced)[:200])

    async def fetch_json(self, url: str, headers: dict[str, str], description: str) -> Any:
        """GETs a JSON document (the AI Gateway's model catalog)."""
        probe = UpstreamRequest(url, description, url, headers, {}, "json", self.gateway.cloud_connector_token)
        pool = self._pool(targets.origin(url))
        refused = self._refusals[targets.origin(url)]
        if refused is not None:
            raise _endpoint_not_allowed(probe, refused)
        try:
            async with asyncio.timeout(self.config.first_token_timeout_seconds):
                response = await pool.request("GET", url, headers)
                try:
                    if response.status >= 400:
                        body = await response.read(_ERROR_BODY_BYTES)
                        raise error_for_status(probe, response.status, body.decode("utf-8", errors="replace"))
                    document = await response.read(_JSON_BODY_BYTES + 1)
                    if len(document) > _JSON_BODY_BYTES:
                        raise ValueError(f"the document is larger than {_JSON_BODY_BYTES} bytes")
                    return orjson.loads(document)
                except BaseException:
                    response.close()
                    raise
                finally:
                    response.release()
        except TimeoutError:
            raise upstream_error(
                ErrorCode.UNAVAILABLE,
                "UPSTREAM_TIMEOUT",
                probe,
                f"{description} did not answer within {self.config.first_token_timeout_seconds:g} s "
                "(upstream.first_token_timeout_seconds)",
            ) from None
        except EndpointRefused as refusal:
            raise _endpoint_not_allowed(probe, refusal.why) from None
        except (OSError, ValueError) as exc:
            raise upstream_error(
                ErrorCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", probe, f"{description} failed: {_describe(exc, probe)}"
            ) from None


ENDPOINT_NOT_ALLOWED = "ENDPOINT_NOT_ALLOWED"


def _endpoint_not_allowed(target: UpstreamRequest, why: str) -> DuoError:
    """A connection the endpoint rules refuse (upstream.allowed_cidrs, link-local and metadata addresses): the
    endpoint's address changed since it was registered, or the rules did. Nothing was sent."""
    return failed_precondition(
        ENDPOINT_NOT_ALLOWED,
        f"{target.description} at {target.endpoint_key} may not be contacted: {why}. Nothing was sent; point the "
        "model at an allowed address, or have the operator widen upstream.allowed_cidrs",
        subject=target.endpoint_key,
        metadata={"upstream": target.description, "endpoint": target.endpoint_key},
    )


def _describe(exc: BaseException, target: UpstreamRequest) -> str:
    return target.redact(str(exc) or type(exc).__name__, 200)
