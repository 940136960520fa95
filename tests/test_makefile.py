"""The Makefile's set-up: `make run` installs the runtime dependencies only, `make test` the development tools too.

Dry runs (`make -n`) against a virtualenv directory of the test's own, so nothing is installed and the repository's
.venv is left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

RUNTIME_INSTALL = "pip install --quiet -e .\n"
DEV_INSTALL = "pip install --quiet -e '.[dev]'"


def dry_run(target: str, venv: Path) -> str:
    # Not the flags of a make this test may run under (`make test`): they would change what is printed.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(REPO), target, f"VENV={venv}"],
        capture_output=True,
        env=env,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def existing_venv(tmp_path: Path, *stamps: str) -> Path:
    """A virtualenv directory whose python exists and whose given stamps are newer than pyproject.toml."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    for stamp in stamps:
        (venv / stamp).touch()
    return venv


def test_run_installs_only_the_runtime_dependencies(tmp_path: Path) -> None:
    commands = dry_run("run", tmp_path / "fresh")
    assert f"-m venv {tmp_path / 'fresh'}" in commands
    assert RUNTIME_INSTALL in commands
    assert "[dev]" not in commands
    assert commands.rstrip().endswith("duo-sidecar serve")


@pytest.mark.parametrize("target", ["test", "pytest", "lint", "typecheck"])
def test_development_targets_install_the_development_tools(tmp_path: Path, target: str) -> None:
    commands = dry_run(target, tmp_path / "fresh")
    assert DEV_INSTALL in commands
    assert RUNTIME_INSTALL not in commands  # the dev extra includes the runtime dependencies


def test_each_install_has_its_own_stamp(tmp_path: Path) -> None:
    runtime_only = existing_venv(tmp_path / "a", ".installed-runtime")
    assert "pip install" not in dry_run("run", runtime_only)
    assert DEV_INSTALL in dry_run("pytest", runtime_only)  # what `make run` installed is not enough to test

    developed = existing_venv(tmp_path / "b", ".installed-dev", ".installed-runtime")
    assert "pip install" not in dry_run("run", developed)
    assert "pip install" not in dry_run("pytest", developed)
