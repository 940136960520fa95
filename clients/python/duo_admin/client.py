"""Typed synchronous clients for the Duo routing sidecar's RoutingService and AdminService.

Every call carries a deadline (``timeout`` seconds) and the ``x-duo-actor`` metadata the sidecar records in
its audit log. Failures raise :class:`DuoAdminError` with the decoded ``google.rpc`` details.

Authentication: given a ``secret`` (see :func:`load_secret`), every call carries a fresh HMAC bearer token signed
with it (:meth:`_SidecarClient._call_metadata`, the one place that builds metadata); TLS and mutual TLS come from
``credentials`` (see :func:`tls_credentials`).

The client loads none of the server: it needs grpc, protobuf, the generated code and ``duo_common``.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from duo_common.errors import FieldViolation, PreconditionViolation
from duo_common.tokens import sign_token
from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT_SECONDS = 10.0
ACTOR_METADATA_KEY = "x-duo-actor"
SECRET_FILE_ENV = "DUO_ADMIN_SECRET_FILE"
SECRET_ENV = "DUO_ADMIN_SECRET"


class ClientSetupError(ValueError):
    """A secret or TLS file that cannot be used, found before any call; the message names the file and why."""


def _read_file(path: str, what: str) -> bytes:
    """The file's bytes; `what` names it in the error, such as "the secret file /etc/x"."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise ClientSetupError(f"cannot read {what}: {error.strerror or error}") from None


def load_secret(secret_file: str | None) -> str | None:
    """The signing secret: from the file given, else $DUO_ADMIN_SECRET_FILE, else $DUO_ADMIN_SECRET.

    Raises ClientSetupError when the file cannot be read or holds no secret.
    """
    path = secret_file or os.environ.get(SECRET_FILE_ENV)
    if path:
        what = f"the secret file {path}" + ("" if secret_file else f" (from ${SECRET_FILE_ENV})")
        try:
            secret = _read_file(path, what).decode().strip()
        except UnicodeDecodeError:
            raise ClientSetupError(f"{what} is not text: expected the secret, such as 64 hex digits") from None
        if not secret:
            raise ClientSetupError(f"{what} is empty")
        return secret
    return os.environ.get(SECRET_ENV) or None


# What each TLS file must hold; anything else makes gRPC fail (or abort) later without naming the file.
_PEM = {
    "--tls-ca": (b"-----BEGIN CERTIFICATE-----", "CA certificate"),
    "--tls-cert": (b"-----BEGIN CERTIFICATE-----", "certificate"),
    "--tls-key": (b"PRIVATE KEY-----", "private key"),
}


def tls_credentials(ca_file: str | None, cert_file: str | None, key_file: str | None) -> grpc.ChannelCredentials:
    """TLS channel credentials; a client certificate and key make it mutual TLS.

    Raises ClientSetupError for a file that cannot be read or is not PEM, and for a certificate without its key
    (or the reverse).
    """
    if (cert_file is None) != (key_file is None):
        raise ClientSetupError("mutual TLS needs both a client certificate (--tls-cert) and its key (--tls-key)")

    def read(path: str | None, option: str) -> bytes | None:
        if path is None:
            return None
        marker, holding = _PEM[option]
        contents = _read_file(path, f"{option} {path}")
        if marker not in contents:
            raise ClientSetupError(f"{option} {path} is not a PEM file holding a {holding}")
        return contents

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file, "--tls-ca"),
        private_key=read(key_file, "--tls-key"),
        certificate_chain=read(cert_file, "--tls-cert"),
    )


# The sidecar refuses SyncSeatAssignments messages with more changes than this.
MAX_SEAT_CHANGES_PER_MESSAGE = 10_000

# The sidecar's limit; gRPC itself refuses metadata values that are not printable ASCII.
MAX_ACTOR_LENGTH = 255

R = TypeVar("R", bound=Message)
T = TypeVar("T")


def default_actor() -> str:
    """``$USER@hostname``, the actor recorded in the audit log when none is given."""
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        user = "unknown"
    # gRPC metadata values must be printable ASCII.
    return f"{user}@{socket.gethostname()}".encode("ascii", "replace").decode()[:MAX_ACTOR_LENGTH]


def validated_actor(actor: str) -> str:
    """The actor, if gRPC can send it and the sidecar will accept it; ValueError otherwise."""
    if not (actor.isascii() and actor.isprintable()) or len(actor) > MAX_ACTOR_LENGTH:
        raise ValueError(f"the actor must be printable ASCII, at most {MAX_ACTOR_LENGTH} characters; got {actor!r}")
    return actor


@dataclass
class DuoAdminError(Exception):
    """A failed call: the gRPC status code name, its message and the decoded google.rpc details."""

    code: str
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    precondition_violations: tuple[PreconditionViolation, ...] = ()

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, address: str, timeout: float) -> DuoAdminError:
        if not isinstance(error, grpc.Call):  # every RpcError of the sync API is a Call; be safe anyway
            return cls("UNKNOWN", str(error))
        code: grpc.StatusCode = error.code()
        message = error.details() or ""
        try:
            status = rpc_status.from_call(error)
        except ValueError:  # details that contradict the status line: keep the status line
            status = None
        found = cls(code.name, message)
        for detail in status.details if status is not None else ():
            found._add_detail(detail)
        # Errors the sidecar raises itself always carry an ErrorInfo; without one, gRPC failed on our side.
        if not found.reason and code == grpc.StatusCode.UNAVAILABLE:
            return replace(found, message=f"cannot reach the sidecar at {address} ({message})")
        if not found.reason and code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return replace(found, message=f"the sidecar at {address} did not answer within {timeout:g} s")
        return found

    def _add_detail(self, detail: Any) -> None:
        error_info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        precondition_failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(error_info):
            self.reason, self.domain = error_info.reason, error_info.domain
            self.metadata = dict(error_info.metadata)
        elif detail.Unpack(bad_request):
            self.field_violations += tuple(FieldViolation(v.field, v.description) for v in bad_request.field_violations)
        elif detail.Unpack(precondition_failure):
            self.precondition_violations += tuple(
                PreconditionViolation(v.type, v.subject, v.description) for v in precondition_failure.violations
            )


class _Page(Protocol):
    @property
    def next_page_token(self) -> str: ...


P = TypeVar("P", bound=_Page)


def iterate_pages(fetch_page: Callable[[str], P], items_of: Callable[[P], Iterable[T]]) -> Iterator[T]:
    """Every item of a paginated list: calls fetch_page(page_token) until next_page_token is empty."""
    token = ""
    while True:
        page = fetch_page(token)
        yield from items_of(page)
        if not page.next_page_token:
            return
        if page.next_page_token == token:  # a server bug must not make us loop forever
            raise DuoAdminError("INTERNAL", "the sidecar returned the same page token twice")
        token = page.next_page_token


def seat_batches(
    changes: Iterable[admin_pb2.SeatAssignment], batch_size: int = MAX_SEAT_CHANGES_PER_MESSAGE
) -> Iterator[admin_pb2.SyncSeatAssignmentsRequest]:
    """SyncSeatAssignments messages of at most batch_size changes each, in order."""
    # Checked here, not in the generator: gRPC consumes that on its own thread and would only cancel the call.
    if not 0 < batch_size <= MAX_SEAT_CHANGES_PER_MESSAGE:
        raise ValueError(f"batch_size must be between 1 and {MAX_SEAT_CHANGES_PER_MESSAGE}, got {batch_size}")
    remaining = iter(changes)
    return (
        admin_pb2.SyncSeatAssignmentsRequest(assignments=batch)
        for batch in iter(lambda: list(islice(remaining, batch_size)), [])
    )


class _SidecarClient:
    """A channel to one sidecar plus the per-call settings; use as a context manager or call close()."""

    _stub_class: Callable[[grpc.Channel], Any]

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        actor: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        secret: str | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.address = address
        self.timeout = timeout
        self.actor = validated_actor(actor or default_actor())
        self._secret = secret  # signs a fresh token for every call
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=list(options))
        else:
            self._channel = grpc.secure_channel(address, credentials, options=list(options))
        self._stub = self._stub_class(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        metadata: tuple[tuple[str, str], ...] = ((ACTOR_METADATA_KEY, self.actor),)
        if self._secret:
            metadata += (("authorization", sign_token(self._secret)),)
        return metadata

    def _call(self, rpc: Callable[..., Any], request: Any, response_type: type[R]) -> R:
        """Runs one RPC (unary, or client-streaming with an iterator request) with deadline and metadata."""
        try:
            response = rpc(request, timeout=self.timeout, metadata=self._call_metadata())
        except grpc.RpcError as error:
            raise DuoAdminError.from_rpc_error(error, self.address, self.timeout) from None
        if not isinstance(response, response_type):
            raise TypeError(f"expected {response_type.__name__}, got {type(response).__name__}")
        return response


class RoutingClient(_SidecarClient):
    """RoutingService: what GitLab Rails calls for every Duo request."""

    _stub_class = routing_pb2_grpc.RoutingServiceStub

    def resolve_model(
        self, user_id: int, feature: str, root_namespace_id: int = 0, user_selected_model: str = ""
    ) -> routing_pb2.ResolveModelResponse:
        """user_selected_model: the model the user picked; the answer's user_selection says whether it was used."""
        request = routing_pb2.ResolveModelRequest(
            user_id=user_id,
            feature=feature,
            root_namespace_id=root_namespace_id,
            user_selected_model=user_selected_model,
        )
        return self._call(self._stub.ResolveModel, request, routing_pb2.ResolveModelResponse)

    def list_user_selectable_models(
        self, user_id: int, feature: str, root_namespace_id: int = 0
    ) -> routing_pb2.ListUserSelectableModelsResponse:
        """What the user's model picker shows: the default, the models the user may choose, a hard pin."""
        request = routing_pb2.ListUserSelectableModelsRequest(
            user_id=user_id, feature=feature, root_namespace_id=root_namespace_id
        )
        return self._call(self._stub.ListUserSelectableModels, request, routing_pb2.ListUserSelectableModelsResponse)

    def complete(
        self,
        user_id: int,
        feature: str,
        messages: Sequence[tuple[str, str]],
        *,
        root_namespace_id: int = 0,
        max_tokens: int = 0,
        temperature: float | None = None,
        stop_sequences: Sequence[str] = (),
        correlation_id: str = "",
        timeout: float | None = None,
        user_selected_model: str = "",
    ) -> Iterator[routing_pb2.CompleteResponse]:
        """Streams a completion: the route, then text deltas, then the finished event.

        ``timeout`` bounds the whole stream (default: the client's timeout).
        """
        parameters = routing_pb2.GenerationParameters(max_tokens=max_tokens, stop_sequences=list(stop_sequences))
        if temperature is not None:
            parameters.temperature = temperature
        request = routing_pb2.CompleteRequest(
            user_id=user_id,
            feature=feature,
            root_namespace_id=root_namespace_id,
            messages=[routing_pb2.ChatMessage(role=role, content=content) for role, content in messages],
            parameters=parameters,
            correlation_id=correlation_id,
            user_selected_model=user_selected_model,
        )
        deadline = timeout or self.timeout
        try:
            yield from self._stub.Complete(request, timeout=deadline, metadata=self._call_metadata())
        except grpc.RpcError as error:
            raise DuoAdminError.from_rpc_error(error, self.address, deadline) from None


class AdminClient(_SidecarClient):
    """AdminService: one method per RPC, returning its response message.

    ``list_*`` methods return one page; ``iter_*`` methods yield every item across pages
    (``page_size`` 0 lets the server choose, at most 1000).
    """

    _stub_class = admin_pb2_grpc.AdminServiceStub

    # -- self-hosted models ---------------------------------------------------------------------

    def create_self_hosted_model(self, model: admin_pb2.SelfHostedModel) -> admin_pb2.CreateSelfHostedModelResponse:
        request = admin_pb2.CreateSelfHostedModelRequest(self_hosted_model=model)
        return self._call(self._stub.CreateSelfHostedModel, request, admin_pb2.CreateSelfHostedModelResponse)

    def get_self_hosted_model(self, model_id: str) -> admin_pb2.GetSelfHostedModelResponse:
        request = admin_pb2.GetSelfHostedModelRequest(id=model_id)
        return self._call(self._stub.GetSelfHostedModel, request, admin_pb2.GetSelfHostedModelResponse)

    def list_self_hosted_models(
        self, page_size: int = 0, page_token: str = ""
    ) -> admin_pb2.ListSelfHostedModelsResponse:
        request = admin_pb2.ListSelfHostedModelsRequest(page_size=page_size, page_token=page_token)
        return self._call(self._stub.ListSelfHostedModels, request, admin_pb2.ListSelfHostedModelsResponse)

    def iter_self_hosted_models(self, page_size: int = 0) -> Iterator[admin_pb2.SelfHostedModel]:
        return iterate_pages(
            lambda token: self.list_self_hosted_models(page_size, token), lambda page: page.self_hosted_models
        )

    def update_self_hosted_model(
        self, model: admin_pb2.SelfHostedModel, fields: Iterable[str]
    ) -> admin_pb2.UpdateSelfHostedModelResponse:
        """Changes the named fields of the model with ``model.id`` to the values in ``model``.

        Fields: name, family, platform, endpoint, identifier, api_token (an empty token clears it), or "*".
        """
        request = admin_pb2.UpdateSelfHostedModelRequest(
            self_hosted_model=model, update_mask=field_mask_pb2.FieldMask(paths=list(fields))
        )
        return self._call(self._stub.UpdateSelfHostedModel, request, admin_pb2.UpdateSelfHostedModelResponse)

    def test_self_hosted_model(self, model_id: str) -> admin_pb2.TestSelfHostedModelResponse:
        request = admin_pb2.TestSelfHostedModelRequest(id=model_id)
        return self._call(self._stub.TestSelfHostedModel, request, admin_pb2.TestSelfHostedModelResponse)

    def refresh_catalog(self) -> admin_pb2.RefreshCatalogResponse:
        request = admin_pb2.RefreshCatalogRequest()
        return self._call(self._stub.RefreshCatalog, request, admin_pb2.RefreshCatalogResponse)

    def delete_self_hosted_model(self, model_id: str) -> admin_pb2.DeleteSelfHostedModelResponse:
        request = admin_pb2.DeleteSelfHostedModelRequest(id=model_id)
        return self._call(self._stub.DeleteSelfHostedModel, request, admin_pb2.DeleteSelfHostedModelResponse)

    # -- feature settings -----------------------------------------------------------------------

    def update_feature_setting(
        self, feature: str, provider: admin_pb2.FeatureProvider | str, self_hosted_model_id: str = ""
    ) -> admin_pb2.UpdateFeatureSettingResponse:
        request = admin_pb2.UpdateFeatureSettingRequest(
            feature=feature, provider=provider, self_hosted_model_id=self_hosted_model_id
        )
        return self._call(self._stub.UpdateFeatureSetting, request, admin_pb2.UpdateFeatureSettingResponse)

    def list_feature_settings(self, page_size: int = 0, page_token: str = "") -> admin_pb2.ListFeatureSettingsResponse:
        request = admin_pb2.ListFeatureSettingsRequest(page_size=page_size, page_token=page_token)
        return self._call(self._stub.ListFeatureSettings, request, admin_pb2.ListFeatureSettingsResponse)

    def iter_feature_settings(self, page_size: int = 0) -> Iterator[admin_pb2.FeatureSetting]:
        return iterate_pages(
            lambda token: self.list_feature_settings(page_size, token), lambda page: page.feature_settings
        )

    # -- model selection ------------------------------------------------------------------------

    def update_instance_model_selection(
        self, feature: str, offered_model_ref: str, *, validate_only: bool = False, apply_to_sub_features: bool = False
    ) -> admin_pb2.UpdateInstanceModelSelectionResponse:
        """Pins offered_model_ref for the instance; "" restores the GitLab default. validate_only: write nothing,
        answer what the change would do; apply_to_sub_features (duo_chat): set its sub-features the same way."""
        request = admin_pb2.UpdateInstanceModelSelectionRequest(
            feature=feature,
            offered_model_ref=offered_model_ref,
            validate_only=validate_only,
            apply_to_sub_features=apply_to_sub_features,
        )
        return self._call(
            self._stub.UpdateInstanceModelSelection, request, admin_pb2.UpdateInstanceModelSelectionResponse
        )

    def list_instance_model_selections(
        self, page_size: int = 0, page_token: str = ""
    ) -> admin_pb2.ListInstanceModelSelectionsResponse:
        request = admin_pb2.ListInstanceModelSelectionsRequest(page_size=page_size, page_token=page_token)
        return self._call(
            self._stub.ListInstanceModelSelections, request, admin_pb2.ListInstanceModelSelectionsResponse
        )

    def iter_instance_model_selections(self, page_size: int = 0) -> Iterator[admin_pb2.ModelSelection]:
        return iterate_pages(
            lambda token: self.list_instance_model_selections(page_size, token),
            lambda page: page.model_selections,
        )

    def update_namespace_model_selection(
        self,
        namespace_id: int,
        feature: str,
        offered_model_ref: str,
        *,
        validate_only: bool = False,
        apply_to_sub_features: bool = False,
    ) -> admin_pb2.UpdateNamespaceModelSelectionResponse:
        """Pins offered_model_ref in a top-level namespace; "" restores the GitLab default. validate_only: write
        nothing, answer what the change would do (with how many users' no-context answers change);
        apply_to_sub_features (duo_chat): set its sub-features the same way."""
        request = admin_pb2.UpdateNamespaceModelSelectionRequest(
            namespace_id=namespace_id,
            feature=feature,
            offered_model_ref=offered_model_ref,
            validate_only=validate_only,
            apply_to_sub_features=apply_to_sub_features,
        )
        return self._call(
            self._stub.UpdateNamespaceModelSelection, request, admin_pb2.UpdateNamespaceModelSelectionResponse
        )

    def list_namespace_model_selections(
        self, namespace_id: int, page_size: int = 0, page_token: str = ""
    ) -> admin_pb2.ListNamespaceModelSelectionsResponse:
        request = admin_pb2.ListNamespaceModelSelectionsRequest(
            namespace_id=namespace_id, page_size=page_size, page_token=page_token
        )
        return self._call(
            self._stub.ListNamespaceModelSelections, request, admin_pb2.ListNamespaceModelSelectionsResponse
        )

    def iter_namespace_model_selections(
        self, namespace_id: int, page_size: int = 0
    ) -> Iterator[admin_pb2.ModelSelection]:
        return iterate_pages(
            lambda token: self.list_namespace_model_selections(namespace_id, page_size, token),
            lambda page: page.model_selections,
        )

    # -- catalog --------------------------------------------------------------------------------

    def list_selectable_models(
        self, feature: str = "", page_size: int = 0, page_token: str = ""
    ) -> admin_pb2.ListSelectableModelsResponse:
        request = admin_pb2.ListSelectableModelsRequest(feature=feature, page_size=page_size, page_token=page_token)
        return self._call(self._stub.ListSelectableModels, request, admin_pb2.ListSelectableModelsResponse)

    def iter_selectable_models(self, feature: str = "", page_size: int = 0) -> Iterator[admin_pb2.SelectableModels]:
        return iterate_pages(
            lambda token: self.list_selectable_models(feature, page_size, token), lambda page: page.features
        )

    # -- seats and default namespaces -----------------------------------------------------------

    def sync_seat_assignments(
        self,
        changes: Iterable[admin_pb2.SeatAssignment],
        batch_size: int = MAX_SEAT_CHANGES_PER_MESSAGE,
    ) -> admin_pb2.SyncSeatAssignmentsResponse:
        """Streams the changes in order, batch_size per message.

        The server applies each message atomically: when one fails, the messages before it stay applied.
        """
        return self._call(
            self._stub.SyncSeatAssignments,
            seat_batches(changes, batch_size),
            admin_pb2.SyncSeatAssignmentsResponse,
        )

    def list_seat_assignments(
        self, user_id: int = 0, namespace_id: int = 0, page_size: int = 0, page_token: str = ""
    ) -> admin_pb2.ListSeatAssignmentsResponse:
        request = admin_pb2.ListSeatAssignmentsRequest(
            user_id=user_id, namespace_id=namespace_id, page_size=page_size, page_token=page_token
        )
        return self._call(self._stub.ListSeatAssignments, request, admin_pb2.ListSeatAssignmentsResponse)

    def iter_seat_assignments(
        self, user_id: int = 0, namespace_id: int = 0, page_size: int = 0
    ) -> Iterator[admin_pb2.SeatAssignment]:
        return iterate_pages(
            lambda token: self.list_seat_assignments(user_id, namespace_id, page_size, token),
            lambda page: page.seat_assignments,
        )

    def set_user_default_namespace(self, user_id: int, namespace_id: int) -> admin_pb2.SetUserDefaultNamespaceResponse:
        """Sets the user's default GitLab Duo namespace; namespace_id 0 clears it."""
        request = admin_pb2.SetUserDefaultNamespaceRequest(user_id=user_id, namespace_id=namespace_id)
        return self._call(self._stub.SetUserDefaultNamespace, request, admin_pb2.SetUserDefaultNamespaceResponse)

    def get_user_routing_status(
        self, user_id: int, user_selected_model: str = ""
    ) -> admin_pb2.GetUserRoutingStatusResponse:
        """user_selected_model: user-selectable features show what that choice would resolve to."""
        request = admin_pb2.GetUserRoutingStatusRequest(user_id=user_id, user_selected_model=user_selected_model)
        return self._call(self._stub.GetUserRoutingStatus, request, admin_pb2.GetUserRoutingStatusResponse)

    # -- model allowlists (user model selection) -------------------------------------------------

    def update_namespace_model_allowlist(
        self, namespace_id: int, feature: str, enabled: bool, model_refs: Sequence[str] = ()
    ) -> admin_pb2.UpdateNamespaceModelAllowlistResponse:
        """Turns a namespace's allowlist on with model_refs, or off (enabled False, no refs)."""
        request = admin_pb2.UpdateNamespaceModelAllowlistRequest(
            namespace_id=namespace_id, feature=feature, enabled=enabled, model_refs=list(model_refs)
        )
        return self._call(
            self._stub.UpdateNamespaceModelAllowlist, request, admin_pb2.UpdateNamespaceModelAllowlistResponse
        )

    def update_instance_model_allowlist(
        self, feature: str, enabled: bool, model_refs: Sequence[str] = ()
    ) -> admin_pb2.UpdateInstanceModelAllowlistResponse:
        """Turns the instance's allowlist on with model_refs, or off (enabled False, no refs)."""
        request = admin_pb2.UpdateInstanceModelAllowlistRequest(
            feature=feature, enabled=enabled, model_refs=list(model_refs)
        )
        return self._call(
            self._stub.UpdateInstanceModelAllowlist, request, admin_pb2.UpdateInstanceModelAllowlistResponse
        )

    # -- audit and info -------------------------------------------------------------------------

    def list_audit_events(
        self, resource_prefix: str = "", page_size: int = 0, page_token: str = ""
    ) -> admin_pb2.ListAuditEventsResponse:
        request = admin_pb2.ListAuditEventsRequest(
            resource_prefix=resource_prefix, page_size=page_size, page_token=page_token
        )
        return self._call(self._stub.ListAuditEvents, request, admin_pb2.ListAuditEventsResponse)

    def iter_audit_events(self, resource_prefix: str = "", page_size: int = 0) -> Iterator[admin_pb2.AuditEvent]:
        """Audit events, newest first."""
        return iterate_pages(
            lambda token: self.list_audit_events(resource_prefix, page_size, token),
            lambda page: page.audit_events,
        )

    def get_server_info(self) -> admin_pb2.GetServerInfoResponse:
        return self._call(self._stub.GetServerInfo, admin_pb2.GetServerInfoRequest(), admin_pb2.GetServerInfoResponse)
