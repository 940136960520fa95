import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gitlab.duo.routing.v1 import routing_pb2 as _routing_pb2
from gitlab.duo.routing.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureProvider(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_PROVIDER_UNSPECIFIED: _ClassVar[FeatureProvider]
    FEATURE_PROVIDER_VENDORED: _ClassVar[FeatureProvider]
    FEATURE_PROVIDER_SELF_HOSTED: _ClassVar[FeatureProvider]
    FEATURE_PROVIDER_DISABLED: _ClassVar[FeatureProvider]

class DeploymentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_TYPE_UNSPECIFIED: _ClassVar[DeploymentType]
    DEPLOYMENT_TYPE_GITLAB_COM: _ClassVar[DeploymentType]
    DEPLOYMENT_TYPE_DEDICATED: _ClassVar[DeploymentType]
    DEPLOYMENT_TYPE_SELF_MANAGED: _ClassVar[DeploymentType]
FEATURE_PROVIDER_UNSPECIFIED: FeatureProvider
FEATURE_PROVIDER_VENDORED: FeatureProvider
FEATURE_PROVIDER_SELF_HOSTED: FeatureProvider
FEATURE_PROVIDER_DISABLED: FeatureProvider
DEPLOYMENT_TYPE_UNSPECIFIED: DeploymentType
DEPLOYMENT_TYPE_GITLAB_COM: DeploymentType
DEPLOYMENT_TYPE_DEDICATED: DeploymentType
DEPLOYMENT_TYPE_SELF_MANAGED: DeploymentType

class SelfHostedModel(_message.Message):
    __slots__ = ("id", "name", "family", "platform", "endpoint", "identifier", "api_token", "api_token_set", "create_time", "update_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    API_TOKEN_FIELD_NUMBER: _ClassVar[int]
    API_TOKEN_SET_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    family: _types_pb2.ModelFamily
    platform: _types_pb2.Platform
    endpoint: str
    identifier: str
    api_token: str
    api_token_set: bool
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., family: _Optional[_Union[_types_pb2.ModelFamily, str]] = ..., platform: _Optional[_Union[_types_pb2.Platform, str]] = ..., endpoint: _Optional[str] = ..., identifier: _Optional[str] = ..., api_token: _Optional[str] = ..., api_token_set: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateSelfHostedModelRequest(_message.Message):
    __slots__ = ("self_hosted_model",)
    SELF_HOSTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    self_hosted_model: SelfHostedModel
    def __init__(self, self_hosted_model: _Optional[_Union[SelfHostedModel, _Mapping]] = ...) -> None: ...

class CreateSelfHostedModelResponse(_message.Message):
    __slots__ = ("self_hosted_model", "config_version")
    SELF_HOSTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    self_hosted_model: SelfHostedModel
    config_version: str
    def __init__(self, self_hosted_model: _Optional[_Union[SelfHostedModel, _Mapping]] = ..., config_version: _Optional[str] = ...) -> None: ...

class GetSelfHostedModelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetSelfHostedModelResponse(_message.Message):
    __slots__ = ("self_hosted_model",)
    SELF_HOSTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    self_hosted_model: SelfHostedModel
    def __init__(self, self_hosted_model: _Optional[_Union[SelfHostedModel, _Mapping]] = ...) -> None: ...

class ListSelfHostedModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSelfHostedModelsResponse(_message.Message):
    __slots__ = ("self_hosted_models", "next_page_token")
    SELF_HOSTED_MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    self_hosted_models: _containers.RepeatedCompositeFieldContainer[SelfHostedModel]
    next_page_token: str
    def __init__(self, self_hosted_models: _Optional[_Iterable[_Union[SelfHostedModel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateSelfHostedModelRequest(_message.Message):
    __slots__ = ("self_hosted_model", "update_mask")
    SELF_HOSTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    self_hosted_model: SelfHostedModel
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, self_hosted_model: _Optional[_Union[SelfHostedModel, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateSelfHostedModelResponse(_message.Message):
    __slots__ = ("self_hosted_model", "config_version")
    SELF_HOSTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    self_hosted_model: SelfHostedModel
    config_version: str
    def __init__(self, self_hosted_model: _Optional[_Union[SelfHostedModel, _Mapping]] = ..., config_version: _Optional[str] = ...) -> None: ...

class DeleteSelfHostedModelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteSelfHostedModelResponse(_message.Message):
    __slots__ = ("config_version",)
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    config_version: str
    def __init__(self, config_version: _Optional[str] = ...) -> None: ...

class TestSelfHostedModelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class TestSelfHostedModelResponse(_message.Message):
    __slots__ = ("success", "latency_ms", "http_status", "error_message", "sample_output")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    success: bool
    latency_ms: float
    http_status: int
    error_message: str
    sample_output: str
    def __init__(self, success: _Optional[bool] = ..., latency_ms: _Optional[float] = ..., http_status: _Optional[int] = ..., error_message: _Optional[str] = ..., sample_output: _Optional[str] = ...) -> None: ...

class FeatureSetting(_message.Message):
    __slots__ = ("feature", "title", "provider", "self_hosted_model_id", "compatible_families", "explicitly_set", "no_model_configured")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SELF_HOSTED_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    COMPATIBLE_FAMILIES_FIELD_NUMBER: _ClassVar[int]
    EXPLICITLY_SET_FIELD_NUMBER: _ClassVar[int]
    NO_MODEL_CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    feature: str
    title: str
    provider: FeatureProvider
    self_hosted_model_id: str
    compatible_families: _containers.RepeatedScalarFieldContainer[_types_pb2.ModelFamily]
    explicitly_set: bool
    no_model_configured: bool
    def __init__(self, feature: _Optional[str] = ..., title: _Optional[str] = ..., provider: _Optional[_Union[FeatureProvider, str]] = ..., self_hosted_model_id: _Optional[str] = ..., compatible_families: _Optional[_Iterable[_Union[_types_pb2.ModelFamily, str]]] = ..., explicitly_set: _Optional[bool] = ..., no_model_configured: _Optional[bool] = ...) -> None: ...

class UpdateFeatureSettingRequest(_message.Message):
    __slots__ = ("feature", "provider", "self_hosted_model_id")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SELF_HOSTED_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    feature: str
    provider: FeatureProvider
    self_hosted_model_id: str
    def __init__(self, feature: _Optional[str] = ..., provider: _Optional[_Union[FeatureProvider, str]] = ..., self_hosted_model_id: _Optional[str] = ...) -> None: ...

class UpdateFeatureSettingResponse(_message.Message):
    __slots__ = ("feature_setting", "config_version")
    FEATURE_SETTING_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    feature_setting: FeatureSetting
    config_version: str
    def __init__(self, feature_setting: _Optional[_Union[FeatureSetting, _Mapping]] = ..., config_version: _Optional[str] = ...) -> None: ...

class ListFeatureSettingsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFeatureSettingsResponse(_message.Message):
    __slots__ = ("feature_settings", "next_page_token")
    FEATURE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    feature_settings: _containers.RepeatedCompositeFieldContainer[FeatureSetting]
    next_page_token: str
    def __init__(self, feature_settings: _Optional[_Iterable[_Union[FeatureSetting, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ModelSelection(_message.Message):
    __slots__ = ("feature", "title", "offered_model_ref", "effective_model_identifier", "effective_model_name", "default_model_identifier", "pinned_model_unavailable", "namespace_id", "explicitly_set", "allowlist", "pinned_model_deprecated", "deprecation_removal_version", "user_selectable", "hard_pin", "pinned_model_unreachable")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    OFFERED_MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_MODEL_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    PINNED_MODEL_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPLICITLY_SET_FIELD_NUMBER: _ClassVar[int]
    ALLOWLIST_FIELD_NUMBER: _ClassVar[int]
    PINNED_MODEL_DEPRECATED_FIELD_NUMBER: _ClassVar[int]
    DEPRECATION_REMOVAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_SELECTABLE_FIELD_NUMBER: _ClassVar[int]
    HARD_PIN_FIELD_NUMBER: _ClassVar[int]
    PINNED_MODEL_UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    feature: str
    title: str
    offered_model_ref: str
    effective_model_identifier: str
    effective_model_name: str
    default_model_identifier: str
    pinned_model_unavailable: bool
    namespace_id: int
    explicitly_set: bool
    allowlist: ModelAllowlist
    pinned_model_deprecated: bool
    deprecation_removal_version: str
    user_selectable: bool
    hard_pin: bool
    pinned_model_unreachable: bool
    def __init__(self, feature: _Optional[str] = ..., title: _Optional[str] = ..., offered_model_ref: _Optional[str] = ..., effective_model_identifier: _Optional[str] = ..., effective_model_name: _Optional[str] = ..., default_model_identifier: _Optional[str] = ..., pinned_model_unavailable: _Optional[bool] = ..., namespace_id: _Optional[int] = ..., explicitly_set: _Optional[bool] = ..., allowlist: _Optional[_Union[ModelAllowlist, _Mapping]] = ..., pinned_model_deprecated: _Optional[bool] = ..., deprecation_removal_version: _Optional[str] = ..., user_selectable: _Optional[bool] = ..., hard_pin: _Optional[bool] = ..., pinned_model_unreachable: _Optional[bool] = ...) -> None: ...

class ModelAllowlist(_message.Message):
    __slots__ = ("enabled", "model_refs", "allowed_model_identifiers", "stale_model_refs")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MODEL_REFS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODEL_IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    STALE_MODEL_REFS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    model_refs: _containers.RepeatedScalarFieldContainer[str]
    allowed_model_identifiers: _containers.RepeatedScalarFieldContainer[str]
    stale_model_refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, enabled: _Optional[bool] = ..., model_refs: _Optional[_Iterable[str]] = ..., allowed_model_identifiers: _Optional[_Iterable[str]] = ..., stale_model_refs: _Optional[_Iterable[str]] = ...) -> None: ...

class DroppedModelRef(_message.Message):
    __slots__ = ("model_ref", "reason", "message")
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    model_ref: str
    reason: str
    message: str
    def __init__(self, model_ref: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class UpdateNamespaceModelAllowlistRequest(_message.Message):
    __slots__ = ("namespace_id", "feature", "enabled", "model_refs")
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MODEL_REFS_FIELD_NUMBER: _ClassVar[int]
    namespace_id: int
    feature: str
    enabled: bool
    model_refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace_id: _Optional[int] = ..., feature: _Optional[str] = ..., enabled: _Optional[bool] = ..., model_refs: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateNamespaceModelAllowlistResponse(_message.Message):
    __slots__ = ("model_selection", "dropped_model_refs", "config_version")
    MODEL_SELECTION_FIELD_NUMBER: _ClassVar[int]
    DROPPED_MODEL_REFS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_selection: ModelSelection
    dropped_model_refs: _containers.RepeatedCompositeFieldContainer[DroppedModelRef]
    config_version: str
    def __init__(self, model_selection: _Optional[_Union[ModelSelection, _Mapping]] = ..., dropped_model_refs: _Optional[_Iterable[_Union[DroppedModelRef, _Mapping]]] = ..., config_version: _Optional[str] = ...) -> None: ...

class UpdateInstanceModelAllowlistRequest(_message.Message):
    __slots__ = ("feature", "enabled", "model_refs")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MODEL_REFS_FIELD_NUMBER: _ClassVar[int]
    feature: str
    enabled: bool
    model_refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, feature: _Optional[str] = ..., enabled: _Optional[bool] = ..., model_refs: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateInstanceModelAllowlistResponse(_message.Message):
    __slots__ = ("model_selection", "dropped_model_refs", "config_version")
    MODEL_SELECTION_FIELD_NUMBER: _ClassVar[int]
    DROPPED_MODEL_REFS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_selection: ModelSelection
    dropped_model_refs: _containers.RepeatedCompositeFieldContainer[DroppedModelRef]
    config_version: str
    def __init__(self, model_selection: _Optional[_Union[ModelSelection, _Mapping]] = ..., dropped_model_refs: _Optional[_Iterable[_Union[DroppedModelRef, _Mapping]]] = ..., config_version: _Optional[str] = ...) -> None: ...

class SkippedSubFeature(_message.Message):
    __slots__ = ("feature", "reason", "message")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    feature: str
    reason: str
    message: str
    def __init__(self, feature: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SelectionImpact(_message.Message):
    __slots__ = ("features", "model_before", "model_after", "no_context_users_changed", "users_newly_requiring_default_namespace", "seat_holders")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MODEL_BEFORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_AFTER_FIELD_NUMBER: _ClassVar[int]
    NO_CONTEXT_USERS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    USERS_NEWLY_REQUIRING_DEFAULT_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SEAT_HOLDERS_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[str]
    model_before: str
    model_after: str
    no_context_users_changed: int
    users_newly_requiring_default_namespace: int
    seat_holders: int
    def __init__(self, features: _Optional[_Iterable[str]] = ..., model_before: _Optional[str] = ..., model_after: _Optional[str] = ..., no_context_users_changed: _Optional[int] = ..., users_newly_requiring_default_namespace: _Optional[int] = ..., seat_holders: _Optional[int] = ...) -> None: ...

class UpdateInstanceModelSelectionRequest(_message.Message):
    __slots__ = ("feature", "offered_model_ref", "validate_only", "apply_to_sub_features")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    OFFERED_MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    APPLY_TO_SUB_FEATURES_FIELD_NUMBER: _ClassVar[int]
    feature: str
    offered_model_ref: str
    validate_only: bool
    apply_to_sub_features: bool
    def __init__(self, feature: _Optional[str] = ..., offered_model_ref: _Optional[str] = ..., validate_only: _Optional[bool] = ..., apply_to_sub_features: _Optional[bool] = ...) -> None: ...

class UpdateInstanceModelSelectionResponse(_message.Message):
    __slots__ = ("model_selection", "config_version", "sub_feature_selections", "skipped_sub_features", "impact", "validate_only")
    MODEL_SELECTION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUB_FEATURE_SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_SUB_FEATURES_FIELD_NUMBER: _ClassVar[int]
    IMPACT_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    model_selection: ModelSelection
    config_version: str
    sub_feature_selections: _containers.RepeatedCompositeFieldContainer[ModelSelection]
    skipped_sub_features: _containers.RepeatedCompositeFieldContainer[SkippedSubFeature]
    impact: SelectionImpact
    validate_only: bool
    def __init__(self, model_selection: _Optional[_Union[ModelSelection, _Mapping]] = ..., config_version: _Optional[str] = ..., sub_feature_selections: _Optional[_Iterable[_Union[ModelSelection, _Mapping]]] = ..., skipped_sub_features: _Optional[_Iterable[_Union[SkippedSubFeature, _Mapping]]] = ..., impact: _Optional[_Union[SelectionImpact, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class ListInstanceModelSelectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInstanceModelSelectionsResponse(_message.Message):
    __slots__ = ("model_selections", "next_page_token")
    MODEL_SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_selections: _containers.RepeatedCompositeFieldContainer[ModelSelection]
    next_page_token: str
    def __init__(self, model_selections: _Optional[_Iterable[_Union[ModelSelection, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateNamespaceModelSelectionRequest(_message.Message):
    __slots__ = ("namespace_id", "feature", "offered_model_ref", "validate_only", "apply_to_sub_features")
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    OFFERED_MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    APPLY_TO_SUB_FEATURES_FIELD_NUMBER: _ClassVar[int]
    namespace_id: int
    feature: str
    offered_model_ref: str
    validate_only: bool
    apply_to_sub_features: bool
    def __init__(self, namespace_id: _Optional[int] = ..., feature: _Optional[str] = ..., offered_model_ref: _Optional[str] = ..., validate_only: _Optional[bool] = ..., apply_to_sub_features: _Optional[bool] = ...) -> None: ...

class UpdateNamespaceModelSelectionResponse(_message.Message):
    __slots__ = ("model_selection", "config_version", "sub_feature_selections", "skipped_sub_features", "impact", "validate_only")
    MODEL_SELECTION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUB_FEATURE_SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_SUB_FEATURES_FIELD_NUMBER: _ClassVar[int]
    IMPACT_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    model_selection: ModelSelection
    config_version: str
    sub_feature_selections: _containers.RepeatedCompositeFieldContainer[ModelSelection]
    skipped_sub_features: _containers.RepeatedCompositeFieldContainer[SkippedSubFeature]
    impact: SelectionImpact
    validate_only: bool
    def __init__(self, model_selection: _Optional[_Union[ModelSelection, _Mapping]] = ..., config_version: _Optional[str] = ..., sub_feature_selections: _Optional[_Iterable[_Union[ModelSelection, _Mapping]]] = ..., skipped_sub_features: _Optional[_Iterable[_Union[SkippedSubFeature, _Mapping]]] = ..., impact: _Optional[_Union[SelectionImpact, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class ListNamespaceModelSelectionsRequest(_message.Message):
    __slots__ = ("namespace_id", "page_size", "page_token")
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace_id: int
    page_size: int
    page_token: str
    def __init__(self, namespace_id: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNamespaceModelSelectionsResponse(_message.Message):
    __slots__ = ("model_selections", "next_page_token")
    MODEL_SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_selections: _containers.RepeatedCompositeFieldContainer[ModelSelection]
    next_page_token: str
    def __init__(self, model_selections: _Optional[_Iterable[_Union[ModelSelection, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CatalogModel(_message.Message):
    __slots__ = ("identifier", "name", "provider", "cost_indicator", "deprecation_date", "removal_version", "max_context_tokens")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    COST_INDICATOR_FIELD_NUMBER: _ClassVar[int]
    DEPRECATION_DATE_FIELD_NUMBER: _ClassVar[int]
    REMOVAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    identifier: str
    name: str
    provider: str
    cost_indicator: str
    deprecation_date: str
    removal_version: str
    max_context_tokens: int
    def __init__(self, identifier: _Optional[str] = ..., name: _Optional[str] = ..., provider: _Optional[str] = ..., cost_indicator: _Optional[str] = ..., deprecation_date: _Optional[str] = ..., removal_version: _Optional[str] = ..., max_context_tokens: _Optional[int] = ...) -> None: ...

class SelectableModels(_message.Message):
    __slots__ = ("feature", "title", "default_model", "selectable_models", "beta_models", "compatible_families", "parent_feature", "unit_primitives", "default_model_group", "default_models", "deprecated_models", "user_selectable", "team_only_models", "models_for_tags")
    class ModelsForTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    SELECTABLE_MODELS_FIELD_NUMBER: _ClassVar[int]
    BETA_MODELS_FIELD_NUMBER: _ClassVar[int]
    COMPATIBLE_FAMILIES_FIELD_NUMBER: _ClassVar[int]
    PARENT_FEATURE_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRIMITIVES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_GROUP_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODELS_FIELD_NUMBER: _ClassVar[int]
    DEPRECATED_MODELS_FIELD_NUMBER: _ClassVar[int]
    USER_SELECTABLE_FIELD_NUMBER: _ClassVar[int]
    TEAM_ONLY_MODELS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FOR_TAGS_FIELD_NUMBER: _ClassVar[int]
    feature: str
    title: str
    default_model: CatalogModel
    selectable_models: _containers.RepeatedCompositeFieldContainer[CatalogModel]
    beta_models: _containers.RepeatedCompositeFieldContainer[CatalogModel]
    compatible_families: _containers.RepeatedScalarFieldContainer[_types_pb2.ModelFamily]
    parent_feature: str
    unit_primitives: _containers.RepeatedScalarFieldContainer[str]
    default_model_group: str
    default_models: _containers.RepeatedCompositeFieldContainer[CatalogModel]
    deprecated_models: _containers.RepeatedCompositeFieldContainer[CatalogModel]
    user_selectable: bool
    team_only_models: _containers.RepeatedCompositeFieldContainer[CatalogModel]
    models_for_tags: _containers.ScalarMap[str, str]
    def __init__(self, feature: _Optional[str] = ..., title: _Optional[str] = ..., default_model: _Optional[_Union[CatalogModel, _Mapping]] = ..., selectable_models: _Optional[_Iterable[_Union[CatalogModel, _Mapping]]] = ..., beta_models: _Optional[_Iterable[_Union[CatalogModel, _Mapping]]] = ..., compatible_families: _Optional[_Iterable[_Union[_types_pb2.ModelFamily, str]]] = ..., parent_feature: _Optional[str] = ..., unit_primitives: _Optional[_Iterable[str]] = ..., default_model_group: _Optional[str] = ..., default_models: _Optional[_Iterable[_Union[CatalogModel, _Mapping]]] = ..., deprecated_models: _Optional[_Iterable[_Union[CatalogModel, _Mapping]]] = ..., user_selectable: _Optional[bool] = ..., team_only_models: _Optional[_Iterable[_Union[CatalogModel, _Mapping]]] = ..., models_for_tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListSelectableModelsRequest(_message.Message):
    __slots__ = ("feature", "page_size", "page_token")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    feature: str
    page_size: int
    page_token: str
    def __init__(self, feature: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSelectableModelsResponse(_message.Message):
    __slots__ = ("features", "next_page_token", "catalog_version")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[SelectableModels]
    next_page_token: str
    catalog_version: str
    def __init__(self, features: _Optional[_Iterable[_Union[SelectableModels, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., catalog_version: _Optional[str] = ...) -> None: ...

class RefreshCatalogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RefreshCatalogResponse(_message.Message):
    __slots__ = ("catalog_version", "changed", "unavailable_pins")
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_PINS_FIELD_NUMBER: _ClassVar[int]
    catalog_version: str
    changed: bool
    unavailable_pins: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, catalog_version: _Optional[str] = ..., changed: _Optional[bool] = ..., unavailable_pins: _Optional[_Iterable[str]] = ...) -> None: ...

class SeatAssignment(_message.Message):
    __slots__ = ("user_id", "namespace_id", "assigned")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    namespace_id: int
    assigned: bool
    def __init__(self, user_id: _Optional[int] = ..., namespace_id: _Optional[int] = ..., assigned: _Optional[bool] = ...) -> None: ...

class SyncSeatAssignmentsRequest(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[SeatAssignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[SeatAssignment, _Mapping]]] = ...) -> None: ...

class SyncSeatAssignmentsResponse(_message.Message):
    __slots__ = ("assigned_count", "removed_count", "unchanged_count", "config_version")
    ASSIGNED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REMOVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    assigned_count: int
    removed_count: int
    unchanged_count: int
    config_version: str
    def __init__(self, assigned_count: _Optional[int] = ..., removed_count: _Optional[int] = ..., unchanged_count: _Optional[int] = ..., config_version: _Optional[str] = ...) -> None: ...

class ListSeatAssignmentsRequest(_message.Message):
    __slots__ = ("user_id", "namespace_id", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    namespace_id: int
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[int] = ..., namespace_id: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSeatAssignmentsResponse(_message.Message):
    __slots__ = ("seat_assignments", "next_page_token")
    SEAT_ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    seat_assignments: _containers.RepeatedCompositeFieldContainer[SeatAssignment]
    next_page_token: str
    def __init__(self, seat_assignments: _Optional[_Iterable[_Union[SeatAssignment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetUserDefaultNamespaceRequest(_message.Message):
    __slots__ = ("user_id", "namespace_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    namespace_id: int
    def __init__(self, user_id: _Optional[int] = ..., namespace_id: _Optional[int] = ...) -> None: ...

class SetUserDefaultNamespaceResponse(_message.Message):
    __slots__ = ("default_namespace_id", "config_version")
    DEFAULT_NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    default_namespace_id: int
    config_version: str
    def __init__(self, default_namespace_id: _Optional[int] = ..., config_version: _Optional[str] = ...) -> None: ...

class GetUserRoutingStatusRequest(_message.Message):
    __slots__ = ("user_id", "user_selected_model")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_SELECTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    user_selected_model: str
    def __init__(self, user_id: _Optional[int] = ..., user_selected_model: _Optional[str] = ...) -> None: ...

class FeatureRoutingStatus(_message.Message):
    __slots__ = ("feature", "resolution", "error_reason", "error_message", "user_selectable", "user_may_choose", "user_selectable_model_identifiers")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    USER_SELECTABLE_FIELD_NUMBER: _ClassVar[int]
    USER_MAY_CHOOSE_FIELD_NUMBER: _ClassVar[int]
    USER_SELECTABLE_MODEL_IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    feature: str
    resolution: _routing_pb2.ResolveModelResponse
    error_reason: str
    error_message: str
    user_selectable: bool
    user_may_choose: bool
    user_selectable_model_identifiers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, feature: _Optional[str] = ..., resolution: _Optional[_Union[_routing_pb2.ResolveModelResponse, _Mapping]] = ..., error_reason: _Optional[str] = ..., error_message: _Optional[str] = ..., user_selectable: _Optional[bool] = ..., user_may_choose: _Optional[bool] = ..., user_selectable_model_identifiers: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUserRoutingStatusResponse(_message.Message):
    __slots__ = ("user_id", "seat_namespace_ids", "explicit_default_namespace_id", "explicit_default_valid", "effective_default_namespace_id", "default_namespace_prompt", "features")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_NAMESPACE_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_DEFAULT_NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_DEFAULT_VALID_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_DEFAULT_NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NAMESPACE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    seat_namespace_ids: _containers.RepeatedScalarFieldContainer[int]
    explicit_default_namespace_id: int
    explicit_default_valid: bool
    effective_default_namespace_id: int
    default_namespace_prompt: bool
    features: _containers.RepeatedCompositeFieldContainer[FeatureRoutingStatus]
    def __init__(self, user_id: _Optional[int] = ..., seat_namespace_ids: _Optional[_Iterable[int]] = ..., explicit_default_namespace_id: _Optional[int] = ..., explicit_default_valid: _Optional[bool] = ..., effective_default_namespace_id: _Optional[int] = ..., default_namespace_prompt: _Optional[bool] = ..., features: _Optional[_Iterable[_Union[FeatureRoutingStatus, _Mapping]]] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "time", "actor", "action", "resource", "before_json", "after_json", "config_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_JSON_FIELD_NUMBER: _ClassVar[int]
    AFTER_JSON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: int
    time: _timestamp_pb2.Timestamp
    actor: str
    action: str
    resource: str
    before_json: str
    after_json: str
    config_version: str
    def __init__(self, id: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., resource: _Optional[str] = ..., before_json: _Optional[str] = ..., after_json: _Optional[str] = ..., config_version: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "resource_prefix")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    resource_prefix: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., resource_prefix: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("audit_events", "next_page_token")
    AUDIT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    audit_events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, audit_events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("version", "deployment_type", "catalog_version", "config_version", "storage_backend", "start_time", "self_hosted_ai_gateway", "offline_license")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    SELF_HOSTED_AI_GATEWAY_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_LICENSE_FIELD_NUMBER: _ClassVar[int]
    version: str
    deployment_type: DeploymentType
    catalog_version: str
    config_version: str
    storage_backend: str
    start_time: _timestamp_pb2.Timestamp
    self_hosted_ai_gateway: bool
    offline_license: bool
    def __init__(self, version: _Optional[str] = ..., deployment_type: _Optional[_Union[DeploymentType, str]] = ..., catalog_version: _Optional[str] = ..., config_version: _Optional[str] = ..., storage_backend: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., self_hosted_ai_gateway: _Optional[bool] = ..., offline_license: _Optional[bool] = ...) -> None: ...
