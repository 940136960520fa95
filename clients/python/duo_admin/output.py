"""How duo-admin shows things: aligned tables, ``key: value`` lines, JSON, and errors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any, TextIO

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from duo_admin.client import DuoAdminError

NONE = "-"
# Input-only fields: always empty in responses, and an empty "api_token" next to "api_token_set": true misleads.
INPUT_ONLY_FIELDS = frozenset({"api_token"})


def _enum_prefix(enum: EnumDescriptor) -> str:
    """The value-name prefix, such as PROVIDER_ for Provider: Buf style puts it on every value, zero included."""
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def enum_label(enum: EnumDescriptor, number: int) -> str:
    """The short lower-case name of an enum value: PROVIDER_GITLAB_AI_GATEWAY -> gitlab_ai_gateway."""
    value = enum.values_by_number.get(number)
    if value is None:  # a value added to the server after this client was built
        return str(number)
    return value.name.removeprefix(_enum_prefix(enum)).lower()


def enum_choices(enum: EnumDescriptor) -> dict[str, str]:
    """Short lower-case names (without UNSPECIFIED) mapped to the full value names, for argparse choices."""
    return {enum_label(enum, v.number): v.name for v in enum.values if v.number != 0}


def timestamp_label(value: timestamp_pb2.Timestamp) -> str:
    if not value.seconds and not value.nanos:
        return ""
    return value.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


# `field` is a FieldDescriptor; protobuf's stubs split that type between its Python and upb classes.
def _scalar_label(field: Any, value: Any) -> str:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return "" if value == 0 else enum_label(field.enum_type, value)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    return str(value)


def describe(message: Message) -> list[tuple[str, str]]:
    """(field name, text) pairs of a message, nested messages flattened in place.

    Empty strings, unspecified enums and unset messages are left out; repeated messages belong in tables.
    """
    pairs: list[tuple[str, str]] = []
    for field in message.DESCRIPTOR.fields:
        if field.name in INPUT_ONLY_FIELDS:
            continue
        value = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated or not message.HasField(field.name):
                continue
            if isinstance(value, timestamp_pb2.Timestamp):
                pairs.append((field.name, timestamp_label(value)))
            else:
                pairs.extend(describe(value))
        elif field.is_repeated:
            pairs.append((field.name, ",".join(_scalar_label(field, v) for v in value) or NONE))
        else:
            label = _scalar_label(field, value)
            if label:
                pairs.append((field.name, label))
    return pairs


def print_fields(pairs: Iterable[tuple[str, str]], out: TextIO, align: bool = True) -> None:
    """``key: value`` lines, values aligned unless align is False."""
    pairs = list(pairs)
    width = max((len(key) for key, _ in pairs), default=0) + 1 if align else 0
    for key, value in pairs:
        print(f"{key + ':':<{width}} {value}".rstrip(), file=out)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO) -> None:
    """An aligned table with a header row; "(none)" when there are no rows."""
    rows = [[cell or NONE for cell in row] for row in rows]
    if not rows:
        print("(none)", file=out)
        return
    widths = [max(len(row[i]) for row in [list(headers), *rows]) for i in range(len(headers))]
    for row in [list(headers), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def _without_input_only_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_input_only_fields(v) for k, v in value.items() if k not in INPUT_ONLY_FIELDS}
    if isinstance(value, list):
        return [_without_input_only_fields(v) for v in value]
    return value


def message_to_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON mapping with proto field names, every field present, ids as numbers."""
    as_dict = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    result: dict[str, Any] = _without_input_only_fields(as_dict)
    return result


def print_json(value: Any, out: TextIO, indent: int | None = 2) -> None:
    """Pretty JSON; indent=None gives one line (JSON lines for streams)."""
    print(json.dumps(value, indent=indent), file=out)


def print_error(error: DuoAdminError, out: TextIO) -> None:
    """``error: CODE: message`` then one line per detail the server sent."""
    print(f"error: {error.code}: {error.message}", file=out)
    details: list[tuple[str, str]] = []
    if error.reason:
        details.append(("reason", error.reason))
    details.extend(sorted(error.metadata.items()))
    details.extend(("field violation", f"{v.field}: {v.description}") for v in error.field_violations)
    details.extend(
        ("precondition violation", f"{v.type} ({v.subject}): {v.description}") for v in error.precondition_violations
    )
    print_fields(details, out, align=False)  # unaligned, so each detail line can be matched as is
