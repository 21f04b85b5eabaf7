import csv
import json

import pandas as pd

from backtrans.export import (
    AUGMENTED_SYSTEM_TAG,
    SEED_SYSTEM_TAG,
    format_for,
    neutralise_formula,
    score_histogram,
    to_chat,
    write_rows,
)

ROWS = [
    {"instruction": "q1", "generation": "a1", "score": 5, "expected_score": 4.7, "status": "ok"},
    {"instruction": "=cmd|' /C calc'!A0", "generation": "+1", "score": None, "expected_score": None,
     "status": "parse_error"},
    {"instruction": "q3", "generation": "a3", "score": 3, "expected_score": None, "status": "ok"},
]


def test_formats_round_trip(tmp_path):
    for name in ("out.jsonl", "out.parquet", "out.csv"):
        assert write_rows(ROWS, tmp_path / name) == 3
    jsonl = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert jsonl == ROWS
    parquet = pd.read_parquet(tmp_path / "out.parquet")
    assert list(parquet["instruction"]) == [r["instruction"] for r in ROWS]
    assert str(parquet["score"].dtype) in ("Int64", "int64", "float64")
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_csv_neutralises_formulas(tmp_path):
    write_rows(ROWS, tmp_path / "out.csv")
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1]["instruction"] == "'=cmd|' /C calc'!A0"
    assert rows[1]["generation"] == "'+1"
    assert rows[0]["instruction"] == "q1"
    assert neutralise_formula("@SUM(A1)") == "'@SUM(A1)" and neutralise_formula(3) == 3


def test_chat_format_has_the_papers_system_tags(tmp_path):
    assert to_chat({"instruction": "q", "generation": "a"}) == {
        "messages": [
            {"role": "system", "content": SEED_SYSTEM_TAG},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    }
    assert SEED_SYSTEM_TAG == "Answer in the style of an AI Assistant."
    assert AUGMENTED_SYSTEM_TAG == "Answer with knowledge from web search."
    augmented = to_chat({"instruction": "q", "generation": "a", "source": "doc-1"})
    assert augmented["messages"][0]["content"] == AUGMENTED_SYSTEM_TAG
    write_rows(ROWS[:1], tmp_path / "train.jsonl", "chat")
    line = json.loads((tmp_path / "train.jsonl").read_text())
    assert [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]


def test_histogram_and_format_detection():
    assert score_histogram([5, 5, 3, None, float("nan")]) == {"3": 1, "5": 2, "none": 2}
    assert format_for("x.parquet") == "parquet" and format_for("x.csv", "chat") == "chat"
