"""A keep-alive HTTP/1.1 client for one thing: POST a JSON body to one origin and read the whole reply.

Every judged row is one such request. With many jobs on one server, aiohttp's general machinery (a request
object, header multidicts, tracing, cookies, timers per call) was the largest share of the app's CPU per row
(docs/benchmarks.md); this does the same exchange on asyncio's protocol layer with httptools (llhttp, the parser
uvicorn uses) at a fraction of the cost. What it does not do, the caller does elsewhere: no redirects (the reply is
returned as it is), no proxies, no cookies, no streaming.

- Connections are kept alive and reused, up to `limit` at once; one idle past `keepalive_s` is closed.
- A reused connection the server had already closed fails before any byte of a reply: that request is sent once
  more on a new connection (the server never saw it), as browsers and urllib3 do.
- `connect_timeout` bounds resolving and connecting; `read_timeout` bounds each wait for bytes of the reply.
- `answers(host, port)` gives the addresses to connect to: the egress guard's checked ones on a Space. The
  connection goes to exactly those addresses, never to the name again, and TLS still verifies the URL's host.
- A cancelled request closes its connection: a half-read reply is never left on a connection in the pool.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httptools

Answers = Callable[[str, int], Awaitable[list[tuple[int, str]]]]
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


class ClosedEarly(ConnectionError):
    """The connection ended before the reply did. `sent_nothing`: not one byte of a reply had arrived."""

    def __init__(self, message: str, sent_nothing: bool):
        super().__init__(message)
        self.sent_nothing = sent_nothing


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: one request at a time, its reply parsed as it arrives."""

    def __init__(self, read_timeout: float | None):
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = time.monotonic()
        self.exchanges = 0  # replies read on this connection
        self._reply: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.received = False
        self.done = False  # this exchange's reply is complete: any message after it is bytes nobody asked for

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._reply is None or self._reply.done():  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        self.received = True
        self._arm_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP reply: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        reply = self._reply
        if reply is None or reply.done():
            return
        if exc is None and self.status and "content-length" not in self.headers \
                and "transfer-encoding" not in self.headers:
            self._finish(keep_alive=False)  # a reply whose end is the end of the connection (a reset is no end)
            return
        self._fail(ClosedEarly("the server closed the connection" + (f" ({exc})" if exc else ""),
                               sent_nothing=not self.received))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.done:  # more bytes after the reply, in the same read: the connection is out of step
            self.close()
        self.headers, self.body = {}, []  # never into the dict of a reply already returned

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200 and self.status != 101:
            self.status = 0  # an interim reply (100 Continue, 103 Early Hints): the final one follows
            return
        if not self.done:
            self._finish(keep_alive=self.parser.should_keep_alive())

    # the exchange

    async def exchange(self, request: bytes) -> Reply:
        loop = asyncio.get_running_loop()
        self._reset()
        self._reply = reply = loop.create_future()
        self.transport.write(request)
        self._arm_timer()
        try:
            return await reply
        finally:
            self._reply = None
            self._cancel_timer()

    def _finish(self, keep_alive: bool) -> None:
        self.done = True
        self._cancel_timer()
        self.exchanges += 1
        body = b"".join(self.body)
        encoding = self.headers.get("content-encoding", "").lower()
        try:
            if encoding in ("gzip", "x-gzip"):
                body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
            elif encoding == "deflate":
                body = _inflate(body)
        except zlib.error as exc:
            self._fail(ConnectionError(f"a reply that does not decompress ({encoding}): {exc}"))
            self.close()
            return
        if not keep_alive:
            self.close()
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(Reply(self.status, self.headers, body))

    def _fail(self, error: BaseException) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(error)

    def _arm_timer(self) -> None:
        if self.read_timeout is None:
            return
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(self.read_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError(f"no reply within {self.read_timeout:g}s"))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Keep-alive connections to the origin of `url`, for POSTs to its path."""

    def __init__(self, url: str, headers: dict[str, str], *, connect_timeout: float | None,
                 read_timeout: float | None, limit: int = 100, keepalive_s: float = 30.0,
                 answers: Answers | None = None, ssl_context: ssl.SSLContext | None = None):
        parts = urllib.parse.urlsplit(url)
        self.scheme = parts.scheme.lower()
        if self.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("not an http(s) URL with a host")
        self.host = parts.hostname
        self.port = parts.port or _DEFAULT_PORTS[self.scheme]
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port and parts.port != _DEFAULT_PORTS[self.scheme]:
            host_header += f":{parts.port}"
        lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}",
                 *(f"{name}: {value}" for name, value in headers.items())]
        if any(c in line for line in lines for c in "\r\n"):
            raise ValueError("a header or the URL holds a line break")
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.keepalive_s = keepalive_s
        self.answers = answers or _resolve
        self.ssl_context = ssl_context if ssl_context is not None else (
            _default_tls() if self.scheme == "https" else None)
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(limit)
        self._open: set[_Connection] = set()
        self.connections_made = 0

    async def post(self, body: bytes) -> Reply:
        request = self._head + str(len(body)).encode() + b"\r\n\r\n" + body
        async with self._slots:
            connection = self._idle_connection()
            if connection is not None:
                try:
                    return await self._exchange(connection, request)
                except ClosedEarly as exc:
                    if not exc.sent_nothing:
                        raise
                    # closed by the server while idle: it never read this request
            return await self._exchange(await self._connect(), request)

    async def _exchange(self, connection: _Connection, request: bytes) -> Reply:
        try:
            reply = await connection.exchange(request)
        except BaseException:  # a cancelled or failed request leaves its connection unusable
            connection.close()
            self._open.discard(connection)
            raise
        if connection.closed:
            self._open.discard(connection)
        else:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        return reply

    def _idle_connection(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to have been closed
            if not connection.closed and now - connection.idle_since < self.keepalive_s:
                return connection
            connection.close()
            self._open.discard(connection)
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        error: BaseException = ConnectionError("the endpoint's host has no address")
        async with asyncio.timeout(self.connect_timeout):
            for family, address in await self.answers(self.host, self.port):
                try:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self.read_timeout), address, self.port, family=family,
                        ssl=self.ssl_context, server_hostname=self.host if self.ssl_context else None)
                except OSError as exc:
                    error = exc
                    continue
                self.connections_made += 1
                self._open.add(connection)
                return connection
        raise error

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()


def _inflate(body: bytes) -> bytes:
    """`deflate` as the RFC says (zlib-wrapped), or raw, as some servers send it."""
    try:
        return zlib.decompress(body)
    except zlib.error:
        return zlib.decompress(body, -zlib.MAX_WBITS)


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """One verifying context for every pool: loading the CA bundle costs milliseconds, and a job makes a pool."""
    return ssl.create_default_context()


async def _resolve(host: str, port: int) -> list[tuple[int, str]]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # nothing to look up: no trip through the resolver's thread pool for each new connection
        return [(socket.AF_INET6 if literal.version == 6 else socket.AF_INET, str(literal))]
    answers: list[tuple[int, str]] = []
    loop = asyncio.get_running_loop()
    for family, _, _, _, sockaddr in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if (family, sockaddr[0]) not in answers:
            answers.append((family, sockaddr[0]))
    return answers
