"""Table-driven tests of the routing policy (DESIGN section 3), one case per rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from sidecar.catalog import load_catalog
from sidecar.domain import (
    DeploymentType,
    FeatureProvider,
    FeatureSetting,
    ModelFamily,
    Platform,
    Provider,
    SelectionSource,
    SelfHostedModel,
)
from sidecar.errors import DuoError, ErrorCode
from sidecar.policy import (
    DEFAULT_NAMESPACE_REQUIRED,
    DEFAULT_NAMESPACE_REQUIRED_MESSAGE,
    Resolution,
    resolve,
    user_defaults,
)
from sidecar.snapshot import Snapshot
from sidecar.state import build_snapshot
from sidecar.store.base import StoredState
from sidecar.users import UserRouting

CATALOG = load_catalog()
CHAT_DEFAULT = CATALOG.features["duo_chat"].default_model
# Two models selectable for duo_chat and most of its sub-features, neither a default.
PICK = "claude_sonnet_4_6"
OTHER_PICK = "claude_sonnet_4_5_20250929_vertex"
COMPLETIONS_DEFAULT = CATALOG.features["code_completions"].default_model
NOW = datetime(2026, 1, 1, tzinfo=UTC)
VLLM = SelfHostedModel(
    "m1", "Mistral on vLLM", ModelFamily.MISTRAL, Platform.OPENAI_COMPATIBLE, "http://vllm:8000/v1",
    "custom_openai/mistral", True, NOW, NOW,
)  # fmt: skip


@dataclass
class World:
    deployment: DeploymentType = DeploymentType.GITLAB_COM
    seats: list[tuple[int, int]] = field(default_factory=list)
    defaults: dict[int, int] = field(default_factory=dict)
    namespace_pins: list[tuple[int, str, str]] = field(default_factory=list)
    instance_pins: dict[str, str] = field(default_factory=dict)
    feature_settings: list[FeatureSetting] = field(default_factory=list)

    def snapshot(self) -> Snapshot:
        state = StoredState(
            config_version=7,
            self_hosted_models=[VLLM],
            feature_settings=self.feature_settings,
            instance_pins=self.instance_pins,
            namespace_pins=self.namespace_pins,
        )
        return build_snapshot(self.deployment, CATALOG, state)

    def user(self, user_id: int = 1) -> UserRouting:
        seats = frozenset(ns for user, ns in self.seats if user == user_id)
        return UserRouting(seats, self.defaults.get(user_id, 0))

    def resolve(self, feature: str, root_namespace_id: int = 0, user_id: int = 1) -> Resolution:
        return resolve(self.snapshot(), user_id, feature, root_namespace_id, self.user(user_id))


@dataclass
class Case:
    name: str
    world: World
    feature: str
    root_namespace_id: int
    model: str
    source: SelectionSource
    governing: int = 0
    gitlab_default: bool = False
    prompt: bool = False
    unavailable: bool = False
    provider: Provider = Provider.GITLAB_AI_GATEWAY
    effective_feature: str = ""


SHARED_SEATS = [(1, 10), (1, 20)]
CASES = [
    # GitLab.com rule 1: context namespace
    Case("context pin", World(namespace_pins=[(10, "duo_chat", PICK)]), "duo_chat", 10, PICK,
         SelectionSource.CONTEXT_NAMESPACE, governing=10),
    Case("context without pin uses GitLab default", World(), "duo_chat", 10, CHAT_DEFAULT,
         SelectionSource.CONTEXT_NAMESPACE, governing=10, gitlab_default=True),
    Case("sub-feature falls back to duo_chat pin", World(namespace_pins=[(10, "duo_chat", PICK)]),
         "duo_chat_explain_code", 10, PICK, SelectionSource.CONTEXT_NAMESPACE, governing=10,
         effective_feature="duo_chat"),
    Case("sub-feature's own pin wins over duo_chat's",
         World(namespace_pins=[(10, "duo_chat", PICK), (10, "duo_chat_explain_code", OTHER_PICK)]),
         "duo_chat_explain_code", 10, OTHER_PICK, SelectionSource.CONTEXT_NAMESPACE, governing=10),
    Case("context of another namespace ignores the user's default",
         World(seats=SHARED_SEATS, defaults={1: 20}, namespace_pins=[(20, "duo_chat", PICK)]),
         "duo_chat", 30, CHAT_DEFAULT, SelectionSource.CONTEXT_NAMESPACE, governing=30, gitlab_default=True),
    # rule 2: valid explicit default
    Case("explicit default namespace", World(seats=SHARED_SEATS, defaults={1: 20},
         namespace_pins=[(20, "duo_chat", PICK), (10, "duo_chat", "claude_sonnet_4_5_20250929")]),
         "duo_chat", 0, PICK, SelectionSource.DEFAULT_NAMESPACE, governing=20),
    # rule 7: stale default is ignored
    Case("stale default (seat lost) with one seat left falls to the sole seat",
         World(seats=[(1, 10)], defaults={1: 20}, namespace_pins=[(20, "duo_chat", PICK)]),
         "duo_chat", 0, CHAT_DEFAULT, SelectionSource.SOLE_SEAT_NAMESPACE, governing=10, gitlab_default=True),
    # rule 3: sole seat
    Case("sole seat namespace", World(seats=[(1, 10)], namespace_pins=[(10, "code_completions",
         "codestral_2508_vertex")]), "code_completions", 0, "codestral_2508_vertex",
         SelectionSource.SOLE_SEAT_NAMESPACE, governing=10),
    # rule 4: no seats
    Case("no seats: GitLab default", World(), "code_completions", 0, COMPLETIONS_DEFAULT,
         SelectionSource.GITLAB_DEFAULT, gitlab_default=True),
    # rule 5: several seats, unanimous
    Case("several seats without pins agree on the default", World(seats=SHARED_SEATS), "duo_chat", 0,
         CHAT_DEFAULT, SelectionSource.UNANIMOUS_SEAT_NAMESPACES, gitlab_default=True, prompt=True),
    Case("several seats pinning the same model agree",
         World(seats=SHARED_SEATS, namespace_pins=[(10, "duo_chat", PICK), (20, "duo_chat", PICK)]),
         "duo_chat", 0, PICK, SelectionSource.UNANIMOUS_SEAT_NAMESPACES, prompt=True),
    Case("a pin on another feature does not block this one",
         World(seats=SHARED_SEATS, namespace_pins=[(10, "duo_chat", PICK)]), "code_completions", 0,
         COMPLETIONS_DEFAULT, SelectionSource.UNANIMOUS_SEAT_NAMESPACES, gitlab_default=True, prompt=True),
    # rule 6: prompt is shown on context requests too
    Case("multi-seat user is prompted on context requests", World(seats=SHARED_SEATS), "duo_chat", 10,
         CHAT_DEFAULT, SelectionSource.CONTEXT_NAMESPACE, governing=10, gitlab_default=True, prompt=True),
    # everywhere: pinned model left the catalog
    Case("pin no longer selectable routes to default and says so",
         World(namespace_pins=[(10, "duo_chat", "retired_model_v1")]), "duo_chat", 10, CHAT_DEFAULT,
         SelectionSource.CONTEXT_NAMESPACE, governing=10, gitlab_default=True, unavailable=True),
    # Dedicated
    Case("dedicated instance pin", World(DeploymentType.DEDICATED, instance_pins={"duo_chat": PICK}),
         "duo_chat", 0, PICK, SelectionSource.INSTANCE),
    Case("dedicated ignores namespaces and seats",
         World(DeploymentType.DEDICATED, seats=SHARED_SEATS, namespace_pins=[(10, "duo_chat", PICK)]),
         "duo_chat", 10, CHAT_DEFAULT, SelectionSource.GITLAB_DEFAULT, gitlab_default=True),
    Case("dedicated sub-feature falls back to the duo_chat instance pin",
         World(DeploymentType.DEDICATED, instance_pins={"duo_chat": PICK}), "duo_chat_fix_code", 0, PICK,
         SelectionSource.INSTANCE, effective_feature="duo_chat"),
    Case("dedicated ignores feature settings",
         World(DeploymentType.DEDICATED, feature_settings=[FeatureSetting("duo_chat", FeatureProvider.DISABLED)]),
         "duo_chat", 0, CHAT_DEFAULT, SelectionSource.GITLAB_DEFAULT, gitlab_default=True),
    Case("instance pin no longer selectable",
         World(DeploymentType.DEDICATED, instance_pins={"duo_chat": "retired_model_v1"}), "duo_chat", 0,
         CHAT_DEFAULT, SelectionSource.INSTANCE, gitlab_default=True, unavailable=True),
    # Self-Managed
    Case("self-managed self-hosted feature setting",
         World(DeploymentType.SELF_MANAGED, feature_settings=[FeatureSetting("duo_chat", FeatureProvider.SELF_HOSTED,
               "m1")], instance_pins={"duo_chat": PICK}),
         "duo_chat", 0, "custom_openai/mistral", SelectionSource.FEATURE_SETTING, provider=Provider.SELF_HOSTED),
    Case("self-managed disabled feature",
         World(DeploymentType.SELF_MANAGED, feature_settings=[FeatureSetting("duo_chat", FeatureProvider.DISABLED)]),
         "duo_chat_write_tests", 0, "", SelectionSource.FEATURE_SETTING, provider=Provider.DISABLED,
         effective_feature="duo_chat"),
    Case("self-managed vendored setting falls through to the instance pin",
         World(DeploymentType.SELF_MANAGED, feature_settings=[FeatureSetting("duo_chat", FeatureProvider.VENDORED)],
               instance_pins={"duo_chat": PICK}),
         "duo_chat", 0, PICK, SelectionSource.INSTANCE),
    Case("self-managed with nothing set: GitLab default", World(DeploymentType.SELF_MANAGED), "code_generations", 0,
         CATALOG.features["code_generations"].default_model, SelectionSource.GITLAB_DEFAULT, gitlab_default=True),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_routing_rule(case: Case) -> None:
    res = case.world.resolve(case.feature, case.root_namespace_id)
    assert res.provider is case.provider
    assert res.model_identifier == case.model
    assert res.source is case.source
    assert res.governing_namespace_id == case.governing
    assert res.gitlab_default is case.gitlab_default
    assert res.default_namespace_prompt is case.prompt
    assert res.pinned_model_unavailable is case.unavailable
    assert res.effective_feature == (case.effective_feature or case.feature)
    assert res.config_version == 7


def test_self_hosted_answer_names_the_model_but_carries_no_token() -> None:
    world = World(
        DeploymentType.SELF_MANAGED, feature_settings=[FeatureSetting("duo_chat", FeatureProvider.SELF_HOSTED, "m1")]
    )
    res = world.resolve("duo_chat")
    assert res.self_hosted_model == VLLM
    assert res.model_name == "Mistral on vLLM"
    assert not hasattr(res.self_hosted_model, "api_token")


def test_ambiguous_seats_require_a_default_namespace() -> None:
    world = World(seats=[(1, 30), (1, 10), (1, 20)], namespace_pins=[(10, "duo_chat", "claude_sonnet_4_6")])
    with pytest.raises(DuoError) as raised:
        world.resolve("duo_chat_refactor_code")
    error = raised.value
    assert error.code is ErrorCode.FAILED_PRECONDITION
    assert error.reason == DEFAULT_NAMESPACE_REQUIRED
    assert error.message == DEFAULT_NAMESPACE_REQUIRED_MESSAGE
    assert dict(error.metadata) == {
        "user_id": "1",
        "feature": "duo_chat_refactor_code",
        "candidate_namespace_ids": "10,20,30",
    }
    assert "Preferences > Behavior > Default GitLab Duo namespace" in error.precondition_violations[0].description


def test_stale_default_with_several_seats_is_never_used() -> None:
    world = World(
        seats=SHARED_SEATS,
        defaults={1: 99},
        namespace_pins=[(99, "duo_chat", "claude_sonnet_4_6"), (10, "duo_chat", "claude_sonnet_4_5_20250929_vertex")],
    )
    with pytest.raises(DuoError) as raised:
        world.resolve("duo_chat")
    assert raised.value.reason == DEFAULT_NAMESPACE_REQUIRED
    defaults = user_defaults(world.user())
    assert (defaults.explicit_default, defaults.explicit_default_valid, defaults.prompt) == (99, False, True)


def test_single_seat_user_is_never_prompted() -> None:
    world = World(seats=[(1, 10)], namespace_pins=[(10, "duo_chat", "claude_sonnet_4_6")])
    for feature in CATALOG.features:
        assert world.resolve(feature).default_namespace_prompt is False
    assert user_defaults(world.user()).effective_default == 10


def test_valid_default_removes_the_prompt() -> None:
    assert World(seats=SHARED_SEATS, defaults={1: 10}).resolve("duo_chat").default_namespace_prompt is False


@pytest.mark.parametrize(
    ("user_id", "feature", "root", "field"),
    [
        (0, "duo_chat", 0, "user_id"),
        (-5, "duo_chat", 0, "user_id"),
        (1, "", 0, "feature"),
        (1, "no_such_feature", 0, "feature"),
        (1, "duo_chat", -1, "root_namespace_id"),
    ],
)
def test_invalid_requests(user_id: int, feature: str, root: int, field: str) -> None:
    with pytest.raises(DuoError) as raised:
        World().resolve(feature, root, user_id)
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert raised.value.field_violations[0].field == field
