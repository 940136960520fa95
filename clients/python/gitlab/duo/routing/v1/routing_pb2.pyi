from gitlab.duo.routing.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResolveModelRequest(_message.Message):
    __slots__ = ("user_id", "feature", "root_namespace_id", "user_selected_model")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    ROOT_NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_SELECTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    feature: str
    root_namespace_id: int
    user_selected_model: str
    def __init__(self, user_id: _Optional[int] = ..., feature: _Optional[str] = ..., root_namespace_id: _Optional[int] = ..., user_selected_model: _Optional[str] = ...) -> None: ...

class ResolveModelResponse(_message.Message):
    __slots__ = ("provider", "model_identifier", "model_name", "gitlab_default", "source", "governing_namespace_id", "default_namespace_prompt", "pinned_model_unavailable", "config_version", "self_hosted_model_id", "self_hosted_model_family", "self_hosted_model_endpoint", "self_hosted_model_platform", "effective_feature", "user_selection", "pinned_model_deprecated", "deprecation_removal_version", "default_model_group")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    GITLAB_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    GOVERNING_NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NAMESPACE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    PINNED_MODEL_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    SELF_HOSTED_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SELF_HOSTED_MODEL_FAMILY_FIELD_NUMBER: _ClassVar[int]
    SELF_HOSTED_MODEL_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SELF_HOSTED_MODEL_PLATFORM_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_FEATURE_FIELD_NUMBER: _ClassVar[int]
    USER_SELECTION_FIELD_NUMBER: _ClassVar[int]
    PINNED_MODEL_DEPRECATED_FIELD_NUMBER: _ClassVar[int]
    DEPRECATION_REMOVAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_GROUP_FIELD_NUMBER: _ClassVar[int]
    provider: _types_pb2.Provider
    model_identifier: str
    model_name: str
    gitlab_default: bool
    source: _types_pb2.SelectionSource
    governing_namespace_id: int
    default_namespace_prompt: bool
    pinned_model_unavailable: bool
    config_version: str
    self_hosted_model_id: str
    self_hosted_model_family: _types_pb2.ModelFamily
    self_hosted_model_endpoint: str
    self_hosted_model_platform: _types_pb2.Platform
    effective_feature: str
    user_selection: _types_pb2.UserSelection
    pinned_model_deprecated: bool
    deprecation_removal_version: str
    default_model_group: str
    def __init__(self, provider: _Optional[_Union[_types_pb2.Provider, str]] = ..., model_identifier: _Optional[str] = ..., model_name: _Optional[str] = ..., gitlab_default: _Optional[bool] = ..., source: _Optional[_Union[_types_pb2.SelectionSource, str]] = ..., governing_namespace_id: _Optional[int] = ..., default_namespace_prompt: _Optional[bool] = ..., pinned_model_unavailable: _Optional[bool] = ..., config_version: _Optional[str] = ..., self_hosted_model_id: _Optional[str] = ..., self_hosted_model_family: _Optional[_Union[_types_pb2.ModelFamily, str]] = ..., self_hosted_model_endpoint: _Optional[str] = ..., self_hosted_model_platform: _Optional[_Union[_types_pb2.Platform, str]] = ..., effective_feature: _Optional[str] = ..., user_selection: _Optional[_Union[_types_pb2.UserSelection, str]] = ..., pinned_model_deprecated: _Optional[bool] = ..., deprecation_removal_version: _Optional[str] = ..., default_model_group: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class GenerationParameters(_message.Message):
    __slots__ = ("max_tokens", "temperature", "stop_sequences")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    stop_sequences: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., stop_sequences: _Optional[_Iterable[str]] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("user_id", "feature", "root_namespace_id", "messages", "parameters", "correlation_id", "user_selected_model")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    ROOT_NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_SELECTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    feature: str
    root_namespace_id: int
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    parameters: GenerationParameters
    correlation_id: str
    user_selected_model: str
    def __init__(self, user_id: _Optional[int] = ..., feature: _Optional[str] = ..., root_namespace_id: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., parameters: _Optional[_Union[GenerationParameters, _Mapping]] = ..., correlation_id: _Optional[str] = ..., user_selected_model: _Optional[str] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class TokenUsage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "estimated")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    estimated: bool
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., estimated: _Optional[bool] = ...) -> None: ...

class CompletionFinished(_message.Message):
    __slots__ = ("finish_reason", "usage")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    finish_reason: str
    usage: TokenUsage
    def __init__(self, finish_reason: _Optional[str] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("route", "delta", "finished")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    route: ResolveModelResponse
    delta: TextDelta
    finished: CompletionFinished
    def __init__(self, route: _Optional[_Union[ResolveModelResponse, _Mapping]] = ..., delta: _Optional[_Union[TextDelta, _Mapping]] = ..., finished: _Optional[_Union[CompletionFinished, _Mapping]] = ...) -> None: ...

class ListUserSelectableModelsRequest(_message.Message):
    __slots__ = ("user_id", "feature", "root_namespace_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    ROOT_NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    feature: str
    root_namespace_id: int
    def __init__(self, user_id: _Optional[int] = ..., feature: _Optional[str] = ..., root_namespace_id: _Optional[int] = ...) -> None: ...

class UserSelectableModel(_message.Message):
    __slots__ = ("identifier", "name", "provider", "cost_indicator")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    COST_INDICATOR_FIELD_NUMBER: _ClassVar[int]
    identifier: str
    name: str
    provider: str
    cost_indicator: str
    def __init__(self, identifier: _Optional[str] = ..., name: _Optional[str] = ..., provider: _Optional[str] = ..., cost_indicator: _Optional[str] = ...) -> None: ...

class ListUserSelectableModelsResponse(_message.Message):
    __slots__ = ("feature", "default_model", "selectable_models", "pinned_model", "user_may_choose", "choice_unavailable_reason", "governing_namespace_id", "candidate_namespace_ids", "depends_on_default_namespace", "default_model_group", "config_version")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    SELECTABLE_MODELS_FIELD_NUMBER: _ClassVar[int]
    PINNED_MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_MAY_CHOOSE_FIELD_NUMBER: _ClassVar[int]
    CHOICE_UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    GOVERNING_NAMESPACE_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_NAMESPACE_IDS_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_DEFAULT_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_GROUP_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    feature: str
    default_model: UserSelectableModel
    selectable_models: _containers.RepeatedCompositeFieldContainer[UserSelectableModel]
    pinned_model: UserSelectableModel
    user_may_choose: bool
    choice_unavailable_reason: _types_pb2.UserSelection
    governing_namespace_id: int
    candidate_namespace_ids: _containers.RepeatedScalarFieldContainer[int]
    depends_on_default_namespace: bool
    default_model_group: str
    config_version: str
    def __init__(self, feature: _Optional[str] = ..., default_model: _Optional[_Union[UserSelectableModel, _Mapping]] = ..., selectable_models: _Optional[_Iterable[_Union[UserSelectableModel, _Mapping]]] = ..., pinned_model: _Optional[_Union[UserSelectableModel, _Mapping]] = ..., user_may_choose: _Optional[bool] = ..., choice_unavailable_reason: _Optional[_Union[_types_pb2.UserSelection, str]] = ..., governing_namespace_id: _Optional[int] = ..., candidate_namespace_ids: _Optional[_Iterable[int]] = ..., depends_on_default_namespace: _Optional[bool] = ..., default_model_group: _Optional[str] = ..., config_version: _Optional[str] = ...) -> None: ...
