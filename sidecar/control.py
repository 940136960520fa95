"""Admin commands on domain types: each one validates its input against the configuration this process holds,
then commits through the change pipeline (sidecar.pipeline), which applies it here and on every worker.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import urlparse

from sidecar.catalog import Catalog, FeatureInfo
from sidecar.domain import (
    AuditEvent,
    Change,
    ChangeKind,
    DeploymentType,
    FeatureProvider,
    FeatureSetting,
    ModelFamily,
    Platform,
    SeatChange,
    SelfHostedModel,
)
from sidecar.endpoints import EndpointPolicy
from sidecar.errors import DuoError, ErrorCode, failed_precondition, invalid_argument, not_found
from sidecar.impact import (
    SelectionImpact,
    SkippedSubFeature,
    SubFeaturePlan,
    namespace_impact,
    pins_after,
    plan_sub_features,
    scope_impact,
    sub_features,
)
from sidecar.paging import INT_KEY, INT_PAIR_KEY, decode_token, encode_token
from sidecar.pipeline import Audit, ChangePipeline, Staged
from sidecar.policy import feature_info
from sidecar.snapshot import Snapshot
from sidecar.state import ConfigState
from sidecar.store.base import KeepToken, StoreTx
from sidecar.tokens import EncryptedToken

MAX_NAME_LENGTH = 255
MAX_ID_LENGTH = 64
MAX_ENDPOINT_LENGTH = 2048
MAX_API_TOKEN_LENGTH = 8192
MAX_SEAT_CHANGES_PER_BATCH = 10_000
GITLAB_MANAGED_MODEL_UNREACHABLE = "GITLAB_MANAGED_MODEL_UNREACHABLE"
MAX_RESOURCE_PREFIX_LENGTH = 255
SELF_HOSTED_FIELDS = ("name", "family", "platform", "endpoint", "identifier", "api_token")


@dataclass(frozen=True)
class DeploymentRule:
    """Which deployments a kind of setting applies to."""

    what: str
    allowed: tuple[DeploymentType, ...]


# The instance-level settings (DESIGN section 3, "DEDICATED and SELF_MANAGED"): Dedicated reaches self-hosted models
# through the AI Gateway for GitLab Dedicated, per feature, as Self-Managed does through its own.
INSTANCE_DEPLOYMENTS = (DeploymentType.DEDICATED, DeploymentType.SELF_MANAGED)
SELF_HOSTED_MODELS = DeploymentRule("Self-hosted models", INSTANCE_DEPLOYMENTS)
FEATURE_SETTINGS = DeploymentRule("Feature settings", INSTANCE_DEPLOYMENTS)
INSTANCE_SELECTIONS = DeploymentRule("Instance model selections", INSTANCE_DEPLOYMENTS)
NAMESPACE_SELECTIONS = DeploymentRule("Namespace model selections", (DeploymentType.GITLAB_COM,))
SEAT_ASSIGNMENTS = DeploymentRule("Seat assignments", (DeploymentType.GITLAB_COM,))
DEFAULT_NAMESPACES = DeploymentRule("Default GitLab Duo namespaces", (DeploymentType.GITLAB_COM,))
NAMESPACE_ALLOWLISTS = DeploymentRule("Namespace model allowlists", (DeploymentType.GITLAB_COM,))
INSTANCE_ALLOWLISTS = DeploymentRule(
    "Instance model allowlists", (DeploymentType.DEDICATED, DeploymentType.SELF_MANAGED)
)
MAX_ALLOWLIST_REFS = 100
MAX_MODEL_REF_LENGTH = 255


def _audit_json(view: object) -> str:
    return "" if view is None else json.dumps(view, sort_keys=True)


@dataclass(frozen=True)
class SelfHostedModelInput:
    """Admin-supplied fields of a self-hosted model; api_token None means 'not given'."""

    name: str
    family: ModelFamily
    platform: Platform
    endpoint: str
    identifier: str
    api_token: str | None = None


@dataclass(frozen=True)
class DroppedModelRef:
    """A ref an allowlist update did not keep, and why (UNKNOWN_MODEL, NOT_SELECTABLE_FOR_FEATURE, TEAM_ONLY_MODEL,
    DUPLICATE)."""

    model_ref: str
    reason: str
    message: str


@dataclass(frozen=True)
class AllowlistUpdate:
    refs: tuple[str, ...] | None  # as stored after the change; None: off
    dropped: tuple[DroppedModelRef, ...]
    config_version: int


def vet_allowlist(
    catalog: Catalog, info: FeatureInfo, refs: Sequence[str]
) -> tuple[tuple[str, ...], tuple[DroppedModelRef, ...]]:
    """The refs an allowlist keeps (selectable for the feature, first occurrence, in the order given) and the
    ones it drops, each with its reason."""
    kept: list[str] = []
    dropped: list[DroppedModelRef] = []
    for ref in refs:
        shown = ref[:MAX_MODEL_REF_LENGTH]
        if ref in kept:
            dropped.append(DroppedModelRef(shown, "DUPLICATE", f"{shown!r} is listed more than once; it is kept once"))
        elif info.is_selectable(ref):
            kept.append(ref)
        elif ref in info.team_only_models:
            dropped.append(
                DroppedModelRef(
                    shown,
                    "TEAM_ONLY_MODEL",
                    f"{shown!r} is offered for {info.name} to GitLab team members only, not to users",
                )
            )
        elif ref in catalog.models:
            dropped.append(
                DroppedModelRef(
                    shown,
                    "NOT_SELECTABLE_FOR_FEATURE",
                    f"{shown!r} is not selectable for {info.name} ({info.title}); ListSelectableModels lists the "
                    "models it offers",
                )
            )
        else:
            dropped.append(
                DroppedModelRef(
                    shown,
                    "UNKNOWN_MODEL",
                    f"{shown!r} is not a model of the catalog (catalog version {catalog.version}); check the "
                    "identifier with ListSelectableModels",
                )
            )
    return tuple(kept), tuple(dropped)


@dataclass(frozen=True)
class SeatSyncResult:
    assigned: int
    removed: int
    unchanged: int
    config_version: int


@dataclass(frozen=True)
class SelectionUpdate:
    """What a pin update wrote or, with validate_only, would write (nothing was then)."""

    info: FeatureInfo
    namespace_id: int  # 0: the instance
    pins: Mapping[str, str]  # the scope's pins after the change (validate_only: as they would be)
    sub_features: tuple[str, ...]  # set the same way in the same change ("apply to all")
    skipped: tuple[SkippedSubFeature, ...]
    impact: SelectionImpact
    config_version: int  # after the change (validate_only: the one held)
    validate_only: bool


def self_hosted_mask(mask: Sequence[str]) -> list[str]:
    """The fields an UpdateSelfHostedModel changes: the update_mask checked, "*" meaning every updatable field."""
    paths = list(SELF_HOSTED_FIELDS) if list(mask) == ["*"] else list(mask)
    if not paths:
        raise invalid_argument(
            "update_mask",
            f"update_mask is required: name the fields to change ({', '.join(SELF_HOSTED_FIELDS)})",
        )
    for path in paths:
        if path not in SELF_HOSTED_FIELDS:
            raise invalid_argument(
                "update_mask",
                f"cannot update '{path}'; updatable fields: {', '.join(SELF_HOSTED_FIELDS)}",
            )
    return paths


class AdminCommands:
    def __init__(self, pipeline: ChangePipeline, endpoints: EndpointPolicy) -> None:
        self.pipeline = pipeline
        self.state: ConfigState = pipeline.state
        self.endpoints = endpoints

    @property
    def snapshot(self) -> Snapshot:
        return self.state.snapshot

    @property
    def deployment(self) -> DeploymentType:
        return self.state.snapshot.deployment_type

    def require_deployment(self, rule: DeploymentRule) -> None:
        if self.deployment not in rule.allowed:
            where = " and ".join(d.title for d in rule.allowed)
            raise failed_precondition(
                "WRONG_DEPLOYMENT_TYPE",
                f"{rule.what} apply only to {where}; this sidecar serves {self.deployment.title} "
                f"(instance.deployment_type = {self.deployment.config_name})",
                subject=self.deployment.config_name,
            )

    def _feature(self, feature: str) -> FeatureInfo:
        if not feature:
            raise invalid_argument("feature", "feature is required (a feature_setting name such as duo_chat)")
        return feature_info(self.snapshot, feature)

    def _selectable(self, info: FeatureInfo, ref: str) -> None:
        if ref and not info.is_selectable(ref):
            allowed = ", ".join(info.selectable_models)
            raise invalid_argument(
                "offered_model_ref",
                f"{ref[:100]!r} is not a selectable model for {info.name} ({info.title}); choose one of: {allowed}, "
                "or leave it empty for the GitLab default",
                reason="MODEL_NOT_SELECTABLE",
            )

    def _reachable(self, info: FeatureInfo, ref: str) -> None:
        """An offline license reaches no GitLab-managed model: pinning one would route nowhere."""
        if ref and self.snapshot.options.offline_license:
            raise failed_precondition(
                GITLAB_MANAGED_MODEL_UNREACHABLE,
                f"{ref[:100]!r} is a GitLab-managed model, which this instance cannot reach: its license is offline "
                f"(instance.offline_license). Assign a self-hosted model to {info.name} instead "
                "(UpdateFeatureSetting; duo-admin features set)",
                subject=f"instance/features/{info.name}",
                metadata={"feature": info.name, "offered_model_ref": ref[:100]},
            )

    # -- self-hosted models ------------------------------------------------------------------------

    async def list_seat_assignments(
        self, user_id: int, namespace_id: int, size: int, page_token: str
    ) -> tuple[list[tuple[int, int]], str]:
        """One page of assigned seats (user, namespace) and the next page's token ("" on the last page)."""
        self.require_deployment(SEAT_ASSIGNMENTS)
        if user_id < 0 or namespace_id < 0:
            field = "user_id" if user_id < 0 else "namespace_id"
            raise invalid_argument(field, f"{field} must be positive, or 0 for any")
        scope = f"seatAssignments/{user_id}/{namespace_id}"
        after = decode_token(page_token, scope, INT_PAIR_KEY)
        rows = await self.state.store.list_seat_assignments(user_id, namespace_id, after, size + 1)
        return rows[:size], encode_token(rows[size - 1], scope) if len(rows) > size else ""

    async def list_audit_events(self, resource_prefix: str, size: int, page_token: str) -> tuple[list[AuditEvent], str]:
        """One page of audit events, newest first, and the next page's token ("" on the last page)."""
        if len(resource_prefix) > MAX_RESOURCE_PREFIX_LENGTH or not resource_prefix.isprintable():
            raise invalid_argument(
                "resource_prefix",
                f"resource_prefix must be printable, at most {MAX_RESOURCE_PREFIX_LENGTH} characters",
            )
        scope = f"auditEvents/{resource_prefix}"
        before = decode_token(page_token, scope, INT_KEY)
        events = await self.state.store.list_audit_events(resource_prefix, before, size + 1)
        return events[:size], encode_token(events[size - 1].id, scope) if len(events) > size else ""

    def get_self_hosted_model(self, model_id: str) -> SelfHostedModel:
        if not model_id or len(model_id) > MAX_ID_LENGTH:
            raise invalid_argument("id", f"id is required, at most {MAX_ID_LENGTH} characters")
        model = self.snapshot.self_hosted_models.get(model_id)
        if model is None:
            raise _no_model(model_id)
        return model

    def list_self_hosted_models(self) -> list[SelfHostedModel]:
        return sorted(self.snapshot.self_hosted_models.values(), key=lambda m: (m.name, m.id))

    def _validate_model(self, fields: SelfHostedModelInput, prefix: str) -> SelfHostedModelInput:
        name = fields.name.strip()
        if not name or len(name) > MAX_NAME_LENGTH:
            raise invalid_argument(f"{prefix}name", f"name is required, at most {MAX_NAME_LENGTH} characters")
        if fields.platform is Platform.BEDROCK:
            raise failed_precondition(
                "PLATFORM_NOT_SUPPORTED",
                "AWS Bedrock models cannot be served by this version of the sidecar yet; register the model "
                "behind an OpenAI-compatible endpoint (such as vLLM) or Azure OpenAI",
                subject="platform/bedrock",
            )
        for field_name, value in (("name", name), ("endpoint", fields.endpoint), ("identifier", fields.identifier)):
            if not value.isprintable():  # a NUL or a line break would reach the database and the logs
                raise invalid_argument(f"{prefix}{field_name}", f"{field_name} must not contain control characters")
        try:
            url = urlparse(fields.endpoint)
            url.port  # noqa: B018 - parsed for its check: a port that is not 0-65535 in ASCII digits
            valid = url.scheme in ("http", "https") and bool(url.hostname) and fields.endpoint.isascii()
        except ValueError:
            valid = False
        if not valid or len(fields.endpoint) > MAX_ENDPOINT_LENGTH:
            raise invalid_argument(
                f"{prefix}endpoint",
                "endpoint must be an http:// or https:// URL with a host and an optional port, in ASCII (at most "
                f"{MAX_ENDPOINT_LENGTH} characters), such as http://vllm.internal:8000/v1; "
                f"got {fields.endpoint[:100]!r}",
            )
        if url.username or url.password:
            raise invalid_argument(
                f"{prefix}endpoint", "endpoint must not contain credentials; use api_token for the token"
            )
        expected = fields.platform.identifier_prefix
        suffix = fields.identifier[len(expected) :] if fields.identifier.startswith(expected) else ""
        if not suffix.strip() or len(fields.identifier) > MAX_NAME_LENGTH:
            raise invalid_argument(
                f"{prefix}identifier",
                f"identifier must be '{expected}<model name>' for {fields.platform.name.lower()} models "
                f"(at most {MAX_NAME_LENGTH} characters); got {fields.identifier[:100]!r}",
            )
        token = fields.api_token
        if token is not None and (len(token) > MAX_API_TOKEN_LENGTH or any(c.isspace() for c in token)):
            raise invalid_argument(
                f"{prefix}api_token",
                f"api_token must be at most {MAX_API_TOKEN_LENGTH} characters without white space",
            )
        return replace(fields, name=name)

    def _model_staged(
        self, model_id: str, model: SelfHostedModel | None, audit: Audit, token: EncryptedToken | KeepToken | None
    ) -> Staged[None]:
        vault = self.state.vault
        return Staged(
            None,
            Change(ChangeKind.SELF_HOSTED_MODEL, (model_id,)),
            audit,
            patch=lambda snapshot: snapshot.with_self_hosted_model(model_id, model),
            effects=lambda: vault.remember(model_id, token),
        )

    async def create_self_hosted_model(self, actor: str, fields: SelfHostedModelInput) -> tuple[SelfHostedModel, int]:
        self.require_deployment(SELF_HOSTED_MODELS)
        fields = self._validate_model(fields, "self_hosted_model.")
        await self.endpoints.check(fields.endpoint, "self_hosted_model.endpoint")
        now = datetime.now(UTC)
        model_id = uuid.uuid4().hex[:12]
        model = SelfHostedModel(
            id=model_id,
            name=fields.name,
            family=fields.family,
            platform=fields.platform,
            endpoint=fields.endpoint,
            identifier=fields.identifier,
            api_token_set=bool(fields.api_token),
            create_time=now,
            update_time=now,
        )
        token = self.state.vault.encrypt(model_id, fields.api_token or "")

        async def write(tx: StoreTx) -> Staged[None]:
            if await tx.find_self_hosted_model_by_name(model.name):
                raise _name_taken(model.name)
            await tx.put_self_hosted_model(model, token)
            audit = Audit("CreateSelfHostedModel", f"selfHostedModels/{model_id}", "", _audit_json(model.audit_view()))
            return self._model_staged(model_id, model, audit, token)

        _, version = await self.pipeline.commit(actor, write)
        return model, version

    async def update_self_hosted_model(
        self, actor: str, model_id: str, fields: SelfHostedModelInput, mask: Sequence[str]
    ) -> tuple[SelfHostedModel, int]:
        self.require_deployment(SELF_HOSTED_MODELS)
        current = self.get_self_hosted_model(model_id)
        paths = self_hosted_mask(mask)
        merged = SelfHostedModelInput(
            name=fields.name if "name" in paths else current.name,
            family=fields.family if "family" in paths else current.family,
            platform=fields.platform if "platform" in paths else current.platform,
            endpoint=fields.endpoint if "endpoint" in paths else current.endpoint,
            identifier=fields.identifier if "identifier" in paths else current.identifier,
            api_token=(fields.api_token or "") if "api_token" in paths else None,
        )
        merged = self._validate_model(merged, "self_hosted_model.")
        if merged.endpoint != current.endpoint:
            await self.endpoints.check(merged.endpoint, "self_hosted_model.endpoint")
        token = self.state.vault.encrypt(model_id, merged.api_token)

        async def write(tx: StoreTx) -> Staged[SelfHostedModel]:
            before = await tx.get_self_hosted_model(model_id)
            if before is None:
                raise _no_model(model_id)
            other = await tx.find_self_hosted_model_by_name(merged.name)
            if other is not None and other.id != model_id:
                raise _name_taken(merged.name)
            if merged.family != before.family:
                self._check_family_still_compatible(await tx.features_using_model(model_id), merged.family, merged.name)
            updated = replace(
                before,
                name=merged.name,
                family=merged.family,
                platform=merged.platform,
                endpoint=merged.endpoint,
                identifier=merged.identifier,
                api_token_set=before.api_token_set if merged.api_token is None else bool(merged.api_token),
                update_time=datetime.now(UTC),
            )
            await tx.put_self_hosted_model(updated, token)
            audit = Audit(
                "UpdateSelfHostedModel",
                f"selfHostedModels/{model_id}",
                _audit_json(before.audit_view()),
                _audit_json(updated.audit_view()),
            )
            staged = self._model_staged(model_id, updated, audit, token)
            return Staged(updated, staged.change, staged.audit, staged.patch, staged.effects)

        return await self.pipeline.commit(actor, write)

    def _check_family_still_compatible(self, features: list[str], family: ModelFamily, name: str) -> None:
        for feature in features:
            info = self.snapshot.catalog.features.get(feature)
            if info is not None and family not in info.compatible_families:
                raise _incompatible(name, info)

    async def delete_self_hosted_model(self, actor: str, model_id: str) -> int:
        self.require_deployment(SELF_HOSTED_MODELS)
        self.get_self_hosted_model(model_id)

        async def write(tx: StoreTx) -> Staged[None]:
            before = await tx.get_self_hosted_model(model_id)
            if before is None:
                raise _no_model(model_id)
            in_use = await tx.features_using_model(model_id)
            if in_use:
                raise failed_precondition(
                    "MODEL_IN_USE",
                    f"self-hosted model '{before.name}' is used by {', '.join(in_use)}; assign those features "
                    "to another model (UpdateFeatureSetting) before deleting it",
                    subject=f"selfHostedModels/{model_id}",
                    metadata={"features": ",".join(in_use)},
                )
            await tx.delete_self_hosted_model(model_id)
            audit = Audit("DeleteSelfHostedModel", f"selfHostedModels/{model_id}", _audit_json(before.audit_view()), "")
            return self._model_staged(model_id, None, audit, None)

        _, version = await self.pipeline.commit(actor, write)
        return version

    # -- feature settings (Self-Managed) ----------------------------------------------------------

    def feature_setting(self, info: FeatureInfo) -> tuple[FeatureSetting, bool]:
        """The setting that applies to the feature (its own, else its parent's, else vendored), and whether
        the feature has one of its own."""
        settings = self.snapshot.feature_settings
        stored = settings.get(info.name)
        if stored is not None:
            return stored, True
        inherited = settings.get(info.parent) if info.parent else None
        if inherited is not None:
            return FeatureSetting(info.name, inherited.provider, inherited.self_hosted_model_id), False
        return FeatureSetting(info.name, FeatureProvider.VENDORED), False

    async def update_feature_setting(
        self, actor: str, feature: str, provider: FeatureProvider, model_id: str
    ) -> tuple[FeatureSetting, int]:
        self.require_deployment(FEATURE_SETTINGS)
        info = self._feature(feature)
        if provider is FeatureProvider.SELF_HOSTED:
            if not model_id:
                raise invalid_argument(
                    "self_hosted_model_id", "self_hosted_model_id is required when provider is SELF_HOSTED"
                )
            model = self.get_self_hosted_model(model_id)
            if model.family not in info.compatible_families:
                raise _incompatible(model.name, info)
        elif model_id:
            raise invalid_argument(
                "self_hosted_model_id", "self_hosted_model_id must be empty unless provider is SELF_HOSTED"
            )
        setting = FeatureSetting(info.name, provider, model_id)

        async def write(tx: StoreTx) -> Staged[None]:
            if model_id and await tx.get_self_hosted_model(model_id) is None:
                raise _no_model(model_id)
            before = await tx.get_feature_setting(info.name)
            await tx.put_feature_setting(setting)
            audit = Audit(
                "UpdateFeatureSetting",
                f"featureSettings/{info.name}",
                _audit_json(before.audit_view() if before else None),
                _audit_json(setting.audit_view()),
            )
            return Staged(
                None,
                Change(ChangeKind.FEATURE_SETTING, (info.name,)),
                audit,
                patch=lambda snapshot: snapshot.with_feature_setting(info.name, setting),
            )

        _, version = await self.pipeline.commit(actor, write)
        return setting, version

    # -- model selection --------------------------------------------------------------------------

    async def update_instance_selection(self, actor: str, feature: str, ref: str) -> int:
        self.require_deployment(INSTANCE_SELECTIONS)
        info = self._feature(feature)
        self._selectable(info, ref)
        self._reachable(info, ref)

        async def write(tx: StoreTx) -> Staged[None]:
            before = await tx.get_instance_pin(info.name)
            await tx.set_instance_pin(info.name, ref or None)
            audit = Audit(
                "UpdateInstanceModelSelection",
                f"instance/features/{info.name}",
                _audit_json({"offered_model_ref": before} if before else None),
                _audit_json({"offered_model_ref": ref} if ref else None),
            )
            return Staged(
                None,
                Change(ChangeKind.INSTANCE_SELECTION, (info.name,)),
                audit,
                patch=lambda snapshot: snapshot.with_instance_pin(info.name, ref or None),
            )

        _, version = await self.pipeline.commit(actor, write)
        return version

    async def update_namespace_selection(self, actor: str, namespace_id: int, feature: str, ref: str) -> int:
        self.require_deployment(NAMESPACE_SELECTIONS)
        _positive(namespace_id, "namespace_id")
        info = self._feature(feature)
        self._selectable(info, ref)

        async def write(tx: StoreTx) -> Staged[None]:
            before = await tx.get_namespace_pin(namespace_id, info.name)
            await tx.set_namespace_pin(namespace_id, info.name, ref or None)
            audit = Audit(
                "UpdateNamespaceModelSelection",
                f"namespaces/{namespace_id}/features/{info.name}",
                _audit_json({"offered_model_ref": before} if before else None),
                _audit_json({"offered_model_ref": ref} if ref else None),
            )
            return Staged(
                None,
                Change(ChangeKind.NAMESPACE_SELECTION, (f"{namespace_id}/{info.name}",)),
                audit,
                patch=lambda snapshot: snapshot.with_namespace_pin(namespace_id, info.name, ref or None),
            )

        _, version = await self.pipeline.commit(actor, write)
        return version

    # -- model allowlists (user model selection) ----------------------------------------------------

    def _user_selectable(self, feature: str) -> FeatureInfo:
        info = self._feature(feature)
        if not info.user_selectable:
            offered = ", ".join(f.name for f in self.snapshot.catalog.features.values() if f.user_selectable)
            raise failed_precondition(
                "FEATURE_NOT_USER_SELECTABLE",
                f"{info.name} ({info.title}) does not offer user model selection, so it has no allowlist; "
                f"features that do: {offered or 'none'}. Pin its model with the model selection instead",
                subject=f"features/{info.name}",
                metadata={"feature": info.name},
            )
        return info

    async def update_allowlist(
        self, actor: str, namespace_id: int, feature: str, enabled: bool, refs: Sequence[str]
    ) -> AllowlistUpdate:
        """namespace_id 0: the instance's allowlist (Dedicated, Self-Managed); positive: a top-level namespace's
        (GitLab.com)."""
        if namespace_id:
            self.require_deployment(NAMESPACE_ALLOWLISTS)
            _positive(namespace_id, "namespace_id")
            action, resource = "UpdateNamespaceModelAllowlist", f"namespaces/{namespace_id}/features/"
        else:
            self.require_deployment(INSTANCE_ALLOWLISTS)
            action, resource = "UpdateInstanceModelAllowlist", "instance/features/"
        info = self._user_selectable(feature)
        if len(refs) > MAX_ALLOWLIST_REFS:
            raise invalid_argument(
                "model_refs", f"an allowlist holds at most {MAX_ALLOWLIST_REFS} model refs; got {len(refs)}"
            )
        if not enabled and refs:
            raise invalid_argument(
                "model_refs",
                "model_refs must be empty when enabled is false: turning the allowlist off clears it",
            )
        kept, dropped = vet_allowlist(self.snapshot.catalog, info, refs)
        stored = kept if enabled else None
        resource += f"{info.name}/allowlist"

        async def write(tx: StoreTx) -> Staged[None]:
            before = await tx.get_allowlist(namespace_id, info.name)
            if before == stored:
                return Staged(None)  # nothing to change, nothing to audit
            await tx.set_allowlist(namespace_id, info.name, stored)
            key = f"{namespace_id}/{info.name}" if namespace_id else f"instance/{info.name}"
            return Staged(
                None,
                Change(ChangeKind.MODEL_ALLOWLIST, (key,)),
                Audit(action, resource, _allowlist_audit(before), _allowlist_audit(stored)),
                patch=lambda snapshot: snapshot.with_allowlist(namespace_id, info.name, stored),
            )

        _, version = await self.pipeline.commit(actor, write)
        return AllowlistUpdate(stored, dropped, version)

    # -- seats and default namespaces (GitLab.com) --------------------------------------------------

    async def sync_seats(self, actor: str, changes: Sequence[SeatChange]) -> SeatSyncResult:
        self.require_deployment(SEAT_ASSIGNMENTS)
        if len(changes) > MAX_SEAT_CHANGES_PER_BATCH:
            raise invalid_argument(
                "assignments",
                f"at most {MAX_SEAT_CHANGES_PER_BATCH} seat changes per message; send more messages on the stream",
            )
        for i, change in enumerate(changes):
            _positive(change.user_id, f"assignments[{i}].user_id")
            _positive(change.namespace_id, f"assignments[{i}].namespace_id")
        users = self.state.users

        async def write(tx: StoreTx) -> Staged[tuple[int, int]]:
            effective = await tx.apply_seat_changes(changes)
            assigned = sum(1 for c in effective if c.assigned)
            counts = (assigned, len(effective) - assigned)
            if not effective:
                return Staged(counts)
            audit = Audit(
                "SyncSeatAssignments",
                "seatAssignments",
                "",
                _audit_json(
                    {
                        "assigned": [[c.user_id, c.namespace_id] for c in effective if c.assigned],
                        "removed": [[c.user_id, c.namespace_id] for c in effective if not c.assigned],
                    }
                ),
            )
            touched = tuple(sorted({c.user_id for c in effective}))
            return Staged(
                counts,
                Change(ChangeKind.SEAT_ASSIGNMENTS, user_ids=touched),
                audit,
                effects=lambda: users.apply_seat_changes(effective),
            )

        (assigned, removed), version = await self.pipeline.commit(actor, write)
        return SeatSyncResult(assigned, removed, len(changes) - assigned - removed, version)

    async def set_default_namespace(self, actor: str, user_id: int, namespace_id: int) -> int:
        self.require_deployment(DEFAULT_NAMESPACES)
        _positive(user_id, "user_id")
        if namespace_id < 0:
            raise invalid_argument("namespace_id", "namespace_id must be positive, or 0 to clear the default")
        users = self.state.users

        async def write(tx: StoreTx) -> Staged[None]:
            if namespace_id and not await tx.user_has_seat(user_id, namespace_id):
                raise failed_precondition(
                    "NO_SEAT_IN_NAMESPACE",
                    f"user {user_id} holds no GitLab Duo seat in namespace {namespace_id}; a default "
                    "namespace must be one where the user has a seat",
                    subject=f"users/{user_id}",
                    metadata={"user_id": str(user_id), "namespace_id": str(namespace_id)},
                )
            before = await tx.get_default_namespace(user_id)
            if before == namespace_id:
                return Staged(None)  # nothing to change, nothing to audit
            await tx.set_default_namespace(user_id, namespace_id)
            audit = Audit(
                "SetUserDefaultNamespace",
                f"users/{user_id}/defaultNamespace",
                _audit_json({"namespace_id": before} if before else None),
                _audit_json({"namespace_id": namespace_id} if namespace_id else None),
            )
            return Staged(
                None,
                Change(ChangeKind.DEFAULT_NAMESPACE, user_ids=(user_id,)),
                audit,
                effects=lambda: users.set_default_namespace(user_id, namespace_id),
            )

        _, version = await self.pipeline.commit(actor, write)
        return version

    # -- pin updates with their options: "apply to all" and validate_only (DESIGN 3, "Admin conveniences") ---------

    def _sub_feature_plan(self, info: FeatureInfo, ref: str, apply: bool, pins: Mapping[str, str]) -> SubFeaturePlan:
        if not apply:
            return SubFeaturePlan()
        catalog = self.snapshot.catalog
        if not sub_features(catalog, info.name):
            parents = sorted({f.parent for f in catalog.features.values() if f.parent}) or ["none in this catalog"]
            raise invalid_argument(
                "apply_to_sub_features",
                f"apply_to_sub_features sets a feature's sub-features along with it; {info.name} has none. It "
                f"applies to: {', '.join(parents)}",
                reason="NO_SUB_FEATURES",
            )
        return plan_sub_features(catalog, info, ref, pins)

    async def update_instance_selection_with(
        self, actor: str, feature: str, ref: str, *, validate_only: bool = False, apply_to_sub_features: bool = False
    ) -> SelectionUpdate:
        """UpdateInstanceModelSelection with its options; the impact is computed before anything is written."""
        self.require_deployment(INSTANCE_SELECTIONS)
        info = self._feature(feature)
        self._selectable(info, ref)
        snapshot = self.snapshot
        plan = self._sub_feature_plan(info, ref, apply_to_sub_features, snapshot.instance_pins)
        features = (info.name, *plan.applied)
        after = pins_after(snapshot.instance_pins, features, ref)
        impact = scope_impact(info, snapshot.instance_pins, after, features)
        if validate_only:
            return SelectionUpdate(info, 0, after, plan.applied, plan.skipped, impact, snapshot.config_version, True)
        if plan.applied:
            version = await self._commit_pins(actor, 0, features, ref)
        else:
            version = await self.update_instance_selection(actor, feature, ref)
        pins = self.snapshot.instance_pins
        return SelectionUpdate(info, 0, pins, plan.applied, plan.skipped, impact, version, False)

    async def update_namespace_selection_with(
        self,
        actor: str,
        namespace_id: int,
        feature: str,
        ref: str,
        *,
        validate_only: bool = False,
        apply_to_sub_features: bool = False,
    ) -> SelectionUpdate:
        """UpdateNamespaceModelSelection with its options; the impact is computed before anything is written."""
        self.require_deployment(NAMESPACE_SELECTIONS)
        _positive(namespace_id, "namespace_id")
        info = self._feature(feature)
        self._selectable(info, ref)
        snapshot = self.snapshot
        before: Mapping[str, str] = snapshot.namespace_pins.get(namespace_id, {})
        plan = self._sub_feature_plan(info, ref, apply_to_sub_features, before)
        features = (info.name, *plan.applied)
        after = pins_after(before, features, ref)
        holders = await self.state.store.namespace_seat_holders(namespace_id)
        # Up to ~100 ms of Python for the largest namespaces: in a thread, so ResolveModel keeps being served.
        impact = await asyncio.to_thread(namespace_impact, snapshot, info, namespace_id, after, features, holders)
        if validate_only:
            return SelectionUpdate(
                info, namespace_id, after, plan.applied, plan.skipped, impact, snapshot.config_version, True
            )
        if plan.applied:
            version = await self._commit_pins(actor, namespace_id, features, ref)
        else:
            version = await self.update_namespace_selection(actor, namespace_id, feature, ref)
        pins: Mapping[str, str] = self.snapshot.namespace_pins.get(namespace_id, {})
        return SelectionUpdate(info, namespace_id, pins, plan.applied, plan.skipped, impact, version, False)

    async def _commit_pins(self, actor: str, namespace_id: int, features: Sequence[str], ref: str) -> int:
        """Pins several features of one scope (namespace_id 0: the instance) in one change: one config version,
        one change record naming every feature, one audit event per feature."""

        async def write(tx: StoreTx) -> Staged[None]:
            audits = []
            for feature in features:
                if namespace_id:
                    before = await tx.get_namespace_pin(namespace_id, feature)
                    await tx.set_namespace_pin(namespace_id, feature, ref or None)
                    action, resource = "UpdateNamespaceModelSelection", f"namespaces/{namespace_id}/features/{feature}"
                else:
                    before = await tx.get_instance_pin(feature)
                    await tx.set_instance_pin(feature, ref or None)
                    action, resource = "UpdateInstanceModelSelection", f"instance/features/{feature}"
                audits.append(
                    Audit(
                        action,
                        resource,
                        _audit_json({"offered_model_ref": before} if before else None),
                        _audit_json({"offered_model_ref": ref} if ref else None),
                    )
                )
            if namespace_id:
                change = Change(ChangeKind.NAMESPACE_SELECTION, tuple(f"{namespace_id}/{f}" for f in features))
            else:
                change = Change(ChangeKind.INSTANCE_SELECTION, tuple(features))

            def patch(snapshot: Snapshot) -> Snapshot:
                for feature in features:
                    if namespace_id:
                        snapshot = snapshot.with_namespace_pin(namespace_id, feature, ref or None)
                    else:
                        snapshot = snapshot.with_instance_pin(feature, ref or None)
                return snapshot

            return Staged(None, change, audits[0], patch=patch, more_audits=tuple(audits[1:]))

        _, version = await self.pipeline.commit(actor, write)
        return version


def _allowlist_audit(refs: tuple[str, ...] | None) -> str:
    return _audit_json({"enabled": refs is not None, "model_refs": list(refs or ())})


def _no_model(model_id: str) -> DuoError:
    return not_found("self_hosted_model", model_id, f"no self-hosted model with id '{model_id}'")


def _positive(value: int, field_name: str) -> None:
    if value <= 0:
        raise invalid_argument(field_name, f"{field_name} must be positive, got {value}")


def _name_taken(name: str) -> DuoError:
    return DuoError(
        ErrorCode.ALREADY_EXISTS,
        "MODEL_NAME_TAKEN",
        f"a self-hosted model named '{name}' already exists; choose another name",
        metadata={"name": name},
    )


def _incompatible(model_name: str, info: FeatureInfo) -> DuoError:
    families = ", ".join(sorted(f.gitlab_name for f in info.compatible_families)) or "none"
    return failed_precondition(
        "MODEL_INCOMPATIBLE_WITH_FEATURE",
        f"{model_name} is incompatible with the {info.title} feature",
        subject=f"featureSettings/{info.name}",
        metadata={"feature": info.name, "compatible_families": families},
    )
