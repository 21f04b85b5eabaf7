"""Where the server may connect on a visitor's behalf: no server-side request forgery on a Space.

The rule: on a Space (`owners.on_space`), an LLM endpoint a visitor typed is used only if every address its host
resolves to is public unicast. Loopback, private (RFC 1918, fc00::/7), link-local (169.254.0.0/16 with the cloud
metadata address, fe80::/10), shared (100.64.0.0/10), unspecified, multicast, broadcast and reserved addresses are
refused, and so is a name that does not resolve.

Addresses, not text, are judged: `getaddrinfo` turns 2130706433, 0x7f000001, 0177.0.0.1 and 127.1 into 127.0.0.1,
and IPv4 inside IPv6 (::ffff:127.0.0.1, NAT64, 6to4) is unwrapped. Two checks:
- `check_url`, when the visitor presses Start: a clear refusal in the page, and no job at all;
- `EgressGuard`, inside the HTTP clients, at connect time, on the addresses the connection actually uses: a DNS
  answer can change between the check and the connect (DNS rebinding). Guarded clients follow no redirects and
  use no proxy from the environment (a proxy would resolve the name where this check cannot see).

A Space's owner can name internal endpoints that visitors may use: BACKTRANS_ALLOWED_ENDPOINTS, comma-separated,
each a base URL (`http://10.0.0.5:8000/v1`: its scheme's port when none is given) or `host:port`; a bare host
allows ports 80 and 443. An entry allows that host and port, whatever the path. The endpoint of the app's own
`server` backend (OPENAI_BASE_URL) is the owner's configuration, not a visitor's input, and is not guarded.

Refusals never say what a name resolved to: that would map the Space's own network for whoever asks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import urllib.parse

from backtrans.owners import on_space

REFUSAL = ("This Space only calls public endpoints: the base URL must name a host on the public internet "
           "(local, private, link-local and reserved addresses, and names that do not resolve, are refused).")
ALLOWED_ENV = "BACKTRANS_ALLOWED_ENDPOINTS"
_DEFAULT_PORTS = {"http": 80, "https": 443}
# IPv6 prefixes that carry an IPv4 address a gateway would reach: NAT64 (RFC 6052).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# IANA's special-purpose ranges that are not globally reachable, named here as well as by `ipaddress`, whose own
# tables differ between Python patch releases (3.11.7 still calls 192.0.0.8 global).
_NOT_PUBLIC = tuple(ipaddress.ip_network(net) for net in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4",
    "::/127", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20",
    "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))
log = logging.getLogger(__name__)


class EgressRefused(OSError):
    """A connection the rule forbids. An OSError, so that socket layers treat it as a failed connect.

    The message is always REFUSAL: safe to show, and it names no address.
    """

    def __init__(self) -> None:
        super().__init__(REFUSAL)


def applies() -> bool:
    """Whether endpoints that visitors type are guarded: on a Space, where the server's network is not theirs."""
    return on_space()


def is_public(address: str) -> bool:
    """A public unicast address. IPv4 carried inside IPv6 is judged as that IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a zone id (fe80::1%eth0) is not part of the address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    if any(ip.version == net.version and ip in net for net in _NOT_PUBLIC):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local
                                 or ip.is_unspecified or ip.is_private)


def _host_key(host: str) -> str:
    """One spelling per host for the allow list: lower case, no brackets or trailing dot, IPs in canonical form."""
    host = host.strip().strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _parse_entry(entry: str) -> list[tuple[str, int]]:
    parts = urllib.parse.urlsplit(entry if "://" in entry else "//" + entry)
    if not parts.hostname:
        raise ValueError("no host")
    if parts.port is not None:
        return [(_host_key(parts.hostname), parts.port)]
    if parts.scheme:
        return [(_host_key(parts.hostname), _DEFAULT_PORTS[parts.scheme.lower()])]
    return [(_host_key(parts.hostname), port) for port in _DEFAULT_PORTS.values()]


def allowed_endpoints() -> frozenset[tuple[str, int]]:
    """(host, port) pairs from BACKTRANS_ALLOWED_ENDPOINTS. A malformed entry is skipped, with a warning."""
    allowed: set[tuple[str, int]] = set()
    for entry in (os.environ.get(ALLOWED_ENV) or "").replace("\n", ",").split(","):
        entry = entry.strip()
        if entry:
            try:
                allowed.update(_parse_entry(entry))
            except (ValueError, KeyError):
                log.warning("%s: skipped %r: use base URLs or host:port, comma-separated", ALLOWED_ENV, entry)
    return frozenset(allowed)


def _getaddrinfo(host: str, port: int, family: int = 0) -> list[tuple[int, str]]:
    """(family, address) of every answer, in the resolver's order, each once."""
    answers: list[tuple[int, str]] = []
    for info_family, _, _, _, sockaddr in socket.getaddrinfo(host, port, family, socket.SOCK_STREAM):
        if (info_family, sockaddr[0]) not in answers:
            answers.append((info_family, sockaddr[0]))
    return answers


def public_answers(host: str, port: int, family: int = 0) -> list[tuple[int, str]]:
    """Every address `host` resolves to, or EgressRefused unless all of them are public."""
    try:
        answers = _getaddrinfo(host, port, family)
    except (OSError, UnicodeError, ValueError):  # gaierror is an OSError; idna refuses some names
        raise EgressRefused() from None
    if not answers or not all(is_public(address) for _, address in answers):
        raise EgressRefused()
    return answers


def _host_and_port(base_url: str) -> tuple[str, int]:
    """The (host, port) a base URL connects to, as the allow list spells it; ValueError if it has none."""
    parts = urllib.parse.urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    return parts.hostname, parts.port or _DEFAULT_PORTS[scheme]


def check_url(base_url: str, allowed: frozenset[tuple[str, int]] | None = None) -> None:
    """The check before a job starts: EgressRefused unless the URL's host is allowed or resolves only to public
    addresses. This blocks on DNS; `EgressGuard` repeats the check on what each connection really uses."""
    try:
        host, port = _host_and_port(base_url)
    except ValueError:  # includes a port that is not a number
        raise EgressRefused() from None
    allowed = allowed_endpoints() if allowed is None else allowed
    if (_host_key(host), port) not in allowed:
        public_answers(host, port)


def refused_in(error: BaseException | None) -> bool:
    """Whether an HTTP client's error was this module's refusal, however many layers wrapped it."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, EgressRefused):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


class EgressGuard:
    """The connect-time check, for one client: the httpcore network backend of the openai SDK's httpx transport,
    and the resolver and socket factory of an aiohttp connector. Each resolves, checks every answer, and connects
    to the addresses it checked; TLS still verifies the URL's host name (SNI), since the client passes it on."""

    def __init__(self, allowed: frozenset[tuple[str, int]] | None = None):
        self.allowed = allowed_endpoints() if allowed is None else allowed
        # Addresses an allowed name resolved to: aiohttp's socket factory sees only the address.
        self.vouched: set[tuple[str, int]] = set()

    def allows(self, host: str, port: int) -> bool:
        return (_host_key(host), port) in self.allowed

    async def answers(self, host: str, port: int, family: int = 0) -> list[tuple[int, str]]:
        """What to connect to: every answer for an allowed endpoint, else only all-public answers."""
        loop = asyncio.get_running_loop()
        if self.allows(host, port):
            answers = await loop.run_in_executor(None, _getaddrinfo, host, port, family)
            self.vouched.update((address, port) for _, address in answers)
            return answers
        return await loop.run_in_executor(None, public_answers, host, port, family)

    # --- httpcore (the openai SDK's httpx transport) -------------------------------------------------------

    def httpx_transport(self, limits):
        """An httpx transport whose every new connection goes through this guard."""
        import httpx2

        transport = httpx2.AsyncHTTPTransport(limits=limits, trust_env=False)
        pool = transport._pool  # httpx has no public hook for the network backend; tests catch a change here
        if not hasattr(pool, "_network_backend"):
            raise RuntimeError("httpx's connection pool changed: the egress guard cannot plug in")
        pool._network_backend = _GuardedNetworkBackend(self)
        return transport

    # --- aiohttp (the lean client) ---------------------------------------------------------------------------

    def aiohttp_resolver(self) -> _GuardedResolver:
        return _GuardedResolver(self)

    def socket_factory(self, addr_info: tuple) -> socket.socket:
        """aiohttp connects IP literals without asking its resolver: every address is checked here as well."""
        family, type_, proto, _, sockaddr = addr_info
        address, port = sockaddr[0], sockaddr[1]
        if not (is_public(address) or (address, port) in self.vouched or self.allows(address, port)):
            raise EgressRefused()
        return socket.socket(family=family, type=type_, proto=proto)


class _GuardedNetworkBackend:
    """httpcore's network backend interface (connect_tcp, connect_unix_socket, sleep) over its AnyIO backend."""

    def __init__(self, guard: EgressGuard):
        import httpcore2

        self.guard = guard
        self.inner = httpcore2.AnyIOBackend()
        self.connect_errors = (httpcore2.ConnectError, httpcore2.ConnectTimeout)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options=None):
        import httpcore2

        try:
            async with asyncio.timeout(timeout):
                answers = await self.guard.answers(host, port)
        except EgressRefused:
            raise
        except TimeoutError:
            raise httpcore2.ConnectTimeout("timed out resolving the endpoint's host") from None
        except OSError as exc:  # an allowed name that does not resolve: a connection error like any other
            raise httpcore2.ConnectError(str(exc)) from None
        error: Exception = httpcore2.ConnectError("the endpoint's host has no address")
        for _, address in answers:  # the checked addresses, never the name again (it could answer differently)
            try:
                return await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except self.connect_errors as exc:
                error = exc
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise EgressRefused()  # a guarded client talks TCP to the URL's host only

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _GuardedResolver:
    """aiohttp's resolver interface (resolve, close): the guard's answers, as aiohttp's ResolveResult dicts."""

    def __init__(self, guard: EgressGuard):
        self.guard = guard

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        numeric = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [{"hostname": host, "host": address, "port": port, "family": answer_family, "proto": 0,
                 "flags": numeric} for answer_family, address in await self.guard.answers(host, port, family)]

    async def close(self) -> None:
        pass
