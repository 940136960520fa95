"""Hostile input from outside must end in a documented status, never UNKNOWN, INTERNAL or a storage error.

Page tokens come back from the caller: whatever a token holds, a list answers with a page or with
INVALID_ARGUMENT naming `page_token`, on both storage backends (DESIGN section 8: "a value the database cannot
hold is INVALID_ARGUMENT"). The authorization header and unknown method paths are in test_auth.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from duo_common.tokens import sign_token
from gitlab.duo.routing.v1 import admin_pb2, types_pb2
from sidecar import paging
from sidecar.errors import DuoError, ErrorCode
from sidecar.logs import drop_undecodable_metadata
from sidecar.store.base import Store
from tests.conftest import Sidecar, StartServer
from tests.helpers import error_details

# The range of the BIGINT columns the keys are compared with (signed 64-bit, in both backends).
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


def token(key: Any, scope: str, raw: str | None = None) -> str:
    """A page token as a hostile caller would build one: base64url of {"s": scope, "k": key} (or of `raw`)."""
    payload = raw if raw is not None else json.dumps({"s": scope, "k": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode()


# Keys that do not fit the list's key: out of the BIGINT range, the wrong type or the wrong shape.
BAD_INT_KEYS: dict[str, Any] = {
    "2**70 (the issue's token)": 1180591620717411303424,
    "2**63": BIGINT_MAX + 1,
    "-2**63-1": BIGINT_MIN - 1,
    "2**64": 2**64,
    "bool": True,
    "float": 1.5,
    "integral float": 7.0,
    "string": "7",
    "null": None,
    "list": [7],
    "object": {"k": 7},
}
BAD_PAIR_KEYS: dict[str, Any] = {
    "user 2**70": [1180591620717411303424, 1],
    "namespace 2**63": [1, BIGINT_MAX + 1],
    "user -2**63-1": [BIGINT_MIN - 1, 1],
    "bool": [True, 1],
    "float": [1.0, 2],
    "string": ["1", 2],
    "nested list": [[1, 2], 3],
    "one value": [1],
    "three values": [1, 2, 3],
    "int": 5,
    "null": None,
    "object": {"u": 1, "n": 2},
}
# JSON that Python's json module accepts but that is not JSON a server writes.
BAD_RAW_KEYS: dict[str, str] = {
    "NaN": '{{"s":"{scope}","k":NaN}}',
    "Infinity": '{{"s":"{scope}","k":Infinity}}',
    "-Infinity": '{{"s":"{scope}","k":[-Infinity,1]}}',
    "400-digit integer": '{{"s":"{scope}","k":' + "9" * 400 + "}}",
    "nested 3,000 deep": '{{"s":"{scope}","k":' + "[" * 3000 + "]" * 3000 + "}}",
}

Call = Callable[[str], Awaitable[Any]]


async def assign_seats(sidecar: Sidecar, *seats: tuple[int, int]) -> None:
    assignments = [admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=True) for u, n in seats]
    await sidecar.admin.SyncSeatAssignments(iter([admin_pb2.SyncSeatAssignmentsRequest(assignments=assignments)]))


def _lists(sidecar: Sidecar) -> dict[str, tuple[str, dict[str, Any], Call]]:
    """The lists whose key reaches SQL: name -> (scope, bad keys, call with a page token)."""
    admin = sidecar.admin
    return {
        "ListAuditEvents": (
            "auditEvents/",
            BAD_INT_KEYS,
            lambda t: admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(page_token=t)),
        ),
        "ListSeatAssignments": (
            "seatAssignments/0/0",
            BAD_PAIR_KEYS,
            lambda t: admin.ListSeatAssignments(admin_pb2.ListSeatAssignmentsRequest(page_token=t)),
        ),
    }


async def _refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, list[str]]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE):
            return error.code(), [error.details() or ""]
        details = error_details(error)
        return details.code, details.field_violations
    return grpc.StatusCode.OK, []


@pytest.fixture(params=["sqlite", "postgres"])
def start_backend(request: pytest.FixtureRequest, start_server: StartServer) -> StartServer:
    """start_server on each storage backend (the PostgreSQL one needs DUO_SIDECAR_TEST_POSTGRES_DSN)."""
    if request.param == "postgres":
        started: StartServer = request.getfixturevalue("start_postgres_server")
        return started
    return start_server


@pytest.mark.asyncio
async def test_page_tokens_with_keys_the_database_cannot_hold_are_invalid_argument(
    start_backend: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sidecar = await start_backend("gitlab_com")
    await assign_seats(sidecar, (1, 10))
    wrong: list[str] = []
    for rpc, (scope, bad_keys, call) in _lists(sidecar).items():
        cases = {name: token(key, scope) for name, key in bad_keys.items()}
        cases |= {name: token(None, scope, raw.format(scope=scope)) for name, raw in BAD_RAW_KEYS.items()}
        for name, bad in cases.items():
            outcome = await _refused(call(bad))
            if outcome != (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]):
                wrong.append(f"{rpc} with key {name}: {outcome}")
    assert not wrong, "\n".join(wrong)
    # No traceback either: a refused token is the caller's mistake, not the sidecar's.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.asyncio
async def test_keys_at_the_ends_of_the_bigint_range_reach_the_database(start_backend: StartServer) -> None:
    """The check is the column's range, not narrower: the extreme values are answered with a (possibly empty) page."""
    sidecar = await start_backend("gitlab_com")
    await assign_seats(sidecar, (1, 10))
    audit = await sidecar.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(page_token=token(BIGINT_MAX, "auditEvents/"))
    )
    assert len(audit.audit_events) == 1  # every id is below the largest BIGINT
    empty = await sidecar.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(page_token=token(BIGINT_MIN, "auditEvents/"))
    )
    assert list(empty.audit_events) == []
    seats = await sidecar.admin.ListSeatAssignments(
        admin_pb2.ListSeatAssignmentsRequest(page_token=token([BIGINT_MIN, BIGINT_MIN], "seatAssignments/0/0"))
    )
    assert [(s.user_id, s.namespace_id) for s in seats.seat_assignments] == [(1, 10)]
    none = await sidecar.admin.ListSeatAssignments(
        admin_pb2.ListSeatAssignmentsRequest(page_token=token([BIGINT_MAX, BIGINT_MAX], "seatAssignments/0/0"))
    )
    assert list(none.seat_assignments) == []


@pytest.mark.asyncio
async def test_audit_resource_prefix_the_database_cannot_hold_is_invalid_argument(
    start_backend: StartServer,
) -> None:
    """PostgreSQL text cannot hold NUL: the prefix is refused before the query (it was STORAGE_UNAVAILABLE)."""
    sidecar = await start_backend("gitlab_com")
    for prefix in ("namespaces/\x00", "\x00", "namespaces/\n"):
        outcome = await _refused(
            sidecar.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(resource_prefix=prefix))
        )
        assert outcome == (grpc.StatusCode.INVALID_ARGUMENT, ["resource_prefix"]), repr(prefix)


@pytest.mark.asyncio
async def test_every_list_refuses_page_tokens_of_another_shape(start_server: StartServer) -> None:
    """The lists served from memory check their keys in the same place: a key of another shape is refused
    (it used to be compared with the list's keys, and a one-value key for a two-value list was accepted)."""
    self_managed = await start_server("self_managed")
    gitlab_com = await start_server("gitlab_com")
    lists: dict[str, tuple[str, Call]] = {
        "ListSelfHostedModels": (
            "selfHostedModels",
            lambda t: self_managed.admin.ListSelfHostedModels(admin_pb2.ListSelfHostedModelsRequest(page_token=t)),
        ),
        "ListFeatureSettings": (
            "featureSettings",
            lambda t: self_managed.admin.ListFeatureSettings(admin_pb2.ListFeatureSettingsRequest(page_token=t)),
        ),
        "ListInstanceModelSelections": (
            "instanceModelSelections",
            lambda t: self_managed.admin.ListInstanceModelSelections(
                admin_pb2.ListInstanceModelSelectionsRequest(page_token=t)
            ),
        ),
        "ListNamespaceModelSelections": (
            "namespaceModelSelections/7",
            lambda t: gitlab_com.admin.ListNamespaceModelSelections(
                admin_pb2.ListNamespaceModelSelectionsRequest(namespace_id=7, page_token=t)
            ),
        ),
        "ListSelectableModels": (
            "selectableModels/",
            lambda t: gitlab_com.admin.ListSelectableModels(admin_pb2.ListSelectableModelsRequest(page_token=t)),
        ),
    }
    bad_keys: list[Any] = [
        2**70, True, 1.5, None, {"a": 1}, ["a"], ["a", "b", "c"], [["a"], "b"], ["a", 1], "a\x00", "\ud800",
    ]  # fmt: skip
    wrong = []
    for rpc, (scope, call) in lists.items():
        for key in bad_keys:
            outcome = await _refused(call(token(key, scope)))
            if outcome != (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]):
                wrong.append(f"{rpc} with key {key!r}: {outcome}")
        # Characters base64 does not use were skipped by the decoder, so a decorated token was accepted.
        good = token("a", scope) if rpc != "ListSelfHostedModels" else token(["a", "b"], scope)
        outcome = await _refused(call(good[:4] + "é!" + good[4:]))
        if outcome != (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]):
            wrong.append(f"{rpc} with a decorated token: {outcome}")
        assert await _refused(call(good)) == (grpc.StatusCode.OK, []), rpc
    assert not wrong, "\n".join(wrong)


@pytest.mark.asyncio
async def test_every_list_pages_through_with_its_own_tokens(start_server: StartServer) -> None:
    """The key shapes are the ones the lists issue: paging with next_page_token visits every item once."""
    self_managed = await start_server("self_managed")
    gitlab_com = await start_server("gitlab_com")
    for number in range(3):
        await self_managed.admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(
                self_hosted_model=admin_pb2.SelfHostedModel(
                    name=f"model {number}",
                    family=types_pb2.MODEL_FAMILY_MISTRAL,
                    platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                    endpoint="http://vllm.internal:8000/v1",
                    identifier=f"custom_openai/m{number}",
                )
            )
        )
    await assign_seats(gitlab_com, (1, 10), (1, 20), (2, 10), (2, 20))

    async def walk(fetch: Callable[[str], Awaitable[Any]], items: Callable[[Any], list[Any]]) -> list[Any]:
        seen: list[Any] = []
        page_token = ""
        while True:
            page = await fetch(page_token)
            seen += items(page)
            page_token = page.next_page_token
            if not page_token:
                return seen

    sm, com = self_managed.admin, gitlab_com.admin
    models = await walk(
        lambda t: sm.ListSelfHostedModels(admin_pb2.ListSelfHostedModelsRequest(page_size=1, page_token=t)),
        lambda p: [m.id for m in p.self_hosted_models],
    )
    assert len(models) == len(set(models)) == 3
    settings = await walk(
        lambda t: sm.ListFeatureSettings(admin_pb2.ListFeatureSettingsRequest(page_size=4, page_token=t)),
        lambda p: [f.feature for f in p.feature_settings],
    )
    instance = await walk(
        lambda t: sm.ListInstanceModelSelections(
            admin_pb2.ListInstanceModelSelectionsRequest(page_size=4, page_token=t)
        ),
        lambda p: [s.feature for s in p.model_selections],
    )
    namespace = await walk(
        lambda t: com.ListNamespaceModelSelections(
            admin_pb2.ListNamespaceModelSelectionsRequest(namespace_id=7, page_size=4, page_token=t)
        ),
        lambda p: [s.feature for s in p.model_selections],
    )
    selectable = await walk(
        lambda t: com.ListSelectableModels(admin_pb2.ListSelectableModelsRequest(page_size=4, page_token=t)),
        lambda p: [f.feature for f in p.features],
    )
    assert settings == instance == namespace == selectable == sorted(set(selectable)) and len(selectable) > 4
    seats = await walk(
        lambda t: com.ListSeatAssignments(admin_pb2.ListSeatAssignmentsRequest(page_size=1, page_token=t)),
        lambda p: [(s.user_id, s.namespace_id) for s in p.seat_assignments],
    )
    assert seats == [(1, 10), (1, 20), (2, 10), (2, 20)]
    audit = await walk(
        lambda t: com.ListAuditEvents(admin_pb2.ListAuditEventsRequest(page_size=1, page_token=t)),
        lambda p: [e.id for e in p.audit_events],
    )
    assert audit == sorted(audit, reverse=True) and len(audit) == len(set(audit)) >= 1


@pytest.mark.asyncio
async def test_the_longest_keys_a_list_issues_page_through(start_server: StartServer) -> None:
    """A token must hold the longest key its list can issue: a 255-character model name outside the BMP is
    3,060 bytes of JSON escapes, far over the 1,024 characters tokens were once capped at."""
    sidecar = await start_server("self_managed")
    names = [chr(0x1F600 + number) * 255 for number in range(3)]
    for number, name in enumerate(names):
        await sidecar.admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(
                self_hosted_model=admin_pb2.SelfHostedModel(
                    name=name,
                    family=types_pb2.MODEL_FAMILY_MISTRAL,
                    platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                    endpoint="http://vllm.internal:8000/v1",
                    identifier=f"custom_openai/m{number}",
                )
            )
        )
    seen: list[str] = []
    page_token = ""
    while True:
        page = await sidecar.admin.ListSelfHostedModels(
            admin_pb2.ListSelfHostedModelsRequest(page_size=1, page_token=page_token)
        )
        seen += [m.name for m in page.self_hosted_models]
        if not (page_token := page.next_page_token):
            break
    assert seen == names


@pytest.mark.parametrize("shape_name", ["INT_KEY", "INT_PAIR_KEY", "STR_KEY", "STR_PAIR_KEY"])
@pytest.mark.parametrize(
    "key",
    [0, BIGINT_MAX, BIGINT_MIN, BIGINT_MAX + 1, True, 1.0, "a", "", "a\x00", [1, 2], [BIGINT_MAX, BIGINT_MIN],
     [1, BIGINT_MAX + 1], ["a", "b"], ["a", 1], [1], [[1], 2], None],
)  # fmt: skip
def test_decode_token_returns_only_keys_of_the_shape_that_fit_the_columns(shape_name: str, key: Any) -> None:
    """Whatever decode_token returns has the list's shape and fits a BIGINT or a text column; the rest is refused."""
    assert (paging.BIGINT_MIN, paging.BIGINT_MAX) == (BIGINT_MIN, BIGINT_MAX)
    shape: paging.KeyShape[Any] = getattr(paging, shape_name)
    try:
        decoded = paging.decode_token(token(key, "x"), "x", shape)
    except DuoError as refusal:
        assert (refusal.code, refusal.metadata) == (ErrorCode.INVALID_ARGUMENT, {"field": "page_token"})
        return
    assert decoded is not None
    values = [decoded] if shape.single else list(decoded)
    assert len(values) == len(shape.parts)
    for value, part in zip(values, shape.parts, strict=True):
        assert type(value) is part
        if isinstance(value, int):
            assert BIGINT_MIN <= value <= BIGINT_MAX
        else:
            assert "\x00" not in value


@pytest.mark.asyncio
async def test_stores_accept_every_key_decode_token_lets_through(store: Store) -> None:
    """Both backends answer the extreme keys: the range decode_token enforces is the one the columns hold."""
    for before in (BIGINT_MIN, -1, 0, BIGINT_MAX):
        assert await store.list_audit_events("", before, 10) == []
    for after in ((BIGINT_MIN, BIGINT_MIN), (0, 0), (BIGINT_MAX, BIGINT_MIN), (BIGINT_MAX, BIGINT_MAX)):
        assert await store.list_seat_assignments(0, 0, after, 10) == []
    assert await store.list_seat_assignments(BIGINT_MAX, BIGINT_MAX, None, 10) == []


# -- the authorization header, as any HTTP/2 client can send it -----------------------------------------------
#
# gRPC's own clients refuse to send a metadata value that is not printable ASCII, but the header is the caller's
# bytes: a plain HTTP/2 client sends "²³" as UTF-8 and the server passes it on. This is such a client, just
# enough of HTTP/2 (RFC 9113) and HPACK (RFC 7541) for one unary call without TLS.

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
# SETTINGS_GRPC_ALLOW_TRUE_BINARY_METADATA: -bin values come as raw bytes, not base64 under Huffman coding.
_GRPC_TRUE_BINARY = 0xFE03
# The few entries of the HPACK static table a gRPC answer uses; grpc-* headers are never in it.
_STATIC = {8: (b":status", b"200"), 31: (b"content-type", b"")}


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _hpack_literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, with a literal name, neither string Huffman-coded."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


class _HpackDecoder:
    def __init__(self) -> None:
        self.table: list[tuple[bytes, bytes]] = []
        self.size = 4096

    def _int(self, data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value, pos = data[pos] & limit, pos + 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            byte, pos = data[pos], pos + 1
            value += (byte & 127) << shift
            shift += 7
            if not byte & 128:
                return value, pos

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        huffman = bool(data[pos] & 0x80)
        length, pos = self._int(data, pos, 7)
        value = data[pos : pos + length]
        return (b"<huffman>" if huffman else value), pos + length

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if index <= 61:
            return _STATIC.get(index, (f"<static {index}>".encode(), b""))
        return self.table[index - 62]

    def _add(self, name: bytes, value: bytes) -> None:
        self.table.insert(0, (name, value))
        while self.table and sum(len(n) + len(v) + 32 for n, v in self.table) > self.size:
            self.table.pop()

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        fields: list[tuple[bytes, bytes]] = []
        pos = 0
        while pos < len(data):
            byte = data[pos]
            if byte & 0x80:  # indexed
                index, pos = self._int(data, pos, 7)
                fields.append(self._entry(index))
                continue
            if byte & 0xE0 == 0x20:  # dynamic table size update
                self.size, pos = self._int(data, pos, 5)
                while self.table and sum(len(n) + len(v) + 32 for n, v in self.table) > self.size:
                    self.table.pop()
                continue
            indexing = bool(byte & 0x40)
            index, pos = self._int(data, pos, 6 if indexing else 4)
            if index:
                name = self._entry(index)[0]
            else:
                name, pos = self._string(data, pos)
            value, pos = self._string(data, pos)
            if indexing:
                self._add(name, value)
            fields.append((name, value))
        return fields


async def raw_unary_call(port: int, path: str, headers: list[tuple[bytes, bytes]], message: bytes) -> dict[str, bytes]:
    """One unary gRPC call over a fresh HTTP/2 connection; the answer's headers and trailers by name."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        settings = _GRPC_TRUE_BINARY.to_bytes(2, "big") + (1).to_bytes(4, "big")
        block = b"".join(
            _hpack_literal(name, value)
            for name, value in [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.encode()),
                (b":authority", f"127.0.0.1:{port}".encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                *headers,
            ]
        )
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        writer.write(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_HEADERS, _END_HEADERS, 1, block)
            + _frame(_DATA, _END_STREAM, 1, body)
        )
        await writer.drain()
        decoder = _HpackDecoder()
        answer: dict[str, bytes] = {}
        pending = b""
        while True:
            head = await asyncio.wait_for(reader.readexactly(9), 10)
            length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = await reader.readexactly(length)
            if kind == _SETTINGS and not flags & _ACK:
                writer.write(_frame(_SETTINGS, _ACK, 0, b""))
            elif kind == _PING and not flags & _ACK:
                writer.write(_frame(_PING, _ACK, 0, payload))
            elif kind in (_RST_STREAM, _GOAWAY) and stream in (0, 1):
                raise ConnectionError(f"HTTP/2 frame {kind} from the server: {payload.hex()}")
            elif kind in (_HEADERS, _CONTINUATION) and stream == 1:
                if kind == _HEADERS:
                    end_stream = bool(flags & _END_STREAM)
                    if flags & _PADDED:
                        payload = payload[1 : len(payload) - payload[0]]
                    if flags & _PRIORITY:
                        payload = payload[5:]
                pending += payload
                if flags & _END_HEADERS:
                    answer |= {name.decode(): value for name, value in decoder.decode(pending)}
                    pending = b""
                    if end_stream:
                        return answer
            await writer.drain()
    finally:
        writer.close()


def _raw_status(answer: dict[str, bytes]) -> tuple[int, str, str]:
    """grpc-status, grpc-message and the ErrorInfo reason (from grpc-status-details-bin) of a raw answer."""
    # A true-binary value starts with a NUL byte (without the setting it would be base64).
    details = status_pb2.Status.FromString(answer.get("grpc-status-details-bin", b"").removeprefix(b"\x00"))
    reason = ""
    for detail in details.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return int(answer["grpc-status"]), unquote(answer.get("grpc-message", b"").decode()), reason


def _signed_over(secret: str, spelled: str) -> bytes:
    """A token whose HMAC is right for the timestamp text as spelled (so only its spelling is wrong)."""
    mac = hmac.new(secret.encode(), spelled.encode(), hashlib.sha256).hexdigest()
    return f"Bearer v2.{mac}.{spelled}".encode()


def _now_in(zero: int) -> str:
    """The current unix time written with the ten digits starting at code point `zero`."""
    return "".join(chr(zero + int(d)) for d in str(int(time.time())))


AUTH_CLIENT_SECRET = "client-secret-0123456789abcdef"
AUTH_ADMIN_SECRET = "admin-secret-0123456789abcdef00"


@pytest.mark.asyncio
async def test_authorization_headers_grpc_clients_cannot_send_are_malformed(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Digits that str.isdigit() (and int(), but for superscripts) accept, and non-ASCII spaces that str.strip()
    removes, are not a token: UNAUTHENTICATED/AUTH_TOKEN_MALFORMED, not UNKNOWN and a traceback."""
    caplog.set_level(logging.WARNING)
    sidecar = await start_server(
        "dedicated",
        env={"DUO_SIDECAR_AUTH_CLIENT_SECRET": AUTH_CLIENT_SECRET, "DUO_SIDECAR_AUTH_ADMIN_SECRET": AUTH_ADMIN_SECRET},
    )
    port = sidecar.server.port
    assert port is not None
    good = sign_token(AUTH_ADMIN_SECRET).encode()
    headers: dict[str, bytes] = {
        "superscript digits (the issue's token)": f"Bearer v2.{'0' * 64}.\u00b2\u00b3".encode(),
        "arabic-indic digits": _signed_over(AUTH_ADMIN_SECRET, _now_in(0x0660)),
        "fullwidth digits": _signed_over(AUTH_ADMIN_SECRET, _now_in(0xFF10)),
        "devanagari digits": _signed_over(AUTH_ADMIN_SECRET, _now_in(0x0966)),
        "trailing ideographic space": good + "\u3000".encode(),
        "trailing no-break space": good + "\u00a0".encode(),
        "no-break space after Bearer": good.replace(b"Bearer ", "Bearer\u00a0".encode()),
        "fullwidth hex": ("Bearer v2." + "\uff41" * 64 + f".{int(time.time())}").encode(),
    }
    path = "/gitlab.duo.routing.v1.AdminService/GetServerInfo"
    assert _raw_status(await raw_unary_call(port, path, [(b"authorization", good)], b""))[0] == 0
    wrong = []
    for name, value in headers.items():
        outcome = _raw_status(await raw_unary_call(port, path, [(b"authorization", value)], b""))
        if (outcome[0], outcome[2]) != (grpc.StatusCode.UNAUTHENTICATED.value[0], "AUTH_TOKEN_MALFORMED"):
            wrong.append(f"{name}: {outcome}")
    assert not wrong, "\n".join(wrong)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    # Not UTF-8 at all: gRPC itself logs "Invalid encoding" and hands the value on decoded as Latin-1.
    outcome = _raw_status(await raw_unary_call(port, path, [(b"authorization", good + b"\xb2")], b""))
    assert (outcome[0], outcome[2]) == (grpc.StatusCode.UNAUTHENTICATED.value[0], "AUTH_TOKEN_MALFORMED")
    # ...which the sidecar's logging drops: the caller chose those bytes (setup_logging installs the filter).
    grpc_records = [r for r in caplog.records if r.name == "grpc._cython.cygrpc"]
    assert grpc_records and not any(drop_undecodable_metadata(r) for r in grpc_records)
