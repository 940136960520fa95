"""The benchmark's seed data still means what its scenarios say (a catalog change once made the seed invalid and
only `make bench` noticed): seeded through the real admin RPCs, every scenario gets its expected answer."""

from __future__ import annotations

import asyncio

import pytest

from bench.seed import SCENARIOS, seed_admin
from tests.conftest import StartServer

pytestmark = pytest.mark.asyncio


async def test_every_bench_scenario_answers_as_expected(start_server: StartServer) -> None:
    sidecar = await start_server("gitlab_com")
    await asyncio.to_thread(seed_admin, f"127.0.0.1:{sidecar.server.port}")
    for scenario in SCENARIOS:
        answer = await sidecar.routing.ResolveModel(scenario.request)
        assert (answer.source, answer.model_identifier) == (scenario.expected_source, scenario.expected_model), (
            scenario.name
        )
