"""The real `duo-sidecar` process: restarts keep every change, SIGTERM shuts down cleanly, config errors are clear."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc, types_pb2
from sidecar.store.migrations import LATEST_VERSION
from tests.conftest import StartServer, StartSidecar
from tests.helpers import free_port, run_cli, write_config


def stubs(address: str) -> tuple[grpc.Channel, routing_pb2_grpc.RoutingServiceStub, admin_pb2_grpc.AdminServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, routing_pb2_grpc.RoutingServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel)


def test_restart_keeps_every_committed_change_on_gitlab_com(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    workdir = tmp_path / "node"
    first = start_sidecar("gitlab_com", directory=workdir)
    channel, routing, admin = stubs(first.address)
    with channel:
        admin.SyncSeatAssignments(
            iter(
                [
                    admin_pb2.SyncSeatAssignmentsRequest(
                        assignments=[
                            admin_pb2.SeatAssignment(user_id=1, namespace_id=10, assigned=True),
                            admin_pb2.SeatAssignment(user_id=1, namespace_id=20, assigned=True),
                        ]
                    )
                ]
            )
        )
        admin.UpdateNamespaceModelSelection(
            admin_pb2.UpdateNamespaceModelSelectionRequest(
                namespace_id=20, feature="duo_chat", offered_model_ref="claude_sonnet_4_6"
            )
        )
        admin.SetUserDefaultNamespace(admin_pb2.SetUserDefaultNamespaceRequest(user_id=1, namespace_id=20))
        before = routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"))
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=15) == 0
    assert "duo-sidecar stopped" in first.logs()

    second = start_sidecar("gitlab_com", directory=workdir)
    channel, routing, admin = stubs(second.address)
    with channel:
        after = routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat"))
        status = admin.GetUserRoutingStatus(admin_pb2.GetUserRoutingStatusRequest(user_id=1))
        audit = admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest())
    assert after == before
    assert (after.model_identifier, after.source) == ("claude_sonnet_4_6", types_pb2.SELECTION_SOURCE_DEFAULT_NAMESPACE)
    assert list(status.seat_namespace_ids) == [10, 20] and status.explicit_default_namespace_id == 20
    assert len(audit.audit_events) == 3


def test_restart_keeps_self_managed_settings(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    workdir = tmp_path / "node"
    first = start_sidecar("self_managed", directory=workdir)
    channel, routing, admin = stubs(first.address)
    with channel:
        model = admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(
                self_hosted_model=admin_pb2.SelfHostedModel(
                    name="Codestral",
                    family=types_pb2.MODEL_FAMILY_CODESTRAL,
                    platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                    endpoint="http://10.0.0.5:8000/v1",
                    identifier="custom_openai/codestral-22b",
                    api_token="tok-123",
                )
            )
        ).self_hosted_model
        admin.UpdateFeatureSetting(
            admin_pb2.UpdateFeatureSettingRequest(
                feature="code_completions",
                provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED,
                self_hosted_model_id=model.id,
            )
        )
        admin.UpdateInstanceModelSelection(
            admin_pb2.UpdateInstanceModelSelectionRequest(
                feature="duo_chat", offered_model_ref="claude_sonnet_4_5_20250929_vertex"
            )
        )
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=15) == 0

    second = start_sidecar("self_managed", directory=workdir)
    channel, routing, admin = stubs(second.address)
    with channel:
        completions = routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=3, feature="code_completions"))
        chat = routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=3, feature="duo_chat"))
        stored = admin.GetSelfHostedModel(admin_pb2.GetSelfHostedModelRequest(id=model.id)).self_hosted_model
        info = admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
    assert completions.self_hosted_model_id == model.id
    assert chat.model_identifier == "claude_sonnet_4_5_20250929_vertex"
    assert stored.api_token_set is True
    assert info.config_version == "3"


@pytest.mark.asyncio
async def test_shutdown_reports_not_serving_before_closing(start_server: StartServer) -> None:
    sidecar = await start_server("dedicated")
    health = health_pb2_grpc.HealthStub(sidecar.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service="gitlab.duo.routing.v1.RoutingService"))
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(sidecar.server.stop())
    second = await asyncio.wait_for(watch.read(), timeout=5)
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await stopping


def test_check_config_names_the_file_and_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[instance]\ndeployment_type = "saas"\n')
    result = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config}: [instance] deployment_type: must be one of gitlab_com, dedicated, self_managed" in result.stderr

    config.write_text('[storage]\nbackend = "sqlite"\npaht = "x.db"\n')
    result = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "[storage] paht: unknown key" in result.stderr

    config.write_text('[server]\nlisten = "127.0.0.1:50051"\n')
    result = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout and "GitLab Self-Managed" in result.stdout


def test_serve_refuses_a_port_in_use(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    running = start_sidecar("dedicated")
    config = tmp_path / "second.toml"
    config.write_text(
        f'[server]\nlisten = "{running.address}"\n[metrics]\nlisten = "127.0.0.1:0"\n'
        f'[storage]\npath = "{tmp_path / "db.sqlite"}"\n'
    )
    result = run_cli("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert f"cannot listen on {running.address}" in result.stderr


def test_migrate_reports_the_schema_version(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "m.db"}"\n')
    result = run_cli("migrate", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"schema version {LATEST_VERSION}" in result.stdout


def test_a_database_of_another_deployment_type_refuses_to_start(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    """What the README walkthrough led to with a reused var/: Self-Managed settings silently ignored by GitLab.com."""
    workdir = tmp_path / "node"
    first = start_sidecar("self_managed", directory=workdir)
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=15) == 0

    config = write_config(workdir, "gitlab_com", free_port())
    result = run_cli("serve", "--config", str(config), cwd=workdir)
    assert result.returncode == 2, result.stderr
    database = workdir / "data" / "sidecar.db"
    assert result.stderr.splitlines()[-1] == (
        f"duo-sidecar: {database}: this database serves GitLab Self-Managed (self_managed), but "
        "instance.deployment_type is gitlab_com: the settings of one deployment type do not apply to another, so this "
        "sidecar refuses to start. Either set instance.deployment_type back to self_managed, or start GitLab.com "
        "(gitlab_com) on a fresh database (a new storage.path or data directory, or an empty PostgreSQL database)"
    )
    assert "Traceback" not in result.stderr

    migrated = run_cli("migrate", "--config", str(config), cwd=workdir)  # migrate neither records nor refuses
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.endswith(f"schema version {LATEST_VERSION}, deployment type self_managed\n")
    start_sidecar("self_managed", directory=workdir)  # its own type still starts


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nlisten = "nowhere"\n[instance]\ndeployment_type = "saas"\n[log]\nlevel = "loud"\n')
    result = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"duo-sidecar: {config}: [server] listen: expected HOST:PORT (such as 127.0.0.1:50051), got 'nowhere'",
        f"duo-sidecar: {config}: [instance] deployment_type: must be one of gitlab_com, dedicated, self_managed, "
        "got 'saas'",
        f"duo-sidecar: {config}: [log] level: must be one of debug, info, warning, error",
    ]


def test_start_up_problems_are_one_line(tmp_path: Path) -> None:
    """Files that cannot be used: exit 2 and one line naming them, never a traceback."""
    not_utf8 = tmp_path / "latin1.toml"
    not_utf8.write_bytes(b"# caf\xe9\n")
    directory_db = tmp_path / "a-directory"
    directory_db.mkdir()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    tls = f'[server]\ntls_cert_file = "{garbage}"\ntls_key_file = "{garbage}"\n'
    cases = {
        "not_utf8": (["check-config", "--config", str(not_utf8)], f"duo-sidecar: {not_utf8}: cannot read: not UTF-8"),
        "db_is_a_directory": (["migrate"], f"[storage] path: {directory_db} is a directory; give the database file"),
        "db_under_a_file": (["migrate"], f"[storage] path: {garbage} is not a directory"),
        "tls_not_pem": (["check-config"], f"tls_cert_file: {garbage} is not a PEM file holding a certificate"),
    }
    configs = {
        "db_is_a_directory": f'[storage]\npath = "{directory_db}"\n',
        "db_under_a_file": f'[storage]\npath = "{garbage / "sidecar.db"}"\n',
        "tls_not_pem": tls,
    }
    for name, (args, expected) in cases.items():
        if name in configs:
            path = tmp_path / f"{name}.toml"
            path.write_text(configs[name])
            args = [*args, "--config", str(path)]
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, f"{name}: {result.stderr}"
        assert "Traceback" not in result.stderr, f"{name}: {result.stderr}"
        named = [line for line in result.stderr.splitlines() if expected in line]
        assert len(named) == 1 and named[0].startswith("duo-sidecar: "), f"{name}: {result.stderr}"
    workers = run_cli("serve", "--workers", "1000", cwd=tmp_path)
    assert workers.returncode == 2 and "--workers: must be a whole number from 1 to 64" in workers.stderr
