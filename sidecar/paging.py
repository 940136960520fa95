"""AIP-158 pagination: page_size with a default and a cap, opaque page tokens holding the last key.

A token also records the list and filters it was issued for (its scope), so reusing it with other
filters is refused instead of silently returning the wrong page.

A token comes back from the caller, so it is outside input like any other field: decode_token checks that
its key has exactly the shape the list issues (KeyShape) and that every value fits where it may go, an
integer in a BIGINT column (signed 64-bit) and a string in a PostgreSQL text column (UTF-8, no NUL).
Anything else is INVALID_ARGUMENT here, before it can reach a comparison or a query.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from sidecar.errors import DuoError, invalid_argument

T = TypeVar("T")
K = TypeVar("K")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Room for the longest token a list issues: a 255-character name or resource prefix is up to 3,060 bytes of JSON
# (a character outside the BMP is written as two \uXXXX escapes), some 4,200 characters of base64 with the rest.
MAX_TOKEN_LENGTH = 8192
BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1

# What encode_token writes: unpadded or padded base64url, nothing else (b64decode would skip other characters).
_TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9_-]*={0,2}", re.ASCII)


@dataclass(frozen=True)
class KeyShape(Generic[K]):
    """The key a list's page tokens carry: a single int or str, or a fixed-length tuple of them."""

    parts: tuple[type[int] | type[str], ...]
    single: bool = False

    def parse(self, raw: object) -> K | None:
        """The key, or None when `raw` (decoded JSON) does not have this shape or a value does not fit."""
        values = [raw] if self.single else raw
        if not isinstance(values, list) or len(values) != len(self.parts):
            return None
        for value, part in zip(values, self.parts, strict=True):
            if type(value) is not part:  # exact: rejects bool (an int subclass), float, nested lists, None
                return None
            if isinstance(value, int) and not BIGINT_MIN <= value <= BIGINT_MAX:
                return None
            if isinstance(value, str) and not _storable_text(value):
                return None
        return cast(K, raw if self.single else tuple(values))


def _storable_text(value: str) -> bool:
    """PostgreSQL text holds UTF-8 without NUL; JSON can spell both a NUL and a lone surrogate."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


INT_KEY: KeyShape[int] = KeyShape((int,), single=True)
STR_KEY: KeyShape[str] = KeyShape((str,), single=True)
INT_PAIR_KEY: KeyShape[tuple[int, int]] = KeyShape((int, int))
STR_PAIR_KEY: KeyShape[tuple[str, str]] = KeyShape((str, str))


def page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_argument("page_size", f"page_size must not be negative, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(last_key: Any, scope: str) -> str:
    payload = json.dumps({"s": scope, "k": last_key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode()


def _not_issued() -> DuoError:
    return invalid_argument("page_token", "page_token is not one this server issued; pass next_page_token unchanged")


def decode_token(token: str, scope: str, shape: KeyShape[K]) -> K | None:
    """The last key of the previous page, checked against `shape`, or None for the first page."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_CHARACTERS.fullmatch(token):
        raise _not_issued()
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise _not_issued() from None
    if not isinstance(payload, dict) or "k" not in payload:
        raise _not_issued()
    if payload.get("s") != scope:
        raise invalid_argument(
            "page_token", "page_token was issued for a different list or different filters; start from the first page"
        )
    key = shape.parse(payload["k"])
    if key is None:
        raise _not_issued()
    return key


def paginate(
    items: Sequence[T], key: Callable[[T], K], requested_size: int, token: str, scope: str, shape: KeyShape[K]
) -> tuple[list[T], str]:
    """One page of items (sorted by key) after the token's key, and the next token ("" on the last page)."""
    size = page_size(requested_size)
    last = decode_token(token, scope, shape)
    if last is not None:
        items = [item for item in items if cast(Any, key(item)) > last]
    page = list(items[:size])
    next_token = encode_token(key(page[-1]), scope) if len(items) > size else ""
    return page, next_token
