"""Reading an in-process sidecar's /metrics into samples."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Sidecar

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape_text(sidecar: Sidecar, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{sidecar.server.metrics_port}/metrics", headers=headers) as response,
    ):
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def unfinished(samples: Samples) -> int:
    """Calls started but not yet counted as handled."""
    started = sum(v for (name, _), v in samples.items() if name == "grpc_server_started_total")
    return int(started - sum(v for (name, _), v in samples.items() if name == "grpc_server_handled_total"))


async def scrape(sidecar: Sidecar, settled: bool = True) -> Samples:
    """The sidecar's samples; `settled`: once every call has been counted. grpc.aio sends an aborted call's
    status before the edge chain counts the call, so a caller can see its error a moment
    before the server has counted it."""
    for _ in range(100):
        samples = parse((await scrape_text(sidecar))[1])
        if not settled or unfinished(samples) == 0:
            return samples
        await asyncio.sleep(0.02)
    raise AssertionError(f"{unfinished(samples)} calls were never counted as handled")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
