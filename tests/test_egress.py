"""No server-side request forgery: the rule on addresses, the allow list, and the guard inside both HTTP clients.

The internal service is a fake OpenAI-compatible server on loopback (IPv4 and IPv6, one port) that counts the
TCP connections it accepts: a guard must refuse before it connects, so the count stays 0.
"""

import asyncio
import http.server
import socket
import threading

import pytest

from backtrans import egress
from backtrans.llm import NO_REDIRECTS, LLMClient, LLMError, LLMSettings
from tests.fakellm import FakeLLM

TRANSPORTS = ["lean", "openai-httpx"]  # the aiohttp client and the openai SDK's httpx client
PUBLIC_V4, PUBLIC_V6 = "93.184.215.14", "2606:4700:4700::1111"

# Every way a visitor spelled the Space's own loopback in issue 18, and more. {port} is the internal service's.
LOOPBACK_SPELLINGS = [
    "http://127.0.0.1:{port}/v1", "http://0.0.0.0:{port}/v1", "http://0:{port}/v1", "http://0x7f000001:{port}/v1",
    "http://2130706433:{port}/v1", "http://0177.0.0.1:{port}/v1", "http://0x7f.1:{port}/v1", "http://127.1:{port}/v1",
    "http://[::ffff:127.0.0.1]:{port}/v1", "http://[::ffff:7f00:1]:{port}/v1", "http://[::1]:{port}/v1",
    "http://[::]:{port}/v1", "http://user@127.0.0.1:{port}/v1", "http://user:pw@localhost:{port}/v1",
    "HTTP://LOCALHOST:{port}/v1", "http://LocalHost:{port}/v1", "http://localhost.:{port}/v1",
    "https://localhost:{port}/v1", "http://127.0.0.2:{port}/v1", "http://①②⑦.0.0.1:{port}/v1",
]
# Addresses of other networks a Space can reach, and what they look like spelled oddly.
OTHER_INTERNAL = [
    "http://169.254.169.254/latest/meta-data/", "http://0xa9fea9fe/", "http://2852039166/", "http://10.0.0.5:8000/v1",
    "http://172.16.5.4/v1", "http://192.168.1.10/v1", "http://100.64.0.1/v1", "http://[fe80::1]/v1",
    "http://[fc00::1]/v1", "http://[fd12:3456::1]/v1", "http://[fec0::1]/v1", "http://224.0.0.1/v1",
    "http://255.255.255.255/v1", "http://240.0.0.1/v1", "http://[ff02::1]/v1", "http://192.0.2.1/v1",
    "http://198.18.0.1/v1", "http://[64:ff9b::a9fe:a9fe]/v1", "http://[2002:a9fe:a9fe::1]/v1",
    "http://[::ffff:10.0.0.5]/v1", "http://[::127.0.0.1]/v1", "http://no-such-host.invalid/v1",
    "http://127.0.0.1:notaport/v1", "ftp://8.8.8.8/v1", "http:///v1",
]


class Answers:
    """A resolver for names of our own: what socket.getaddrinfo answers for them, changeable mid-test."""

    def __init__(self, monkeypatch, names: dict[str, list[str]]):
        self.names = names
        real = socket.getaddrinfo

        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            key = (host.decode() if isinstance(host, bytes) else host or "").rstrip(".").lower()  # as DNS does
            if key not in self.names:
                return real(host, port, family, type, proto, flags)
            answers = []
            for address in self.names[key]:
                v6 = ":" in address
                if family in (0, socket.AF_INET6 if v6 else socket.AF_INET):
                    sockaddr = (address, int(port or 0), 0, 0) if v6 else (address, int(port or 0))
                    answers.append((socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM,
                                    socket.IPPROTO_TCP, "", sockaddr))
            if not answers:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return answers

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class Internal:
    """The Space's own service: a fake LLM on 127.0.0.1 and ::1, the same port, counting connections."""

    def __init__(self):
        self.servers = [FakeLLM(host="127.0.0.1").start()]
        self.port = self.servers[0].port
        try:
            probe = socket.socket(socket.AF_INET6)
            probe.bind(("::1", self.port))
            probe.close()
        except OSError:
            pass  # no IPv6 loopback here: the [::1] spellings then reach nothing either way
        else:
            self.servers.append(FakeLLM(host="::1", port=self.port).start())

    @property
    def connections(self) -> int:
        return sum(server.connections for server in self.servers)

    @property
    def requests(self) -> int:
        return sum(server.requests for server in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="module")
def internal():
    service = Internal()
    yield service
    service.stop()


@pytest.fixture(autouse=True)
def _no_allow_list(monkeypatch):
    monkeypatch.delenv(egress.ALLOWED_ENV, raising=False)


def _chat(url: str, transport: str, public_only: bool = True) -> str:
    """One chat call through the real client: its text, or the error the row would carry."""

    async def go() -> str:
        client = LLMClient(LLMSettings(base_url=url, model="m", transport=transport, public_only=public_only,
                                       max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02, hedge=False))
        try:
            return (await client.chat("Say hi")).text
        except LLMError as exc:
            return f"error: {exc}"
        finally:
            await client.close()

    return asyncio.run(go())


# --- the rule on addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "127.255.0.9", "10.1.2.3", "172.31.255.255", "192.168.0.1",
                                     "169.254.169.254", "100.64.0.1", "100.127.255.254", "0.0.0.0", "224.0.0.251",
                                     "239.255.255.250", "255.255.255.255", "240.0.0.1", "192.0.0.8", "198.18.0.1",
                                     "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd00::1", "fec0::1",
                                     "ff02::1", "ff0e::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
                                     "64:ff9b::7f00:1", "2002:c0a8:1::1", "2001:db8::1", "::127.0.0.1", "100::1",
                                     "not-an-address", ""])
def test_internal_and_reserved_addresses_are_not_public(address):
    assert not egress.is_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", PUBLIC_V4, "1.1.1.1", "100.63.255.255", "100.128.0.1",
                                     "172.32.0.1", PUBLIC_V6, "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_unicast_addresses_are_public(address):
    assert egress.is_public(address)


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS + OTHER_INTERNAL)
def test_every_spelling_of_an_internal_host_is_refused_before_the_job(spelling):
    with pytest.raises(egress.EgressRefused) as refused:
        egress.check_url(spelling.format(port=8000))
    assert str(refused.value) == egress.REFUSAL  # one message: never what the name resolved to
    assert "127.0.0.1" not in egress.REFUSAL and "public endpoints" in egress.REFUSAL


def test_a_name_passes_only_if_every_answer_is_public(monkeypatch):
    Answers(monkeypatch, {"api.example.com": [PUBLIC_V4, PUBLIC_V6], "mixed.example.com": [PUBLIC_V4, "10.0.0.7"],
                          "internal.example.com": ["10.0.0.7"], "meta.example.com": ["169.254.169.254"]})
    egress.check_url("https://api.example.com/v1")
    egress.check_url("HTTPS://API.EXAMPLE.COM./v1")  # upper case and a trailing dot: the same host
    egress.check_url(f"https://{PUBLIC_V4}/v1")
    egress.check_url(f"http://user@[{PUBLIC_V6}]:8080/v1")
    for name in ("mixed.example.com", "internal.example.com", "meta.example.com", "Internal.Example.Com."):
        with pytest.raises(egress.EgressRefused):
            egress.check_url(f"https://{name}/v1")


def test_allowed_endpoints_are_base_urls_or_host_port_and_allow_that_host_and_port_only(monkeypatch, caplog):
    monkeypatch.setenv(egress.ALLOWED_ENV, "http://10.0.0.5:8000/v1, vllm.internal:9000 ,https://Inference.Internal./v1,"
                                           " bare.internal, http://[FD00::5]:8000, http://:80")
    assert egress.allowed_endpoints() == {("10.0.0.5", 8000), ("vllm.internal", 9000), ("inference.internal", 443),
                                          ("bare.internal", 80), ("bare.internal", 443), ("fd00::5", 8000)}
    assert "skipped 'http://:80'" in caplog.text
    egress.check_url("http://10.0.0.5:8000/v1")
    egress.check_url("http://10.0.0.5:8000/other/path")  # the host and port are allowed, whatever the path
    egress.check_url("https://INFERENCE.internal/v1")
    egress.check_url("http://[fd00:0::5]:8000/v1")
    for other in ("http://10.0.0.5:8001/v1", "http://10.0.0.6:8000/v1", "http://vllm.internal/v1",
                  "http://0x0a000005:8000/v1"):  # an odd spelling of an allowed address is not that entry
        with pytest.raises(egress.EgressRefused):
            egress.check_url(other)


def test_refused_in_finds_the_refusal_however_it_was_wrapped():
    try:
        try:
            raise egress.EgressRefused()
        except OSError as inner:
            raise ConnectionError("wrapped") from inner
    except ConnectionError as outer:
        assert egress.refused_in(outer)
    assert not egress.refused_in(ConnectionError("refused by the peer"))


# --- the guard at connect time, in both HTTP clients ------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_guarded_clients_reach_nothing_internal_in_any_spelling(internal, transport):
    before = internal.connections
    for spelling in LOOPBACK_SPELLINGS:
        url = spelling.format(port=internal.port)
        assert _chat(url, transport) == f"error: {egress.REFUSAL}", url
    assert internal.connections == before  # not one TCP connection, let alone a request


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unguarded_the_same_localhost_endpoint_answers(internal, transport):
    before = internal.requests
    assert _chat(f"http://localhost:{internal.port}/v1", transport, public_only=False).startswith("A response")
    assert _chat(f"http://127.0.0.1:{internal.port}/v1", transport, public_only=False).startswith("A response")
    assert internal.requests == before + 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_allowed_internal_endpoint_answers_when_guarded(internal, transport, monkeypatch):
    monkeypatch.setenv(egress.ALLOWED_ENV, f"http://localhost:{internal.port}/v1")
    before = internal.requests
    assert _chat(f"http://localhost:{internal.port}/v1", transport).startswith("A response")
    assert internal.requests == before + 1
    assert _chat(f"http://127.0.0.1:{internal.port}/v1", transport) == f"error: {egress.REFUSAL}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dns_rebinding_public_at_the_check_loopback_at_the_connect_is_refused(internal, transport, monkeypatch):
    answers = Answers(monkeypatch, {"rebind.example.com": [PUBLIC_V4]})
    url = f"http://rebind.example.com:{internal.port}/v1"
    egress.check_url(url)  # what the visitor's Start sees: a public address
    answers.names["rebind.example.com"] = ["127.0.0.1"]  # the attacker's DNS now answers loopback
    before = internal.connections
    assert _chat(url, transport) == f"error: {egress.REFUSAL}"
    answers.names["rebind.example.com"] = [PUBLIC_V4, "127.0.0.1"]  # one bad answer among good ones
    assert _chat(url, transport) == f"error: {egress.REFUSAL}"
    assert internal.connections == before


class Redirector:
    """An endpoint that answers every POST with a redirect to `target`, counting what it served."""

    def __init__(self, target: str, status: int = 307):
        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the stdlib's name)
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_not_followed_to_loopback_or_even_to_an_allowed_host(internal, transport, status, monkeypatch):
    internal_target = f"http://localhost:{internal.port}/v1/chat/completions"
    to_internal = Redirector(internal_target, status)
    to_allowed = Redirector(f"http://127.0.0.1:{internal.port}/v1/chat/completions", status)
    try:
        # The redirectors pass the guard as allowed endpoints; the internal service is allowed by one name only.
        monkeypatch.setenv(egress.ALLOWED_ENV, f"127.0.0.1:{to_internal.port}, 127.0.0.1:{to_allowed.port}, "
                                               f"127.0.0.1:{internal.port}")
        before = internal.connections
        for redirector in (to_internal, to_allowed):
            answer = _chat(f"http://127.0.0.1:{redirector.port}/v1", transport)
            assert answer.startswith(f"error: HTTP {status}: {NO_REDIRECTS}"), answer
            assert redirector.requests >= 1 and internal_target not in answer
        assert internal.connections == before
        # Unguarded (off a Space) the client is its user's own tool, and follows the redirect as before.
        if status == 307:
            assert _chat(f"http://127.0.0.1:{to_allowed.port}/v1", transport, public_only=False).startswith("A resp")
            assert internal.connections == before + 1
    finally:
        to_internal.stop()
        to_allowed.stop()
