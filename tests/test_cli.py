"""duo-admin end to end: the installed executable against real sidecar processes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from duo_admin import cli
from tests.conftest import StartSidecar
from tests.doc_commands import openai_compatible_upstream
from tests.helpers import duo_admin_path, free_port

ACTOR = "tester@ci"
API_TOKEN = "sk-very-secret-token-4711"


class DuoAdmin:
    """Runs `duo-admin --address ADDRESS ...` and keeps every byte it printed, for the leak checks."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.printed: list[str] = []

    def run(self, *args: str, expect: int = 0, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [duo_admin_path(), "--address", self.address, "--actor", ACTOR, *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
        )
        self.printed += [result.stdout, result.stderr]
        assert result.returncode == expect, f"duo-admin {' '.join(args)}: {result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def fields(self, *args: str) -> dict[str, str]:
        """The `key: value` lines of a command's text output."""
        lines = self.run(*args).stdout.splitlines()
        return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_gitlab_com_default_namespace_flow(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    admin = DuoAdmin(start_sidecar("gitlab_com").address)
    seats = tmp_path / "seats.csv"
    seats.write_text("user_id,namespace_id,assigned\n42,10,true\n42,20,true\n\n7,10,true\n")

    synced = admin.fields("seats", "sync", "--file", str(seats))
    assert synced["assigned_count"] == "3"
    synced = admin.fields("seats", "sync", "--remove", "7:10", "--assign", "8:10")
    assert (synced["assigned_count"], synced["removed_count"]) == ("1", "1")
    assert admin.run("seats", "list", "--namespace", "10").stdout.split() == [
        *("USER", "NAMESPACE"),
        *("8", "10"),
        *("42", "10"),
    ]

    admin.run("namespace-models", "set", "--namespace", "20", "--feature", "duo_chat", "--model", "claude_sonnet_4_6")
    pins = {row["feature"]: row for row in admin.json("namespace-models", "list", "--namespace", "20")}
    assert pins["duo_chat"]["offered_model_ref"] == "claude_sonnet_4_6"
    assert pins["duo_chat_explain_code"]["effective_model_identifier"] == "claude_sonnet_4_6"  # falls back to duo_chat

    with_context = admin.fields("resolve", "--user", "42", "--feature", "duo_chat", "--namespace", "20")
    assert with_context["provider"] == "gitlab_ai_gateway"
    assert with_context["model_identifier"] == "claude_sonnet_4_6"
    assert with_context["source"] == "context_namespace"
    assert with_context["governing_namespace_id"] == "20"

    refused = admin.run("resolve", "--user", "42", "--feature", "duo_chat", expect=1)
    assert refused.stdout == ""
    error_lines = refused.stderr.splitlines()
    assert error_lines[0].startswith("error: FAILED_PRECONDITION: I'm sorry, you have not selected a default")
    assert "reason: DEFAULT_NAMESPACE_REQUIRED" in error_lines
    assert "candidate_namespace_ids: 10,20" in error_lines

    summary, _, table = admin.run("user-status", "--user", "42").stdout.partition("\n\n")
    assert "seat_namespace_ids:             10,20" in summary.splitlines()
    assert "default_namespace_prompt:       true" in summary.splitlines()
    rows = {row.split()[0]: row.split()[1:] for row in table.splitlines()[1:]}
    assert rows["duo_chat"][:2] == ["error", "DEFAULT_NAMESPACE_REQUIRED"]
    assert rows["code_completions"][:3] == [
        "gitlab_ai_gateway",
        "codestral_2508_fireworks",
        "unanimous_seat_namespaces",
    ]

    no_seat = admin.run("default-namespace", "set", "--user", "42", "--namespace", "30", expect=1)
    assert "reason: NO_SEAT_IN_NAMESPACE" in no_seat.stderr.splitlines()
    admin.run("default-namespace", "set", "--user", "42", "--namespace", "20")

    no_context = admin.json("resolve", "--user", "42", "--feature", "duo_chat")
    assert no_context["model_identifier"] == "claude_sonnet_4_6"
    assert no_context["source"] == "SELECTION_SOURCE_DEFAULT_NAMESPACE"
    assert no_context["governing_namespace_id"] == 20
    assert no_context["default_namespace_prompt"] is False

    admin.run("default-namespace", "clear", "--user", "42")
    admin.run("resolve", "--user", "42", "--feature", "duo_chat", expect=1)

    events = admin.json("audit", "--resource-prefix", "users/42/")
    assert [e["action"] for e in events] == ["SetUserDefaultNamespace", "SetUserDefaultNamespace"]
    assert {e["actor"] for e in events} == {ACTOR}


def test_self_managed_self_hosted_model_flow(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    sidecar = start_sidecar("self_managed")
    admin = DuoAdmin(sidecar.address)
    token_file = tmp_path / "token"
    token_file.write_text(API_TOKEN + "\n")

    created = admin.json(
        *("models", "create", "--name", "Mistral on vLLM", "--family", "mistral"),
        *("--platform", "openai_compatible", "--endpoint", "http://vllm.internal:8000/v1"),
        *("--identifier", "custom_openai/mistral-7b", "--api-token-file", str(token_file)),
    )["self_hosted_model"]
    model_id = created["id"]
    assert created["api_token_set"] is True
    assert created["family"] == "MODEL_FAMILY_MISTRAL"
    assert "api_token" not in created

    listed = admin.run("models", "list").stdout
    assert "Mistral on vLLM" in listed and "mistral" in listed and "openai_compatible" in listed
    assert admin.fields("models", "get", model_id)["api_token_set"] == "true"

    admin.run("features", "set", "--feature", "duo_chat", "--provider", "self_hosted", "--model", model_id)
    route = admin.fields("resolve", "--user", "1", "--feature", "duo_chat_explain_code")
    assert route["provider"] == "self_hosted"
    assert route["source"] == "feature_setting"
    assert route["model_identifier"] == "custom_openai/mistral-7b"
    assert route["self_hosted_model_endpoint"] == "http://vllm.internal:8000/v1"
    assert route["effective_feature"] == "duo_chat"

    in_use = admin.run("models", "delete", model_id, expect=1)
    assert in_use.stderr.startswith("error: FAILED_PRECONDITION: ")
    assert "reason: MODEL_IN_USE" in in_use.stderr.splitlines()

    renamed = admin.fields("models", "update", model_id, "--name", "Mistral 7B")
    assert renamed["name"] == "Mistral 7B"
    assert renamed["endpoint"] == "http://vllm.internal:8000/v1"  # not in the mask: unchanged
    admin.run("models", "update", model_id, "--api-token-file", "-", stdin=API_TOKEN + "-rotated\n")
    assert admin.fields("models", "update", model_id, "--clear-api-token")["api_token_set"] == "false"
    admin.run("models", "update", model_id, expect=2)  # nothing to change

    admin.run("features", "set", "--feature", "duo_chat", "--provider", "vendored")
    deleted = admin.run("models", "delete", model_id).stdout
    assert deleted.startswith(f"deleted self-hosted model {model_id}\n")
    assert admin.json("models", "list") == []

    audit_text = admin.run("audit", "--limit", "0").stdout
    assert "CreateSelfHostedModel" in audit_text and "DeleteSelfHostedModel" in audit_text
    assert len(admin.json("audit", "--limit", "0")) == 7
    assert len(admin.json("audit", "--limit", "2")) == 2
    for printed in [*admin.printed, sidecar.logs()]:
        assert API_TOKEN not in printed


def test_json_output_and_input_errors(start_sidecar: StartSidecar) -> None:
    admin = DuoAdmin(start_sidecar("self_managed").address)

    info = admin.json("server-info")
    assert info["deployment_type"] == "DEPLOYMENT_TYPE_SELF_MANAGED"
    assert info["storage_backend"] == "sqlite"
    assert json.loads(admin.run("--json", "server-info").stdout) == info  # --json before the command too
    catalog = admin.json("catalog", "--feature", "code_completions")
    assert [f["feature"] for f in catalog] == ["code_completions"]
    assert len(admin.json("features", "list")) == len(admin.json("catalog")) > 10

    admin.run("instance-models", "set", "--feature", "code_completions", "--model", "codestral_2508_vertex")
    pinned = {s["feature"]: s for s in admin.json("instance-models", "list")}["code_completions"]
    assert pinned["effective_model_identifier"] == "codestral_2508_vertex"
    assert admin.fields("resolve", "--user", "3", "--feature", "code_completions")["source"] == "instance"
    admin.run("instance-models", "set", "--feature", "code_completions", "--default")
    restored = admin.fields("resolve", "--user", "3", "--feature", "code_completions")
    assert (restored["source"], restored["gitlab_default"]) == ("gitlab_default", "true")

    not_selectable = admin.run(
        "instance-models", "set", "--feature", "code_completions", "--model", "claude_sonnet_4_6", expect=1
    ).stderr.splitlines()
    assert not_selectable[0].startswith("error: INVALID_ARGUMENT: 'claude_sonnet_4_6' is not a selectable model")
    assert "reason: MODEL_NOT_SELECTABLE" in not_selectable

    bad_endpoint = admin.run(
        *("models", "create", "--name", "x", "--family", "gpt", "--platform", "openai_compatible"),
        *("--endpoint", "ftp://somewhere", "--identifier", "custom_openai/x"),
        expect=1,
    ).stderr
    assert bad_endpoint.startswith("error: INVALID_ARGUMENT: endpoint must be an http:// or https:// URL")
    assert "field violation: self_hosted_model.endpoint: " in bad_endpoint

    negative_user = admin.run("resolve", "--user", "-5", "--feature", "duo_chat", expect=1).stderr
    assert negative_user.startswith("error: INVALID_ARGUMENT: ")
    assert "field violation: user_id: " in negative_user

    wrong_deployment = admin.run("seats", "sync", "--assign", "1:2", expect=1).stderr
    assert "reason: WRONG_DEPLOYMENT_TYPE" in wrong_deployment.splitlines()

    # Usage errors: exit 2, before anything is sent.
    assert "expected an id" in admin.run("resolve", "--user", "abc", "--feature", "x", expect=2).stderr
    assert "USER_ID:NAMESPACE_ID" in admin.run("seats", "sync", "--assign", "42", expect=2).stderr
    admin.run("models", "create", "--name", "x", expect=2)
    admin.run("models", expect=2)
    assert "printable ASCII" in admin.run("server-info", "--actor", "jürgen", expect=2).stderr
    missing = admin.run(
        *("models", "create", "--name", "x", "--family", "gpt", "--platform", "openai_compatible"),
        *("--endpoint", "http://x/v1", "--identifier", "custom_openai/x", "--api-token-file", "/nonexistent"),
        expect=2,
    ).stderr
    assert "cannot read --api-token-file /nonexistent" in missing
    assert admin.json("models", "list") == []


def test_unreachable_sidecar_is_explained() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = DuoAdmin(address).run("--timeout", "3", "server-info", expect=1)
    assert result.stderr.startswith(f"error: UNAVAILABLE: cannot reach the sidecar at {address} (")
    assert "DUO_ADMIN_ADDRESS" in result.stderr


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], bool]:
    """Every command path (groups such as ("models",) too), mapped to whether it runs something."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found = {path: not groups}
    for group in groups:
        for name, sub in group.choices.items():
            found.update(_commands(sub, (*path, name)))
    return found


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(cli.build_parser())
    assert sum(commands.values()) == 27 and commands[("models", "update")] and not commands[("models",)]
    for command, runs_something in commands.items():
        with pytest.raises(SystemExit) as exited:
            cli.main([*command, "--help"])
        assert exited.value.code == 0
        help_text = capsys.readouterr().out
        assert help_text.startswith(" ".join(["usage: duo-admin", *command]))
        assert "--json" in help_text or not runs_something


def _create_model(admin: DuoAdmin, name: str, endpoint: str) -> str:
    model_id: str = admin.json(
        *("models", "create", "--name", name, "--family", "mistral", "--platform", "openai_compatible"),
        *("--endpoint", endpoint, "--identifier", "custom_openai/mistral-small"),
    )["self_hosted_model"]["id"]
    return model_id


def test_test_model_exit_status_says_whether_the_model_passed(start_sidecar: StartSidecar) -> None:
    admin = DuoAdmin(start_sidecar("self_managed").address)
    address = f"127.0.0.1:{free_port()}"
    with openai_compatible_upstream(address):
        working = _create_model(admin, "Working", f"http://{address}/v1")
        passed = admin.run("test-model", working, expect=0)
        assert "success:       true" in passed.stdout.splitlines()
    broken = _create_model(admin, "Broken", f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    failed = admin.run("test-model", broken, expect=cli.EXIT_TEST_FAILED)
    assert "success:       false" in failed.stdout.splitlines()
    assert "error_message:" in failed.stdout
    assert admin.run("test-model", broken, "--json", expect=cli.EXIT_TEST_FAILED).stdout.startswith("{")
    admin.run("test-model", "nosuchmodel", expect=cli.EXIT_RPC_ERROR)  # the test could not run at all


def test_lists_of_settings_of_another_deployment_type_are_refused(start_sidecar: StartSidecar) -> None:
    """Like features list: a list that cannot exist there is an error, not an empty list."""
    for deployment, refused in (
        ("self_managed", [("seats", "list"), ("namespace-models", "list", "--namespace", "1")]),
        ("gitlab_com", [("models", "list"), ("features", "list"), ("instance-models", "list")]),
    ):
        admin = DuoAdmin(start_sidecar(deployment).address)
        for command in refused:
            for output in ((), ("--json",)):
                result = admin.run(*command, *output, expect=cli.EXIT_RPC_ERROR)
                assert result.stdout == "", f"{deployment}: {command}"
                assert result.stderr.startswith("error: FAILED_PRECONDITION: "), f"{deployment}: {command}"
                assert "reason: WRONG_DEPLOYMENT_TYPE" in result.stderr.splitlines(), f"{deployment}: {command}"


def _one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("duo-admin: error: "), result.stderr
    for text in expected:
        assert text in lines[0], result.stderr
    assert result.stdout == ""


def test_local_problems_are_one_line_before_anything_is_sent(tmp_path: Path) -> None:
    """Files and addresses that cannot be used: exit 2, one line naming the problem, never a traceback."""
    admin = DuoAdmin(f"127.0.0.1:{free_port()}")  # nothing listens: nothing may be sent anyway
    missing = str(tmp_path / "missing.secret")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    empty = tmp_path / "empty.secret"
    empty.write_text("\n")
    for args, expected in [
        (("--secret-file", missing), ("cannot read the secret file", missing, "No such file or directory")),
        (("--secret-file", str(tmp_path)), ("cannot read the secret file", "Is a directory")),
        (("--secret-file", str(empty)), (f"the secret file {empty} is empty",)),
        (("--tls-ca", missing), (f"cannot read --tls-ca {missing}",)),
        (("--tls-ca", str(not_pem)), (f"--tls-ca {not_pem} is not a PEM file holding a CA certificate",)),
        (("--tls-cert", str(not_pem)), ("mutual TLS needs both", "--tls-key")),  # gRPC itself would abort
        (("--tls-cert", missing, "--tls-key", missing), (f"cannot read --tls-key {missing}",)),
        (("--address", "localhost"), ("'localhost': expected HOST:PORT",)),  # gRPC: port 443
        (("--address", "127.0.0.1:99999"), ("port from 1 to 65535",)),  # gRPC: wraps around
    ]:
        _one_line_error(admin.run(*args, "server-info", expect=2), *expected)
    # Ids the API cannot carry (int64) or written in another script: protobuf would raise out of range.
    for args in (("user-status", "--user", "99999999999999999999"), ("seats", "sync", "--assign", "1:\u0665")):
        refused = admin.run(*args, expect=2)  # argparse's usage line, then its error line
        assert "Traceback" not in refused.stderr and "expected" in refused.stderr.splitlines()[-1], refused.stderr

    # The admin guide tells everyone to export DUO_ADMIN_SECRET_FILE.
    result = subprocess.run(
        [duo_admin_path(), "server-info"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DUO_ADMIN_SECRET_FILE": missing, "DUO_ADMIN_ADDRESS": admin.address},
        check=False,
    )
    assert result.returncode == 2
    _one_line_error(result, f"cannot read the secret file {missing} (from $DUO_ADMIN_SECRET_FILE)")

    undecodable = subprocess.run(
        [duo_admin_path(), "--address", admin.address, "complete", "--user", "1", "--feature", "duo_chat"],
        capture_output=True,
        input=b"\xff\xfe not UTF-8",
        timeout=60,
        check=False,
    )
    assert undecodable.returncode == 2
    assert undecodable.stderr.decode().splitlines()[-1].endswith("standard input: not UTF-8 text")
    assert b"Traceback" not in undecodable.stderr

    timeout = admin.run("--timeout", "inf", "server-info", expect=2).stderr
    assert "at most 86400" in timeout.splitlines()[-1]
