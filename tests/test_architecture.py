"""The import rule of docs/architecture.md: every module of sidecar/ belongs to one room, and a room imports only
from rooms below it (or from itself). The routing policy stays pure: no I/O library, no gRPC."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import REPO

# Bottom to top, as docs/architecture.md lists them.
ROOMS: dict[str, tuple[str, ...]] = {
    "domain": (
        "sidecar",
        "sidecar.catalog",
        "sidecar.config",
        "sidecar.domain",
        "sidecar.endpoints",
        "sidecar.errors",
        "sidecar.impact",
        "sidecar.paging",
        "sidecar.policy",
        "sidecar.snapshot",
        "sidecar.tokens",
        "sidecar.users",
    ),
    "store": ("sidecar.store",),
    "state": (
        "sidecar.backup",
        "sidecar.changes",
        "sidecar.control",
        "sidecar.key_rotation",
        "sidecar.pipeline",
        "sidecar.state",
        "sidecar.vault",
    ),
    "upstreams": ("sidecar.upstream", "sidecar.completion", "sidecar.catalog_refresh"),
    "edge": (
        "sidecar.admission",
        "sidecar.auth",
        "sidecar.edge",
        "sidecar.grpc_errors",
        "sidecar.grpc_metrics",
        "sidecar.health_probe",
        "sidecar.healthcheck",
        "sidecar.logs",
        "sidecar.metrics",
        "sidecar.servicers",
    ),
    "process": ("sidecar.cli", "sidecar.server", "sidecar.worker_board", "sidecar.workers"),
}
ORDER = list(ROOMS)
PURE_POLICY_FORBIDDEN = ("asyncio", "grpc", "aiosqlite", "asyncpg", "aiohttp", "socket", "sqlite3", "os")


def room_of(module: str) -> str:
    """The room of a module: the one naming it, or the package it is in (longest match)."""
    best = ("", "")
    for room, members in ROOMS.items():
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > len(best[1]):
                best = (room, member)
    assert best[0], f"{module} is in no room of docs/architecture.md: add it there and to ROOMS"
    return best[0]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "sidecar").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\b|import\s+([\w.]+(?:\s*,\s*[\w.]+)*))", re.MULTILINE)


def imports(path: Path) -> set[str]:
    """Absolute imports of a module (a line scan: CPython 3.11's ast can fail after another test's deep recursion)."""
    names: set[str] = set()
    for module, listed in _IMPORT.findall(path.read_text()):
        if module:
            names.add(module)
        else:
            names.update(name.strip() for name in listed.split(","))
    return names


def test_every_module_imports_only_from_its_room_or_below() -> None:
    wrong = []
    for module, path in modules().items():
        here = ORDER.index(room_of(module))
        for imported in imports(path):
            if imported == "sidecar" or imported.startswith("sidecar."):
                there = ORDER.index(room_of(imported))
                if there > here:
                    wrong.append(f"{module} ({ORDER[here]}) imports {imported} ({ORDER[there]})")
    assert not wrong, "\n".join(wrong)


def test_the_routing_policy_is_pure() -> None:
    used = imports(REPO / "sidecar" / "policy.py")
    assert not {name for name in used if name.split(".")[0] in PURE_POLICY_FORBIDDEN}


def test_the_architecture_page_names_every_room() -> None:
    page = (REPO / "docs" / "architecture.md").read_text()
    for room, members in ROOMS.items():
        assert f"**{room}**" in page, room
        for member in members:
            assert f"`{member.removeprefix('sidecar.')}" in page or member == "sidecar", member


def test_metrics_are_a_leaf_that_owners_hand_their_labels_to() -> None:
    """Nothing of the sidecar below it: owners register gauges and hand over label sets (the server wires them)."""
    from sidecar.metrics import OTHER, Metrics

    used = {name for name in imports(REPO / "sidecar" / "metrics.py") if name.startswith("sidecar")}
    assert used <= {"sidecar"}, used
    metrics = Metrics(features={"duo_chat"}, models={"claude_sonnet_4_6"})
    assert (metrics.feature_label("duo_chat"), metrics.feature_label("nope")) == ("duo_chat", OTHER)
    assert (metrics.model_label("claude_sonnet_4_6"), metrics.model_label("nope")) == ("claude_sonnet_4_6", OTHER)
    metrics.set_labels({"code_suggestions"}, ())
    assert (metrics.feature_label("duo_chat"), metrics.feature_label("code_suggestions")) == (OTHER, "code_suggestions")
