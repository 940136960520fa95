"""duo-sidecar: serve, check-config, migrate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from sidecar import __version__
from sidecar.catalog import CatalogError
from sidecar.catalog_refresh import startup_catalog
from sidecar.config import Config, ConfigError, load_config
from sidecar.server import StartupError, open_store, serve
from sidecar.store.sqlite import SchemaTooNewError


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log.level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def _migrate(config: Config) -> int:
    store = open_store(config)
    await store.open()
    try:
        version = await store.schema_version()
    finally:
        await store.close()
    print(f"{store.backend_name} database at {config.storage.path}: schema version {version}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duo-sidecar", description="GitLab Duo routing sidecar")
    parser.add_argument("--version", action="version", version=f"duo-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the gRPC server"),
        ("check-config", "validate the configuration and the model catalog, then exit"),
        ("migrate", "apply pending database migrations, then exit"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", type=Path, help="TOML file (default: built-in defaults)")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
        _setup_logging(config)
        if args.command == "check-config":
            catalog = startup_catalog(config.instance.catalog_path, config.storage.data_dir / "catalog.json")
            print(
                f"configuration OK ({config.source}): {config.instance.deployment.title}, "
                f"{config.storage.backend} storage, catalog {catalog.version} with {len(catalog.features)} features"
            )
            return 0
        if args.command == "migrate":
            return asyncio.run(_migrate(config))
        asyncio.run(serve(config))
        return 0
    except (ConfigError, CatalogError, StartupError, SchemaTooNewError) as exc:
        print(f"duo-sidecar: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
