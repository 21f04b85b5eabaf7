"""One user's session, headless: load, generate, augment, judge, resume, review, Argilla, export.

The faces (app.py) map their inputs to these methods and render what they return: rows, counts and curves
as numbers, never text for a page. No face decides who may see what. A `Workspace` is the server's side
(data folder, shared run store, limits); a `Session` is one owner's view of it. Every run, upload and
export is the owner's, and a run id of another owner reads exactly as one that never existed.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from backtrans import backends
from backtrans.decisions import MEASURES, default_measure, default_threshold, measure_in, paper_levels
from backtrans.limits import LimitError, day_ago
from backtrans.owners import OwnershipError, check_hub_id, confined_path, on_space
from backtrans.records import (
    SAMPLE_PATH,
    SUFFIXES,
    RecordsError,
    dataframe_rows,
    load_records,
    missing,
    preview_columns,
    resolve_columns,
)
from backtrans.redaction import redact
from backtrans.review_table import Bin, Filters, Workbench, measure_bins, page, plain_value
from backtrans.run_config import RunConfig
from backtrans.store import RunStore
from backtrans.templates import Template, TemplateError, default_template, load_template, parse_template
from backtrans.workspace import Workspace

CUSTOM_TEMPLATE = "custom"
PAGE_SIZE = 50
SAMPLE_LABEL = "the bundled sample"


class SessionError(RuntimeError):
    """Something the user asked for that cannot be done. The message is plain text, safe to show to them."""


MAX_REASK = 3  # a visitor on the Space's key asks at most this many more times for one row
REJUDGE_EXAMPLES = 6  # overruled pairs put ahead of the template (each cut to align.EXAMPLE_CHARS)


def _reask(value: int | str | None) -> int | None:
    if missing(value):
        return None
    if str(value) not in {str(n) for n in range(MAX_REASK + 1)}:
        raise SessionError(f"Asking again takes a whole number of times from 0 to {MAX_REASK}, not {value!r}.")
    return int(value)


class LoadError(SessionError):
    """Data that cannot be loaded; the message names the file, the line and the column."""


class NoSuchRun(SessionError):
    def __init__(self) -> None:
        super().__init__("No such run.")


# --- what the faces render ----------------------------------------------------------------------------------


@dataclass
class Inspection:
    label: str
    columns: list[str]
    instruction_column: str | None
    generation_column: str | None
    head: pd.DataFrame


@dataclass
class Loaded:
    label: str
    rows: int
    without_response: int
    preview: pd.DataFrame


@dataclass
class JobUpdate:
    """One look at a running job: its progress (None before the first row), and at the end `done`, with
    `error` set when it stopped early. `filters`: an augment job's segment filter report."""

    progress: object | None = None
    done: bool = False
    error: str | None = None
    filters: object | None = None


@dataclass
class RunSummary:
    run_id: str
    kind: str
    label: str
    finished: bool
    created: float


@dataclass
class Resumed:
    loaded: Loaded
    template: str
    model: str
    base_url: str
    backend: str


@dataclass
class ReviewView:
    """One page of the review table and what the page says about the whole set."""

    rows: pd.DataFrame  # the page's rows with their decisions (final_keep, judge_keep, decided_by), texts whole
    page: int
    pages: int
    matching: int  # rows that pass the filters
    total: int
    scored: int
    kept: int
    overrides: int
    measure: str  # the measure in force: the chosen one, or the score where no expected score exists yet
    keep_by: str  # the measure the reviewer chose
    threshold: float
    levels: dict[str, int] | None  # the paper's A4/A5 counts, where the judge's scale is the paper's 1-5
    bins: list[Bin]
    has_expected: bool  # a column of expected scores is worth showing


@dataclass
class Shelved:
    """A review that new data replaced, kept whole (rows, overrides, reviewers' decisions), one click away."""

    workbench: Workbench
    source: tuple  # path, label, kind, mapping, options
    template: Template
    keep_by: str
    planned_review: object | None

    @property
    def label(self) -> str:
        return self.source[1]

    @property
    def pairs(self) -> int:
        return len(self.workbench)

    @property
    def scored(self) -> int:
        return int(self.workbench.frame["score"].notna().sum())

    @property
    def overrides(self) -> int:
        return len(self.workbench.overrides)

    @property
    def reviewed(self) -> int:
        frame = self.workbench.frame
        return int(frame["human_keep"].notna().sum()) if "human_keep" in frame else 0


@dataclass
class PullResult:
    summary: dict  # records, decisions, votes, drafts, reviewers
    report: dict  # the agreement report (numbers; None where a figure is undefined)
    disagreements: pd.DataFrame


@dataclass
class Estimates:
    reviewed: int
    by: str
    target_precision: float
    calibration: pd.DataFrame  # low_edge, keep_rate, low, high per band
    curve: pd.DataFrame  # threshold, metric (precision | recall), estimate, low, high
    suggested: object | None  # review.ThresholdChoice
    agreement: object  # review.ReviewerAgreement


@dataclass
class Exported:
    path: str
    rows: int
    total: int


@dataclass
class _Prepared:
    """A job ready to run: its task, its rows (and where each result goes), its recorded settings."""

    task: object
    rows: list[dict]
    indexes: list[int]
    config: RunConfig
    choice: backends.Choice
    apply: Callable[[int, dict], None]
    filters: object | None = None


class Session:
    def __init__(self, workspace: Workspace, owner):
        self.workspace = workspace
        self.owner = owner
        self.workbench: Workbench | None = None
        self.source_path = ""  # where the rows came from, for resume: the owner's copy, the sample, a Hub id
        self.source_label = ""  # what the user calls it: the uploaded file's own name, the Hub id
        self.source_kind = ""
        self.source_mapping: dict[str, str] = {}  # an upload's columns -> ours, recorded so a resume maps them again
        self.source_options: tuple[str | None, str | None] = (None, None)  # a Hub dataset's config and split
        self.pending_upload: tuple[str, str] | None = None
        self.selected_row: int | None = None
        self.threshold: float | None = None  # the last one the review used: the detail panel's verdict follows it
        self.planned_review = None  # (plan rows, PlanSummary) once a review budget was planned
        self.previous: Shelved | None = None  # the review that the data on screen replaced
        self.template: Template = load_template(default_template())
        self.keep_by = default_measure(self.template)

    # --- data ---------------------------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        return self.workspace.owner_dir(self.owner)

    def _keep_upload(self, path: str, original_name: str | None) -> tuple[str, str]:
        """A copy in the owner's own folder (Gradio may clean its temp files), named by content."""
        source = Path(path)
        label = Path(original_name or source.name).name
        suffix = Path(label).suffix.lower() or source.suffix.lower()
        if suffix not in SUFFIXES:
            raise LoadError(f"{label}: unknown file type {suffix!r}; upload .jsonl, .csv, .tsv or .parquet")
        size = source.stat().st_size
        if self.workspace.limits.upload_mb and size > self.workspace.limits.upload_mb * 2**20:
            raise LoadError(f"{label} is {size / 2**20:.0f} MB; this app takes files up to "
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
        except (RecordsError, OSError) as exc:
            raise LoadError(self._relabel(str(exc), original_name)) from None
        self.pending_upload = (kept, label)
        columns = [str(c) for c in head.columns]
        guessed = {target: source for source, target in
                   resolve_columns(columns, {}, ("instruction", "generation")).items()}
        return Inspection(label, columns, guessed.get("instruction"), guessed.get("generation"), head)

    def load_upload(self, instruction_column: str | None = None, generation_column: str | None = None) -> Loaded:
        if self.pending_upload is None:
            raise LoadError("Upload a JSONL, CSV or Parquet file first.")
        path, label = self.pending_upload
        return self._load(path, label, "upload", column_mapping(instruction_column, generation_column))

    def load_sample(self) -> Loaded:
        return self._load(str(SAMPLE_PATH), SAMPLE_LABEL, "sample", {})

    def load_hub(self, dataset_id: str, config: str = "", split: str = "train") -> Loaded:
        try:
            dataset_id = check_hub_id(dataset_id)
        except OwnershipError as exc:
            raise LoadError(str(exc)) from None
        if Path(dataset_id).exists():
            # `datasets` would read a local folder of that name: never a server path, whatever its shape.
            raise LoadError(f"{dataset_id}: not found on the Hub")
        return self._load(dataset_id, dataset_id, "hub", {}, config=(config or "").strip() or None,
                          split=(split or "").strip() or "train")

    def load_local(self, relative: str) -> Loaded:
        """Opt-in for a workstation (BACKTRANS_LOCAL_FILES_DIR): a file inside that one folder, by name."""
        root = self.workspace.local_files_dir
        if root is None:
            raise LoadError("Loading files by name is off in this app: upload the file.")
        try:
            path = confined_path(root, relative)
        except OwnershipError as exc:
            raise LoadError(str(exc)) from None
        return self._load(str(path), path.name, "local", {})

    def _load(self, source: str, label: str, kind: str, mapping: dict[str, str], config: str | None = None,
              split: str | None = None) -> Loaded:
        """Validate and load; errors name the file, line and column. A new dataset starts a clean slate."""
        try:
            frame = load_records(source, mapping, required=("instruction",), optional=("generation",),
                                 config=config, split=split)
        except RecordsError as exc:
            raise LoadError(self._relabel(str(exc), label, source)) from None
        if not len(frame):
            raise LoadError(f"{label} has no rows.")
        self._set_workbench(Workbench.from_frame(frame, source_name=label), source, label, kind, mapping)
        self.source_options = (config, split)
        missing = int(frame["generation"].isna().sum()) if "generation" in frame else len(frame)
        return Loaded(label, len(frame), missing, frame.head(5))

    def _holds_work(self) -> bool:
        """Rows a person would miss: judged, overridden or reviewed."""
        frame = self.workbench.frame if self.workbench is not None else None
        return frame is not None and (bool(self.workbench.overrides) or bool(frame["score"].notna().any())
                                      or ("human_keep" in frame and bool(frame["human_keep"].notna().any())))

    def _shelve(self, always: bool = False) -> Shelved | None:
        if self.workbench is None or not (always or self._holds_work()):
            return None
        return Shelved(self.workbench, (self.source_path, self.source_label, self.source_kind, self.source_mapping,
                                        self.source_options), self.template, self.keep_by, self.planned_review)

    def reopen_previous(self) -> Shelved:
        """Bring back the review that new data replaced; the data it replaced is kept the same way in turn."""
        previous = self.previous
        if previous is None:
            raise SessionError("There is no earlier review to reopen.")
        self.previous = self._shelve(always=True)  # a swap: the data it replaces waits in turn
        self.workbench = previous.workbench
        (self.source_path, self.source_label, self.source_kind, self.source_mapping,
         self.source_options) = previous.source
        self.template, self.keep_by, self.planned_review = previous.template, previous.keep_by, \
            previous.planned_review
        self.selected_row = None
        return previous

    def _set_workbench(self, workbench: Workbench, source: str, label: str, kind: str,
                       mapping: dict[str, str] | None = None) -> None:
        shelved = self._shelve()
        if shelved is not None:  # new data never drops a review: the last one stays one click away
            self.previous = shelved
        workbench.keep_by = self.keep_by
        self.workbench, self.source_path, self.source_label, self.source_kind = workbench, source, label, kind
        self.source_mapping = dict(mapping or {})
        self.source_options = (None, None)
        self.selected_row, self.planned_review = None, None

    @staticmethod
    def _relabel(message: str, label: str | None, source: str | None = None) -> str:
        """Errors name the file the user knows, not the owner's content-addressed copy of it."""
        if label and source:
            message = message.replace(str(source), label).replace(Path(source).name, label)
        return re.sub(r"[0-9a-f]{16}\.(jsonl|json|ndjson|csv|tsv|parquet|pq)", label or r"\g<0>", message)

    # --- LLM jobs -----------------------------------------------------------------------------------------

    def resolve_template(self, name: str, custom_text: str = "") -> Template:
        return parse_template(custom_text, CUSTOM_TEMPLATE) if name == CUSTOM_TEMPLATE else load_template(name)

    def preview_prompt(self, name: str, custom_text: str = "") -> str | None:
        """The prompt for the first row; None before any data is loaded. A bad template raises TemplateError."""
        if self.workbench is None or not len(self.workbench):
            return None
        return self.resolve_template(name, custom_text).render(**dataframe_rows(self.workbench.frame.head(1))[0])

    def choose_backend(self, preset: str, model: str = "", base_url: str = "", api_key: str = "",
                       hf_token: str | None = None, concurrency: float = 16) -> backends.Choice:
        limit = self.workspace.limits.concurrency
        wanted = max(1, int(concurrency or 1))
        return backends.choose(preset, model=model, base_url=base_url, api_key=api_key, hf_token=hf_token,
                               concurrency=min(wanted, limit) if limit else wanted)

    # A job is prepared (validated, its rows and config chosen) before any call: a problem is raised at once, to
    # the face that asked, whether the job then runs as a stream (`judge`, ...) or in the background (`start`).

    def _check_limits(self, rows: int, choice: backends.Choice) -> None:
        limits = self.workspace.limits
        limits.check_job(rows)
        if choice.server_pays and limits.rows_per_day:
            store = RunStore(self.workspace.store_path)
            try:
                limits.check_daily(store.calls_since(self.owner.key, day_ago()), rows)
            finally:
                store.close()

    async def _stream(self, job: _Prepared, every_s: float) -> AsyncIterator[JobUpdate]:
        """The job's rows through the runner, each result applied as it arrives; an error ends it with its
        message (the key masked), and every finished row stays in the store."""
        from backtrans.runner import stream_results

        last, progress = 0.0, None
        try:
            async for position, result, progress in stream_results(job.rows, job.task, self.workspace.store_path,
                                                                   job.config, owner=self.owner.key):
                if position is not None and result is not None:
                    job.apply(job.indexes[position], result)
                if time.monotonic() - last >= every_s:
                    last = time.monotonic()
                    yield JobUpdate(progress, filters=job.filters)
        except Exception as exc:  # the page stays up and every finished row stays scored
            error = redact(f"{type(exc).__name__}: {exc}", job.choice.settings.api_key)
            yield JobUpdate(progress, done=True, error=error, filters=job.filters)
            return
        if progress is not None:
            yield JobUpdate(progress, done=True, filters=job.filters)

    async def _run(self, job: _Prepared, every_s: float) -> AsyncIterator[JobUpdate]:
        """A prepared job as a stream, for a caller that follows it to the end itself."""
        self._check_limits(len(job.rows), job.choice)
        with self.workspace.gate.job(self.owner.key, self.workspace.limits.jobs_per_owner):
            async for update in self._stream(job, every_s):
                yield update

    def _start(self, job: _Prepared, every_s: float):
        """A prepared job in the background (jobs.Job): it lives apart from the page that started it."""
        self._check_limits(len(job.rows), job.choice)
        gate = self.workspace.gate
        gate.acquire(self.owner.key, self.workspace.limits.jobs_per_owner)
        return self.workspace.jobs.start(self.owner.key, job.task.kind, self.source_label, len(job.rows),
                                         self._stream(job, every_s), on_end=lambda: gate.release(self.owner.key),
                                         secret=job.choice.settings.api_key)

    def job(self):
        """This owner's running job, else its latest finished one (None if there is none in this process)."""
        return self.workspace.jobs.latest(self.owner.key)

    def stop_job(self) -> bool:
        job = self.job()
        return job is not None and job.stop()

    def _prepared(self, task, rows: list[dict], indexes: list[int], choice: backends.Choice,
                  apply: Callable[[int, dict], None], filters: object | None = None) -> _Prepared:
        config = RunConfig.for_task(task, source=self.source_path, source_name=self.source_label,
                                    source_kind=self.source_kind, mapping=self.source_mapping,
                                    hf_config=self.source_options[0], split=self.source_options[1], rows=len(rows))
        return _Prepared(task, rows, indexes, config, choice, apply, filters)

    def _loaded_workbench(self) -> Workbench:
        if self.workbench is None or not len(self.workbench):
            raise SessionError("Load some data first.")
        return self.workbench

    def _prepare_judge(self, template: Template, choice: backends.Choice, reask: int | None = None) -> _Prepared:
        from backtrans.judge import JudgeTask

        workbench = self._loaded_workbench()
        ready = workbench.frame["generation"].notna()
        if not ready.all():
            raise SessionError(f"{int((~ready).sum())} rows have no response: run Generate first.")
        task = JudgeTask(template, choice.settings, reask=reask)
        self.template = template
        self.keep_by = workbench.keep_by = default_measure(template)

        def apply(index: int, result: dict) -> None:
            workbench.examples_used = 0  # from the first row on, the scores are this judge's again
            workbench.set_result(index, result)

        return self._prepared(task, dataframe_rows(workbench.frame), list(range(len(workbench))), choice, apply)

    def _prepare_rejudge(self, choice: backends.Choice, reask: int | None, limit: int) -> _Prepared:
        from backtrans import align
        from backtrans.judge import JudgeTask

        workbench = self._scored_workbench("then pull the reviewers' decisions.")
        frame = self._decided_frame()
        judged_by = measure_in(frame, default_measure(self.template))
        rows = workbench.all_rows()
        try:
            align.check_reviews(rows, judged_by)
        except align.AlignError as exc:
            raise SessionError(str(exc)) from None
        examples = align.overruled(rows, self._threshold(), judged_by, limit)
        if not examples:
            raise SessionError("The reviewers agreed with the judge on every pair they decided: there is no example "
                               "to learn from.")
        unreviewed = [int(i) for i in frame.index[frame["human_keep"].isna()]]
        if not unreviewed:
            raise SessionError("Every pair has a reviewer's decision: there is nothing to judge again.")
        task = JudgeTask(self.template, choice.settings, reask=reask, examples=examples)

        def apply(index: int, result: dict) -> None:
            if workbench.examples_used != len(examples):  # the first row in: the scores start to change
                workbench.examples_used = len(examples)
                if "aligned_score" in workbench.frame:  # fitted on the first judge: it would not describe these
                    workbench.frame = workbench.frame.drop(columns=["aligned_score"])
                    if self.keep_by == "aligned_score":
                        self.keep_by = workbench.keep_by = default_measure(self.template)
            workbench.set_result(index, result)

        return self._prepared(task, dataframe_rows(frame.loc[unreviewed]), unreviewed, choice, apply)

    def _prepare_generate(self, choice: backends.Choice) -> _Prepared:
        from backtrans.generate import ResponseTask

        workbench = self._loaded_workbench()
        missing = [int(i) for i in workbench.frame.index[workbench.frame["generation"].isna()]]
        if not missing:
            raise SessionError("Every row already has a response.")
        task = ResponseTask(load_template(default_template("generate")), choice.settings)

        def apply(index: int, result: dict) -> None:
            workbench.set_cell(index, "generation", result.get("generation"))

        return self._prepared(task, dataframe_rows(workbench.frame.loc[missing]), missing, choice, apply)

    def _prepare_augment(self, files: list[tuple[str, str]], seeds: str | None, filters,
                         choice: backends.Choice) -> _Prepared:
        """Self-augmentation: documents -> segments -> filters -> an instruction for each segment.

        `files`: (uploaded path, original name) pairs; the copies keep the original names.
        """
        from backtrans.augment import FilterReport, candidate_rows, load_seed_examples
        from backtrans.backward import BackwardTask

        if not files:
            raise SessionError("Upload documents (.txt, .md, .html, or JSONL/Parquet with a text column).")
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
            task = BackwardTask(load_template(default_template("augment")), choice.settings,
                                load_seed_examples(seeds))
            rows = list(candidate_rows(copies, filters, report))
        except (RecordsError, TemplateError) as exc:
            raise LoadError(str(exc)) from None
        if not rows:
            raise SessionError(f"No segment passed the filters: {report.describe()}")
        label = ", ".join(name for _, name in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        workbench = Workbench.from_frame(pd.DataFrame(rows), source_name=label)
        workbench.frame["instruction"] = None
        self._set_workbench(workbench, str(folder), label, "documents")

        def apply(index: int, result: dict) -> None:
            workbench.set_cell(index, "instruction", result.get("instruction"))

        return self._prepared(task, rows, list(range(len(rows))), choice, apply, filters=report)

    # Each job as a stream (the CLI-like caller follows it) and in the background (the app's pages read it).

    async def judge(self, template: Template, choice: backends.Choice,
                    every_s: float = 0.25) -> AsyncIterator[JobUpdate]:
        """Score every row. Raises SessionError at once when the data is not ready."""
        async for update in self._run(self._prepare_judge(template, choice), every_s):
            yield update

    async def generate(self, choice: backends.Choice, every_s: float = 0.25) -> AsyncIterator[JobUpdate]:
        async for update in self._run(self._prepare_generate(choice), every_s):
            yield update

    async def augment(self, files: list[tuple[str, str]], seeds: str | None, filters, choice: backends.Choice,
                      every_s: float = 0.25) -> AsyncIterator[JobUpdate]:
        async for update in self._run(self._prepare_augment(files, seeds, filters, choice), every_s):
            yield update

    def start_judge(self, template: Template, choice: backends.Choice, every_s: float = 0.5,
                    reask: int | str | None = None):
        """`reask`: asks after a reply with no score (None: the template's `reask` setting; 0 to MAX_REASK)."""
        return self._start(self._prepare_judge(template, choice, _reask(reask)), every_s)

    def start_rejudge(self, choice: backends.Choice, every_s: float = 0.5, reask: int | str | None = None,
                      examples: int = REJUDGE_EXAMPLES):
        """After a pull: judge again the pairs no reviewer decided, with the pairs the reviewers overruled (and their
        notes) as examples ahead of the template (align.overruled). The reviewed pairs keep the first judge's
        scores and their reviewers' decisions. Through the run store: a rerun with the same examples costs
        nothing. Too few reviews, none that overruled the judge, or no pair left: SessionError."""
        return self._start(self._prepare_rejudge(choice, _reask(reask), examples), every_s)

    def start_generate(self, choice: backends.Choice, every_s: float = 0.5):
        return self._start(self._prepare_generate(choice), every_s)

    def start_augment(self, files: list[tuple[str, str]], seeds: str | None, filters, choice: backends.Choice,
                      every_s: float = 0.5):
        return self._start(self._prepare_augment(files, seeds, filters, choice), every_s)

    def generate_preview(self) -> pd.DataFrame:
        if self.workbench is None:
            return pd.DataFrame()
        columns = [c for c in ("instruction", "generation", "source") if c in self.workbench.frame]
        return self.workbench.frame[columns].head(8)

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
        """Reload one of the owner's runs: its data, column mapping and settings; finished rows then come from
        the store."""
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
        elif kind == "upload" and self._owns(source):
            loaded = self._load(source, label, "upload", config.mapping)
        elif kind == "documents" and self._owns(source):
            raise SessionError("Runs of documents are resumed by writing instructions for the same documents again.")
        elif kind == "local" and self.workspace.local_files_dir is not None:
            loaded = self.load_local(str(Path(source).relative_to(self.workspace.local_files_dir)))
        else:
            raise NoSuchRun()
        base_url = config.base_url
        backend = backends.HUGGINGFACE if base_url == backends.hf_router_url() else (
            backends.SERVER if base_url == (os.environ.get("OPENAI_BASE_URL") or "") else backends.CUSTOM)
        return Resumed(loaded, Path(config.template or default_template()).stem, config.model, base_url, backend)

    def _owns(self, path: str) -> bool:
        folder = self.folder.resolve()
        try:
            return folder in Path(path).resolve().parents
        except OSError:
            return False

    def delete_my_data(self) -> int:
        """Forget the owner's runs, uploads and exports, and the rows on screen. Returns the runs deleted."""
        self.workspace.jobs.forget(self.owner.key)  # a running job would write its rows back
        store = RunStore(self.workspace.store_path)
        try:
            runs = store.delete_runs(owner=self.owner.key)
        finally:
            store.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.workbench, self.pending_upload, self.selected_row, self.previous = None, None, None, None
        self.source_path = self.source_label = self.source_kind = ""
        self.source_mapping = {}
        return runs

    # --- review -------------------------------------------------------------------------------------------

    def set_keep_by(self, keep_by: str) -> None:
        self.keep_by = keep_by if keep_by in MEASURES else "score"
        if self.workbench is not None:
            self.workbench.keep_by = self.keep_by

    def review(self, filters: Filters, threshold: float, page_number: float = 1, bins: bool = True) -> ReviewView:
        """`bins=False`: leave out the histogram (a running job's table is redrawn more often than its plot)."""
        threshold = self.threshold = float(threshold)
        workbench = self.workbench
        if workbench is None or not len(workbench):
            return ReviewView(pd.DataFrame(), 1, 1, 0, 0, 0, 0, 0, self.measure(), self.keep_by, threshold, None, [],
                              False)
        decided = workbench.with_decisions(threshold)
        view = workbench.filtered(filters, threshold, decided)
        shown, number, pages = page(view, int(page_number or 1), PAGE_SIZE)
        measure = self.measure()
        frame = workbench.frame
        levels = paper_levels(frame["score"]) if (self.template.score_min, self.template.score_max) == (1, 5) \
            else None
        return ReviewView(
            rows=shown, page=number, pages=pages, matching=len(view), total=len(workbench),
            scored=int(frame["score"].notna().sum()), kept=int(decided["final_keep"].sum()),
            overrides=len(workbench.overrides), measure=measure, keep_by=self.keep_by, threshold=threshold,
            levels=levels,
            bins=(measure_bins(decided, measure, threshold, 0, 1, step=0.1) if measure == "aligned_score" else
                  measure_bins(decided, measure, threshold, self.template.score_min, self.template.score_max))
            if bins else [],
            has_expected=bool(frame["expected_score"].notna().any()),
        )

    def _threshold(self) -> float:
        """The threshold the review last used, else the template's own."""
        return self.threshold if self.threshold is not None else default_threshold(self.template)

    def measure(self) -> str:
        """The measure that decides keep: expected score only where the judge gave one."""
        frame = self.workbench.frame if self.workbench is not None else pd.DataFrame()
        return measure_in(frame, self.keep_by)

    def select(self, row_number: int | None) -> dict | None:
        """The selected row in full, with its decisions at the review's threshold; None when there is none."""
        workbench = self.workbench
        if workbench is None or row_number is None or not 0 <= int(row_number) < len(workbench):
            self.selected_row = None
            return None
        self.selected_row = int(row_number)
        threshold = self._threshold()
        return workbench.with_decisions(threshold).iloc[self.selected_row].to_dict()

    def override(self, keep: bool | None) -> bool:
        """A reviewer's keep (True), discard (False) or reset (None) of the selected row; False if none is."""
        if self.workbench is None or self.selected_row is None:
            return False
        self.workbench.override(self.selected_row, keep)
        return True

    # --- Argilla ------------------------------------------------------------------------------------------

    def argilla_dataset_name(self, name: str) -> str:
        """On a shared app each owner pushes into a dataset of their own, named for them."""
        name = (name or "backtrans-review").strip()
        shared = on_space() or os.environ.get("BACKTRANS_ARGILLA_PER_OWNER") == "1"
        return f"{name}-{self.owner.slug}" if shared and not name.endswith(self.owner.slug) else name

    def _decided_frame(self) -> pd.DataFrame:
        """The rows, once reviewers' decisions were pulled into them."""
        frame = self.workbench.frame if self.workbench is not None else None
        if frame is None or "human_keep" not in frame or not frame["human_keep"].notna().any():
            raise SessionError("Pull reviewers' decisions first.")
        return frame

    def _scored_workbench(self, why: str = "") -> Workbench:
        workbench = self.workbench
        if workbench is None or not workbench.frame["score"].notna().any():
            raise SessionError("Judge some data first" + (f": {why}" if why else "."))
        return workbench

    def review_plan(self, budget: float, threshold: float, seed: float = 0, overlap_share: float = 0.1):
        """A review plan within the budget: what Argilla is then sent. Returns its review.PlanSummary."""
        from backtrans import review

        self.planned_review = None
        workbench = self._scored_workbench("the plan is stratified by the judge's scores.")
        rows = workbench.with_decisions(float(threshold)).drop(columns=["judge_keep", "decided_by"])
        planned, summary = review.plan(rows, max(1, int(budget or 1)), seed=int(seed or 0), by=self.measure(),
                                       threshold=float(threshold), overlap_share=float(overlap_share))
        self.planned_review = (planned, summary)
        return summary

    def argilla_push(self, dataset: str, workspace: str, threshold: float,
                     on_progress: Callable[[int, int], None] | None = None) -> list:
        """The review plan's rows when there is a plan (with its design in the guidelines), else every row.
        `on_progress(sent, total)`. Returns the push reports; an Argilla problem raises SessionError."""
        from backtrans import argilla

        workbench = self._loaded_workbench()
        name = self.argilla_dataset_name(dataset)
        if self.planned_review is None:
            rows, design = workbench.all_rows(), None
        else:
            planned, summary = self.planned_review
            rows = [{k: plain_value(v) for k, v in row.items() if k not in ("row", "final_keep")}
                    for row in planned.to_dict("records")]
            design = summary.describe()
        try:
            config = argilla.ArgillaConfig.from_env(workspace=workspace or None)
            return argilla.push_rows(rows, name, config, template=self.template, threshold=threshold,
                                          by=workbench.keep_by, design=design,
                                          on_progress=(lambda n: on_progress(n, len(rows))) if on_progress else None)
        except argilla.ArgillaError as exc:
            raise SessionError(str(exc)) from None

    def argilla_pull(self, dataset: str, workspace: str, policy: str, threshold: float) -> PullResult:
        """Reviewers' decisions merged into the rows, with the agreement report and the pairs where reviewers
        and the judge disagree."""
        from backtrans import argilla

        workbench = self._loaded_workbench()
        try:
            config = argilla.ArgillaConfig.from_env(workspace=workspace or None)
            decisions, merged, report = argilla.pull_merged(
                workbench.all_rows(), self.argilla_dataset_name(dataset), config, policy, threshold,
                workbench.keep_by)
        except argilla.ArgillaError as exc:
            raise SessionError(str(exc)) from None
        for column in ("human_keep", "human_score", "human_note", "reviewer", "human_votes"):
            workbench.frame[column] = [row[column] for row in merged]
        disagreeing = set(report["disagreements"])
        columns = ["instruction", "generation", "score", "expected_score", "reason", "human_keep", "human_score",
                   "human_note", "reviewer"]
        disagreements = pd.DataFrame([{k: row.get(k) for k in columns} for row in merged
                                      if argilla.record_id(row) in disagreeing], columns=columns)
        return PullResult(argilla.summary(decisions), report, disagreements)

    def review_estimate(self, target_precision: float = 0.9) -> Estimates:
        """After a pull: the calibration curve, precision and recall against the threshold with their intervals,
        the threshold that keeps the most pairs at the target precision, and agreement between reviewers."""
        from backtrans import review

        frame = self._decided_frame()
        by = self.measure()
        return Estimates(
            reviewed=int(frame["human_keep"].notna().sum()), by=by, target_precision=float(target_precision),
            calibration=review.calibration_curve(frame, by), curve=review.precision_recall_curve(frame, by),
            suggested=review.choose_threshold(frame, float(target_precision), by),
            agreement=review.reviewer_agreement(frame),
        )

    def align(self, method: str = "isotonic"):
        """After a pull: calibrate the judge on the reviewers' decisions (no new calls) and add `aligned_score`,
        P(a reviewer keeps), as a measure the keep rule can use. Returns the held-out report (align.AlignmentReport);
        too few reviews raise SessionError with the counts."""
        from backtrans import align

        workbench = self._scored_workbench()
        if workbench.examples_used:
            raise SessionError("The pairs no reviewer decided were judged again with the reviewers' examples, the "
                               "reviewed ones were not: a calibration fitted on the ones would not describe the "
                               "others. Judge again without examples (Start) to align here, or use `backtrans "
                               "align --rejudge` for a cross-validated report on the judge with examples.")
        threshold = self._threshold()
        try:
            judged_by = measure_in(workbench.frame, default_measure(self.template))  # the judge's own measure
            aligned, report = align.align_rows(workbench.all_rows(), threshold, method=method, by=judged_by)
        except align.AlignError as exc:
            raise SessionError(str(exc)) from None
        workbench.frame["aligned_score"] = pd.array([row["aligned_score"] for row in aligned], dtype="Float64")
        workbench.version += 1
        return report

    # --- export -------------------------------------------------------------------------------------------

    def export(self, fmt: str, threshold: float) -> Exported:
        from backtrans.export import SUFFIXES as EXPORT_SUFFIXES
        from backtrans.export import RowWriter

        workbench = self.workbench
        if workbench is None or not len(workbench):
            raise SessionError("Nothing to export yet.")
        if fmt not in EXPORT_SUFFIXES:
            raise SessionError(f"Unknown format {fmt[:20]!r}.")
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(self.source_label or "data").stem).strip("-") or "data"
        name = f"{stem}-curated-{datetime.date.today().isoformat()}{'-chat' if fmt == 'chat' else ''}"
        folder = self.folder / "exports" / hashlib.sha256(f"{time.time_ns()}".encode()).hexdigest()[:12]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}{EXPORT_SUFFIXES[fmt]}"
        rows = workbench.rows_for_export(float(threshold))
        with RowWriter(path, fmt) as writer:
            for row in rows:
                writer.write(row)
        return Exported(str(path), len(rows), len(workbench))

    def export_to_hub(self, repo: str, threshold: float, token: str | None = None) -> tuple[int, str]:
        """Push the curated set to the owner's own dataset repo: (pairs pushed, the repo's URL)."""
        from backtrans.export import push_to_hub

        try:
            repo = check_hub_id(repo)
        except OwnershipError as exc:
            raise SessionError(str(exc)) from None
        token = token or (None if on_space() else os.environ.get("HF_TOKEN"))
        if self.workbench is None or not len(self.workbench):
            raise SessionError("Judge some data first.")
        if not token:
            raise SessionError("Sign in with Hugging Face to push to your own dataset repo.")
        exported = self.export("jsonl", threshold)
        try:
            return exported.rows, push_to_hub(exported.path, repo, token=token)
        except Exception as exc:  # no network, no token, a refused repo: say so in the page
            raise SessionError(f"Push to the Hub failed: {redact(str(exc), token)}") from None


def column_mapping(instruction_column: str | None, generation_column: str | None) -> dict[str, str]:
    """The upload's chosen columns -> ours (a response column of "(none)" or empty maps nothing)."""
    mapping = {}
    if instruction_column:
        mapping[instruction_column] = "instruction"
    if generation_column and generation_column != "(none)":
        mapping[generation_column] = "generation"
    return mapping


__all__ = ["LimitError", "LoadError", "NoSuchRun", "Session", "SessionError", "Workspace"]
