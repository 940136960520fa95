"""Thin gRPC servicers: translate protos to domain calls and back. Decisions live in policy and control."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from datetime import datetime
from enum import IntEnum
from typing import TypeVar, cast

import grpc
from google.protobuf import timestamp_pb2

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc, types_pb2
from sidecar import __version__, logs, policy
from sidecar.catalog import Catalog, CatalogModel, Deprecation, FeatureInfo
from sidecar.catalog_refresh import CatalogRefresher
from sidecar.completion import Completer, completion_input
from sidecar.control import (
    FEATURE_SETTINGS,
    INSTANCE_SELECTIONS,
    NAMESPACE_SELECTIONS,
    SELF_HOSTED_MODELS,
    AdminCommands,
    AllowlistUpdate,
    SelectionUpdate,
    SelfHostedModelInput,
    self_hosted_mask,
)
from sidecar.domain import (
    AuditEvent,
    FeatureProvider,
    ModelFamily,
    Platform,
    Provider,
    SeatChange,
    SelfHostedModel,
    UserSelection,
)
from sidecar.errors import DuoError, invalid_argument
from sidecar.impact import SelectionImpact
from sidecar.metrics import Metrics, error_outcome, interrupted_outcome
from sidecar.paging import STR_KEY, STR_PAIR_KEY, page_size, paginate
from sidecar.snapshot import Snapshot
from sidecar.state import ConfigState
from sidecar.upstream.base import Event, TextDelta
from sidecar.users import UserRouting

log = logging.getLogger(__name__)

ACTOR_METADATA_KEY = "x-duo-actor"
MAX_ACTOR_LENGTH = 255

E = TypeVar("E", bound=IntEnum)
PinResponse = TypeVar(
    "PinResponse", admin_pb2.UpdateInstanceModelSelectionResponse, admin_pb2.UpdateNamespaceModelSelectionResponse
)


def resolution_to_proto(res: policy.Resolution) -> routing_pb2.ResolveModelResponse:
    response = routing_pb2.ResolveModelResponse(
        provider=cast(types_pb2.Provider, res.provider.value),
        model_identifier=res.model_identifier,
        model_name=res.model_name,
        gitlab_default=res.gitlab_default,
        source=cast(types_pb2.SelectionSource, res.source.value),
        governing_namespace_id=res.governing_namespace_id,
        default_namespace_prompt=res.default_namespace_prompt,
        pinned_model_unavailable=res.pinned_model_unavailable,
        config_version=str(res.config_version),
        effective_feature=res.effective_feature,
        user_selection=cast(types_pb2.UserSelection, res.user_selection.value),
    )
    if res.default_model_group:
        response.default_model_group = res.default_model_group
    if res.pinned_model_deprecated:
        response.pinned_model_deprecated = True
        response.deprecation_removal_version = res.deprecation_removal_version
    model = res.self_hosted_model
    if model is not None:
        response.self_hosted_model_id = model.id
        response.self_hosted_model_family = cast(types_pb2.ModelFamily, model.family.value)
        response.self_hosted_model_endpoint = model.endpoint
        response.self_hosted_model_platform = cast(types_pb2.Platform, model.platform.value)
    return response


def _enum(enum_type: type[E], value: int, field_name: str) -> E:
    try:
        member = enum_type(value)
    except ValueError:
        member = None
    if member is None:
        names = ", ".join(m.name for m in enum_type)
        raise invalid_argument(field_name, f"{field_name} must be one of {names}; got {value}")
    return member


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _actor(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_METADATA_KEY:
            actor = str(value).strip()
            if len(actor) > MAX_ACTOR_LENGTH or not actor.isprintable():
                raise invalid_argument(
                    ACTOR_METADATA_KEY,
                    f"{ACTOR_METADATA_KEY} must be printable, at most {MAX_ACTOR_LENGTH} characters",
                )
            return actor or "unknown"
    return "unknown"


def _model_to_proto(model: SelfHostedModel) -> admin_pb2.SelfHostedModel:
    return admin_pb2.SelfHostedModel(
        id=model.id,
        name=model.name,
        family=cast(types_pb2.ModelFamily, model.family.value),
        platform=cast(types_pb2.Platform, model.platform.value),
        endpoint=model.endpoint,
        identifier=model.identifier,
        api_token_set=model.api_token_set,
        create_time=_timestamp(model.create_time),
        update_time=_timestamp(model.update_time),
    )


def _catalog_model(model: CatalogModel, deprecation: Deprecation | None = None) -> admin_pb2.CatalogModel:
    deprecation = deprecation or model.deprecation
    return admin_pb2.CatalogModel(
        identifier=model.identifier,
        name=model.name,
        provider=model.provider,
        cost_indicator=model.cost_indicator,
        max_context_tokens=model.max_context_tokens,
        deprecation_date=deprecation.deprecation_date if deprecation else "",
        removal_version=deprecation.removal_version if deprecation else "",
    )


def _selectable_models(catalog: Catalog, info: FeatureInfo) -> admin_pb2.SelectableModels:
    """A feature's models as ListSelectableModels shows them (deprecations for this feature win over global ones)."""

    def model(identifier: str) -> admin_pb2.CatalogModel:
        return _catalog_model(catalog.model(identifier), info.deprecated_models.get(identifier))

    return admin_pb2.SelectableModels(
        feature=info.name,
        title=info.title,
        default_model=model(info.default_model),
        selectable_models=[model(m) for m in info.selectable_models],
        beta_models=[model(m) for m in info.beta_models],
        compatible_families=_families(info),
        parent_feature=info.parent or "",
        unit_primitives=list(info.unit_primitives),
        default_model_group=info.default_model_group,
        default_models=[model(m) for m in info.default_models],
        deprecated_models=[model(m) for m in info.deprecated_models],
        user_selectable=info.user_selectable,
        team_only_models=[model(m) for m in info.team_only_models],
        models_for_tags=dict(info.models_for_tags),
    )


def _families(info: FeatureInfo) -> list[types_pb2.ModelFamily]:
    return [cast(types_pb2.ModelFamily, f.value) for f in sorted(info.compatible_families)]


def _gen_ai_provider(resolution: policy.Resolution) -> str:
    """OpenTelemetry's gen_ai.provider.name of the upstream that serves the resolution."""
    hosted = resolution.self_hosted_model
    if hosted is None:
        return "gitlab_ai_gateway"
    return {Platform.OPENAI_COMPATIBLE: "openai_compatible", Platform.AZURE_OPENAI: "azure_openai"}.get(
        hosted.platform, "other"
    )


def _picker_model(snapshot: Snapshot, identifier: str) -> routing_pb2.UserSelectableModel:
    model = snapshot.catalog.model(identifier)
    return routing_pb2.UserSelectableModel(
        identifier=identifier, name=model.name, provider=model.provider, cost_indicator=model.cost_indicator
    )


def user_choices_to_proto(
    snapshot: Snapshot, feature: str, choices: policy.UserChoices
) -> routing_pb2.ListUserSelectableModelsResponse:
    response = routing_pb2.ListUserSelectableModelsResponse(
        feature=feature,
        selectable_models=[_picker_model(snapshot, m) for m in choices.allowed],
        user_may_choose=choices.may_choose,
        choice_unavailable_reason=cast(types_pb2.UserSelection, choices.why_not.value),
        governing_namespace_id=choices.governing_namespace_id,
        candidate_namespace_ids=list(choices.candidate_namespace_ids),
        depends_on_default_namespace=choices.error_reason == policy.DEFAULT_NAMESPACE_REQUIRED,
        config_version=str(snapshot.config_version),
    )
    default = choices.default
    if default is not None:
        if default.self_hosted_model is not None:
            response.default_model.CopyFrom(
                routing_pb2.UserSelectableModel(identifier=default.model_identifier, name=default.model_name)
            )
        elif default.provider is not Provider.DISABLED:
            response.default_model.CopyFrom(_picker_model(snapshot, default.model_identifier))
            info = snapshot.catalog.features[feature]
            if default.gitlab_default and info.default_model_group:  # drawn from a load-balanced default
                response.default_model_group = info.default_model_group
    if choices.pinned_model:
        response.pinned_model.CopyFrom(_picker_model(snapshot, choices.pinned_model))
    return response


# ResolveModel's answers kept for the requests seen: the same few (user, feature, namespace) come back many times
# a second, and resolving plus building the response was a third of the sidecar's own CPU per call.
ANSWERS_KEPT = 4096


class _Answer:
    """policy.resolve's answer to one request and its response, valid while the snapshot (RoutingServicer.
    _answers_of) and the user's routing data are the very objects it was computed from: both are immutable and
    replaced on every change."""

    __slots__ = ("resolution", "response", "user")

    def __init__(
        self, user: UserRouting, resolution: policy.Resolution, response: routing_pb2.ResolveModelResponse
    ) -> None:
        self.user = user
        self.resolution = resolution
        self.response = response


class RoutingServicer(routing_pb2_grpc.RoutingServiceServicer):
    def __init__(
        self, state: ConfigState, completer: Completer, metrics: Metrics | None = None, log_prompts: bool = False
    ) -> None:
        self._state = state
        self._completer = completer
        self._metrics = metrics if metrics is not None else Metrics()
        self._log_prompts = log_prompts
        self._answers: dict[tuple[int, str, int, str], _Answer] = {}
        self._answers_of: Snapshot | None = None

    def _resolve(
        self,
        snapshot: Snapshot,
        user: UserRouting,
        request: routing_pb2.ResolveModelRequest | routing_pb2.CompleteRequest,
    ) -> policy.Resolution:
        """policy.resolve, counted here: the policy itself stays pure."""
        try:
            resolution = policy.resolve(
                snapshot, request.user_id, request.feature, request.root_namespace_id, user, request.user_selected_model
            )
        except DuoError as error:
            if error.reason == policy.DEFAULT_NAMESPACE_REQUIRED:
                self._metrics.default_namespace_required_for(request.feature)
            elif error.reason == policy.NO_MODEL_CONFIGURED:
                self._metrics.no_model_configured_for(request.feature)
            raise
        self._metrics.resolved(request.feature, resolution)
        return resolution

    async def ResolveModel(
        self, request: routing_pb2.ResolveModelRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.ResolveModelResponse:
        user = await self._state.user_routing(request.user_id)
        snapshot = self._state.snapshot
        if snapshot is not self._answers_of:
            self._answers.clear()  # an older snapshot's answers; kept, they would keep it alive too
            self._answers_of = snapshot
        key = (request.user_id, request.feature, request.root_namespace_id, request.user_selected_model)
        answer = self._answers.get(key)
        if answer is not None and answer.user is user:
            self._metrics.resolved(request.feature, answer.resolution)
            return answer.response  # shared: nothing modifies a response once returned
        resolution = self._resolve(snapshot, user, request)
        response = resolution_to_proto(resolution)
        if len(self._answers) >= ANSWERS_KEPT:
            self._answers.clear()  # the requests still coming back are answered again at once
        self._answers[key] = _Answer(user, resolution, response)
        return response

    async def ListUserSelectableModels(
        self, request: routing_pb2.ListUserSelectableModelsRequest, context: grpc.aio.ServicerContext
    ) -> routing_pb2.ListUserSelectableModelsResponse:
        user = await self._state.user_routing(request.user_id)
        snapshot = self._state.snapshot
        choices = policy.user_choices(snapshot, request.user_id, request.feature, request.root_namespace_id, user)
        return user_choices_to_proto(snapshot, request.feature, choices)

    async def Complete(
        self, request: routing_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[routing_pb2.CompleteResponse]:
        started = time.perf_counter()
        user = await self._state.user_routing(request.user_id)
        snapshot = self._state.snapshot
        resolution = self._resolve(snapshot, user, request)
        params = request.parameters
        work = completion_input(
            request.user_id,
            [(m.role, m.content) for m in request.messages],
            params.max_tokens,
            params.temperature if params.HasField("temperature") else None,
            list(params.stop_sequences),
            request.correlation_id or logs.correlation_id(),
        )
        logs.use_correlation_id(work.correlation_id)  # the upstream's X-Request-ID and our log lines agree
        target = self._completer.target(resolution, snapshot.catalog.features[request.feature], work)
        produced: list[str] | None = None
        if self._log_prompts:  # log.log_prompts: a debugging aid that logs user content
            produced = []
            log.debug("Complete prompt", extra={"prompt": [[m.role, m.content] for m in work.messages]})
        call = self._metrics.upstream_call(
            resolution.provider.name.lower(), resolution.model_identifier, _gen_ai_provider(resolution)
        )
        upstream_started = time.perf_counter()
        waited = 0.0  # time spent waiting on the upstream; the rest of the handler's time is the sidecar's
        first_token = True
        outcome, error_type = "ok", ""
        events = self._completer.stream(target)
        # The upstream request goes out while the route message is sent: that send takes a few hundred
        # microseconds, which the caller would otherwise wait on top of the upstream for its first token.
        first_event = asyncio.ensure_future(anext(events))
        try:
            yield routing_pb2.CompleteResponse(route=resolution_to_proto(resolution))
            next_event: Awaitable[Event] = first_event
            while True:
                before = time.perf_counter()
                try:
                    event = await next_event
                except StopAsyncIteration:
                    break
                finally:
                    waited += time.perf_counter() - before
                if isinstance(event, TextDelta):
                    if first_token:
                        first_token = False
                        call.first_token(time.perf_counter() - upstream_started)
                    if produced is not None:
                        produced.append(event.text)
                    yield routing_pb2.CompleteResponse(delta={"text": event.text})  # cheaper than TextDelta()
                else:
                    call.usage(event.input_tokens, event.output_tokens)
                    yield routing_pb2.CompleteResponse(
                        finished=routing_pb2.CompletionFinished(
                            finish_reason=event.finish_reason,
                            usage=routing_pb2.TokenUsage(
                                input_tokens=event.input_tokens,
                                output_tokens=event.output_tokens,
                                estimated=event.usage_estimated,
                            ),
                        )
                    )
                next_event = anext(events)
        except DuoError as error:
            outcome, error_type = error_outcome(error.reason, error.code.value)
            raise
        except BaseException as exc:
            outcome, error_type = interrupted_outcome(exc, context.time_remaining())
            raise
        finally:
            if not first_event.done():  # the caller left while the route was being sent
                first_event.cancel()
                await asyncio.wait((first_event,))  # the stream is no longer running: it can be closed
            elif not first_event.cancelled():
                first_event.exception()  # raised above, or not waited for: either way, seen
            await events.aclose()
            now = time.perf_counter()
            call.done(outcome, error_type, now - upstream_started, now - started, waited)
            if produced is not None:
                log.debug("Complete output", extra={"completion": "".join(produced), "outcome": outcome})


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self, control: AdminCommands, refresher: CatalogRefresher, completer: Completer, storage_backend: str
    ) -> None:
        self._control = control
        self._refresher = refresher
        self._completer = completer
        self._storage_backend = storage_backend
        self._start_time = time.time()

    # -- self-hosted models ---------------------------------------------------------------------

    def _model_input(self, model: admin_pb2.SelfHostedModel, mask: list[str] | None) -> SelfHostedModelInput:
        def needed(name: str) -> bool:  # mask: the checked paths (self_hosted_mask); None: every field
            return mask is None or name in mask

        return SelfHostedModelInput(
            name=model.name,
            family=_enum(ModelFamily, model.family, "self_hosted_model.family")
            if needed("family")
            else ModelFamily.GENERAL,
            platform=_enum(Platform, model.platform, "self_hosted_model.platform")
            if needed("platform")
            else Platform.OPENAI_COMPATIBLE,
            endpoint=model.endpoint,
            identifier=model.identifier,
            api_token=model.api_token,
        )

    async def CreateSelfHostedModel(
        self, request: admin_pb2.CreateSelfHostedModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateSelfHostedModelResponse:
        model, version = await self._control.create_self_hosted_model(
            _actor(context), self._model_input(request.self_hosted_model, None)
        )
        return admin_pb2.CreateSelfHostedModelResponse(
            self_hosted_model=_model_to_proto(model), config_version=str(version)
        )

    async def GetSelfHostedModel(
        self, request: admin_pb2.GetSelfHostedModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetSelfHostedModelResponse:
        model = self._control.get_self_hosted_model(request.id)
        return admin_pb2.GetSelfHostedModelResponse(self_hosted_model=_model_to_proto(model))

    async def ListSelfHostedModels(
        self, request: admin_pb2.ListSelfHostedModelsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListSelfHostedModelsResponse:
        self._control.require_deployment(SELF_HOSTED_MODELS)
        page, token = paginate(
            self._control.list_self_hosted_models(),
            lambda m: (m.name, m.id),
            request.page_size,
            request.page_token,
            "selfHostedModels",
            STR_PAIR_KEY,
        )
        return admin_pb2.ListSelfHostedModelsResponse(
            self_hosted_models=[_model_to_proto(m) for m in page], next_page_token=token
        )

    async def UpdateSelfHostedModel(
        self, request: admin_pb2.UpdateSelfHostedModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.UpdateSelfHostedModelResponse:
        mask = self_hosted_mask(request.update_mask.paths)
        model, version = await self._control.update_self_hosted_model(
            _actor(context),
            request.self_hosted_model.id,
            self._model_input(request.self_hosted_model, mask),
            mask,
        )
        return admin_pb2.UpdateSelfHostedModelResponse(
            self_hosted_model=_model_to_proto(model), config_version=str(version)
        )

    async def DeleteSelfHostedModel(
        self, request: admin_pb2.DeleteSelfHostedModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DeleteSelfHostedModelResponse:
        version = await self._control.delete_self_hosted_model(_actor(context), request.id)
        return admin_pb2.DeleteSelfHostedModelResponse(config_version=str(version))

    # -- feature settings -----------------------------------------------------------------------

    def _feature_setting(self, info: FeatureInfo) -> admin_pb2.FeatureSetting:
        setting, explicit = self._control.feature_setting(info)
        return admin_pb2.FeatureSetting(
            feature=info.name,
            title=info.title,
            provider=cast(admin_pb2.FeatureProvider, setting.provider.value),
            self_hosted_model_id=setting.self_hosted_model_id,
            compatible_families=_families(info),
            explicitly_set=explicit,
            no_model_configured=policy.instance_without_model(self._control.snapshot, info) is not None,
        )

    async def UpdateFeatureSetting(
        self, request: admin_pb2.UpdateFeatureSettingRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.UpdateFeatureSettingResponse:
        provider = _enum(FeatureProvider, request.provider, "provider")
        setting, version = await self._control.update_feature_setting(
            _actor(context), request.feature, provider, request.self_hosted_model_id
        )
        info = self._control.snapshot.catalog.features[setting.feature]
        return admin_pb2.UpdateFeatureSettingResponse(
            feature_setting=self._feature_setting(info), config_version=str(version)
        )

    async def ListFeatureSettings(
        self, request: admin_pb2.ListFeatureSettingsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListFeatureSettingsResponse:
        self._control.require_deployment(FEATURE_SETTINGS)
        features = list(self._control.snapshot.catalog.features.values())
        page, token = paginate(
            features, lambda f: f.name, request.page_size, request.page_token, "featureSettings", STR_KEY
        )
        return admin_pb2.ListFeatureSettingsResponse(
            feature_settings=[self._feature_setting(f) for f in page], next_page_token=token
        )

    # -- model selection ------------------------------------------------------------------------

    def _selection(self, info: FeatureInfo, pins: Mapping[str, str], namespace_id: int) -> admin_pb2.ModelSelection:
        """namespace_id 0: the instance's selection."""
        snapshot = self._control.snapshot
        choice = policy.choose(pins, info)
        own = pins.get(info.name, "")
        selection = admin_pb2.ModelSelection(
            feature=info.name,
            title=info.title,
            offered_model_ref=own,
            effective_model_identifier=choice.identifier,
            effective_model_name=snapshot.catalog.model(choice.identifier).name,
            default_model_identifier=info.default_model,
            pinned_model_unavailable=choice.pinned_model_unavailable,
            namespace_id=namespace_id,
            explicitly_set=bool(own),
        )
        if choice.pinned:
            deprecation = policy.pin_deprecation(snapshot.catalog, info, choice.identifier)
            if deprecation is not None:
                selection.pinned_model_deprecated = True
                selection.deprecation_removal_version = deprecation.removal_version
        elif info.default_model_group:  # each user gets one of the group's models
            selection.effective_model_identifier = info.default_model_group
            selection.effective_model_name = snapshot.catalog.model(info.default_model_group).name
        if not namespace_id:
            _instance_reachability(selection, snapshot, info, choice)
        self._add_allowlist(selection, info, namespace_id)
        return selection

    def _add_allowlist(self, selection: admin_pb2.ModelSelection, info: FeatureInfo, namespace_id: int) -> None:
        """User model selection at the scope: whether users may choose, among which models, and the allowlist."""
        snapshot = self._control.snapshot
        options = (
            policy.namespace_options(snapshot, namespace_id, info)
            if namespace_id
            else policy.instance_options(snapshot, info)
        )
        selection.user_selectable = info.user_selectable
        selection.hard_pin = options.why_not is UserSelection.IGNORED_PINNED
        if not info.user_selectable:
            return
        refs = options.allowlist or ()
        selection.allowlist.CopyFrom(
            admin_pb2.ModelAllowlist(
                enabled=options.allowlist is not None,
                model_refs=list(refs),
                allowed_model_identifiers=list(policy.allowed_models(options, info)),
                stale_model_refs=list(policy.stale_refs(refs, info)),
            )
        )

    def _selection_update(self, update: SelectionUpdate, response: PinResponse) -> PinResponse:
        """Fills the fields both Update*ModelSelection responses share."""
        features = self._control.snapshot.catalog.features
        response.model_selection.CopyFrom(self._selection(update.info, update.pins, update.namespace_id))
        response.config_version = str(update.config_version)
        response.sub_feature_selections.extend(
            self._selection(features[name], update.pins, update.namespace_id) for name in update.sub_features
        )
        response.skipped_sub_features.extend(
            admin_pb2.SkippedSubFeature(feature=s.feature, reason=s.reason, message=s.message) for s in update.skipped
        )
        response.impact.CopyFrom(_impact_to_proto(update.impact))
        response.validate_only = update.validate_only
        return response

    async def UpdateInstanceModelSelection(
        self, request: admin_pb2.UpdateInstanceModelSelectionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.UpdateInstanceModelSelectionResponse:
        update = await self._control.update_instance_selection_with(
            _actor(context),
            request.feature,
            request.offered_model_ref,
            validate_only=request.validate_only,
            apply_to_sub_features=request.apply_to_sub_features,
        )
        return self._selection_update(update, admin_pb2.UpdateInstanceModelSelectionResponse())

    async def ListInstanceModelSelections(
        self, request: admin_pb2.ListInstanceModelSelectionsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListInstanceModelSelectionsResponse:
        self._control.require_deployment(INSTANCE_SELECTIONS)
        snapshot = self._control.snapshot
        page, token = paginate(
            list(snapshot.catalog.features.values()),
            lambda f: f.name,
            request.page_size,
            request.page_token,
            "instanceModelSelections",
            STR_KEY,
        )
        return admin_pb2.ListInstanceModelSelectionsResponse(
            model_selections=[self._selection(f, snapshot.instance_pins, 0) for f in page],
            next_page_token=token,
        )

    async def UpdateNamespaceModelSelection(
        self, request: admin_pb2.UpdateNamespaceModelSelectionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.UpdateNamespaceModelSelectionResponse:
        update = await self._control.update_namespace_selection_with(
            _actor(context),
            request.namespace_id,
            request.feature,
            request.offered_model_ref,
            validate_only=request.validate_only,
            apply_to_sub_features=request.apply_to_sub_features,
        )
        return self._selection_update(update, admin_pb2.UpdateNamespaceModelSelectionResponse())

    async def ListNamespaceModelSelections(
        self, request: admin_pb2.ListNamespaceModelSelectionsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListNamespaceModelSelectionsResponse:
        self._control.require_deployment(NAMESPACE_SELECTIONS)
        if request.namespace_id <= 0:
            raise invalid_argument("namespace_id", f"namespace_id must be positive, got {request.namespace_id}")
        snapshot = self._control.snapshot
        pins: Mapping[str, str] = snapshot.namespace_pins.get(request.namespace_id, {})
        page, token = paginate(
            list(snapshot.catalog.features.values()),
            lambda f: f.name,
            request.page_size,
            request.page_token,
            f"namespaceModelSelections/{request.namespace_id}",
            STR_KEY,
        )
        return admin_pb2.ListNamespaceModelSelectionsResponse(
            model_selections=[self._selection(f, pins, request.namespace_id) for f in page],
            next_page_token=token,
        )

    def _allowlist_response(
        self, info: FeatureInfo, namespace_id: int, update: AllowlistUpdate
    ) -> tuple[admin_pb2.ModelSelection, list[admin_pb2.DroppedModelRef], str]:
        snapshot = self._control.snapshot
        pins: Mapping[str, str] = (
            snapshot.namespace_pins.get(namespace_id, {}) if namespace_id else snapshot.instance_pins
        )
        dropped = [
            admin_pb2.DroppedModelRef(model_ref=d.model_ref, reason=d.reason, message=d.message) for d in update.dropped
        ]
        return self._selection(info, pins, namespace_id), dropped, str(update.config_version)

    async def UpdateNamespaceModelAllowlist(
        self, request: admin_pb2.UpdateNamespaceModelAllowlistRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.UpdateNamespaceModelAllowlistResponse:
        if request.namespace_id <= 0:
            raise invalid_argument("namespace_id", f"namespace_id must be positive, got {request.namespace_id}")
        update = await self._control.update_allowlist(
            _actor(context), request.namespace_id, request.feature, request.enabled, list(request.model_refs)
        )
        info = self._control.snapshot.catalog.features[request.feature]
        selection, dropped, version = self._allowlist_response(info, request.namespace_id, update)
        return admin_pb2.UpdateNamespaceModelAllowlistResponse(
            model_selection=selection, dropped_model_refs=dropped, config_version=version
        )

    async def UpdateInstanceModelAllowlist(
        self, request: admin_pb2.UpdateInstanceModelAllowlistRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.UpdateInstanceModelAllowlistResponse:
        update = await self._control.update_allowlist(
            _actor(context), 0, request.feature, request.enabled, list(request.model_refs)
        )
        info = self._control.snapshot.catalog.features[request.feature]
        selection, dropped, version = self._allowlist_response(info, 0, update)
        return admin_pb2.UpdateInstanceModelAllowlistResponse(
            model_selection=selection, dropped_model_refs=dropped, config_version=version
        )

    # -- catalog --------------------------------------------------------------------------------

    async def ListSelectableModels(
        self, request: admin_pb2.ListSelectableModelsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListSelectableModelsResponse:
        catalog = self._control.snapshot.catalog
        if request.feature:
            features = [policy.feature_info(self._control.snapshot, request.feature)]
        else:
            features = list(catalog.features.values())
        page, token = paginate(
            features,
            lambda f: f.name,
            request.page_size,
            request.page_token,
            f"selectableModels/{request.feature}",
            STR_KEY,
        )
        return admin_pb2.ListSelectableModelsResponse(
            features=[_selectable_models(catalog, f) for f in page],
            next_page_token=token,
            catalog_version=catalog.version,
        )

    async def RefreshCatalog(
        self, request: admin_pb2.RefreshCatalogRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RefreshCatalogResponse:
        result = await self._refresher.refresh()
        return admin_pb2.RefreshCatalogResponse(
            catalog_version=result.catalog_version, changed=result.changed, unavailable_pins=result.unavailable_pins
        )

    async def TestSelfHostedModel(
        self, request: admin_pb2.TestSelfHostedModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.TestSelfHostedModelResponse:
        model = self._control.get_self_hosted_model(request.id)
        result = await self._completer.test_model(model)
        return admin_pb2.TestSelfHostedModelResponse(
            success=result.success,
            latency_ms=result.latency_ms,
            http_status=result.http_status,
            error_message=result.error_message,
            sample_output=result.sample_output,
        )

    # -- seats and defaults ---------------------------------------------------------------------

    async def SyncSeatAssignments(
        self,
        request_iterator: AsyncIterator[admin_pb2.SyncSeatAssignmentsRequest],
        context: grpc.aio.ServicerContext,
    ) -> admin_pb2.SyncSeatAssignmentsResponse:
        assigned = removed = unchanged = 0
        version = self._control.snapshot.config_version
        actor = _actor(context)
        async for batch in request_iterator:
            result = await self._control.sync_seats(
                actor, [SeatChange(a.user_id, a.namespace_id, a.assigned) for a in batch.assignments]
            )
            assigned += result.assigned
            removed += result.removed
            unchanged += result.unchanged
            version = result.config_version
        return admin_pb2.SyncSeatAssignmentsResponse(
            assigned_count=assigned,
            removed_count=removed,
            unchanged_count=unchanged,
            config_version=str(version),
        )

    async def ListSeatAssignments(
        self, request: admin_pb2.ListSeatAssignmentsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListSeatAssignmentsResponse:
        rows, token = await self._control.list_seat_assignments(
            request.user_id, request.namespace_id, page_size(request.page_size), request.page_token
        )
        return admin_pb2.ListSeatAssignmentsResponse(
            seat_assignments=[admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=True) for u, n in rows],
            next_page_token=token,
        )

    async def SetUserDefaultNamespace(
        self, request: admin_pb2.SetUserDefaultNamespaceRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetUserDefaultNamespaceResponse:
        version = await self._control.set_default_namespace(_actor(context), request.user_id, request.namespace_id)
        return admin_pb2.SetUserDefaultNamespaceResponse(
            default_namespace_id=request.namespace_id, config_version=str(version)
        )

    async def GetUserRoutingStatus(
        self, request: admin_pb2.GetUserRoutingStatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetUserRoutingStatusResponse:
        if request.user_id <= 0:
            raise invalid_argument("user_id", f"user_id must be positive, got {request.user_id}")
        user = await self._control.state.user_routing(request.user_id)
        snapshot = self._control.snapshot
        defaults = policy.user_defaults(user)
        features = [
            admin_pb2.FeatureRoutingStatus(
                feature=status.feature,
                resolution=resolution_to_proto(status.resolution) if status.resolution else None,
                error_reason=status.error_reason,
                error_message=status.error_message,
                user_selectable=status.user_selectable,
                user_may_choose=bool(status.allowed_choices),
                user_selectable_model_identifiers=status.allowed_choices,
            )
            for status in policy.routing_status(snapshot, request.user_id, user, request.user_selected_model)
        ]
        return admin_pb2.GetUserRoutingStatusResponse(
            user_id=request.user_id,
            seat_namespace_ids=sorted(defaults.seats),
            explicit_default_namespace_id=defaults.explicit_default,
            explicit_default_valid=defaults.explicit_default_valid,
            effective_default_namespace_id=defaults.effective_default,
            default_namespace_prompt=defaults.prompt,
            features=features,
        )

    # -- audit and info -------------------------------------------------------------------------

    async def ListAuditEvents(
        self, request: admin_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAuditEventsResponse:
        events, token = await self._control.list_audit_events(
            request.resource_prefix, page_size(request.page_size), request.page_token
        )
        return admin_pb2.ListAuditEventsResponse(
            audit_events=[_audit_to_proto(e) for e in events], next_page_token=token
        )

    async def GetServerInfo(
        self, request: admin_pb2.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetServerInfoResponse:
        snapshot = self._control.snapshot
        start = timestamp_pb2.Timestamp()
        start.FromNanoseconds(int(self._start_time * 1e9))
        return admin_pb2.GetServerInfoResponse(
            version=__version__,
            deployment_type=cast(admin_pb2.DeploymentType, snapshot.deployment_type.value),
            catalog_version=snapshot.catalog.version,
            config_version=str(snapshot.config_version),
            storage_backend=self._storage_backend,
            start_time=start,
            self_hosted_ai_gateway=snapshot.options.self_hosted_ai_gateway,
            offline_license=snapshot.options.offline_license,
        )


def _instance_reachability(
    selection: admin_pb2.ModelSelection, snapshot: Snapshot, info: FeatureInfo, choice: policy.Choice
) -> None:
    """Hybrid and offline instances: no effective model when nothing serves the feature; an offline license
    reports a stored pin as unreachable (kept, never used)."""
    if snapshot.options.gitlab_default_reachable:
        return
    if snapshot.options.offline_license and (choice.pinned or choice.pinned_model_unavailable):
        selection.pinned_model_unreachable = True
    if policy.no_model_configured(snapshot.options, info, choice, snapshot.instance_pins) is not None:
        selection.effective_model_identifier = ""
        selection.effective_model_name = ""


def _impact_to_proto(impact: SelectionImpact) -> admin_pb2.SelectionImpact:
    return admin_pb2.SelectionImpact(
        features=list(impact.features),
        model_before=impact.model_before,
        model_after=impact.model_after,
        no_context_users_changed=impact.no_context_users_changed,
        users_newly_requiring_default_namespace=impact.users_newly_requiring_default_namespace,
        seat_holders=impact.seat_holders,
    )


def _audit_to_proto(event: AuditEvent) -> admin_pb2.AuditEvent:
    return admin_pb2.AuditEvent(
        id=event.id,
        time=_timestamp(event.time),
        actor=event.actor,
        action=event.action,
        resource=event.resource,
        before_json=event.before_json,
        after_json=event.after_json,
        config_version=str(event.config_version),
    )
