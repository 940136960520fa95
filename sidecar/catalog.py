"""The model catalog: the AI Gateway's /v1/models/definitions document plus per-feature metadata.

Parsing is pure; reading the bundled files is the only I/O and happens at start-up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sidecar.domain import ModelFamily


class CatalogError(ValueError):
    """The catalog document is malformed; the message says where."""


DEFAULT_MODEL_GROUP_PREFIX = "__default__"
NO_DEPRECATIONS: Mapping[str, Deprecation] = MappingProxyType({})
NO_TAGS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Deprecation:
    """When a model was deprecated and the GitLab version that removes it (either may be empty)."""

    deprecation_date: str
    removal_version: str


@dataclass(frozen=True, slots=True)
class CatalogModel:
    identifier: str
    name: str
    provider: str  # "" for self-hosted family pseudo-entries and load-balanced default groups
    cost_indicator: str = ""
    max_context_tokens: int = 0
    deprecation: Deprecation | None = None


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
    # The real defaults; several when the AI Gateway balances the feature behind `default_model_group`.
    default_models: tuple[str, ...] = ()
    # The `__default__<feature>` pseudo-model when the feature has several defaults, else "".
    default_model_group: str = ""
    # Models deprecated for this feature only (still selectable until removed).
    deprecated_models: Mapping[str, Deprecation] = field(default_factory=lambda: NO_DEPRECATIONS)
    # The catalog's `dev.selectable_models`: offered to GitLab team members only, never in selectable_models.
    team_only_models: tuple[str, ...] = ()
    # Tag ("small", "large") to model, for flows that ask by tag.
    models_for_tags: Mapping[str, str] = field(default_factory=lambda: NO_TAGS)

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


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CatalogError(f"{where}: '{key}' must be a string or null")
    return value


def _deprecation(raw: Any, where: str) -> Deprecation:
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be an object")
    return Deprecation(
        deprecation_date=_optional_str(raw, "deprecation_date", where),
        removal_version=_optional_str(raw, "removal_version", where),
    )


def _model(raw: Any, where: str) -> CatalogModel:
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be an object")
    context = raw.get("max_context_tokens") or 0
    if not isinstance(context, int) or isinstance(context, bool) or context < 0:
        raise CatalogError(f"{where}: 'max_context_tokens' must be a non-negative integer")
    deprecation = raw.get("deprecation")
    return CatalogModel(
        identifier=_require(raw, "identifier", str, where),
        name=_require(raw, "name", str, where),
        provider=_optional_str(raw, "provider", where),
        cost_indicator=_optional_str(raw, "cost_indicator", where),
        max_context_tokens=context,
        deprecation=None if deprecation is None else _deprecation(deprecation, f"{where}.deprecation"),
    )


def _feature_deprecations(raw: Mapping[str, Any], where: str) -> Mapping[str, Deprecation]:
    entries = raw.get("deprecated_models") or []
    if not isinstance(entries, list):
        raise CatalogError(f"{where}: 'deprecated_models' must be a list")
    found: dict[str, Deprecation] = {}
    for j, entry in enumerate(entries):
        at = f"{where}.deprecated_models[{j}]"
        if not isinstance(entry, Mapping):
            raise CatalogError(f"{at}: must be an object")
        found[_require(entry, "identifier", str, at)] = _deprecation(entry, at)
    return MappingProxyType(found) if found else NO_DEPRECATIONS


def _tags(raw: Mapping[str, Any], where: str) -> Mapping[str, str]:
    tags = raw.get("models_for_tags") or {}
    if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise CatalogError(f"{where}: 'models_for_tags' must map tags to model identifiers")
    return MappingProxyType(dict(tags)) if tags else NO_TAGS


def _team_only(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    dev = raw.get("dev")
    if dev is None:
        return ()
    if not isinstance(dev, Mapping):
        raise CatalogError(f"{where}: 'dev' must be an object or null")
    return _identifiers(dev, "selectable_models", f"{where}.dev")


def parse_catalog(definitions: Mapping[str, Any], metadata: Mapping[str, Any]) -> Catalog:
    """Builds a Catalog; features without metadata get their name as title and no self-hosted families."""
    if not isinstance(definitions, Mapping):
        raise CatalogError("definitions: must be a JSON object")
    models: dict[str, CatalogModel] = {}
    for i, raw in enumerate(_require(definitions, "models", list, "definitions")):
        model = _model(raw, f"models[{i}]")
        models[model.identifier] = model

    meta_by_feature: dict[str, Mapping[str, Any]] = {}
    for raw in metadata.get("features", []):
        meta_by_feature[str(raw["feature_setting"])] = raw

    features: dict[str, FeatureInfo] = {}
    for i, raw in enumerate(_require(definitions, "unit_primitives", list, "definitions")):
        where = f"unit_primitives[{i}]"
        if not isinstance(raw, Mapping):
            raise CatalogError(f"{where}: must be an object")
        name = _require(raw, "feature_setting", str, where)
        listed_default = _require(raw, "default_model", str, where)
        # Today's shape lists the real defaults; the older one names a single default_model.
        defaults = _identifiers(raw, "default_models", where) or (listed_default,)
        group = listed_default if listed_default.startswith(DEFAULT_MODEL_GROUP_PREFIX) else ""
        if group and (group in defaults or not _identifiers(raw, "default_models", where)):
            raise CatalogError(f"{where} ({name}): '{group}' needs the real models in 'default_models'")
        if not group and listed_default not in defaults:
            raise CatalogError(f"{where} ({name}): default_model '{listed_default}' is not in 'default_models'")
        # The gateway prepends the pseudo-model to selectable_models; here it is the group, not a model.
        selectable = tuple(m for m in _identifiers(raw, "selectable_models", where) if m != group)
        beta = _identifiers(raw, "beta_models", where)
        deprecated = _feature_deprecations(raw, where)
        team_only = _team_only(raw, where)
        tags = _tags(raw, where)
        referenced = (listed_default, *defaults, *selectable, *beta, *deprecated, *team_only, *tags.values())
        for identifier in referenced:
            if identifier not in models:
                raise CatalogError(f"{where} ({name}): model '{identifier}' is not in 'models'")
        for identifier in defaults:
            if selectable and identifier not in selectable:
                raise CatalogError(f"{where} ({name}): default model '{identifier}' is not in 'selectable_models'")
        meta = meta_by_feature.get(name, {})
        try:
            families = frozenset(ModelFamily[f.upper()] for f in meta.get("self_hosted_families", []))
        except KeyError as exc:
            raise CatalogError(f"features metadata for {name}: unknown model family {exc}") from None
        features[name] = FeatureInfo(
            name=name,
            title=str(meta.get("title") or name),
            default_model=defaults[0],
            selectable_models=selectable,
            beta_models=beta,
            unit_primitives=_identifiers(raw, "unit_primitives", where),
            parent=meta.get("parent_feature") or None,
            compatible_families=families,
            user_selectable=meta.get("user_selectable") is True,
            default_models=defaults,
            default_model_group=group,
            deprecated_models=deprecated,
            team_only_models=tuple(m for m in team_only if m not in selectable),
            models_for_tags=tags,
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
