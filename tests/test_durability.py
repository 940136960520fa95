"""DESIGN section 8, first promise, from outside: an admin call that returned OK survives `kill -9` of the sidecar
at any moment, on both backends; a call that was in flight is applied whole or not at all; the next write works.

Four writer threads keep admin writes in flight; the sidecar is killed with SIGKILL after a different number of
acknowledged writes each round (so the kill lands at a different point of some write's commit), restarted on the
same storage, and every acknowledged write is checked before the next round writes again.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from gitlab.duo.routing.v1 import admin_pb2
from tests.fleet import Client, config_for, fresh_postgres
from tests.helpers import run_sidecar

ROUNDS = int(os.environ.get("DUO_SIDECAR_DURABILITY_ROUNDS", "4"))
WRITERS = 4
MODELS = ("claude_sonnet_4_6", "claude_sonnet_4_5_20250929", "claude_sonnet_4_5_20250929_vertex")


@contextmanager
def storage(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f'[storage]\npath = "{tmp_path / "data" / "sidecar.db"}"'
    else:
        with fresh_postgres() as dsn:
            yield f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"'


class Writers:
    """Threads that pin models on their own namespaces until told to stop, recording what was acknowledged."""

    def __init__(self, client: Client, round_number: int) -> None:
        self.client = client
        self.round = round_number
        self.acknowledged: dict[int, str] = {}  # namespace -> model, for calls that returned OK
        self.in_flight: dict[int, str] = {}  # namespace -> model, for calls without an answer at the kill
        self.count = 0
        self.lock = threading.Lock()
        self.enough = threading.Event()
        self.target = 0
        self.stop = threading.Event()

    def write(self, writer: int) -> None:
        for i in range(10_000):
            if self.stop.is_set():
                return
            namespace = 1_000_000 * (self.round + 1) + 1_000 * writer + i % 50 + 1
            model = MODELS[(i // 50 + writer) % len(MODELS)]
            with self.lock:
                self.in_flight[namespace] = model
            try:
                self.client.admin.UpdateNamespaceModelSelection(
                    admin_pb2.UpdateNamespaceModelSelectionRequest(
                        namespace_id=namespace, feature="duo_chat", offered_model_ref=model
                    ),
                    timeout=10,
                )
            except grpc.RpcError:
                return  # the sidecar died under this call: the write stays in flight (applied or not)
            with self.lock:
                del self.in_flight[namespace]
                self.acknowledged[namespace] = model
                self.count += 1
                if self.count >= self.target:
                    self.enough.set()


def served_model(client: Client, namespace: int) -> str:
    answer = client.resolve(1, namespace=namespace)
    assert not isinstance(answer, grpc.StatusCode), answer
    return answer.model_identifier if not answer.gitlab_default else ""


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_acknowledged_admin_writes_survive_kill_9(backend: str, tmp_path: Path) -> None:
    with storage(backend, tmp_path) as storage_toml:
        config, port = config_for(tmp_path / "sidecar", storage_toml, tmp_path / "token.key")
        acknowledged: dict[int, str] = {}
        in_flight: dict[int, tuple[str, str]] = {}  # namespace -> (model before, model tried)
        for round_number in range(ROUNDS + 1):
            with run_sidecar(config, port) as sidecar:
                client = Client(sidecar)
                for namespace, model in acknowledged.items():
                    assert served_model(client, namespace) == model, f"acknowledged pin on {namespace} lost"
                for namespace, (before, tried) in in_flight.items():
                    assert served_model(client, namespace) in (before, tried), f"{namespace}: half a write"
                in_flight.clear()
                if round_number == ROUNDS:
                    client.pin(7, MODELS[0])  # and the next write after all those kills works
                    assert served_model(client, 7) == MODELS[0]
                    return
                writers = Writers(client, round_number)
                writers.target = 5 + 13 * round_number % 40
                threads = [threading.Thread(target=writers.write, args=(w,)) for w in range(WRITERS)]
                for thread in threads:
                    thread.start()
                assert writers.enough.wait(60), "writers made no progress"
                os.kill(sidecar.process.pid, signal.SIGKILL)
                sidecar.process.wait()
                writers.stop.set()
                for thread in threads:
                    thread.join(20)
                with writers.lock:
                    for namespace, model in writers.in_flight.items():
                        in_flight[namespace] = (
                            writers.acknowledged.get(namespace, acknowledged.get(namespace, "")),
                            model,
                        )
                    acknowledged.update(writers.acknowledged)
                    for namespace in writers.in_flight:
                        acknowledged.pop(namespace, None)  # checked as in flight instead
                client.channel.close()
