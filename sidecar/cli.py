"""duo-sidecar: serve, check-config, migrate, healthcheck, backup, restore."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sqlite3
import sys
from pathlib import Path

from sidecar import __version__, backup, healthcheck
from sidecar.catalog import CatalogError
from sidecar.catalog_refresh import startup_catalog
from sidecar.config import Config, ConfigError, load_config
from sidecar.key_rotation import rotate_key
from sidecar.logs import setup_logging
from sidecar.server import StartupError, open_store, run_server
from sidecar.store.base import StoreUnavailableError
from sidecar.store.postgres import POSTGRES_ERRORS, redact_dsn
from sidecar.store.sqlite import DatabaseLockedError, SchemaTooNewError
from sidecar.tokens import TokenKeyError
from sidecar.worker_board import runs_as_worker
from sidecar.workers import Supervisor

MAX_WORKERS = 64  # as server.workers
# The database refused or failed, such as a file that cannot be opened or a role without the rights to migrate.
STORAGE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, *POSTGRES_ERRORS)


def _setup_logging(config: Config) -> None:
    setup_logging(config.log)  # JSON lines on stderr by default (log.format), see sidecar/logs.py


def _storage_location(config: Config) -> str:
    return redact_dsn(config.storage.dsn) if config.storage.backend == "postgres" else config.storage.path


async def _migrate(config: Config) -> int:
    store = open_store(config)
    await store.open()
    try:
        version = await store.schema_version()
        deployment_type = await store.deployment_type()
    finally:
        await store.close()
    # migrate records no deployment type: the first `serve` records its instance.deployment_type.
    serves = deployment_type or "not recorded yet (the next serve records instance.deployment_type)"
    where = _storage_location(config)
    print(f"{store.backend_name} database at {where}: schema version {version}, deployment type {serves}")
    return 0


async def _rotate_key(config: Config) -> int:
    store = open_store(config)
    await store.open()
    try:
        result = await rotate_key(
            store, config.storage.token_key_path, actor=f"duo-sidecar rotate-key ({getpass.getuser()})"
        )
    finally:
        await store.close()
    print(
        f"re-encrypted {result.tokens} API tokens under key {result.new_key_id} (config version "
        f"{result.config_version}); key {', '.join(result.old_key_ids)} is no longer needed and was removed from "
        f"{config.storage.token_key_path}"
    )
    return 0


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_WORKERS}, got {text!r}")
    return value


def _error(message: str) -> int:
    """Prints a refusal to start, one line per problem, and returns exit status 2."""
    for line in message.splitlines() or [""]:
        print(f"duo-sidecar: {line}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duo-sidecar", description="GitLab Duo routing sidecar")
    parser.add_argument("--version", action="version", version=f"duo-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the gRPC server"),
        ("check-config", "validate the configuration and the model catalog, then exit"),
        ("migrate", "apply pending database migrations, then exit"),
        ("rotate-key", "re-encrypt every stored API token under a new key and drop the old key (safe while serving)"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", type=Path, help="TOML file (default: built-in defaults)")
        if name == "serve":
            sub.add_argument(
                "--workers", type=_workers, help="server processes sharing the port (default: server.workers, 1)"
            )
    # Operations commands handle their own configuration errors and exit codes.
    healthcheck.add_command(commands)
    backup.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command in ("healthcheck", "backup", "restore"):
        return int(args.run(args))

    config: Config | None = None
    try:
        config = load_config(args.config)
        _setup_logging(config)
        if args.command == "check-config":
            catalog = startup_catalog(config.instance.catalog_path, config.storage.data_dir / "catalog.json")
            print(
                f"configuration OK ({config.source}): {config.instance.deployment.title}{_instance_kind(config)}, "
                f"{config.storage.backend} storage, catalog {catalog.version} with {len(catalog.features)} features"
            )
            return 0
        if args.command == "migrate":
            return asyncio.run(_migrate(config))
        if args.command == "rotate-key":
            return asyncio.run(_rotate_key(config))
        workers = args.workers or config.server.workers
        if workers > 1 and not runs_as_worker():  # a worker of a supervisor reads the same server.workers
            return asyncio.run(Supervisor(config, args.config, workers).run())
        run_server(config)
        return 0
    except (
        ConfigError,
        CatalogError,
        StartupError,
        SchemaTooNewError,
        DatabaseLockedError,
        StoreUnavailableError,
        TokenKeyError,
    ) as exc:
        return _error(str(exc))
    except STORAGE_ERRORS as exc:
        where = _storage_location(config) if config is not None else "storage"
        return _error(f"{where}: {type(exc).__name__}: {exc}")
    except OSError as exc:
        # A file or directory that cannot be created or read, such as storage.path in a missing directory.
        return _error(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
    except KeyboardInterrupt:
        return 130


def _instance_kind(config: Config) -> str:
    """How the instance reaches GitLab-managed models, when not the usual way (DESIGN section 3, rule 3)."""
    kinds = []
    if config.instance.self_hosted_ai_gateway:
        kinds.append("own AI Gateway (no GitLab-managed default)")
    if config.instance.offline_license:
        kinds.append("offline license (no GitLab-managed models)")
    return f" with {' and '.join(kinds)}" if kinds else ""


if __name__ == "__main__":
    sys.exit(main())
