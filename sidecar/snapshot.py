"""The immutable routing state that ResolveModel reads.

Every admin write builds a new Snapshot from the previous one (persistent maps, so a change costs
O(log n) however many seats are loaded) and swaps it in after the store has committed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import immutables

from sidecar.catalog import Catalog
from sidecar.domain import DeploymentType, FeatureSetting, SeatChange, SelfHostedModel

NamespacePins = immutables.Map[str, str]


@dataclass(frozen=True, slots=True)
class Snapshot:
    deployment_type: DeploymentType
    catalog: Catalog
    config_version: int
    self_hosted_models: immutables.Map[str, SelfHostedModel]
    feature_settings: immutables.Map[str, FeatureSetting]
    instance_pins: immutables.Map[str, str]
    namespace_pins: immutables.Map[int, NamespacePins]
    seats: immutables.Map[int, frozenset[int]]
    default_namespaces: immutables.Map[int, int]

    @classmethod
    def empty(cls, deployment_type: DeploymentType, catalog: Catalog) -> Snapshot:
        return cls(
            deployment_type=deployment_type,
            catalog=catalog,
            config_version=0,
            self_hosted_models=immutables.Map(),
            feature_settings=immutables.Map(),
            instance_pins=immutables.Map(),
            namespace_pins=immutables.Map(),
            seats=immutables.Map(),
            default_namespaces=immutables.Map(),
        )

    def seats_of(self, user_id: int) -> frozenset[int]:
        return self.seats.get(user_id, frozenset())

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

    def with_seat_changes(self, changes: Iterable[SeatChange]) -> Snapshot:
        with self.seats.mutate() as seats:
            for change in changes:
                held = seats.get(change.user_id, frozenset())
                held = held | {change.namespace_id} if change.assigned else held - {change.namespace_id}
                if held:
                    seats[change.user_id] = held
                elif change.user_id in seats:
                    del seats[change.user_id]
            updated = seats.finish()
        return dataclasses.replace(self, seats=updated)

    def with_default_namespace(self, user_id: int, namespace_id: int) -> Snapshot:
        defaults = self.default_namespaces
        defaults = defaults.set(user_id, namespace_id) if namespace_id else _discard(defaults, user_id)
        return dataclasses.replace(self, default_namespaces=defaults)


K = TypeVar("K")
V = TypeVar("V")


def _discard(mapping: immutables.Map[K, V], key: K) -> immutables.Map[K, V]:
    return mapping.delete(key) if key in mapping else mapping
