"""`duo-sidecar serve --workers N`, as real processes: a worker that refuses to start stops the whole sidecar with
status 2 (as single-process serve does), while a worker that crashes is restarted, with a growing delay."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.config import load_config
from sidecar.store.migrations import LATEST_VERSION
from tests.fleet import workers_up
from tests.helpers import BIN, SidecarProcess, free_port, run_sidecar, wait_serving, write_config


def wait_for(condition: Callable[[], Any], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


def _run(arguments: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Runs duo-sidecar; on a timeout kills its whole process group (workers included), not just the parent."""
    process = subprocess.Popen(
        [str(BIN / "duo-sidecar"), *arguments],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"still running after {timeout} s:\n{output.decode(errors='replace')}") from None
    return process.returncode, output.decode(errors="replace")


def test_a_worker_refusing_to_start_stops_the_sidecar_with_status_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, "self_managed", free_port())
    code, output = _run(["migrate", "--config", str(config)], tmp_path, 60)
    assert code == 0, output
    # What a newer sidecar leaves behind: a schema this version does not know.
    database = sqlite3.connect(tmp_path / "data" / "sidecar.db")
    with database:
        database.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from a newer sidecar', '')",
            (LATEST_VERSION + 1,),
        )
    database.close()
    too_new = f"database schema version {LATEST_VERSION + 1} is newer than this sidecar supports"

    code, output = _run(["serve", "--config", str(config)], tmp_path, 20)
    assert (code, too_new in output) == (2, True), output  # one process: the behaviour to match

    start = time.monotonic()
    code, output = _run(["serve", "--workers", "2", "--config", str(config)], tmp_path, 20)
    assert code == 2, output
    assert too_new in output  # the worker's own reason, on the shared stderr
    refusals = [line for line in _log_records(output) if "refused to start" in line.get("msg", "")]
    assert refusals and refusals[0]["level"] == "error", output
    assert "restarting" not in output
    assert time.monotonic() - start < 20


def _log_records(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _worker_pids(sidecar: SidecarProcess, index: int) -> list[int]:
    """The pids worker `index` was started with, in order, from the supervisor's log."""
    return [
        int(record["pid"])
        for record in _log_records(sidecar.logs())
        if record.get("logger") == "sidecar.workers" and record.get("msg", "").startswith(f"worker {index} started")
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited too (the supervisor has not reaped it yet).
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_a_crashed_worker_is_restarted_with_a_growing_delay(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, "self_managed", port)
    config.write_text(config.read_text().replace("[server]\n", "[server]\nworkers = 2\n"))
    metrics = load_config(config, environ={}).metrics.listen
    with run_sidecar(config, port) as sidecar:
        wait_for(lambda: workers_up(metrics) == {"0", "1"}, 20)  # both workers up
        [first] = _worker_pids(sidecar, 0)
        environment = dict(
            entry.split("=", 1) for entry in Path(f"/proc/{first}/environ").read_text().split("\0") if "=" in entry
        )
        assert environment["DUO_SIDECAR_WORKER_INDEX"] == "0"
        assert environment["DUO_SIDECAR_WORKER_COUNT"] == "2"
        runtime = Path(environment["DUO_SIDECAR_WORKER_BOARD"])
        assert (runtime / "board").stat().st_size == 2 * 8

        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: _worker_pids(sidecar, 0)[1:2], 15)[0]
        assert second != first and _alive(second)
        assert f"worker 0 (pid {first}) exited with status -9; restarting in 1 s" in sidecar.logs()
        wait_for(lambda: workers_up(metrics) == {"0", "1"}, 20)  # the new worker serves
        wait_serving(sidecar.address, timeout=5)

        # It crashes again at once: the next restart waits longer.
        os.kill(second, signal.SIGKILL)
        third = wait_for(lambda: _worker_pids(sidecar, 0)[2:3], 15)[0]
        assert f"worker 0 (pid {second}) exited with status -9; restarting in 2 s" in sidecar.logs()
        wait_for(lambda: workers_up(metrics) == {"0", "1"}, 20)
        wait_serving(sidecar.address, timeout=5)
        assert sidecar.process.poll() is None
        assert _worker_pids(sidecar, 1)[1:] == []  # the other worker kept running throughout

        sidecar.process.send_signal(signal.SIGTERM)
        assert sidecar.process.wait(timeout=20) == 0
        assert not _alive(third)
        assert not runtime.exists()  # board, sockets and port files removed


def test_only_workers_share_a_port(tmp_path: Path) -> None:
    """SO_REUSEPORT is the supervisor's plumbing, not configuration: a second sidecar on a busy port refuses to start
    instead of silently sharing it with the first."""
    port = free_port()
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with run_sidecar(write_config(tmp_path / "first", "self_managed", port), port):
        second = write_config(tmp_path / "second", "self_managed", port)
        code, output = _run(["serve", "--config", str(second)], tmp_path / "second", 30)
    assert (code, f"cannot listen on 127.0.0.1:{port}" in output) == (2, True), output
