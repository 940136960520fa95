"""Domain types shared by the policy, the store and the servicers. No I/O, no gRPC types.

Enum values equal the proto enum numbers, so conversion at the gRPC edge is a plain int.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class DeploymentType(enum.IntEnum):
    GITLAB_COM = 1
    DEDICATED = 2
    SELF_MANAGED = 3

    @property
    def config_name(self) -> str:
        return self.name.lower()

    @property
    def title(self) -> str:
        return {1: "GitLab.com", 2: "GitLab Dedicated", 3: "GitLab Self-Managed"}[self.value]


class Provider(enum.IntEnum):
    GITLAB_AI_GATEWAY = 1
    SELF_HOSTED = 2
    DISABLED = 3


class SelectionSource(enum.IntEnum):
    CONTEXT_NAMESPACE = 1
    DEFAULT_NAMESPACE = 2
    SOLE_SEAT_NAMESPACE = 3
    UNANIMOUS_SEAT_NAMESPACES = 4
    FEATURE_SETTING = 5
    INSTANCE = 6
    GITLAB_DEFAULT = 7
    USER = 8


class UserSelection(enum.IntEnum):
    """What became of a request's user_selected_model (DESIGN section 3, "User model selection")."""

    NOT_REQUESTED = 0  # the request carried no choice
    APPLIED = 1
    IGNORED_NOT_USER_SELECTABLE = 2
    IGNORED_PINNED = 3
    IGNORED_NOT_ALLOWED = 4
    IGNORED_UNKNOWN_MODEL = 5
    IGNORED_SELF_HOSTED = 6


class ModelFamily(enum.IntEnum):
    """GitLab's self-hosted model families; names lower-cased are GitLab's enum values."""

    MISTRAL = 1
    LLAMA3 = 2
    CODEGEMMA = 3
    CODESTRAL = 4
    CODELLAMA = 5
    DEEPSEEKCODER = 6
    CLAUDE_3 = 7
    GPT = 8
    MIXTRAL = 9
    GENERAL = 10
    GEMINI = 11

    @property
    def gitlab_name(self) -> str:
        return self.name.lower()


class Platform(enum.IntEnum):
    OPENAI_COMPATIBLE = 1
    AZURE_OPENAI = 2
    BEDROCK = 3

    @property
    def identifier_prefix(self) -> str:
        return {1: "custom_openai/", 2: "azure/", 3: "bedrock/"}[self.value]


class FeatureProvider(enum.IntEnum):
    VENDORED = 1
    SELF_HOSTED = 2
    DISABLED = 3


@dataclass(frozen=True, slots=True)
class SelfHostedModel:
    """A registered self-hosted model. The API token itself never leaves the store; only whether one is set."""

    id: str
    name: str
    family: ModelFamily
    platform: Platform
    endpoint: str
    identifier: str
    api_token_set: bool
    create_time: datetime
    update_time: datetime

    def audit_view(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "family": self.family.gitlab_name,
            "platform": self.platform.name.lower(),
            "endpoint": self.endpoint,
            "identifier": self.identifier,
            "api_token_set": self.api_token_set,
        }


@dataclass(frozen=True, slots=True)
class FeatureSetting:
    feature: str
    provider: FeatureProvider
    self_hosted_model_id: str = ""

    def audit_view(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "provider": self.provider.name.lower(),
            "self_hosted_model_id": self.self_hosted_model_id,
        }


@dataclass(frozen=True, slots=True)
class SeatChange:
    user_id: int
    namespace_id: int
    assigned: bool


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    time: datetime
    actor: str
    action: str
    resource: str
    before_json: str
    after_json: str
    config_version: int


class ChangeKind(enum.StrEnum):
    """What a committed change touched; followers decide from this alone how to apply it."""

    SELF_HOSTED_MODEL = "self_hosted_model"
    FEATURE_SETTING = "feature_setting"
    INSTANCE_SELECTION = "instance_selection"
    NAMESPACE_SELECTION = "namespace_selection"
    API_TOKENS = "api_tokens"
    SEAT_ASSIGNMENTS = "seat_assignments"
    DEFAULT_NAMESPACE = "default_namespace"
    MODEL_ALLOWLIST = "model_allowlist"

    @property
    def per_user(self) -> bool:
        """Only per-user routing data (held in the user cache, not in the snapshot)."""
        return self in (ChangeKind.SEAT_ASSIGNMENTS, ChangeKind.DEFAULT_NAMESPACE)


@dataclass(frozen=True, slots=True)
class Change:
    """The typed record written with every committed change, in the same transaction."""

    kind: ChangeKind
    keys: tuple[str, ...] = ()  # the settings touched: model ids, feature names, "<namespace>/<feature>"
    user_ids: tuple[int, ...] = ()  # per-user changes: the users whose seats or default namespace changed


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    version: int
    change: Change
