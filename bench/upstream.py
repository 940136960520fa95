"""A lean OpenAI-compatible mock upstream for bench/complete.py: HTTP/1.1 keep-alive, SSE in chunked encoding.

POST /pace/<ms>/v1/chat/completions answers a 20-chunk streamed chat completion: the first chunk at once, then
one chunk every <ms> milliseconds (0: all back to back, in one write), then the finish reason, usage and
[DONE] together, <ms> after the last chunk. Real models stream a token every 7-50 ms, one SSE event each.

Lean on purpose (asyncio streams, no framework, on uvloop when installed): on a 2-core machine the upstream's own
CPU competes with the servers being measured. `python -m bench.upstream` prints its port and serves until killed.
"""

from __future__ import annotations

import asyncio
import json
import re

CHUNKS = 20
_PATH = re.compile(rb"^POST /pace/(\d+)/v1/chat/completions HTTP/1\.1\r\n", re.IGNORECASE)
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(data: object) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def pieces(chunks: int = CHUNKS) -> tuple[list[bytes], bytes]:
    """The SSE events of one completion as HTTP chunks: one per token, then the trailer in one chunk."""
    tokens = []
    for i in range(chunks):
        delta = {"content": f"token{i} ", **({"role": "assistant"} if i == 0 else {})}
        tokens.append(_chunk(_event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})))
    trailer = (
        _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + _event({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": chunks}})
        + b"data: [DONE]\n\n"
    )
    return tokens, _chunk(trailer) + b"0\r\n\r\n"


TOKENS, TRAILER = pieces()


async def _answer(writer: asyncio.StreamWriter, pacing_seconds: float) -> None:
    if not pacing_seconds:
        writer.write(_HEAD + b"".join(TOKENS) + TRAILER)
        await writer.drain()
        return
    writer.write(_HEAD + TOKENS[0])
    for token in TOKENS[1:]:
        await asyncio.sleep(pacing_seconds)
        writer.write(token)
    await asyncio.sleep(pacing_seconds)
    writer.write(TRAILER)
    await writer.drain()


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = _PATH.match(head)
            length = _LENGTH.search(head)
            if length:
                await reader.readexactly(int(length.group(1)))
            if path is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            await _answer(writer, int(path.group(1)) / 1000)
    except (asyncio.IncompleteReadError, ConnectionError, RuntimeError):  # RuntimeError: uvloop, closed by the peer
        pass
    finally:
        writer.close()


async def serve() -> None:
    server = await asyncio.start_server(_connection, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
