"""Benchmark data: a few seats and pins through the admin RPCs, and optionally a large SQLite preload."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, types_pb2
from sidecar.catalog import load_catalog

# GitLab.com-sized ids, above anything the large preload uses, so the benchmark users stay unambiguous.
PINNED_NAMESPACE = 95_000_001
OTHER_NAMESPACE = 95_000_002
MULTI_SEAT_USER = 21_000_001  # seats in both namespaces, default namespace PINNED_NAMESPACE
SOLE_SEAT_USER = 21_000_002  # one seat, in PINNED_NAMESPACE, asks with no context
# User model selection (issue 15): PINNED_NAMESPACE pins agentic chat and allows users to choose CHOSEN_MODEL.
AGENTIC = "duo_agent_platform_agentic_chat"
AGENTIC_PIN, CHOSEN_MODEL = "claude_sonnet_4_5_20250929", "claude_haiku_4_5_20251001"
PINS = (
    (PINNED_NAMESPACE, "code_completions", "codestral_2501_fireworks"),
    (PINNED_NAMESPACE, "duo_chat", "claude_sonnet_4_5_20250929"),
    (OTHER_NAMESPACE, "code_completions", "codestral_2508_vertex"),
    (PINNED_NAMESPACE, AGENTIC, AGENTIC_PIN),
)
SEATS = ((MULTI_SEAT_USER, PINNED_NAMESPACE), (MULTI_SEAT_USER, OTHER_NAMESPACE), (SOLE_SEAT_USER, PINNED_NAMESPACE))

LARGE_SEATS = 1_000_000
LARGE_PINS = 100_000


@dataclass(frozen=True)
class Scenario:
    name: str
    request: routing_pb2.ResolveModelRequest
    expected_source: int  # a types_pb2.SelectionSource value
    expected_model: str


SCENARIOS = (
    Scenario(
        "context namespace",
        routing_pb2.ResolveModelRequest(
            user_id=MULTI_SEAT_USER, feature="code_completions", root_namespace_id=PINNED_NAMESPACE
        ),
        types_pb2.SELECTION_SOURCE_CONTEXT_NAMESPACE,
        "codestral_2501_fireworks",
    ),
    Scenario(
        "sole seat, no context",
        routing_pb2.ResolveModelRequest(user_id=SOLE_SEAT_USER, feature="duo_chat", root_namespace_id=0),
        types_pb2.SELECTION_SOURCE_SOLE_SEAT_NAMESPACE,
        "claude_sonnet_4_5_20250929",
    ),
    Scenario(
        "multi-seat, no context",
        routing_pb2.ResolveModelRequest(user_id=MULTI_SEAT_USER, feature="duo_chat", root_namespace_id=0),
        types_pb2.SELECTION_SOURCE_DEFAULT_NAMESPACE,
        "claude_sonnet_4_5_20250929",
    ),
    Scenario(
        "user choice, context namespace",
        routing_pb2.ResolveModelRequest(
            user_id=MULTI_SEAT_USER,
            feature=AGENTIC,
            root_namespace_id=PINNED_NAMESPACE,
            user_selected_model=CHOSEN_MODEL,
        ),
        types_pb2.SELECTION_SOURCE_USER,
        CHOSEN_MODEL,
    ),
)


def seed_admin(address: str, authorization: str = "") -> None:
    """Pins, seats and a default namespace through the real admin RPCs, so the sidecar's snapshot is built the
    normal way. `authorization`: the admin token, when the sidecar checks tokens."""
    metadata: tuple[tuple[str, str], ...] = (("x-duo-actor", "bench"),)
    if authorization:
        metadata += (("authorization", authorization),)
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for namespace_id, feature, model in PINS:
            admin.UpdateNamespaceModelSelection(
                admin_pb2.UpdateNamespaceModelSelectionRequest(
                    namespace_id=namespace_id, feature=feature, offered_model_ref=model
                ),
                metadata=metadata,
                timeout=30,
            )
        admin.UpdateNamespaceModelAllowlist(
            admin_pb2.UpdateNamespaceModelAllowlistRequest(
                namespace_id=PINNED_NAMESPACE, feature=AGENTIC, enabled=True, model_refs=[CHOSEN_MODEL]
            ),
            metadata=metadata,
            timeout=30,
        )
        batch = admin_pb2.SyncSeatAssignmentsRequest(
            assignments=[admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=True) for u, n in SEATS]
        )
        admin.SyncSeatAssignments(iter([batch]), metadata=metadata, timeout=30)
        admin.SetUserDefaultNamespace(
            admin_pb2.SetUserDefaultNamespaceRequest(user_id=MULTI_SEAT_USER, namespace_id=PINNED_NAMESPACE),
            metadata=metadata,
            timeout=30,
        )


def large_pins(now: str) -> Iterator[tuple[int, str, str, str]]:
    # Namespaces 1..100,000 each pin one feature to one of its selectable models, spread over the catalog.
    features = [f for f in load_catalog().features.values() if f.selectable_models]
    for namespace_id in range(1, LARGE_PINS + 1):
        info = features[namespace_id % len(features)]
        model = info.selectable_models[namespace_id % len(info.selectable_models)]
        yield namespace_id, info.name, model, now


def large_seats() -> Iterator[tuple[int, int]]:
    # 800,000 users with one seat and 200,000 of them with a second one: 1,000,000 rows, no duplicates.
    single = LARGE_SEATS * 4 // 5
    for user_id in range(1, single + 1):
        namespace_id = user_id * 7919 % LARGE_PINS + 1
        yield user_id, namespace_id
        if user_id <= LARGE_SEATS - single:
            yield user_id, namespace_id % LARGE_PINS + 1


def seed_large(database: Path) -> float:
    """Writes the large data set straight into a migrated database; returns the seconds it took."""
    started = time.monotonic()
    now = datetime.now(UTC).isoformat()
    with sqlite3.connect(database) as db:
        db.executemany(
            "INSERT INTO namespace_model_selections (namespace_id, feature, offered_model_ref, update_time) "
            "VALUES (?, ?, ?, ?)",
            large_pins(now),
        )
        db.executemany("INSERT INTO seat_assignments (user_id, namespace_id) VALUES (?, ?)", large_seats())
        seats = db.execute("SELECT COUNT(*) FROM seat_assignments").fetchone()[0]
        pins = db.execute("SELECT COUNT(*) FROM namespace_model_selections").fetchone()[0]
    db.close()
    if (seats, pins) != (LARGE_SEATS, LARGE_PINS):
        raise RuntimeError(f"large seed wrote {seats} seats and {pins} pins")
    return time.monotonic() - started


def route_to_upstream(address: str, upstream_url: str) -> None:
    """Routes duo_chat to a self-hosted model at the mock upstream (as tests/completion.py's self_hosted does)."""
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        model = admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(
                self_hosted_model=admin_pb2.SelfHostedModel(
                    name="bench vLLM",
                    family=types_pb2.MODEL_FAMILY_MISTRAL,
                    platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                    endpoint=f"{upstream_url}/v1",
                    identifier="custom_openai/bench",
                    api_token="bench-token",
                )
            ),
            timeout=30,
        ).self_hosted_model
        admin.UpdateFeatureSetting(
            admin_pb2.UpdateFeatureSettingRequest(
                feature="duo_chat", provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id=model.id
            ),
            timeout=30,
        )
