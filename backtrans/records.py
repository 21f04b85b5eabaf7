"""Records: loading pairs from JSONL, CSV, Parquet or Hugging Face datasets, mapping columns, validating.

Every problem is reported as `FILE:LINE:COLUMN: what is wrong`, before any model is called, so a bad
file costs nothing. Rows stream: nothing here needs the whole file in memory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PAIR_COLUMNS = ("instruction", "generation")
ALIASES = {
    "instruction": ("instruction", "prompt", "question", "query", "input"),
    "generation": ("generation", "response", "output", "completion", "answer"),
    "text": ("text", "document", "content", "body"),
}
MAX_FIELD_CHARS = 1_000_000
SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "sample_pairs.jsonl"
# The one registry of tabular file formats, suffix -> format: loading, the upload picker, export and Ray ask here.
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "csv",
           ".parquet": "parquet", ".pq": "parquet"}
SUFFIXES = tuple(FORMATS)
FORMAT_HINT = "use .jsonl, .csv, .tsv or .parquet"

csv.field_size_limit(64 * 1024 * 1024)  # larger fields get our own clear error, not csv's


class RecordsError(ValueError):
    """Bad input. The message names the file, the line and the column.

    A missing column also carries `missing_columns` (ours) and `found_columns` (the data's): the message stays
    neutral, and each face adds its own way to map one (the CLI's --map, the app's column dropdowns).
    """

    def __init__(self, message: str, *, missing_columns: Iterable[str] = (), found_columns: Iterable[str] = ()):
        super().__init__(message)
        self.missing_columns = tuple(missing_columns)
        self.found_columns = tuple(found_columns)


@dataclass(frozen=True)
class Located:
    where: str  # "data.jsonl:17" or "data.parquet row 17"
    row: dict


def file_format(path: str | os.PathLike) -> str:
    """`jsonl`, `csv` or `parquet`, from the file's suffix; anything else is a clear error."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise RecordsError(f"{Path(path).name}: unknown file type {suffix!r}; {FORMAT_HINT}")
    return FORMATS[suffix]


def parse_mapping(items: Iterable[str] | dict | None) -> dict[str, str]:
    """`["prompt=instruction", "response=generation"]` -> {"prompt": "instruction", ...}."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    mapping = {}
    for item in items:
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise RecordsError(f"column mapping {item!r} should look like SOURCE=TARGET, e.g. prompt=instruction")
        mapping[source.strip()] = target.strip()
    return mapping


def resolve_columns(columns: Iterable[str], mapping: dict[str, str], required: Iterable[str]) -> dict[str, str]:
    """Source column -> our name: explicit mapping first, then the usual aliases (prompt, response, ...)."""
    columns = list(columns)
    resolved = {src: dst for src, dst in mapping.items() if src in columns}
    for target in required:
        if target in resolved.values():
            continue
        for alias in ALIASES.get(target, (target,)):
            if alias in columns and alias not in resolved:
                resolved[alias] = target
                break
    return resolved


def _fmt(value: object) -> str:
    return repr(value) if not isinstance(value, str) else value


def missing(value: object) -> bool:
    """None, NaN, pandas' NA and NaT: a cell with no value, whichever library wrote it. The one test for it."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def _clean_value(value: object) -> object:
    return None if missing(value) else value


# --- raw readers: yield (where, dict) ---------------------------------------------------------------


def _decode_line(raw: bytes, name: str, lineno: int) -> str:
    if b"\x00" in raw:
        if lineno == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise RecordsError(f"{name}:1:1: the file is UTF-16; save it as UTF-8")
        column = raw.index(b"\x00") + 1
        raise RecordsError(f"{name}:{lineno}:{column}: binary data (a NUL byte); expected UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = len(raw[: exc.start].decode("utf-8", errors="replace")) + 1
        raise RecordsError(
            f"{name}:{lineno}:{column}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
            "the file may be Latin-1 or Windows-1252: save it as UTF-8"
        ) from None


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield lineno, _decode_line(raw, path.name, lineno)


def _read_jsonl(path: Path) -> Iterator[Located]:
    first = _first_meaningful_char(path)
    if first == "[":
        yield from _read_json_array(path)
        return
    for lineno, line in _utf8_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordsError(f"{path.name}:{lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise RecordsError(f"{path.name}:{lineno}:1: expected a JSON object per line, got {type(obj).__name__}")
        yield Located(f"{path.name}:{lineno}", obj)


def _first_meaningful_char(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    return head[:1].decode("latin-1")


def _read_json_array(path: Path) -> Iterator[Located]:
    text = "\n".join(line for _, line in _utf8_lines(path))
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordsError(f"{path.name}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    for index, obj in enumerate(items, start=1):
        if not isinstance(obj, dict):
            raise RecordsError(f"{path.name} item {index}: expected a JSON object, got {type(obj).__name__}")
        yield Located(f"{path.name} item {index}", obj)


def _read_csv(path: Path) -> Iterator[Located]:
    for _ in _utf8_lines(path):  # a cheap pass that pins encoding problems to a line and column
        pass
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise RecordsError(f"{path.name}:1: malformed CSV header: {exc}") from None
        header = [h.strip() for h in header]
        seen: set[str] = set()
        for col, name in enumerate(header, start=1):
            if name in seen:
                raise RecordsError(f"{path.name}:1:{col}: the header repeats the column {name!r}")
            seen.add(name)
        start_line = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise RecordsError(f"{path.name}:{start_line}: malformed CSV ({exc}); check the quotes") from None
            where = f"{path.name}:{start_line}"
            start_line = reader.line_num + 1
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise RecordsError(
                    f"{where}: {len(values)} fields where the header has {len(header)}; "
                    "quote fields that contain commas or newlines"
                )
            yield Located(where, dict(zip(header, values, strict=True)))


def _read_parquet(path: Path) -> Iterator[Located]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise RecordsError(f"{path.name}: not a readable Parquet file ({exc})") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=2048):
        for row in batch.to_pylist():
            index += 1
            yield Located(f"{path.name} row {index}", row)


def _card_strings(value: object) -> Iterator[str]:
    """Every string inside a card's `data_files` or `data_dir` (a string, a list, or split/path mappings)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _card_strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _card_strings(item)


def _inside_the_repo(pattern: str) -> bool:
    """A path relative to the repository, as `datasets` decides it, that does not walk out of it."""
    import urllib.parse

    pattern = pattern.strip()
    return (bool(pattern) and urllib.parse.urlparse(pattern).scheme == "" and not os.path.isabs(pattern)
            and not pattern.startswith(("~", "\\")) and "::" not in pattern
            and ".." not in pattern.replace("\\", "/").split("/"))


def _checked_hub_revision(repo_id: str) -> str | None:
    """The Hub revision to load, once its dataset card names data files inside its own repository only.

    `datasets` resolves a card's `data_files` and `data_dir` as written: an absolute path is globbed on this
    machine and a URL is requested (HEAD and GET, any host) before it finds that they are not the repo's and
    refuses. A Hub id a visitor typed could so make the server call URLs on its own network. The card is read at
    a pinned commit, and that commit is what is loaded: it cannot change in between. Offline nothing is fetched.
    """
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.repocard import metadata_load

    if constants.HF_HUB_OFFLINE:
        return None
    revision = HfApi().dataset_info(repo_id).sha
    for card in ("README.md", ".huggingface.yaml"):  # where `datasets` reads `configs` from
        try:
            local = hf_hub_download(repo_id, card, repo_type="dataset", revision=revision)
        except EntryNotFoundError:
            continue
        if card == "README.md":
            metadata = metadata_load(local) or {}
        else:
            import yaml

            metadata = yaml.safe_load(Path(local).read_text(encoding="utf-8")) or {}
        configs = metadata.get("configs") if isinstance(metadata, dict) else None
        for entry in configs if isinstance(configs, list) else []:
            named = [entry.get("data_files"), entry.get("data_dir")] if isinstance(entry, dict) else []
            if not all(_inside_the_repo(pattern) for pattern in _card_strings(named)):
                raise RecordsError(f"{repo_id}: its dataset card names data files outside its own repository; "
                                   "only a dataset's own files are loaded")
    return revision


def _read_hf_dataset(source: str, config: str | None, split: str | None) -> Iterator[Located]:
    import datasets

    path = Path(source)
    try:
        if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
            dataset = datasets.load_from_disk(str(path))
        elif path.exists():  # a folder of data files and a card: this machine's own
            dataset = datasets.load_dataset(source, config, split=split)
        else:
            dataset = datasets.load_dataset(source, config, split=split, revision=_checked_hub_revision(source))
    except RecordsError:
        raise
    except FileNotFoundError as exc:
        raise RecordsError(f"{source}: no such dataset ({exc})") from None
    except Exception as exc:  # the Hub and datasets raise many types; all mean "cannot load this"
        raise RecordsError(f"{source}: could not load the dataset: {type(exc).__name__}: {exc}") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split is None:
            if len(dataset) != 1:
                raise RecordsError(f"{source}: choose a split: {', '.join(dataset)}")
            split = next(iter(dataset))
        if split not in dataset:
            raise RecordsError(f"{source}: no split {split!r} (has {', '.join(dataset)})")
        dataset = dataset[split]
    label = f"{source}[{split}]" if split else source
    for index, row in enumerate(dataset, start=1):
        yield Located(f"{label} row {index}", row)


def read_raw(source: str | os.PathLike, config: str | None = None, split: str | None = None) -> Iterator[Located]:
    """Rows as they are in the source, each with where it came from."""
    path = Path(source)
    if path.is_file():
        if path.stat().st_size == 0:
            raise RecordsError(f"{path.name}: the file is empty")
        readers = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}
        return readers[file_format(path)](path)
    if str(source).lower().endswith(SUFFIXES) and not path.exists():
        raise RecordsError(f"{source}: no such file")
    return _read_hf_dataset(str(source), config, split)


# --- validated rows ---------------------------------------------------------------------------------


def iter_rows(
    source: str | os.PathLike,
    mapping: Iterable[str] | dict | None = None,
    required: Iterable[str] = PAIR_COLUMNS,
    *,
    config: str | None = None,
    split: str | None = None,
    drop_duplicates: bool = False,
    optional: Iterable[str] = (),
    check_duplicates: bool = True,
) -> Iterator[Located]:
    """Validated rows with our column names. Raises RecordsError at the first bad row.

    `optional` columns are renamed from their aliases like required ones, and may be missing or empty.
    `check_duplicates=False` skips the duplicate check (and its memory) on a second pass over a source
    already validated; dropping duplicates still tracks them.
    """
    required = tuple(required)
    optional = tuple(optional)
    mapping = parse_mapping(mapping)
    resolved: dict[str, str] | None = None
    seen: set[int] = set()  # 8-byte fingerprints: a million rows cost tens of MB, not hundreds
    count = 0
    name = Path(source).name if Path(source).is_file() else str(source)
    for located in read_raw(source, config=config, split=split):
        row = located.row
        if resolved is None:
            resolved = resolve_columns(row.keys(), mapping, required + optional)
            missing = [c for c in required if c not in resolved.values()]
            if missing:
                found = [str(key) for key in row.keys()]
                raise RecordsError(
                    f"{located.where}: missing column {', '.join(repr(m) for m in missing)} "
                    f"(found: {', '.join(found) or 'none'})", missing_columns=missing, found_columns=found)
            for src in mapping:
                if src not in row:
                    raise RecordsError(f"{located.where}: the mapping names column {src!r}, which is not in the data")
        out = {resolved.get(k, k): _clean_value(v) for k, v in row.items()}
        for column in required + optional:
            source_column = next((s for s, d in resolved.items() if d == column), column)
            value = out.get(column)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = out[column] = str(value)
            if value is None or (isinstance(value, str) and not value.strip()):
                if column in optional:
                    out[column] = None
                    continue
                state = "missing" if column not in out else "empty"
                raise RecordsError(f"{located.where}: column {source_column!r} is {state}")
            if not isinstance(value, str):
                raise RecordsError(
                    f"{located.where}: column {source_column!r} should be text, got {type(value).__name__}"
                )
            if len(value) > MAX_FIELD_CHARS:
                raise RecordsError(
                    f"{located.where}: column {source_column!r} holds {len(value):,} characters, "
                    f"over the limit of {MAX_FIELD_CHARS:,}"
                )
        if not (check_duplicates or drop_duplicates):
            count += 1
            yield Located(located.where, out)
            continue
        fingerprint = _fingerprint(out, required)
        if fingerprint in seen:
            if drop_duplicates:
                continue
            first = _first_with(source, fingerprint, mapping, required, optional, config, split)
            raise RecordsError(
                f"{located.where}: duplicate of {first} (same {' and '.join(required)}); "
                "remove it or pass --drop-duplicates"
            )
        seen.add(fingerprint)
        count += 1
        yield Located(located.where, out)
    if count == 0 and resolved is None:
        raise RecordsError(f"{name}: no rows (only a header, or blank lines)")


def _fingerprint(row: dict, columns: tuple[str, ...]) -> int:
    blob = json.dumps([row.get(c) for c in columns], ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")


def _first_with(source, fingerprint: int, mapping, required, optional, config, split) -> str:
    """Where a duplicate first appeared: found again by reading, since only fingerprints are kept."""
    for located in iter_rows(source, mapping, required, config=config, split=split, optional=optional,
                             drop_duplicates=True):
        if _fingerprint(located.row, required) == fingerprint:
            return located.where
    return "an earlier row"


def validate(source: str | os.PathLike, **kwargs) -> int:
    """Read the whole source once, raising at the first problem; returns the row count."""
    return sum(1 for _ in iter_rows(source, **kwargs))


def load_records(source: str | os.PathLike, mapping: Iterable[str] | dict | None = None, **kwargs) -> pd.DataFrame:
    import pandas as pd  # not at import time: `score` streams rows and never needs pandas

    return pd.DataFrame([located.row for located in iter_rows(source, mapping, **kwargs)])


def preview_columns(source: str | os.PathLike, rows: int = 5, **kwargs) -> pd.DataFrame:
    """The first rows as they are, for choosing a column mapping before validating."""
    import pandas as pd

    head = []
    for located in read_raw(source, **kwargs):
        head.append(located.row)
        if len(head) >= rows:
            break
    return pd.DataFrame(head)


def dataframe_rows(frame: pd.DataFrame) -> list[dict]:
    return [{k: _clean_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
