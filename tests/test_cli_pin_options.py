"""duo-admin's pin options end to end: --validate-only and --apply-to-sub-features on `namespace-models set` and
`instance-models set`, in text and --json, against real sidecar processes."""

from __future__ import annotations

from sidecar.catalog import load_catalog
from tests.conftest import StartSidecar
from tests.test_cli import DuoAdmin


def _models() -> tuple[str, str, list[str]]:
    """duo_chat's default, a model every sub-feature offers too (not the default), and the sub-features."""
    catalog = load_catalog()
    chat = catalog.features["duo_chat"]
    subs = sorted(f.name for f in catalog.features.values() if f.parent == "duo_chat")
    model = next(
        m
        for m in chat.selectable_models
        if m != chat.default_model and all(catalog.features[s].is_selectable(m) for s in subs)
    )
    return chat.default_model, model, subs


def _table_rows(stdout: str, header: str) -> list[list[str]]:
    """The rows of the table under the line starting with `header`."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    return [line.split(None, 2) for line in lines[start + 1 :] if line.strip()]


def test_namespace_models_set_validate_only_and_apply_to_sub_features(start_sidecar: StartSidecar) -> None:
    admin = DuoAdmin(start_sidecar("gitlab_com").address)
    default, model, subs = _models()
    admin.run("seats", "sync", "--assign", "42:10", "--assign", "7:10", "--assign", "7:20")
    version = admin.fields("server-info")["config_version"]

    preview = admin.run(
        *("namespace-models", "set", "--namespace", "10", "--feature", "duo_chat", "--model", model),
        *("--validate-only", "--apply-to-sub-features"),
    ).stdout
    assert preview.splitlines()[0] == "validate only: nothing was written; this is what the change would do"
    fields = {k: v.strip() for k, _, v in (line.partition(":") for line in preview.splitlines()) if v}
    assert fields["validate_only"] == "true"
    assert fields["config_version"] == version
    assert (fields["model_before"], fields["model_after"]) == (default, model)
    assert fields["features"] == ",".join(["duo_chat", *subs])
    # 42: sole seat; 7: no default, 20 gives the default as 10 did: unanimous before, not after.
    assert (fields["seat_holders"], fields["no_context_users_changed"]) == ("2", "2")
    assert fields["users_newly_requiring_default_namespace"] == "1"
    assert _table_rows(preview, "SUB-FEATURE") == [[sub, "set", model] for sub in subs]
    assert admin.fields("server-info")["config_version"] == version  # nothing written

    as_json = admin.json(
        *("namespace-models", "set", "--namespace", "10", "--feature", "duo_chat", "--model", model),
        "--apply-to-sub-features",
    )
    assert as_json["validate_only"] is False
    assert int(as_json["config_version"]) == int(version) + 1
    assert [s["feature"] for s in as_json["sub_feature_selections"]] == subs
    assert as_json["impact"]["no_context_users_changed"] == 2
    assert as_json["skipped_sub_features"] == []
    pins = {row["feature"]: row for row in admin.json("namespace-models", "list", "--namespace", "10")}
    assert all(pins[f]["offered_model_ref"] == model for f in ["duo_chat", *subs])

    cleared = admin.run(
        "namespace-models", "set", "--namespace", "10", "--feature", "duo_chat", "--default", "--apply-to-sub-features"
    ).stdout
    assert _table_rows(cleared, "SUB-FEATURE") == [[sub, "cleared", default] for sub in subs]


def test_pin_options_refusals_and_the_instance(start_sidecar: StartSidecar) -> None:
    admin = DuoAdmin(start_sidecar("self_managed").address)
    default, model, subs = _models()
    refused = admin.run(
        "instance-models", "set", "--feature", "code_completions", "--default", "--apply-to-sub-features", expect=1
    )
    assert refused.stderr.startswith("error: INVALID_ARGUMENT: apply_to_sub_features")
    assert "reason: NO_SUB_FEATURES" in refused.stderr.splitlines()

    preview = admin.json("instance-models", "set", "--feature", "duo_chat", "--model", model, "--validate-only")
    assert preview["validate_only"] is True
    assert (preview["impact"]["model_before"], preview["impact"]["model_after"]) == (default, model)
    assert preview["impact"]["features"] == ["duo_chat"]
    listed = {s["feature"]: s for s in admin.json("instance-models", "list")}
    assert listed["duo_chat"]["offered_model_ref"] == ""  # nothing written

    admin.run("instance-models", "set", "--feature", "duo_chat", "--model", model, "--apply-to-sub-features")
    listed = {s["feature"]: s for s in admin.json("instance-models", "list")}
    assert all(listed[f]["offered_model_ref"] == model for f in ["duo_chat", *subs])
