"""The model catalog: the AI Gateway's /v1/models/definitions document plus per-feature metadata.

Parsing is pure; reading the bundled files is the only I/O and happens at start-up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sidecar.domain import ModelFamily


class CatalogError(ValueError):
    """The catalog document is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class CatalogModel:
    identifier: str
    name: str
    provider: str
    cost_indicator: str = ""  # "$", "$$", ...: what the user's model picker shows


@dataclass(frozen=True, slots=True)
class FeatureInfo:
    """One feature_setting: its models and GitLab's metadata about it."""

    name: str
    title: str
    default_model: str
    selectable_models: tuple[str, ...]
    beta_models: tuple[str, ...]
    unit_primitives: tuple[str, ...]
    parent: str | None
    compatible_families: frozenset[ModelFamily]
    # Users may pick their own model (DESIGN section 3, "User model selection"); sidecar metadata, not code.
    user_selectable: bool = False

    def is_selectable(self, identifier: str) -> bool:
        return identifier in self.selectable_models


@dataclass(frozen=True, slots=True)
class Catalog:
    models: Mapping[str, CatalogModel]
    features: Mapping[str, FeatureInfo]
    version: str

    def model(self, identifier: str) -> CatalogModel:
        found = self.models.get(identifier)
        return found if found is not None else CatalogModel(identifier, identifier, "")


def _require(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise CatalogError(f"{where}: '{key}' must be a {kind.__name__}")
    return value


def _identifiers(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = obj.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise CatalogError(f"{where}: '{key}' must be a list of model identifiers")
    return tuple(values)


def parse_catalog(definitions: Mapping[str, Any], metadata: Mapping[str, Any]) -> Catalog:
    """Builds a Catalog; features without metadata get their name as title and no self-hosted families."""
    if not isinstance(definitions, Mapping):
        raise CatalogError("definitions: must be a JSON object")
    models: dict[str, CatalogModel] = {}
    for i, raw in enumerate(_require(definitions, "models", list, "definitions")):
        where = f"models[{i}]"
        if not isinstance(raw, Mapping):
            raise CatalogError(f"{where}: must be an object")
        identifier = _require(raw, "identifier", str, where)
        models[identifier] = CatalogModel(
            identifier=identifier,
            name=_require(raw, "name", str, where),
            provider=str(raw.get("provider") or ""),
            cost_indicator=str(raw.get("cost_indicator") or ""),
        )

    meta_by_feature: dict[str, Mapping[str, Any]] = {}
    for raw in metadata.get("features", []):
        meta_by_feature[str(raw["feature_setting"])] = raw

    features: dict[str, FeatureInfo] = {}
    for i, raw in enumerate(_require(definitions, "unit_primitives", list, "definitions")):
        where = f"unit_primitives[{i}]"
        if not isinstance(raw, Mapping):
            raise CatalogError(f"{where}: must be an object")
        name = _require(raw, "feature_setting", str, where)
        default = _require(raw, "default_model", str, where)
        selectable = _identifiers(raw, "selectable_models", where)
        beta = _identifiers(raw, "beta_models", where)
        for identifier in (default, *selectable, *beta):
            if identifier not in models:
                raise CatalogError(f"{where} ({name}): model '{identifier}' is not in 'models'")
        meta = meta_by_feature.get(name, {})
        try:
            families = frozenset(ModelFamily[f.upper()] for f in meta.get("self_hosted_families", []))
        except KeyError as exc:
            raise CatalogError(f"features metadata for {name}: unknown model family {exc}") from None
        features[name] = FeatureInfo(
            name=name,
            title=str(meta.get("title") or name),
            default_model=default,
            selectable_models=selectable,
            beta_models=beta,
            unit_primitives=_identifiers(raw, "unit_primitives", where),
            parent=meta.get("parent_feature") or None,
            compatible_families=families,
            user_selectable=meta.get("user_selectable") is True,
        )
    for info in features.values():
        if info.parent is not None and info.parent not in features:
            raise CatalogError(f"feature {info.name}: parent feature '{info.parent}' is not in the catalog")

    canonical = json.dumps(definitions, sort_keys=True, separators=(",", ":")).encode()
    return Catalog(
        models=MappingProxyType(models),
        features=MappingProxyType(dict(sorted(features.items()))),
        version=hashlib.sha256(canonical).hexdigest()[:12],
    )


def _read_json(path: Path | None, bundled: str) -> Any:
    try:
        if path is None:
            return json.loads(resources.files("sidecar.data").joinpath(bundled).read_text())
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"{path or bundled}: {exc}") from exc


def bundled_features_metadata() -> Any:
    """GitLab's per-feature metadata (titles, parents, self-hosted families) that the AI Gateway does not serve."""
    return _read_json(None, "features.json")


def load_catalog(definitions_path: Path | None = None) -> Catalog:
    """Reads a definitions file (None: the bundled copy) and joins the bundled feature metadata."""
    return parse_catalog(_read_json(definitions_path, "model_definitions.json"), bundled_features_metadata())
