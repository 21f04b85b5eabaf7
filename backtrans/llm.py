"""One async client over the OpenAI API for every backend (OpenAI, vLLM, TGI, llama.cpp, Ollama).

The openai SDK's own retries are switched off: we retry ourselves so that the concurrency slot is
released while we back off, `Retry-After` is honoured, and every attempt is counted.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
import urllib.parse
from dataclasses import dataclass, field

import openai

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_KEY_LIKE = re.compile(r"\b(sk|hf|rk|pk|api|argilla\.apikey)[-_.][A-Za-z0-9_\-]{8,}")


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


class LLMError(RuntimeError):
    """A call that failed for good, after its retries. The message never holds the API key."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


def redact(text: str, secret: str | None) -> str:
    from backtrans.redaction import redact as _redact  # the one redaction rule (whole values only)

    return _redact(text, secret)


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


class LLMClient:
    def __init__(self, settings: LLMSettings):
        self.settings = settings
        self.client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            # Local servers need no key; the SDK insists on one.
            api_key=settings.api_key or "no-key",
            max_retries=0,
            timeout=settings.timeout_s,
        )
        self.semaphore = asyncio.Semaphore(settings.concurrency)
        self.limiter = _RateLimiter(settings.requests_per_minute) if settings.requests_per_minute else None
        self.retries = 0

    async def close(self) -> None:
        await self.client.close()

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
        attempt = 0
        while True:
            attempt += 1
            wait_s: float | None = None
            try:
                if self.limiter:
                    await self.limiter.wait()
                async with self.semaphore:
                    started = time.perf_counter()
                    # The client's plain POST: same auth, base URL, timeouts and error types as
                    # `chat.completions.create`, without its typed request transform and response
                    # models, which cost more CPU than the rest of a call (see docs/benchmarks.md).
                    response = await self.client.post("/chat/completions", body=request, cast_to=dict)
                    latency = time.perf_counter() - started
                return self._completion(response, prefill, latency, attempt)
            except openai.APIStatusError as exc:
                if exc.status_code not in RETRYABLE_STATUS or attempt > self.settings.max_retries:
                    raise self._failure(f"HTTP {exc.status_code}: {exc.message}", attempt) from None
                wait_s = _retry_after(exc.response)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                if attempt > self.settings.max_retries:
                    kind = "timeout" if isinstance(exc, openai.APITimeoutError) else "connection error"
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


def _retry_after(response) -> float | None:
    header = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None
