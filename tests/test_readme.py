"""Runs the README walkthrough exactly as written against a real GitLab.com sidecar.

Every `$ duo-admin ...` line of the README's console blocks runs in order; each output line the README
shows (except `...`) must appear in the real output, whitespace folded, and a shown `error:` means the
command must fail.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field

from tests.conftest import StartSidecar
from tests.helpers import BIN, REPO


@dataclass
class ShownCommand:
    argv: list[str]
    expected: list[str] = field(default_factory=list)


def shown_commands(markdown: str) -> list[ShownCommand]:
    commands: list[ShownCommand] = []
    for block in re.findall(r"```console\n(.*?)```", markdown, flags=re.DOTALL):
        for line in block.splitlines():
            if line.startswith("$ "):
                commands.append(ShownCommand(shlex.split(line[2:])))
            elif line.strip() and line.strip() != "...":
                commands[-1].expected.append(line)
    return commands


def _fold(text: str) -> str:
    return " ".join(text.split())


def test_readme_walkthrough_runs_as_written(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar("gitlab_com")
    commands = shown_commands((REPO / "README.md").read_text())
    assert len(commands) >= 8
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DUO_ADMIN_ADDRESS": sidecar.address}
    for command in commands:
        assert command.argv[0] == "duo-admin", f"README console blocks run duo-admin only: {command.argv}"
        result = subprocess.run(command.argv, capture_output=True, text=True, env=env, timeout=60, check=False)
        shown = " ".join(command.argv)
        failing = bool(command.expected) and command.expected[0].startswith("error:")
        assert (result.returncode != 0) == failing, f"{shown}: exit {result.returncode}\n{result.stderr}"
        actual = [_fold(line) for line in (result.stdout + result.stderr).splitlines()]
        for line in command.expected:
            assert _fold(line) in actual, f"{shown}: README shows {line!r}, output was:\n{result.stdout}{result.stderr}"
