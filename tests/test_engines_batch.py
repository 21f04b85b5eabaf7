"""`score --batch`: the OpenAI Batch API path against the fake server's /v1/files and /v1/batches."""

from __future__ import annotations

import json

from backtrans import cli
from tests.conftest import write_jsonl


def _rows(n: int) -> list[dict]:
    return [{"id": i, "instruction": f"batch {i} [[score={i % 5 + 1}]]", "generation": f"answer {i}"}
            for i in range(n)]


def _score(fake, src, out, store, *extra: str) -> int:
    return cli.main(["score", str(src), "-o", str(out), "--base-url", fake.url, "--model", "m", "--store", str(store),
                     "--batch", "--batch-poll", "0.05", "--no-progress", *extra])


def test_batch_scores_every_row_in_order_with_one_request_each(fake_llm, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", _rows(300))
    out, store = tmp_path / "out.jsonl", tmp_path / "s.sqlite"
    assert _score(fake_llm, src, out, store) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(300))
    assert [r["score"] for r in rows] == [i % 5 + 1 for i in range(300)]
    assert all(r["status"] == "ok" for r in rows)
    assert fake_llm.batch_requests == 300 and len(fake_llm.batches) == 1
    uploaded = next(f for f in fake_llm.files.values() if f["purpose"] == "batch")
    lines = [json.loads(line) for line in uploaded["content"].decode().splitlines()]
    assert {line["url"] for line in lines} == {"/v1/chat/completions"} and len({x["custom_id"] for x in lines}) == 300
    err = capsys.readouterr().err
    assert "batch: 300/300 requests done" in err and "Done: 300 rows in" in err

    # A rerun finds every row in the store: no new batch, no request.
    assert _score(fake_llm, src, tmp_path / "again.jsonl", store) == 0
    assert fake_llm.batch_requests == 300 and len(fake_llm.batches) == 1
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    assert "submitted 0 requests" in capsys.readouterr().err


def test_failed_lines_end_as_llm_errors_and_a_rerun_asks_only_for_them(fake_llm, tmp_path, capsys):
    fake_llm.config.rate_500 = 0.1
    fake_llm.config.rate_garbage = 0.1
    src = write_jsonl(tmp_path / "in.jsonl", _rows(200))
    out, store = tmp_path / "out.jsonl", tmp_path / "s.sqlite"
    assert _score(fake_llm, src, out, store) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    failed = [r for r in rows if r["status"] == "llm_error"]
    assert failed and all("HTTP 500" in r["error"] for r in failed)
    assert any(r["status"] == "parse_error" and r["raw_output"] for r in rows)
    fake_llm.config.rate_500 = 0.0
    before = fake_llm.batch_requests
    assert _score(fake_llm, src, out, store) == 0
    assert fake_llm.batch_requests - before == len(failed)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert not [r for r in rows if r["status"] == "llm_error"] and [r["id"] for r in rows] == list(range(200))


def test_batch_and_ray_do_not_mix(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", _rows(2))
    code = cli.main(["score", str(src), "-o", str(tmp_path / "o.jsonl"), "--batch", "--engine", "ray", "--model", "m",
                     "--store", str(tmp_path / "s.sqlite")])
    assert code == 2 and "--batch" in capsys.readouterr().err


def test_the_vllm_run_batch_path_file_out_results_in(fake_llm, tmp_path, capsys):
    """--batch-file writes what vLLM's run_batch reads; --batch-results ingests what it writes."""
    import asyncio

    src = write_jsonl(tmp_path / "in.jsonl", _rows(50))
    out, store, requests = tmp_path / "out.jsonl", tmp_path / "s.sqlite", tmp_path / "requests.jsonl"
    base = ["score", str(src), "-o", str(out), "--model", "m", "--store", str(store), "--no-progress"]
    assert cli.main([*base, "--batch-file", str(requests)]) == 0
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    assert len(lines) == 50 and fake_llm.requests == 0

    async def run_batch() -> list[str]:  # what run_batch does: each body to the server, one result line each
        status_lines = []
        for line in lines:
            status, body, _ = await fake_llm._chat(line["body"], {})
            status_lines.append(json.dumps({"id": "x", "custom_id": line["custom_id"],
                                            "response": {"status_code": status, "body": body}, "error": None}))
        return status_lines

    (tmp_path / "results.jsonl").write_text("\n".join(asyncio.run(run_batch())) + "\n")
    assert cli.main([*base, "--batch-results", str(tmp_path / "results.jsonl")]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["score"] for r in rows] == [i % 5 + 1 for i in range(50)] and [r["id"] for r in rows] == list(range(50))
    assert "results from results.jsonl" in capsys.readouterr().err
