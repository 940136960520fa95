"""`duo-sidecar backup` and `duo-sidecar restore` for the embedded SQLite database.

backup uses SQLite's online backup API in one step: a consistent snapshot of every transaction committed before
it started, taken while the sidecar keeps serving and writing (WAL readers do not block the writer). The copy is
checked, switched to a self-contained rollback-journal file, then moved into place.

restore takes the database's lock file exclusively (running sidecars hold it shared), so it refuses while a
sidecar uses the database and no sidecar can start halfway through. It validates a private copy of the file,
then renames it over the database and removes the old -wal/-shm files, which must never be replayed onto it.

The token key (storage.token_key_file) is not part of either: it is a secret and belongs with the other secrets.
PostgreSQL databases are backed up with pg_dump and restored with pg_restore.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Config, ConfigError, load_config
from sidecar.store.migrations import LATEST_VERSION, MIGRATIONS
from sidecar.store.sqlite import DatabaseLock, DatabaseLockedError
from sidecar.tokens import key_id, read_keys

POSTGRES_ADVICE = (
    "storage.backend is postgres: back it up with pg_dump (for example pg_dump --format=custom) and restore it "
    "with pg_restore; duo-sidecar backup and restore handle the embedded SQLite database only"
)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MIGRATION_NAMES = {m.version: m.name for m in MIGRATIONS}


class BackupError(Exception):
    """A refused or failed backup or restore; the message says why and what to do."""


@dataclass(frozen=True)
class DatabaseInfo:
    schema_version: int
    config_version: int
    size_bytes: int
    token_key_ids: frozenset[str]


def _sqlite_path(config: Config) -> Path:
    if config.storage.backend != "sqlite":
        raise BackupError(POSTGRES_ADVICE)
    return Path(config.storage.path).absolute()


# Files SQLite keeps beside a database; they belong to that file and must not outlive it.
_JOURNAL_SUFFIXES = ("-wal", "-shm", "-journal")


def _companions(db: Path, *suffixes: str) -> list[Path]:
    return [db.with_name(db.name + suffix) for suffix in suffixes]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def inspect_database(db: sqlite3.Connection, where: str) -> DatabaseInfo:
    """Checks that db is a healthy duo-sidecar database this version can run; BackupError says what is wrong."""
    try:
        tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_migrations" not in tables:
            raise BackupError(f"{where}: not a duo-sidecar database (no schema_migrations table)")
        columns = {str(r[1]) for r in db.execute("PRAGMA table_info(schema_migrations)")}
        if not {"version", "name", "applied_at"} <= columns:
            raise BackupError(f"{where}: not a duo-sidecar database (schema_migrations has other columns)")
        applied = [(int(r[0]), str(r[1])) for r in db.execute("SELECT version, name FROM schema_migrations")]
        if not applied:
            raise BackupError(f"{where}: not a duo-sidecar database (no migration applied)")
        version = max(v for v, _ in applied)
        if version > LATEST_VERSION:
            raise BackupError(
                f"{where}: schema version {version} is newer than this duo-sidecar supports ({LATEST_VERSION}); "
                "use the newer duo-sidecar"
            )
        for applied_version, name in applied:
            if _MIGRATION_NAMES.get(applied_version) != name:
                raise BackupError(
                    f"{where}: not a duo-sidecar database (migration {applied_version} is {name!r}, expected "
                    f"{_MIGRATION_NAMES.get(applied_version)!r})"
                )
        problems = [str(r[0]) for r in db.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"{where}: the database is damaged: {problems[0]}")
        row = db.execute("SELECT version FROM config_version WHERE id = 1").fetchone()
        key_ids = db.execute(
            "SELECT DISTINCT api_token_key_id FROM self_hosted_models WHERE api_token_ciphertext IS NOT NULL"
        )
        token_key_ids = frozenset(str(r[0]) for r in key_ids)
        pages = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{where}: not a usable duo-sidecar database: {exc}") from None
    return DatabaseInfo(version, int(row[0]) if row else 0, int(pages), token_key_ids)


@contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    """A new empty file (mode 0600) in target's directory, so the final rename stays on one file system."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        for leftover in [path, *_companions(path, *_JOURNAL_SUFFIXES)]:
            leftover.unlink(missing_ok=True)


def _make_standalone(db: sqlite3.Connection) -> None:
    # A rollback-journal file is complete on its own; a WAL-mode header would expect a -wal file beside it.
    mode = db.execute("PRAGMA journal_mode = DELETE").fetchone()
    if mode is None or str(mode[0]).lower() != "delete":
        raise BackupError(f"could not switch the copy to a standalone file (journal mode {mode})")


def backup(config: Config, destination: Path, *, force: bool = False) -> tuple[DatabaseInfo, Path]:
    """Copies the live database to destination; returns what was copied and where."""
    source = _sqlite_path(config)
    destination = destination.absolute()
    if not source.is_file():
        raise BackupError(f"no database at {source} (storage.path): nothing to back up")
    if any(
        _same_file(destination, p) for p in (source, *_companions(source, *_JOURNAL_SUFFIXES, ".lock")) if p.exists()
    ):
        raise BackupError(f"{destination} is the live database or one of its files; back up to another path")
    if destination.is_dir():
        raise BackupError(f"{destination} is a directory; give a file name")
    if not destination.parent.is_dir():
        raise BackupError(f"directory {destination.parent} does not exist")
    if destination.exists() and not force:
        raise BackupError(f"{destination} already exists; pass --force to replace it")

    with _temporary_beside(destination) as temporary:
        try:
            # mode=rw: never create an empty database where the real one was expected.
            src = sqlite3.connect(f"{source.as_uri()}?mode=rw", uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise BackupError(f"cannot open {source}: {exc}") from None
        with closing(src), closing(sqlite3.connect(temporary)) as dst:
            try:
                # pages=-1: one step, one read transaction, so the copy is a single consistent snapshot.
                src.backup(dst, pages=-1)
                _make_standalone(dst)
            except sqlite3.Error as exc:
                raise BackupError(f"cannot back up {source}: {exc}") from None
            info = inspect_database(dst, f"backup of {source}")
        _fsync_path(temporary)
        if force:
            os.replace(temporary, destination)
        else:
            try:
                os.link(temporary, destination)  # unlike rename, never replaces a file created meanwhile
            except FileExistsError:
                raise BackupError(f"{destination} already exists; pass --force to replace it") from None
        _fsync_path(destination.parent, directory=True)
    return info, destination


def _configured_key_ids(config: Config) -> frozenset[str]:
    """Every key of the keyring decrypts, not only the first (a rotation may be half done)."""
    try:
        return frozenset(key_id(key) for key in read_keys(config.storage.token_key_path))
    except (OSError, ValueError):
        return frozenset()


def restore(config: Config, source: Path) -> tuple[DatabaseInfo, Path, list[str]]:
    """Replaces the database with source; returns what was restored, where, and warnings for the operator."""
    target = _sqlite_path(config)
    source = source.absolute()
    if not source.is_file():
        raise BackupError(f"{source}: no such file")
    with source.open("rb") as f:
        if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            raise BackupError(f"{source}: not a SQLite database, so not a duo-sidecar backup")
    if target.exists() and _same_file(source, target):
        raise BackupError(f"{source} is the database itself; restore from a backup file")
    target.parent.mkdir(parents=True, exist_ok=True)

    lock = DatabaseLock(target)
    try:
        lock.acquire(exclusive=True)
    except DatabaseLockedError as exc:
        raise BackupError(f"{exc}; stop the sidecar before restoring") from None
    try:
        with _temporary_beside(target) as temporary:
            # Copy the bytes and open only the copy: the backup is never modified, even on read-only media,
            # and a WAL-mode copy of a stopped database brings its -wal file along.
            shutil.copyfile(source, temporary)
            source_wal = source.with_name(source.name + "-wal")
            if source_wal.is_file():
                shutil.copyfile(source_wal, temporary.with_name(temporary.name + "-wal"))
            with closing(sqlite3.connect(temporary)) as db:
                try:
                    _make_standalone(db)
                except sqlite3.DatabaseError as exc:
                    raise BackupError(f"{source}: not a usable duo-sidecar database: {exc}") from None
                info = inspect_database(db, str(source))
            _fsync_path(temporary)
            if os.geteuid() == 0:
                # Run as root (docker exec -u root): hand the file to whoever owns the data directory.
                owner = (target if target.exists() else target.parent).stat()
                os.chown(temporary, owner.st_uid, owner.st_gid)
            # Stale -wal/-shm belong to the old file; SQLite would replay them onto the new one.
            for stale in _companions(target, *_JOURNAL_SUFFIXES):
                stale.unlink(missing_ok=True)
            os.replace(temporary, target)
            _fsync_path(target.parent, directory=True)
    finally:
        lock.release()

    warnings: list[str] = []
    known = _configured_key_ids(config) if info.token_key_ids else frozenset()
    if unreadable := sorted(info.token_key_ids - known):
        have = f"holds key {', '.join(sorted(known))}" if known else "is missing or unreadable"
        warnings.append(
            f"API tokens in the backup are encrypted with key {', '.join(unreadable)} but "
            f"{config.storage.token_key_path} {have}: put the matching token key file there before starting, "
            "or set the tokens again"
        )
    return info, target, warnings


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_text = "copy the SQLite database to a file, safely while the sidecar runs"
    sub = commands.add_parser("backup", help=help_text, description=help_text)
    sub.add_argument("--to", type=Path, required=True, metavar="FILE", help="backup file to write")
    sub.add_argument("--force", action="store_true", help="replace FILE if it exists")
    sub.add_argument("--config", type=Path, help="TOML file (default: built-in defaults)")
    sub.set_defaults(run=_run_backup)

    help_text = "replace the SQLite database with a backup (the sidecar must be stopped)"
    sub = commands.add_parser("restore", help=help_text, description=help_text)
    sub.add_argument("--from", dest="source", type=Path, required=True, metavar="FILE", help="backup file")
    sub.add_argument("--config", type=Path, help="TOML file (default: built-in defaults)")
    sub.set_defaults(run=_run_restore)


def _run_backup(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        info, written = backup(config, args.to, force=args.force)
    except ConfigError as exc:
        print(f"duo-sidecar: {exc}", file=sys.stderr)
        return 2
    except (BackupError, OSError) as exc:
        print(f"duo-sidecar backup: {exc}", file=sys.stderr)
        return 1
    print(
        f"backed up {config.storage.path} to {written}: schema version {info.schema_version}, "
        f"config version {info.config_version}, {info.size_bytes} bytes"
    )
    if info.token_key_ids:
        print(
            f"note: API tokens in it need the token key {config.storage.token_key_path}; keep a copy with your secrets"
        )
    return 0


def _run_restore(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        info, target, warnings = restore(config, args.source)
    except ConfigError as exc:
        print(f"duo-sidecar: {exc}", file=sys.stderr)
        return 2
    except (BackupError, OSError) as exc:
        print(f"duo-sidecar restore: {exc}", file=sys.stderr)
        return 1
    print(
        f"restored {args.source} to {target}: schema version {info.schema_version}, "
        f"config version {info.config_version}; start the sidecar to use it"
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
