"""backtrans.http1 against real servers on 127.0.0.1 that the tests script byte for byte.

Each test starts an asyncio server in its own event loop: what it sends back, how it splits it, and when it closes
are the test's to decide, and what it received is there to check.
"""

import asyncio
import datetime
import gzip
import socket
import ssl
import struct
import zlib
from dataclasses import dataclass

import pytest

from backtrans import http1


def run(scenario):
    """Run one async scenario; a hang fails the test instead of blocking the suite."""
    return asyncio.run(asyncio.wait_for(scenario(), 15))


@dataclass
class Request:
    number: int  # which connection it came on, from 1
    line: str
    head: list[str]  # the header lines as sent
    headers: dict[str, str]  # lower-case names
    body: bytes


class Conn:
    """The server's side of one accepted connection."""

    def __init__(self, server, number, reader, writer):
        self.server, self.number, self.reader, self.writer = server, number, reader, writer

    async def request(self) -> Request | None:
        """The next request, or None when the client ended the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.server.ended.append(self.number)
            return None
        lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        request = Request(self.number, lines[0], lines[1:], headers, body)
        self.server.requests.append(request)
        self.server.arrived.set()
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_client_ends(self) -> None:
        """Wait for the client to close its end (EOF or reset), and record it."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.server.ended.append(self.number)

    def reset(self) -> None:
        """End the connection with a TCP reset rather than a FIN."""
        self.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


class Server:
    """`async with Server(handler) as server`: `handler(conn)` runs for every accepted connection."""

    def __init__(self, handler, host="127.0.0.1", ssl_context=None):
        self.handler, self.host, self.ssl_context = handler, host, ssl_context
        self.accepted = 0
        self.open = self.max_open = 0
        self.requests: list[Request] = []
        self.ended: list[int] = []  # connections the client closed, in order
        self.arrived = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info):
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def url(self, path="/v1/chat", host=None, scheme="http"):
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    async def _serve(self, reader, writer):
        self.tasks.add(asyncio.current_task())
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(Conn(self, self.accepted, reader, writer))
        except (asyncio.CancelledError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # torn down by the test, or by the client
        finally:
            self.open -= 1
            writer.close()


def reply(body=b"ok", status="200 OK", headers=()):
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n".encode()
            + b"".join(f"{line}\r\n".encode() for line in headers) + b"\r\n" + body)


def keep_alive(delay=0.0, body=None):
    """A well-behaved keep-alive server: every request answered on the connection it came on."""

    async def handler(conn):
        while (request := await conn.request()) is not None:
            if delay:
                await asyncio.sleep(delay)
            await conn.send(reply(body if body is not None else b"echo:" + request.body,
                                  headers=[f"X-Connection: {conn.number}"]))

    return handler


def pool_for(url, headers=None, **kwargs):
    kwargs.setdefault("connect_timeout", 5)
    kwargs.setdefault("read_timeout", 5)
    return http1.Pool(url, headers or {}, **kwargs)


def posts(handler, *bodies, path="/v1/chat", host=None, **pool_kwargs):
    """Each body POSTed in turn, on one pool, to a server running `handler`: (the replies, the pool, the server).

    It returns once the pool is closed and the server stopped, so what they recorded is complete. A post that
    raises still closes both, and its exception comes out of here for the test's `pytest.raises`.
    """

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url(path, host), **pool_kwargs)
            try:
                return [await pool.post(body) for body in bodies], pool, server
            finally:
                await pool.close()

    return run(scenario)


# --- keep-alive, the request, the reply ------------------------------------------------------------------------


def test_sequential_posts_reuse_one_connection_and_send_host_length_headers_and_the_exact_body():
    async def handler(conn):
        while (request := await conn.request()) is not None:
            await conn.send(reply(b"answer to " + request.body,
                                  headers=["X-Mixed-Case: Value", "X-Dup: first", "X-Dup: last"]))

    bodies = [b'{"n": %d}' % i for i in range(4)]
    replies, pool, server = posts(handler, *bodies, path="/v1/chat/completions?api-version=1",
                                  headers={"Authorization": "Bearer sk-test", "Content-Type": "application/json"})
    assert [r.status for r in replies] == [200] * 4
    assert [r.body for r in replies] == [b"answer to " + body for body in bodies]
    assert replies[0].headers["x-mixed-case"] == "Value" and replies[0].headers["x-dup"] == "last"
    assert all(name == name.lower() for name in replies[0].headers)
    assert pool.connections_made == 1 and server.accepted == 1
    assert [r.body for r in server.requests] == bodies and {r.number for r in server.requests} == {1}
    first = server.requests[0]
    assert first.line == "POST /v1/chat/completions?api-version=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in first.head
    assert "Authorization: Bearer sk-test" in first.head and "Content-Type: application/json" in first.head
    assert f"Content-Length: {len(bodies[0])}" in first.head
    assert "accept-encoding" not in first.headers  # it asks for no compression (and decodes it if it comes)


def test_an_empty_body_is_sent_with_content_length_zero_and_the_path_defaults_to_slash():
    (answer,), _, server = posts(keep_alive(), b"", path="")  # the URL is just http://127.0.0.1:port
    assert answer.body == b"echo:"
    assert server.requests[0].line == "POST / HTTP/1.1" and "Content-Length: 0" in server.requests[0].head


def test_error_and_redirect_statuses_are_returned_as_replies_not_raised_or_followed():
    async def handler(conn):
        await conn.request()
        await conn.send(reply(b'{"error": "busy"}', "503 Service Unavailable", ["Retry-After: 2"]))
        await conn.request()
        await conn.send(reply(b"", "302 Found", ["Location: http://127.0.0.1:9/elsewhere"]))
        await conn.until_client_ends()

    (busy, moved), _, server = posts(handler, b"a", b"b")
    assert (busy.status, busy.body, busy.headers["retry-after"]) == (503, b'{"error": "busy"}', "2")
    assert (moved.status, moved.headers["location"]) == (302, "http://127.0.0.1:9/elsewhere")
    assert server.accepted == 1 and len(server.requests) == 2


def test_a_reply_trickled_a_few_bytes_at_a_time_is_parsed_and_each_gap_is_within_read_timeout():
    whole = reply(b"x" * 40, headers=["X-Long-Header-Name: " + "v" * 30])

    async def handler(conn):
        await conn.request()
        for i in range(0, len(whole), 5):  # ~25 pieces, 0.03 s apart: far longer in all than read_timeout
            await conn.send(whole[i:i + 5])
            await asyncio.sleep(0.03)
        await conn.until_client_ends()

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url(), read_timeout=0.4)
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await pool.post(b"q")
            took = loop.time() - started
            await pool.close()
        assert answer.status == 200 and answer.body == b"x" * 40 and answer.headers["x-long-header-name"] == "v" * 30
        assert took > 0.4  # the whole reply took longer than read_timeout: it bounds each wait, not the total

    run(scenario)


# --- how many connections ----------------------------------------------------------------------------------------


def test_limit_bounds_the_connections_open_at_once_and_they_are_reused():
    async def scenario():
        async with Server(keep_alive(delay=0.15)) as server:
            pool = pool_for(server.url(), limit=2)
            replies = await asyncio.gather(*(pool.post(b"%d" % i) for i in range(5)))
            open_at_most = server.max_open
            await pool.close()
        assert sorted(r.body for r in replies) == [b"echo:%d" % i for i in range(5)]
        assert open_at_most == 2  # two at once (the limit is reached), never three
        assert pool.connections_made == 2 and server.accepted == 2

    run(scenario)


def test_a_connection_idle_past_keepalive_s_is_closed_and_a_new_one_made():
    async def scenario():
        async with Server(keep_alive()) as server:
            pool = pool_for(server.url(), keepalive_s=0.2)
            await pool.post(b"a")
            await asyncio.sleep(0.5)
            answer = await pool.post(b"b")
            await asyncio.sleep(0.05)
            ended = list(server.ended)
            await pool.close()
        assert answer.headers["x-connection"] == "2" and pool.connections_made == 2
        assert ended == [1]  # the expired connection was closed, not left open on the server

    run(scenario)


# --- connections the server ends ---------------------------------------------------------------------------------


def test_a_reused_connection_the_server_closed_while_idle_is_retried_once_on_a_new_one():
    async def handler(conn):
        if conn.number == 1:
            await conn.request()
            await conn.send(reply(b"first"))
            await conn.request()  # the next request meets a server that has given up on this connection
            return  # closed without one byte of a reply
        await keep_alive()(conn)

    (_, answer), pool, server = posts(handler, b"one", b"two")
    assert answer.body == b"echo:two" and answer.headers["x-connection"] == "2"
    assert pool.connections_made == 2 and server.accepted == 2
    assert [(r.number, r.body) for r in server.requests] == [(1, b"one"), (1, b"two"), (2, b"two")]


def test_a_connection_the_server_closed_while_idle_is_set_aside_and_the_next_post_opens_another():
    async def handler(conn):
        await conn.request()
        await conn.send(reply(b"only one", headers=["Connection: keep-alive"]))
        if conn.number == 1:
            return  # closes the connection while the client holds it idle
        await keep_alive()(conn)

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url())
            await pool.post(b"one")
            await asyncio.sleep(0.1)  # the close reaches the client
            answer = await pool.post(b"two")
            await pool.close()
        assert answer.body == b"only one" and pool.connections_made == 2
        assert [(r.number, r.body) for r in server.requests] == [(1, b"one"), (2, b"two")]

    run(scenario)


def test_a_retry_that_also_meets_a_closed_connection_raises_closed_early_and_is_not_retried_again():
    async def handler(conn):
        await conn.request()
        if conn.number == 1:
            await conn.send(reply())
            await conn.request()
        # and every later connection is closed as soon as its request arrives

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url())
            await pool.post(b"one")
            with pytest.raises(http1.ClosedEarly) as failure:
                await pool.post(b"two")
            await asyncio.sleep(0.05)
            await pool.close()
        assert failure.value.sent_nothing and isinstance(failure.value, ConnectionError)
        assert pool.connections_made == 2 and server.accepted == 2
        assert [r.body for r in server.requests] == [b"one", b"two", b"two"]

    run(scenario)


def test_a_fresh_connection_closed_before_any_reply_raises_closed_early_without_a_retry():
    async def handler(conn):
        await conn.request()

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url())
            with pytest.raises(http1.ClosedEarly) as failure:
                await pool.post(b"x")
            await asyncio.sleep(0.05)
            await pool.close()
        assert failure.value.sent_nothing
        assert pool.connections_made == 1 and server.accepted == 1 and len(server.requests) == 1

    run(scenario)


def test_a_connection_closed_part_way_through_a_reply_raises_closed_early_and_is_not_retried():
    async def handler(conn):
        await conn.request()
        await conn.send(reply(b"first"))
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")  # 3 of its 10 bytes, then the end

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url())
            await pool.post(b"one")
            with pytest.raises(http1.ClosedEarly) as failure:
                await pool.post(b"two")  # on the reused connection: a retry would be allowed if nothing had come
            await asyncio.sleep(0.05)
            await pool.close()
        assert not failure.value.sent_nothing
        assert pool.connections_made == 1 and server.accepted == 1
        assert [r.body for r in server.requests] == [b"one", b"two"]  # the server saw it once

    run(scenario)


def test_a_malformed_reply_is_a_connection_error_and_its_connection_is_dropped():
    async def handler(conn):
        await conn.request()
        if conn.number == 1:
            await conn.send(b"this is not HTTP\r\n\r\n")
            await conn.until_client_ends()
        else:
            await conn.send(reply(b"fine"))
            await conn.until_client_ends()

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url())
            with pytest.raises(ConnectionError, match="malformed HTTP reply") as failure:
                await pool.post(b"x")
            answer = await pool.post(b"y")
            await pool.close()
        assert not isinstance(failure.value, http1.ClosedEarly)
        assert answer.body == b"fine" and pool.connections_made == 2 and server.ended[0] == 1

    run(scenario)


def test_bytes_arriving_on_an_idle_connection_make_it_unusable_and_the_next_post_opens_another():
    async def handler(conn):
        await conn.request()
        await conn.send(reply(b"first"))
        if conn.number == 1:
            await asyncio.sleep(0.05)
            await conn.send(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")  # nobody asked
            await conn.until_client_ends()

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url())
            await pool.post(b"one")
            while 1 not in server.ended:  # the client hung up on the unasked-for bytes
                await asyncio.sleep(0.01)
            answer = await pool.post(b"two")
            await pool.close()
        assert answer.status == 200 and pool.connections_made == 2
        assert [(r.number, r.body) for r in server.requests] == [(1, b"one"), (2, b"two")]

    run(scenario)


# --- timeouts and cancelling ----------------------------------------------------------------------------------


def test_a_server_that_never_answers_raises_timeout_error_after_read_timeout_and_its_connection_is_closed():
    async def handler(conn):
        await conn.request()
        await conn.until_client_ends()

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url(), read_timeout=0.3)
            with pytest.raises(TimeoutError, match=r"no reply within 0\.3s"):
                await pool.post(b"x")
            await asyncio.sleep(0.05)
            ended = list(server.ended)
            await pool.close()
        assert ended == [1] and pool.connections_made == 1

    run(scenario)


def test_a_server_that_stops_part_way_through_a_reply_raises_timeout_error():
    async def handler(conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        await conn.until_client_ends()

    with pytest.raises(TimeoutError, match="no reply within"):  # the match tells it from run()'s own timeout
        posts(handler, b"x", read_timeout=0.3)


def test_cancelling_a_post_in_flight_closes_its_connection_and_the_next_post_uses_a_fresh_one():
    async def handler(conn):
        if conn.number == 1:
            await conn.request()
            await conn.until_client_ends()  # holds the reply: the client gives up first
        else:
            await keep_alive()(conn)

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url())
            pending = asyncio.create_task(pool.post(b"abandoned"))
            await server.arrived.wait()
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            while 1 not in server.ended:
                await asyncio.sleep(0.01)
            answer = await pool.post(b"next")
            await pool.close()
        assert answer.body == b"echo:next" and answer.headers["x-connection"] == "2"
        assert pool.connections_made == 2

    run(scenario)


# --- how the reply's body is framed and encoded -----------------------------------------------------------------


def test_a_chunked_reply_is_reassembled_and_its_connection_reused():
    async def handler(conn):
        while await conn.request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"hello, ", b"chunked ", b"world"):
                await conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                await asyncio.sleep(0.01)
            await conn.send(b"0\r\n\r\n")

    (first, second), pool, server = posts(handler, b"a", b"b")
    assert first.body == second.body == b"hello, chunked world"
    assert pool.connections_made == 1 and server.accepted == 1


def test_a_close_delimited_reply_is_read_to_the_end_and_its_connection_not_reused():
    async def handler(conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await asyncio.sleep(0.02)
        await conn.send(b"part two")

    (first, second), pool, server = posts(handler, b"a", b"b")
    assert first.body == second.body == b"part one, part two" and first.status == 200
    assert pool.connections_made == 2 and server.accepted == 2


def test_a_connection_close_reply_with_a_length_is_not_reused():
    async def handler(conn):
        await conn.request()
        await conn.send(reply(b"bye", headers=["Connection: close"]))
        await conn.until_client_ends()

    _, pool, server = posts(handler, b"a", b"b")
    assert pool.connections_made == 2 and server.ended[0] == 1


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),  # raw, as some servers send it
])
def test_a_compressed_reply_is_decoded(encoding, encode):
    original = b'{"choices": [{"text": "' + b"compressible " * 50 + b'"}]}'

    async def handler(conn):
        while await conn.request() is not None:
            await conn.send(reply(encode(original), headers=[f"Content-Encoding: {encoding}"]))

    (answer, again), pool, _ = posts(handler, b"a", b"b")
    assert answer.body == again.body == original and pool.connections_made == 1


def test_a_reply_that_does_not_decompress_is_a_connection_error():
    async def handler(conn):
        await conn.request()
        await conn.send(reply(b"not gzip at all", headers=["Content-Encoding: gzip"]))
        await conn.until_client_ends()

    async def scenario():
        async with Server(handler) as server:
            pool = pool_for(server.url())
            with pytest.raises(ConnectionError, match="does not decompress"):
                await pool.post(b"a")
            await asyncio.sleep(0.05)
            ended = list(server.ended)
            await pool.close()
        assert ended == [1]

    run(scenario)


# --- where it connects ------------------------------------------------------------------------------------------


def test_the_answers_hook_decides_the_addresses_and_the_host_header_keeps_the_urls_name():
    asked = []

    async def answers(host, port):
        asked.append((host, port))
        return [(socket.AF_INET, "127.0.0.1")]

    _, _, server = posts(keep_alive(), b"a", b"b", host="api.backtrans-test.invalid", answers=answers)
    assert asked == [("api.backtrans-test.invalid", server.port)]  # once: the connection was reused
    assert f"Host: api.backtrans-test.invalid:{server.port}" in server.requests[0].head


def test_the_answers_are_tried_in_order_until_one_connects():
    async def answers(host, port):
        return [(socket.AF_INET, "127.0.0.2"), (socket.AF_INET, "127.0.0.1")]  # nothing listens on .2

    (answer,), pool, _ = posts(keep_alive(), b"a", host="localhost", answers=answers)
    assert answer.body == b"echo:a" and pool.connections_made == 1


def test_no_address_from_the_answers_hook_is_a_connection_error_and_nothing_is_dialled():
    async def nothing(host, port):
        return []

    async def refused(host, port):
        return [(socket.AF_INET, "127.0.0.2")]

    async def scenario():
        async with Server(keep_alive()) as server:
            pool = pool_for(server.url(host="localhost"), answers=nothing)
            with pytest.raises(ConnectionError, match="no address"):
                await pool.post(b"a")
            refusing = pool_for(server.url(host="localhost"), answers=refused)
            with pytest.raises(ConnectionRefusedError):
                await refusing.post(b"a")
        assert server.accepted == 0 and pool.connections_made == refusing.connections_made == 0

    run(scenario)


def test_an_exception_from_the_answers_hook_reaches_the_caller():
    class Refused(Exception):
        pass

    async def guard(host, port):
        raise Refused(host)

    async def scenario():
        async with Server(keep_alive()) as server:
            pool = pool_for(server.url(host="internal.backtrans-test.invalid"), answers=guard)
            with pytest.raises(Refused, match="internal.backtrans-test.invalid"):
                await pool.post(b"a")
        assert server.accepted == 0

    run(scenario)


def test_an_ip_literal_url_connects_without_the_resolver():
    async def scenario():
        loop = asyncio.get_running_loop()

        async def no_resolver(*args, **kwargs):
            raise AssertionError(f"getaddrinfo{args} called for an IP literal")

        loop.getaddrinfo = no_resolver
        async with Server(keep_alive()) as server:
            pool = pool_for(server.url())
            answer = await pool.post(b"a")
            await pool.close()
        assert answer.body == b"echo:a"

    run(scenario)


def test_an_ipv6_literal_url_connects_and_brackets_its_host_header():
    async def scenario():
        async with Server(keep_alive(), host="::1") as server:
            pool = pool_for(f"http://[::1]:{server.port}/v1")
            answer = await pool.post(b"six")
            await pool.close()
        assert answer.body == b"echo:six" and f"Host: [::1]:{server.port}" in server.requests[0].head

    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 here")
    run(scenario)


def test_a_refused_connection_is_an_os_error():
    async def scenario():
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # a port nothing listens on
        pool = pool_for(f"http://127.0.0.1:{port}/")
        with pytest.raises(ConnectionRefusedError):
            await pool.post(b"a")

    run(scenario)


# --- what Pool refuses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"X-Evil": "a\r\nInjected: 1"},
    {"X-Evil": "a\nInjected: 1"},
    {"X-Evil\r\nInjected": "1"},
])
def test_a_header_with_a_line_break_is_refused(headers):
    with pytest.raises(ValueError, match="line break"):
        http1.Pool("http://127.0.0.1:8000/v1", headers, connect_timeout=1, read_timeout=1)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/v1", "127.0.0.1:8000/v1", "http:///v1", "file:///etc/passwd"])
def test_a_url_that_is_not_http_with_a_host_is_refused(url):
    with pytest.raises(ValueError, match="not an http"):
        http1.Pool(url, {}, connect_timeout=1, read_timeout=1)


def test_a_header_value_outside_latin_1_is_refused_as_a_value_error():
    with pytest.raises(ValueError):
        http1.Pool("http://127.0.0.1:8000/v1", {"Authorization": "Bearer \u2603"}, connect_timeout=1,
                   read_timeout=1)


# --- TLS --------------------------------------------------------------------------------------------------------


def _certificates(tmp_path):
    """A CA and a certificate for `localhost` it signed, as PEM files: (ca, cert, key)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject, issuer, public_key, signing_key, *extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(hours=1)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backtrans test CA")])
    ca = certificate(ca_name, ca_name, ca_key.public_key(), ca_key,
                     (x509.BasicConstraints(ca=True, path_length=None), True))
    leaf = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), ca_name,
                       key.public_key(), ca_key, (x509.SubjectAlternativeName([x509.DNSName("localhost")]), False))
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_connects_to_the_hooks_address_and_verifies_the_urls_host(tmp_path):
    ca, cert, key = _certificates(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    names = []
    server_context.sni_callback = lambda sock, name, context: names.append(name)
    client_context = ssl.create_default_context(cafile=str(ca))

    async def loopback(host, port):
        return [(socket.AF_INET, "127.0.0.1")]

    async def scenario():
        async with Server(keep_alive(), ssl_context=server_context) as server:
            pool = pool_for(server.url(host="localhost", scheme="https"), answers=loopback,
                            ssl_context=client_context)
            first = await pool.post(b"secret")
            second = await pool.post(b"again")
            await pool.close()
            # The same address under a name the certificate does not hold: verification fails.
            wrong = pool_for(server.url(host="other.backtrans-test.invalid", scheme="https"), answers=loopback,
                             ssl_context=client_context)
            with pytest.raises(ssl.SSLCertVerificationError):
                await wrong.post(b"x")
        assert (first.body, second.body) == (b"echo:secret", b"echo:again") and pool.connections_made == 1
        assert names[0] == "localhost" and f"Host: localhost:{server.port}" in server.requests[0].head
        assert [r.body for r in server.requests] == [b"secret", b"again"]  # nothing reached it over the bad one

    run(scenario)


def test_an_https_url_without_a_context_verifies_against_the_system_store():
    pool = http1.Pool("https://127.0.0.1:8443/v1", {}, connect_timeout=1, read_timeout=1)
    assert pool.port == 8443 and pool.ssl_context.verify_mode == ssl.CERT_REQUIRED and pool.ssl_context.check_hostname
    assert http1.Pool("http://127.0.0.1/v1", {}, connect_timeout=1, read_timeout=1).ssl_context is None


# --- once wrong (found while these tests were written) ---------------------------------------------------------


@pytest.mark.parametrize("interim", [b"HTTP/1.1 100 Continue\r\n\r\n",
                                     b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"],
                         ids=["100-continue", "103-early-hints"])
def test_an_interim_1xx_response_is_skipped_for_the_final_one(interim):
    async def handler(conn):
        await conn.request()
        await conn.send(interim + reply(b"final", headers=["X-Final: yes"]))
        await conn.until_client_ends()

    (answer,), _, _ = posts(handler, b"a")
    assert (answer.status, answer.body, answer.headers.get("x-final")) == (200, b"final", "yes")


def test_a_close_delimited_reply_cut_off_by_a_reset_is_an_error_not_a_short_body():
    async def handler(conn):
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"choices\": [")
        await asyncio.sleep(0.1)  # the client has read that much
        conn.reset()

    with pytest.raises(http1.ClosedEarly) as failure:
        posts(handler, b"a")
    assert not failure.value.sent_nothing


def test_bytes_past_the_end_of_a_reply_in_the_same_read_do_not_break_the_next_request():
    answered: list[bytes] = []

    async def handler(conn):
        while await conn.request() is not None:
            if not answered:  # the first reply ever carries the start of one nobody asked for
                answered.append(b"ok")
                await conn.send(reply(b"ok") + b"HTTP/1.1 200 OK\r\nX-Stray: 1\r\n")
            else:
                answered.append(b"second")
                await conn.send(reply(b"second"))

    (first, second), pool, _ = posts(handler, b"a", b"b")
    assert (first.body, second.body) == (b"ok", b"second") and "x-stray" not in first.headers
    assert pool.connections_made == 2  # the connection that got out of step was not used again


# --- through the LLM client ---------------------------------------------------------------------------------------


def test_the_lean_llm_client_makes_its_calls_over_fewer_connections_than_calls(fake_llm):
    from backtrans.llm import LLMClient, LLMSettings, _LeanTransport

    async def scenario():
        client = LLMClient(LLMSettings(base_url=fake_llm.url, model="fake", concurrency=2, hedge=False,
                                       max_retries=0, api_key="sk-http1-test"))
        transport = client.transport
        try:
            assert isinstance(transport, _LeanTransport) and transport.direct  # the http1 path, not aiohttp
            completions = await asyncio.gather(*(client.chat(f"Score this [[score={i % 5 + 1}]]") for i in range(8)))
            made = transport.pool.connections_made
        finally:
            await client.close()
        return completions, made

    completions, made = run(scenario)
    assert [c.text[-1] for c in completions] == [str(i % 5 + 1) for i in range(8)]
    assert fake_llm.requests == 8 and fake_llm.api_keys["sk-http1-test"] == 8
    assert made == fake_llm.connections and 1 <= fake_llm.connections <= 2
