"""Writing rows out: JSONL, CSV, Parquet, the training chat format, and the Hugging Face Hub.

Writers stream, one row at a time, so a million-row run never sits in memory. CSV cells that a
spreadsheet would run as a formula are neutralised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from backtrans.decisions import final_keep
from backtrans.records import FORMAT_HINT, RecordsError, file_format, missing

SUFFIXES = {"jsonl": ".jsonl", "chat": ".jsonl", "csv": ".csv", "parquet": ".parquet"}  # a format's file suffix
FORMATS = tuple(SUFFIXES)
SEED_SYSTEM_TAG = "Answer in the style of an AI Assistant."
AUGMENTED_SYSTEM_TAG = "Answer with knowledge from web search."
KNOWN_TYPES = {"score": "int64", "expected_score": "float64", "human_score": "int64"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ExportError(ValueError):
    pass


def format_for(path: str | os.PathLike, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in FORMATS:
            raise ExportError(f"unknown format {explicit!r}; choose one of {', '.join(FORMATS)}")
        return explicit
    try:
        return file_format(path)
    except RecordsError:
        suffix = Path(path).suffix.lower().lstrip(".")
        raise ExportError(f"{path}: cannot tell the format from {suffix!r}; {FORMAT_HINT}") from None


def neutralise_formula(value: object) -> object:
    """A cell starting with =, +, -, @ is run as a formula by spreadsheets (CSV injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def is_augmented(row: dict) -> bool:
    return str(row.get("origin") or "").lower() == "augmented" or bool(row.get("source"))


def to_chat(row: dict, system_tag: str | None = None) -> dict:
    """One training example with the paper's system tag: seed vs augmented data."""
    tag = system_tag or (AUGMENTED_SYSTEM_TAG if is_augmented(row) else SEED_SYSTEM_TAG)
    return {
        "messages": [
            {"role": "system", "content": tag},
            {"role": "user", "content": row["instruction"]},
            {"role": "assistant", "content": row["generation"]},
        ]
    }


class RowWriter:
    def __init__(self, path: str | os.PathLike, fmt: str | None = None, system_tag: str | None = None):
        self.path = Path(path)
        self.format = format_for(path, fmt)
        self.system_tag = system_tag
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._handle = None
        self._csv = None
        self._parquet = None
        self._schema = None
        self._buffer: list[dict] = []
        if self.format in ("jsonl", "chat"):
            self._handle = self._tmp.open("w", encoding="utf-8")
        elif self.format == "csv":
            self._handle = self._tmp.open("w", encoding="utf-8", newline="")

    def write(self, row: dict) -> None:
        self.count += 1
        if self.format == "jsonl":
            self._handle.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
        elif self.format == "chat":
            self._handle.write(json.dumps(to_chat(row, self.system_tag), ensure_ascii=False) + "\n")
        elif self.format == "csv":
            self._write_csv(row)
        else:
            self._buffer.append(row)
            if len(self._buffer) >= 5000:
                self._flush_parquet()

    def _write_csv(self, row: dict) -> None:
        import csv

        if self._csv is None:
            delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","  # as records reads it back
            self._csv = csv.DictWriter(self._handle, fieldnames=list(row), extrasaction="ignore",
                                       delimiter=delimiter)
            self._csv.writeheader()
        self._csv.writerow({k: neutralise_formula(_cell(v)) for k, v in row.items()})

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer:
            return
        if self._schema is None:
            inferred = pa.Table.from_pylist(self._buffer).schema
            fields = []
            for f in inferred:
                if f.name in KNOWN_TYPES:
                    f = pa.field(f.name, pa.type_for_alias(KNOWN_TYPES[f.name]))
                elif pa.types.is_null(f.type):
                    f = pa.field(f.name, pa.string())
                fields.append(f)
            self._schema = pa.schema(fields)
            self._parquet = pq.ParquetWriter(self._tmp, self._schema)
        rows = [{name: row.get(name) for name in self._schema.names} for row in self._buffer]
        self._parquet.write_table(pa.Table.from_pylist(rows, schema=self._schema))
        self._buffer = []

    def close(self) -> Path:
        """Finish the file; it appears under its name only when complete."""
        if self.format == "parquet":
            self._flush_parquet()
            if self._parquet is None:  # no rows: still a valid, empty file
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({}), self._tmp)
            else:
                self._parquet.close()
        elif self._handle is not None:
            self._handle.close()
        os.replace(self._tmp, self.path)
        return self.path

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            if self._handle is not None:
                self._handle.close()
            if self._parquet is not None:
                self._parquet.close()
            self._tmp.unlink(missing_ok=True)


def _cell(value: object) -> object:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def _json_default(value: object) -> object:
    if hasattr(value, "item"):  # numpy scalars from pandas
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_rows(rows: Iterable[dict], path: str | os.PathLike, fmt: str | None = None, **kwargs) -> int:
    with RowWriter(path, fmt, **kwargs) as writer:
        for row in rows:
            writer.write(row)
    return writer.count


def curated(rows: Iterable[dict], min_score: float, by: str = "score") -> Iterable[dict]:
    return (row for row in rows if final_keep(row, min_score, by))


def score_histogram(scores: Iterable[object]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for score in scores:
        label = "none" if missing(score) else str(int(score))
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def push_to_hub(path: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = True) -> str:
    """Upload a finished export as a Hub dataset; the token comes from HF_TOKEN when not given."""
    import datasets

    fmt = format_for(path)
    loader = {"jsonl": "json", "csv": "csv", "parquet": "parquet"}[fmt]
    dataset = datasets.load_dataset(loader, data_files=str(path), split="train")
    try:
        dataset.push_to_hub(repo_id, token=token or os.environ.get("HF_TOKEN"), private=private)
    except Exception as exc:  # network, auth and Hub errors alike
        from backtrans.redaction import redact

        raise ExportError(redact(f"push to the Hub repo {repo_id} failed: {exc}", token)) from None
    return f"https://huggingface.co/datasets/{repo_id}"
