import json

import pandas as pd
import pytest

from backtrans.records import SAMPLE_PATH, RecordsError, load_records, parse_mapping, preview_columns, validate
from tests.conftest import write_jsonl


def _error(path, **kwargs) -> str:
    with pytest.raises(RecordsError) as info:
        validate(path, **kwargs)
    return str(info.value)


def test_sample_data_ships_and_is_valid():
    frame = load_records(SAMPLE_PATH)
    assert len(frame) >= 24
    assert {"instruction", "generation", "id"} <= set(frame.columns)


def test_jsonl_csv_parquet_load_the_same_rows(tmp_path):
    rows = [{"instruction": f"q{i}", "generation": f"a,\n{i}", "n": i} for i in range(5)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    frames = [load_records(tmp_path / name) for name in ("a.jsonl", "a.csv", "a.parquet")]
    for frame in frames:
        assert list(frame["instruction"]) == [f"q{i}" for i in range(5)]
        assert list(frame["generation"]) == [f"a,\n{i}" for i in range(5)]


def test_aliases_and_explicit_mapping(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "response": "a"}])
    assert load_records(tmp_path / "p.jsonl").iloc[0].to_dict() == {"instruction": "q", "generation": "a"}
    write_jsonl(tmp_path / "m.jsonl", [{"ask": "q", "reply": "a"}])
    frame = load_records(tmp_path / "m.jsonl", ["ask=instruction", "reply=generation"])
    assert frame.iloc[0].to_dict() == {"instruction": "q", "generation": "a"}
    assert parse_mapping(["prompt=instruction"]) == {"prompt": "instruction"}
    with pytest.raises(RecordsError, match="SOURCE=TARGET"):
        parse_mapping(["nonsense"])


def test_hf_dataset_saved_to_disk_and_as_a_data_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = {"question": ["q1", "q2"], "answer": ["a1", "a2"]}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "saved"))
    assert list(load_records(tmp_path / "saved")["instruction"]) == ["q1", "q2"]
    folder = tmp_path / "repo"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "q", "completion": "a"}])
    frame = load_records(str(folder), split="train")
    assert frame.iloc[0]["generation"] == "a"


def test_hub_id_that_cannot_be_reached_is_a_clear_error():
    message = _error("nobody/no-such-dataset-xyz", split="train")
    assert "nobody/no-such-dataset-xyz" in message and "Traceback" not in message


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    assert _error(tmp_path / "e.jsonl") == "e.jsonl: the file is empty"


def test_header_only_csv(tmp_path):
    (tmp_path / "h.csv").write_text("instruction,generation\n")
    assert "no rows" in _error(tmp_path / "h.csv")


def test_missing_column_names_line_and_columns(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [{"instruction": "q", "answr": "a"}])
    message = _error(tmp_path / "m.jsonl")
    assert message.startswith("m.jsonl:1: missing column 'generation'")
    assert "answr" in message and "--map" in message


def test_broken_json_line_names_line_and_column(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"instruction": "q", "generation": "a"}\n{"instruction": "q2", "generation": "a2",}\n')
    assert _error(path).startswith("b.jsonl:2:42: invalid JSON")


def test_non_utf8_names_line_and_column(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes("instruction,generation\nq,ok\ncaf\u00e9,x\n".encode("latin-1"))
    message = _error(path)
    assert message.startswith("l.csv:3:4: not valid UTF-8")
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes('{"instruction": "q", "generation": "a"}\n'.encode("utf-16"))
    assert "UTF-16" in _error(utf16)


def test_binary_data(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    assert "bin.jsonl:" in _error(path)


@pytest.mark.parametrize("bad", [None, "", "   ", float("nan")])
def test_nan_or_empty_text(tmp_path, bad):
    write_jsonl(tmp_path / "n.jsonl", [{"instruction": "q", "generation": "a"}, {"instruction": "q2"}])
    assert _error(tmp_path / "n.jsonl") == "n.jsonl:2: column 'generation' is missing"
    frame = pd.DataFrame({"instruction": ["q", "q2"], "generation": ["a", bad]})
    frame.to_csv(tmp_path / "n.csv", index=False)
    assert _error(tmp_path / "n.csv") == "n.csv:3: column 'generation' is empty"


def test_duplicate_rows_name_both_lines_and_can_be_dropped(tmp_path):
    rows = [{"instruction": "q", "generation": "a"}, {"instruction": "x", "generation": "y"}] * 2
    write_jsonl(tmp_path / "d.jsonl", rows)
    assert _error(tmp_path / "d.jsonl").startswith("d.jsonl:3: duplicate of d.jsonl:1")
    assert validate(tmp_path / "d.jsonl", drop_duplicates=True) == 2


def test_csv_with_embedded_newlines_reports_physical_lines(tmp_path):
    path = tmp_path / "nl.csv"
    path.write_text('instruction,generation\n"q1","line one\nline two\nline three"\n"q2",""\n')
    assert _error(path) == "nl.csv:5: column 'generation' is empty"
    path.write_text('instruction,generation\n"q1","a"\n"q2","unterminated\n')
    assert "nl.csv:3" in _error(path)


def test_csv_field_count_mismatch(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("instruction,generation\nq,a,extra\n")
    assert _error(path).startswith("f.csv:2: 3 fields where the header has 2")


def test_huge_field_is_refused_with_its_size(tmp_path):
    write_jsonl(tmp_path / "big.jsonl", [{"instruction": "q", "generation": "x" * 2_000_000}])
    assert "2,000,000 characters" in _error(tmp_path / "big.jsonl")


def test_non_text_values(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"instruction": "q", "generation": {"a": 1}}])
    assert "should be text" in _error(tmp_path / "t.jsonl")
    write_jsonl(tmp_path / "num.jsonl", [{"instruction": 42, "generation": "a"}])
    assert load_records(tmp_path / "num.jsonl").iloc[0]["instruction"] == "42"


def test_json_array_file(tmp_path):
    (tmp_path / "arr.json").write_text(json.dumps([{"instruction": "q", "generation": "a"}]))
    assert len(load_records(tmp_path / "arr.json")) == 1


def test_preview_shows_raw_columns_before_mapping(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"ask": "q", "reply": "a"}])
    assert list(preview_columns(tmp_path / "p.jsonl").columns) == ["ask", "reply"]
