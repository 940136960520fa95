"""The catalog parser: today's AI Gateway shape, the older shape the sidecar shipped before, and malformed input."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sidecar.catalog import CatalogError, Deprecation, bundled_features_metadata, load_catalog, parse_catalog
from tests.helpers import REPO

TODAY = json.loads((REPO / "sidecar" / "data" / "model_definitions.json").read_text())

# The shape the sidecar bundled before today's catalog: one default_model, no default_models, no deprecations.
OLDER_SHAPE: dict[str, Any] = {
    "models": [
        {"name": "Claude Sonnet 4.5 - Anthropic", "identifier": "claude_sonnet_4_5_20250929", "provider": "Anthropic"},
        {"name": "Codestral 25.01 - Fireworks", "identifier": "codestral_2501_fireworks", "provider": "Fireworks"},
    ],
    "unit_primitives": [
        {
            "feature_setting": "duo_chat",
            "default_model": "claude_sonnet_4_5_20250929",
            "selectable_models": ["claude_sonnet_4_5_20250929"],
            "beta_models": [],
            "unit_primitives": ["duo_chat"],
        },
        {
            "feature_setting": "code_completions",
            "default_model": "codestral_2501_fireworks",
            "selectable_models": ["codestral_2501_fireworks", "claude_sonnet_4_5_20250929"],
            "beta_models": [],
            "unit_primitives": ["complete_code"],
        },
    ],
}


def test_the_bundled_catalog_is_todays_snapshot_with_metadata_for_every_feature() -> None:
    assert TODAY["source"].startswith("GitLab AI Gateway model catalog")
    catalog = load_catalog()
    assert len(catalog.models) == len(TODAY["models"])
    assert set(catalog.features) == {u["feature_setting"] for u in TODAY["unit_primitives"]}
    described = {f["feature_setting"] for f in bundled_features_metadata()["features"]}
    assert described == set(catalog.features), "every feature needs a title, parent and self-hosted families"
    assert all(info.title != info.name for info in catalog.features.values())


def test_todays_fields_are_read() -> None:
    catalog = load_catalog()
    agentic = catalog.features["duo_agent_platform_agentic_chat"]
    raw = next(u for u in TODAY["unit_primitives"] if u["feature_setting"] == agentic.name)
    # Several defaults: the pseudo-model names the group, default_model is a real model, the group is not selectable.
    assert agentic.default_model_group == raw["default_model"] == f"__default__{agentic.name}"
    assert agentic.default_models == tuple(raw["default_models"]) and len(agentic.default_models) >= 2
    assert agentic.default_model == raw["default_models"][0]
    assert agentic.default_model_group not in agentic.selectable_models
    assert agentic.user_selectable
    # dev.selectable_models are team-only, never selectable by default.
    assert agentic.team_only_models == tuple(raw["dev"]["selectable_models"])
    assert not set(agentic.team_only_models) & set(agentic.selectable_models)
    assert dict(agentic.models_for_tags) == raw["models_for_tags"]

    per_feature = next(u for u in TODAY["unit_primitives"] if u.get("deprecated_models"))
    entry = per_feature["deprecated_models"][0]
    info = catalog.features[per_feature["feature_setting"]]
    assert info.deprecated_models[entry["identifier"]] == Deprecation(
        entry["deprecation_date"], entry["removal_version"]
    )

    deprecated = next(m for m in TODAY["models"] if m.get("deprecation"))
    model = catalog.models[deprecated["identifier"]]
    assert model.deprecation == Deprecation(**deprecated["deprecation"])
    assert model.cost_indicator == deprecated["cost_indicator"]
    assert model.max_context_tokens == deprecated["max_context_tokens"]
    family = next(m for m in TODAY["models"] if m["provider"] is None)
    assert catalog.models[family["identifier"]].provider == ""
    single = catalog.features["duo_chat"]
    assert single.default_model_group == "" and single.default_models == (single.default_model,)


def test_the_older_shape_is_still_accepted() -> None:
    catalog = parse_catalog(OLDER_SHAPE, bundled_features_metadata())
    chat = catalog.features["duo_chat"]
    assert (chat.default_model, chat.default_models, chat.default_model_group) == (
        "claude_sonnet_4_5_20250929",
        ("claude_sonnet_4_5_20250929",),
        "",
    )
    assert chat.title == "GitLab Duo Chat" and not chat.deprecated_models and not chat.team_only_models
    assert catalog.models["codestral_2501_fireworks"].deprecation is None


def _feature(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(u for u in document["unit_primitives"] if u["feature_setting"] == name)


def _break_unknown_default(d: dict[str, Any]) -> None:
    chat = _feature(d, "duo_chat")
    chat["default_model"] = "no_such_model"
    chat["default_models"] = ["no_such_model"]


def _break_default_not_selectable(d: dict[str, Any]) -> None:
    chat = _feature(d, "duo_chat")
    chat["selectable_models"] = [m for m in chat["selectable_models"] if m != chat["default_model"]]


def _break_unknown_team_only(d: dict[str, Any]) -> None:
    _feature(d, "duo_agent_platform_agentic_chat")["dev"] = {"selectable_models": ["no_such_model"]}


def _break_deprecation(d: dict[str, Any]) -> None:
    d["models"][0]["deprecation"] = "soon"


def _break_tags(d: dict[str, Any]) -> None:
    _feature(d, "duo_agent_platform")["models_for_tags"] = {"small": 3}


def _break_group(d: dict[str, Any]) -> None:
    _feature(d, "duo_agent_platform_agentic_chat")["default_models"] = []


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_break_unknown_default, "model 'no_such_model' is not in 'models'"),
        (_break_default_not_selectable, "is not in 'selectable_models'"),
        (_break_unknown_team_only, "model 'no_such_model' is not in 'models'"),
        (_break_deprecation, "deprecation: must be an object"),
        (_break_tags, "'models_for_tags' must map tags to model identifiers"),
        (_break_group, "needs the real models in 'default_models'"),
    ],
)
def test_a_malformed_catalog_is_refused_with_where(breakage: Any, message: str) -> None:
    document = copy.deepcopy(TODAY)
    breakage(document)
    with pytest.raises(CatalogError, match=message):
        parse_catalog(document, bundled_features_metadata())
