"""The Ruby client for GitLab Rails (clients/ruby) against real sidecars, with Debian's Ruby gRPC stack.

Each test starts the sidecars a minitest file needs, passes their addresses in DUO_SIDECAR_<TYPE>_ADDRESS and
runs `ruby -Iclients/ruby/lib -Iclients/ruby/test clients/ruby/test/<file>`; the Ruby output is shown on
failure. `make test` installs Ruby first (`make ruby-deps`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import StartSidecar
from tests.helpers import REPO, SidecarProcess

RUBY_DIR = REPO / "clients" / "ruby"
# Minitest's last line, e.g. "7 runs, 44 assertions, 0 failures, 0 errors, 0 skips".
SUMMARY = re.compile(r"^(\d+) runs, (\d+) assertions, (\d+) failures, (\d+) errors, (\d+) skips$", re.MULTILINE)
RUBY_TIMEOUT_SECONDS = 100


def run_minitest(test_file: str, sidecars: dict[str, SidecarProcess], env: dict[str, str] | None = None) -> str:
    """Runs one minitest file against the given sidecars (by deployment type); fails unless every test passed."""
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.fail("ruby is not installed: run `make ruby-deps` (`make test` does)")
    addresses = {f"DUO_SIDECAR_{kind.upper()}_ADDRESS": sidecar.address for kind, sidecar in sidecars.items()}
    result = subprocess.run(
        [ruby, f"-I{RUBY_DIR / 'lib'}", f"-I{RUBY_DIR / 'test'}", str(RUBY_DIR / "test" / test_file)],
        capture_output=True,
        text=True,
        env={**os.environ, **addresses, **(env or {})},
        cwd=REPO,
        timeout=RUBY_TIMEOUT_SECONDS,
        check=False,
    )
    output = result.stdout + result.stderr
    logs = "".join(f"\n--- {kind} sidecar log ---\n{sidecar.logs()[-4000:]}" for kind, sidecar in sidecars.items())
    summaries = SUMMARY.findall(result.stdout)
    assert result.returncode == 0 and summaries, f"ruby {test_file} failed (exit {result.returncode}):\n{output}{logs}"
    runs, _, failures, errors, skips = (int(n) for n in summaries[-1])
    assert runs > 0 and failures == errors == skips == 0, f"ruby {test_file}:\n{output}"
    return output


def test_client_tokens_deadlines_retry_and_stream_checks() -> None:
    """Against an in-process fake RoutingService written in Ruby: no sidecar needed."""
    run_minitest("client_test.rb", {})


def test_routing_on_gitlab_com(start_sidecar: StartSidecar) -> None:
    """Context, no context, and DEFAULT_NAMESPACE_REQUIRED as a Ruby exception with GitLab's text and the ids."""
    run_minitest("gitlab_com_test.rb", {"gitlab_com": start_sidecar("gitlab_com")})


def test_user_model_selection(start_sidecar: StartSidecar) -> None:
    """user_selected_model in, user_selection out, and the model picker (ListUserSelectableModels)."""
    run_minitest("user_model_selection_test.rb", {"gitlab_com": start_sidecar("gitlab_com")})


def test_routing_on_self_managed(start_sidecar: StartSidecar) -> None:
    run_minitest("self_managed_test.rb", {"self_managed": start_sidecar("self_managed")})


def test_streamed_completion_from_a_self_hosted_model(start_sidecar: StartSidecar) -> None:
    """Complete through the sidecar to a fake OpenAI-compatible server (Ruby, on 127.0.0.1)."""
    run_minitest("completion_test.rb", {"self_managed": start_sidecar("self_managed")})


def test_tokens_are_verified(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    secret = "ruby-client-test-secret"
    secret_file = tmp_path / "client.secret"
    secret_file.write_text(secret + "\n")
    admin_file = tmp_path / "admin.secret"
    admin_file.write_text("ruby-admin-test-secret-0123456789\n")
    sidecar = start_sidecar(
        "self_managed",
        extra_config=f'[auth]\nclient_secret_file = "{secret_file}"\nadmin_secret_file = "{admin_file}"\n',
    )
    run_minitest("auth_test.rb", {"self_managed": sidecar}, {"DUO_SIDECAR_CLIENT_SECRET": secret})


def test_gem_builds_with_every_library_file(tmp_path: Path) -> None:
    gem = shutil.which("gem")
    if gem is None:
        pytest.fail("rubygems is not installed: run `make ruby-deps` (`make test` does)")
    result = subprocess.run(
        [gem, "build", str(RUBY_DIR / "duo_routing.gemspec"), "--output", str(tmp_path / "duo_routing.gem")],
        capture_output=True,
        text=True,
        cwd=RUBY_DIR,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    listed = subprocess.run(
        [gem, "specification", str(tmp_path / "duo_routing.gem"), "files"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    library = sorted(str(p.relative_to(RUBY_DIR)) for p in (RUBY_DIR / "lib").rglob("*.rb"))
    missing = [path for path in library if path not in listed]
    assert not missing, f"duo_routing.gemspec does not package {missing}"


def test_dedicated_and_hybrid_instances(start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch) -> None:
    """Self-hosted models on Dedicated; NO_MODEL_CONFIGURED as DuoRouting::NoModelConfiguredError on a hybrid one."""
    dedicated = start_sidecar("dedicated")
    monkeypatch.setenv("DUO_SIDECAR_INSTANCE_SELF_HOSTED_AI_GATEWAY", "true")
    run_minitest("instance_deployments_test.rb", {"dedicated": dedicated, "hybrid": start_sidecar("self_managed")})
