import asyncio

from backtrans.judge import JudgeTask
from backtrans.llm import LLMClient, LLMSettings
from backtrans.runner import Progress, run_rows
from backtrans.store import RunStore
from backtrans.templates import load_template


def _collect(fake, rows, store, concurrency=8, window=None):
    settings = LLMSettings(base_url=fake.url, model="fake", concurrency=concurrency)
    task = JudgeTask(load_template("humpback"), settings)
    progress = Progress(total=len(rows))

    async def go():
        client = LLMClient(settings)
        run_id = store.start_run("judge", {})
        try:
            return [pair async for pair in run_rows(rows, task, client, store, run_id, progress, window)]
        finally:
            await client.close()

    return asyncio.run(go()), progress


def test_results_come_back_in_input_order_under_random_latency(fake_llm, tmp_path):
    fake_llm.config.latency_s = 0.02
    rows = [{"instruction": f"q{i} [[score={i % 5 + 1}]]", "generation": f"a{i}"} for i in range(60)]
    pairs, progress = _collect(fake_llm, rows, RunStore(tmp_path / "s.sqlite"), window=10)
    assert [row["instruction"] for row, _ in pairs] == [r["instruction"] for r in rows]
    assert [result["score"] for _, result in pairs] == [i % 5 + 1 for i in range(60)]
    assert progress.done == 60 and progress.ok == 60 and progress.tokens > 0


def test_second_pass_is_all_cache_hits(fake_llm, tmp_path):
    rows = [{"instruction": f"q{i}", "generation": "a"} for i in range(20)]
    store = RunStore(tmp_path / "s.sqlite")
    first, _ = _collect(fake_llm, rows, store)
    requests = fake_llm.requests
    second, progress = _collect(fake_llm, rows, store)
    assert fake_llm.requests == requests == 20
    assert progress.cached == 20
    assert [r for _, r in first] == [r for _, r in second]


def test_faults_end_as_statuses_with_errors_kept(fake_llm, tmp_path):
    fake_llm.config.rate_garbage = 0.3
    fake_llm.config.rate_500 = 0.2
    settings_rows = [{"instruction": f"q{i}", "generation": "a"} for i in range(40)]
    pairs, progress = _collect(fake_llm, settings_rows, RunStore(tmp_path / "s.sqlite"))
    statuses = {result["status"] for _, result in pairs}
    assert statuses <= {"ok", "parse_error", "llm_error"} and "parse_error" in statuses
    assert len(pairs) == 40
    for _, result in pairs:
        if result["status"] == "parse_error":
            assert result["raw_output"] and result["error"]
