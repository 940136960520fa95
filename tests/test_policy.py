"""Table-driven tests of the routing policy (DESIGN section 3), one case per rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.catalog import Deprecation, load_catalog
from sidecar.domain import (
    DeploymentType,
    FeatureProvider,
    FeatureSetting,
    ModelFamily,
    Platform,
    Provider,
    SelectionSource,
    SelfHostedModel,
    UserSelection,
)
from sidecar.errors import DuoError, ErrorCode
from sidecar.policy import (
    DEFAULT_NAMESPACE_REQUIRED,
    DEFAULT_NAMESPACE_REQUIRED_MESSAGE,
    NO_MODEL_CONFIGURED,
    Resolution,
    balanced_default,
    deprecated_pins,
    instance_without_model,
    resolve,
    stable_bucket,
    user_choices,
    user_defaults,
)
from sidecar.snapshot import NO_OPTIONS, InstanceOptions, Snapshot, offered_catalog
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
    options: InstanceOptions = NO_OPTIONS

    def snapshot(self) -> Snapshot:
        state = StoredState(
            config_version=7,
            self_hosted_models=[VLLM],
            feature_settings=self.feature_settings,
            instance_pins=self.instance_pins,
            namespace_pins=self.namespace_pins,
        )
        return build_snapshot(self.deployment, CATALOG, state, self.options)

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


# DEDICATED and SELF_MANAGED rule 1 on both deployment types, and rule 3's exceptions (hybrid, offline license).
PINNED = "claude_sonnet_4_5_20250929"  # selectable for duo_chat in the bundled catalog
SELF_HOSTED_CHAT = [FeatureSetting("duo_chat", FeatureProvider.SELF_HOSTED, "m1")]
HYBRID = InstanceOptions(self_hosted_ai_gateway=True)
OFFLINE = InstanceOptions(offline_license=True)
INSTANCE_CASES = [
    *[case for deployment in (DeploymentType.DEDICATED, DeploymentType.SELF_MANAGED) for case in [
        Case(f"{deployment.config_name}: self-hosted feature setting wins over the instance pin",
             World(deployment, feature_settings=SELF_HOSTED_CHAT, instance_pins={"duo_chat": PINNED}),
             "duo_chat", 0, "custom_openai/mistral", SelectionSource.FEATURE_SETTING, provider=Provider.SELF_HOSTED),
        Case(f"{deployment.config_name}: sub-feature follows duo_chat's self-hosted setting",
             World(deployment, feature_settings=SELF_HOSTED_CHAT), "duo_chat_explain_code", 0,
             "custom_openai/mistral", SelectionSource.FEATURE_SETTING, provider=Provider.SELF_HOSTED,
             effective_feature="duo_chat"),
        Case(f"{deployment.config_name}: disabled feature",
             World(deployment, feature_settings=[FeatureSetting("duo_chat", FeatureProvider.DISABLED)]),
             "duo_chat", 0, "", SelectionSource.FEATURE_SETTING, provider=Provider.DISABLED),
        Case(f"{deployment.config_name}: vendored setting falls through to the instance pin",
             World(deployment, feature_settings=[FeatureSetting("duo_chat", FeatureProvider.VENDORED)],
                   instance_pins={"duo_chat": PINNED}),
             "duo_chat", 0, PINNED, SelectionSource.INSTANCE),
    ]],
    Case("hybrid: a pinned GitLab-managed model is served", World(DeploymentType.SELF_MANAGED, options=HYBRID,
         instance_pins={"duo_chat": PINNED}), "duo_chat_explain_code", 0, PINNED, SelectionSource.INSTANCE,
         effective_feature="duo_chat"),
    Case("hybrid: a self-hosted feature is served", World(DeploymentType.SELF_MANAGED, options=HYBRID,
         feature_settings=SELF_HOSTED_CHAT), "duo_chat", 0, "custom_openai/mistral", SelectionSource.FEATURE_SETTING,
         provider=Provider.SELF_HOSTED),
    Case("offline: a self-hosted feature is served, the stored pin is not needed",
         World(DeploymentType.SELF_MANAGED, options=OFFLINE, feature_settings=SELF_HOSTED_CHAT,
               instance_pins={"duo_chat": PINNED}),
         "duo_chat", 0, "custom_openai/mistral", SelectionSource.FEATURE_SETTING, provider=Provider.SELF_HOSTED),
    Case("offline: a disabled feature is disabled, not an error", World(DeploymentType.SELF_MANAGED, options=OFFLINE,
         feature_settings=[FeatureSetting("duo_chat", FeatureProvider.DISABLED)]), "duo_chat", 0, "",
         SelectionSource.FEATURE_SETTING, provider=Provider.DISABLED),
]  # fmt: skip


@pytest.mark.parametrize("case", INSTANCE_CASES, ids=[c.name for c in INSTANCE_CASES])
def test_instance_routing_rule(case: Case) -> None:
    test_routing_rule(case)


NO_MODEL_CASES = [
    ("hybrid, nothing set", World(DeploymentType.SELF_MANAGED, options=HYBRID), "duo_chat",
     "self_hosted_ai_gateway", ""),
    ("hybrid, vendored setting without a pin", World(DeploymentType.SELF_MANAGED, options=HYBRID,
     feature_settings=[FeatureSetting("duo_chat", FeatureProvider.VENDORED)]), "duo_chat", "self_hosted_ai_gateway",
     ""),
    ("hybrid, the pinned model left the catalog", World(DeploymentType.SELF_MANAGED, options=HYBRID,
     instance_pins={"duo_chat": "retired_model_v1"}), "duo_chat_write_tests", "self_hosted_ai_gateway",
     "retired_model_v1"),
    ("offline, nothing set", World(DeploymentType.SELF_MANAGED, options=OFFLINE), "code_completions",
     "offline_license", ""),
    ("offline, a stored pin is never used", World(DeploymentType.SELF_MANAGED, options=OFFLINE,
     instance_pins={"duo_chat": PINNED}), "duo_chat", "offline_license", PINNED),
    ("offline and hybrid: offline decides", World(DeploymentType.SELF_MANAGED,
     options=InstanceOptions(self_hosted_ai_gateway=True, offline_license=True), instance_pins={"duo_chat": PINNED}),
     "duo_chat", "offline_license", PINNED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "world", "feature", "cause", "pin"), NO_MODEL_CASES, ids=[c[0] for c in NO_MODEL_CASES]
)
def test_no_model_configured(name: str, world: World, feature: str, cause: str, pin: str) -> None:
    with pytest.raises(DuoError) as raised:
        world.resolve(feature)
    error = raised.value
    assert (error.code, error.reason) == (ErrorCode.FAILED_PRECONDITION, NO_MODEL_CONFIGURED)
    assert error.metadata["feature"] == feature and error.metadata["cause"] == cause
    assert error.metadata.get("pinned_model", "") == pin
    assert "assigns a self-hosted model" in error.message and f"instance.{cause}" in error.message
    if cause == "self_hosted_ai_gateway":
        assert "pins a GitLab-managed model" in error.message
    else:
        assert "pins a GitLab-managed model" not in error.message  # an offline instance cannot
    if pin:
        assert pin in error.message
    snapshot = world.snapshot()
    assert instance_without_model(snapshot, CATALOG.features[feature]) is not None


def test_instance_without_model_only_on_hybrid_or_offline_instances() -> None:
    for deployment in DeploymentType:
        assert instance_without_model(World(deployment).snapshot(), CATALOG.features["duo_chat"]) is None
    served = World(DeploymentType.SELF_MANAGED, options=OFFLINE, feature_settings=SELF_HOSTED_CHAT).snapshot()
    assert instance_without_model(served, CATALOG.features["duo_chat_fix_code"]) is None
    assert instance_without_model(served, CATALOG.features["code_completions"]) is not None


# -- load-balanced defaults (DESIGN section 3, "Everywhere") ----------------------------------------------------

GROUPED = "glab_ask_git_command"  # two defaults behind __default__glab_ask_git_command in the bundled catalog
GROUPED_INFO = CATALOG.features[GROUPED]


def test_the_bundled_catalog_has_balanced_defaults() -> None:
    grouped = [f for f in CATALOG.features.values() if f.default_model_group]
    assert len(grouped) >= 2 and GROUPED_INFO.default_model_group == f"__default__{GROUPED}"
    assert len(GROUPED_INFO.default_models) == 2


@pytest.mark.parametrize("deployment", list(DeploymentType))
def test_a_balanced_default_answers_one_real_model_per_user(deployment: DeploymentType) -> None:
    world = World(deployment)
    answers = {user: world.resolve(GROUPED, user_id=user) for user in range(1, 201)}
    for res in answers.values():
        assert res.model_identifier in GROUPED_INFO.default_models  # never the pseudo-model
        assert res.default_model_group == GROUPED_INFO.default_model_group
        assert res.gitlab_default and res.source is SelectionSource.GITLAB_DEFAULT
        assert res.model_name == CATALOG.models[res.model_identifier].name
    assert {r.model_identifier for r in answers.values()} == set(GROUPED_INFO.default_models)
    again = World(deployment)  # another snapshot, as another process or a restart would build
    assert all(again.resolve(GROUPED, user_id=u).model_identifier == r.model_identifier for u, r in answers.items())
    single = world.resolve("duo_chat")
    assert single.default_model_group == "" and single.model_identifier == CHAT_DEFAULT


def test_balanced_defaults_spread_evenly_over_10000_users() -> None:
    snapshot = World(DeploymentType.SELF_MANAGED).snapshot()
    for info in (f for f in CATALOG.features.values() if f.default_model_group):
        counts = dict.fromkeys(info.default_models, 0)
        for user in range(1, 10_001):
            counts[resolve(snapshot, user, info.name, 0).model_identifier] += 1
        share = 10_000 / len(info.default_models)
        for model, count in counts.items():
            assert abs(count - share) <= 0.03 * share, f"{info.name}: {model} served {count} of 10000 users"
    # Users far apart in id space and features of their own spread too: not an artefact of consecutive ids.
    counts = dict.fromkeys(GROUPED_INFO.default_models, 0)
    for user in range(1, 10_001):
        counts[balanced_default(GROUPED_INFO, user * 7_919_993 + 12_345)] += 1
    assert all(abs(c - 5_000) <= 150 for c in counts.values()), counts


def test_the_stable_hash_is_fixed() -> None:
    """The bucket is part of the contract with conversations and prompt caches: the same in every process and release
    (CRC-32 of the user id's 8 little-endian bytes, seeded with the CRC-32 of the feature name)."""
    users = (1, 2, 3, 42, 10**12)
    assert [stable_bucket(u, GROUPED, 2) for u in users] == [1, 0, 0, 1, 0]
    assert [stable_bucket(u, "duo_agent_platform_agentic_chat", 3) for u in users] == [2, 2, 1, 2, 2]
    assert stable_bucket(42, GROUPED, 2**32) == 462654055


def test_a_pin_and_an_unavailable_pin_on_a_balanced_feature() -> None:
    pinned = GROUPED_INFO.selectable_models[-1]
    res = World(DeploymentType.DEDICATED, instance_pins={GROUPED: pinned}).resolve(GROUPED)
    assert (res.model_identifier, res.default_model_group, res.gitlab_default) == (pinned, "", False)
    gone = World(DeploymentType.DEDICATED, instance_pins={GROUPED: "retired_model_v1"}).resolve(GROUPED, user_id=9)
    assert gone.pinned_model_unavailable and gone.model_identifier in GROUPED_INFO.default_models
    assert gone.default_model_group == GROUPED_INFO.default_model_group


def test_seat_namespaces_agree_only_when_the_users_default_is_the_pinned_one() -> None:
    """Rule 5 with a balanced default: a namespace pinning one of the defaults agrees with an unpinned namespace
    only for the users the hash gives that model."""
    first = GROUPED_INFO.default_models[0]
    world = World(seats=[(u, ns) for u in range(1, 41) for ns in (10, 20)], namespace_pins=[(10, GROUPED, first)])
    for user in range(1, 41):
        mine = balanced_default(GROUPED_INFO, user)
        if mine == first:
            res = world.resolve(GROUPED, user_id=user)
            assert (res.model_identifier, res.source) == (first, SelectionSource.UNANIMOUS_SEAT_NAMESPACES)
        else:
            with pytest.raises(DuoError) as raised:
                world.resolve(GROUPED, user_id=user)
            assert raised.value.reason == DEFAULT_NAMESPACE_REQUIRED
    unpinned = World(seats=[(1, 10), (1, 20)]).resolve(GROUPED)
    assert unpinned.model_identifier == balanced_default(GROUPED_INFO, 1)
    assert unpinned.default_model_group == GROUPED_INFO.default_model_group


# -- deprecations -----------------------------------------------------------------------------------------------

# Deprecated globally (models[].deprecation) and selectable for duo_agent_platform; deprecated for one feature only.
GLOBAL = next(m for m in CATALOG.features["duo_agent_platform"].selectable_models if CATALOG.models[m].deprecation)
PER_FEATURE_FEATURE = next(f for f in CATALOG.features.values() if f.deprecated_models)
PER_FEATURE = next(iter(PER_FEATURE_FEATURE.deprecated_models))

DEPRECATION_CASES = [
    ("global, instance pin", World(DeploymentType.SELF_MANAGED, instance_pins={"duo_agent_platform": GLOBAL}),
     "duo_agent_platform", 0, GLOBAL, CATALOG.models[GLOBAL].deprecation),
    ("global, namespace pin", World(namespace_pins=[(10, "duo_agent_platform", GLOBAL)]), "duo_agent_platform", 10,
     GLOBAL, CATALOG.models[GLOBAL].deprecation),
    ("for the feature, dedicated", World(DeploymentType.DEDICATED,
     instance_pins={PER_FEATURE_FEATURE.name: PER_FEATURE}), PER_FEATURE_FEATURE.name, 0, PER_FEATURE,
     PER_FEATURE_FEATURE.deprecated_models[PER_FEATURE]),
    ("for the feature, sole seat", World(seats=[(1, 10)], namespace_pins=[(10, PER_FEATURE_FEATURE.name,
     PER_FEATURE)]), PER_FEATURE_FEATURE.name, 0, PER_FEATURE, PER_FEATURE_FEATURE.deprecated_models[PER_FEATURE]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "world", "feature", "root", "model", "deprecation"),
    DEPRECATION_CASES,
    ids=[c[0] for c in DEPRECATION_CASES],
)
def test_a_pin_on_a_deprecated_model_is_served_and_flagged(
    name: str, world: World, feature: str, root: int, model: str, deprecation: Deprecation
) -> None:
    res = world.resolve(feature, root)
    assert (res.model_identifier, res.gitlab_default, res.pinned_model_unavailable) == (model, False, False)
    assert res.pinned_model_deprecated and res.deprecation_removal_version == deprecation.removal_version != ""


def test_only_pins_are_flagged_deprecated() -> None:
    deprecated_default = next(f for f in CATALOG.features.values() if CATALOG.models[f.default_model].deprecation)
    res = World(DeploymentType.SELF_MANAGED).resolve(deprecated_default.name)
    assert res.gitlab_default and not res.pinned_model_deprecated  # a default is GitLab's to replace
    # The per-feature deprecation does not follow the model into other features.
    other = next(
        f for f in CATALOG.features.values() if f.is_selectable(PER_FEATURE) and PER_FEATURE not in f.deprecated_models
    )
    assert (
        not World(DeploymentType.SELF_MANAGED, instance_pins={other.name: PER_FEATURE})
        .resolve(other.name)
        .pinned_model_deprecated
    )
    snapshot = World(
        DeploymentType.SELF_MANAGED,
        instance_pins={other.name: PER_FEATURE, PER_FEATURE_FEATURE.name: PER_FEATURE, "duo_agent_platform": GLOBAL},
    ).snapshot()
    assert deprecated_pins(snapshot) == {
        (PER_FEATURE_FEATURE.name, PER_FEATURE, PER_FEATURE_FEATURE.deprecated_models[PER_FEATURE].removal_version): 1,
        ("duo_agent_platform", GLOBAL, CATALOG.models[GLOBAL].deprecation.removal_version): 1,  # type: ignore[union-attr]
    }


# -- team-only models -------------------------------------------------------------------------------------------

TEAM_ONLY_FEATURE = next(f for f in CATALOG.features.values() if f.team_only_models)
TEAM_ONLY = TEAM_ONLY_FEATURE.team_only_models[0]


def test_team_only_models_are_offered_only_when_the_operator_turns_them_on() -> None:
    assert not TEAM_ONLY_FEATURE.is_selectable(TEAM_ONLY)
    off = World(DeploymentType.SELF_MANAGED, instance_pins={TEAM_ONLY_FEATURE.name: TEAM_ONLY})
    res = off.resolve(TEAM_ONLY_FEATURE.name)
    assert res.pinned_model_unavailable and res.model_identifier != TEAM_ONLY
    on = World(
        DeploymentType.SELF_MANAGED,
        instance_pins={TEAM_ONLY_FEATURE.name: TEAM_ONLY},
        options=InstanceOptions(offer_team_only_models=True),
    )
    res = on.resolve(TEAM_ONLY_FEATURE.name)
    assert (res.model_identifier, res.source, res.pinned_model_unavailable) == (
        TEAM_ONLY,
        SelectionSource.INSTANCE,
        False,
    )
    offered = on.snapshot().catalog
    assert offered.features[TEAM_ONLY_FEATURE.name].is_selectable(TEAM_ONLY)
    assert offered_catalog(offered, InstanceOptions(offer_team_only_models=True)) == offered  # idempotent
    unrelated = next(f for f in CATALOG.features.values() if not f.team_only_models)
    assert offered.features[unrelated.name] is CATALOG.features[unrelated.name]


# -- user model selection (DESIGN section 3, "User model selection") ---------------------------------------------

AGENTIC = "duo_agent_platform_agentic_chat"
AGENTIC_INFO = CATALOG.features[AGENTIC]
# Identifiers read from the catalog, so the table holds whichever catalog ships: three selectable models that are
# not the default, a catalog model the feature does not offer, and one the catalog does not know.
PICKS = [m for m in AGENTIC_INFO.selectable_models if m != AGENTIC_INFO.default_model and "__default__" not in m]
A, B, C = PICKS[0], PICKS[1], PICKS[2]
FOREIGN = next(m for m in CATALOG.models if not AGENTIC_INFO.is_selectable(m) and "__default__" not in m)
UNKNOWN = "no_such_model_v0"
DEFAULT = "<the feature's GitLab default>"  # resolved in the table's world, whatever the catalog's default is
SM = DeploymentType.SELF_MANAGED
DED = DeploymentType.DEDICATED


@dataclass
class ChoiceWorld(World):
    allowlists: list[tuple[int, str, tuple[str, ...]]] = field(default_factory=list)  # namespace 0: the instance

    def snapshot(self) -> Snapshot:
        base = super().snapshot()
        for namespace_id, feature, refs in self.allowlists:
            base = base.with_allowlist(namespace_id, feature, refs)
        return base

    def choose(self, feature: str, choice: str, root_namespace_id: int = 0, user_id: int = 1) -> Resolution:
        return resolve(self.snapshot(), user_id, feature, root_namespace_id, self.user(user_id), choice)


def _ns(*pins: tuple[int, str]) -> list[tuple[int, str, str]]:
    return [(ns, AGENTIC, model) for ns, model in pins]


def _lists(*lists: tuple[int, tuple[str, ...]]) -> list[tuple[int, str, tuple[str, ...]]]:
    return [(ns, AGENTIC, refs) for ns, refs in lists]


@dataclass
class ChoiceCase:
    name: str
    world: ChoiceWorld
    choice: str
    model: str
    source: SelectionSource
    selection: UserSelection
    root_namespace_id: int = 0
    governing: int = 0
    feature: str = AGENTIC
    provider: Provider = Provider.GITLAB_AI_GATEWAY


APPLIED = UserSelection.APPLIED
CTX = SelectionSource.CONTEXT_NAMESPACE
USER = SelectionSource.USER
CHOICE_CASES = [
    # GitLab.com, the governing namespace from the request's context
    ChoiceCase("com: hard pin wins over the user", ChoiceWorld(namespace_pins=_ns((10, A))), B, A, CTX,
               UserSelection.IGNORED_PINNED, 10, 10),
    ChoiceCase("com: pin with allowlist on is a default: allowed choice", ChoiceWorld(namespace_pins=_ns((10, A)),
               allowlists=_lists((10, (B,)))), B, B, USER, APPLIED, 10, 10),
    ChoiceCase("com: pin with allowlist on is a default: the pin itself may be chosen",
               ChoiceWorld(namespace_pins=_ns((10, A)), allowlists=_lists((10, (B,)))), A, A, USER, APPLIED, 10, 10),
    ChoiceCase("com: pin with allowlist on: choice outside it gets the pin", ChoiceWorld(namespace_pins=_ns((10, A)),
               allowlists=_lists((10, (B,)))), C, A, CTX, UserSelection.IGNORED_NOT_ALLOWED, 10, 10),
    ChoiceCase("com: no pin, allowlist off: any selectable model", ChoiceWorld(), B, B, USER, APPLIED, 10, 10),
    ChoiceCase("com: choice not in the allowlist gets the default", ChoiceWorld(allowlists=_lists((10, (A,)))), B,
               DEFAULT, CTX, UserSelection.IGNORED_NOT_ALLOWED, 10, 10),
    ChoiceCase("com: a model the catalog does not know", ChoiceWorld(), UNKNOWN, DEFAULT, CTX,
               UserSelection.IGNORED_UNKNOWN_MODEL, 10, 10),
    ChoiceCase("com: a catalog model the feature does not offer", ChoiceWorld(), FOREIGN, DEFAULT, CTX,
               UserSelection.IGNORED_UNKNOWN_MODEL, 10, 10),
    ChoiceCase("com: an allowlisted ref the catalog dropped is ignored", ChoiceWorld(allowlists=_lists((10, (UNKNOWN,
               B)))), UNKNOWN, DEFAULT, CTX, UserSelection.IGNORED_UNKNOWN_MODEL, 10, 10),
    ChoiceCase("com: feature not user selectable", ChoiceWorld(), "gpt_5", CHAT_DEFAULT, CTX,
               UserSelection.IGNORED_NOT_USER_SELECTABLE, 10, 10, feature="duo_chat"),
    ChoiceCase("com: valid default namespace governs", ChoiceWorld(seats=SHARED_SEATS, defaults={1: 20},
               namespace_pins=_ns((10, A), (20, A)), allowlists=_lists((20, (B,)))), B, B, USER, APPLIED, 0, 20),
    ChoiceCase("com: sole seat namespace governs", ChoiceWorld(seats=[(1, 10)], namespace_pins=_ns((10, A))), B, A,
               SelectionSource.SOLE_SEAT_NAMESPACE, UserSelection.IGNORED_PINNED, 0, 10),
    ChoiceCase("com: no seats, no context: nothing restricts", ChoiceWorld(), C, C, USER, APPLIED),
    ChoiceCase("com: multi-seat, the choice makes the candidates agree", ChoiceWorld(seats=SHARED_SEATS,
               namespace_pins=_ns((10, A), (20, C)), allowlists=_lists((10, (B,)), (20, (B,)))), B, B, USER,
               APPLIED),
    ChoiceCase("com: multi-seat, a candidate hard-pinning the chosen model agrees", ChoiceWorld(seats=SHARED_SEATS,
               namespace_pins=_ns((10, A), (20, B)), allowlists=_lists((10, (B,)))), B, B, USER, APPLIED),
    ChoiceCase("com: multi-seat, candidates that agree without the choice keep their answer",
               ChoiceWorld(seats=SHARED_SEATS, namespace_pins=_ns((10, A), (20, A)), allowlists=_lists((10, (B,)))),
               B, A, SelectionSource.UNANIMOUS_SEAT_NAMESPACES, UserSelection.IGNORED_PINNED),
    # Dedicated: the instance governs
    ChoiceCase("dedicated: hard pin", ChoiceWorld(DED, instance_pins={AGENTIC: A}), B, A, SelectionSource.INSTANCE,
               UserSelection.IGNORED_PINNED),
    ChoiceCase("dedicated: pin with allowlist on is a default", ChoiceWorld(DED, instance_pins={AGENTIC: A},
               allowlists=_lists((0, (B,)))), B, B, USER, APPLIED),
    ChoiceCase("dedicated: choice allowed", ChoiceWorld(DED), C, C, USER, APPLIED),
    ChoiceCase("dedicated: choice not allowed", ChoiceWorld(DED, instance_pins={AGENTIC: A},
               allowlists=_lists((0, (B,)))), C, A, SelectionSource.INSTANCE, UserSelection.IGNORED_NOT_ALLOWED),
    ChoiceCase("dedicated: unknown model", ChoiceWorld(DED), UNKNOWN, DEFAULT, SelectionSource.GITLAB_DEFAULT,
               UserSelection.IGNORED_UNKNOWN_MODEL),
    ChoiceCase("dedicated: feature not user selectable", ChoiceWorld(DED), "gpt_5", CHAT_DEFAULT,
               SelectionSource.GITLAB_DEFAULT, UserSelection.IGNORED_NOT_USER_SELECTABLE, feature="duo_chat"),
    # Self-Managed: the instance governs, and feature settings come first
    ChoiceCase("self-managed: hard pin", ChoiceWorld(SM, instance_pins={AGENTIC: A}), B, A, SelectionSource.INSTANCE,
               UserSelection.IGNORED_PINNED),
    ChoiceCase("self-managed: pin with allowlist on is a default", ChoiceWorld(SM, instance_pins={AGENTIC: A},
               allowlists=_lists((0, (B, C)))), C, C, USER, APPLIED),
    ChoiceCase("self-managed: choice allowed", ChoiceWorld(SM), B, B, USER, APPLIED),
    ChoiceCase("self-managed: choice not allowed", ChoiceWorld(SM, allowlists=_lists((0, (B,)))), C, DEFAULT,
               SelectionSource.GITLAB_DEFAULT, UserSelection.IGNORED_NOT_ALLOWED),
    ChoiceCase("self-managed: unknown model", ChoiceWorld(SM), FOREIGN, DEFAULT, SelectionSource.GITLAB_DEFAULT,
               UserSelection.IGNORED_UNKNOWN_MODEL),
    ChoiceCase("self-managed: feature not user selectable", ChoiceWorld(SM), "gpt_5", CHAT_DEFAULT,
               SelectionSource.GITLAB_DEFAULT, UserSelection.IGNORED_NOT_USER_SELECTABLE, feature="duo_chat"),
    ChoiceCase("self-managed: self-hosted setting offers no choice", ChoiceWorld(SM, feature_settings=[FeatureSetting(
               AGENTIC, FeatureProvider.SELF_HOSTED, "m1")]), B, "custom_openai/mistral",
               SelectionSource.FEATURE_SETTING, UserSelection.IGNORED_SELF_HOSTED, provider=Provider.SELF_HOSTED),
    ChoiceCase("self-managed: disabled setting offers no choice", ChoiceWorld(SM, feature_settings=[FeatureSetting(
               AGENTIC, FeatureProvider.DISABLED)]), B, "", SelectionSource.FEATURE_SETTING,
               UserSelection.IGNORED_SELF_HOSTED, provider=Provider.DISABLED),
]  # fmt: skip


@pytest.mark.parametrize("case", CHOICE_CASES, ids=[c.name for c in CHOICE_CASES])
def test_user_choice(case: ChoiceCase) -> None:
    res = case.world.choose(case.feature, case.choice, case.root_namespace_id)
    expected = ChoiceWorld(case.world.deployment).resolve(case.feature).model_identifier
    assert (res.model_identifier, res.source, res.user_selection) == (
        expected if case.model == DEFAULT else case.model,
        case.source,
        case.selection,
    )
    assert res.provider is case.provider
    assert res.governing_namespace_id == case.governing
    if case.selection is APPLIED:
        assert (res.gitlab_default, res.effective_feature, res.pinned_model_unavailable) == (False, AGENTIC, False)
        assert res.model_name == CATALOG.model(case.choice).name
    else:  # ignored: exactly the answer without a choice
        assert res._replace(user_selection=UserSelection.NOT_REQUESTED) == case.world.resolve(
            case.feature, case.root_namespace_id
        )


def test_a_request_without_a_choice_says_none_was_requested() -> None:
    assert ChoiceWorld(namespace_pins=_ns((10, A))).resolve(AGENTIC, 10).user_selection is UserSelection.NOT_REQUESTED


def test_multi_seat_choice_that_the_candidates_disagree_on_fails_as_without_it() -> None:
    world = ChoiceWorld(seats=SHARED_SEATS, namespace_pins=_ns((10, A), (20, C)), allowlists=_lists((10, (B,))))
    for choice in (B, UNKNOWN, ""):
        with pytest.raises(DuoError) as raised:
            world.choose(AGENTIC, choice)
        assert raised.value.reason == DEFAULT_NAMESPACE_REQUIRED
        assert raised.value.metadata["candidate_namespace_ids"] == "10,20"


def test_the_choice_is_judged_per_feature_not_through_the_parent() -> None:
    """The allowlist is the feature's own; a duo_chat pin does not turn into a hard pin of agentic chat."""
    world = ChoiceWorld(namespace_pins=[(10, "duo_chat", "gpt_5")])
    assert world.choose(AGENTIC, B, 10).user_selection is APPLIED


MODELS = st.sampled_from([A, B, C, FOREIGN, UNKNOWN])
NAMESPACES = (10, 20, 30)


@st.composite
def choice_worlds(draw: st.DrawFn) -> tuple[ChoiceWorld, int, str]:
    deployment = draw(st.sampled_from(list(DeploymentType)))
    seats = [(1, ns) for ns in draw(st.sets(st.sampled_from(NAMESPACES)))]
    scopes = NAMESPACES if deployment is DeploymentType.GITLAB_COM else (0,)
    pins: dict[int, str | None] = {ns: draw(st.none() | MODELS) for ns in scopes}
    instance_pin = pins.get(0)
    lists = {ns: draw(st.none() | st.lists(MODELS, max_size=3).map(tuple)) for ns in scopes}
    setting = draw(st.none() | st.sampled_from(list(FeatureProvider)))
    world = ChoiceWorld(
        deployment,
        seats=seats,
        defaults={1: draw(st.sampled_from((0, *NAMESPACES)))},
        namespace_pins=[(ns, AGENTIC, m) for ns, m in pins.items() if ns and m],
        instance_pins={AGENTIC: instance_pin} if instance_pin else {},
        feature_settings=[FeatureSetting(AGENTIC, setting, "m1" if setting is FeatureProvider.SELF_HOSTED else "")]
        if setting and deployment is SM
        else [],
        allowlists=[(ns, AGENTIC, refs) for ns, refs in lists.items() if refs is not None],
    )
    return world, draw(st.sampled_from((0, *NAMESPACES, 40))), draw(MODELS)


def _allowed_by_scope(world: ChoiceWorld, namespace_id: int) -> set[str]:
    """The test's own reading of rule 5: who may choose what at one scope."""
    pin = world.instance_pins.get(AGENTIC) if namespace_id == 0 else None
    pin = pin or next((m for ns, _, m in world.namespace_pins if ns == namespace_id), None)
    refs = next((r for ns, _, r in world.allowlists if ns == namespace_id), None)
    if world.deployment is SM and any(s.provider is not FeatureProvider.VENDORED for s in world.feature_settings):
        return set()
    if refs is None:
        return set() if pin else set(AGENTIC_INFO.selectable_models)
    floor = pin if pin in AGENTIC_INFO.selectable_models else AGENTIC_INFO.default_model
    return {floor} | {r for r in refs if AGENTIC_INFO.is_selectable(r)}


def _outcome(world: ChoiceWorld, root: int, choice: str) -> Resolution | str:
    try:
        return world.choose(AGENTIC, choice, root)
    except DuoError as error:
        return error.reason


@settings(max_examples=400, deadline=None)
@given(choice_worlds())
def test_the_answer_is_the_allowed_choice_or_the_scope_setting_never_an_error_of_the_choice(
    drawn: tuple[ChoiceWorld, int, str],
) -> None:
    world, root, choice = drawn
    without = _outcome(world, root, "")
    answer = _outcome(world, root, choice)
    if isinstance(answer, str):  # an error: only the one the request gets without a choice
        assert answer == without
        return
    if answer.user_selection is not UserSelection.APPLIED:
        assert answer.user_selection is not UserSelection.NOT_REQUESTED
        assert isinstance(without, Resolution)
        assert answer._replace(user_selection=UserSelection.NOT_REQUESTED) == without
        return
    assert (answer.model_identifier, answer.source) == (choice, SelectionSource.USER)
    if world.deployment is not DeploymentType.GITLAB_COM:
        assert choice in _allowed_by_scope(world, 0)
        return
    user = user_defaults(world.user())
    governing = root or user.effective_default
    if governing or len(user.seats) < 2:
        assert choice in _allowed_by_scope(world, governing)
    else:  # every candidate allows it or pins that very model
        for ns in user.seats:
            pin = next((m for n, _, m in world.namespace_pins if n == ns), None)
            assert choice in _allowed_by_scope(world, ns) or pin == choice


@settings(max_examples=150, deadline=None)
@given(choice_worlds())
def test_the_picker_offers_exactly_the_choices_that_would_be_applied(drawn: tuple[ChoiceWorld, int, str]) -> None:
    world, root, _ = drawn
    snapshot, user = world.snapshot(), world.user()
    choices = user_choices(snapshot, 1, AGENTIC, root, user)
    applied = []
    for model in AGENTIC_INFO.selectable_models:
        try:
            if resolve(snapshot, 1, AGENTIC, root, user, model).user_selection is UserSelection.APPLIED:
                applied.append(model)
        except DuoError:
            pass
    assert list(choices.allowed) == applied
    assert choices.may_choose is bool(applied)
    assert (choices.why_not is UserSelection.NOT_REQUESTED) is bool(applied)
    if choices.pinned_model:
        assert not applied and choices.why_not is UserSelection.IGNORED_PINNED
    try:
        assert choices.default == resolve(snapshot, 1, AGENTIC, root, user)
    except DuoError as error:
        assert (choices.default, choices.error_reason) == (None, error.reason)
