from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class Provider(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVIDER_UNSPECIFIED: _ClassVar[Provider]
    PROVIDER_GITLAB_AI_GATEWAY: _ClassVar[Provider]
    PROVIDER_SELF_HOSTED: _ClassVar[Provider]
    PROVIDER_DISABLED: _ClassVar[Provider]

class SelectionSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTION_SOURCE_UNSPECIFIED: _ClassVar[SelectionSource]
    SELECTION_SOURCE_CONTEXT_NAMESPACE: _ClassVar[SelectionSource]
    SELECTION_SOURCE_DEFAULT_NAMESPACE: _ClassVar[SelectionSource]
    SELECTION_SOURCE_SOLE_SEAT_NAMESPACE: _ClassVar[SelectionSource]
    SELECTION_SOURCE_UNANIMOUS_SEAT_NAMESPACES: _ClassVar[SelectionSource]
    SELECTION_SOURCE_FEATURE_SETTING: _ClassVar[SelectionSource]
    SELECTION_SOURCE_INSTANCE: _ClassVar[SelectionSource]
    SELECTION_SOURCE_GITLAB_DEFAULT: _ClassVar[SelectionSource]
    SELECTION_SOURCE_USER: _ClassVar[SelectionSource]

class UserSelection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USER_SELECTION_UNSPECIFIED: _ClassVar[UserSelection]
    USER_SELECTION_APPLIED: _ClassVar[UserSelection]
    USER_SELECTION_IGNORED_NOT_USER_SELECTABLE: _ClassVar[UserSelection]
    USER_SELECTION_IGNORED_PINNED: _ClassVar[UserSelection]
    USER_SELECTION_IGNORED_NOT_ALLOWED: _ClassVar[UserSelection]
    USER_SELECTION_IGNORED_UNKNOWN_MODEL: _ClassVar[UserSelection]
    USER_SELECTION_IGNORED_SELF_HOSTED: _ClassVar[UserSelection]

class ModelFamily(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FAMILY_UNSPECIFIED: _ClassVar[ModelFamily]
    MODEL_FAMILY_MISTRAL: _ClassVar[ModelFamily]
    MODEL_FAMILY_LLAMA3: _ClassVar[ModelFamily]
    MODEL_FAMILY_CODEGEMMA: _ClassVar[ModelFamily]
    MODEL_FAMILY_CODESTRAL: _ClassVar[ModelFamily]
    MODEL_FAMILY_CODELLAMA: _ClassVar[ModelFamily]
    MODEL_FAMILY_DEEPSEEKCODER: _ClassVar[ModelFamily]
    MODEL_FAMILY_CLAUDE_3: _ClassVar[ModelFamily]
    MODEL_FAMILY_GPT: _ClassVar[ModelFamily]
    MODEL_FAMILY_MIXTRAL: _ClassVar[ModelFamily]
    MODEL_FAMILY_GENERAL: _ClassVar[ModelFamily]
    MODEL_FAMILY_GEMINI: _ClassVar[ModelFamily]

class Platform(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLATFORM_UNSPECIFIED: _ClassVar[Platform]
    PLATFORM_OPENAI_COMPATIBLE: _ClassVar[Platform]
    PLATFORM_AZURE_OPENAI: _ClassVar[Platform]
    PLATFORM_BEDROCK: _ClassVar[Platform]
PROVIDER_UNSPECIFIED: Provider
PROVIDER_GITLAB_AI_GATEWAY: Provider
PROVIDER_SELF_HOSTED: Provider
PROVIDER_DISABLED: Provider
SELECTION_SOURCE_UNSPECIFIED: SelectionSource
SELECTION_SOURCE_CONTEXT_NAMESPACE: SelectionSource
SELECTION_SOURCE_DEFAULT_NAMESPACE: SelectionSource
SELECTION_SOURCE_SOLE_SEAT_NAMESPACE: SelectionSource
SELECTION_SOURCE_UNANIMOUS_SEAT_NAMESPACES: SelectionSource
SELECTION_SOURCE_FEATURE_SETTING: SelectionSource
SELECTION_SOURCE_INSTANCE: SelectionSource
SELECTION_SOURCE_GITLAB_DEFAULT: SelectionSource
SELECTION_SOURCE_USER: SelectionSource
USER_SELECTION_UNSPECIFIED: UserSelection
USER_SELECTION_APPLIED: UserSelection
USER_SELECTION_IGNORED_NOT_USER_SELECTABLE: UserSelection
USER_SELECTION_IGNORED_PINNED: UserSelection
USER_SELECTION_IGNORED_NOT_ALLOWED: UserSelection
USER_SELECTION_IGNORED_UNKNOWN_MODEL: UserSelection
USER_SELECTION_IGNORED_SELF_HOSTED: UserSelection
MODEL_FAMILY_UNSPECIFIED: ModelFamily
MODEL_FAMILY_MISTRAL: ModelFamily
MODEL_FAMILY_LLAMA3: ModelFamily
MODEL_FAMILY_CODEGEMMA: ModelFamily
MODEL_FAMILY_CODESTRAL: ModelFamily
MODEL_FAMILY_CODELLAMA: ModelFamily
MODEL_FAMILY_DEEPSEEKCODER: ModelFamily
MODEL_FAMILY_CLAUDE_3: ModelFamily
MODEL_FAMILY_GPT: ModelFamily
MODEL_FAMILY_MIXTRAL: ModelFamily
MODEL_FAMILY_GENERAL: ModelFamily
MODEL_FAMILY_GEMINI: ModelFamily
PLATFORM_UNSPECIFIED: Platform
PLATFORM_OPENAI_COMPATIBLE: Platform
PLATFORM_AZURE_OPENAI: Platform
PLATFORM_BEDROCK: Platform
