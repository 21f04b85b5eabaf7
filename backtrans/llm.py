"""One async client over the OpenAI API for every backend (OpenAI, vLLM, TGI, llama.cpp, Ollama).

The openai SDK's own retries are switched off: we retry ourselves so that the concurrency slot is
released while we back off, `Retry-After` is honoured, and every attempt is counted.

Hedged requests ("The Tail at Scale", Dean and Barroso 2013): once a call has run past a high percentile
of the latencies seen so far, one duplicate is sent and the first answer wins; the other is cancelled.
Duplicates are capped at a share of all requests (5% by default), and counted in `hedges`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field

from backtrans import egress
from backtrans.redaction import redact

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
NO_REDIRECTS = "the endpoint answered with a redirect, which is not followed for an endpoint a visitor gave"


@dataclass
class LLMSettings:
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str = ""
    concurrency: int = 16
    requests_per_minute: float | None = None
    max_retries: int = 6
    timeout_s: float = 120.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # BACKTRANS_HEDGE=0: never hedge (`local env` sets it: on one local server a slow call means a busy server,
    # and a duplicate would only queue behind it).
    hedge: bool = field(default_factory=lambda: os.environ.get("BACKTRANS_HEDGE", "1") != "0")
    hedge_quantile: float = 0.95  # a call this far into the latency distribution gets a duplicate
    hedge_budget: float = 0.05  # at most this share of requests are duplicates
    hedge_min_s: float = 0.05  # never hedge sooner: below this, a duplicate only adds load
    # "lean": one aiohttp session posting JSON, without the SDK's request and response layers (the
    # default when aiohttp is installed); "openai-aiohttp" / "openai-httpx": the openai SDK on that
    # transport. Measured side by side in docs/benchmarks.md.
    transport: str = field(default_factory=lambda: os.environ.get("BACKTRANS_HTTP", "lean"))
    # An endpoint a visitor typed, on a Space: every connection is checked by backtrans.egress at connect
    # time (public addresses only), with no redirects and no proxy. Set by backends.choose.
    public_only: bool = False

    @classmethod
    def from_env(cls, **overrides: object) -> LLMSettings:
        """openai's own conventions, with BACKTRANS_MODEL for the model; explicit values win."""
        values = {
            "base_url": os.environ.get("OPENAI_BASE_URL") or None,
            "api_key": os.environ.get("OPENAI_API_KEY") or None,
            "model": os.environ.get("BACKTRANS_MODEL", ""),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def cache_identity(self) -> str:
        """What, besides the prompt, decides the reply: the model and the endpoint it runs on.

        A server on this machine gets a new port each time it starts; it is still the same model.
        """
        host = urllib.parse.urlsplit(self.base_url or "").hostname
        where = "local" if host in ("127.0.0.1", "localhost", "::1") else (self.base_url or "api.openai.com")
        return f"{self.model}@{where}"


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    logprobs: list[dict] | None = None
    model: str = ""
    hedged: bool = False  # the duplicate answered first


class LLMError(RuntimeError):
    """A call that failed for good, after its retries. The message never holds the API key."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


class _RateLimiter:
    """Spaces request starts evenly so that no minute sees more than `per_minute` of them."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            delay = self.next_start - now
            self.next_start = max(now, self.next_start) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class _Hedger:
    """When to send a duplicate, and whether the budget allows one.

    The delay is the configured percentile of recent successful call latencies, and at least twice
    the median: on a server with an even latency a call just past the percentile is not late, and a
    duplicate would only add load.
    """

    MIN_SAMPLES = 20
    RECOMPUTE_EVERY = 32

    def __init__(self, settings: LLMSettings):
        self.quantile = settings.hedge_quantile
        self.budget = settings.hedge_budget
        self.floor = settings.hedge_min_s
        self.samples: deque[float] = deque(maxlen=2000)
        self.fresh = 0
        self.delay: float | None = None

    def observe(self, latency: float) -> None:
        self.samples.append(latency)
        self.fresh += 1
        if self.fresh >= self.RECOMPUTE_EVERY or (self.delay is None and len(self.samples) >= self.MIN_SAMPLES):
            self.fresh = 0
            ordered = sorted(self.samples)
            high = ordered[min(len(ordered) - 1, int(self.quantile * len(ordered)))]
            self.delay = max(self.floor, high, 2.0 * ordered[len(ordered) // 2])

    def allow(self, primaries: int, hedges: int) -> bool:
        return hedges + 1 <= self.budget * primaries


class LLMClient:
    def __init__(self, settings: LLMSettings):
        self.settings = settings
        self.transport = _make_transport(settings)
        self.semaphore = asyncio.Semaphore(settings.concurrency)
        self.limiter = _RateLimiter(settings.requests_per_minute) if settings.requests_per_minute else None
        self.hedger = _Hedger(settings) if settings.hedge and settings.hedge_budget > 0 else None
        self.retries = 0
        self.requests = 0  # every HTTP request sent, duplicates included
        self.hedges = 0  # duplicates sent
        self.hedge_wins = 0  # duplicates that answered first

    def stats(self) -> dict:
        """The run's request counts, for its summary: what hedging cost and what it won."""
        primaries = self.requests - self.hedges
        return {"requests": self.requests, "retries": self.retries, "hedges": self.hedges,
                "hedge_wins": self.hedge_wins, "hedge_share": self.hedges / primaries if primaries else 0.0}

    def describe(self) -> str:
        stats = self.stats()
        line = f"retries {stats['retries']} · requests {stats['requests']}"
        if self.hedger is not None:
            line += (f" · hedges {stats['hedges']} ({stats['hedge_share']:.1%} extra load, "
                     f"{stats['hedge_wins']} answered first)")
        return line

    async def close(self) -> None:
        await self.transport.close()

    def _post(self, request: dict):
        return self.transport.post(request)

    async def _send(self, request: dict) -> tuple[dict, bool]:
        """One attempt: the request, and past the hedge delay one duplicate; the first answer wins."""
        self.requests += 1
        hedger = self.hedger
        delay = hedger.delay if hedger is not None else None
        if delay is None:
            response = await self._post(request)
            return response, False
        primary = asyncio.ensure_future(self._post(request))
        racers = [primary]
        try:
            done, _ = await asyncio.wait(racers, timeout=delay)
            if not done and hedger.allow(self.requests - self.hedges, self.hedges):
                self.requests += 1
                self.hedges += 1
                racers.append(asyncio.ensure_future(self._post(request)))
            # An error is an answer too: a 429 on the duplicate ends a hung primary, and the retry
            # loop decides what comes next.
            done, _ = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
            winner = next((r for r in racers if r in done and r.exception() is None), next(iter(done)))
            hedged = winner is not primary
            self.hedge_wins += hedged
            return winner.result(), hedged
        finally:
            for racer in racers:
                if not racer.done():
                    racer.cancel()
                elif not racer.cancelled():
                    racer.exception()  # retrieved, so a lost racer's error is not logged as unhandled

    def build_request(self, prompt: str, *, max_tokens: int = 512, temperature: float = 0.0, prefill: str = "",
                      logprobs: bool = False, top_logprobs: int = 10, system: str | None = None) -> dict:
        """The body of one chat completion request (also a line of a Batch API file)."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        if prefill:
            # llama.cpp, vLLM and TGI continue a trailing assistant turn.
            messages.append({"role": "assistant", "content": prefill})
        request = {
            "model": self.settings.model or "default",
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if logprobs:
            request.update(logprobs=True, top_logprobs=top_logprobs)
        return request

    async def chat(
        self,
        prompt: str,
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        prefill: str = "",
        logprobs: bool = False,
        top_logprobs: int = 10,
        system: str | None = None,
    ) -> Completion:
        request = self.build_request(prompt, max_tokens=max_tokens, temperature=temperature, prefill=prefill,
                                     logprobs=logprobs, top_logprobs=top_logprobs, system=system)
        attempt = 0
        while True:
            attempt += 1
            wait_s: float | None = None
            try:
                if self.limiter:
                    await self.limiter.wait()
                async with self.semaphore:
                    started = time.perf_counter()
                    response, hedged = await self._send(request)
                    latency = time.perf_counter() - started
                completion = self._completion(response, prefill, latency, attempt)
                completion.hedged = hedged
                if self.hedger is not None:
                    self.hedger.observe(latency)
                return completion
            except egress.EgressRefused:  # not retried, and the message names no address
                raise LLMError(egress.REFUSAL, attempt) from None
            except HTTPStatusError as exc:
                if exc.status not in RETRYABLE_STATUS or attempt > self.settings.max_retries:
                    raise self._failure(f"HTTP {exc.status}: {exc.message}", attempt) from None
                wait_s = exc.retry_after
            except TransportError as exc:
                if attempt > self.settings.max_retries:
                    kind = "timeout" if exc.timed_out else "connection error"
                    raise self._failure(f"{kind} after {attempt} attempts: {exc}", attempt) from None
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                raise self._failure(f"malformed response: {exc}", attempt) from None
            self.retries += 1
            if wait_s is None:
                cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
                wait_s = random.uniform(cap / 2, cap)  # jitter keeps retries from arriving in lockstep
            await asyncio.sleep(min(wait_s, self.settings.backoff_max_s))

    def _failure(self, message: str, attempts: int) -> LLMError:
        target = self.settings.base_url or "api.openai.com"
        return LLMError(redact(f"{message} (endpoint {target})", self.settings.api_key), attempts)

    def completion_from(self, response: dict, prefill: str = "", latency_s: float = 0.0,
                        attempts: int = 1) -> Completion:
        """A reply that came some other way (a Batch API result line) read like one of ours."""
        return self._completion(response, prefill, latency_s, attempts)

    def _completion(self, response: dict, prefill: str, latency: float, attempts: int) -> Completion:
        if not isinstance(response, dict) or not response.get("choices"):
            raise ValueError(f"no choices in the reply: {str(response)[:200]!r}")
        choice = response["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        tokens = None
        content = (choice.get("logprobs") or {}).get("content")
        if content:
            tokens = [
                {
                    "token": t.get("token", ""),
                    "logprob": t.get("logprob"),
                    "top_logprobs": [{"token": a.get("token", ""), "logprob": a.get("logprob")}
                                     for a in (t.get("top_logprobs") or [])],
                }
                for t in content
            ]
        # Some servers echo the prefill in the content, some do not; report it in front, once,
        # and keep the token offsets aligned with the text.
        if prefill and not text.startswith(prefill):
            text = prefill + text
        if prefill and tokens and not "".join(t["token"] for t in tokens).startswith(prefill):
            tokens.insert(0, {"token": prefill, "logprob": 0.0, "top_logprobs": []})
        usage = response.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=latency,
            attempts=attempts,
            logprobs=tokens,
            model=self.settings.model or str(response.get("model") or ""),
        )


class HTTPStatusError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class TransportError(Exception):
    """No answer: a timeout, or a refused or broken connection."""

    def __init__(self, message: str, timed_out: bool):
        super().__init__(message)
        self.timed_out = timed_out


def _make_transport(settings: LLMSettings):
    if settings.transport == "lean":
        try:
            return _LeanTransport(settings)
        except ImportError:  # aiohttp is optional: the SDK's own transport does the same job, slower
            pass
    return _SDKTransport(settings)


def _has_httptools() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


def _endpoint(settings: LLMSettings) -> str:
    base = settings.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    return base.rstrip("/") + "/chat/completions"


class _LeanTransport:
    """One aiohttp session that POSTs JSON and reads JSON: what a chat call needs and nothing else.

    The openai SDK builds an httpx request, deep-copies its options and validates its response for
    every call: at concurrency 256 that costs more CPU than the rest of a row (docs/benchmarks.md).
    Same semantics as the SDK's plain POST: bearer auth, per-read timeout, errors by status code.
    """

    def __init__(self, settings: LLMSettings):
        import aiohttp

        try:
            if os.environ.get("BACKTRANS_ORJSON", "1") == "0":  # for measuring what orjson saves
                raise ImportError
            import orjson

            self.dumps, self.loads = orjson.dumps, orjson.loads
        except ImportError:
            import json

            self.dumps, self.loads = (lambda o: json.dumps(o).encode()), json.loads
        import yarl

        self.aiohttp = aiohttp
        # Credentials in the URL are dropped: the key goes in the Authorization header, and aiohttp refuses a
        # request that has both (so such a URL never worked here).
        self.url = str(yarl.URL(_endpoint(settings)).with_user(None))
        self.headers = {"Authorization": f"Bearer {settings.api_key or 'no-key'}",
                        "Content-Type": "application/json", "Accept": "application/json"}
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.timeout_s,
                                             sock_read=settings.timeout_s)
        # Hedges and cancelled racers need connections beyond the concurrency.
        self.limit = max(100, settings.concurrency * 2)
        self.session = None
        self.guard = egress.EgressGuard() if settings.public_only else None
        # The proxy settings are read once here: aiohttp's trust_env reads them (and ~/.netrc) in a
        # thread for every request. A guarded client uses none: the proxy would resolve the host unchecked.
        self.proxy = self.proxy_auth = None
        try:
            from aiohttp.helpers import get_env_proxy_for_url

            if self.guard is None:
                self.proxy, self.proxy_auth = get_env_proxy_for_url(yarl.URL(self.url))
        except LookupError:
            pass
        # Requests go straight over keep-alive HTTP/1.1 (backtrans.http1) unless a proxy is in the way;
        # BACKTRANS_HTTP1=0 sends them all through aiohttp instead.
        self.direct = self.proxy is None and os.environ.get("BACKTRANS_HTTP1", "1") != "0" and _has_httptools()
        self.pool = None
        self.secret = settings.api_key

    async def post(self, request: dict) -> dict:
        if self.direct:
            return await self._post_direct(request)
        return await self._post_aiohttp(request)

    async def _post_direct(self, request: dict) -> dict:
        from backtrans import http1

        guard = self.guard
        try:
            if self.pool is None:
                self.pool = http1.Pool(self.url, self.headers, connect_timeout=self.timeout.sock_connect,
                                       read_timeout=self.timeout.sock_read, limit=self.limit, keepalive_s=30.0,
                                       answers=guard.answers if guard is not None else None)
            reply = await self.pool.post(self.dumps(request))
        except egress.EgressRefused:
            raise
        except TimeoutError as exc:
            raise TransportError(f"Request timed out. ({type(exc).__name__})", True) from None
        except (OSError, ValueError) as exc:  # ValueError: a URL or key no HTTP request can carry
            raise TransportError(f"Connection error. ({type(exc).__name__}: {redact(str(exc), self.secret)})",
                                 False) from None
        if 300 <= reply.status < 400 and guard is None and "location" in reply.headers:
            return await self._post_aiohttp(request)  # rare for an LLM API: aiohttp follows the redirect
        return self._result(reply.status, reply.body, reply.headers.get("retry-after"))

    def _result(self, status: int, body: bytes, retry_after: str | None) -> dict:
        if status >= 400 or (self.guard is not None and status >= 300):
            raise HTTPStatusError(status, _error_message(body, self.loads) if status >= 400 else NO_REDIRECTS,
                                  _seconds(retry_after))
        return self.loads(body)

    async def _post_aiohttp(self, request: dict) -> dict:
        aiohttp = self.aiohttp
        guard = self.guard
        if self.session is None:  # created inside the running loop, as aiohttp requires
            checked = {} if guard is None else {"resolver": guard.aiohttp_resolver(),
                                                "socket_factory": guard.socket_factory}
            connector = aiohttp.TCPConnector(limit=self.limit, keepalive_timeout=30, **checked)
            self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout,
                                                 skip_auto_headers=("User-Agent",))
        try:
            async with self.session.post(self.url, data=self.dumps(request), headers=self.headers,
                                         proxy=self.proxy, proxy_auth=self.proxy_auth,
                                         allow_redirects=guard is None) as response:
                body = await response.read()
                status = response.status
                retry_after = response.headers.get("retry-after")
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportError(f"Request timed out. ({type(exc).__name__})", True) from None
        except aiohttp.ClientError as exc:
            # aiohttp itself refuses odd IPv4 spellings (0x7f000001, 127.1) before any connect: a refusal too.
            if guard is not None and (egress.refused_in(exc) or isinstance(exc, aiohttp.InvalidURL)):
                raise egress.EgressRefused() from None
            raise TransportError(f"Connection error. ({type(exc).__name__}: {exc})", False) from None
        return self._result(status, body, retry_after)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.session is not None:
            await self.session.close()
            self.session = None


class _SDKTransport:
    """The openai SDK's plain POST, on its own httpx transport (or its aiohttp one)."""

    def __init__(self, settings: LLMSettings):
        import httpx2
        import openai

        self.openai = openai
        keep = max(100, settings.concurrency * 2)
        limits = httpx2.Limits(max_connections=max(1000, keep), max_keepalive_connections=keep)
        http_client = None
        if settings.public_only:  # httpx on the egress guard's connections, no redirects, no proxy
            http_client = openai.DefaultAsyncHttpxClient(
                timeout=settings.timeout_s, transport=egress.EgressGuard().httpx_transport(limits),
                follow_redirects=False, trust_env=False)
        elif settings.transport == "openai-aiohttp":
            try:
                from openai._vendor.httpx_aiohttp import Httpx2AiohttpClient  # noqa: F401  (openai[aiohttp])
            except ImportError:
                pass
            else:
                http_client = openai.DefaultAioHttpClient(timeout=settings.timeout_s, limits=limits)
        # Otherwise the SDK's own httpx pool, as it comes: the client this project used before the lean one.
        try:
            self.client = openai.AsyncOpenAI(
                base_url=settings.base_url,
                api_key=settings.api_key or "no-key",  # local servers need no key; the SDK insists on one
                max_retries=0,
                timeout=settings.timeout_s,
                http_client=http_client,
            )
        except httpx2.InvalidURL:
            if not settings.public_only:
                raise
            self.client = None  # httpx refuses odd IPv4 spellings (0177.0.0.1) outright: each call is refused

    async def post(self, request: dict) -> dict:
        openai = self.openai
        if self.client is None:
            raise egress.EgressRefused()
        try:
            # Not `chat.completions.create`: its typed request transform and response models cost
            # more CPU than the rest of a call.
            return await self.client.post("/chat/completions", body=request, cast_to=dict)
        except openai.APIStatusError as exc:
            retry_after = exc.response.headers.get("retry-after") if exc.response is not None else None
            message = NO_REDIRECTS if 300 <= exc.status_code < 400 else exc.message
            raise HTTPStatusError(exc.status_code, message, _seconds(retry_after)) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            if egress.refused_in(exc):
                raise egress.EgressRefused() from None
            raise TransportError(str(exc), _timed_out(exc)) from None

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


def _error_message(body: bytes, loads) -> str:
    try:
        error = loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)
    except (ValueError, AttributeError, TypeError):
        pass
    return body[:200].decode("utf-8", "replace")


def _timed_out(exc: BaseException) -> bool:
    """A timeout, not a refused or reset connection (the aiohttp transport reports both as timeouts)."""
    import openai

    if not isinstance(exc, openai.APITimeoutError):
        return False
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError) or type(seen).__name__ == "ClientConnectorError":
            return False
        seen = seen.__cause__ or seen.__context__
    return True


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None
