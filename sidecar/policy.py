"""The routing policy (DESIGN section 3): a pure function of a Snapshot and a request.

No I/O and no gRPC types: the servicers translate, this module decides.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import NamedTuple, TypeVar

from sidecar.catalog import Catalog, Deprecation, FeatureInfo
from sidecar.domain import (
    DeploymentType,
    FeatureProvider,
    Provider,
    SelectionSource,
    SelfHostedModel,
    UserSelection,
)
from sidecar.errors import DuoError, ErrorCode, PreconditionViolation, failed_precondition, invalid_argument
from sidecar.snapshot import Allowlists, InstanceOptions, Snapshot
from sidecar.users import NO_USER_DATA, UserRouting

T = TypeVar("T")

DEFAULT_NAMESPACE_REQUIRED = "DEFAULT_NAMESPACE_REQUIRED"
# GitLab's own text for this situation, shown to the user as is.
DEFAULT_NAMESPACE_REQUIRED_MESSAGE = (
    "I'm sorry, you have not selected a default GitLab Duo namespace. Please go to GitLab and in user "
    "Preferences - Behavior, select a default namespace for GitLab Duo."
)
DEFAULT_NAMESPACE_SETTING = "Preferences > Behavior > Default GitLab Duo namespace"
NO_MODEL_CONFIGURED = "NO_MODEL_CONFIGURED"


# NamedTuples, not frozen dataclasses: as immutable, and several microseconds cheaper to build on the hot path.
class Resolution(NamedTuple):
    """Which model serves a request, and why."""

    provider: Provider
    model_identifier: str
    model_name: str
    gitlab_default: bool
    source: SelectionSource
    governing_namespace_id: int
    default_namespace_prompt: bool
    pinned_model_unavailable: bool
    config_version: int
    effective_feature: str
    self_hosted_model: SelfHostedModel | None = None
    pinned_model_deprecated: bool = False
    deprecation_removal_version: str = ""
    default_model_group: str = ""  # the `__default__<feature>` group the model was drawn from
    user_selection: UserSelection = UserSelection.NOT_REQUESTED


class Choice(NamedTuple):
    """The catalog model a pin scope (a namespace or the instance) gives a feature."""

    identifier: str
    effective_feature: str
    pinned: bool
    pinned_model_unavailable: bool


class UserDefaults(NamedTuple):
    """A user's seats and default namespace, as rules 2 to 7 read them."""

    seats: frozenset[int]
    explicit_default: int
    explicit_default_valid: bool
    effective_default: int
    prompt: bool


def feature_info(snapshot: Snapshot, feature: str) -> FeatureInfo:
    info = snapshot.catalog.features.get(feature)
    if info is None:
        raise invalid_argument(
            "feature",
            f"unknown feature {feature[:64]!r}; ListSelectableModels lists the features this sidecar knows",
            reason="UNKNOWN_FEATURE",
        )
    return info


def _lookup(settings: Mapping[str, T] | None, info: FeatureInfo) -> tuple[str, T | None]:
    """The feature's own entry, else its parent's (duo_chat sub-features), else none."""
    if settings:
        own = settings.get(info.name)
        if own is not None:
            return info.name, own
        if info.parent is not None:
            inherited = settings.get(info.parent)
            if inherited is not None:
                return info.parent, inherited
    return info.name, None


def choose(pins: Mapping[str, str] | None, info: FeatureInfo) -> Choice:
    effective_feature, ref = _lookup(pins, info)
    if ref is None:
        return Choice(info.default_model, info.name, pinned=False, pinned_model_unavailable=False)
    if info.is_selectable(ref):
        return Choice(ref, effective_feature, pinned=True, pinned_model_unavailable=False)
    # The pinned model left the catalog: serve the default and say so, never fail the user's request.
    return Choice(info.default_model, effective_feature, pinned=False, pinned_model_unavailable=True)


def user_defaults(user: UserRouting) -> UserDefaults:
    seats = user.seats
    explicit = user.default_namespace
    valid = explicit != 0 and explicit in seats
    if valid:
        effective = explicit
    elif len(seats) == 1:
        effective = next(iter(seats))
    else:
        effective = 0
    return UserDefaults(
        seats=seats,
        explicit_default=explicit,
        explicit_default_valid=valid,
        effective_default=effective,
        prompt=not valid and len(seats) >= 2,
    )


def resolve(
    snapshot: Snapshot,
    user_id: int,
    feature: str,
    root_namespace_id: int,
    user: UserRouting = NO_USER_DATA,
    user_selected_model: str = "",
) -> Resolution:
    """Applies the routing rules; raises DuoError for invalid input or DEFAULT_NAMESPACE_REQUIRED.

    `user` is the user's seats and default namespace; only GitLab.com reads it. `user_selected_model` is the
    user's own choice: it never makes a request fail (see resolve_with_user_choice).
    """
    if user_id <= 0:
        raise invalid_argument("user_id", f"user_id must be a positive GitLab user id, got {user_id}")
    if root_namespace_id < 0:
        raise invalid_argument(
            "root_namespace_id",
            f"root_namespace_id must be 0 (no context) or positive, got {root_namespace_id}",
        )
    info = feature_info(snapshot, feature)
    if user_selected_model:
        resolution = resolve_with_user_choice(snapshot, user_id, user, info, root_namespace_id, user_selected_model)
    elif snapshot.deployment_type is DeploymentType.GITLAB_COM:
        resolution = _resolve_gitlab_com(snapshot, user_id, user, info, root_namespace_id)
    else:
        resolution = _resolve_instance(snapshot, info)
    if resolution.provider is Provider.GITLAB_AI_GATEWAY and (
        info.default_model_group or not resolution.gitlab_default
    ):
        return _catalog_flags(snapshot, info, user_id, user, resolution)
    return resolution


def _catalog_resolution(
    snapshot: Snapshot,
    choice: Choice,
    source: SelectionSource,
    governing_namespace_id: int,
    prompt: bool,
) -> Resolution:
    return Resolution(
        provider=Provider.GITLAB_AI_GATEWAY,
        model_identifier=choice.identifier,
        model_name=snapshot.catalog.model(choice.identifier).name,
        gitlab_default=not choice.pinned,
        source=source,
        governing_namespace_id=governing_namespace_id,
        default_namespace_prompt=prompt,
        pinned_model_unavailable=choice.pinned_model_unavailable,
        config_version=snapshot.config_version,
        effective_feature=choice.effective_feature,
    )


def _resolve_gitlab_com(
    snapshot: Snapshot, user_id: int, user: UserRouting, info: FeatureInfo, root_namespace_id: int
) -> Resolution:
    defaults = user_defaults(user)
    if root_namespace_id:
        choice = choose(snapshot.namespace_pins.get(root_namespace_id), info)
        return _catalog_resolution(
            snapshot, choice, SelectionSource.CONTEXT_NAMESPACE, root_namespace_id, defaults.prompt
        )
    if defaults.effective_default:
        source = (
            SelectionSource.DEFAULT_NAMESPACE
            if defaults.explicit_default_valid
            else SelectionSource.SOLE_SEAT_NAMESPACE
        )
        choice = choose(snapshot.namespace_pins.get(defaults.effective_default), info)
        return _catalog_resolution(snapshot, choice, source, defaults.effective_default, defaults.prompt)
    if not defaults.seats:
        choice = choose(None, info)
        return _catalog_resolution(snapshot, choice, SelectionSource.GITLAB_DEFAULT, 0, defaults.prompt)

    candidates = sorted(defaults.seats)
    choices = [choose(snapshot.namespace_pins.get(ns), info) for ns in candidates]
    if len({c.identifier for c in choices}) == 1:
        unanimous = Choice(
            identifier=choices[0].identifier,
            effective_feature=choices[0].effective_feature
            if len({c.effective_feature for c in choices}) == 1
            else info.name,
            pinned=any(c.pinned for c in choices),
            pinned_model_unavailable=any(c.pinned_model_unavailable for c in choices),
        )
        return _catalog_resolution(snapshot, unanimous, SelectionSource.UNANIMOUS_SEAT_NAMESPACES, 0, defaults.prompt)
    raise default_namespace_required(user_id, info.name, candidates)


def default_namespace_required(user_id: int, feature: str, candidates: list[int]) -> DuoError:
    ids = ",".join(str(ns) for ns in candidates)
    return DuoError(
        ErrorCode.FAILED_PRECONDITION,
        DEFAULT_NAMESPACE_REQUIRED,
        DEFAULT_NAMESPACE_REQUIRED_MESSAGE,
        metadata={"user_id": str(user_id), "feature": feature, "candidate_namespace_ids": ids},
        precondition_violations=(
            PreconditionViolation(
                DEFAULT_NAMESPACE_REQUIRED,
                f"users/{user_id}",
                f"The user holds GitLab Duo seats in namespaces {ids}, which select different models for "
                f"{feature}, and has no default namespace. The user sets one in GitLab at "
                f"{DEFAULT_NAMESPACE_SETTING}; an admin can call SetUserDefaultNamespace.",
            ),
        ),
    )


def _resolve_instance(snapshot: Snapshot, info: FeatureInfo) -> Resolution:
    # Dedicated and Self-Managed alike: feature settings first (rule 1), then the instance pin, then the default.
    setting_feature, setting = _lookup(snapshot.feature_settings, info)
    if setting is not None and setting.provider is FeatureProvider.DISABLED:
        return Resolution(
            provider=Provider.DISABLED,
            model_identifier="",
            model_name="",
            gitlab_default=False,
            source=SelectionSource.FEATURE_SETTING,
            governing_namespace_id=0,
            default_namespace_prompt=False,
            pinned_model_unavailable=False,
            config_version=snapshot.config_version,
            effective_feature=setting_feature,
        )
    if setting is not None and setting.provider is FeatureProvider.SELF_HOSTED:
        model = snapshot.self_hosted_models[setting.self_hosted_model_id]
        return Resolution(
            provider=Provider.SELF_HOSTED,
            model_identifier=model.identifier,
            model_name=model.name,
            gitlab_default=False,
            source=SelectionSource.FEATURE_SETTING,
            governing_namespace_id=0,
            default_namespace_prompt=False,
            pinned_model_unavailable=False,
            config_version=snapshot.config_version,
            effective_feature=setting_feature,
            self_hosted_model=model,
        )
    choice = choose(snapshot.instance_pins, info)
    if not snapshot.options.gitlab_default_reachable:
        problem = no_model_configured(snapshot.options, info, choice, snapshot.instance_pins)
        if problem is not None:
            raise problem
    source = (
        SelectionSource.INSTANCE if choice.pinned or choice.pinned_model_unavailable else SelectionSource.GITLAB_DEFAULT
    )
    return _catalog_resolution(snapshot, choice, source, 0, prompt=False)


def no_model_configured(
    options: InstanceOptions, info: FeatureInfo, choice: Choice, pins: Mapping[str, str]
) -> DuoError | None:
    """Rule 3's exceptions: a hybrid instance has no GitLab-managed default, an offline one no GitLab-managed model.

    `choice` is what the instance pin (or the default) gives the feature; None when it can serve it.
    """
    if choice.pinned and not options.offline_license:
        return None  # hybrid: a pinned GitLab-managed model is reached through GitLab's AI Gateway
    _, stored_pin = _lookup(pins, info)
    if options.offline_license:
        why = (
            "this instance's license is offline (instance.offline_license), so GitLab-managed models cannot be reached"
        )
        if stored_pin:
            why += f"; the instance pin on {stored_pin} is kept but never used"
        fix = (
            f"An administrator assigns a self-hosted model to {info.name} (UpdateFeatureSetting; "
            "duo-admin features set) or disables it"
        )
    else:
        why = (
            "this instance runs its own AI Gateway (instance.self_hosted_ai_gateway), so it has no GitLab-managed "
            "default"
        )
        if stored_pin:
            why += f"; the pinned model {stored_pin} is no longer offered by the catalog"
        fix = (
            f"An administrator assigns a self-hosted model to {info.name} (UpdateFeatureSetting; "
            "duo-admin features set) or pins a GitLab-managed model (UpdateInstanceModelSelection; "
            "duo-admin instance-models set)"
        )
    message = f"No model is configured for the {info.title} feature ({info.name}): {why}. {fix}."
    return failed_precondition(
        NO_MODEL_CONFIGURED,
        message,
        subject=f"featureSettings/{info.name}",
        metadata={
            "feature": info.name,
            "cause": "offline_license" if options.offline_license else "self_hosted_ai_gateway",
            **({"pinned_model": stored_pin} if stored_pin else {}),
        },
    )


def instance_without_model(snapshot: Snapshot, info: FeatureInfo) -> DuoError | None:
    """The NO_MODEL_CONFIGURED error requests for the feature get on this instance, None when a model serves it."""
    if snapshot.deployment_type is DeploymentType.GITLAB_COM or snapshot.options.gitlab_default_reachable:
        return None
    _, setting = _lookup(snapshot.feature_settings, info)
    if setting is not None and setting.provider is not FeatureProvider.VENDORED:
        return None  # self-hosted or disabled: rule 1 answers
    return no_model_configured(snapshot.options, info, choose(snapshot.instance_pins, info), snapshot.instance_pins)


# -- the catalog's load-balanced defaults and deprecations (DESIGN section 3, "Everywhere") ---------------------

# The sources whose model is a scope's pin: a deprecated one is flagged (a user's own choice is not a pin).
PIN_SOURCES = frozenset(
    {
        SelectionSource.CONTEXT_NAMESPACE,
        SelectionSource.DEFAULT_NAMESPACE,
        SelectionSource.SOLE_SEAT_NAMESPACE,
        SelectionSource.UNANIMOUS_SEAT_NAMESPACES,
        SelectionSource.INSTANCE,
    }
)
_feature_crcs: dict[str, int] = {}
_MODEL_IDENTIFIER = Resolution._fields.index("model_identifier")
_MODEL_NAME = Resolution._fields.index("model_name")
_DEPRECATED = Resolution._fields.index("pinned_model_deprecated")
_REMOVAL_VERSION = Resolution._fields.index("deprecation_removal_version")
_DEFAULT_MODEL_GROUP = Resolution._fields.index("default_model_group")


def stable_bucket(user_id: int, feature: str, buckets: int) -> int:
    """The same bucket for a user and feature in every process, version and restart, spread evenly: CRC-32 of the
    user id's 8 bytes, seeded with the CRC-32 of the feature name (cached). Not Python's hash(): salted per process."""
    seed = _feature_crcs.get(feature)
    if seed is None:
        seed = _feature_crcs[feature] = zlib.crc32(feature.encode())
    return zlib.crc32(user_id.to_bytes(8, "little"), seed) % buckets


def balanced_default(info: FeatureInfo, user_id: int) -> str:
    """The real model a user gets from a feature's default: the only one, or one of several by stable hash."""
    defaults = info.default_models
    if len(defaults) < 2:
        return info.default_model
    return defaults[stable_bucket(user_id, info.name, len(defaults))]


def pin_deprecation(catalog: Catalog, info: FeatureInfo, identifier: str) -> Deprecation | None:
    """The model's deprecation for this feature, else its global one; None when it is not deprecated."""
    deprecation = info.deprecated_models.get(identifier)
    if deprecation is None:
        model = catalog.models.get(identifier)
        deprecation = model.deprecation if model is not None else None
    return deprecation


def _catalog_flags(
    snapshot: Snapshot, info: FeatureInfo, user_id: int, user: UserRouting, res: Resolution
) -> Resolution:
    """A GitLab-managed answer, completed: a default drawn from a load-balanced group names one real model and the
    group; a pin on a deprecated model is flagged with its removal version."""
    if info.default_model_group and res.source is SelectionSource.UNANIMOUS_SEAT_NAMESPACES:
        _check_unanimous_with_balanced_default(snapshot, info, user_id, user)
    if not res.gitlab_default:
        if res.source not in PIN_SOURCES:
            return res
        deprecation = pin_deprecation(snapshot.catalog, info, res.model_identifier)
        if deprecation is None:
            return res
        values = list(res)  # NamedTuple._replace costs 4x more on the hot path
        values[_DEPRECATED] = True
        values[_REMOVAL_VERSION] = deprecation.removal_version
        return Resolution._make(values)
    if not info.default_model_group:
        return res
    identifier = balanced_default(info, user_id)
    values = list(res)
    values[_MODEL_IDENTIFIER] = identifier
    values[_MODEL_NAME] = snapshot.catalog.model(identifier).name
    values[_DEFAULT_MODEL_GROUP] = info.default_model_group
    return Resolution._make(values)


def _check_unanimous_with_balanced_default(
    snapshot: Snapshot, info: FeatureInfo, user_id: int, user: UserRouting
) -> None:
    """Rule 5 again with the user's real default: a namespace pinning one of the balanced defaults agrees with the
    unpinned ones only when the hash gives the user that model."""
    mine = balanced_default(info, user_id)
    candidates = sorted(user.seats)
    answers = set()
    for namespace_id in candidates:
        choice = choose(snapshot.namespace_pins.get(namespace_id), info)
        answers.add(choice.identifier if choice.pinned else mine)
    if len(answers) > 1:
        raise default_namespace_required(user_id, info.name, candidates)


def deprecated_pins(snapshot: Snapshot) -> dict[tuple[str, str, str], int]:
    """Stored pins (instance and namespace) on deprecated models: (feature, model, removal version) -> count."""
    counts: dict[tuple[str, str, str], int] = {}
    features = snapshot.catalog.features

    def count(pins: Mapping[str, str]) -> None:
        for feature, ref in pins.items():
            info = features.get(feature)
            deprecation = pin_deprecation(snapshot.catalog, info, ref) if info is not None else None
            if deprecation is not None:
                key = (feature, ref, deprecation.removal_version)
                counts[key] = counts.get(key, 0) + 1

    count(snapshot.instance_pins)
    for pins in snapshot.namespace_pins.values():
        count(pins)
    return counts


# -- user model selection (DESIGN section 3, "User model selection") --------------------------------------------


class ScopeOptions(NamedTuple):
    """What a user may choose at one scope (a namespace, or the instance) for one feature."""

    default: Choice  # what serves the request when the user's choice is not used
    may_choose: bool
    why_not: UserSelection  # when not may_choose: the reason a choice is ignored
    allowlist: tuple[str, ...] | None  # the scope's allowlist refs; None: allowlist off


def scope_options(pins: Mapping[str, str] | None, allowlist: tuple[str, ...] | None, info: FeatureInfo) -> ScopeOptions:
    default = choose(pins, info)
    if not info.user_selectable:
        return ScopeOptions(default, False, UserSelection.IGNORED_NOT_USER_SELECTABLE, allowlist)
    # A pin with the allowlist off is a hard pin, even when its model left the catalog (it then serves the default):
    # the owner restricted the feature, and a vanished model does not open it up.
    if allowlist is None and (default.pinned or default.pinned_model_unavailable):
        return ScopeOptions(default, False, UserSelection.IGNORED_PINNED, allowlist)
    return ScopeOptions(default, True, UserSelection.NOT_REQUESTED, allowlist)


def allowed_models(options: ScopeOptions, info: FeatureInfo) -> tuple[str, ...]:
    """The models a user may choose at the scope: with the allowlist on, its refs the catalog still offers plus
    the scope's pin (or, with none, the default); with it off, every selectable model; none when no choice."""
    if not options.may_choose:
        return ()
    if options.allowlist is None:
        return info.selectable_models
    allowed = [options.default.identifier]
    allowed += [ref for ref in options.allowlist if ref not in allowed and info.is_selectable(ref)]
    return tuple(allowed)


def stale_refs(allowlist: tuple[str, ...], info: FeatureInfo) -> tuple[str, ...]:
    """Allowlist refs the catalog no longer offers for the feature: kept, reported, ignored."""
    return tuple(ref for ref in allowlist if not info.is_selectable(ref))


def judge_choice(options: ScopeOptions, info: FeatureInfo, selected: str) -> UserSelection:
    """Whether the scope lets the user's choice serve the request, and if not, why."""
    if not options.may_choose:
        return options.why_not
    if options.allowlist is None:
        allowed = info.is_selectable(selected)
    else:
        allowed = selected == options.default.identifier or (
            selected in options.allowlist and info.is_selectable(selected)
        )
    if allowed:
        return UserSelection.APPLIED
    return UserSelection.IGNORED_NOT_ALLOWED if info.is_selectable(selected) else UserSelection.IGNORED_UNKNOWN_MODEL


def _allowlist(allowlists: Allowlists | None, info: FeatureInfo) -> tuple[str, ...] | None:
    return allowlists.get(info.name) if allowlists else None


def namespace_options(snapshot: Snapshot, namespace_id: int, info: FeatureInfo) -> ScopeOptions:
    return scope_options(
        snapshot.namespace_pins.get(namespace_id),
        _allowlist(snapshot.namespace_allowlists.get(namespace_id), info),
        info,
    )


def instance_options(snapshot: Snapshot, info: FeatureInfo) -> ScopeOptions:
    return scope_options(snapshot.instance_pins, _allowlist(snapshot.instance_allowlists, info), info)


def _user_choice_resolution(
    snapshot: Snapshot, info: FeatureInfo, selected: str, governing_namespace_id: int, prompt: bool
) -> Resolution:
    choice = Choice(selected, info.name, pinned=True, pinned_model_unavailable=False)
    answer = _catalog_resolution(snapshot, choice, SelectionSource.USER, governing_namespace_id, prompt)
    return answer._replace(user_selection=UserSelection.APPLIED)


def resolve_with_user_choice(
    snapshot: Snapshot, user_id: int, user: UserRouting, info: FeatureInfo, root_namespace_id: int, selected: str
) -> Resolution:
    """Rules 1-4: the governing scope's answer, or the user's choice where the scope allows it.

    Whatever the choice, the answer is either the choice or exactly what the request gets without one (an error
    included): the choice itself never fails a request.
    """
    gitlab_com = snapshot.deployment_type is DeploymentType.GITLAB_COM
    if not info.user_selectable:
        base = (
            _resolve_gitlab_com(snapshot, user_id, user, info, root_namespace_id)
            if gitlab_com
            else _resolve_instance(snapshot, info)
        )
        return base._replace(user_selection=UserSelection.IGNORED_NOT_USER_SELECTABLE)
    if not gitlab_com:
        base = _resolve_instance(snapshot, info)
        if base.provider is not Provider.GITLAB_AI_GATEWAY:  # self-hosted or disabled by the admin
            verdict = UserSelection.IGNORED_SELF_HOSTED
        else:
            verdict = judge_choice(instance_options(snapshot, info), info, selected)
        if verdict is UserSelection.APPLIED:
            return _user_choice_resolution(snapshot, info, selected, 0, prompt=False)
        return base._replace(user_selection=verdict)
    defaults = user_defaults(user)
    verdict, governing = _gitlab_com_verdict(snapshot, defaults, info, root_namespace_id, selected)
    if verdict is UserSelection.APPLIED:
        return _user_choice_resolution(snapshot, info, selected, governing, defaults.prompt)
    return _resolve_gitlab_com(snapshot, user_id, user, info, root_namespace_id)._replace(user_selection=verdict)


def _gitlab_com_verdict(
    snapshot: Snapshot, defaults: UserDefaults, info: FeatureInfo, root_namespace_id: int, selected: str
) -> tuple[UserSelection, int]:
    """The verdict on the user's choice and the namespace that gave it (0: none, or every candidate)."""
    scope = root_namespace_id or defaults.effective_default
    if scope or len(defaults.seats) < 2:  # one governing namespace, or none (no seats: the GitLab default)
        return judge_choice(namespace_options(snapshot, scope, info), info, selected), scope
    # Rule 4: no context, no default, several seats: the choice is judged in every candidate namespace. It serves
    # the request when every candidate serves the chosen model (allowing it, or pinning that very model).
    ignored: list[UserSelection] = []
    applied = disagree = False
    for ns in sorted(defaults.seats):
        options = namespace_options(snapshot, ns, info)
        verdict = judge_choice(options, info, selected)
        if verdict is UserSelection.APPLIED:
            applied = True
            continue
        ignored.append(verdict)
        disagree = disagree or options.default.identifier != selected
    if applied and not disagree:
        return UserSelection.APPLIED, 0
    return ignored[0], 0


class UserChoices(NamedTuple):
    """What a user's model picker shows for one feature (ListUserSelectableModels, GetUserRoutingStatus)."""

    default: Resolution | None  # the answer without a choice; None when it is an error (see error_reason)
    error_reason: str  # why there is no default answer (DEFAULT_NAMESPACE_REQUIRED, NO_MODEL_CONFIGURED, ...)
    allowed: tuple[str, ...]  # the choices that would serve the request, in catalog order
    pinned_model: str  # the governing scope's hard pin, if any
    why_not: UserSelection  # NOT_REQUESTED when the user may choose
    governing_namespace_id: int
    candidate_namespace_ids: tuple[int, ...]  # GitLab.com, no context, several seats, no valid default

    @property
    def may_choose(self) -> bool:
        return bool(self.allowed)


def user_choices(
    snapshot: Snapshot, user_id: int, feature: str, root_namespace_id: int, user: UserRouting = NO_USER_DATA
) -> UserChoices:
    """The models a choice may name for this request, and what serves it without one; the same rules as
    resolve(..., user_selected_model=...), model by model."""
    error_reason = ""
    try:
        default: Resolution | None = resolve(snapshot, user_id, feature, root_namespace_id, user)
    except DuoError as error:
        if error.code is not ErrorCode.FAILED_PRECONDITION:
            raise
        default, error_reason = None, error.reason
    info = snapshot.catalog.features[feature]
    candidates: tuple[int, ...] = ()
    governing = 0
    pinned = ""
    if snapshot.deployment_type is not DeploymentType.GITLAB_COM:
        options = instance_options(snapshot, info)
        if info.user_selectable and (default is None or default.provider is not Provider.GITLAB_AI_GATEWAY):
            # Served by self-hosted models only (a feature setting, or no GitLab-managed model configured).
            options = options._replace(may_choose=False, why_not=UserSelection.IGNORED_SELF_HOSTED)
        allowed = tuple(m for m in info.selectable_models if judge_choice(options, info, m) is UserSelection.APPLIED)
        why_not = options.why_not
        if options.why_not is UserSelection.IGNORED_PINNED and options.default.pinned:
            pinned = options.default.identifier
    else:
        defaults = user_defaults(user)
        governing = root_namespace_id or defaults.effective_default
        if governing or len(defaults.seats) < 2:
            scopes = [namespace_options(snapshot, governing, info)]
        else:
            candidates = tuple(sorted(defaults.seats))
            scopes = [namespace_options(snapshot, ns, info) for ns in candidates]
        allowed = tuple(
            m
            for m in info.selectable_models
            if _gitlab_com_verdict(snapshot, defaults, info, root_namespace_id, m)[0] is UserSelection.APPLIED
        )
        why_not = next((o.why_not for o in scopes if not o.may_choose), UserSelection.IGNORED_NOT_ALLOWED)
        hard_pins = {
            o.default.identifier for o in scopes if o.why_not is UserSelection.IGNORED_PINNED and o.default.pinned
        }
        if len(hard_pins) == 1 and all(o.why_not is UserSelection.IGNORED_PINNED for o in scopes):
            pinned = next(iter(hard_pins))
    return UserChoices(
        default=default,
        error_reason=error_reason,
        allowed=allowed,
        pinned_model=pinned,
        why_not=UserSelection.NOT_REQUESTED if allowed else why_not,
        governing_namespace_id=governing,
        candidate_namespace_ids=candidates,
    )


class FeatureStatus(NamedTuple):
    """How one feature resolves for a user's no-context request (GetUserRoutingStatus), for support staff."""

    feature: str
    resolution: Resolution | None  # None when the request fails: error_reason and error_message say why
    error_reason: str
    error_message: str
    user_selectable: bool
    allowed_choices: tuple[str, ...]  # user-selectable features: the models this user may choose


def routing_status(
    snapshot: Snapshot, user_id: int, user: UserRouting, user_selected_model: str = ""
) -> list[FeatureStatus]:
    """Every feature's no-context answer for the user, with `user_selected_model` applied where users choose."""
    statuses = []
    for name, info in snapshot.catalog.features.items():
        choice = user_selected_model if info.user_selectable else ""
        resolution, reason, message = None, "", ""
        try:
            resolution = resolve(snapshot, user_id, name, 0, user, choice)
        except DuoError as error:
            reason, message = error.reason, error.message
        allowed = user_choices(snapshot, user_id, name, 0, user).allowed if info.user_selectable else ()
        statuses.append(FeatureStatus(name, resolution, reason, message, info.user_selectable, allowed))
    return statuses
