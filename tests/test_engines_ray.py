"""`--engine ray`: a local Ray cluster, started by the CLI, against the fake server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_jsonl

pytest.importorskip("ray")

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("RAY_ADDRESS", None)


def _score(server, src, out, store, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backtrans", "score", str(src), "-o", str(out), "--base-url", server.url,
         "--model", "m", "--store", str(store), "--engine", "ray", "--concurrency", "32", "--no-progress", *extra],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.ray
def test_2000_pairs_on_a_local_ray_cluster_in_order_then_a_rerun_makes_no_request(fake_process, tmp_path):
    server = fake_process("--latency", "0.02")
    rows = [{"id": i, "instruction": f"ray {i}: explain [[score={i % 5 + 1}]]", "generation": f"answer {i}"}
            for i in range(2000)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out, store = tmp_path / "out.jsonl", tmp_path / "s.sqlite"
    done = _score(server, src, out, store)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == list(range(2000))  # in input order
    assert [r["score"] for r in scored] == [i % 5 + 1 for i in range(2000)]
    assert all(r["status"] == "ok" for r in scored)
    first = server.stats()["requests"]
    assert 2000 <= first <= 2000 * 1.05  # one request per pair (a few hedges at most)
    shards = sorted((tmp_path / "s.sqlite.shards").glob("shard-*.sqlite"))
    assert shards, "each actor keeps its own store shard"
    assert "Done: 2000 rows in" in done.stderr

    again = _score(server, src, tmp_path / "again.jsonl", store)
    assert again.returncode == 0, again.stderr[-3000:]
    assert server.stats()["requests"] == first  # a rerun finds every row in the shards
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    assert "2000 from the store" in again.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_parquet_in_and_a_folder_of_parquet_shards_out(fake_process, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    server = fake_process()
    rows = [{"prompt": f"pq {i} [[score={i % 5 + 1}]]", "response": f"a{i}", "n": i} for i in range(300)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    done = _score(server, tmp_path / "in.parquet", tmp_path / "scored", tmp_path / "s.sqlite")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(tmp_path / "scored")
    assert table.num_rows == 300 and {"instruction", "generation", "score", "status"} <= set(table.column_names)
    assert sorted(table.column("n").to_pylist()) == list(range(300))
    by_n = dict(zip(table.column("n").to_pylist(), table.column("score").to_pylist(), strict=True))
    assert all(by_n[i] == i % 5 + 1 for i in range(300))


@pytest.mark.slow
@pytest.mark.ray
def test_generate_and_augment_take_the_ray_engine_too(fake_process, tmp_path):
    server = fake_process()
    common = ["--base-url", server.url, "--model", "m", "--concurrency", "8", "--no-progress", "--engine", "ray"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "backtrans", *args, *common], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=600)

    asked = [{"instruction": f"question {i}", **({"generation": "kept"} if i % 3 == 0 else {})} for i in range(60)]
    write_jsonl(tmp_path / "asked.jsonl", asked)
    done = run("generate", str(tmp_path / "asked.jsonl"), "-o", str(tmp_path / "answered.jsonl"),
               "--store", str(tmp_path / "g.sqlite"))
    assert done.returncode == 0, done.stderr[-3000:]
    answered = [json.loads(line) for line in (tmp_path / "answered.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in answered] == [r["instruction"] for r in asked]
    assert all(r["generation"] == "kept" for r in answered[::3])  # rows with a response keep it, uncalled
    assert all(r["generation"].startswith("A response") for i, r in enumerate(answered) if i % 3)
    assert server.stats()["requests"] == 40

    import random

    words = ("yeast flour river granite orbit violin copper tide maple lantern harbor cipher meadow falcon "
             "quartz ember glacier saffron tundra beacon").split()
    rng = random.Random(5)
    documents = [{"text": f"# Topic {i}\n" + " ".join(rng.choice(words) for _ in range(60)) + f" Number {i}."}
                 for i in range(12)]
    write_jsonl(tmp_path / "docs.jsonl", documents)
    done = run("augment", str(tmp_path / "docs.jsonl"), "-o", str(tmp_path / "candidates.jsonl"),
               "--store", str(tmp_path / "a.sqlite"), "--min-chars", "100")
    assert done.returncode == 0, done.stderr[-3000:]
    candidates = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert candidates and all(c["instruction"] for c in candidates)
    assert [c["generation"] for c in candidates] == sorted((c["generation"] for c in candidates),
                                                           key=lambda g: int(g.rsplit(" ", 1)[1].rstrip(".")))
