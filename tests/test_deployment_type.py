"""A database belongs to one deployment type: recorded at the first start, and a sidecar of another type refuses it.

Settings exist per deployment type (self-hosted feature settings on Self-Managed, seats and namespace pins on
GitLab.com); a sidecar started with another type would silently ignore them and route elsewhere.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2, types_pb2
from sidecar.server import StartupError
from sidecar.store.migrations import LATEST_VERSION
from sidecar.store.sqlite import SQLiteStore
from tests.conftest import Backend, StartServer

pytestmark = pytest.mark.asyncio


async def test_the_first_claim_is_recorded_and_kept(backend: Backend) -> None:
    store = backend.new_store()
    await store.open()
    try:
        assert await store.deployment_type() is None
        assert await store.claim_deployment_type("self_managed") == "self_managed"
        assert await store.claim_deployment_type("gitlab_com") == "self_managed"
        assert await store.deployment_type() == "self_managed"
    finally:
        await store.close()
    reopened = backend.new_store()
    await reopened.open()
    try:
        assert await reopened.deployment_type() == "self_managed"
        assert await reopened.claim_deployment_type("dedicated") == "self_managed"
    finally:
        await reopened.close()


async def test_sidecars_starting_together_agree_on_one_type(backend: Backend) -> None:
    stores = [backend.new_store() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        claimed = await asyncio.gather(
            *(s.claim_deployment_type(t) for s, t in zip(stores, ["gitlab_com", "dedicated"] * 2, strict=True))
        )
        assert len(set(claimed)) == 1 and claimed[0] in ("gitlab_com", "dedicated")
        assert await backend.fetchval("SELECT COUNT(*) FROM instance_settings") == 1
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def self_hosted_feature(admin: Any) -> str:
    """Serves duo_chat by a self-hosted model, the setting a GitLab.com sidecar would ignore; returns the model id."""
    model = await admin.CreateSelfHostedModel(
        admin_pb2.CreateSelfHostedModelRequest(
            self_hosted_model=admin_pb2.SelfHostedModel(
                name="Mistral",
                family=types_pb2.MODEL_FAMILY_MISTRAL,
                platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                endpoint="http://10.0.0.5:8000/v1",
                identifier="custom_openai/mistral",
            )
        )
    )
    await admin.UpdateFeatureSetting(
        admin_pb2.UpdateFeatureSettingRequest(
            feature="duo_chat",
            provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED,
            self_hosted_model_id=model.self_hosted_model.id,
        )
    )
    return str(model.self_hosted_model.id)


async def test_sqlite_database_refuses_another_deployment_type(start_server: StartServer, tmp_path: Path) -> None:
    data = tmp_path / "var"
    first = await start_server("self_managed", data_dir=data)
    model_id = await self_hosted_feature(first.admin)
    await first.server.stop()

    with pytest.raises(StartupError) as raised:
        await start_server("gitlab_com", data_dir=data)
    message = str(raised.value)
    assert message.startswith(f"{data / 'sidecar.db'}: this database serves GitLab Self-Managed (self_managed), ")
    assert "but instance.deployment_type is gitlab_com" in message
    assert "set instance.deployment_type back to self_managed" in message
    assert "start GitLab.com (gitlab_com) on a fresh database" in message

    again = await start_server("self_managed", data_dir=data)  # the right type still starts, settings intact
    route = await again.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"))
    assert route.self_hosted_model_id == model_id


async def test_a_database_from_before_the_record_takes_the_type_of_its_next_start(
    start_server: StartServer, tmp_path: Path
) -> None:
    data = tmp_path / "var"
    store = SQLiteStore(data / "sidecar.db")
    await store.open()
    await store.close()
    with closing(sqlite3.connect(data / "sidecar.db")) as db, db:  # as an older sidecar left it
        db.execute("DROP TABLE instance_settings")
        db.execute("DROP TABLE model_allowlists")  # migration 5, later still
        db.execute("DELETE FROM schema_migrations WHERE version >= 4")
    assert LATEST_VERSION == 5

    first = await start_server("dedicated", data_dir=data)
    assert await first.server.store.schema_version() == LATEST_VERSION
    assert await first.server.store.deployment_type() == "dedicated"
    await first.server.stop()
    with pytest.raises(StartupError, match=r"serves GitLab Dedicated \(dedicated\), but instance.deployment_type"):
        await start_server("self_managed", data_dir=data)


async def test_postgres_fleet_refuses_a_sidecar_of_another_type(start_postgres_server: StartServer) -> None:
    running = await start_postgres_server("gitlab_com")
    with pytest.raises(StartupError) as raised:
        await start_postgres_server("self_managed")
    message = str(raised.value)
    assert "this database serves GitLab.com (gitlab_com), but instance.deployment_type is self_managed" in message
    assert message.startswith("postgresql://")
    second = await start_postgres_server("gitlab_com")  # more sidecars of the same type join as before
    assert await second.server.store.deployment_type() == "gitlab_com"
    assert running.server.server is not None
