import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from backtrans.cli import main
from backtrans.records import SAMPLE_PATH
from tests.conftest import ROOT, results_in, write_jsonl


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"question {i} [[score={i % 5 + 1}]]", "response": f"answer {i}", "id": i} for i in range(n)]


def _score_args(fake_url: str, src: Path, out: Path, store: Path, *extra: str) -> list[str]:
    return ["score", str(src), "-o", str(out), "--base-url", fake_url, "--model", "fake", "--store", str(store),
            "--no-progress", *extra]


def test_score_then_curate_then_export(fake_llm, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", _rows(25))
    assert main(_score_args(fake_llm.url, src, tmp_path / "scored.jsonl", tmp_path / "s.sqlite")) == 0
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == list(range(25))
    assert all(r["status"] == "ok" and r["score"] == r["id"] % 5 + 1 for r in scored)
    assert {"score", "reason", "model_name", "expected_score", "raw_output", "status", "error"} <= set(scored[0])
    assert "25 rows" in capsys.readouterr().err

    assert main(["curate", str(tmp_path / "scored.jsonl"), "-o", str(tmp_path / "a4.jsonl"), "--min-score", "4"]) == 0
    kept = [json.loads(line) for line in (tmp_path / "a4.jsonl").read_text().splitlines()]
    assert len(kept) == 10 and all(r["score"] >= 4 for r in kept)
    assert "kept 10 of 25 pairs with score >= 4" in capsys.readouterr().err

    assert main(["export", str(tmp_path / "a4.jsonl"), "-o", str(tmp_path / "train.jsonl"), "--format", "chat"]) == 0
    chat = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(chat) == 10 and chat[0]["messages"][1]["content"] == kept[0]["instruction"]
    assert main(["export", str(tmp_path / "scored.jsonl"), "-o", str(tmp_path / "s.parquet")]) == 0
    assert (tmp_path / "s.parquet").stat().st_size > 0


def test_generate_fills_missing_responses_only(fake_llm, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Name a colour."},
                                              {"instruction": "Say hi.", "generation": "Hi!"}])
    args = ["generate", str(src), "-o", str(tmp_path / "gen.jsonl"), "--base-url", fake_llm.url, "--model", "fake",
            "--store", str(tmp_path / "s.sqlite"), "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert rows[0]["generation"].startswith("A response to") and rows[0]["generation_status"] == "ok"
    assert rows[1]["generation"] == "Hi!" and rows[1]["generation_status"] == "given"
    assert fake_llm.requests == 1


def test_bad_input_exits_2_with_the_location_on_stderr(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "generation": "a"}\n{oops}\n')
    assert main(["score", str(bad), "-o", str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2:2: invalid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()
    assert main(["score", str(SAMPLE_PATH), "-o", str(tmp_path / "o.jsonl"), "--template", "nope"]) == 2


def test_a_missing_column_gets_the_clis_own_hint(tmp_path, capsys):
    src = write_jsonl(tmp_path / "pairs.jsonl", [{"user_text": "q", "bot_text": "a"}])
    assert main(["score", str(src), "-o", str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert ("error: pairs.jsonl:1: missing column 'instruction', 'generation' (found: user_text, bot_text); "
            "map one with --map SOURCE=instruction") in err


def test_exit_0_when_every_row_is_scored_or_flagged(fake_llm, tmp_path):
    fake_llm.config.rate_garbage = 0.5
    src = write_jsonl(tmp_path / "in.jsonl", _rows(20))
    assert main(_score_args(fake_llm.url, src, tmp_path / "o.jsonl", tmp_path / "s.sqlite", "--reask", "0")) == 0
    statuses = [json.loads(line)["status"] for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(statuses) == 20 and "parse_error" in statuses


def test_kill_9_then_rerun_never_repeats_finished_rows(fake_process, tmp_path):
    total = 300
    server = fake_process("--latency", "0.04")
    src = write_jsonl(tmp_path / "in.jsonl", _rows(total))
    store = tmp_path / "s.sqlite"
    command = [sys.executable, "-m", "backtrans", *_score_args(server.url, src, tmp_path / "o.jsonl", store,
                                                               "--concurrency", "4")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while results_in(store) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = results_in(store)
    assert 60 <= finished < total
    assert not (tmp_path / "o.jsonl").exists()  # no half-written output under the real name
    before = server.stats()["requests"]

    subprocess.run(command, cwd=tmp_path, env=env, check=True, stderr=subprocess.DEVNULL)
    asked_again = server.stats()["requests"] - before
    assert asked_again == total - finished  # not one finished row was requested again
    resumed = (tmp_path / "o.jsonl").read_text()

    clean = tmp_path / "clean"
    clean.mkdir()
    subprocess.run([sys.executable, "-m", "backtrans", *_score_args(server.url, src, clean / "o.jsonl",
                    clean / "s.sqlite")], cwd=tmp_path, env=env, check=True, stderr=subprocess.DEVNULL)
    assert resumed == (clean / "o.jsonl").read_text()


def test_identical_pair_in_another_run_is_a_cache_hit(fake_llm, tmp_path):
    store = tmp_path / "s.sqlite"
    write_jsonl(tmp_path / "a.jsonl", _rows(10))
    write_jsonl(tmp_path / "b.jsonl", _rows(15))
    assert main(_score_args(fake_llm.url, tmp_path / "a.jsonl", tmp_path / "a.out.jsonl", store)) == 0
    assert main(_score_args(fake_llm.url, tmp_path / "b.jsonl", tmp_path / "b.out.jsonl", store)) == 0
    assert fake_llm.requests == 15


def test_resume_by_run_id_reuses_the_runs_settings(fake_llm, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    src = write_jsonl(tmp_path / "in.jsonl", _rows(5))
    assert main(_score_args(fake_llm.url, src, tmp_path / "o.jsonl", store, "--template", "additive")) == 0
    run_id = capsys.readouterr().err.split("run ")[1].split(":")[0]
    (tmp_path / "o.jsonl").unlink()
    assert main(["score", "--resume", run_id, "--store", str(store), "--no-progress"]) == 0
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 5
    assert fake_llm.requests == 5
    assert main(["runs", "--store", str(store)]) == 0
    assert run_id in capsys.readouterr().out


def test_runs_prints_a_table_for_people_and_json_lines_for_machines(fake_llm, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    src = write_jsonl(tmp_path / "pairs.jsonl", _rows(5))
    assert main(_score_args(fake_llm.url, src, tmp_path / "o.jsonl", store)) == 0
    good = capsys.readouterr().err.split("run ")[1].split(":")[0]
    fake_llm.config.rate_500 = 1.0  # every call fails: rows flagged llm_error, none finished
    failing = write_jsonl(tmp_path / "other.jsonl", [{"instruction": f"new {i}", "generation": "a"} for i in range(3)])
    main(_score_args(fake_llm.url, failing, tmp_path / "o2.jsonl", store, "--max-retries", "0"))
    bad = capsys.readouterr().err.split("run ")[1].split(":")[0]

    assert main(["runs", "--store", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "{" not in "\n".join(lines)  # no raw JSON for people
    header, *rows = [re.split(r"\s{2,}", line.strip()) for line in lines]
    assert header == ["run", "started", "kind", "source", "rows", "ok", "parse errors", "LLM errors", "calls",
                      "tokens", "state"]
    table = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert list(table) == [bad, good]  # newest first
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", table[good]["started"])
    assert {k: table[good][k] for k in ("kind", "source", "rows", "ok", "parse errors", "LLM errors", "calls")} == {
        "kind": "judge", "source": "pairs.jsonl", "rows": "5", "ok": "5", "parse errors": "0", "LLM errors": "0",
        "calls": "5"}
    assert int(table[good]["tokens"].replace(",", "")) > 0
    assert {k: table[bad][k] for k in ("source", "rows", "ok", "LLM errors", "calls")} == {
        "source": "other.jsonl", "rows": "0", "ok": "0", "LLM errors": "3", "calls": "3"}

    assert main(["runs", "--store", str(store), "--json"]) == 0
    machine = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [run["run_id"] for run in machine] == [bad, good]
    first = machine[1]
    assert (first["kind"], first["source"], first["rows"], first["finished"] is not None) == (
        "judge", "pairs.jsonl", {"done": 5, "ok": 5, "parse_error": 0, "llm_error": 0}, True)
    assert first["calls"] == 5 and first["prompt_tokens"] > 0 and first["config"]["source"] == str(src)
    assert machine[0]["rows"]["llm_error"] == 3


def test_resume_with_an_explicit_setting_lets_that_setting_win(fake_llm, tmp_path, capsys):
    # Before RunConfig, --resume overwrote an explicit --template with the stored one.
    store = tmp_path / "s.sqlite"
    src = write_jsonl(tmp_path / "in.jsonl", _rows(5))
    assert main(_score_args(fake_llm.url, src, tmp_path / "o.jsonl", store, "--template", "additive")) == 0
    run_id = capsys.readouterr().err.split("run ")[1].split(":")[0]
    assert fake_llm.requests == 5
    assert main(["score", "--resume", run_id, "--store", str(store), "--no-progress",
                 "--template", "humpback-short", "-o", str(tmp_path / "short.jsonl")]) == 0
    assert fake_llm.requests == 10  # another template: every pair judged again, none taken from the store
    assert len((tmp_path / "short.jsonl").read_text().splitlines()) == 5
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 5  # the first run's output is left alone
    assert main(["score", "--resume", run_id, "--store", str(store), "--no-progress"]) == 0
    assert fake_llm.requests == 10  # the stored settings again: all from the store


def test_resume_refuses_a_run_of_another_kind(fake_llm, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    src = write_jsonl(tmp_path / "in.jsonl", _rows(3))
    assert main(_score_args(fake_llm.url, src, tmp_path / "o.jsonl", store)) == 0
    run_id = capsys.readouterr().err.split("run ")[1].split(":")[0]
    assert main(["generate", "--resume", run_id, "--store", str(store), "--no-progress"]) == 2
    assert "is a judge run, not a generate run" in capsys.readouterr().err


def test_review_plan_estimate_and_a_calibrated_curate(tmp_path, capsys):
    import random

    rng = random.Random(7)
    rows = []
    for i in range(2000):
        expected = rng.uniform(1, 5)
        rows.append({"instruction": f"q{i}", "generation": f"a{i}", "score": round(expected),
                     "expected_score": expected, "truth": rng.random() < (expected - 1) / 4})
    scored = write_jsonl(tmp_path / "scored.jsonl", rows)
    assert main(["review", "plan", str(scored), "-o", str(tmp_path / "plan.jsonl"), "--budget", "300",
                 "--seed", "1", "--threshold", "3.8"]) == 0
    assert "stratified by expected score" in capsys.readouterr().err
    plan = [json.loads(line) for line in (tmp_path / "plan.jsonl").read_text().splitlines()]
    assert len(plan) == 300 and len({p["instruction"] for p in plan}) == 300
    assert all({"stratum", "inclusion_prob", "overlap"} <= set(p) for p in plan)

    planned = {p["instruction"] for p in plan}  # reviewers label the plan with the truth
    for row in rows:
        row["human_keep"] = row["truth"] if row["instruction"] in planned else None
    reviewed = write_jsonl(tmp_path / "reviewed.jsonl", rows)
    report_path = tmp_path / "report.json"
    assert main(["review", "estimate", str(reviewed), "--target-precision", "0.75", "--json", str(report_path)]) == 0
    assert "P(precision >= 75%)" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert {"threshold", "by", "kept", "reviewed", "precision", "recall"} <= set(report)
    assert report["by"] == "expected_score" and report["reviewed"] == 300 and report["precision"]["low"] >= 0.75

    assert main(["curate", str(reviewed), "-o", str(tmp_path / "kept.jsonl"), "--threshold-from",
                 str(report_path)]) == 0
    kept = {json.loads(line)["instruction"] for line in (tmp_path / "kept.jsonl").read_text().splitlines()}
    for row in rows:  # a reviewer's decision wins; the calibrated threshold decides the rest
        expected = row["human_keep"] if row["human_keep"] is not None else row["expected_score"] >= report["threshold"]
        assert (row["instruction"] in kept) == expected
    plan_only = [{**p, "human_keep": True} for p in plan]  # the reviewed sample without the rest: refused
    assert main(["review", "estimate", str(write_jsonl(tmp_path / "plan_only.jsonl", plan_only))]) == 2
    assert "give the whole scored file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["curate", str(reviewed), "-o", str(tmp_path / "x.jsonl"), "--threshold-from",
                 str(tmp_path / "bad.json")]) == 2


def test_format_report_prints_a_pulls_agreement_report():
    from backtrans.cli import format_report
    from backtrans.review import judge_agreement

    rows = [{"score": 5, "human_keep": True}, {"score": 4, "human_keep": False}, {"score": 1, "human_keep": False}]
    report = {**judge_agreement(rows, 4), "annotators": {"ann": {"keep": 1, "discard": 2}}}
    text = format_report(report)
    assert "(score >= 4) with the reviewers, over 3 reviewed pairs" in text
    assert "precision 0.5  recall 1.0  F1 0.6667  accuracy 0.6667  Cohen's kappa 0.4" in text
    assert "  LLM keep                   1               1" in text
    assert "annotators: ann {'keep': 1, 'discard': 2}" in text
