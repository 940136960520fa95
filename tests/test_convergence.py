"""Every process converges on the same state: three sidecar processes share one store (PostgreSQL, or one SQLite
file), several writers change pins, seats and default namespaces on all of them at once in random interleavings
while readers keep users cached, and afterwards every process answers every touched user exactly as a freshly
started process does.

Each round is one random interleaving (the seed is printed on failure). `make test` runs a few rounds;
`make test-long` runs DUO_SIDECAR_CONVERGENCE_ROUNDS=24 per backend, so a one-in-four failure cannot pass.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc

from gitlab.duo.routing.v1 import admin_pb2, routing_pb2
from tests.fleet import Client, config_for, fresh_postgres
from tests.helpers import run_sidecar

ROUNDS = int(os.environ.get("DUO_SIDECAR_CONVERGENCE_ROUNDS", "3"))
USERS = range(1, 9)
NAMESPACES = range(1, 6)
MODELS = ["", "claude_sonnet_4_6", "claude_sonnet_4_5_20250929_vertex", "claude_sonnet_4_5_20250929"]
WRITERS = 3
OPERATIONS_PER_WRITER = 25
SETTLE_SECONDS = 5.0

Answer = tuple[str, ...]


def answer(client: Client, user: int, namespace: int) -> Answer:
    request = routing_pb2.ResolveModelRequest(user_id=user, feature="duo_chat", root_namespace_id=namespace)
    try:
        reply = client.routing.ResolveModel(request, timeout=5)
    except grpc.RpcError as error:
        return (error.code().name, error.details() or "")
    return (reply.model_identifier, str(reply.source), str(reply.governing_namespace_id))


def answers(client: Client) -> dict[tuple[int, int], Answer]:
    return {(u, n): answer(client, u, n) for u in USERS for n in (0, *NAMESPACES)}


def config_version(client: Client) -> int:
    return int(client.admin.GetServerInfo(admin_pb2.GetServerInfoRequest(), timeout=5).config_version or 0)


def random_write(client: Client, rng: random.Random) -> None:
    kind = rng.random()
    try:
        if kind < 0.35:
            client.pin(rng.choice(NAMESPACES), rng.choice(MODELS))
        elif kind < 0.8:
            changes = [
                admin_pb2.SeatAssignment(
                    user_id=rng.choice(USERS), namespace_id=rng.choice(NAMESPACES), assigned=rng.random() < 0.6
                )
                for _ in range(rng.randint(1, 4))
            ]
            client.admin.SyncSeatAssignments(
                iter([admin_pb2.SyncSeatAssignmentsRequest(assignments=changes)]), timeout=10
            )
        else:
            namespace = rng.choice([0, *NAMESPACES])
            request = admin_pb2.SetUserDefaultNamespaceRequest(user_id=rng.choice(USERS), namespace_id=namespace)
            client.admin.SetUserDefaultNamespace(request, timeout=10)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:  # NO_SEAT_IN_NAMESPACE is expected here
            raise


@contextmanager
def three_sidecars(tmp_path: Path, storage: str) -> Iterator[tuple[list[Client], ExitStack]]:
    with ExitStack() as stack:
        clients = []
        for i in range(3):
            config, port = config_for(tmp_path / f"node-{i}", storage, tmp_path / "token.key")
            client = Client(stack.enter_context(run_sidecar(config, port)))
            stack.callback(client.channel.close)
            clients.append(client)
        yield clients, stack


def fresh_answers(tmp_path: Path, storage: str, round_: int) -> dict[tuple[int, int], Answer]:
    config, port = config_for(tmp_path / f"fresh-{round_}", storage, tmp_path / "token.key")
    with run_sidecar(config, port) as process:
        client = Client(process)
        try:
            return answers(client)
        finally:
            client.channel.close()


def run_rounds(tmp_path: Path, storage: str) -> None:
    with three_sidecars(tmp_path, storage) as (clients, _):
        for round_ in range(ROUNDS):
            seed = random.randrange(2**32)
            failures: list[BaseException] = []

            def writer(index: int, seed: int = seed, failures: list[BaseException] = failures) -> None:
                rng = random.Random(seed * 31 + index)
                try:
                    for _ in range(OPERATIONS_PER_WRITER):
                        random_write(rng.choice(clients), rng)
                        reader = rng.choice(clients)  # keep users cached everywhere while they change
                        answer(reader, rng.choice(USERS), rng.choice([0, *NAMESPACES]))
                except BaseException as exc:  # reported by the main thread
                    failures.append(exc)

            threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not failures, f"seed {seed}: {failures[0]!r}"
            # Converged: every process serves the same version, then answers as a fresh process does.
            deadline = time.monotonic() + SETTLE_SECONDS
            while len({config_version(c) for c in clients}) > 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            versions = [config_version(c) for c in clients]
            assert len(set(versions)) == 1, f"seed {seed}: versions {versions} after {SETTLE_SECONDS} s"
            expected = fresh_answers(tmp_path, storage, round_)
            for i, client in enumerate(clients):
                got = answers(client)
                wrong = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
                assert not wrong, f"seed {seed}, round {round_}: sidecar {i} differs from a fresh one: {wrong}"


def test_three_sidecars_on_one_sqlite_file_converge(tmp_path: Path) -> None:
    run_rounds(tmp_path, f'[storage]\npath = "{tmp_path / "shared" / "sidecar.db"}"')


def test_three_sidecars_on_one_postgres_database_converge(tmp_path: Path) -> None:
    with fresh_postgres() as dsn:
        run_rounds(tmp_path, f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"')
