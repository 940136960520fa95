"""The committed generated code must be exactly what `make proto` produces from proto/."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from tests.helpers import REPO


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_python_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    fresh = _generator().generate_python(tmp_path)
    committed_dir = REPO / "clients" / "python" / "gitlab" / "duo" / "routing" / "v1"
    committed = sorted(p for p in committed_dir.iterdir() if p.is_file())
    assert [p.name for p in fresh] == [p.name for p in committed], "run `make proto` and commit the result"
    for new, old in zip(fresh, committed, strict=True):
        assert new.read_bytes() == old.read_bytes(), f"{old.relative_to(REPO)} is stale: run `make proto`"


def test_committed_ruby_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    fresh = _generator().generate_ruby(tmp_path)
    committed_dir = REPO / "clients" / "ruby" / "lib" / "gitlab" / "duo" / "routing" / "v1"
    committed = sorted(p for p in committed_dir.iterdir() if p.is_file())
    assert [p.name for p in fresh] == [p.name for p in committed], "run `make proto` and commit the result"
    for new, old in zip(fresh, committed, strict=True):
        assert new.read_bytes() == old.read_bytes(), f"{old.relative_to(REPO)} is stale: run `make proto`"
