"""Gitaly-style v2 HMAC bearer tokens: `Bearer v2.<hex HMAC-SHA256(secret, unix_ts)>.<unix_ts>`.

Clients sign with sign_token; the sidecar checks tokens against TOKEN_PATTERN and ALLOWED_SKEW_SECONDS.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

TOKEN_VERSION = "v2"
ALLOWED_SKEW_SECONDS = 30
MAX_TIMESTAMP_DIGITS = 12
# The whole header, ASCII only: str.isdigit() and int() accept other digits ("²", "٣") and str.lower() and
# str.strip() fold or strip non-ASCII characters, so a token is matched by this pattern and nothing else.
# Group 1 is the hex HMAC, group 2 the signed timestamp.
TOKEN_PATTERN = re.compile(
    rf"(?i:bearer)[ \t]+{TOKEN_VERSION}\.([0-9a-fA-F]{{64}})\.([0-9]{{1,{MAX_TIMESTAMP_DIGITS}}})[ \t]*", re.ASCII
)


def sign_token(secret: str | bytes, timestamp: int | None = None) -> str:
    """The value of the `authorization` metadata for a call made now (or at `timestamp`)."""
    ts = int(time.time()) if timestamp is None else timestamp
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, str(ts).encode(), hashlib.sha256).hexdigest()
    return f"Bearer {TOKEN_VERSION}.{mac}.{ts}"
