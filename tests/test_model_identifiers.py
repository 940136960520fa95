"""No model identifier in code, tests or docs that the bundled catalog does not have (issue 16).

Examples and tests that name retired models mislead admins and hide what today's catalog offers. Identifiers are
found by their shape (a vendor's name, an underscore, more); an identifier meant to be unknown must not look like one.
"""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.catalog import load_catalog
from tests.helpers import REPO

VENDORS = (
    "amazon_q|claude|codegemma|codellama|codestral|deepseek|devstral|gemini|glm|gpt|kimi|llama|minimax|mistral|"
    "mixtral|qwen|text_embedding"
)
# A lower-case word starting with a vendor's name and an underscore; not part of a path, a URL, a longer word or a
# served model name such as custom_openai/mistral-7b.
IDENTIFIER = re.compile(rf"(?<![\w/.-])(?:{VENDORS})_[a-z0-9_]*[a-z0-9](?![\w-])")
SCANNED = [
    *REPO.glob("*.md"),
    *(REPO / "docs").glob("*.md"),
    *(REPO / "docs").glob("*.yml"),
    *(REPO / "docs").glob("*.json"),
    *(REPO / "tests").glob("*.yml"),
    *(REPO / "sidecar").rglob("*.py"),
    *(REPO / "tests").rglob("*.py"),
    *(REPO / "bench").rglob("*.py"),
    *(REPO / "clients" / "python" / "duo_admin").rglob("*.py"),
    *(REPO / "clients" / "ruby").glob("*.md"),
    *(REPO / "clients" / "ruby" / "lib" / "duo_routing").rglob("*.rb"),
    *(REPO / "clients" / "ruby" / "test").rglob("*.rb"),
    *(REPO / "clients" / "ruby" / "bench").rglob("*.rb"),
    *(REPO / "proto").rglob("*.proto"),
]


def identifiers_in(path: Path) -> dict[str, int]:
    """Each identifier-shaped word in the file, with the line it first appears on."""
    found: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for match in IDENTIFIER.finditer(line):
            found.setdefault(match.group(), number)
    return found


def test_every_model_identifier_is_in_the_bundled_catalog() -> None:
    known = set(load_catalog().models)
    unknown = [
        f"{path.relative_to(REPO)}:{line}: {identifier}"
        for path in sorted(SCANNED)
        if path.name != Path(__file__).name
        for identifier, line in identifiers_in(path).items()
        if identifier not in known
    ]
    assert not unknown, "model identifiers the bundled catalog does not have:\n" + "\n".join(unknown)


def test_the_scan_finds_identifiers() -> None:
    """The pattern catches what it must and leaves served names, paths and longer words alone."""
    text = (
        'pin "claude_sonnet_4_6_vertex", then gpt_5; custom_openai/mistral-7b, https://x/gemini_2_5_flash/v1, '
        "mistral-small, my_gpt_5, gpt_5-mini, CLAUDE_3"
    )
    assert [m.group() for m in IDENTIFIER.finditer(text)] == ["claude_sonnet_4_6_vertex", "gpt_5"]
    assert SCANNED and all(p.is_file() for p in SCANNED)
