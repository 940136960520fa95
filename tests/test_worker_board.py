"""The worker board: versions published by one worker are seen by the others through the shared file, a
notification wakes a peer's handler, and nothing about a missing or stopped peer raises or is waited for.

Each worker's board is opened from the environment the supervisor gives it, as a real worker does; one test
runs the peer as a real process."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from sidecar.worker_board import WorkerBoard
from tests.helpers import REPO


class Boards:
    """The supervisor's board and the boards of its workers, each as that worker would open it."""

    def __init__(self, directory: Path, workers: int) -> None:
        self.supervisor = WorkerBoard.create(directory, workers)
        self.workers: list[WorkerBoard] = []
        for index in range(workers):
            self.supervisor.mark_starting(index)
            board = WorkerBoard.from_environment(self.supervisor.environment(index))
            assert board is not None
            self.workers.append(board)

    def close(self) -> None:
        for board in (*self.workers, self.supervisor):
            board.close()


@pytest_asyncio.fixture
async def boards(tmp_path: Path) -> AsyncIterator[Boards]:  # async: closes the sockets on the test's loop
    made = Boards(tmp_path, 3)
    yield made
    made.close()


def test_environment_names_the_board_and_the_worker(tmp_path: Path) -> None:
    supervisor = WorkerBoard.create(tmp_path, 2)
    assert supervisor.environment(1) == {
        "DUO_SIDECAR_WORKER_BOARD": str(tmp_path),
        "DUO_SIDECAR_WORKER_INDEX": "1",
        "DUO_SIDECAR_WORKER_COUNT": "2",
    }
    assert WorkerBoard.from_environment({}) is None  # not a worker
    worker = WorkerBoard.from_environment(supervisor.environment(1))
    assert worker is not None and worker.index == 1
    assert [supervisor.version(i) for i in range(2)] == [-1, -1]  # nobody running yet
    with pytest.raises(ValueError):
        WorkerBoard.from_environment({**supervisor.environment(1), "DUO_SIDECAR_WORKER_COUNT": "3"})
    worker.close()
    supervisor.close()


@pytest.mark.asyncio
async def test_wait_returns_once_every_peer_published_the_version(boards: Boards) -> None:
    first, second, third = boards.workers
    second.publish(5)
    third.publish(6)
    assert await first.wait_for_peers(5, timeout=1.0) == []
    assert boards.supervisor.version(2) == 6  # other processes' view of the same slots

    # A peer that catches up while the worker waits ends the wait at once.
    asyncio.get_running_loop().call_later(0.02, second.publish, 7)
    third.publish(7)
    start = time.monotonic()
    assert await first.wait_for_peers(7, timeout=5.0) == []
    assert time.monotonic() - start < 1.0
    assert await second.wait_for_peers(7, timeout=0.0) == [0]  # the waiting worker's own slot is not a peer


@pytest.mark.asyncio
async def test_a_peer_still_behind_at_the_timeout_is_reported(boards: Boards) -> None:
    first, second, third = boards.workers
    second.publish(5)
    third.publish(4)
    start = time.monotonic()
    assert await first.wait_for_peers(5, timeout=0.1) == [2]
    assert 0.1 <= time.monotonic() - start < 1.0
    # A starting worker (slot 0, before it has loaded) is waited for too.
    boards.supervisor.mark_starting(1)
    assert await first.wait_for_peers(1, timeout=0.01) == [1]


@pytest.mark.asyncio
async def test_stopped_workers_are_not_waited_for(boards: Boards) -> None:
    first, second, _ = boards.workers
    second.publish(3)
    boards.supervisor.mark_stopped(2)
    assert await first.wait_for_peers(3, timeout=0.0) == []

    # A peer that stops during a wait ends it too (a crash must not hold an admin call until the timeout).
    boards.supervisor.mark_starting(2)
    asyncio.get_running_loop().call_later(0.02, boards.supervisor.mark_stopped, 2)
    start = time.monotonic()
    assert await first.wait_for_peers(3, timeout=5.0) == []
    assert time.monotonic() - start < 1.0

    # A worker that closes its board (it stopped serving) leaves the board.
    second.close()
    assert boards.supervisor.version(1) == -1
    assert await first.wait_for_peers(100, timeout=0.0) == []
    second.publish(100)  # after close: ignored, not an error


@pytest.mark.asyncio
async def test_notify_wakes_every_other_worker(boards: Boards) -> None:
    first, second, third = boards.workers
    woken = {0: asyncio.Event(), 1: asyncio.Event(), 2: asyncio.Event()}
    counts = {0: 0, 1: 0, 2: 0}

    def handler(index: int) -> None:
        counts[index] += 1
        woken[index].set()

    await first.listen(lambda: handler(0))
    await second.listen(lambda: handler(1))
    await third.listen(lambda: handler(2))
    first.notify_peers()
    await asyncio.wait_for(asyncio.gather(woken[1].wait(), woken[2].wait()), timeout=2.0)
    await asyncio.sleep(0.05)
    assert counts == {0: 0, 1: 1, 2: 1}

    # Many notifications while the peer is busy fill its queue: the sender skips it (it has some pending).
    for _ in range(1000):
        first.notify_peers()
    await asyncio.sleep(0.05)
    assert counts[1] > 1


@pytest.mark.asyncio
async def test_notify_to_missing_or_dead_peers_does_not_raise(boards: Boards) -> None:
    first, second, _ = boards.workers
    first.notify_peers()  # no peer has a socket yet (ENOENT)
    await second.listen(lambda: None)
    socket_file = boards.supervisor.directory / "worker-1.sock"
    assert socket_file.exists()
    # A peer that died without closing leaves its socket file, with nobody reading (ECONNREFUSED).
    transport = second._transport
    assert transport is not None
    transport.close()
    await asyncio.sleep(0)
    assert socket_file.exists()
    first.notify_peers()
    # A restarted worker replaces the stale file and is woken again.
    replacement = WorkerBoard.from_environment(boards.supervisor.environment(1))
    assert replacement is not None
    woken = asyncio.Event()
    await replacement.listen(woken.set)
    first.notify_peers()
    await asyncio.wait_for(woken.wait(), timeout=2.0)
    replacement.close()
    assert not socket_file.exists()
    first.notify_peers()


PEER = """
import asyncio, sys
from sidecar.worker_board import WorkerBoard

async def main() -> None:
    board = WorkerBoard.from_environment()
    assert board is not None
    woken = asyncio.Event()
    await board.listen(woken.set)
    print("listening", flush=True)
    await woken.wait()
    board.publish(int(sys.argv[1]))  # what a worker does once it has applied the changes it was told about
    print("published", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_a_worker_process_publishes_after_being_notified(tmp_path: Path) -> None:
    supervisor = WorkerBoard.create(tmp_path, 2)
    supervisor.mark_starting(0)
    supervisor.mark_starting(1)
    peer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PEER,
        "7",
        env={**os.environ, **supervisor.environment(1)},
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    this = WorkerBoard.from_environment(supervisor.environment(0))
    assert this is not None and peer.stdin is not None and peer.stdout is not None
    try:
        assert await asyncio.wait_for(peer.stdout.readline(), timeout=20) == b"listening\n"
        this.publish(7)
        assert await this.wait_for_peers(7, timeout=0.05) == [1]  # still starting (0): waited for
        this.notify_peers()
        start = time.monotonic()
        assert await this.wait_for_peers(7, timeout=5.0) == []
        assert time.monotonic() - start < 1.0
        assert await peer.stdout.readline() == b"published\n"
        assert supervisor.version(1) == 7
    finally:
        peer.stdin.close()
        assert await asyncio.wait_for(peer.wait(), timeout=10) == 0
    # It exited without closing its board: until the supervisor notices, its slot keeps its last version.
    this.notify_peers()  # its socket file is still there, nobody reads it: ignored
    assert await this.wait_for_peers(8, timeout=0.0) == [1]
    supervisor.mark_stopped(1)
    assert await this.wait_for_peers(8, timeout=0.0) == []
    this.close()
    supervisor.close()
