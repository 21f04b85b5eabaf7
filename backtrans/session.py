"""One user's session, headless: load, generate, augment, judge, resume, review, Argilla, export.

The faces (app.py, the CLI) map their inputs to these methods and render what they return; no face
decides who may see what. A `Workspace` is the server's side (data folder, shared run store, limits);
a `Session` is one owner's view of it. Every run, upload and export is the owner's, and a run id of
another owner reads exactly as one that never existed.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from backtrans import backends
from backtrans.curate import (
    HEADERS,
    Filters,
    Workbench,
    measure_histogram,
    page,
    plain_value,
    record_html,
    threshold_counts,
)
from backtrans.limits import JobGate, LimitError, Limits, day_ago
from backtrans.owners import Owner, OwnershipError, check_hub_id, confined_path, on_space
from backtrans.records import SAMPLE_PATH, RecordsError, dataframe_rows, load_records, preview_columns, resolve_columns
from backtrans.redaction import redact
from backtrans.run_config import RunConfig
from backtrans.store import RunStore
from backtrans.templates import Template, TemplateError, load_template, parse_template

DEFAULT_TEMPLATE = os.environ.get("BACKTRANS_TEMPLATE", "humpback")
CUSTOM_TEMPLATE = "custom"
PAGE_SIZE = 50
UPLOAD_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".pq")
SAMPLE_LABEL = "the bundled sample"


class SessionError(RuntimeError):
    """Something the user asked for that cannot be done. The message is safe to show to them."""


class NoSuchRun(SessionError):
    def __init__(self) -> None:
        super().__init__("No such run.")


# --- server side --------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """What every session shares: the data folder, the run store, the limits and the job gate."""

    data_dir: Path
    limits: Limits = field(default_factory=Limits)
    gate: JobGate = field(default_factory=JobGate)
    local_files_dir: Path | None = None  # opt-in folder a workstation user may load from by name

    @classmethod
    def from_env(cls, default_dir: str | Path) -> Workspace:
        local_dir = os.environ.get("BACKTRANS_LOCAL_FILES_DIR", "").strip()
        if local_dir and on_space():
            local_dir = ""  # a Space serves strangers: never a folder of server files
        return cls(Path(os.environ.get("BACKTRANS_DATA_DIR") or default_dir), Limits.from_env(),
                   local_files_dir=Path(local_dir).resolve() if local_dir else None)

    @property
    def store_path(self) -> str:
        return str(self.data_dir / "runs.sqlite")

    def owner_dir(self, owner: Owner) -> Path:
        return self.data_dir / "owners" / owner.folder

    def session(self, owner: Owner) -> Session:
        return Session(self, owner)

    def expire(self, now: float | None = None) -> int:
        """Remove runs and owner files older than the retention period (run at start). Returns runs removed."""
        if not self.limits.retention_days:
            return 0
        cutoff = (now or time.time()) - self.limits.retention_days * 86400
        removed = 0
        if Path(self.store_path).exists():
            store = RunStore(self.store_path)
            try:
                removed = store.delete_runs(before=cutoff)
            finally:
                store.close()
        owners = self.data_dir / "owners"
        for path in sorted(owners.rglob("*"), reverse=True) if owners.exists() else ():
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()  # children come first in reverse order
        return removed


# --- what the faces render ----------------------------------------------------------------------------------


@dataclass
class Inspection:
    columns: list[str]
    instruction_column: str | None
    generation_column: str | None
    head: pd.DataFrame
    message: str


@dataclass
class Loaded:
    preview: pd.DataFrame
    message: str
    ok: bool = True


@dataclass
class JobUpdate:
    message: str
    done: bool = False
    progress: object | None = None


@dataclass
class RunSummary:
    run_id: str
    kind: str
    label: str
    finished: bool
    created: float

    def describe(self) -> str:
        when = datetime.datetime.fromtimestamp(self.created).strftime("%Y-%m-%d %H:%M")
        return f"{when} · {self.kind} · {self.label} · {'finished' if self.finished else 'unfinished'}"


@dataclass
class Resumed:
    message: str
    template: str
    model: str
    base_url: str
    backend: str


@dataclass
class ReviewView:
    table: pd.DataFrame
    page_info: str
    histogram: pd.DataFrame
    summary: str


@dataclass
class Exported:
    path: str | None
    rows: int
    message: str


def progress_text(progress, final: bool = False) -> str:
    """Rows done, by status, tokens, rate and ETA; at the end, how long the whole run took."""
    elapsed = time.monotonic() - progress.started
    rate = progress.done / elapsed if elapsed > 0 else 0.0
    counts = (f"{progress.ok} ok · {progress.parse_error} parse errors · {progress.llm_error} LLM errors · "
              f"{progress.cached} from the store · {progress.tokens:,} tokens")
    if final:
        return f"**Done:** {progress.done} rows in {_duration(elapsed)} · {counts}"
    left = (progress.total or 0) - progress.done
    eta = f" · about {_duration(left / rate)} left" if rate > 0 and left > 0 else ""
    return f"{progress.done}/{progress.total} rows · {counts} · {rate:.2f} rows/s{eta}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


# --- one owner's session ------------------------------------------------------------------------------------


class Session:
    def __init__(self, workspace: Workspace, owner: Owner):
        self.workspace = workspace
        self.owner = owner
        self.bench: Workbench | None = None
        self.source_path = ""  # where the rows came from, for resume: the owner's copy, the sample, a Hub id
        self.source_label = ""  # what the user calls it: the uploaded file's own name, the Hub id
        self.source_kind = ""
        self.source_options: tuple[str | None, str | None] = (None, None)  # a Hub dataset's config and split
        self.pending_upload: tuple[str, str] | None = None
        self.selected_row: int | None = None
        self.threshold = 4.0  # the last one the review used: the detail panel's verdict follows it
        self.review_plan = None  # (plan rows, PlanSummary) once a review budget was planned
        self.template: Template = load_template(DEFAULT_TEMPLATE)
        self.keep_by = "expected_score" if self.template.logprobs else "score"

    # --- data ---------------------------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        return self.workspace.owner_dir(self.owner)

    def _keep_upload(self, path: str, original_name: str | None) -> tuple[str, str]:
        """A copy in the owner's own folder (Gradio may clean its temp files), named by content."""
        source = Path(path)
        label = Path(original_name or source.name).name
        suffix = Path(label).suffix.lower() or source.suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            raise SessionError(f"{label}: unknown file type {suffix!r}; upload .jsonl, .csv, .tsv or .parquet")
        size = source.stat().st_size
        if self.workspace.limits.upload_mb and size > self.workspace.limits.upload_mb * 2**20:
            raise SessionError(f"{label} is {size / 2**20:.0f} MB; this app takes files up to "
                               f"{self.workspace.limits.upload_mb} MB.")
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
        target = self.folder / "uploads" / f"{digest}{suffix}"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return str(target), label

    def inspect_upload(self, path: str, original_name: str | None = None) -> Inspection:
        """Preview the raw columns of an uploaded file and guess the mapping."""
        self.pending_upload = None
        try:
            kept, label = self._keep_upload(path, original_name)
            head = preview_columns(kept)
        except (RecordsError, OSError, SessionError) as exc:
            raise SessionError(self._relabel(str(exc), original_name)) from None
        self.pending_upload = (kept, label)
        columns = [str(c) for c in head.columns]
        guessed = {target: source for source, target in
                   resolve_columns(columns, {}, ("instruction", "generation")).items()}
        return Inspection(columns, guessed.get("instruction"), guessed.get("generation"), head,
                          f"`{label}`: {len(columns)} columns. Check the mapping, then load.")

    def load_upload(self, instruction_column: str | None = None, generation_column: str | None = None) -> Loaded:
        if self.pending_upload is None:
            return Loaded(pd.DataFrame(), "Upload a JSONL, CSV or Parquet file first.", ok=False)
        path, label = self.pending_upload
        return self._load(path, label, "upload", _mapping(instruction_column, generation_column))

    def load_sample(self) -> Loaded:
        return self._load(str(SAMPLE_PATH), SAMPLE_LABEL, "sample", {})

    def load_hub(self, dataset_id: str, config: str = "", split: str = "train") -> Loaded:
        try:
            dataset_id = check_hub_id(dataset_id)
        except OwnershipError as exc:
            return Loaded(pd.DataFrame(), f"**Cannot load this data.** {exc}", ok=False)
        if Path(dataset_id).exists():
            # `datasets` would read a local folder of that name: never a server path, whatever its shape.
            return Loaded(pd.DataFrame(), f"**Cannot load this data.** {dataset_id}: not found on the Hub", ok=False)
        return self._load(dataset_id, dataset_id, "hub", {}, config=(config or "").strip() or None,
                          split=(split or "").strip() or "train")

    def load_local(self, relative: str) -> Loaded:
        """Opt-in for a workstation (BACKTRANS_LOCAL_FILES_DIR): a file inside that one folder, by name."""
        root = self.workspace.local_files_dir
        if root is None:
            return Loaded(pd.DataFrame(), "Loading files by name is off in this app: upload the file.", ok=False)
        try:
            path = confined_path(root, relative)
        except OwnershipError as exc:
            return Loaded(pd.DataFrame(), f"**Cannot load this data.** {exc}", ok=False)
        return self._load(str(path), path.name, "local", {})

    def _load(self, source: str, label: str, kind: str, mapping: dict, config: str | None = None,
              split: str | None = None) -> Loaded:
        """Validate and load; errors name the file, line and column. A new dataset starts a clean slate."""
        try:
            frame = load_records(source, mapping, required=("instruction",), optional=("generation",),
                                 config=config, split=split)
        except RecordsError as exc:
            return Loaded(pd.DataFrame(), f"**Cannot load this data.** {self._relabel(str(exc), label, source)}",
                          ok=False)
        if not len(frame):
            return Loaded(pd.DataFrame(), f"`{label}` has no rows.", ok=False)
        self._set_bench(Workbench.from_frame(frame, source_name=label), source, label, kind)
        self.source_options = (config, split)
        missing = int(frame["generation"].isna().sum()) if "generation" in frame else len(frame)
        note = f" {missing} have no response yet: use **Generate**." if missing else ""
        return Loaded(frame.head(5), f"Loaded **{len(frame)}** pairs from `{label}`.{note}")

    def _set_bench(self, bench: Workbench, source: str, label: str, kind: str) -> None:
        bench.keep_by = self.keep_by
        self.bench, self.source_path, self.source_label, self.source_kind = bench, source, label, kind
        self.source_options: tuple[str | None, str | None] = (None, None)  # a Hub dataset's config and split
        self.selected_row, self.review_plan = None, None

    @staticmethod
    def _relabel(message: str, label: str | None, source: str | None = None) -> str:
        """Errors name the file the user knows, not the owner's content-addressed copy of it."""
        if label and source:
            message = message.replace(str(source), label).replace(Path(source).name, label)
        return re.sub(r"[0-9a-f]{16}\.(jsonl|json|ndjson|csv|tsv|parquet|pq)", label or r"\g<0>", message)

    # --- LLM jobs -----------------------------------------------------------------------------------------

    def resolve_template(self, name: str, custom_text: str = "") -> Template:
        return parse_template(custom_text, CUSTOM_TEMPLATE) if name == CUSTOM_TEMPLATE else load_template(name)

    def preview_prompt(self, name: str, custom_text: str = "") -> str:
        if self.bench is None or not len(self.bench):
            return "Load data to see the prompt for its first row."
        try:
            return self.resolve_template(name, custom_text).render(**dataframe_rows(self.bench.frame.head(1))[0])
        except TemplateError as exc:
            return f"Template problem: {exc}"

    def choose_backend(self, preset: str, model: str = "", base_url: str = "", api_key: str = "",
                       hf_token: str | None = None, concurrency: float = 16) -> backends.Choice:
        limit = self.workspace.limits.concurrency
        wanted = max(1, int(concurrency or 1))
        return backends.choose(preset, model=model, base_url=base_url, api_key=api_key, hf_token=hf_token,
                               concurrency=min(wanted, limit) if limit else wanted)

    async def _run(self, task, rows: list[dict], indexes: list[int], config: dict, choice: backends.Choice,
                   apply: Callable[[int, dict], None], every_s: float) -> AsyncIterator[JobUpdate]:
        """Shared by every LLM job: limits, the owner's run, each result applied as it arrives."""
        from backtrans.runner import stream_results

        limits = self.workspace.limits
        limits.check_job(len(rows))
        if choice.server_pays and limits.rows_per_day:
            store = RunStore(self.workspace.store_path)
            try:
                limits.check_daily(store.calls_since(self.owner.key, day_ago()), len(rows))
            finally:
                store.close()
        secret = choice.settings.api_key
        with self.workspace.gate.job(self.owner.key, limits.jobs_per_owner):
            last, progress = 0.0, None
            try:
                async for position, result, progress in stream_results(rows, task, self.workspace.store_path,
                                                                       config, owner=self.owner.key):
                    if position is not None and result is not None:
                        apply(indexes[position], result)
                    if time.monotonic() - last >= every_s:
                        last = time.monotonic()
                        yield JobUpdate(progress_text(progress), progress=progress)
            except Exception as exc:  # the page stays up and every finished row stays scored
                message = redact(f"{type(exc).__name__}: {exc}", secret)
                yield JobUpdate(f"**Stopped by an error.** {message}", done=True, progress=progress)
                return
            if progress is not None:
                yield JobUpdate(progress_text(progress, final=True), done=True, progress=progress)

    def _config(self, kind: str, choice: backends.Choice, rows: int, template: Template, **extra: object) -> RunConfig:
        return RunConfig(kind=kind, source=self.source_path, source_name=self.source_label,
                         source_kind=self.source_kind, hf_config=self.source_options[0],
                         split=self.source_options[1], template=template.path or template.name,
                         template_digest=template.digest, model=choice.settings.model,
                         base_url=choice.settings.base_url, rows=rows, **extra)

    async def judge(self, template: Template, choice: backends.Choice,
                    every_s: float = 0.25) -> AsyncIterator[JobUpdate]:
        from backtrans.judge import JudgeTask

        bench = self.bench
        if bench is None or not len(bench):
            yield JobUpdate("Load some data first.", done=True)
            return
        ready = bench.frame["generation"].notna()
        if not ready.all():
            yield JobUpdate(f"{int((~ready).sum())} rows have no response: run **Generate** first.", done=True)
            return
        self.template = template
        self.keep_by = bench.keep_by = "expected_score" if template.logprobs else "score"
        task = JudgeTask(template, choice.settings)
        config = self._config("judge", choice, len(bench), template)
        async for update in self._run(task, dataframe_rows(bench.frame), list(range(len(bench))), config, choice,
                                      bench.set_result, every_s):
            yield update

    async def generate(self, choice: backends.Choice, every_s: float = 0.25) -> AsyncIterator[JobUpdate]:
        from backtrans.augment import ResponseTask

        bench = self.bench
        if bench is None or not len(bench):
            yield JobUpdate("Load some data first.", done=True)
            return
        missing = [int(i) for i in bench.frame.index[bench.frame["generation"].isna()]]
        if not missing:
            yield JobUpdate("Every row already has a response.", done=True)
            return
        template = load_template("generate-response")
        task = ResponseTask(template, choice.settings)

        def apply(index: int, result: dict) -> None:
            bench.frame.at[index, "generation"] = result.get("generation")

        config = self._config("generate", choice, len(missing), template)
        async for update in self._run(task, dataframe_rows(bench.frame.loc[missing]), missing, config, choice, apply,
                                      every_s):
            yield update

    def generate_preview(self) -> pd.DataFrame:
        if self.bench is None:
            return pd.DataFrame()
        columns = [c for c in ("instruction", "generation", "source") if c in self.bench.frame]
        return self.bench.frame[columns].head(8)

    async def augment(self, files: list[tuple[str, str]], seeds: str | None, filters, choice: backends.Choice,
                      every_s: float = 0.25) -> AsyncIterator[JobUpdate]:
        """Self-augmentation: documents -> segments -> filters -> an instruction for each segment.

        `files`: (uploaded path, original name) pairs; the copies keep the original names.
        """
        from backtrans.augment import BackwardTask, FilterReport, candidate_rows, load_seed_examples

        if not files:
            yield JobUpdate("Upload documents (.txt, .md, .html, or JSONL/Parquet with a `text` column).", done=True)
            return
        digest = hashlib.sha256("\0".join(sorted(name for _, name in files)).encode())
        for path, _ in files:
            digest.update(Path(path).read_bytes())
        folder = self.folder / "documents" / digest.hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        copies = []
        for path, name in files:
            copy = folder / Path(name).name
            shutil.copyfile(path, copy)
            copies.append(copy)
        report = FilterReport()
        try:
            template = load_template("backward-instruction")
            task = BackwardTask(template, choice.settings, load_seed_examples(seeds))
            rows = list(candidate_rows(copies, filters, report))
        except (RecordsError, TemplateError) as exc:
            yield JobUpdate(f"**Cannot read the documents.** {exc}", done=True)
            return
        if not rows:
            yield JobUpdate(f"No segment passed the filters: {report.describe()}", done=True)
            return
        label = ", ".join(name for _, name in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        bench = Workbench.from_frame(pd.DataFrame(rows), source_name=label)
        bench.frame["instruction"] = None
        self._set_bench(bench, str(folder), label, "documents")

        def apply(index: int, result: dict) -> None:
            bench.frame.at[index, "instruction"] = result.get("instruction")

        config = self._config("augment", choice, len(rows), template, seeds=task.examples)
        async for update in self._run(task, rows, list(range(len(rows))), config, choice, apply, every_s):
            update.message = f"Filters: {report.describe()}. Instructions: {update.message}"
            yield update

    # --- runs ---------------------------------------------------------------------------------------------

    def _store(self) -> RunStore | None:
        return RunStore(self.workspace.store_path) if Path(self.workspace.store_path).exists() else None

    def runs(self) -> list[RunSummary]:
        store = self._store()
        if store is None:
            return []
        try:
            return [RunSummary(r.run_id, r.kind, str(r.config.get("source_name") or "?"), r.finished is not None,
                               r.created) for r in store.runs(owner=self.owner.key)]
        finally:
            store.close()

    def resume(self, run_id: str | None) -> Resumed:
        """Reload one of the owner's runs: its data and settings; finished rows then come from the store."""
        store = self._store()
        info = store.run(str(run_id or ""), owner=self.owner.key) if store else None
        if store:
            store.close()
        if info is None:
            raise NoSuchRun()
        config = info.settings
        kind, source, label = config.source_kind, config.source, config.source_name
        if kind == "sample":
            loaded = self.load_sample()
        elif kind == "hub":
            loaded = self.load_hub(source, config.hf_config or "", config.split or "train")
        elif kind in ("upload", "documents") and self._owns(source):
            loaded = self._load(source, label, "upload", {}) if kind == "upload" else Loaded(
                pd.DataFrame(), "Runs of documents are resumed by writing instructions for the same documents again.",
                ok=False)
        elif kind == "local" and self.workspace.local_files_dir is not None:
            loaded = self.load_local(str(Path(source).relative_to(self.workspace.local_files_dir)))
        else:
            raise NoSuchRun()
        template = Path(config.template or DEFAULT_TEMPLATE).stem
        base_url = config.base_url
        backend = backends.HUGGINGFACE if base_url == backends.hf_router_url() else (
            backends.SERVER if base_url == (os.environ.get("OPENAI_BASE_URL") or "") else backends.CUSTOM)
        message = loaded.message + (" Settings restored: press **Start** to resume." if loaded.ok else "")
        return Resumed(message, template, config.model, base_url, backend)

    def _owns(self, path: str) -> bool:
        folder = self.folder.resolve()
        try:
            return folder in Path(path).resolve().parents
        except OSError:
            return False

    def delete_my_data(self) -> str:
        """Forget the owner's runs, uploads and exports, and the rows on screen."""
        store = RunStore(self.workspace.store_path)
        try:
            runs = store.delete_runs(owner=self.owner.key)
        finally:
            store.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.bench, self.pending_upload, self.selected_row = None, None, None
        self.source_path = self.source_label = self.source_kind = ""
        return f"Deleted your data: {runs} runs, with your uploads and exports."

    # --- review -------------------------------------------------------------------------------------------

    def set_keep_by(self, keep_by: str) -> None:
        self.keep_by = keep_by if keep_by in ("score", "expected_score") else "score"
        if self.bench is not None:
            self.bench.keep_by = self.keep_by

    def review(self, filters: Filters, threshold: float, page_number: float = 1) -> ReviewView:
        bench = self.bench
        if bench is None or not len(bench):
            empty = pd.DataFrame(columns=["row", "verdict", "score", "reason", "instruction", "generation"])
            return ReviewView(empty, "Page 1 of 1", measure_histogram(pd.DataFrame(), "score", float(threshold)), "")
        view = bench.filtered(filters, float(threshold))
        shown, pages = page(view, int(page_number or 1), PAGE_SIZE)
        threshold = self.threshold = float(threshold)
        counts = threshold_counts(bench.frame["score"], threshold)
        kept = int(bench.with_decisions(threshold)["final_keep"].sum())
        measure = self.measure()
        overrides = f" · {len(bench.overrides)} overrides" if bench.overrides else ""
        if measure == "expected_score":
            summary = (f"Measure: **expected score** (from the judge's digit probabilities) · kept at ≥{threshold:g}:"
                       f" **{kept}** of {len(bench)} · scored {counts['scored']}{overrides}")
        else:
            paper = f" (the paper's A4: {counts['A4']}, A5: {counts['A5']})" if self.template.score_max == 5 else ""
            summary = (f"Measure: **score** · kept at ≥{threshold:g}: **{kept}** of {len(bench)}{paper} · "
                       f"scored {counts['scored']}{overrides}")
        info = f"Page {min(int(page_number or 1), pages)} of {pages} · {len(view)} rows match"
        plot = measure_histogram(bench.frame, measure, threshold, self.template.score_min, self.template.score_max)
        return ReviewView(shown, info, plot, summary)

    def measure(self) -> str:
        """The measure that decides keep: expected score only where the judge gave one."""
        frame = self.bench.frame if self.bench is not None else None
        has_expected = frame is not None and "expected_score" in frame and frame["expected_score"].notna().any()
        return "expected_score" if self.keep_by == "expected_score" and has_expected else "score"

    def select(self, row_number: int | None) -> str:
        if self.bench is None or row_number is None or not 0 <= int(row_number) < len(self.bench):
            self.selected_row = None
            return ""
        self.selected_row = int(row_number)
        return record_html(self.bench.with_decisions(self.threshold).iloc[self.selected_row].to_dict())

    def override(self, keep: bool | None) -> bool:
        """A reviewer's keep (True), discard (False) or reset (None) of the selected row; False if none is."""
        if self.bench is None or self.selected_row is None:
            return False
        self.bench.override(self.selected_row, keep)
        return True

    # --- Argilla ------------------------------------------------------------------------------------------

    def argilla_dataset_name(self, name: str) -> str:
        """On a shared app each owner pushes into a dataset of their own, named for them."""
        name = (name or "backtrans-review").strip()
        shared = on_space() or os.environ.get("BACKTRANS_ARGILLA_PER_OWNER") == "1"
        return f"{name}-{self.owner.slug}" if shared and not name.endswith(self.owner.slug) else name

    def plan_review(self, budget: float, threshold: float, seed: float = 0, overlap_share: float = 0.1
                    ) -> tuple[str, pd.DataFrame]:
        """A review plan within the budget: what Argilla is then sent. Returns its description and make-up."""
        from backtrans import review

        if self.bench is None or not self.bench.frame["score"].notna().any():
            self.review_plan = None
            return "Judge some data first: the plan is stratified by the judge's scores.", pd.DataFrame()
        rows = self.bench.with_decisions(float(threshold)).drop(columns=["judge_keep", "decided_by"])
        planned, summary = review.plan(rows, max(1, int(budget or 1)), seed=int(seed or 0), by=self.measure(),
                                       threshold=float(threshold), overlap_share=float(overlap_share))
        self.review_plan = (planned, summary)
        makeup = pd.DataFrame([{"band": band, "pairs": int(info["rows"]), "to review": int(info["planned"]),
                                "inclusion probability": round(info["inclusion_prob"], 4)}
                               for band, info in summary.bands.items()])
        return summary.describe(), makeup

    def argilla_push(self, dataset: str, workspace: str, threshold: float, on_progress=None) -> str:
        """The review plan's rows when there is a plan (with its design in the guidelines), else every row."""
        from backtrans import argilla

        if self.bench is None or not len(self.bench):
            return "Judge some data first."
        name = self.argilla_dataset_name(dataset)
        try:
            config = argilla.ArgillaConfig.from_env(workspace=workspace or None)
            options = {"template": self.template, "threshold": threshold, "by": self.bench.keep_by,
                       "on_progress": on_progress}
            if self.review_plan is None:
                reports = argilla.push_rows(self.bench.all_rows(), name, config, **options)
            else:
                planned, summary = self.review_plan
                rows = [{k: plain_value(v) for k, v in row.items() if k not in ("row", "final_keep")}
                        for row in planned.to_dict("records")]
                reports = argilla.push_rows(rows, name, config, design=summary.describe(), **options)
        except argilla.ArgillaError as exc:
            return f"**Push failed.** {exc}"
        what = "records of the review plan" if self.review_plan is not None else "records"
        places = " and ".join(f"[{r.workspace}/{r.dataset}]({r.url})" for r in reports)
        return f"Pushed **{sum(r.pushed for r in reports)}** {what} to {places}."

    def argilla_pull(self, dataset: str, workspace: str, policy: str, threshold: float):
        """Reviewers' decisions merged into the rows; returns (message, report text, confusion, disagreements)."""
        from backtrans import argilla
        from backtrans.cli import format_report

        empty = pd.DataFrame(columns=["LLM", "human", "pairs"])
        if self.bench is None or not len(self.bench):
            return "Judge some data first.", "", empty, pd.DataFrame()
        bench = self.bench
        try:
            config = argilla.ArgillaConfig.from_env(workspace=workspace or None)
            decisions, merged, report = argilla.pull_merged(bench.all_rows(), self.argilla_dataset_name(dataset),
                                                            config, policy, threshold, bench.keep_by)
        except argilla.ArgillaError as exc:
            return f"**Pull failed.** {exc}", "", empty, pd.DataFrame()
        for column in ("human_keep", "human_score", "human_note", "reviewer", "human_votes"):
            bench.frame[column] = [row[column] for row in merged]
        confusion = pd.DataFrame(
            [{"LLM": llm, "human": human, "pairs": report["confusion"][f"llm_{llm}_human_{human}"]}
             for llm in ("keep", "discard") for human in ("keep", "discard")]
        )
        disagreements = set(report["disagreements"])
        columns = ("instruction", "generation", "score", "expected_score", "reason", "human_keep", "human_score",
                   "human_note", "reviewer")
        disagree = pd.DataFrame([{k: row.get(k) for k in columns}
                                 for row in merged if argilla.record_id(row) in disagreements],
                                columns=list(columns)).rename(columns=HEADERS)
        pulled = argilla.summary(decisions)
        reviewers = pulled["reviewers"]
        who = (f", from {argilla.counted(len(reviewers), 'reviewer')} ({', '.join(reviewers)})"
               if reviewers else ", no reviewer has answered yet")
        message = f"Pulled **{pulled['records']}** records: **{pulled['decisions']}** with a reviewer's decision{who}."
        return message, "```\n" + format_report(report) + "\n```", confusion, disagree

    def review_estimates(self, target_precision: float = 0.9):
        """After a pull: the calibration curve, precision and recall against the threshold with their intervals,
        and the threshold that keeps the most pairs at the target precision. Returns (text, calibration, curves,
        suggested threshold or None)."""
        from backtrans import review

        empty = pd.DataFrame(columns=["x", "value", "series"])
        frame = self.bench.frame if self.bench is not None else None
        if frame is None or "human_keep" not in frame or not frame["human_keep"].notna().any():
            return "Pull reviewers' decisions first.", empty, empty, None
        by = self.measure()
        calibration = review.calibration_curve(frame, by)
        curve = review.precision_recall_curve(frame, by)
        lines = [f"Reviewed **{int(frame['human_keep'].notna().sum())}** pairs; estimates by {by.replace('_', ' ')} "
                 "band with 95% intervals ([how](docs/review.md))."]
        suggested = review.choose_threshold(frame, float(target_precision), by)
        if suggested is None:
            lines.append(f"No threshold reaches {float(target_precision):.0%} precision with 95% confidence yet: "
                         "review more pairs or lower the target.")
        else:
            p, r = suggested.precision, suggested.recall
            target = f"{float(target_precision):.0%}"
            lines.append(f"**Suggested threshold {suggested.threshold:g}** for {target} precision: "
                         f"keeps {suggested.kept:,} of {suggested.population:,} · precision {p.estimate:.1%} "
                         f"({p.low:.1%}–{p.high:.1%}) · recall {r.estimate:.1%} ({r.low:.1%}–{r.high:.1%}) · "
                         f"P(precision ≥ {target}) ≈ {suggested.confidence:.0%}")
        agreement = review.reviewer_agreement(frame)
        if agreement.items:
            lines.append(f"Reviewers agree on {agreement.agreement:.0%} of the {agreement.items} pairs both reviewed "
                         f"(Cohen's kappa {agreement.kappa.estimate:.2f}, 95% interval {agreement.kappa.low:.2f}–"
                         f"{agreement.kappa.high:.2f}); decisions per reviewer: "
                         + ", ".join(f"{name} {count}" for name, count in agreement.per_reviewer.items()))
        calibration_long = pd.concat([
            pd.DataFrame({"x": calibration["low_edge"], "value": calibration[column], "series": label})
            for column, label in (("keep_rate", "human keep rate"), ("low", "95% low"), ("high", "95% high"))
        ], ignore_index=True)
        curves_long = pd.concat([
            pd.DataFrame({"x": part["threshold"], "value": part[column], "series": f"{metric}{suffix}"})
            for metric, part in curve.groupby("metric")
            for column, suffix in (("estimate", ""), ("low", " 95% low"), ("high", " 95% high"))
        ], ignore_index=True) if len(curve) else empty
        return "\n\n".join(lines), calibration_long, curves_long, suggested.threshold if suggested else None

    # --- export -------------------------------------------------------------------------------------------

    def export(self, fmt: str, threshold: float) -> Exported:
        from backtrans.export import SUFFIXES, RowWriter

        if self.bench is None or not len(self.bench):
            return Exported(None, 0, "Nothing to export yet.")
        if fmt not in SUFFIXES:
            return Exported(None, 0, f"Unknown format {fmt[:20]!r}.")
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(self.source_label or "data").stem).strip("-") or "data"
        name = f"{stem}-curated-{datetime.date.today().isoformat()}{'-chat' if fmt == 'chat' else ''}"
        folder = self.folder / "exports" / hashlib.sha256(f"{time.time_ns()}".encode()).hexdigest()[:12]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}{SUFFIXES[fmt]}"
        rows = self.bench.rows_for_export(float(threshold))
        with RowWriter(path, fmt) as writer:
            for row in rows:
                writer.write(row)
        return Exported(str(path), len(rows), f"**{len(rows)}** of {len(self.bench)} pairs in `{path.name}`.")

    def export_to_hub(self, repo: str, threshold: float, token: str | None = None) -> str:
        from backtrans.export import push_to_hub

        try:
            repo = check_hub_id(repo)
        except OwnershipError as exc:
            return str(exc)
        exported = self.export("jsonl", threshold)
        if exported.path is None:
            return "Judge some data first."
        token = token or (None if on_space() else os.environ.get("HF_TOKEN"))
        if not token:
            return "Sign in with Hugging Face to push to your own dataset repo."
        try:
            return f"Pushed {exported.rows} pairs to {push_to_hub(exported.path, repo, token=token)}"
        except Exception as exc:  # no network, no token, a refused repo: say so in the page
            return f"**Push to the Hub failed.** {redact(str(exc), token)}"


def _mapping(instruction_column: str | None, generation_column: str | None) -> dict[str, str]:
    mapping = {}
    if instruction_column:
        mapping[instruction_column] = "instruction"
    if generation_column and generation_column != "(none)":
        mapping[generation_column] = "generation"
    return mapping


__all__ = ["LimitError", "NoSuchRun", "Session", "SessionError", "Workspace"]
