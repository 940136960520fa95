"""The documentation under docs/ checked against the code.

- docs/operator-guide.md's configuration reference lists every key of every section of sidecar/config.py with the
  code's default, rendered as a TOML value;
- docs/troubleshooting.md's error table lists every (status, ErrorInfo reason) pair the sidecar raises;
- every `duo-admin` command the pages show in ```console blocks runs as written (tests/doc_commands.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from sidecar.config import Config
from tests.conftest import StartSidecar
from tests.doc_commands import Session, run_session, sessions
from tests.error_reasons import code_error_reasons
from tests.helpers import REPO

DOCS = REPO / "docs"
CONFIG_HEADING = "## Configuration reference"
# | `section.key` | `default` | meaning |
CONFIG_ROW = re.compile(r"^\|\s*`(?P<key>[a-z_]+\.[a-z_]+)`\s*\|\s*`(?P<default>[^`]*)`\s*\|(?P<meaning>.*)\|\s*$")
# | `STATUS` | `REASON` | RPCs | cause | what to do |
ERROR_ROW = re.compile(r"^\|\s*`(?P<status>[A-Z_]+)`\s*\|\s*`(?P<reason>[A-Z_]+|none)`\s*\|")


def render_default(value: object) -> str:
    """A default as the TOML value that sets it: strings quoted, booleans lower case, numbers as Python prints them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def code_defaults() -> dict[str, str]:
    """`section.key` -> rendered default, for every field of every section dataclass of Config."""
    defaults = Config()
    keys: dict[str, str] = {}
    for section in dataclasses.fields(Config):
        value = getattr(defaults, section.name)
        if not dataclasses.is_dataclass(value):
            continue  # Config.source: where the configuration came from, not a key
        for key in dataclasses.fields(value):
            keys[f"{section.name}.{key.name}"] = render_default(getattr(value, key.name))
    return keys


def markdown_section(text: str, heading: str) -> list[str]:
    """The lines under heading, up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    start = lines.index(heading) + 1
    end = next(
        (i for i in range(start, len(lines)) if re.match(rf"^#{{1,{level}}} ", lines[i])),
        len(lines),
    )
    return lines[start:end]


def documented_defaults() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in markdown_section((DOCS / "operator-guide.md").read_text(), CONFIG_HEADING):
        match = CONFIG_ROW.match(line)
        if match is None:
            continue
        key = match.group("key")
        assert key not in rows, f"{key} is documented twice"
        assert match.group("meaning").strip(), f"{key} has no meaning"
        rows[key] = match.group("default")
    return rows


def test_configuration_reference_matches_the_code() -> None:
    documented, code = documented_defaults(), code_defaults()
    assert sorted(documented) == sorted(code), (
        f"missing from docs/operator-guide.md: {sorted(set(code) - set(documented))}; "
        f"not in sidecar/config.py: {sorted(set(documented) - set(code))}"
    )
    wrong = {key: (documented[key], code[key]) for key in code if documented[key] != code[key]}
    assert not wrong, f"documented default != code default (as TOML values): {wrong}"


# -- error reasons ---------------------------------------------------------------------------------------------


def documented_error_reasons() -> set[tuple[str, str]]:
    rows: set[tuple[str, str]] = set()
    for line in (DOCS / "troubleshooting.md").read_text().splitlines():
        match = ERROR_ROW.match(line)
        if match is not None and match.group("reason") != "none":
            rows.add((match.group("status"), match.group("reason")))
    return rows


def test_troubleshooting_lists_every_error_the_sidecar_returns() -> None:
    code, documented = code_error_reasons(), documented_error_reasons()
    assert len(code) >= 30, f"the source scan found too few reasons: {sorted(code)}"
    assert documented == code, (
        f"missing from docs/troubleshooting.md: {sorted(code - documented)}; "
        f"documented but not raised by sidecar/: {sorted(documented - code)}"
    )


# -- commands ----------------------------------------------------------------------------------------------------


def _doc_sessions() -> list[object]:
    params: list[object] = []
    for page in sorted(DOCS.glob("*.md")):
        try:
            found = sessions(page.read_text())
        except ValueError:
            params.append(pytest.param(page, None, id=f"{page.name}:unreadable"))  # the test shows why
            continue
        for session in found:
            params.append(pytest.param(page, session, id=f"{page.name}:{session.line}:{session.deployment}"))
    return params


def test_console_blocks_are_read_per_marker() -> None:
    page = """
<!-- doc-test: deployment=dedicated files=a.token,b.token -->
```console
$ duo-admin models create --name "A b" \\
    --family gpt
id: 1234
...
$ duo-admin resolve --user 1 --feature duo_chat
error: FAILED_PRECONDITION: no
```
```shell
$ not run
```
<!-- doc-test: deployment=gitlab_com upstream=127.0.0.1:8000 -->
```console
$ duo-admin server-info
```
"""
    first, second = sessions(page)
    assert (first.deployment, first.files, first.upstream) == ("dedicated", ["a.token", "b.token"], "")
    assert [c.argv for c in first.commands] == [
        ["duo-admin", "models", "create", "--name", "A b", "--family", "gpt"],
        ["duo-admin", "resolve", "--user", "1", "--feature", "duo_chat"],
    ]
    assert first.commands[0].expected == ["id: 1234"] and not first.commands[0].must_fail
    assert first.commands[1].must_fail
    assert (second.deployment, second.upstream, len(second.commands)) == ("gitlab_com", "127.0.0.1:8000", 1)
    with pytest.raises(ValueError, match="before any"):
        sessions("```console\n$ duo-admin server-info\n```\n")
    with pytest.raises(ValueError, match="expected deployment="):
        sessions("<!-- doc-test: deployment=gitlab_com typo -->")


def test_every_docs_page_with_console_blocks_is_run() -> None:
    with_blocks = {p.name for p in DOCS.glob("*.md") if "```console" in p.read_text()}
    run = {p.name for p in DOCS.glob("*.md") if sessions(p.read_text())}
    assert with_blocks <= run
    assert {"admin-guide.md"} <= run


@pytest.mark.parametrize(("page", "session"), _doc_sessions())
def test_docs_console_examples_run_as_written(
    page: Path, session: Session | None, start_sidecar: StartSidecar, tmp_path: Path
) -> None:
    if session is None:
        sessions(page.read_text())  # raises the ValueError that says what is wrong with the page
        pytest.fail(f"{page.name} could not be read")
    assert session.commands, f"{page.name}: the doc-test marker at line {session.line} has no console commands"
    run_session(session, start_sidecar, tmp_path / "workdir", f"docs/{page.name}")
