"""Configuration: a TOML file, then DUO_SIDECAR_<SECTION>_<KEY> environment overrides, validated at start.

Errors name the file (or variable) and the key, so an operator can fix them without reading code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
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
    """Configuration problems, one per line; each names where it is and what to do."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    grace_period_seconds: float = 10.0
    # After SIGTERM: health NOT_SERVING while still serving, so load balancers and kubelets notice first.
    drain_delay_seconds: float = 5.0
    max_receive_message_bytes: int = 4 * 1024 * 1024
    # Calls in flight per service and process; the excess is refused with RESOURCE_EXHAUSTED (OVERLOADED).
    max_concurrent_routing_calls: int = 256  # ResolveModel
    max_concurrent_complete_calls: int = 256  # Complete streams
    max_concurrent_admin_calls: int = 32
    workers: int = 1  # server processes sharing the port (duo-sidecar serve --workers N overrides)
    event_loop: str = "uvloop"  # or "asyncio" (Python's own): measured faster with grpc.aio, see docs/performance.md
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # set: mutual TLS, clients must present a certificate signed by this CA


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9236"


@dataclass(frozen=True)
class InstanceConfig:
    deployment_type: str = "self_managed"
    ai_gateway_url: str = "https://cloud.gitlab.com/ai"
    catalog_path: str = ""
    catalog_refresh_seconds: float = 3600.0
    instance_id: str = ""
    cloud_connector_token_file: str = ""
    # Self-Managed only (check-config refuses them elsewhere): the instance runs its own AI Gateway (hybrid), so no
    # GitLab-managed default; the license is offline, so no GitLab-managed model at all. DESIGN section 3.
    self_hosted_ai_gateway: bool = False
    offline_license: bool = False
    # The catalog's dev.selectable_models (GitLab team members only) become selectable for their features.
    offer_team_only_models: bool = False

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


SELF_MANAGED_ONLY_KEYS = ("self_hosted_ai_gateway", "offline_license")
MAX_STORAGE_TIMEOUT_SECONDS = 3600.0  # PostgreSQL takes its timeouts in int32 milliseconds; longer is a hang anyway
MIN_SECRET_LENGTH = 16
EVENT_LOOPS = ("uvloop", "asyncio")


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
            if not value.isascii():  # int() and float() read the digits of every script (Arabic-Indic "50" too)
                raise ValueError(value)
            if expected is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            converted = expected(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r}") from None
        return _finite(converted, where)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, float):
        return _finite(value, where)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def _finite(value: Any, where: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return value


def _host_port(value: str, where: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
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


def _collect(problems: list[str], check: Callable[[str, str], None], value: str, where: str) -> None:
    """Runs a check that raises ConfigError, recording its problems instead."""
    try:
        check(value, where)
    except ConfigError as exc:
        problems.extend(exc.problems)


def _why(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return exc.strerror or str(exc)


def _readable(path: str, where: str, problems: list[str]) -> bytes | None:
    """The file's contents, or None (with the problem recorded) when it is missing or cannot be read."""
    if not Path(path).is_file():
        problems.append(f"{where}: file {path} does not exist")
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        problems.append(f"{where}: cannot read {path}: {_why(exc)}")
        return None


def _secret(auth: AuthConfig, role: str, where: str, problems: list[str]) -> str | None:
    """The role's secret ("" when not configured), or None when its file cannot be read (recorded already)."""
    path = getattr(auth, f"{role}_secret_file")
    if path and not Path(path).is_file():
        return None  # "does not exist" is recorded with the other file checks
    try:
        return auth.read_secret(role)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{where}: cannot read {path}: {_why(exc)}")
        return None


# What a PEM file for each TLS key must hold; anything else makes gRPC fail later with a misleading message.
_PEM_CONTENTS = {
    "tls_cert_file": (b"-----BEGIN CERTIFICATE-----", "certificate"),
    "tls_key_file": (b"PRIVATE KEY-----", "private key"),
    "tls_client_ca_file": (b"-----BEGIN CERTIFICATE-----", "CA certificate"),
}


def _validate(config: Config, where: Mapping[str, str], problems: list[str]) -> None:
    """Checks every key and appends each problem found to `problems` (new checks: append, do not raise)."""

    def at(section: str, key: str) -> str:
        return where.get(f"{section}.{key}", f"{config.source}: [{section}] {key}")

    _collect(problems, _host_port, config.server.listen, at("server", "listen"))
    _collect(problems, _host_port, config.metrics.listen, at("metrics", "listen"))
    if config.server.grace_period_seconds < 0:
        problems.append(f"{at('server', 'grace_period_seconds')}: must not be negative")
    if not 0 <= config.server.drain_delay_seconds <= 300:
        problems.append(f"{at('server', 'drain_delay_seconds')}: must be between 0 and 300")
    for key in ("max_concurrent_routing_calls", "max_concurrent_complete_calls", "max_concurrent_admin_calls"):
        if not 1 <= getattr(config.server, key) <= 100_000:
            problems.append(f"{at('server', key)}: must be between 1 and 100000")
    if config.server.event_loop not in EVENT_LOOPS:
        problems.append(
            f"{at('server', 'event_loop')}: must be one of {', '.join(EVENT_LOOPS)}, got {config.server.event_loop!r}"
        )
    names = [d.config_name for d in DeploymentType]
    if config.instance.deployment_type not in names:
        problems.append(
            f"{at('instance', 'deployment_type')}: must be one of {', '.join(names)}, "
            f"got {config.instance.deployment_type!r}"
        )
    try:
        url = urlparse(config.instance.ai_gateway_url)
        url.port  # noqa: B018 (parses the port)
        gateway_url_ok = url.scheme in ("http", "https") and bool(url.netloc)
    except ValueError:
        gateway_url_ok = False
    if not gateway_url_ok:
        problems.append(f"{at('instance', 'ai_gateway_url')}: expected an http(s) URL")
    if config.instance.deployment_type in names and config.instance.deployment is not DeploymentType.SELF_MANAGED:
        for key in SELF_MANAGED_ONLY_KEYS:
            if getattr(config.instance, key):
                problems.append(
                    f"{at('instance', key)}: applies only to self_managed; {config.instance.deployment.title} always "
                    "reaches GitLab-managed models through GitLab's AI Gateway (remove the key or set it to false)"
                )
    if config.instance.catalog_refresh_seconds < 0:
        problems.append(f"{at('instance', 'catalog_refresh_seconds')}: must not be negative (0 disables)")
    token_file = config.instance.cloud_connector_token_file
    if token_file:
        _readable(token_file, at("instance", "cloud_connector_token_file"), problems)
    for key in (
        "connect_timeout_seconds",
        "first_token_timeout_seconds",
        "idle_timeout_seconds",
        "circuit_open_seconds",
    ):
        if getattr(config.upstream, key) <= 0:
            problems.append(f"{at('upstream', key)}: must be positive")
    for key in ("max_in_flight_per_endpoint", "circuit_failure_threshold"):
        if getattr(config.upstream, key) < 1:
            problems.append(f"{at('upstream', key)}: must be at least 1")
    try:
        parse_cidrs(config.upstream.allowed_cidrs)
    except ValueError as exc:
        problems.append(f"{at('upstream', 'allowed_cidrs')}: {exc}")
    if not 0 <= config.upstream.retries <= 5:
        problems.append(f"{at('upstream', 'retries')}: must be between 0 and 5")
    if config.storage.backend not in ("sqlite", "postgres"):
        problems.append(f"{at('storage', 'backend')}: must be sqlite or postgres, got {config.storage.backend!r}")
    if config.storage.backend == "sqlite" and not config.storage.path:
        problems.append(f"{at('storage', 'path')}: the sqlite backend needs a database file path")
    elif config.storage.backend == "sqlite":
        database = Path(config.storage.path)
        existing = next(p for p in (database, *database.parents) if p.exists() or p == p.parent)
        if existing == database and database.is_dir():
            problems.append(
                f"{at('storage', 'path')}: {database} is a directory; give the database file's path, such as "
                f"{database / 'sidecar.db'}"
            )
        elif existing != database and not existing.is_dir():
            problems.append(f"{at('storage', 'path')}: {existing} is not a directory")
    if config.storage.backend == "postgres":
        _collect(problems, _postgres_dsn, config.storage.dsn, at("storage", "dsn"))
        if not config.storage.token_key_file:
            problems.append(
                f"{at('storage', 'token_key_file')}: the postgres backend needs an explicit token key file, the same "
                "file on every sidecar sharing the database (the first sidecar creates it; copy it to the others)"
            )
    if config.log.level not in LOG_LEVELS:
        problems.append(f"{at('log', 'level')}: must be one of {', '.join(LOG_LEVELS)}")
    if config.log.format not in LOG_FORMATS:
        problems.append(f"{at('log', 'format')}: must be one of {', '.join(LOG_FORMATS)}")
    if not config.storage.probe_interval_seconds > 0:
        problems.append(f"{at('storage', 'probe_interval_seconds')}: must be positive")
    if not 0 < config.storage.timeout_seconds <= MAX_STORAGE_TIMEOUT_SECONDS:
        problems.append(
            f"{at('storage', 'timeout_seconds')}: must be positive and at most {MAX_STORAGE_TIMEOUT_SECONDS:g}"
        )
    for key in ("client_secret_file", "admin_secret_file"):
        path = getattr(config.auth, key)
        if path and not Path(path).is_file():
            problems.append(f"{at('auth', key)}: file {path} does not exist")
    secrets: dict[str, str | None] = {}
    for role in ("client", "admin"):
        if getattr(config.auth, f"{role}_secret_file") and getattr(config.auth, f"{role}_secret"):
            problems.append(f"{at('auth', role + '_secret')}: set either {role}_secret_file or {role}_secret, not both")
        secret = secrets[role] = _secret(config.auth, role, at("auth", role + "_secret_file"), problems)
        if secret and len(secret) < MIN_SECRET_LENGTH:
            problems.append(
                f"{at('auth', role + '_secret_file')}: the {role} secret is shorter than {MIN_SECRET_LENGTH} "
                "characters (generate one with `openssl rand -hex 32`)"
            )
    if secrets["client"] and secrets["admin"] == "":
        problems.append(
            f"{at('auth', 'admin_secret_file')}: a client secret without an admin secret would lock admins out; "
            "configure both"
        )
    if config.auth.reflection not in ("admin", "open"):
        problems.append(f"{at('auth', 'reflection')}: must be admin or open")
    if bool(config.server.tls_cert_file) != bool(config.server.tls_key_file):
        problems.append(f"{at('server', 'tls_cert_file')}: TLS needs both tls_cert_file and tls_key_file")
    if config.server.tls_client_ca_file and not config.server.tls_cert_file:
        problems.append(f"{at('server', 'tls_client_ca_file')}: mutual TLS needs tls_cert_file and tls_key_file")
    for key, (marker, holding) in _PEM_CONTENTS.items():
        path = getattr(config.server, key)
        contents = _readable(path, at("server", key), problems) if path else None
        if contents is not None and marker not in contents:
            problems.append(f"{at('server', key)}: {path} is not a PEM file holding a {holding}")
    if config.storage.user_cache_size < 1:
        problems.append(f"{at('storage', 'user_cache_size')}: must be at least 1")
    if not 1 <= config.server.workers <= 64:
        problems.append(f"{at('server', 'workers')}: must be between 1 and 64")
    if config.server.max_receive_message_bytes < 64 * 1024:
        problems.append(f"{at('server', 'max_receive_message_bytes')}: must be at least 65536")


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Reads the file (None: built-in defaults), applies environment overrides and validates."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {_why(exc)}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    # Every problem is collected, so that one run of check-config names them all.
    problems: list[str] = []
    where: dict[str, str] = {}
    sections: dict[str, Any] = {}
    for section, section_type in _SECTION_TYPES.items():
        defaults = section_type()
        known = {f.name for f in dataclasses.fields(section_type)}
        table = raw.pop(section, {})
        if not isinstance(table, dict):
            problems.append(f"{source}: [{section}] must be a table")
            table = {}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                problems.append(f"{source}: [{section}] {key}: unknown key; known keys are {', '.join(sorted(known))}")
                continue
            try:
                values[key] = _coerce(value, getattr(defaults, key), f"{source}: [{section}] {key}")
            except ConfigError as exc:
                problems.extend(exc.problems)
        prefix = f"{ENV_PREFIX}{section.upper()}_"
        for name, value in environ.items():
            if not name.startswith(prefix):
                continue
            key = name[len(prefix) :].lower()
            if key not in known:
                problems.append(f"environment {name}: unknown key; known keys are {', '.join(sorted(known))}")
                continue
            try:
                values[key] = _coerce(value, getattr(defaults, key), f"environment {name}")
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            where[f"{section}.{key}"] = f"environment {name}"
        sections[section] = section_type(**values)
    for unknown in raw:
        problems.append(f"{source}: unknown section [{unknown}]; known sections are {', '.join(_SECTION_TYPES)}")
    config = Config(**sections, source=source)
    _validate(config, where, problems)
    if problems:
        raise ConfigError(*problems)
    return config
