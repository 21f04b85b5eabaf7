"""The judge learns from its reviewers: calibration with a known answer, examples in a fixed prefix, a refusal when
there are too few reviews, and the CLI's `align` end to end (with --rejudge on the fake server)."""

import json
import math
import random

import pandas as pd
import pytest

from backtrans import align
from backtrans.cli import main
from backtrans.decisions import decide_frame, final_keep, judge_measure
from backtrans.judge import JudgeTask, examples_prefix
from backtrans.llm import LLMSettings
from backtrans.store import content_key
from backtrans.templates import load_template
from tests.conftest import write_jsonl


def true_keep_probability(expected: float) -> float:
    """The synthetic reviewers' rule: keeps rise steeply around an expected score of 3.6."""
    return 1 / (1 + math.exp(-4 * (expected - 3.6)))


def synthetic(n: int, seed: int = 0, reviewed_share: float = 1.0, inverted: bool = False) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        expected = round(rng.uniform(2.0, 5.0), 3)
        p = true_keep_probability(5.0 + 2.0 - expected if inverted else expected)
        row = {"instruction": f"question {i}", "generation": f"answer {i}", "score": round(expected),
               "expected_score": expected}
        if rng.random() < reviewed_share:
            row["human_keep"] = rng.random() < p
        rows.append(row)
    return rows


@pytest.mark.parametrize("method", align.METHODS)
def test_calibration_recovers_a_known_keep_probability(method):
    calibration = align.fit(synthetic(3000, seed=1), method)
    for expected in (2.5, 3.2, 3.6, 4.0, 4.6):
        predicted = calibration.predict({"expected_score": expected, "score": round(expected)})
        assert predicted == pytest.approx(true_keep_probability(expected), abs=0.08), (method, expected)
    grid = [calibration.predict({"expected_score": e / 10, "score": round(e / 10)}) for e in range(20, 51)]
    assert grid == sorted(grid)  # more judge, more keeps


def test_isotonic_is_monotone_and_never_certain():
    rows = [{"expected_score": float(x), "score": x, "human_keep": keep}
            for x, keep in [(1, False)] * 5 + [(2, True), (2, False)] + [(3, False)] * 3 + [(4, True)] * 8]
    calibration = align.fit(rows, "isotonic", minimum=4, each=2)
    values = [calibration.predict({"expected_score": float(x), "score": x}) for x in (1, 2, 3, 4, 5)]
    assert values == sorted(values) and 0 < values[0] and values[-1] < 1
    # (2: 1 of 2) and (3: 0 of 3) violate the order and are pooled: 1 of 5, smoothed (1 + 1) / (5 + 2)
    assert values[1] == values[2] == pytest.approx(2 / 7, abs=1e-4)


def test_the_report_on_held_out_rows_shows_what_logistic_calibration_gains_on_an_inverted_judge():
    rows = synthetic(400, seed=2, inverted=True)  # reviewers keep what this judge scores low
    before_after = align.report(rows, threshold=3.8, method="logistic", resamples=300)
    assert before_after.before["auc"].estimate < 0.3 < 0.7 < before_after.after["auc"].estimate
    change = before_after.change["kappa"]
    assert change.low > 0 and change.low <= change.estimate <= change.high  # an interval that excludes no gain
    assert before_after.reviewed == 400 and before_after.folds == 5
    assert "before (expected_score >= 3.8)" in before_after.describe()


def test_too_few_or_one_sided_reviews_are_refused_with_the_counts():
    with pytest.raises(align.AlignError, match=r"12 reviewed pairs .* needs at least 20"):
        align.fit(synthetic(12))
    one_sided = [{**row, "human_keep": True} for row in synthetic(40)]
    with pytest.raises(align.AlignError, match=r"40 kept, 0 discarded"):
        align.report(one_sided, threshold=3.8)


def test_aligned_score_is_a_measure_of_the_keep_rule():
    row = {"score": 5, "expected_score": 4.8, "aligned_score": 0.3}
    assert judge_measure(row, "aligned_score") == 0.3
    assert judge_measure({"score": 5}, "aligned_score") is None  # a 1-5 score is no stand-in for a probability
    assert final_keep(row, 0.5, "aligned_score", afresh=True) is False
    frame = decide_frame(pd.DataFrame([row, {**row, "aligned_score": 0.9}, {"score": 4}]), 0.5, "aligned_score")
    assert frame["final_keep"].tolist() == [False, True, False]
    assert frame["judge_keep"].isna().tolist() == [False, False, True]


# --- examples in the prompt ---------------------------------------------------------------------------------


def test_overruled_pairs_become_examples_that_reach_every_prompt_as_one_prefix(fake_llm):
    rows = [
        {"instruction": "Kept by the judge", "generation": "but dropped", "score": 4, "expected_score": 4.4,
         "human_keep": False, "human_note": "no concrete example"},
        {"instruction": "Dropped by the judge", "generation": "but kept", "score": 2, "expected_score": 2.1,
         "human_keep": True},
        {"instruction": "Agreed", "generation": "kept", "score": 5, "expected_score": 4.9, "human_keep": True},
    ]
    examples = align.overruled(rows, threshold=3.8)
    assert [e["instruction"] for e in examples] == ["Kept by the judge", "Dropped by the judge"]
    assert examples[0] == {"instruction": "Kept by the judge", "generation": "but dropped", "keep": False,
                           "note": "no concrete example"}

    template, settings = load_template("humpback-short"), LLMSettings(base_url=fake_llm.url, model="m")
    task = JudgeTask(template, settings, examples=examples)
    pairs = [{"instruction": "How do I boil an egg?", "generation": "Boil it."},
             {"instruction": "What is 2 + 2?", "generation": "4"}]
    prompts = [task.prompt(pair) for pair in pairs]
    prefix = examples_prefix(examples)
    assert all(prompt.startswith(prefix + "Rate how well") for prompt in prompts)
    assert "Reviewer's note: no concrete example" in prefix and "DISCARDED" in prefix and "KEPT" in prefix
    assert prompts[0].rstrip().endswith("Boil it.") and prompts[1].rstrip().endswith("4")  # the pair comes last

    from backtrans.runner import run_one

    for pair in pairs:
        run_one(task, pair)
    sent = list(fake_llm.recent_prompts)
    assert len(sent) == 2 and all(prompt.startswith(prefix) for prompt in sent)

    # Examples are part of the cache key; without them the key is what it always was.
    plain = JudgeTask(template, settings)
    assert plain.key(pairs[0]) == content_key("judge", template.digest, settings.cache_identity(), plain.params,
                                              pairs[0]["instruction"], pairs[0]["generation"])
    assert task.key(pairs[0]) != plain.key(pairs[0])
    assert JudgeTask(template, settings, examples=list(examples)).key(pairs[0]) == task.key(pairs[0])
    assert plain.examples is None and plain.prompt(pairs[0]) == template.render(**pairs[0])


# --- the CLI ----------------------------------------------------------------------------------------------------


def test_align_refuses_a_file_with_too_few_reviews(tmp_path, capsys):
    src = write_jsonl(tmp_path / "reviewed.jsonl", synthetic(60, reviewed_share=0.2, seed=3))
    assert main(["align", str(src), "-o", str(tmp_path / "aligned.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "reviewed.jsonl:" in err and "needs at least 20" in err and "Traceback" not in err
    assert not (tmp_path / "aligned.jsonl").exists()


def test_align_writes_aligned_scores_that_curate_and_review_read(tmp_path, capsys):
    rows = synthetic(300, seed=4, reviewed_share=0.3)
    src = write_jsonl(tmp_path / "reviewed.jsonl", rows)
    out, report_path = tmp_path / "aligned.jsonl", tmp_path / "report.json"
    assert main(["align", str(src), "-o", str(out), "--json", str(report_path)]) == 0
    printed = capsys.readouterr()
    assert "Agreement with the reviewers on held-out reviewed pairs" in printed.out
    aligned = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(aligned) == 300 and all(0 < row["aligned_score"] < 1 for row in aligned)
    for row in aligned:
        human = row.get("human_keep")
        assert row["final_keep"] == (human if human is not None else row["aligned_score"] >= 0.5)
    report = json.loads(report_path.read_text())
    assert report["reviewed"] == sum("human_keep" in row for row in rows) and report["method"] == "isotonic"
    assert set(report["before"]) == set(align.METRICS) and report["after"]["auc"]["low"] is not None

    assert main(["curate", str(out), "-o", str(tmp_path / "kept.jsonl"), "--by", "aligned_score",
                 "--min-score", "0.5"]) == 0
    kept = (tmp_path / "kept.jsonl").read_text().splitlines()
    assert len(kept) == sum(row["final_keep"] for row in aligned)
    assert main(["review", "estimate", str(out), "--by", "aligned_score", "--threshold", "0.5"]) == 0
    assert "Threshold 0.5 by aligned score" in capsys.readouterr().out


def test_align_rejudge_puts_examples_in_the_prompt_and_a_rerun_costs_nothing(fake_llm, tmp_path, capsys):
    rows = synthetic(60, seed=5, reviewed_share=0.6)
    for row in rows:
        row["human_note"] = "wants an example" if row.get("human_keep") is False else None
    src = write_jsonl(tmp_path / "reviewed.jsonl", rows)
    args = ["align", str(src), "-o", str(tmp_path / "aligned.jsonl"), "--rejudge", "--base-url", fake_llm.url,
            "--model", "m", "--template", "humpback-short", "--store", str(tmp_path / "s.sqlite"),
            "--json", str(tmp_path / "report.json"), "--folds", "3"]
    assert main(args) == 0
    first = json.loads((tmp_path / "report.json").read_text())
    reviewed = sum(row.get("human_keep") is not None for row in rows)
    # every reviewed row once with the other folds' examples, every unreviewed row once with all of them
    assert first["cost"]["calls"] == fake_llm.requests == reviewed + (60 - reviewed)
    assert first["examples"] > 0
    assert all(prompt.startswith("Reviewers of this data set decided these pairs") for prompt in
               fake_llm.recent_prompts)
    assert any("Reviewer's note: wants an example" in prompt for prompt in fake_llm.recent_prompts)
    aligned = [json.loads(line) for line in (tmp_path / "aligned.jsonl").read_text().splitlines()]
    assert all(row["aligned_reason"] for row in aligned) and all("aligned_score" in row for row in aligned)
    capsys.readouterr()

    assert main(args) == 0  # the same reviews, the same examples: every row is in the store
    again = json.loads((tmp_path / "report.json").read_text())
    assert fake_llm.requests == first["cost"]["calls"] and again["cost"]["calls"] == 0
    assert again["cost"]["cached"] == 60 and again["after"] == first["after"]
    assert "Re-judging cost: 0 calls" in capsys.readouterr().out
