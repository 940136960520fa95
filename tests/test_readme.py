"""Runs the README walkthrough exactly as written against a real GitLab.com sidecar.

Every `$ duo-admin ...` line of the README's console blocks runs in order; each output line the README
shows (except `...`) must appear in the real output, whitespace folded, and a shown `error:` means the
command must fail. The runner, shared with docs/, is tests/doc_commands.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import StartSidecar
from tests.doc_commands import run_session, sessions
from tests.helpers import REPO


def test_readme_walkthrough_runs_as_written(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    found = sessions((REPO / "README.md").read_text())
    assert [session.deployment for session in found] == ["gitlab_com"]
    assert len(found[0].commands) >= 8
    run_session(found[0], start_sidecar, tmp_path / "workdir", "README.md")
