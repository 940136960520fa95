"""`duo-sidecar backup` and `restore`: consistent copies of a live database, and refusals that protect the data."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from pathlib import Path

import grpc
import pytest

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc, types_pb2
from sidecar.backup import BackupError, backup
from sidecar.config import Config, StorageConfig
from sidecar.store.migrations import LATEST_VERSION
from sidecar.store.sqlite import DatabaseLock, DatabaseLockedError, SQLiteStore
from tests.conftest import StartSidecar
from tests.helpers import BIN, SidecarProcess, free_port, write_config

PIN_EVERY = 4  # every 4th write pins a model for a namespace; the others assign a seat


def duo_sidecar(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "duo-sidecar"), *args], capture_output=True, text=True, timeout=60)


def database(sidecar: SidecarProcess) -> Path:
    return sidecar.config.parent / "data" / "sidecar.db"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Writer(threading.Thread):
    """Admin writes, one transaction each, in a known order: write i sets config version i."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.acknowledged = 0  # writes whose RPC has returned, so committed
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with grpc.insecure_channel(self.address) as channel:
                admin = admin_pb2_grpc.AdminServiceStub(channel)
                while not self.stopping.is_set():
                    i = self.acknowledged + 1
                    if i % PIN_EVERY == 0:
                        admin.UpdateNamespaceModelSelection(
                            admin_pb2.UpdateNamespaceModelSelectionRequest(
                                namespace_id=i, feature="duo_chat", offered_model_ref="claude_sonnet_4_6"
                            ),
                            timeout=10,
                        )
                    else:
                        seat = admin_pb2.SeatAssignment(user_id=i, namespace_id=10, assigned=True)
                        admin.SyncSeatAssignments(
                            iter([admin_pb2.SyncSeatAssignmentsRequest(assignments=[seat])]), timeout=10
                        )
                    self.acknowledged = i
        except BaseException as exc:
            self.error = exc


def assert_consistent_prefix(path: Path) -> int:
    """The database holds exactly writes 1..k for some k (a snapshot between two commits); returns k."""
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        k = int(db.execute("SELECT version FROM config_version").fetchone()[0])
        seats = set(db.execute("SELECT user_id, namespace_id FROM seat_assignments").fetchall())
        pins = set(db.execute("SELECT namespace_id, feature, offered_model_ref FROM namespace_model_selections"))
        audit = [int(r[0]) for r in db.execute("SELECT config_version FROM audit_events ORDER BY id")]
        journal_mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert seats == {(i, 10) for i in range(1, k + 1) if i % PIN_EVERY}
    assert pins == {(i, "duo_chat", "claude_sonnet_4_6") for i in range(1, k + 1) if i % PIN_EVERY == 0}
    assert audit == list(range(1, k + 1))
    assert journal_mode == "delete"  # a standalone file: nothing lives in a -wal beside it
    assert not path.with_name(path.name + "-wal").exists()
    return k


def test_backups_under_write_load_restore_every_change_committed_before_them(
    start_sidecar: StartSidecar, tmp_path: Path
) -> None:
    live = start_sidecar("gitlab_com")
    writer = Writer(live.address)
    writer.start()
    backups: list[tuple[Path, int, int]] = []
    try:
        while writer.acknowledged < 20 and writer.error is None:
            time.sleep(0.01)
        for n in range(4):
            target = tmp_path / f"backup-{n}.db"
            committed_before = writer.acknowledged
            result = duo_sidecar("backup", "--to", str(target), "--config", str(live.config))
            started_after = writer.acknowledged
            assert result.returncode == 0, result.stderr
            assert f"to {target}" in result.stdout
            backups.append((target, committed_before, started_after))
    finally:
        writer.stopping.set()
        writer.join(timeout=30)
    assert writer.error is None, writer.error
    assert backups[-1][1] > backups[0][2], "the writer made no progress between backups"

    for path, committed_before, acknowledged_after in backups:
        k = assert_consistent_prefix(path)
        assert committed_before <= k <= acknowledged_after + 1
        assert path.stat().st_mode & 0o777 == 0o600  # seats and encrypted tokens are nobody else's business

    last, committed_before, _ = backups[-1]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    config = write_config(fresh, "gitlab_com", free_port())
    result = duo_sidecar("restore", "--from", str(last), "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "restored" in result.stdout
    k = assert_consistent_prefix(fresh / "data" / "sidecar.db")

    restored = start_sidecar("gitlab_com", directory=fresh)
    with grpc.insecure_channel(restored.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        routing = routing_pb2_grpc.RoutingServiceStub(channel)
        info = admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
        seat_users: set[int] = set()
        token = ""
        while True:
            page = admin.ListSeatAssignments(
                admin_pb2.ListSeatAssignmentsRequest(namespace_id=10, page_size=1000, page_token=token)
            )
            seat_users |= {s.user_id for s in page.seat_assignments}
            if not (token := page.next_page_token):
                break
        last_pin = committed_before - committed_before % PIN_EVERY
        pinned = routing.ResolveModel(
            routing_pb2.ResolveModelRequest(user_id=1, feature="duo_chat", root_namespace_id=last_pin)
        )
    assert int(info.config_version) == k >= committed_before
    assert seat_users == {i for i in range(1, k + 1) if i % PIN_EVERY}
    assert (pinned.model_identifier, pinned.source) == (
        "claude_sonnet_4_6",
        types_pb2.SELECTION_SOURCE_CONTEXT_NAMESPACE,
    )


def test_restore_refuses_while_a_sidecar_holds_the_database(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    live = start_sidecar("gitlab_com")
    with grpc.insecure_channel(live.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        seat = admin_pb2.SeatAssignment(user_id=1, namespace_id=10, assigned=True)
        admin.SyncSeatAssignments(iter([admin_pb2.SyncSeatAssignmentsRequest(assignments=[seat])]))
    saved = tmp_path / "saved.db"
    assert duo_sidecar("backup", "--to", str(saved), "--config", str(live.config)).returncode == 0
    inode = database(live).stat().st_ino

    refused = duo_sidecar("restore", "--from", str(saved), "--config", str(live.config))
    assert refused.returncode == 1
    assert "in use by a running duo-sidecar" in refused.stderr and "stop the sidecar" in refused.stderr
    assert database(live).stat().st_ino == inode
    assert duo_sidecar("healthcheck", "--address", live.address).returncode == 0

    live.process.send_signal(signal.SIGTERM)
    assert live.process.wait(timeout=15) == 0
    restored = duo_sidecar("restore", "--from", str(saved), "--config", str(live.config))
    assert restored.returncode == 0, restored.stderr
    assert database(live).stat().st_ino != inode
    assert not database(live).with_name("sidecar.db-wal").exists()
    assert not database(live).with_name("sidecar.db-shm").exists()


@pytest.mark.asyncio
async def test_a_sidecar_does_not_start_while_a_restore_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.db"
    restore_lock = DatabaseLock(path)
    restore_lock.acquire(exclusive=True)
    try:
        with pytest.raises(DatabaseLockedError, match="in use by duo-sidecar restore"):
            await SQLiteStore(path).open()
    finally:
        restore_lock.release()
    # Sidecars share the lock, so a restore waits for all of them.
    first, second = SQLiteStore(path), SQLiteStore(path)
    await first.open()
    await second.open()
    with pytest.raises(DatabaseLockedError, match="in use by a running duo-sidecar"):
        DatabaseLock(path).acquire(exclusive=True)
    await first.close()
    await second.close()
    restore_lock.acquire(exclusive=True)
    restore_lock.release()


def test_restore_refuses_files_that_are_not_sidecar_databases(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    live = start_sidecar("gitlab_com")
    good = tmp_path / "good.db"
    assert duo_sidecar("backup", "--to", str(good), "--config", str(live.config)).returncode == 0
    live.process.send_signal(signal.SIGTERM)
    assert live.process.wait(timeout=15) == 0
    before = digest(database(live))

    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE projects (id INTEGER PRIMARY KEY)")
        db.commit()
    rails = tmp_path / "rails.db"
    with closing(sqlite3.connect(rails)) as db:
        db.execute("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY)")
        db.execute("INSERT INTO schema_migrations VALUES ('20250101000000')")
        db.commit()
    newer = tmp_path / "newer.db"
    newer.write_bytes(good.read_bytes())
    with closing(sqlite3.connect(newer)) as db:
        db.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from the future', '2030-01-01')",
            (LATEST_VERSION + 1,),
        )
        db.commit()

    for source, reason in (
        (text, "not a SQLite database"),
        (other, "not a duo-sidecar database (no schema_migrations table)"),
        (rails, "not a duo-sidecar database"),
        (newer, f"schema version {LATEST_VERSION + 1} is newer than this duo-sidecar supports"),
        (tmp_path / "missing.db", "no such file"),
    ):
        result = duo_sidecar("restore", "--from", str(source), "--config", str(live.config))
        assert result.returncode == 1, source
        assert reason in result.stderr, result.stderr
        assert digest(database(live)) == before
    leftovers = [p.name for p in database(live).parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_backup_refuses_to_overwrite_without_force(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    live = start_sidecar("gitlab_com")
    target = tmp_path / "backup.db"
    target.write_text("precious")
    refused = duo_sidecar("backup", "--to", str(target), "--config", str(live.config))
    assert refused.returncode == 1
    assert "already exists; pass --force" in refused.stderr
    assert target.read_text() == "precious"

    forced = duo_sidecar("backup", "--to", str(target), "--force", "--config", str(live.config))
    assert forced.returncode == 0, forced.stderr
    assert_consistent_prefix(target)

    onto_itself = duo_sidecar("backup", "--to", str(database(live)), "--force", "--config", str(live.config))
    assert onto_itself.returncode == 1
    assert "is the live database" in onto_itself.stderr


def test_restore_warns_when_the_token_key_does_not_match(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    live = start_sidecar("self_managed")
    with grpc.insecure_channel(live.address) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).CreateSelfHostedModel(
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
        )
    saved = tmp_path / "saved.db"
    result = duo_sidecar("backup", "--to", str(saved), "--config", str(live.config))
    assert result.returncode == 0, result.stderr
    assert "token key" in result.stdout

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    config = write_config(fresh, "self_managed", free_port())
    restored = duo_sidecar("restore", "--from", str(saved), "--config", str(config))
    assert restored.returncode == 0, restored.stderr
    assert "warning: API tokens in the backup are encrypted with key" in restored.stderr
    assert str(fresh / "data" / "token.key") in restored.stderr

    # Every key of the keyring decrypts: the matching one need not be first (a rotation half done).
    live_key = (live.config.parent / "data" / "token.key").read_text()
    (fresh / "data" / "token.key").write_text(os.urandom(32).hex() + "\n" + live_key)
    (fresh / "data" / "sidecar.db").unlink()
    quiet = duo_sidecar("restore", "--from", str(saved), "--config", str(config))
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_postgres_is_backed_up_with_pg_dump(tmp_path: Path) -> None:
    config = Config(storage=StorageConfig(backend="postgres", dsn="postgresql://db/duo"))
    with pytest.raises(BackupError, match="pg_dump"):
        backup(config, tmp_path / "backup.db")
