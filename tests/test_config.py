"""Configuration loading: defaults, file values, environment overrides and errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config
from sidecar.domain import DeploymentType


def test_defaults_match_the_design() -> None:
    config = load_config(None, {})
    assert config.server.listen == "127.0.0.1:50051"
    assert config.metrics.listen == "127.0.0.1:9236"
    assert config.instance.deployment is DeploymentType.SELF_MANAGED
    assert config.instance.ai_gateway_url == "https://cloud.gitlab.com/ai"
    assert (config.storage.backend, config.storage.path) == ("sqlite", "var/sidecar.db")
    assert config.storage.token_key_path == Path("var/token.key")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[instance]\ndeployment_type = "dedicated"\n[server]\ngrace_period_seconds = 3\n')
    config = load_config(
        path, {"DUO_SIDECAR_INSTANCE_DEPLOYMENT_TYPE": "gitlab_com", "DUO_SIDECAR_TEST_POSTGRES_DSN": "x"}
    )
    assert config.instance.deployment is DeploymentType.GITLAB_COM
    assert config.server.grace_period_seconds == 3.0


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[server]\nlisten = 'nowhere'\n", {}, "[server] listen: expected HOST:PORT"),
        ("[server]\ngrace_period_seconds = 'soon'\n", {}, "[server] grace_period_seconds: expected float"),
        ("[storage]\nbackend = 'mysql'\n", {}, "[storage] backend: must be sqlite or postgres"),
        ("[instance]\nai_gateway_url = 'cloud.gitlab.com'\n", {}, "[instance] ai_gateway_url: expected an http(s) URL"),
        ("[log]\nlevel = 'loud'\n", {}, "[log] level: must be one of"),
        (
            "[auth]\nadmin_secret_file = '/no/such/file'\n",
            {},
            "[auth] admin_secret_file: file /no/such/file does not exist",
        ),
        ("[metricz]\n", {}, "unknown section [metricz]"),
        ("not toml at all [", {}, "not valid TOML"),
        ("", {"DUO_SIDECAR_SERVER_LISTEN": "x"}, "environment DUO_SIDECAR_SERVER_LISTEN: expected HOST:PORT"),
        ("", {"DUO_SIDECAR_SERVER_PORT": "1"}, "environment DUO_SIDECAR_SERVER_PORT: unknown key"),
        # Digits of other scripts, and numbers that are not numbers: a clear error, not a traceback or a NaN bound.
        ("[server]\nlisten = '127.0.0.1:\u00b2'\n", {}, "[server] listen: expected HOST:PORT"),
        ("[server]\ngrace_period_seconds = nan\n", {}, "[server] grace_period_seconds: expected a finite number"),
        ("", {"DUO_SIDECAR_STORAGE_TIMEOUT_SECONDS": "inf"}, "expected a finite number"),
        ("", {"DUO_SIDECAR_SERVER_WORKERS": "\u0662"}, "DUO_SIDECAR_SERVER_WORKERS: expected int"),
    ],
)
def test_errors_name_where_the_problem_is(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as raised:
        load_config(path, env)
    assert message in str(raised.value)
    if not env:
        assert str(path) in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml", {})


POSTGRES = '[storage]\nbackend = "postgres"\ntoken_key_file = "/etc/duo-sidecar/token.key"\n'


def test_postgres_needs_a_uri_and_a_shared_token_key_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(POSTGRES + 'dsn = "postgresql://duo:s3cret@db.internal:5432/duo"\n')
    config = load_config(path, {})
    assert (config.storage.backend, config.storage.dsn) == ("postgres", "postgresql://duo:s3cret@db.internal:5432/duo")
    assert config.storage.token_key_path == Path("/etc/duo-sidecar/token.key")
    env = {"DUO_SIDECAR_STORAGE_DSN": "postgres:///duo?host=/run/postgresql"}  # a Unix socket
    assert load_config(path, env).storage.dsn == env["DUO_SIDECAR_STORAGE_DSN"]

    for toml, message in [
        (POSTGRES, "[storage] dsn: the postgres backend needs a DSN, such as postgresql://"),
        (POSTGRES + 'dsn = "host=db user=duo password=s3cret"\n', "[storage] dsn: expected a postgresql:// URI"),
        (POSTGRES + 'dsn = "mysql://duo:s3cret@db/duo"\n', "[storage] dsn: expected a postgresql:// URI"),
        (POSTGRES + 'dsn = "postgresql://duo:s3cret@db:port/duo"\n', "[storage] dsn: not a valid PostgreSQL URI"),
        (
            '[storage]\nbackend = "postgres"\ndsn = "postgresql://db/duo"\n',
            "[storage] token_key_file: the postgres backend needs an explicit token key file",
        ),
    ]:
        path.write_text(toml)
        with pytest.raises(ConfigError) as raised:
            load_config(path, {})
        assert message in str(raised.value)
        assert "s3cret" not in str(raised.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """One ConfigError names every problem, one per line, each with its file (or variable) and key."""
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("not a certificate\n")
    path = tmp_path / "c.toml"
    path.write_text(
        f"""
[server]
listen = "nowhere"
grace_period_seconds = "soon"
tls_cert_file = "{not_pem}"
tls_key_file = "{tmp_path / "absent.key"}"
[instance]
deployment_type = "saas"
[storage]
backend = "mysql"
paht = "x.db"
[log]
level = "loud"
[metricz]
"""
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"DUO_SIDECAR_UPSTREAM_RETRIES": "9", "DUO_SIDECAR_AUTH_REFLECTION": "closed"})
    expected = [
        f"{path}: [server] grace_period_seconds: expected float, got 'soon'",
        f"{path}: [storage] paht: unknown key",
        f"{path}: unknown section [metricz]",
        f"{path}: [server] listen: expected HOST:PORT",
        f"{path}: [instance] deployment_type: must be one of gitlab_com, dedicated, self_managed, got 'saas'",
        "environment DUO_SIDECAR_UPSTREAM_RETRIES: must be between 0 and 5",
        f"{path}: [storage] backend: must be sqlite or postgres, got 'mysql'",
        f"{path}: [log] level: must be one of",
        "environment DUO_SIDECAR_AUTH_REFLECTION: must be admin or open",
        f"{path}: [server] tls_cert_file: {not_pem} is not a PEM file holding a certificate",
        f"{path}: [server] tls_key_file: file {tmp_path / 'absent.key'} does not exist",
    ]
    lines = str(raised.value).splitlines()
    assert list(raised.value.problems) == lines
    assert len(lines) == len(expected), str(raised.value)
    for text in expected:
        assert sum(line.startswith(text) for line in lines) == 1, f"{text!r} not in:\n{raised.value}"


def test_unreadable_files_are_problems_not_crashes(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xff\xfe[server]\n")
    with pytest.raises(ConfigError, match="cannot read: not UTF-8 text"):
        load_config(path, {})
    secret = tmp_path / "admin.secret"
    secret.write_bytes(b"\xff" * 40)
    with pytest.raises(ConfigError) as raised:
        load_config(None, {"DUO_SIDECAR_AUTH_ADMIN_SECRET_FILE": str(secret)})
    assert str(raised.value) == (
        f"environment DUO_SIDECAR_AUTH_ADMIN_SECRET_FILE: cannot read {secret}: not UTF-8 text"
    )


def test_hybrid_offline_and_team_only_keys(tmp_path: Path) -> None:
    config = load_config(None, {})
    assert (config.instance.self_hosted_ai_gateway, config.instance.offline_license) == (False, False)
    assert config.instance.offer_team_only_models is False
    path = tmp_path / "c.toml"
    path.write_text("[instance]\nself_hosted_ai_gateway = true\noffer_team_only_models = true\n")
    config = load_config(path, {"DUO_SIDECAR_INSTANCE_OFFLINE_LICENSE": "true"})
    assert config.instance.self_hosted_ai_gateway and config.instance.offline_license
    assert config.instance.offer_team_only_models
    assert (
        load_config(path, {"DUO_SIDECAR_INSTANCE_SELF_HOSTED_AI_GATEWAY": "false"}).instance.self_hosted_ai_gateway
        is False
    )
    with pytest.raises(ConfigError, match="DUO_SIDECAR_INSTANCE_OFFLINE_LICENSE: expected bool"):
        load_config(None, {"DUO_SIDECAR_INSTANCE_OFFLINE_LICENSE": "offline"})


@pytest.mark.parametrize("deployment", ["gitlab_com", "dedicated"])
def test_hybrid_and_offline_are_self_managed_only(tmp_path: Path, deployment: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[instance]\ndeployment_type = "{deployment}"\nself_hosted_ai_gateway = true\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"DUO_SIDECAR_INSTANCE_OFFLINE_LICENSE": "1"})
    assert list(raised.value.problems) == [
        f"{path}: [instance] self_hosted_ai_gateway: applies only to self_managed; "
        f"{DeploymentType[deployment.upper()].title} always reaches GitLab-managed models through GitLab's AI Gateway "
        "(remove the key or set it to false)",
        "environment DUO_SIDECAR_INSTANCE_OFFLINE_LICENSE: applies only to self_managed; "
        f"{DeploymentType[deployment.upper()].title} always reaches GitLab-managed models through GitLab's AI Gateway "
        "(remove the key or set it to false)",
    ]
    path.write_text(f'[instance]\ndeployment_type = "{deployment}"\nself_hosted_ai_gateway = false\n')
    assert load_config(path, {}).instance.deployment.config_name == deployment  # false is fine anywhere
    path.write_text(f'[instance]\ndeployment_type = "{deployment}"\noffer_team_only_models = true\n')
    assert load_config(path, {}).instance.offer_team_only_models  # not tied to a deployment type
