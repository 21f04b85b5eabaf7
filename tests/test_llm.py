import asyncio
import time

import pytest

from backtrans.llm import LLMClient, LLMError, LLMSettings
from backtrans.redaction import redact


def _settings(fake, **kwargs) -> LLMSettings:
    values = {"base_url": fake.url, "model": "fake", "backoff_base_s": 0.01, "backoff_max_s": 0.2}
    values.update(kwargs)
    return LLMSettings(**values)


def _run(settings: LLMSettings, prompts: list[str], **chat):
    async def go():
        client = LLMClient(settings)
        try:
            results = await asyncio.gather(*(client.chat(p, **chat) for p in prompts), return_exceptions=True)
            return results, client.retries
        finally:
            await client.close()

    return asyncio.run(go())


def test_counts_tokens_and_latency(fake_llm):
    (completion,), _ = _run(_settings(fake_llm), ["Score this [[score=3]]"])
    assert completion.text.endswith("Score: 3")
    assert completion.prompt_tokens > 0 and completion.completion_tokens > 0
    assert completion.latency_s > 0 and completion.attempts == 1


def test_retries_429_honouring_retry_after(fake_llm):
    fake_llm.config.rate_429 = 0.5
    fake_llm.config.retry_after_s = 0.2
    started = time.monotonic()
    results, retries = _run(_settings(fake_llm, max_retries=20), [f"p{i} Score" for i in range(20)])
    assert all(not isinstance(r, Exception) for r in results)
    assert retries == fake_llm.statuses[429] > 0
    assert time.monotonic() - started >= 0.2  # waited as the server asked


def test_retries_500_then_gives_up_with_a_clear_error(fake_llm):
    fake_llm.config.rate_500 = 1.0
    (result,), retries = _run(_settings(fake_llm, max_retries=2), ["p Score"])
    assert isinstance(result, LLMError)
    assert "HTTP 500" in str(result) and fake_llm.url in str(result)
    assert result.attempts == 3 and retries == 2 and fake_llm.requests == 3


def test_hang_past_timeout_is_retried(fake_llm):
    fake_llm.config.rate_hang = 1.0
    fake_llm.config.hang_s = 5
    (result,), _ = _run(_settings(fake_llm, timeout_s=0.3, max_retries=1), ["p Score"])
    assert isinstance(result, LLMError) and "timeout" in str(result)
    assert fake_llm.requests == 2


def test_non_retryable_status_fails_at_once(fake_llm):
    settings = _settings(fake_llm, base_url=fake_llm.url.replace("/v1", "/nope"))
    (result,), retries = _run(settings, ["p"])
    assert isinstance(result, LLMError) and "HTTP 404" in str(result) and retries == 0


def test_concurrency_limit_holds(fake_llm):
    fake_llm.config.latency_s = 0.2
    started = time.monotonic()
    results, _ = _run(_settings(fake_llm, concurrency=4), [f"p{i}" for i in range(8)])
    elapsed = time.monotonic() - started
    assert all(not isinstance(r, Exception) for r in results)
    assert 0.4 <= elapsed < 1.2  # two waves of four, not one of eight


def test_requests_per_minute_spaces_requests(fake_llm):
    started = time.monotonic()
    _run(_settings(fake_llm, requests_per_minute=600, concurrency=16), [f"p{i}" for i in range(4)])
    assert time.monotonic() - started >= 0.3  # 600/min = one request every 0.1 s


def test_prefill_is_reported_once(fake_llm):
    (completion,), _ = _run(_settings(fake_llm), ["Score it [[score=4]]"], prefill="Score: ", logprobs=True)
    assert completion.text.startswith("Score: 4") and not completion.text.startswith("Score: Score")
    assert "".join(t["token"] for t in completion.logprobs) == completion.text


def test_api_key_never_appears_in_errors(fake_llm):
    secret = "sk-test-SECRET1234567890abcdef"
    fake_llm.config.rate_500 = 1.0
    (result,), _ = _run(_settings(fake_llm, api_key=secret, max_retries=0), ["p"])
    assert secret not in str(result) and secret not in repr(_settings(fake_llm, api_key=secret))
    assert fake_llm.api_keys[secret] == 1  # it was sent to the server, and only there
    assert redact(f"bad key {secret} and sk-other-0123456789abcdef", secret) == "bad key *** and sk-***"


def test_connection_refused_is_an_llm_error():
    settings = LLMSettings(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_base_s=0.01)
    (result,), _ = _run(settings, ["p"])
    assert isinstance(result, LLMError) and "connection error" in str(result)


@pytest.mark.parametrize("env_model", ["from-env"])
def test_settings_from_env(monkeypatch, env_model):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://x/v1")
    monkeypatch.setenv("BACKTRANS_MODEL", env_model)
    assert LLMSettings.from_env().model == env_model
    assert LLMSettings.from_env(model="cli").model == "cli"
    assert LLMSettings.from_env().base_url == "http://x/v1"


def test_cache_identity_ignores_the_port_of_a_local_server():
    first = LLMSettings(base_url="http://127.0.0.1:41000/v1", model="qwen")
    again = LLMSettings(base_url="http://127.0.0.1:52000/v1", model="qwen")
    assert first.cache_identity() == again.cache_identity()
    assert first.cache_identity() != LLMSettings(base_url="http://127.0.0.1:41000/v1", model="other").cache_identity()
    remote = LLMSettings(base_url="https://a.example/v1", model="qwen").cache_identity()
    assert remote != LLMSettings(base_url="https://b.example/v1", model="qwen").cache_identity() != first


# --- transports: the lean aiohttp POST and the openai SDK behave alike ---------------------------------------

TRANSPORTS = ["lean", "openai-aiohttp", "openai-httpx"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_transport_gives_the_same_replies_and_errors(fake_llm, transport):
    from backtrans.llm import _LeanTransport, _SDKTransport

    settings = _settings(fake_llm, transport=transport, max_retries=1, api_key="sk-transport-0123456789")
    client = LLMClient(settings)
    assert isinstance(client.transport, _LeanTransport if transport == "lean" else _SDKTransport)
    asyncio.run(client.close())
    (ok,), _ = _run(settings, ["Score this [[score=2]]"], prefill="Score: ", logprobs=True)
    assert ok.text.startswith("Score: 2") and ok.prompt_tokens > 0 and ok.logprobs
    assert fake_llm.api_keys["sk-transport-0123456789"] == 1
    fake_llm.config.rate_429 = 1.0
    (limited,), retries = _run(settings, ["p"])
    assert isinstance(limited, LLMError) and str(limited).startswith("HTTP 429: ") and retries == 1
    assert "injected 429" in str(limited)
    fake_llm.config.rate_429 = 0.0
    (missing,), _ = _run(_settings(fake_llm, transport=transport, base_url=fake_llm.url.replace("/v1", "/nope")),
                         ["p"])
    assert isinstance(missing, LLMError) and str(missing).startswith("HTTP 404: ") and "no route" in str(missing)
    fake_llm.config.rate_hang, fake_llm.config.hang_s = 1.0, 3
    (hung,), _ = _run(_settings(fake_llm, transport=transport, timeout_s=0.3, max_retries=0, hedge=False), ["p"])
    assert isinstance(hung, LLMError) and str(hung).startswith("timeout after 1 attempts")
    (refused,), _ = _run(LLMSettings(base_url="http://127.0.0.1:9/v1", model="m", max_retries=0,
                                     transport=transport), ["p"])
    assert isinstance(refused, LLMError) and str(refused).startswith("connection error after 1 attempts")


def test_garbage_json_is_a_malformed_response(fake_llm, tmp_path):
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\nnot json!")
        connection.close()

    threading.Thread(target=serve, daemon=True).start()
    (result,), _ = _run(LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=0), ["p"])
    listener.close()
    assert isinstance(result, LLMError) and "malformed response" in str(result)


# --- hedged requests ----------------------------------------------------------------------------------------------


def _hedged(fake, prompts: list[str], **settings):
    async def go():
        client = LLMClient(_settings(fake, **settings))
        try:
            results = await asyncio.gather(*(client.chat(p) for p in prompts), return_exceptions=True)
            return results, client.stats()
        finally:
            await client.close()

    return asyncio.run(go())


def test_a_hedge_answers_for_a_slow_request_within_the_budget(fake_llm):
    fake_llm.config.latency_s = 0.01
    fake_llm.config.tail_rate = 0.03
    fake_llm.config.tail_s = 2.0
    results, stats = _hedged(fake_llm, [f"h{i} Score" for i in range(300)], concurrency=8)
    assert all(not isinstance(r, Exception) for r in results)
    assert stats["hedges"] > 0 and stats["hedge_wins"] > 0
    assert sum(r.hedged for r in results) == stats["hedge_wins"]
    assert stats["hedges"] <= 0.05 * (stats["requests"] - stats["hedges"])  # the budget holds
    assert all(r.latency_s < 1.5 for r in results if r.hedged)  # the duplicate answered, not the slow one


def test_no_hedge_sends_exactly_one_request_per_call(fake_llm):
    fake_llm.config.tail_rate = 0.1
    fake_llm.config.tail_s = 0.5
    results, stats = _hedged(fake_llm, [f"n{i}" for i in range(100)], concurrency=16, hedge=False)
    assert stats["hedges"] == 0 and stats["requests"] == fake_llm.requests == 100
    assert not any(r.hedged for r in results)


def test_backtrans_hedge_0_turns_hedging_off_unless_a_caller_says_otherwise(monkeypatch):
    from backtrans.llm import LLMSettings

    assert LLMSettings.from_env().hedge
    monkeypatch.setenv("BACKTRANS_HEDGE", "0")
    assert not LLMSettings.from_env().hedge and LLMSettings.from_env(hedge=True).hedge


def test_the_hedge_delay_is_a_high_percentile_and_never_below_twice_the_median():
    from backtrans.llm import _Hedger

    hedger = _Hedger(LLMSettings(hedge_min_s=0.01))
    for _ in range(19):
        hedger.observe(0.1)
    assert hedger.delay is None  # too few samples to judge what is late
    hedger.observe(0.1)
    assert hedger.delay == pytest.approx(0.2)  # an even latency: twice the median, not the 95th percentile
    for latency in [0.1] * 90 + [3.0] * 10:
        hedger.observe(latency)
    assert hedger.delay == pytest.approx(3.0)  # a heavy tail: its 95th percentile
    assert not hedger.allow(primaries=100, hedges=5) and hedger.allow(primaries=100, hedges=4)
