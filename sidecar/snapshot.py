"""The immutable routing configuration that ResolveModel reads: catalog, models, settings and pins.

Every admin write builds a new Snapshot from the previous one (persistent maps, so a change costs
O(log n) however many pins are loaded) and swaps it in after the store has committed. Per-user data
(seats, default namespaces) lives in sidecar.users.UserDirectory instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

import immutables

from sidecar.catalog import Catalog
from sidecar.domain import DeploymentType, FeatureSetting, SelfHostedModel

NamespacePins = immutables.Map[str, str]
# Per feature, the allowlist's model refs (present only while the allowlist is on).
Allowlists = immutables.Map[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class InstanceOptions:
    """The operator's instance.* keys that the routing rules read (configuration, not data)."""

    self_hosted_ai_gateway: bool = False  # hybrid Self-Managed: no GitLab-managed default
    offline_license: bool = False  # no GitLab-managed model at all
    offer_team_only_models: bool = False

    @property
    def gitlab_default_reachable(self) -> bool:
        return not (self.self_hosted_ai_gateway or self.offline_license)


NO_OPTIONS = InstanceOptions()


def offered_catalog(catalog: Catalog, options: InstanceOptions) -> Catalog:
    """The catalog as this instance offers it: with instance.offer_team_only_models, each feature's team-only models
    (the catalog's dev.selectable_models) are selectable too; otherwise they are not."""
    if not options.offer_team_only_models:
        return catalog
    features = {}
    for name, info in catalog.features.items():
        added = tuple(m for m in info.team_only_models if m not in info.selectable_models)  # idempotent
        features[name] = dataclasses.replace(info, selectable_models=info.selectable_models + added) if added else info
    return dataclasses.replace(catalog, features=MappingProxyType(features))


@dataclass(frozen=True, slots=True)
class Snapshot:
    deployment_type: DeploymentType
    catalog: Catalog
    config_version: int
    self_hosted_models: immutables.Map[str, SelfHostedModel]
    feature_settings: immutables.Map[str, FeatureSetting]
    instance_pins: immutables.Map[str, str]
    namespace_pins: immutables.Map[int, NamespacePins]
    options: InstanceOptions = NO_OPTIONS
    instance_allowlists: Allowlists = dataclasses.field(default_factory=immutables.Map)
    namespace_allowlists: immutables.Map[int, Allowlists] = dataclasses.field(default_factory=immutables.Map)

    def with_version(self, version: int) -> Snapshot:
        return dataclasses.replace(self, config_version=version)

    def with_catalog(self, catalog: Catalog) -> Snapshot:
        return dataclasses.replace(self, catalog=catalog)

    def with_self_hosted_model(self, model_id: str, model: SelfHostedModel | None) -> Snapshot:
        models = self.self_hosted_models.set(model_id, model) if model else self.self_hosted_models.delete(model_id)
        return dataclasses.replace(self, self_hosted_models=models)

    def with_feature_setting(self, feature: str, setting: FeatureSetting | None) -> Snapshot:
        settings = self.feature_settings
        settings = settings.set(feature, setting) if setting else _discard(settings, feature)
        return dataclasses.replace(self, feature_settings=settings)

    def with_instance_pin(self, feature: str, ref: str | None) -> Snapshot:
        pins = self.instance_pins.set(feature, ref) if ref else _discard(self.instance_pins, feature)
        return dataclasses.replace(self, instance_pins=pins)

    def with_namespace_pin(self, namespace_id: int, feature: str, ref: str | None) -> Snapshot:
        current: NamespacePins = self.namespace_pins.get(namespace_id, immutables.Map())
        updated = current.set(feature, ref) if ref else _discard(current, feature)
        if updated:
            namespaces = self.namespace_pins.set(namespace_id, updated)
        else:
            namespaces = _discard(self.namespace_pins, namespace_id)
        return dataclasses.replace(self, namespace_pins=namespaces)

    def with_allowlist(self, namespace_id: int, feature: str, refs: tuple[str, ...] | None) -> Snapshot:
        """namespace_id 0: the instance's allowlist. refs None: the allowlist is off."""
        if namespace_id == 0:
            lists = self.instance_allowlists
            lists = lists.set(feature, refs) if refs is not None else _discard(lists, feature)
            return dataclasses.replace(self, instance_allowlists=lists)
        current: Allowlists = self.namespace_allowlists.get(namespace_id, immutables.Map())
        updated = current.set(feature, refs) if refs is not None else _discard(current, feature)
        if updated:
            namespaces = self.namespace_allowlists.set(namespace_id, updated)
        else:
            namespaces = _discard(self.namespace_allowlists, namespace_id)
        return dataclasses.replace(self, namespace_allowlists=namespaces)


K = TypeVar("K")
V = TypeVar("V")


def _discard(mapping: immutables.Map[K, V], key: K) -> immutables.Map[K, V]:
    return mapping.delete(key) if key in mapping else mapping
