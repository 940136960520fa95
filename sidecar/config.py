"""Configuration: a TOML file, then DUO_SIDECAR_<SECTION>_<KEY> environment overrides, validated at start.

Errors name the file (or variable) and the key, so an operator can fix them without reading code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sidecar.domain import DeploymentType
from sidecar.endpoints import parse_cidrs

ENV_PREFIX = "DUO_SIDECAR_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")


class ConfigError(ValueError):
    """A configuration problem; the message names where it is and what to do."""


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    grace_period_seconds: float = 10.0
    max_receive_message_bytes: int = 16 * 1024 * 1024
    workers: int = 1  # server processes sharing the port (duo-sidecar serve --workers N overrides)
    reuse_port: bool = False  # set by the worker supervisor: several processes share the port
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # set: mutual TLS, clients must present a certificate signed by this CA


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9236"
    port_file: str = ""  # set by the worker supervisor: where a worker writes its metrics port


@dataclass(frozen=True)
class InstanceConfig:
    deployment_type: str = "self_managed"
    ai_gateway_url: str = "https://cloud.gitlab.com/ai"
    catalog_path: str = ""
    catalog_refresh_seconds: float = 3600.0
    instance_id: str = ""
    cloud_connector_token_file: str = ""

    @property
    def deployment(self) -> DeploymentType:
        return DeploymentType[self.deployment_type.upper()]


@dataclass(frozen=True)
class UpstreamConfig:
    """How Complete talks to the AI Gateway and self-hosted endpoints."""

    connect_timeout_seconds: float = 5.0
    first_token_timeout_seconds: float = 60.0
    idle_timeout_seconds: float = 30.0
    max_in_flight_per_endpoint: int = 64
    retries: int = 1
    circuit_failure_threshold: int = 5
    circuit_open_seconds: float = 30.0
    azure_api_version: str = "2024-10-21"
    allowed_cidrs: str = ""  # comma-separated; empty: any address but link-local and cloud metadata
    ai_gateway_prompt_version: str = "^1.0.0"


@dataclass(frozen=True)
class StorageConfig:
    backend: str = "sqlite"
    path: str = "var/sidecar.db"
    dsn: str = ""
    token_key_file: str = ""
    user_cache_size: int = 200_000  # users whose seats and default namespace stay in memory (GitLab.com)
    probe_interval_seconds: float = 5.0  # health turns NOT_SERVING when a probe of the store fails
    # The longest any storage wait may take: connecting, a free pooled connection, one statement, a lock. A database
    # that stops answering (a network partition) fails calls with UNAVAILABLE after this, instead of hanging them.
    timeout_seconds: float = 5.0

    @property
    def data_dir(self) -> Path:
        return Path(self.path).parent

    @property
    def token_key_path(self) -> Path:
        return Path(self.token_key_file) if self.token_key_file else self.data_dir / "token.key"


MAX_STORAGE_TIMEOUT_SECONDS = 3600.0  # PostgreSQL takes its timeouts in int32 milliseconds; longer is a hang anyway
MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class AuthConfig:
    client_secret_file: str = ""
    admin_secret_file: str = ""
    # Environment only in practice (DUO_SIDECAR_AUTH_CLIENT_SECRET): never put secrets on a command line.
    client_secret: str = field(default="", repr=False)
    admin_secret: str = field(default="", repr=False)
    transitioning: bool = False
    reflection: str = "admin"  # "admin": reflection needs the admin secret; "open": anyone may list services

    def read_secret(self, role: str) -> str:
        """The secret from its file (preferred) or its environment value; empty when not configured."""
        path = getattr(self, f"{role}_secret_file")
        return Path(path).read_text().strip() if path else getattr(self, f"{role}_secret")


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "json"  # "json": one JSON object per line on stderr; "text": for people
    log_prompts: bool = False  # debugging only: logs prompt and completion text at DEBUG


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    instance: InstanceConfig = field(default_factory=InstanceConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "built-in defaults"


_SECTION_TYPES: dict[str, type[Any]] = {
    "server": ServerConfig,
    "metrics": MetricsConfig,
    "instance": InstanceConfig,
    "upstream": UpstreamConfig,
    "storage": StorageConfig,
    "auth": AuthConfig,
    "log": LogConfig,
}


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Converts a TOML value or environment string to the type of the field's default."""
    expected = type(default)
    if isinstance(value, str) and expected is not str:
        try:
            if expected is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return expected(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r}") from None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def _host_port(value: str, where: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: expected HOST:PORT (such as 127.0.0.1:50051), got {value!r}")
    host = host.strip("[]")
    if host not in ("localhost", "0.0.0.0", "::") and not host.replace(".", "").replace("-", "").isalnum():
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not a host name or IP address") from None


def _postgres_dsn(dsn: str, where: str) -> None:
    """A postgresql:// URI (asyncpg reads no key=value DSNs). Never echoed: it may hold a password."""
    example = "such as postgresql://duo@db.internal:5432/duo_sidecar"
    if not dsn:
        raise ConfigError(f"{where}: the postgres backend needs a DSN, {example}")
    try:
        url = urlparse(dsn)
        url.port  # noqa: B018 (parses the port)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid PostgreSQL URI ({exc}); expected one {example}") from None
    if url.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{where}: expected a postgresql:// URI, {example}")


def _validate(config: Config, where: Mapping[str, str]) -> None:
    def at(section: str, key: str) -> str:
        return where.get(f"{section}.{key}", f"{config.source}: [{section}] {key}")

    _host_port(config.server.listen, at("server", "listen"))
    _host_port(config.metrics.listen, at("metrics", "listen"))
    if config.server.grace_period_seconds < 0:
        raise ConfigError(f"{at('server', 'grace_period_seconds')}: must not be negative")
    names = [d.config_name for d in DeploymentType]
    if config.instance.deployment_type not in names:
        raise ConfigError(
            f"{at('instance', 'deployment_type')}: must be one of {', '.join(names)}, "
            f"got {config.instance.deployment_type!r}"
        )
    url = urlparse(config.instance.ai_gateway_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError(f"{at('instance', 'ai_gateway_url')}: expected an http(s) URL")
    if config.instance.catalog_refresh_seconds < 0:
        raise ConfigError(f"{at('instance', 'catalog_refresh_seconds')}: must not be negative (0 disables)")
    token_file = config.instance.cloud_connector_token_file
    if token_file and not Path(token_file).is_file():
        raise ConfigError(f"{at('instance', 'cloud_connector_token_file')}: file {token_file} does not exist")
    for key in (
        "connect_timeout_seconds",
        "first_token_timeout_seconds",
        "idle_timeout_seconds",
        "circuit_open_seconds",
    ):
        if getattr(config.upstream, key) <= 0:
            raise ConfigError(f"{at('upstream', key)}: must be positive")
    for key in ("max_in_flight_per_endpoint", "circuit_failure_threshold"):
        if getattr(config.upstream, key) < 1:
            raise ConfigError(f"{at('upstream', key)}: must be at least 1")
    try:
        parse_cidrs(config.upstream.allowed_cidrs)
    except ValueError as exc:
        raise ConfigError(f"{at('upstream', 'allowed_cidrs')}: {exc}") from None
    if not 0 <= config.upstream.retries <= 5:
        raise ConfigError(f"{at('upstream', 'retries')}: must be between 0 and 5")
    if config.storage.backend not in ("sqlite", "postgres"):
        raise ConfigError(f"{at('storage', 'backend')}: must be sqlite or postgres, got {config.storage.backend!r}")
    if config.storage.backend == "sqlite" and not config.storage.path:
        raise ConfigError(f"{at('storage', 'path')}: the sqlite backend needs a database file path")
    if config.storage.backend == "postgres":
        _postgres_dsn(config.storage.dsn, at("storage", "dsn"))
        if not config.storage.token_key_file:
            raise ConfigError(
                f"{at('storage', 'token_key_file')}: the postgres backend needs an explicit token key file, the same "
                "file on every sidecar sharing the database (the first sidecar creates it; copy it to the others)"
            )
    if config.log.level not in LOG_LEVELS:
        raise ConfigError(f"{at('log', 'level')}: must be one of {', '.join(LOG_LEVELS)}")
    if config.log.format not in LOG_FORMATS:
        raise ConfigError(f"{at('log', 'format')}: must be one of {', '.join(LOG_FORMATS)}")
    if not config.storage.probe_interval_seconds > 0:
        raise ConfigError(f"{at('storage', 'probe_interval_seconds')}: must be positive")
    if not 0 < config.storage.timeout_seconds <= MAX_STORAGE_TIMEOUT_SECONDS:
        raise ConfigError(
            f"{at('storage', 'timeout_seconds')}: must be positive and at most {MAX_STORAGE_TIMEOUT_SECONDS:g}"
        )
    for key in ("client_secret_file", "admin_secret_file"):
        path = getattr(config.auth, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"{at('auth', key)}: file {path} does not exist")
    for role in ("client", "admin"):
        if getattr(config.auth, f"{role}_secret_file") and getattr(config.auth, f"{role}_secret"):
            raise ConfigError(
                f"{at('auth', role + '_secret')}: set either {role}_secret_file or {role}_secret, not both"
            )
        secret = config.auth.read_secret(role)
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"{at('auth', role + '_secret_file')}: the {role} secret is shorter than {MIN_SECRET_LENGTH} "
                "characters (generate one with `openssl rand -hex 32`)"
            )
    if config.auth.read_secret("client") and not config.auth.read_secret("admin"):
        raise ConfigError(
            f"{at('auth', 'admin_secret_file')}: a client secret without an admin secret would lock admins out; "
            "configure both"
        )
    if config.auth.reflection not in ("admin", "open"):
        raise ConfigError(f"{at('auth', 'reflection')}: must be admin or open")
    if bool(config.server.tls_cert_file) != bool(config.server.tls_key_file):
        raise ConfigError(f"{at('server', 'tls_cert_file')}: TLS needs both tls_cert_file and tls_key_file")
    if config.server.tls_client_ca_file and not config.server.tls_cert_file:
        raise ConfigError(f"{at('server', 'tls_client_ca_file')}: mutual TLS needs tls_cert_file and tls_key_file")
    for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(config.server, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"{at('server', key)}: file {path} does not exist")
    if config.storage.user_cache_size < 1:
        raise ConfigError(f"{at('storage', 'user_cache_size')}: must be at least 1")
    if not 1 <= config.server.workers <= 64:
        raise ConfigError(f"{at('server', 'workers')}: must be between 1 and 64")
    if config.server.max_receive_message_bytes < 64 * 1024:
        raise ConfigError(f"{at('server', 'max_receive_message_bytes')}: must be at least 65536")


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Reads the file (None: built-in defaults), applies environment overrides and validates."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    where: dict[str, str] = {}
    sections: dict[str, Any] = {}
    for section, section_type in _SECTION_TYPES.items():
        defaults = section_type()
        known = {f.name for f in dataclasses.fields(section_type)}
        table = raw.pop(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(
                    f"{source}: [{section}] {key}: unknown key; known keys are {', '.join(sorted(known))}"
                )
            values[key] = _coerce(value, getattr(defaults, key), f"{source}: [{section}] {key}")
        prefix = f"{ENV_PREFIX}{section.upper()}_"
        for name, value in environ.items():
            if not name.startswith(prefix):
                continue
            key = name[len(prefix) :].lower()
            if key not in known:
                raise ConfigError(f"environment {name}: unknown key; known keys are {', '.join(sorted(known))}")
            values[key] = _coerce(value, getattr(defaults, key), f"environment {name}")
            where[f"{section}.{key}"] = f"environment {name}"
        sections[section] = section_type(**values)
    if raw:
        raise ConfigError(
            f"{source}: unknown section [{next(iter(raw))}]; known sections are {', '.join(_SECTION_TYPES)}"
        )
    config = Config(**sections, source=source)
    _validate(config, where)
    return config
