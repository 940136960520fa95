"""Structured logs: one JSON object per line on stderr (or plain text), with the RPC's correlation id.

The correlation id comes from the request metadata (`x-request-id`, else `x-correlation-id`), from
CompleteRequest.correlation_id, or is generated; it is looked up only when a line is written, so RPCs that
log nothing pay nothing for it. Nothing here logs API tokens, prompts or completions: the servicers log
prompt and completion text only when `log.log_prompts` is on (a debugging aid, never for production).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sidecar.config import LogConfig

CORRELATION_METADATA_KEYS = ("x-request-id", "x-correlation-id")
MAX_CORRELATION_ID_LENGTH = 128

# LogRecord attributes that are not extra fields.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _acceptable(value: str) -> bool:
    return 0 < len(value) <= MAX_CORRELATION_ID_LENGTH and value.isascii() and value.isprintable()


class RpcLogContext:
    """What the log lines written during one RPC share. Set by the edge chain (sidecar.grpc_metrics) for each call."""

    __slots__ = ("_correlation_id", "context", "error_reason")

    def __init__(self, context: Any) -> None:
        self.context = context  # a grpc.aio.ServicerContext; its metadata is read only when a line is written
        self._correlation_id: str | None = None
        self.error_reason = ""

    @property
    def correlation_id(self) -> str:
        if self._correlation_id is None:
            found = ""
            metadata: Sequence[tuple[str, Any]] = self.context.invocation_metadata() or ()
            for wanted in CORRELATION_METADATA_KEYS:
                for key, value in metadata:
                    if key == wanted and isinstance(value, str) and _acceptable(value):
                        found = value
                        break
                if found:
                    break
            self._correlation_id = found or uuid.uuid4().hex
        return self._correlation_id

    @correlation_id.setter
    def correlation_id(self, value: str) -> None:
        self._correlation_id = value


current_rpc: contextvars.ContextVar[RpcLogContext | None] = contextvars.ContextVar("duo_rpc", default=None)


def correlation_id() -> str:
    """The current RPC's correlation id ("" outside an RPC)."""
    rpc = current_rpc.get()
    return rpc.correlation_id if rpc is not None else ""


def use_correlation_id(value: str) -> None:
    """Makes `value` (already validated) the current RPC's correlation id, e.g. CompleteRequest.correlation_id."""
    rpc = current_rpc.get()
    if rpc is not None and value:
        rpc.correlation_id = value


class CorrelationFilter(logging.Filter):
    """Stamps each record with the current correlation id (while still in the RPC's task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = correlation_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339), level, logger, msg, correlation_id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_") and value not in ("", None):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(correlation)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        cid = getattr(record, "correlation_id", "")
        record.correlation = f" [{cid}]" if cid else ""
        return super().format(record)


def setup_logging(config: LogConfig) -> None:
    """Replaces the root logger's handlers with one stderr handler in the configured format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # aiohttp logs every scrape of /metrics at INFO; the access log of interest is the gRPC one.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Libraries' debug output is noise at best (a line per event-loop hop) and at worst repeats SQL parameters:
    # `log.level = debug` is for the sidecar's own lines.
    for noisy in ("aiosqlite", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.INFO))
    # gRPC logs a metadata value that is not UTF-8 whole, with a traceback, at ERROR: any caller could flood the log
    # with bytes of its choice (the rest of a token included). The call itself is refused (AUTH_TOKEN_MALFORMED).
    logging.getLogger("grpc._cython.cygrpc").addFilter(drop_undecodable_metadata)


def drop_undecodable_metadata(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Invalid encoding on")
