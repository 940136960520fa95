"""Shared fixtures: a real sidecar process per deployment type, listening on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.helpers import SidecarProcess, free_port, run_sidecar, write_config

StartSidecar = Callable[..., SidecarProcess]


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[StartSidecar]:
    """start_sidecar("gitlab_com") runs `duo-sidecar serve` on a fresh database under tmp_path."""
    with ExitStack() as stack:

        def start(deployment_type: str = "self_managed", extra_config: str = "", directory: Path | None = None) -> SidecarProcess:
            port = free_port()
            workdir = directory or tmp_path / f"sidecar-{port}"
            workdir.mkdir(parents=True, exist_ok=True)
            config = write_config(workdir, deployment_type, port, extra_config)
            return stack.enter_context(run_sidecar(config, port))

        yield start
