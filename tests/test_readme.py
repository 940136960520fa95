"""Runs the README walkthrough exactly as written against a real GitLab.com sidecar.

Every `$ duo-admin ...` line of the README's console blocks runs in order; each command's output must be shown
whole, whitespace folded, except where `...` marks lines left out, and a shown `error:` means the command must
fail. The runner, shared with docs/, is tests/doc_commands.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import StartSidecar
from tests.doc_commands import ELISION, run_session, sessions, shows_whole_output
from tests.helpers import REPO

SHELL_BLOCK = re.compile(r"^```shell\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)


def test_readme_walkthrough_runs_as_written(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    found = sessions((REPO / "README.md").read_text())
    assert [session.deployment for session in found] == ["gitlab_com"]
    assert len(found[0].commands) >= 8
    run_session(found[0], start_sidecar, tmp_path / "workdir", "README.md", whole_outputs=True)


def test_whole_outputs_need_elisions_marked() -> None:
    actual = ["provider: gitlab_ai_gateway", "model_identifier: gpt_5", "source: context_namespace", "x: 1"]
    assert shows_whole_output(list(actual), actual, {})
    assert shows_whole_output(["provider: gitlab_ai_gateway", ELISION, "x: 1"], actual, {})
    assert shows_whole_output([ELISION, "model_identifier:   gpt_5", ELISION], actual, {})
    assert shows_whole_output(["id: 5c0f", ELISION], ["id: 9a1b", "name: x"], {})
    assert not shows_whole_output(["provider: gitlab_ai_gateway", "source: context_namespace"], actual, {})
    assert not shows_whole_output(actual[:3], actual, {})  # the last line left out without saying so
    assert not shows_whole_output(
        [ELISION, "source: context_namespace", "model_identifier: gpt_5", ELISION], actual, {}
    )


def test_walkthrough_starts_from_a_fresh_database() -> None:
    """A database left by a plain `make run` is Self-Managed's, and a GitLab.com sidecar refuses to start on it."""
    readme = (REPO / "README.md").read_text()
    walkthrough = readme[readme.index("## Five-minute walkthrough") :]
    start = next(m.group("body") for m in SHELL_BLOCK.finditer(walkthrough) if "make run" in m.group("body"))
    commands = [line.split("#")[0].strip() for line in start.splitlines() if line.split("#")[0].strip()]
    assert commands == ["rm -rf var", "DUO_SIDECAR_INSTANCE_DEPLOYMENT_TYPE=gitlab_com make run"]
    assert "start from a fresh `var/` whenever you switch deployment type" in " ".join(walkthrough.split())
