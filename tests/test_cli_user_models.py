"""duo-admin for user model selection: allowlist show|set|clear, resolve --user-model, user-models, user-status
--user-model; the installed executable against real sidecar processes."""

from __future__ import annotations

from sidecar.catalog import load_catalog
from tests.conftest import StartSidecar
from tests.test_cli import DuoAdmin

AGENTIC = "duo_agent_platform_agentic_chat"
INFO = load_catalog().features[AGENTIC]
A, B, C = [m for m in INFO.selectable_models if m != INFO.default_model and "__default__" not in m][:3]


def test_namespace_allowlist_from_the_command_line(start_sidecar: StartSidecar) -> None:
    admin = DuoAdmin(start_sidecar("gitlab_com").address)
    admin.run("namespace-models", "set", "--namespace", "10", "--feature", AGENTIC, "--model", A)
    pinned = admin.fields("resolve", "--user", "1", "--feature", AGENTIC, "--namespace", "10", "--user-model", B)
    assert (pinned["model_identifier"], pinned["user_selection"]) == (A, "ignored_pinned")
    assert admin.fields("user-models", "--user", "1", "--namespace", "10")["choice_unavailable_reason"] == (
        "ignored_pinned"
    )

    result = admin.run("allowlist", "set", "--namespace", "10", "--feature", AGENTIC, "--model", B, "--model", "nope")
    summary, _, dropped = result.stdout.partition("\n\n")
    fields = {k: v.strip() for k, _, v in (line.partition(":") for line in summary.splitlines())}
    assert (fields["enabled"], fields["model_refs"], fields["hard_pin"]) == ("true", B, "false")
    assert fields["allowed_model_identifiers"] == f"{A},{B}"
    assert dropped.splitlines()[0].split() == ["DROPPED", "MODEL", "REASON", "WHY"]
    assert dropped.splitlines()[1].split()[:2] == ["nope", "UNKNOWN_MODEL"]

    shown = admin.run("allowlist", "show", "--namespace", "10").stdout.splitlines()
    assert shown[0].split() == ["FEATURE", "SCOPE", "ALLOWLIST", "PIN", "MODELS", "USERS", "MAY", "CHOOSE", "STALE"]
    assert shown[1].split() == [AGENTIC, "namespace", "10", "on", A, B, f"{A},{B}", "-"]
    listed = admin.json("allowlist", "show", "--namespace", "10")
    assert [(s["feature"], s["allowlist"]["model_refs"]) for s in listed] == [(AGENTIC, [B])]

    chosen = admin.json("resolve", "--user", "1", "--feature", AGENTIC, "--namespace", "10", "--user-model", B)
    assert (chosen["model_identifier"], chosen["source"], chosen["user_selection"]) == (
        B,
        "SELECTION_SOURCE_USER",
        "USER_SELECTION_APPLIED",
    )
    picker = admin.run("user-models", "--user", "1", "--namespace", "10").stdout
    head, _, table = picker.partition("\n\n")
    assert "user_may_choose:              true" in head.splitlines()
    assert [row.split()[0] for row in table.splitlines()[1:]] == [m for m in INFO.selectable_models if m in (A, B)]
    as_json = admin.json("user-models", "--user", "1", "--namespace", "10", "--feature", AGENTIC)
    assert (as_json["default_model"]["identifier"], as_json["governing_namespace_id"]) == (A, 10)

    admin.run("seats", "sync", "--assign", "1:10")
    status = admin.json("user-status", "--user", "1", "--user-model", B)
    agentic = next(f for f in status["features"] if f["feature"] == AGENTIC)
    assert (agentic["resolution"]["model_identifier"], agentic["user_may_choose"]) == (B, True)

    cleared = admin.fields("allowlist", "clear", "--namespace", "10", "--feature", AGENTIC)
    assert (cleared["enabled"], cleared["hard_pin"]) == ("false", "true")
    events = admin.json("audit", "--resource-prefix", f"namespaces/10/features/{AGENTIC}/allowlist")
    assert [e["action"] for e in events] == ["UpdateNamespaceModelAllowlist"] * 2

    refused = admin.run("allowlist", "set", "--namespace", "10", "--feature", "duo_chat", "--model", A, expect=1)
    assert "reason: FEATURE_NOT_USER_SELECTABLE" in refused.stderr.splitlines()
    wrong = admin.run("allowlist", "set", "--feature", AGENTIC, "--model", A, expect=1)
    assert "reason: WRONG_DEPLOYMENT_TYPE" in wrong.stderr.splitlines()


def test_instance_allowlist_from_the_command_line(start_sidecar: StartSidecar) -> None:
    admin = DuoAdmin(start_sidecar("dedicated").address)
    free = admin.fields("resolve", "--user", "1", "--feature", AGENTIC, "--user-model", C)
    assert (free["model_identifier"], free["source"], free["user_selection"]) == (C, "user", "applied")
    response = admin.json("allowlist", "set", "--feature", AGENTIC, "--model", B, "--model", B)
    assert response["dropped_model_refs"] == [
        {"model_ref": B, "reason": "DUPLICATE", "message": response["dropped_model_refs"][0]["message"]}
    ]
    assert response["model_selection"]["allowlist"]["model_refs"] == [B]
    shown = admin.run("allowlist", "show").stdout.splitlines()
    assert shown[1].split()[:3] == [AGENTIC, "instance", "on"]
    ignored = admin.fields("resolve", "--user", "1", "--feature", AGENTIC, "--user-model", C)
    assert ignored["user_selection"] == "ignored_not_allowed"
    assert admin.fields("allowlist", "clear", "--feature", AGENTIC)["enabled"] == "false"
    assert admin.fields("resolve", "--user", "1", "--feature", AGENTIC, "--user-model", C)["user_selection"] == (
        "applied"
    )
    admin.run("allowlist", "set", "--namespace", "10", "--feature", AGENTIC, expect=1)
