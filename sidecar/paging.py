"""AIP-158 pagination: page_size with a default and a cap, opaque page tokens holding the last key.

A token also records the list and filters it was issued for (its scope), so reusing it with other
filters is refused instead of silently returning the wrong page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sidecar.errors import invalid_argument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TOKEN_LENGTH = 1024


def page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_argument("page_size", f"page_size must not be negative, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(last_key: Any, scope: str) -> str:
    payload = json.dumps({"s": scope, "k": last_key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode()


def decode_token(token: str, scope: str) -> Any:
    """The last key of the previous page (lists become tuples), or None for the first page."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        raise invalid_argument("page_token", "page_token is not one this server issued; pass next_page_token unchanged")
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(payload, dict) or "k" not in payload:
            raise ValueError(token)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid_argument(
            "page_token", "page_token is not one this server issued; pass next_page_token unchanged"
        ) from None
    if payload.get("s") != scope:
        raise invalid_argument(
            "page_token", "page_token was issued for a different list or different filters; start from the first page"
        )
    last = payload["k"]
    return tuple(last) if isinstance(last, list) else last


def paginate(
    items: Sequence[T], key: Callable[[T], Any], requested_size: int, token: str, scope: str
) -> tuple[list[T], str]:
    """One page of items (sorted by key) after the token's key, and the next token ("" on the last page)."""
    size = page_size(requested_size)
    last = decode_token(token, scope)
    if last is not None:
        try:
            items = [item for item in items if key(item) > last]
        except TypeError:
            raise invalid_argument("page_token", "page_token belongs to a different list") from None
    page = list(items[:size])
    next_token = encode_token(key(page[-1]), scope) if len(items) > size else ""
    return page, next_token
