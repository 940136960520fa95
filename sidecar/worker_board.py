"""The board the workers of one `duo-sidecar serve --workers N` share: which config version each one serves, and
a doorbell to wake the others.

An admin write commits to the store, then the worker that took it rings the other workers (`notify_peers`)
and waits (`wait_for_peers`) until each one has published (`publish`) that version or a later one, so the
write returns once every worker answers with it (read-your-writes for the whole sidecar). Versions live in a
small memory-mapped file, one signed 64-bit slot per worker, so publishing and reading are memory accesses:
`ResolveModel` never pays for any of this. Slot -1 means "not running" (never waited for); the supervisor
sets 0 before it spawns a worker, so a worker that is still starting is waited for until it has loaded.

Files in the supervisor's runtime directory: `board` (the slots), `worker-<i>.sock` (each worker's AF_UNIX
datagram socket; a datagram carries nothing, it only says "the store changed, look") and `worker-<i>.metrics-port`
(the port of the worker's own metrics endpoint, written once it has started).

These variables and files are the supervisor's plumbing, not configuration: a process is a worker (shares the gRPC
port through SO_REUSEPORT, writes its metrics port) exactly when its supervisor named the board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import socket
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

BOARD_VARIABLE = "DUO_SIDECAR_WORKER_BOARD"
INDEX_VARIABLE = "DUO_SIDECAR_WORKER_INDEX"
COUNT_VARIABLE = "DUO_SIDECAR_WORKER_COUNT"

NOT_RUNNING = -1
STARTING = 0
SUPERVISOR = -1  # the index of the supervisor's own board: it is none of the workers

_SLOT = struct.Struct("=q")  # native order: only processes of this machine read it; 8-aligned in the page
_FIRST_POLL_SECONDS = 0.0005
_MAX_POLL_SECONDS = 0.005


def runs_as_worker(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a worker of `duo-sidecar serve --workers N` (its supervisor named the board)."""
    return bool(environ.get(BOARD_VARIABLE))


class _Doorbell(asyncio.DatagramProtocol):
    def __init__(self, on_notify: Callable[[], None]) -> None:
        self.on_notify = on_notify

    def datagram_received(self, data: bytes, addr: object) -> None:
        try:
            self.on_notify()
        except Exception:  # a failing callback must not stop the doorbell
            log.exception("worker board: notification handler failed")

    def error_received(self, exc: Exception) -> None:
        log.warning("worker board: notification socket error: %s", exc)


class WorkerBoard:
    """One process's view of the board: the supervisor's (index -1) or a worker's (index 0..count-1)."""

    def __init__(self, directory: Path, index: int, count: int, slots: mmap.mmap) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self._slots = slots
        self._peers = [str(self._socket_path(i)) for i in range(count) if i != index]
        self._sender: socket.socket | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._closed = False

    @classmethod
    def create(cls, runtime_dir: Path, workers: int) -> WorkerBoard:
        """The supervisor's board: a new `board` file with every slot "not running"."""
        if workers < 1:
            raise ValueError(f"a worker board needs at least one worker, not {workers}")
        path = runtime_dir / "board"
        initial = _SLOT.pack(NOT_RUNNING) * workers
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, initial)
            slots = mmap.mmap(fd, len(initial))
        finally:
            os.close(fd)  # the mapping keeps the file
        return cls(runtime_dir, SUPERVISOR, workers, slots)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> WorkerBoard | None:
        """The board of this worker, from the variables its supervisor set; None when not a worker."""
        directory = environ.get(BOARD_VARIABLE, "")
        if not directory:
            return None
        try:
            index, count = int(environ[INDEX_VARIABLE]), int(environ[COUNT_VARIABLE])
        except (KeyError, ValueError):
            raise ValueError(
                f"{BOARD_VARIABLE} is set but {INDEX_VARIABLE} or {COUNT_VARIABLE} is not a number"
            ) from None
        if not 0 <= index < count:
            raise ValueError(f"{INDEX_VARIABLE}={index} is not a worker of {COUNT_VARIABLE}={count}")
        path = Path(directory) / "board"
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size != count * _SLOT.size:
                raise ValueError(f"{path}: {size} bytes, not the {count * _SLOT.size} of {count} workers")
            slots = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(Path(directory), index, count, slots)

    def environment(self, index: int) -> dict[str, str]:
        """What the supervisor adds to worker `index`'s environment."""
        return {BOARD_VARIABLE: str(self.directory), INDEX_VARIABLE: str(index), COUNT_VARIABLE: str(self.count)}

    def metrics_port_file(self, index: int) -> Path:
        """Where worker `index` writes the port of its metrics endpoint once it has started."""
        return self.directory / f"worker-{index}.metrics-port"

    def _socket_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"

    def _read(self, index: int) -> int:
        value: int = _SLOT.unpack_from(self._slots, index * _SLOT.size)[0]
        return value

    def _write(self, index: int, value: int) -> None:
        _SLOT.pack_into(self._slots, index * _SLOT.size, value)

    def version(self, index: int) -> int:
        """What worker `index` last published (-1: not running, 0 also: starting)."""
        return self._read(index)

    # Supervisor side.

    def mark_starting(self, index: int) -> None:
        """Before spawning worker `index`: its peers wait for it from now on, until it has loaded."""
        self._write(index, STARTING)

    def mark_stopped(self, index: int) -> None:
        """After worker `index` exited: nobody waits for it."""
        self._write(index, NOT_RUNNING)

    # Worker side.

    def publish(self, version: int) -> None:
        """This worker now serves `version` (one 8-byte store into shared memory)."""
        if not self._closed:
            _SLOT.pack_into(self._slots, self.index * _SLOT.size, version)

    async def listen(self, on_notify: Callable[[], None]) -> None:
        """Binds this worker's socket and calls on_notify() for each notification, in the background until
        close(). Call it before loading state: a notification sent once this returns is never missed."""
        path = self._socket_path(self.index)
        path.unlink(missing_ok=True)  # left by this worker's previous process
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(str(path))
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Doorbell(on_notify), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        self._transport = transport

    def notify_peers(self) -> None:
        """Wakes every other worker; never blocks, and a peer that is not there (not started, restarting,
        stopped) or whose queue is full (it has a notification pending already) is skipped."""
        if self._closed:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        for peer in self._peers:
            with contextlib.suppress(OSError):  # ENOENT, ECONNREFUSED, EAGAIN...: see above
                self._sender.sendto(b"!", peer)

    def lagging(self, version: int) -> list[int]:
        """The other running workers that do not serve `version` yet."""
        behind = []
        for i in range(self.count):
            if i != self.index:
                served = self._read(i)
                if served != NOT_RUNNING and served < version:
                    behind.append(i)
        return behind

    async def wait_for_peers(self, version: int, timeout: float) -> list[int]:  # noqa: ASYNC109 (returns who lags)
        """Waits until every other running worker serves `version` or later: [] once they do, else the indexes
        still behind when `timeout` seconds have passed. A worker that stops meanwhile is no longer waited for.
        After close(), returns [] at once (this worker is shutting down)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = _FIRST_POLL_SECONDS
        while True:
            if self._closed:
                return []
            behind = self.lagging(version)
            if not behind:
                return []
            remaining = deadline - loop.time()
            if remaining <= 0:
                return behind
            await asyncio.sleep(min(pause, remaining))  # peers apply a change in a few ms: poll, briefly
            pause = min(pause * 2, _MAX_POLL_SECONDS)

    def close(self) -> None:
        """Stops receiving notifications and takes this worker off the board (slot -1), so peers stop waiting
        for it: call it once this worker no longer answers new calls. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            with contextlib.suppress(OSError):
                self._socket_path(self.index).unlink()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self.index != SUPERVISOR:
            self._write(self.index, NOT_RUNNING)
        self._slots.close()
