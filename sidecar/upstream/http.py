"""A lean HTTP/1.1 client for the upstream path: one keep-alive connection pool per endpoint, requests written as
pre-serialized bytes, responses parsed by httptools (llhttp) in an asyncio.Protocol.

aiohttp cost ~370 µs of CPU per request and ~15 µs per streamed chunk, most of the sidecar's CPU per completion
(issue 17). This client does what the upstream path needs and nothing more: TLS with the default verification,
HTTP(S)_PROXY / NO_PROXY and ~/.netrc read once per endpoint, the endpoint guard on every connection, a bounded
response head, and body bytes handed to the reader as they arrive.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ipaddress
import logging
import netrc
import os
import ssl
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import quote, unquote, urlsplit

import httptools

from sidecar.endpoints import GuardedResolver

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 32 * 1024  # status line and headers of a response; a hostile upstream gets no more memory
READ_BUFFER_BYTES = 64 * 1024  # body bytes buffered before the socket stops being read
DRAIN_BYTES = 64 * 1024  # what is left of a released response that is read to keep its connection
DRAIN_SECONDS = 1.0
IDLE_SECONDS = 15.0  # a connection idle longer is closed rather than reused (aiohttp's keep-alive default)
USER_AGENT = "duo-routing-sidecar"
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


class HTTPClientError(OSError):
    """The exchange failed below HTTP semantics: connecting, or the connection, or a malformed response."""


class InvalidRequest(HTTPClientError):
    """The URL or a header cannot be sent (not http(s), no host, a line break in a header)."""


class ConnectTimeout(HTTPClientError, TimeoutError):
    """No connection within the pool's connect timeout."""


class ConnectionBroken(HTTPClientError):
    """The connection closed, was reset, or carried a malformed response."""


@dataclass(frozen=True)
class Environment:
    """What the process environment says about an endpoint (HTTP(S)_PROXY, NO_PROXY and ~/.netrc), read once
    when its pool is made. Proxy URLs are http:// (an https:// proxy is ignored, as aiohttp did)."""

    proxy_host: str | None = None
    proxy_port: int = 0
    proxy_authorization: str | None = None
    netrc_authorization: str | None = None

    @classmethod
    def read(cls, url: str) -> Environment:
        parts = urlsplit(url)
        host = parts.hostname or ""
        logins = _netrc()
        proxy_host, proxy_port, proxy_authorization = None, 0, None
        raw = urllib.request.getproxies().get(parts.scheme)
        if raw and host and not urllib.request.proxy_bypass(host):
            proxy = urlsplit(raw if "://" in raw else f"http://{raw}")
            if proxy.scheme != "http" or not proxy.hostname:
                log.warning("ignoring the %s proxy %r: only http:// proxies are supported", parts.scheme, raw)
            else:
                proxy_host, proxy_port = proxy.hostname, proxy.port or 80
                if proxy.username is not None:
                    proxy_authorization = _basic(unquote(proxy.username), unquote(proxy.password or ""))
                else:
                    proxy_authorization = _netrc_authorization(logins, proxy_host)
        return cls(proxy_host, proxy_port, proxy_authorization, _netrc_authorization(logins, host))


def _netrc() -> netrc.netrc | None:
    path = os.environ.get("NETRC")
    try:
        return netrc.netrc(path or str(Path.home() / ".netrc"))
    except (OSError, RuntimeError):
        return None
    except netrc.NetrcParseError as exc:
        log.warning("cannot parse the .netrc file: %s", exc)
        return None


def _netrc_authorization(logins: netrc.netrc | None, host: str) -> str | None:
    entry = logins.authenticators(host) if logins is not None and host else None
    if entry is None:
        return None
    login, account, password = entry
    return _basic(login or account or "", password or "")


def _basic(user: str, password: str) -> str:
    credentials = f"{user}:{password}"
    try:
        raw = credentials.encode("latin-1")
    except UnicodeEncodeError:
        raw = credentials.encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _checked(text: str) -> str:
    if "\r" in text or "\n" in text:
        raise InvalidRequest("a header holds a line break")
    return text


class _Connection(asyncio.Protocol):
    """One upstream connection: parses each response as its bytes arrive and buffers its body for the reader."""

    __slots__ = (
        "_loop",
        "_parser",
        "buffered",
        "chunks",
        "closed",
        "complete",
        "delimited",
        "drain_timer",
        "drained",
        "draining",
        "error",
        "expecting",
        "head_bytes",
        "header_bytes",
        "headers_done",
        "idle_since",
        "informational",
        "keep_alive",
        "on_body",
        "on_drained",
        "paused",
        "received",
        "reused",
        "status",
        "transport",
        "tunnel_reply",
        "waiter",
    )

    # The response to come (_new_response).
    buffered: int
    status: int
    head_bytes: int
    header_bytes: int
    headers_done: bool
    delimited: bool
    complete: bool
    keep_alive: bool
    received: bool

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.chunks: list[bytes] = []  # the body bytes not yet read; always this list
        # httptools' on_body callback, one per body piece (a chunk of a chunked body): straight into the list, no
        # Python frame per piece. data_received does the rest once per read.
        self.on_body = self.chunks.append
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.informational = False
        self._new_response()
        self.reused = False
        self.closed = False
        self.error: HTTPClientError | None = None
        self.tunnel_reply: bytearray | None = None
        self.expecting = False
        self.draining = False
        self.drained = 0
        self.drain_timer: asyncio.TimerHandle | None = None
        self.on_drained: Callable[[_Connection], None] | None = None
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        if self.tunnel_reply is not None:
            self.tunnel_reply += data
            self._wake()
            return
        if not self.expecting or self.error is not None:
            self.fail(ConnectionBroken("the upstream sent bytes while no request was waiting for them"))
            return
        self.received = True
        if not self.headers_done:
            self.head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(ConnectionBroken(f"malformed HTTP response ({type(exc).__name__}: {exc})"))
            return
        if not self.headers_done:
            if self.head_bytes > MAX_HEAD_BYTES:
                self.fail(ConnectionBroken(f"the response head is longer than {MAX_HEAD_BYTES} bytes"))
        elif self.chunks:
            if self.draining:
                self.chunks.clear()
                self.drained += len(data)
                if self.drained > DRAIN_BYTES:
                    self.abort()
                return
            self.buffered += len(data)
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if self.buffered > READ_BUFFER_BYTES and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost says what that means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            if self.headers_done and not self.delimited and self.status not in (204, 304):
                self.complete = True  # a body delimited by the connection closing has ended
                self.keep_alive = False
            else:
                why = f": {exc}" if exc else ""
                self.error = ConnectionBroken(
                    f"the upstream closed the connection before the response ended{why}"
                    if self.received
                    else f"the upstream closed the connection without answering{why}"
                )
        self._wake()
        self.end_drain()

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self.delimited = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # 100 Continue and the like: the real answer follows
            self.informational = True
            self.head_bytes = 0
            self.header_bytes = 0
            self.delimited = False
            return
        if self.header_bytes > MAX_HEAD_BYTES:  # the whole head came in one read
            self.fail(ConnectionBroken(f"the response head is longer than {MAX_HEAD_BYTES} bytes"))
            return
        self.status = status
        self.headers_done = True
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True
        self.expecting = False
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()
        if self.draining:
            self.chunks.clear()
            self.end_drain()

    # -- used by the pool and the response -------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the next event on this connection: bytes, the end of the response, or an error."""
        self.waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def _new_response(self) -> None:
        """What is known of the response to come: nothing yet."""
        self.buffered = 0
        self.status = 0
        self.head_bytes = 0
        self.header_bytes = 0
        self.headers_done = False
        self.delimited = False
        self.complete = False
        self.keep_alive = False
        self.received = False

    def send(self, request: bytes) -> None:
        self.expecting = True
        self.chunks.clear()
        self._new_response()
        assert self.transport is not None
        self.transport.write(request)

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    @property
    def usable(self) -> bool:
        return not self.closed and self.error is None and self.transport is not None and not self.transport.is_closing()

    def fail(self, error: HTTPClientError) -> None:
        if self.error is None:
            self.error = error
        self.abort()
        self._wake()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.end_drain()

    def drain(self, on_drained: Callable[[_Connection], None]) -> None:
        """Reads the rest of the response, discarding it, then calls on_drained (also when that fails)."""
        self.draining = True
        self.drained = 0
        self.chunks.clear()
        self.buffered = 0
        self.on_drained = on_drained
        self.drain_timer = self._loop.call_later(DRAIN_SECONDS, self.abort)
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def end_drain(self) -> None:
        if self.draining:
            self.draining = False
            if self.drain_timer is not None:
                self.drain_timer.cancel()
                self.drain_timer = None
            on_drained, self.on_drained = self.on_drained, None
            if on_drained is not None:
                on_drained(self)


class Response:
    """A response whose status and headers have arrived; its body is read with readany()/read(), and it ends with
    release() (its connection may be reused) or close() (its connection is closed)."""

    __slots__ = ("_connection", "_loop", "_pool", "status")

    def __init__(self, connection: _Connection, pool: ConnectionPool) -> None:
        self._connection: _Connection | None = connection
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.status = connection.status

    async def readany(self) -> bytes:
        """Whatever body bytes have arrived, waiting for some if none have; b"" at the end of the body. Raises
        ConnectionBroken when the body cannot be read to its end."""
        connection = self._connection
        if connection is None:
            return b""
        while not connection.chunks:
            if connection.complete:
                return b""
            if connection.error is not None:
                raise connection.error
            connection.waiter = waiter = self._loop.create_future()  # connection.wait(), without its frame
            try:
                await waiter
            finally:
                connection.waiter = None
        return connection.take()

    async def read(self, limit: int) -> bytes:
        """The body, or its first `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        while size < limit:
            data = await self.readany()
            if not data:
                break
            parts.append(data)
            size += len(data)
        return b"".join(parts)[:limit]

    def release(self) -> None:
        """Done with the response: its connection goes back to the pool once the response has ended."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._finished(connection)

    def close(self) -> None:
        """Done with the response, which may not have ended: its connection is closed at once."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()
            self._pool._finished(connection)


class ConnectionPool:
    """Keep-alive connections to one endpoint origin, at most `limit` of them open at a time.

    Every new connection resolves the host through the endpoint guard (GuardedResolver) and tries the allowed
    addresses in order, all within connect_timeout; https:// endpoints get TLS with the default verification
    (SSL_CERT_FILE and friends apply), through a CONNECT tunnel when a proxy is configured."""

    def __init__(
        self,
        url: str,
        *,
        limit: int,
        connect_timeout: float,
        resolver: GuardedResolver,
        environment: Environment | None = None,
        ssl_context: Callable[[], ssl.SSLContext] = ssl.create_default_context,
    ) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        try:
            self.port = parts.port or (443 if self.scheme == "https" else 80)
        except ValueError:
            self.port = 0
        self.environment = environment if environment is not None else Environment.read(url)
        self._limit = max(1, limit)
        self._connect_timeout = connect_timeout
        self._resolver = resolver
        self._ssl_context = ssl_context
        self._tls: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []
        self._active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._starts: dict[tuple[str, str], tuple[str, str | None]] = {}

    # -- requests -------------------------------------------------------------------------------

    def _start(self, method: str, url: str) -> tuple[str, str | None]:
        """The request line and Host header for a URL, and the Authorization its credentials make (if any)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.scheme != self.scheme:
            raise InvalidRequest(f"cannot request {parts.scheme}://{parts.hostname or ''}: not an http(s) URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InvalidRequest("the URL's port is not a number from 0 to 65535") from None
        if (parts.hostname, port) != (self.host, self.port):
            raise InvalidRequest("the URL is not on this pool's origin")
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            path += "?" + quote(parts.query, safe=_QUERY_SAFE)
        host = parts.netloc.rpartition("@")[2]
        proxied = self.environment.proxy_host is not None and self.scheme == "http"
        target = f"http://{host}{path}" if proxied else path
        authorization = None
        if parts.username is not None:
            authorization = _basic(unquote(parts.username), unquote(parts.password or ""))
        return f"{method} {_checked(target)} HTTP/1.1\r\nHost: {host}\r\n", authorization

    def _head(self, method: str, url: str, headers: Mapping[str, str]) -> bytes:
        """The request line and headers, without Content-Length."""
        key = (method, url)
        start = self._starts.get(key)
        if start is None:
            start = self._start(method, url)
            if len(self._starts) >= 64:  # a few URLs per endpoint; never unbounded
                self._starts.clear()
            self._starts[key] = start
        line, url_authorization = start
        environment = self.environment
        lines = [line]
        lines.extend(f"{_checked(name)}: {_checked(value)}\r\n" for name, value in headers.items())
        names = {name.lower() for name in headers}
        if "user-agent" not in names:
            lines.append(f"User-Agent: {USER_AGENT}\r\n")
        if "authorization" not in names:
            authorization = url_authorization or environment.netrc_authorization
            if authorization is not None:
                lines.append(f"Authorization: {authorization}\r\n")
        if environment.proxy_authorization is not None and environment.proxy_host and self.scheme == "http":
            lines.append(f"Proxy-Authorization: {environment.proxy_authorization}\r\n")
        return "".join(lines).encode("utf-8")

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        """Sends the request and returns once the response's status and headers have arrived. A reused connection
        that turns out closed before answering is replaced by a new one, once, at once."""
        head = self._head(method, url, headers)
        if body or method not in ("GET", "HEAD"):
            request = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        else:
            request = head + b"\r\n"
        fresh = False
        while True:
            connection = await self._acquire(fresh)
            try:
                connection.send(request)
                while not connection.headers_done:
                    if connection.error is not None:
                        raise connection.error
                    await connection.wait()
            except ConnectionBroken:
                connection.abort()
                self._finished(connection)
                if connection.reused and not connection.received and not fresh:
                    fresh = True  # the server closed it while it was idle: nothing was answered, so try again
                    continue
                raise
            except BaseException:
                connection.abort()
                self._finished(connection)
                raise
            return Response(connection, self)

    # -- the pool -------------------------------------------------------------------------------

    async def _acquire(self, fresh: bool) -> _Connection:
        loop = asyncio.get_running_loop()
        while self._active >= self._limit:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # the slot it was woken for goes to the next waiter
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self._active += 1
        try:
            if not fresh:
                now = loop.time()
                while self._idle:
                    connection = self._idle.pop()
                    if connection.usable and now - connection.idle_since < IDLE_SECONDS:
                        connection.reused = True
                        return connection
                    connection.abort()
            while self._idle and len(self._idle) + self._active > self._limit:
                self._idle.pop(0).abort()
            return await self._connect()
        except BaseException:
            self._active -= 1
            self._wake_one()
            raise

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _finished(self, connection: _Connection) -> None:
        """A request's connection is done with: kept when its response ended cleanly, else closed."""
        if connection.draining:
            return  # already on its way back
        if connection.usable and not self._closed:
            if connection.complete:
                if connection.keep_alive:
                    self._keep(connection)
                    return
            elif connection.headers_done:
                # The reader stopped at the end of what it wanted (the SSE [DONE]); the rest of the body, if short
                # and quick, is read before the connection joins the idle ones. Its slot is free meanwhile.
                connection.drain(self._drained)
                self._release_slot()
                return
        connection.abort()
        self._release_slot()

    def _drained(self, connection: _Connection) -> None:
        usable = connection.complete and connection.keep_alive and connection.usable and not self._closed
        if usable and len(self._idle) + self._active < self._limit:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
            return
        connection.abort()

    def _keep(self, connection: _Connection) -> None:
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)
        self._release_slot()

    def _release_slot(self) -> None:
        self._active -= 1
        self._wake_one()

    async def _connect(self) -> _Connection:
        environment = self.environment
        tls = self.scheme == "https"
        if tls and self._tls is None:
            self._tls = self._ssl_context()
        host, port = (
            (environment.proxy_host, environment.proxy_port)
            if environment.proxy_host is not None
            else (self.host, self.port)
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                addresses = [resolved["host"] for resolved in await self._resolver.resolve(host, port)]
                direct_tls = self._tls if tls and environment.proxy_host is None else None
                connection = await self._open(addresses, port, direct_tls, host)
                if tls and environment.proxy_host is not None:
                    try:
                        await self._tunnel(connection)
                    except BaseException:
                        connection.abort()
                        raise
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {host}:{port} within {self._connect_timeout:g} s") from None
        return connection

    async def _open(self, addresses: list[str], port: int, tls: ssl.SSLContext | None, host: str) -> _Connection:
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for address in addresses:
            try:
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), address, port, ssl=tls, server_hostname=host if tls else None
                )
            except OSError as exc:
                last = exc
                continue
            return connection
        raise ConnectionBroken(f"cannot connect to {_authority(host, port)}: {last}")

    async def _tunnel(self, connection: _Connection) -> None:
        """CONNECT to the endpoint through the proxy, then TLS inside the tunnel."""
        authority = _authority(self.host, self.port)
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if self.environment.proxy_authorization is not None:
            lines.append(f"Proxy-Authorization: {self.environment.proxy_authorization}")
        reply = connection.tunnel_reply = bytearray()
        assert connection.transport is not None
        connection.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in reply:
            if connection.closed or len(reply) > MAX_HEAD_BYTES:
                raise ConnectionBroken(f"the proxy {self.environment.proxy_host} gave no answer to CONNECT")
            await connection.wait()
        status_line = bytes(reply.split(b"\r\n", 1)[0])
        fields = status_line.split(None, 2)
        if len(fields) < 2 or fields[1] != b"200" or reply.index(b"\r\n\r\n") + 4 != len(reply):
            raise ConnectionBroken(
                f"the proxy {self.environment.proxy_host} refused to connect to {authority}: "
                f"{status_line[:100].decode('latin-1')}"
            )
        connection.tunnel_reply = None
        assert self._tls is not None
        transport = await asyncio.get_running_loop().start_tls(
            connection.transport, connection, self._tls, server_hostname=self.host
        )
        if transport is None:
            raise ConnectionBroken(f"the tunnel to {authority} closed during the TLS handshake")
        connection.transport = transport

    async def close(self) -> None:
        """Closes every connection: idle ones now, busy ones when their response is done with."""
        self._closed = True
        for connection in self._idle:
            connection.abort()
        self._idle.clear()


def _authority(host: str, port: int) -> str:
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"
