"""The edge: one chain that every gRPC call passes through the same way, unary and streaming alike.

The steps, in Gitaly's order (auth before limits, then metrics and logging, then error translation):

1. auth (sidecar.auth): a call without a valid token is refused; nothing else sees it (it is counted in
   duo_routing_auth_failures_total, not in grpc_server_*).
2. limits (sidecar.admission): a place under the method's concurrency limit, or RESOURCE_EXHAUSTED / OVERLOADED
   (UNAVAILABLE / SHUTTING_DOWN once shutdown has begun). Nothing has been parsed yet.
3. metrics and the access log (sidecar.grpc_metrics): from here on the call is in grpc_server_* and gets its
   access log line, a refusal by the limits included (DESIGN 8: overload is counted in grpc_server_handled_total).
4. error translation (sidecar.grpc_errors): the request is held to its method's size limit and parsed
   (REQUEST_TOO_LARGE, MALFORMED_REQUEST, before the servicer runs), then the servicer runs; a DuoError or a
   storage failure raised by any step ends the call with its documented status and google.rpc details.

Servicers therefore only raise DuoError; they do not catch, decorate or translate anything.

The chain is built once per method, at registration, around the method handlers that the generated
add_*_to_server functions make: no grpc.aio interceptor (each costs an await per call, on the hot path too) and no
private grpc attribute. Each handler is rebuilt with the public grpc.*_rpc_method_handler constructors, with no
request deserializer: gRPC hands over the request bytes and step 4 parses them, so a refused call is never parsed.
One wrapper per response shape (a single response or a stream) serves all four kinds of RPC: the request side
differs only in `receive` (one message, or a stream of them).
"""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc

from sidecar.admission import Admission, Limit
from sidecar.auth import Authenticator, Role, UnknownMethods
from sidecar.grpc_errors import ANSWERED_ERRORS, StorageFailures, answer_for, request_parser, status_for
from sidecar.grpc_metrics import QUIET_METHODS, CallRecord, code_of
from sidecar.metrics import MethodMetrics

# The generated add_*_to_server(servicer, server) function of a service, and the servicer it registers.
AddToServer = Callable[[Any, Any], None]
Service = tuple[AddToServer, Any]

_HANDLER_OF_KIND = {  # (request streaming, response streaming): the public constructor
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class _Method:
    """What the chain knows of one method, fixed at registration."""

    __slots__ = ("admission", "authenticator", "limit", "metrics", "name", "path", "quiet", "required", "storage")

    def __init__(
        self,
        path: str,
        required: Role | None,
        authenticator: Authenticator,
        limit: Limit | None,
        admission: Admission,
        metrics: MethodMetrics,
        quiet: bool,
        storage: StorageFailures,
    ) -> None:
        self.path = path
        self.name = path.rsplit("/", 1)[-1]
        self.required = required
        self.authenticator = authenticator
        self.limit = limit
        self.admission = admission
        self.metrics = metrics
        self.quiet = quiet
        self.storage = storage


class _Call:
    """One call through the chain."""

    __slots__ = ("context", "limit", "method", "record")

    def __init__(self, method: _Method, context: grpc.aio.ServicerContext) -> None:
        self.method = method
        self.context = context
        self.limit: Limit | None = None  # the place taken under the method's limit
        self.record: CallRecord | None = None

    def begin(self, unary_request: bool) -> CallRecord:
        """Steps 1 to 3. Raises the refusal (a DuoError) of a call that auth or the limits refuse."""
        method, context = self.method, self.context
        if method.required is not None:
            refusal = method.authenticator.refusal(method.required, method.path, context.invocation_metadata())
            if refusal is not None:
                raise refusal
        refusal = None
        if method.limit is not None:
            refusal = method.admission.enter(method.limit)
            if refusal is None:
                self.limit = method.limit
        record = self.record = CallRecord(method.metrics, method.quiet, context, unary_request)
        if refusal is not None:
            raise refusal
        return record

    def succeeded(self, unary_response: bool) -> None:
        if self.limit is not None:
            Admission.leave(self.limit)
        if self.record is not None:
            self.record.succeeded(self.context, unary_response)

    async def failed(self, error: BaseException) -> None:
        """Step 4 for a call that raised: a DuoError or a storage failure ends it with its status (abort raises
        AbortError). Then the call is counted and logged, and its place given back."""
        if isinstance(error, ANSWERED_ERRORS):
            answer = answer_for(error, self.method.name, self.method.storage)
            # gRPC keeps the AbortError with the call, and its traceback (through the context) in a reference cycle
            # that only the garbage collector frees: the frames it reaches must not hold the request's bytes (up to
            # server.max_receive_message_bytes each; the caller drops its own reference).
            traceback.clear_frames(error.__traceback__)
            if self.record is not None:
                self.record.rpc.error_reason = answer.reason  # for the access log line
            try:
                await self.context.abort_with_status(status_for(answer))
            except BaseException as aborted:
                self._ended(aborted)
                raise
        self._ended(error)

    def _ended(self, error: BaseException) -> None:
        if self.limit is not None:
            Admission.leave(self.limit)
            self.limit = None
        if self.record is not None:
            self.record.ended(code_of(error, self.context))
            self.record = None


Receive = Callable[[Any, _Call], Any]


def _one_message(parse: Callable[[bytes], Any]) -> Receive:
    def receive(data: bytes, call: _Call) -> Any:
        return parse(data)

    return receive


def _message_stream(parse: Callable[[bytes], Any]) -> Receive:
    async def messages(stream: AsyncIterator[bytes], record: CallRecord) -> AsyncIterator[Any]:
        async for data in stream:
            record.received()
            yield parse(data)

    def receive(stream: AsyncIterator[bytes], call: _Call) -> Any:
        assert call.record is not None  # begun
        return messages(stream, call.record)

    return receive


def _single_response(method: _Method, behavior: Callable[..., Any], receive: Receive, unary_request: bool) -> Any:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _Call(method, context)
        try:
            call.begin(unary_request)
            response = await behavior(receive(request, call), context)
        except BaseException as error:
            request = None  # see _Call.failed
            await call.failed(error)
            raise
        call.succeeded(True)
        return response

    return handle


def _response_stream(method: _Method, behavior: Callable[..., Any], receive: Receive, unary_request: bool) -> Any:
    # A servicer that writes with context.write (health's Watch) rather than yielding: its messages are not counted.
    writes_itself = not inspect.isasyncgenfunction(behavior)

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = _Call(method, context)
        try:
            record = call.begin(unary_request)
            if writes_itself:
                await behavior(receive(request, call), context)
            else:
                async with contextlib.aclosing(behavior(receive(request, call), context)) as responses:
                    async for response in responses:
                        record.sent()
                        yield response
        except BaseException as error:
            request = None  # see _Call.failed
            await call.failed(error)
            raise
        call.succeeded(False)

    return handle


class _Registration:
    """Stands in for the server while generated add_*_to_server code registers a servicer: keeps its handlers."""

    def __init__(self) -> None:
        self.services: list[tuple[str, Mapping[str, Any]]] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self.services.append((service, handlers))


class Edge:
    """The chain of one server: built once, then every service is registered through it (`register`)."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        admission: Admission,
        methods: Mapping[str, MethodMetrics],
        storage_failures: StorageFailures,
        max_request_bytes: Callable[[str], int],
        quiet_methods: frozenset[str] = QUIET_METHODS,
    ) -> None:
        self.authenticator = authenticator
        self.admission = admission
        self.storage_failures = storage_failures
        self._methods = methods  # grpc_server_* per method path: Metrics.register_services comes first
        self._max_request_bytes = max_request_bytes
        self._quiet = quiet_methods

    def register(self, server: grpc.aio.Server, services: Iterable[Service]) -> None:
        """Registers each servicer's methods, every one behind the chain, as generic handlers; then, with
        authentication on, the answer for paths that have no method (auth.UnknownMethods).

        Not as registered methods (server.add_registered_method_handlers), which generated add_*_to_server code
        also uses: grpc.aio's server loop keeps one pending request per registered method and passes them all to
        asyncio.wait for every call it accepts; with this sidecar's ~30 methods that cost ResolveModel ~15% more
        CPU per call than the single generic request does (docs/performance.md)."""
        for add_to_server, servicer in services:
            registration = _Registration()
            add_to_server(servicer, registration)
            if not registration.services:
                raise RuntimeError(
                    f"{add_to_server.__qualname__} registered no method handlers: regenerate the gRPC code "
                    "(grpcio-tools 1.63 or newer)"
                )
            for service, handlers in registration.services:
                chained = {name: self.chain(f"/{service}/{name}", handler) for name, handler in handlers.items()}
                server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, chained),))
        if self.authenticator.enabled:
            server.add_generic_rpc_handlers((UnknownMethods(self.authenticator),))

    def chain(self, path: str, handler: Any) -> Any:
        """The method handler of `path` behind the chain: a grpc.RpcMethodHandler of the same kind."""
        metrics = self._methods.get(path)
        if metrics is None:
            raise RuntimeError(f"{path} has no grpc_server_* series: register its service with Metrics first")
        method = _Method(
            path,
            self.authenticator.required_role(path),
            self.authenticator,
            self.admission.limit_for(path),
            self.admission,
            metrics,
            path in self._quiet,
            self.storage_failures,
        )
        parse = request_parser(handler.request_deserializer, self._max_request_bytes(path))
        streaming_request, streaming_response = bool(handler.request_streaming), bool(handler.response_streaming)
        receive = _message_stream(parse) if streaming_request else _one_message(parse)
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        wrap = _response_stream if streaming_response else _single_response
        return _HANDLER_OF_KIND[(streaming_request, streaming_response)](
            wrap(method, behavior, receive, not streaming_request),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
