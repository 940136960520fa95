"""The control plane: admin operations on domain types. Each one validates, commits to the store, then
publishes a new snapshot, holding one lock so snapshots follow the commit order.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import urlparse

import immutables

from sidecar.catalog import Catalog, FeatureInfo
from sidecar.domain import (
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
from sidecar.policy import feature_info
from sidecar.snapshot import Snapshot
from sidecar.store.base import KEEP_TOKEN, KeepToken, Store, StoredState
from sidecar.tokens import EncryptedToken, Keyring, TokenKeyError
from sidecar.users import NO_USER_DATA, UserDirectory, UserRouting

MAX_NAME_LENGTH = 255
MAX_ID_LENGTH = 64
MAX_ENDPOINT_LENGTH = 2048
MAX_API_TOKEN_LENGTH = 8192
MAX_SEAT_CHANGES_PER_BATCH = 10_000
DEFAULT_USER_CACHE_SIZE = 200_000
SELF_HOSTED_FIELDS = ("name", "family", "platform", "endpoint", "identifier", "api_token")


@dataclass(frozen=True)
class DeploymentRule:
    """Which deployments a kind of setting applies to."""

    what: str
    allowed: tuple[DeploymentType, ...]


SELF_HOSTED_MODELS = DeploymentRule("Self-hosted models", (DeploymentType.SELF_MANAGED,))
FEATURE_SETTINGS = DeploymentRule("Feature settings", (DeploymentType.SELF_MANAGED,))
INSTANCE_SELECTIONS = DeploymentRule(
    "Instance model selections", (DeploymentType.DEDICATED, DeploymentType.SELF_MANAGED)
)
NAMESPACE_SELECTIONS = DeploymentRule("Namespace model selections", (DeploymentType.GITLAB_COM,))
SEAT_ASSIGNMENTS = DeploymentRule("Seat assignments", (DeploymentType.GITLAB_COM,))
DEFAULT_NAMESPACES = DeploymentRule("Default GitLab Duo namespaces", (DeploymentType.GITLAB_COM,))


def build_snapshot(deployment: DeploymentType, catalog: Catalog, state: StoredState) -> Snapshot:
    pins: dict[int, dict[str, str]] = {}
    for namespace_id, feature, ref in state.namespace_pins:
        pins.setdefault(namespace_id, {})[feature] = ref
    return Snapshot(
        deployment_type=deployment,
        catalog=catalog,
        config_version=state.config_version,
        self_hosted_models=immutables.Map({m.id: m for m in state.self_hosted_models}),
        feature_settings=immutables.Map({s.feature: s for s in state.feature_settings}),
        instance_pins=immutables.Map(state.instance_pins),
        namespace_pins=immutables.Map({ns: immutables.Map(p) for ns, p in pins.items()}),
    )


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
class SeatSyncResult:
    assigned: int
    removed: int
    unchanged: int
    config_version: int


class ControlPlane:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        snapshot: Snapshot,
        api_tokens: dict[str, EncryptedToken],
        endpoints: EndpointPolicy,
        user_cache_size: int = DEFAULT_USER_CACHE_SIZE,
    ) -> None:
        self.store = store
        self.endpoints = endpoints
        self.users = UserDirectory(store.load_user, user_cache_size)
        # Every change up to this version is reflected here; later ones come from the change follower.
        self.synced_version = snapshot.config_version
        self.on_gap: Callable[[], None] | None = None
        self.keyring = keyring
        self.snapshot = snapshot
        # Encrypted in memory too; decrypted only for the upstream request that needs it.
        self._api_tokens = dict(api_tokens)
        self._publish_lock = asyncio.Lock()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @snapshot.setter
    def snapshot(self, snapshot: Snapshot) -> None:
        """Publishes a snapshot; `published_at` (Unix time) feeds duo_routing_snapshot_published_timestamp_seconds."""
        self._snapshot = snapshot
        self.published_at = time.time()

    @classmethod
    async def load(
        cls,
        store: Store,
        keyring: Keyring,
        deployment: DeploymentType,
        catalog: Catalog,
        endpoints: EndpointPolicy,
        user_cache_size: int = DEFAULT_USER_CACHE_SIZE,
    ) -> ControlPlane:
        state = await store.load_state()
        snapshot = build_snapshot(deployment, catalog, state)
        return cls(store, keyring, snapshot, state.api_tokens, endpoints, user_cache_size)

    def _publish(self, snapshot: Snapshot, version: int) -> None:
        """Swaps in the snapshot of a change this process committed as `version`.

        A gap before it means another process committed in between: the change follower fills it in.
        """
        self.snapshot = snapshot.with_version(max(version, snapshot.config_version))
        if version == self.synced_version + 1:
            self.synced_version = version
        elif self.on_gap is not None:
            self.on_gap()

    async def reload(self, up_to: int | None = None) -> None:
        """Rebuilds the snapshot from storage (changes made elsewhere); `up_to` is the last change accounted for."""
        async with self._publish_lock:
            state = await self.store.load_state()
            self.snapshot = build_snapshot(self.snapshot.deployment_type, self.snapshot.catalog, state)
            self._api_tokens = dict(state.api_tokens)
            self.synced_version = state.config_version if up_to is None else up_to

    def advance_to(self, version: int) -> None:
        """Changes up to `version` touched only per-user data, already dropped from the user cache."""
        self.synced_version = max(self.synced_version, version)
        if version > self.snapshot.config_version:
            self.snapshot = self.snapshot.with_version(version)

    async def user_routing(self, user_id: int) -> UserRouting:
        """A user's seats and default namespace; only GitLab.com routing reads them. Cached: no I/O when warm."""
        if user_id <= 0 or self.snapshot.deployment_type is not DeploymentType.GITLAB_COM:
            return NO_USER_DATA
        return self.users.cached(user_id) or await self.users.get(user_id)

    def api_token(self, model_id: str) -> str | None:
        encrypted = self._api_tokens.get(model_id)
        if encrypted is None:
            return None
        try:
            return self.keyring.decrypt(encrypted, model_id.encode())
        except TokenKeyError as exc:
            raise failed_precondition(
                "TOKEN_KEY_UNAVAILABLE",
                f"the API token of self-hosted model {model_id} cannot be decrypted: {exc}. Restore the key file "
                "from backup, or set the token again (duo-admin models update ID --api-token-file PATH)",
                subject=f"selfHostedModels/{model_id}",
            ) from None

    def undecryptable_tokens(self) -> list[str]:
        """Models whose stored API token no key of the keyring opens (a lost or replaced key file)."""
        return sorted(m for m, e in self._api_tokens.items() if not self.keyring.has_key(e.key_id))

    def _remember_token(self, model_id: str, token: EncryptedToken | KeepToken | None) -> None:
        if isinstance(token, EncryptedToken):
            self._api_tokens[model_id] = token
        elif token is None:
            self._api_tokens.pop(model_id, None)

    async def replace_catalog(self, catalog: Catalog) -> None:
        """Swaps in a refreshed catalog; pins it no longer offers route to defaults from now on."""
        async with self._publish_lock:
            self.snapshot = self.snapshot.with_catalog(catalog)

    @property
    def deployment(self) -> DeploymentType:
        return self.snapshot.deployment_type

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

    # -- self-hosted models ------------------------------------------------------------------------

    def get_self_hosted_model(self, model_id: str) -> SelfHostedModel:
        if not model_id or len(model_id) > MAX_ID_LENGTH:
            raise invalid_argument("id", f"id is required, at most {MAX_ID_LENGTH} characters")
        model = self.snapshot.self_hosted_models.get(model_id)
        if model is None:
            raise not_found("self_hosted_model", model_id, f"no self-hosted model with id '{model_id}'")
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
        url = urlparse(fields.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname or len(fields.endpoint) > MAX_ENDPOINT_LENGTH:
            raise invalid_argument(
                f"{prefix}endpoint",
                f"endpoint must be an http:// or https:// URL with a host (at most {MAX_ENDPOINT_LENGTH} "
                f"characters), such as http://vllm.internal:8000/v1; got {fields.endpoint[:100]!r}",
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

    def _encrypt(self, model_id: str, token: str | None) -> EncryptedToken | KeepToken | None:
        if token is None:
            return KEEP_TOKEN
        return self.keyring.encrypt(token, model_id.encode()) if token else None

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
        async with self._publish_lock:
            async with self.store.transaction() as tx:
                if await tx.find_self_hosted_model_by_name(model.name):
                    raise _name_taken(model.name)
                token = self._encrypt(model_id, fields.api_token or "")
                await tx.put_self_hosted_model(model, token)
                version = await tx.record_change(
                    actor,
                    "CreateSelfHostedModel",
                    f"selfHostedModels/{model_id}",
                    "",
                    _audit_json(model.audit_view()),
                )
            self._publish(self.snapshot.with_self_hosted_model(model_id, model), version)
            self._remember_token(model_id, token)
        return model, version

    async def update_self_hosted_model(
        self, actor: str, model_id: str, fields: SelfHostedModelInput, mask: Sequence[str]
    ) -> tuple[SelfHostedModel, int]:
        self.require_deployment(SELF_HOSTED_MODELS)
        current = self.get_self_hosted_model(model_id)
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
        async with self._publish_lock:
            async with self.store.transaction() as tx:
                before = await tx.get_self_hosted_model(model_id)
                if before is None:
                    raise not_found("self_hosted_model", model_id, f"no self-hosted model with id '{model_id}'")
                other = await tx.find_self_hosted_model_by_name(merged.name)
                if other is not None and other.id != model_id:
                    raise _name_taken(merged.name)
                if merged.family != before.family:
                    await self._check_family_still_compatible(
                        tx_features=await tx.features_using_model(model_id),
                        family=merged.family,
                        name=merged.name,
                    )
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
                token = self._encrypt(model_id, merged.api_token)
                await tx.put_self_hosted_model(updated, token)
                version = await tx.record_change(
                    actor,
                    "UpdateSelfHostedModel",
                    f"selfHostedModels/{model_id}",
                    _audit_json(before.audit_view()),
                    _audit_json(updated.audit_view()),
                )
            self._publish(self.snapshot.with_self_hosted_model(model_id, updated), version)
            self._remember_token(model_id, token)
        return updated, version

    async def _check_family_still_compatible(self, tx_features: list[str], family: ModelFamily, name: str) -> None:
        for feature in tx_features:
            info = self.snapshot.catalog.features.get(feature)
            if info is not None and family not in info.compatible_families:
                raise _incompatible(name, info)

    async def delete_self_hosted_model(self, actor: str, model_id: str) -> int:
        self.require_deployment(SELF_HOSTED_MODELS)
        self.get_self_hosted_model(model_id)
        async with self._publish_lock:
            async with self.store.transaction() as tx:
                before = await tx.get_self_hosted_model(model_id)
                if before is None:
                    raise not_found("self_hosted_model", model_id, f"no self-hosted model with id '{model_id}'")
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
                version = await tx.record_change(
                    actor,
                    "DeleteSelfHostedModel",
                    f"selfHostedModels/{model_id}",
                    _audit_json(before.audit_view()),
                    "",
                )
            self._publish(self.snapshot.with_self_hosted_model(model_id, None), version)
            self._remember_token(model_id, None)
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
        async with self._publish_lock:
            async with self.store.transaction() as tx:
                if model_id and await tx.get_self_hosted_model(model_id) is None:
                    raise not_found("self_hosted_model", model_id, f"no self-hosted model with id '{model_id}'")
                before = await tx.get_feature_setting(info.name)
                await tx.put_feature_setting(setting)
                version = await tx.record_change(
                    actor,
                    "UpdateFeatureSetting",
                    f"featureSettings/{info.name}",
                    _audit_json(before.audit_view() if before else None),
                    _audit_json(setting.audit_view()),
                )
            self._publish(self.snapshot.with_feature_setting(info.name, setting), version)
        return setting, version

    # -- model selection --------------------------------------------------------------------------

    async def update_instance_selection(self, actor: str, feature: str, ref: str) -> int:
        self.require_deployment(INSTANCE_SELECTIONS)
        info = self._feature(feature)
        self._selectable(info, ref)
        async with self._publish_lock:
            async with self.store.transaction() as tx:
                before = await tx.get_instance_pin(info.name)
                await tx.set_instance_pin(info.name, ref or None)
                version = await tx.record_change(
                    actor,
                    "UpdateInstanceModelSelection",
                    f"instance/features/{info.name}",
                    _audit_json({"offered_model_ref": before} if before else None),
                    _audit_json({"offered_model_ref": ref} if ref else None),
                )
            self._publish(self.snapshot.with_instance_pin(info.name, ref or None), version)
        return version

    async def update_namespace_selection(self, actor: str, namespace_id: int, feature: str, ref: str) -> int:
        self.require_deployment(NAMESPACE_SELECTIONS)
        _positive(namespace_id, "namespace_id")
        info = self._feature(feature)
        self._selectable(info, ref)
        async with self._publish_lock:
            async with self.store.transaction() as tx:
                before = await tx.get_namespace_pin(namespace_id, info.name)
                await tx.set_namespace_pin(namespace_id, info.name, ref or None)
                version = await tx.record_change(
                    actor,
                    "UpdateNamespaceModelSelection",
                    f"namespaces/{namespace_id}/features/{info.name}",
                    _audit_json({"offered_model_ref": before} if before else None),
                    _audit_json({"offered_model_ref": ref} if ref else None),
                )
            self._publish(self.snapshot.with_namespace_pin(namespace_id, info.name, ref or None), version)
        return version

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
        async with self._publish_lock:
            async with self.store.transaction() as tx:
                effective = await tx.apply_seat_changes(changes)
                if not effective:
                    return SeatSyncResult(0, 0, len(changes), self.snapshot.config_version)
                assigned = sum(1 for c in effective if c.assigned)
                version = await tx.record_change(
                    actor,
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
            self.users.apply_seat_changes(effective)
            self._publish(self.snapshot, version)
        return SeatSyncResult(assigned, len(effective) - assigned, len(changes) - len(effective), version)

    async def set_default_namespace(self, actor: str, user_id: int, namespace_id: int) -> int:
        self.require_deployment(DEFAULT_NAMESPACES)
        _positive(user_id, "user_id")
        if namespace_id < 0:
            raise invalid_argument("namespace_id", "namespace_id must be positive, or 0 to clear the default")
        async with self._publish_lock:
            async with self.store.transaction() as tx:
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
                    return self.snapshot.config_version  # nothing to change, nothing to audit
                await tx.set_default_namespace(user_id, namespace_id)
                version = await tx.record_change(
                    actor,
                    "SetUserDefaultNamespace",
                    f"users/{user_id}/defaultNamespace",
                    _audit_json({"namespace_id": before} if before else None),
                    _audit_json({"namespace_id": namespace_id} if namespace_id else None),
                )
            self.users.set_default_namespace(user_id, namespace_id)
            self._publish(self.snapshot, version)
        return version


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
