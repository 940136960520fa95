"""CPU per upstream request, one HTTP client against another: aiohttp, the sidecar's own client
(sidecar/upstream/http.py) and a raw asyncio stream that only writes the request and reads until `[DONE]` (the
least any client can do). Sequential requests over one kept-alive connection to bench/upstream.py (20 chunks), on
uvloop, time.process_time per request; each pacing given (ms) is one row per client.

    .venv/bin/python -m bench.client_cost 0 5
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop

from bench.complete import started_upstream
from sidecar.endpoints import EndpointPolicy, GuardedResolver
from sidecar.upstream.http import ConnectionPool, Environment

BODY = {
    "model": "bench",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream", "Authorization": "Bearer x"}
REQUESTS = 300


async def timed(name: str, one: Callable[[], Awaitable[None]]) -> None:
    for _ in range(10):
        await one()
    started = time.process_time()
    for _ in range(REQUESTS):
        await one()
    print(f"  {name:8s} {(time.process_time() - started) / REQUESTS * 1e6:8.1f} µs CPU per request")


async def compare(url: str, pacing: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    path = f"/pace/{pacing}/v1/chat/completions"
    async with aiohttp.ClientSession() as session:

        async def with_aiohttp() -> None:
            async with session.post(url + path, json=BODY, headers=HEADERS) as response:
                while await response.content.readany():
                    pass

        await timed("aiohttp", with_aiohttp)

    pool = ConnectionPool(
        url, limit=8, connect_timeout=5, resolver=GuardedResolver(EndpointPolicy()), environment=Environment()
    )

    async def with_pool() -> None:
        response = await pool.request("POST", url + path, HEADERS, json.dumps(BODY).encode())
        while await response.readany():
            pass
        response.release()

    await timed("sidecar", with_pool)
    await pool.close()

    body = json.dumps(BODY).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in HEADERS.items()).encode()
    request = b"POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        host.encode(),
        head,
        len(body),
        body,
    )
    reader, writer = await asyncio.open_connection(host, int(port))

    async def raw() -> None:
        writer.write(request)
        received = b""
        while b"data: [DONE]" not in received:
            received += await reader.read(65536)

    await timed("raw", raw)
    writer.close()


def main() -> None:
    with started_upstream() as url:
        for pacing in sys.argv[1:] or ["0", "5"]:
            print(f"pacing {pacing} ms")
            uvloop.run(compare(url, pacing))


if __name__ == "__main__":
    main()
