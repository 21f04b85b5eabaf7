"""`--engine ray`: the same task, client and parser, run by Ray Data actors across a cluster.

The input is read as a Ray Dataset (JSONL, CSV, Parquet, a folder of such shards, or a Hub dataset) and
judged with `map_batches` by a pool of actors. Each actor is one event loop with its own LLM client (its own
`--concurrency`) and its own store shard (`STORE.shards/shard-N.sqlite`, claimed with a file lock, so a rerun on
the same machine reuses the same shards). An actor looks a row up in every shard and in the main store before
calling the model, so a rerun, or a row finished by another actor in an earlier run, costs no request.
The dataset keeps its input order (`preserve_order`), and the driver writes the output in that order: JSONL,
CSV or Parquet, or, for an OUTPUT without a file extension, a folder of Parquet shards written by the cluster.

Without RAY_ADDRESS (or --ray-address) a local Ray is started for the run and stopped after it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from backtrans.llm import LLMClient
from backtrans.runner import FileJob, Progress, merge, run_rows
from backtrans.store import RunStore

SHARD_SUFFIX = ".shards"


class ShardedStore:
    """An actor's view of the run store: it writes to its own shard and reads from all of them.

    It offers what `run_rows` uses of a RunStore (get, link, record, record_many), so the runner, the
    cache rule and the group commit are the project's own.
    """

    def __init__(self, main_store: str, shard_dir: Path):
        shard_dir.mkdir(parents=True, exist_ok=True)
        self.shard_dir = shard_dir
        self.main_store = main_store
        number = 0
        while True:  # the first shard no other live actor holds
            self.lock = (shard_dir / f"shard-{number}.lock").open("w")
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                self.lock.close()
                number += 1
        self.number = number
        self.own = RunStore(shard_dir / f"shard-{number}.sqlite")
        self.others: dict[str, RunStore] = {}

    def _readers(self) -> list[RunStore]:
        # Shards that appeared since (another actor's), and the main store (an earlier asyncio run).
        paths = [p for p in self.shard_dir.glob("shard-*.sqlite") if p != Path(self.own.path)]
        if Path(self.main_store).exists():
            paths.append(Path(self.main_store))
        for path in paths:
            if str(path) not in self.others:
                self.others[str(path)] = RunStore(path)
        return list(self.others.values())

    def refresh(self) -> None:
        self._readers()

    def get(self, key: str) -> dict | None:
        found = self.own.get(key)
        if found is not None:
            return found
        for reader in self.others.values():
            found = reader.get(key)
            if found is not None:
                return found
        return None

    def link(self, run_id: str, key: str) -> None:
        self.own.link(run_id, key)

    def record(self, run_id: str, key: str, result: dict, call: dict | None) -> None:
        self.own.record(run_id, key, result, call)

    def record_many(self, run_id: str, items: list) -> None:
        self.own.record_many(run_id, items)

    def close(self) -> None:
        for store in (self.own, *self.others.values()):
            store.close()
        self.lock.close()


def _normalizer(mapping: dict, required: tuple[str, ...], optional: tuple[str, ...]) -> Callable[[dict], dict]:
    """Rows as `records.iter_rows` gives them (our column names, clean values); the driver validated them."""
    from backtrans.records import _clean_value, resolve_columns

    resolved: dict[str, str] | None = None

    def normalize(row: dict) -> dict:
        nonlocal resolved
        if resolved is None:
            resolved = resolve_columns(row.keys(), mapping, required + optional)
        out = {resolved.get(k, k): _clean_value(v) for k, v in row.items()}
        for column in required + optional:
            value = out.get(column)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[column] = str(value)
            elif column in optional and (value is None or (isinstance(value, str) and not value.strip())):
                out[column] = None
        return out

    return normalize


class _Worker:
    """One Ray actor: an event loop, an LLM client and a store shard, reused for every batch it gets."""

    def __init__(self, task, store_path: str, run_id: str, kind: str, config: dict, mapping: dict,
                 required: tuple[str, ...], optional: tuple[str, ...], output_columns: tuple[str, ...],
                 normalize_rows: bool):
        self.task = task
        self.store = ShardedStore(store_path, Path(store_path + SHARD_SUFFIX))
        self.store.own.start_run(kind, config, run_id=run_id)
        self.run_id = run_id
        self.client: LLMClient | None = None
        self.normalize = _normalizer(mapping, required, optional) if normalize_rows else None
        self.columns = output_columns

    async def __call__(self, batch):
        import pyarrow as pa

        if self.client is None:  # inside the actor's own event loop
            self.client = LLMClient(self.task.settings)
        self.store.refresh()
        rows = batch.to_pylist()
        if self.normalize is not None:
            rows = [self.normalize(row) for row in rows]
        out = []
        async for row, result in run_rows(rows, self.task, self.client, self.store, self.run_id):
            out.append(merge(row, result, self.columns))
        return pa.Table.from_pylist(out)


def _read(source: str, config: str | None, split: str | None):
    """The input as a Ray Dataset, and whether its rows still need our column names."""
    import ray.data

    path = Path(source)
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.is_file()) if path.is_dir() else []
    suffixes = {p.suffix.lower() for p in files}
    if files and suffixes <= {".jsonl", ".ndjson", ".json"}:
        # Read as text and parsed by us: pyarrow's JSON reader guesses one type per column and block.
        import json

        lines = ray.data.read_text([str(p) for p in files])
        return lines.flat_map(lambda r: [json.loads(r["text"])] if r["text"].strip() else []), True
    if files and suffixes <= {".csv", ".tsv"}:
        import csv

        import pyarrow as pa
        import pyarrow.csv as pacsv

        with files[0].open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle, delimiter="\t" if ".tsv" in suffixes else ","))
        convert = pacsv.ConvertOptions(column_types={h.strip(): pa.string() for h in header},
                                       strings_can_be_null=False)
        parse = pacsv.ParseOptions(delimiter="\t" if ".tsv" in suffixes else ",", newlines_in_values=True)
        return ray.data.read_csv([str(p) for p in files], convert_options=convert, parse_options=parse), True
    if files and suffixes <= {".parquet", ".pq"}:
        return ray.data.read_parquet([str(p) for p in files]), True
    import datasets

    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))
    else:
        dataset = datasets.load_dataset(source, config, split=split)
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[split or next(iter(dataset))]
    return ray.data.from_huggingface(dataset), True


def connect(address: str | None) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS); without one, start a local Ray. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        # The workers of a remote cluster get this package from the driver.
        package = str(Path(__file__).resolve().parents[1])
        ray.init(address=address, runtime_env={"py_modules": [package]}, **quiet)
        return False
    root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **quiet)
    return True


def run_job(job: FileJob, address: str | None = None, actors: int | None = None,
            on_progress: Callable[[Progress], None] | None = None, total: int | None = None,
            run_id: str | None = None) -> tuple[str, Progress]:
    """Run a FileJob on Ray; the output is written in input order. Returns (run_id, progress)."""
    import logging

    import ray
    import ray.data

    from backtrans.export import RowWriter

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our own progress line says what matters

    total = job.validate() if total is None else total
    store = RunStore(job.store_path)
    config = job.run_config()
    kind = job.task.kind
    run_id = run_id or store.resume_or_start(kind, config, parent=job.parent_run_id)
    started_here = connect(address)
    progress = Progress(total=total)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the output keeps the input's order
        context.enable_progress_bars = False
        if job.row_source is not None:
            # Rows made by this process (augment's segments, after the corpus-wide filters).
            dataset, normalize = ray.data.from_items(list(job.rows())), False
        else:
            dataset, normalize = _read(job.source, job.config, job.split)
        if actors is None:
            actors = max(1, min(8, int(ray.cluster_resources().get("CPU", 1))))
        batch_size = max(64, job.task.settings.concurrency * 4)
        results = dataset.map_batches(
            _Worker, batch_size=batch_size, batch_format="pyarrow", num_cpus=0.5,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_args=(job.task, str(Path(job.store_path).resolve()), run_id, kind, config, job.mapping,
                                 job.required, job.optional, job.task.output_columns, normalize),
        )
        output = Path(job.output)
        if not output.suffix:  # a folder of Parquet shards, written by the cluster
            results.write_parquet(str(output))
            for status, count in _statuses(ray.data.read_parquet(str(output))).items():
                setattr(progress, status, getattr(progress, status, 0) + count)
                progress.done += count
        else:
            with RowWriter(output, job.output_format) as writer:
                for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
                    for row in batch.to_pylist():
                        writer.write(row)
                        progress.count({"status": row.get("status") or "ok"}, False, None)
                        if on_progress:
                            on_progress(progress)
        progress.finished = time.monotonic()
        usage = _shard_usage(Path(str(Path(job.store_path).resolve()) + SHARD_SUFFIX), run_id)
        progress.prompt_tokens, progress.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        progress.cached = max(0, progress.done - usage["calls"])  # rows no actor had to ask the model for
        store.finish_run(run_id)
        return run_id, progress
    finally:
        store.close()
        if started_here:
            ray.shutdown()


def _statuses(dataset) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in dataset.select_columns(["status"]).iter_batches(batch_format="pyarrow"):
        for status in batch.column("status").to_pylist():
            counts[status or "ok"] = counts.get(status or "ok", 0) + 1
    return counts


def _shard_usage(shard_dir: Path, run_id: str) -> dict:
    """Calls and tokens of this run across every shard."""
    totals = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for path in sorted(shard_dir.glob("shard-*.sqlite")):
        store = RunStore(path)
        try:
            for name, value in store.usage(run_id).items():
                totals[name] += value
        finally:
            store.close()
    return totals
