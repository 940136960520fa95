"""What a pin update changes (DESIGN section 3, "Admin conveniences"): "apply to all" and the impact preview.

Pure: functions of the catalog, the snapshot, the pins before and after, and the store's summary of a namespace's
seat holders (SeatHolders, one query). No I/O.

A GitLab.com user's no-context answer for a feature depends on a namespace's pin in two cases only:
- the namespace is the user's effective default (a valid explicit default, or the user's only seat): the answer is
  that namespace's model ("governed");
- the user has no valid default and several seats, this one among them: the answer is the model every seat
  namespace agrees on, or DEFAULT_NAMESPACE_REQUIRED when they disagree ("contested").
Everyone else routes through another namespace and does not notice the change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sidecar.catalog import Catalog, FeatureInfo
from sidecar.policy import choose
from sidecar.snapshot import Snapshot

MODEL_NOT_SELECTABLE = "MODEL_NOT_SELECTABLE"


@dataclass(frozen=True, slots=True)
class SkippedSubFeature:
    """A sub-feature that "apply to all" left alone, and why (reason UPPER_SNAKE_CASE)."""

    feature: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class SubFeaturePlan:
    """Which sub-features "apply to all" sets along with their parent, and which it skips."""

    applied: tuple[str, ...] = ()
    skipped: tuple[SkippedSubFeature, ...] = ()


@dataclass(frozen=True, slots=True)
class SeatHolders:
    """The seat holders of one namespace, summarised for the impact of a change of its pins."""

    count: int  # users holding a seat in the namespace
    governed: int  # of them, those whose effective default namespace is this one
    # Of them, those without a valid default and with seats elsewhere too: each one's other seat namespaces.
    contested: Sequence[Sequence[int]] = field(default_factory=tuple)


NO_SEAT_HOLDERS = SeatHolders(0, 0)


@dataclass(frozen=True, slots=True)
class SelectionImpact:
    features: tuple[str, ...]  # the features whose pin the change writes
    model_before: str  # the model serving the feature at the pin's scope, before
    model_after: str  # and after
    no_context_users_changed: int = 0  # GitLab.com: users whose no-context answer for the feature changes
    users_newly_requiring_default_namespace: int = 0  # GitLab.com: unanimous before, DEFAULT_NAMESPACE_REQUIRED after
    seat_holders: int = 0  # GitLab.com: users with a seat in the namespace


def sub_features(catalog: Catalog, parent: str) -> list[FeatureInfo]:
    """The features whose parent is `parent` (duo_chat's duo_chat_* sub-features), by name."""
    return [info for info in catalog.features.values() if info.parent == parent]


def plan_sub_features(catalog: Catalog, parent: FeatureInfo, ref: str, pins: Mapping[str, str]) -> SubFeaturePlan:
    """Setting a model: every sub-feature that offers it; the others are skipped and named. Clearing (ref ""):
    every sub-feature, so each follows the parent again."""
    applied: list[str] = []
    skipped: list[SkippedSubFeature] = []
    for info in sub_features(catalog, parent.name):
        if not ref or info.is_selectable(ref):
            applied.append(info.name)
            continue
        own = pins.get(info.name)
        then = (
            f"it keeps its own pin ({own})"
            if own
            else f"with no pin of its own it is served its default ({info.default_model}), as when the parent's "
            "pinned model is not selectable for it"
        )
        skipped.append(
            SkippedSubFeature(
                info.name,
                MODEL_NOT_SELECTABLE,
                f"{ref} is not a selectable model for {info.name} ({info.title}); {then}",
            )
        )
    return SubFeaturePlan(tuple(applied), tuple(skipped))


def pins_after(pins: Mapping[str, str], features: Iterable[str], ref: str) -> dict[str, str]:
    """A scope's pins once `features` are set to `ref` ("" clears them)."""
    updated = dict(pins)
    for feature in features:
        if ref:
            updated[feature] = ref
        else:
            updated.pop(feature, None)
    return updated


def scope_impact(
    info: FeatureInfo, before: Mapping[str, str] | None, after: Mapping[str, str], features: Sequence[str]
) -> SelectionImpact:
    """The impact at an instance scope: which model serves the feature before and after (no per-user counts)."""
    return SelectionImpact(tuple(features), choose(before, info).identifier, choose(after, info).identifier)


def namespace_impact(
    snapshot: Snapshot,
    info: FeatureInfo,
    namespace_id: int,
    after: Mapping[str, str],
    features: Sequence[str],
    holders: SeatHolders,
) -> SelectionImpact:
    """The impact of giving namespace `namespace_id` the pins `after`, for `info`'s no-context answers."""
    impact = scope_impact(info, snapshot.namespace_pins.get(namespace_id), after, features)
    before_model, after_model = impact.model_before, impact.model_after
    changed = newly_required = 0
    if before_model != after_model:
        changed = holders.governed
        model_of: dict[int, str] = {}
        for others in holders.contested:
            agreed = _agreed_model(snapshot, info, others, model_of)
            # The user's answer was `agreed` if this namespace gave it too, and is `agreed` afterwards if this
            # namespace gives it then; otherwise the candidates disagree (DEFAULT_NAMESPACE_REQUIRED).
            if agreed == before_model:
                changed += 1
                newly_required += 1
            elif agreed == after_model:
                changed += 1
    return SelectionImpact(
        impact.features,
        before_model,
        after_model,
        no_context_users_changed=changed,
        users_newly_requiring_default_namespace=newly_required,
        seat_holders=holders.count,
    )


def _agreed_model(snapshot: Snapshot, info: FeatureInfo, namespaces: Sequence[int], model_of: dict[int, str]) -> str:
    """The model all these namespaces give the feature, or "" when they disagree."""
    agreed = ""
    for namespace_id in namespaces:
        model = model_of.get(namespace_id)
        if model is None:
            model = model_of[namespace_id] = choose(snapshot.namespace_pins.get(namespace_id), info).identifier
        if not agreed:
            agreed = model
        elif model != agreed:
            return ""
    return agreed
