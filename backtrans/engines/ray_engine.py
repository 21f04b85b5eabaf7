"""`--engine ray`: the same task, client and parser, run by Ray Data actors across a cluster.

The input is read as a Ray Dataset (JSONL, CSV, Parquet, a folder of such shards, or a Hub dataset) and
judged with `map_batches` by a pool of actors. Each actor is one event loop with its own LLM client (its own
`--concurrency`) and its own store shard (`STORE.shards/shard-N.sqlite`, claimed with a file lock, so a rerun on
the same machine reuses the same shards). An actor looks a row up in every shard and in the main store before
calling the model, so a rerun, or a row finished by another actor in an earlier run, costs no request.
The dataset keeps its input order (`preserve_order`), and the driver writes the output in that order: JSONL,
CSV or Parquet, or, for an OUTPUT without a file extension, a folder of Parquet shards written by the cluster.

Without RAY_ADDRESS (or --ray-address) a local Ray is started for the run and stopped after it. How the pool
is sized to the cluster, and how a job that cannot go on is stopped, is `ray_cluster`'s. Actors report the
rows they finish to a small board actor on the driver's node, so progress shows as rows finish, whatever
order the output waits for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from backtrans.engines import ray_cluster
from backtrans.llm import LLMClient
from backtrans.records import FORMATS
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
            except BlockingIOError:  # held by a live actor; any other error (no locks on this file system) is raised
                self.lock.close()
                number += 1
        self.number = number
        self.own = RunStore(shard_dir / f"shard-{number}.sqlite")
        self.others: dict[str, RunStore] = {}

    def refresh(self) -> None:
        """Open shards that appeared since (another actor's), and the main store (an earlier asyncio run)."""
        paths = [p for p in self.shard_dir.glob("shard-*.sqlite") if p != Path(self.own.path)]
        if Path(self.main_store).exists():
            paths.append(Path(self.main_store))
        for path in paths:
            if str(path) not in self.others:
                self.others[str(path)] = RunStore(path)

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


class _Board:
    """A Ray actor (no CPU, on the driver's node): each pool actor's running counts, for progress and the watch.

    Counts are keyed by actor and process, and sent whole (not as increments), so a lost report costs nothing
    and an actor restarted after a lost node starts a new entry."""

    def __init__(self):
        self.entries: dict[str, dict] = {}

    def report(self, key: str, counts: dict) -> None:
        self.entries[key] = counts

    def snapshot(self) -> dict[str, dict]:
        return self.entries


COUNTED = ("done", "cached", "ok", "parse_error", "llm_error", "prompt_tokens", "completion_tokens")


class _Worker:
    """One Ray actor: an event loop, an LLM client and a store shard, reused for every batch it gets."""

    def __init__(self, task, store_path: str, run_id: str, kind: str, config: dict, mapping: dict,
                 required: tuple[str, ...], optional: tuple[str, ...], output_columns: tuple[str, ...],
                 normalize_rows: bool, board=None):
        import ray

        self.task = task
        self.store = ShardedStore(store_path, Path(store_path + SHARD_SUFFIX))
        self.store.own.start_run(kind, config, run_id=run_id)
        self.run_id = run_id
        self.client: LLMClient | None = None
        self.normalize = _normalizer(mapping, required, optional) if normalize_rows else None
        self.columns = output_columns
        self.board = board
        self.key = f"{ray.get_runtime_context().get_actor_id()}:{os.getpid()}"
        self.progress = Progress()  # this process's rows, over every batch it got
        self.started = 0
        self.reported = 0.0

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.board is None or (not force and now - self.reported < 0.25):
            return
        self.reported = now
        counts = {name: getattr(self.progress, name) for name in COUNTED}
        counts["in_flight"] = self.started - self.progress.done
        self.board.report.remote(self.key, counts)

    async def __call__(self, batch):
        import pyarrow as pa

        if self.client is None:  # inside the actor's own event loop
            self.client = LLMClient(self.task.settings)
        self.store.refresh()
        rows = batch.to_pylist()
        if self.normalize is not None:
            rows = [self.normalize(row) for row in rows]
        self.started += len(rows)
        out = []
        async for row, result in run_rows(rows, self.task, self.client, self.store, self.run_id, self.progress,
                                          ticks=True):
            if row is not None:
                out.append(merge(row, result, self.columns))
            self._report()
        self._report(force=True)
        return pa.Table.from_pylist(out)


def _read_input(job: FileJob):
    """The input as a Ray Dataset: files read by the cluster's tasks, or rows this process made."""
    import ray.data

    cpus = {"num_cpus": ray_cluster.TASK_CPUS}  # beside an actor on a 1-CPU node (Ray's default asks for 1)
    if job.row_source is not None:
        # Augment's candidates: made here, after the corpus-wide filters.
        return ray.data.from_items(list(job.rows()))
    path = Path(job.source)
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.is_file()) if path.is_dir() else []
    suffixes = {p.suffix.lower() for p in files}
    formats = {FORMATS.get(suffix) for suffix in suffixes}  # records' one registry of input formats
    if files and formats == {"jsonl"}:
        # Read as text and parsed by us: pyarrow's JSON reader guesses one type per column and block.
        import json

        lines = ray.data.read_text([str(p) for p in files], **cpus)
        return lines.flat_map(lambda r: [json.loads(r["text"])] if r["text"].strip() else [], **cpus)
    if files and formats == {"csv"}:
        import csv

        import pyarrow as pa
        import pyarrow.csv as pacsv

        with files[0].open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle, delimiter="\t" if ".tsv" in suffixes else ","))
        convert = pacsv.ConvertOptions(column_types={h.strip(): pa.string() for h in header},
                                       strings_can_be_null=False)
        parse = pacsv.ParseOptions(delimiter="\t" if ".tsv" in suffixes else ",", newlines_in_values=True)
        return ray.data.read_csv([str(p) for p in files], convert_options=convert, parse_options=parse, **cpus)
    if files and formats == {"parquet"}:
        return ray.data.read_parquet([str(p) for p in files], **cpus)
    import datasets

    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))
    else:
        dataset = datasets.load_dataset(job.source, job.config, split=job.split)
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[job.split or next(iter(dataset))]
    return ray.data.from_huggingface(dataset)


def run_job(job: FileJob, address: str | None = None, actors: int | None = None,
            on_progress: Callable[[Progress], None] | None = None, total: int | None = None,
            run_id: str | None = None, log: TextIO | None = None) -> tuple[str, Progress]:
    """Run a FileJob on Ray; the output is written in input order. Returns (run_id, progress).

    `actors`: the pool's size (--actors); by default one per free CPU of the cluster (ray_cluster.pool_size).
    Raises EngineError when the cluster cannot be joined or the job can make no progress."""
    import logging

    import ray
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our own progress line says what matters
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled": ours show
    log = log or sys.stderr
    total = job.validate() if total is None else total
    store = RunStore(job.store_path)
    config = job.run_config()
    kind = job.task.kind
    run_id = run_id or store.resume_or_start(kind, config, parent=job.parent_run_id)
    live = Progress(total=total)  # from here: joining the cluster and starting the actors count too
    joined = ray_cluster.connect(address)
    try:
        return run_id, _run(job, run_id, kind, config, live, actors, on_progress, log, store)
    finally:
        store.close()
        if joined:
            ray.shutdown()


def _run(job: FileJob, run_id: str, kind: str, config, live: Progress, actors: int | None,
         on_progress: Callable[[Progress], None] | None, log: TextIO, store: RunStore) -> Progress:
    """The pipeline on the joined cluster: `live` counts rows as actors finish them, the result counts the
    rows written."""
    import ray
    import ray.data
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from backtrans.export import RowWriter

    total = live.total
    start = ray_cluster.nodes()
    size = ray_cluster.pool_size(start, actors)
    concurrency = job.task.settings.concurrency
    print(f"ray: {size} actor{'' if size == 1 else 's'} x --concurrency {concurrency} = {size * concurrency} "
          f"requests in flight; {total} rows; nodes: {ray_cluster.describe(start)}", file=log, flush=True)
    waiting = ray_cluster.shortfall(size, start)
    if waiting:
        print(f"ray: waiting for CPUs: {waiting}", file=log, flush=True)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the output keeps the input's order
    context.enable_progress_bars = False
    here = ray.get_runtime_context().get_node_id()
    board = ray.remote(num_cpus=0)(_Board).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
    results = _read_input(job).map_batches(
        _Worker, batch_size=max(64, concurrency * 4), batch_format="pyarrow", num_cpus=ray_cluster.ACTOR_CPUS,
        compute=ray.data.ActorPoolStrategy(size=size),
        fn_constructor_args=(job.task, str(Path(job.store_path).resolve()), run_id, kind, config, job.mapping,
                             job.required, job.optional, job.task.output_columns, job.row_source is None, board),
    )
    output = Path(job.output)
    folder = not output.suffix  # a folder of Parquet shards, written by the cluster
    feed: queue.Queue = queue.Queue(maxsize=8)

    def consume() -> None:
        # Ray's iterator blocks; in its own thread it leaves the driver's thread free to watch and report.
        try:
            if folder:
                results.write_parquet(str(output), ray_remote_args={"num_cpus": ray_cluster.TASK_CPUS})
            else:
                for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
                    feed.put(batch)
            feed.put(None)
        except BaseException as exc:  # raised again in the driver's thread
            feed.put(exc)

    watch = ray_cluster.Watch(ray.get_runtime_context().get_job_id(), size, start, total, log=log)
    supervisor = _Supervisor(board, watch, live, on_progress)
    written = Progress(total=total)
    threading.Thread(target=consume, name="ray-output", daemon=True).start()
    with contextlib.ExitStack() as stack:
        writer = None if folder else stack.enter_context(RowWriter(output, job.output_format))
        while True:
            try:
                item = feed.get(timeout=0.5)
            except queue.Empty:
                supervisor.tick(written.done)
                continue
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            for row in item.to_pylist():
                writer.write(row)
                written.count({"status": row.get("status") or "ok"}, False, None)
            supervisor.tick(written.done)
    if folder:
        for status, count in _statuses(ray.data.read_parquet(str(output), num_cpus=ray_cluster.TASK_CPUS)).items():
            setattr(written, status, getattr(written, status, 0) + count)
            written.done += count
    written.started, written.finished = supervisor.live.started, time.monotonic()
    counts = ray.get(board.snapshot.remote(), timeout=30)
    written.prompt_tokens = sum(c.get("prompt_tokens", 0) for c in counts.values())
    written.completion_tokens = sum(c.get("completion_tokens", 0) for c in counts.values())
    written.cached = min(written.done, sum(c.get("cached", 0) for c in counts.values()))
    store.finish_run(run_id)
    return written


class _Supervisor:
    """The driver's thread between output batches: the board's counts to the progress display, and the watch."""

    def __init__(self, board, watch: ray_cluster.Watch, live: Progress,
                 on_progress: Callable[[Progress], None] | None):
        self.board, self.watch, self.live, self.on_progress = board, watch, live, on_progress
        self.counts: dict[str, dict] = {}
        self.checked = 0.0

    def tick(self, written: int) -> None:
        import ray

        try:
            self.counts = ray.get(self.board.snapshot.remote(), timeout=10)
        except ray.exceptions.GetTimeoutError:
            pass  # the last counts stand; the watch still looks at the cluster
        _tally(self.live, self.counts, floor=written)
        if self.on_progress:
            self.on_progress(self.live)
        now = time.monotonic()
        if now - self.checked >= 2:
            self.checked = now
            self.watch.check(self.live.done, written, self.counts)


def _tally(progress: Progress, counts: dict[str, dict], floor: int) -> None:
    """The board's sums as a Progress: rows finished in any order (a row redone after a lost node counts once
    more, so the sums are capped at the total)."""
    for name in COUNTED:
        setattr(progress, name, sum(c.get(name, 0) for c in counts.values()))
    progress.done = max(floor, min(progress.done, progress.total or progress.done))


def _statuses(dataset) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in dataset.select_columns(["status"]).iter_batches(batch_format="pyarrow"):
        for status in batch.column("status").to_pylist():
            counts[status or "ok"] = counts.get(status or "ok", 0) + 1
    return counts
