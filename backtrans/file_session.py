"""The CLI's session: the operations of `Session`, over files on the user's own machine.

Rows stream from the input file to the output file, so a file of any size never sits in memory, and the run
store is the user's own file, so every run in it is theirs. This session and the app's `Session` hold no rule
of their own: keep decisions, review plans and estimates, Argilla pushes and pulls and the run settings all
come from the core modules, so the two faces cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from backtrans.decisions import DEFAULT_MEASURE, DEFAULT_THRESHOLD, check_measure, final_keep
from backtrans.export import RowWriter, curated, push_to_hub, score_histogram
from backtrans.llm import LLMClient, LLMSettings
from backtrans.records import PAIR_COLUMNS, iter_rows
from backtrans.run_config import RunConfig
from backtrans.runner import FileJob, Progress
from backtrans.store import RunInfo, RunStore
from backtrans.templates import default_template, load_template

if TYPE_CHECKING:  # augment is imported only by the command that uses it
    from backtrans.augment import FilterReport

class FileSessionError(Exception):
    """Something asked of the session that cannot be done; the message names what to change."""


@dataclass(frozen=True)
class RunOverview:
    """One run as `runs` lists it: its record, its rows by status (`RunStore.summary`) and its calls
    (`RunStore.usage`)."""

    info: RunInfo
    counts: dict
    usage: dict

    @property
    def source(self) -> str:
        """What the user calls the source: an upload's own name, else the file's name or the Hub id."""
        config = self.info.config
        name = config.get("source_name") or str(config.get("source") or "")
        return Path(name).name if Path(name).suffix else name

    @property
    def tokens(self) -> int:
        return self.usage["prompt_tokens"] + self.usage["completion_tokens"]

    def to_json(self) -> dict:
        """The shape `runs --json` prints, one object per line; times are ISO 8601 in UTC."""

        def when(timestamp: float | None) -> str | None:
            return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()

        counts = self.counts
        return {
            "run_id": self.info.run_id, "kind": self.info.kind, "source": self.source,
            "created": when(self.info.created), "finished": when(self.info.finished),
            "parent_run_id": self.info.parent_run_id,
            "rows": {"done": counts["rows"], "ok": counts["ok"], "parse_error": counts["parse_error"],
                     "llm_error": counts["llm_error"]},
            "calls": self.usage["calls"], "prompt_tokens": self.usage["prompt_tokens"],
            "completion_tokens": self.usage["completion_tokens"], "config": self.info.config,
        }


@dataclass
class AugmentOptions:
    seed: str | None = None  # a JSONL of seed pairs (default: the bundled ones)
    examples: int = 3
    min_chars: int = 200
    max_chars: int = 6000
    max_header_caps: float = 0.5
    near_duplicate: float = 0.8


@dataclass
class Engine:
    """Where the rows run: this process, a Ray cluster, or a provider's Batch API (or its files)."""

    name: str = "asyncio"  # asyncio | ray
    ray_address: str | None = None
    batch: bool = False
    batch_poll_s: float = 10.0
    batch_file: str | None = None  # only write the requests file
    batch_results: str | None = None  # ingest a results file instead of calling the model
    actors: int | None = None  # Ray: the pool's size (default: sized to the cluster)

    def check(self) -> None:
        if self.name == "ray" and (self.batch or self.batch_file or self.batch_results):
            raise FileSessionError("--batch sends the whole file to the provider's batch service; "
                                   "it takes no --engine ray")
        if self.actors is not None and self.name != "ray":
            raise FileSessionError("--actors sizes the Ray actor pool: it needs --engine ray")


@dataclass
class JobOutcome:
    run_id: str | None
    progress: Progress | None
    counts: str  # how the calls went (client retries, batches, the engine)
    filters: str | None = None  # augment: what the segment filters dropped
    requests_written: int | None = None  # --batch-file: requests written, nothing run


@dataclass
class PreparedJob:
    """A job whose input has been read once and found sound: nothing was called yet."""

    job: FileJob
    config: RunConfig
    total: int
    resume: str | None = None
    filters: FilterReport | None = None  # augment: what the segment filters dropped on the last pass

    def _filter_line(self) -> str | None:
        return self.filters.describe() if self.filters is not None else None

    def run(self, engine: Engine | None = None,
            on_progress: Callable[[Progress], None] | None = None) -> JobOutcome:
        engine = engine or Engine()
        engine.check()
        job, total, run_id = self.job, self.total, self.resume
        if engine.name == "ray":
            from backtrans.engines.ray_engine import run_job

            run_id, progress = run_job(job, engine.ray_address, engine.actors, on_progress=on_progress, total=total,
                                       run_id=run_id)
            return JobOutcome(run_id, progress, "engine ray", self._filter_line())
        if engine.batch_file:
            from backtrans.engines.batch import write_file

            return JobOutcome(None, None, "", self._filter_line(), requests_written=write_file(job, engine.batch_file))
        if engine.batch_results:
            from backtrans.engines.batch import ingest_file

            run_id, progress, counts = ingest_file(job, engine.batch_results, on_progress=on_progress, total=total,
                                                   run_id=run_id)
        elif engine.batch:
            from backtrans.engines.batch import run_job

            run_id, progress, counts = run_job(job, poll_s=engine.batch_poll_s, on_progress=on_progress,
                                               total=total, run_id=run_id)
        else:
            client = LLMClient(job.task.settings)
            run_id, progress = job.run(client, run_id=run_id, on_progress=on_progress, total=total)
            counts = client.describe()
        return JobOutcome(run_id, progress, counts, self._filter_line())


@dataclass
class CurateOutcome:
    kept: int
    total: int
    threshold: float
    by: str
    histogram: dict[str, int] = field(default_factory=dict)


@dataclass
class AlignOutcome:
    report: object  # align.AlignmentReport
    rows: int
    kept: int  # final_keep after aligning: the reviewers' decisions, else aligned_score >= 0.5
    aligned: int  # rows with an aligned_score


@dataclass
class PullOutcome:
    summary: str
    report: dict
    rows: int
    kept: int


class FileSession:
    def __init__(self, store_path: str):
        self.store_path = store_path

    # --- LLM jobs -----------------------------------------------------------------------------------------

    def prepare(self, kind: str, *, resume: str | None = None, llm: dict | None = None,
                drop_duplicates: bool = False, augment: AugmentOptions | None = None, reask: int | None = None,
                **given: object) -> PreparedJob:
        """A judge, generate or augment job. `given`: the RunConfig settings the user stated (source, output,
        template, model, base_url, mapping, hf_config, split, parent_run_id); with `resume`, the stored run's
        settings fill in the rest and every stated one wins. `llm`: LLMSettings overrides (concurrency, ...).
        `reask`: asks after a reply with no usable answer (None: the template's `reask`, default 1). Like the
        retries it is how a run asks, not what it asks, so it is not part of the run's settings or cache key."""
        config = self._settings(kind, resume, given)
        settings = LLMSettings.from_env(model=config.model or None, base_url=config.base_url or None, **(llm or {}))
        template = load_template(config.template)
        source = config.source if not Path(config.source).exists() else str(Path(config.source).resolve())
        report, row_source = None, None
        if kind == "judge":
            from backtrans.judge import JudgeTask

            task, required, optional = JudgeTask(template, settings), PAIR_COLUMNS, ()
        elif kind == "generate":
            from backtrans.generate import ResponseTask

            task, required, optional = ResponseTask(template, settings), ("instruction",), ("generation",)
        else:
            from backtrans.augment import FilterReport, FilterSettings, candidate_rows, load_seed_examples
            from backtrans.backward import BackwardTask

            options = augment or AugmentOptions()
            task = BackwardTask(template, settings, load_seed_examples(options.seed, options.examples))
            required, optional = ("text",), ()
            try:
                filters = FilterSettings(options.min_chars, options.max_chars, options.max_header_caps,
                                         options.near_duplicate)
            except ValueError as exc:
                raise FileSessionError(str(exc)) from None

            report = FilterReport()

            def row_source() -> Iterator[dict]:
                report.reset()
                return candidate_rows(source, filters, report, config=config.hf_config, split=config.split,
                                      mapping=config.mapping)

        if reask is not None:
            task.reask = reask
        job = FileJob(source=source, output=str(Path(str(config.output)).resolve()), task=task,
                      store_path=self.store_path, mapping=config.mapping, required=required, optional=optional,
                      config=config.hf_config, split=config.split, drop_duplicates=drop_duplicates,
                      row_source=row_source, parent_run_id=config.parent_run_id)
        total = job.validate()  # the whole input is checked before the first call
        return PreparedJob(job, job.run_config(), total, resume, report)

    def _settings(self, kind: str, resume: str | None, given: dict) -> RunConfig:
        if resume:
            info = self.run(resume)
            if info is None:
                raise FileSessionError(f"no run {resume!r} in {self.store_path}")
            if info.settings.kind != kind:
                raise FileSessionError(f"run {resume} is a {info.settings.kind} run, not a {kind} run")
            config = info.settings.updated(**given)
        else:
            config = RunConfig(kind=kind, source="", template="", model="", base_url="").updated(**given)
        if not config.source or not config.output:
            raise FileSessionError("give an INPUT and -o OUTPUT (or --resume RUN_ID)")
        if not config.template:
            config = config.updated(template=default_template(kind))
        return config

    # --- runs ---------------------------------------------------------------------------------------------

    def run(self, run_id: str) -> RunInfo | None:
        store = RunStore(self.store_path)
        try:
            return store.run(run_id)
        finally:
            store.close()

    def runs(self) -> list[RunOverview]:
        """Every run in the store, newest first, with its rows by status, its calls and tokens."""
        store = RunStore(self.store_path)
        try:
            return [RunOverview(info, store.summary(info.run_id), store.usage(info.run_id)) for info in store.runs()]
        finally:
            store.close()

    def lineage(self, run_id: str) -> list[tuple[RunInfo, dict]]:
        """The rounds that led to a run, first round first, each with its rows, A4 and A5."""
        store = RunStore(self.store_path)
        try:
            chain = store.lineage(run_id)
            if not chain:
                raise FileSessionError(f"no run {run_id!r} in {self.store_path}")
            return [(info, store.summary(info.run_id)) for info in chain]
        finally:
            store.close()

    # --- curation and export ------------------------------------------------------------------------------

    def curate(self, source: str, output: str, threshold: float = DEFAULT_THRESHOLD, by: str = DEFAULT_MEASURE,
               threshold_from: str | None = None) -> CurateOutcome:
        """The kept pairs. With `threshold_from` (a `review estimate --json` report) its threshold and measure
        decide afresh for every pair no reviewer decided."""
        afresh = threshold_from is not None
        if threshold_from:
            report = read_estimate_report(threshold_from)
            threshold, by = float(report["threshold"]), report["by"]
        scores, kept = [], 0
        with RowWriter(output) as writer:
            for located in iter_rows(source):
                row = located.row
                scores.append(row.get("score"))
                if final_keep(row, threshold, by, afresh=afresh):
                    writer.write(row)
                    kept += 1
        return CurateOutcome(kept, len(scores), threshold, by, score_histogram(scores))

    def export(self, source: str, output: str, fmt: str | None = None, threshold: float | None = None,
               by: str = DEFAULT_MEASURE, system_tag: str | None = None, push_to: str | None = None
               ) -> tuple[int, str, str | None]:
        """(rows written, format, the Hub URL when pushed). `threshold`: only the kept pairs."""
        rows = (located.row for located in iter_rows(source))
        if threshold is not None:
            rows = curated(rows, threshold, by)
        with RowWriter(output, fmt, system_tag=system_tag) as writer:
            for row in rows:
                writer.write(row)
        return writer.count, writer.format, push_to_hub(output, push_to) if push_to else None

    # --- review budgets -----------------------------------------------------------------------------------

    def _scored_frame(self, source: str):
        import pandas as pd

        return pd.DataFrame([located.row for located in iter_rows(source, required=("instruction",),
                                                                  optional=("generation",))])

    def review_plan(self, source: str, output: str, budget: int, *, seed: int = 0, by: str | None = None,
                    threshold: float | None = None, near_share: float = 0.2, overlap_share: float = 0.1):
        from backtrans import review

        planned, summary = review.plan(self._scored_frame(source), budget, seed=seed, by=by, threshold=threshold,
                                       near_share=near_share if threshold is not None else 0.0,
                                       overlap_share=overlap_share)
        with RowWriter(output) as writer:
            for row in planned.to_dict("records"):
                writer.write(row)
        return summary

    def review_estimate(self, source: str, *, by: str | None = None, threshold: float | None = None,
                        target_precision: float | None = None, report_path: str | None = None):
        """(estimates, reviewer agreement). With a target: the one chosen threshold, or no estimate when none
        reaches it; with a threshold: that one; else every candidate threshold."""
        from backtrans import review

        frame = self._scored_frame(source)
        try:
            review.check_population(frame)
        except review.ReviewError as exc:
            raise FileSessionError(f"{source}: {exc}") from None
        if target_precision is not None:
            chosen = review.choose_threshold(frame, target_precision, by)
            reports = [chosen] if chosen is not None else []
        elif threshold is not None:
            reports = [review.estimate(frame, threshold, by)]
        else:
            reports = [review.estimate(frame, t, by) for t in review.candidate_thresholds(frame, by)]
        if report_path and reports:
            Path(report_path).write_text(json.dumps(reports[-1].to_json(), indent=2), encoding="utf-8")
        return reports, review.reviewer_agreement(frame)

    # --- aligning the judge with its reviewers ----------------------------------------------------------

    def align(self, source: str, output: str, *, method: str = "isotonic", by: str | None = None,
              threshold: float | None = None, folds: int = 5, seed: int = 0, rejudge: bool = False,
              examples: int = 6, template: str | None = None, model: str | None = None,
              base_url: str | None = None, llm: dict | None = None, reask: int | None = None,
              report_path: str | None = None) -> AlignOutcome:
        """Calibrate the judge on the reviewed rows of `source` (human_keep) and write every row with
        `aligned_score`. With `rejudge`, the pairs the reviewers overruled also become examples in the judge's
        prompt and the rows are judged again through the run store (a rerun costs nothing); the report's `cost`
        says what it took. Too few reviews: FileSessionError, with the counts."""
        import time

        import pandas as pd

        from backtrans import align
        from backtrans.decisions import default_threshold, measure_in

        rows = [located.row for located in iter_rows(source)]
        by = measure_in(pd.DataFrame(rows), by) if rows else (by or "score")
        judge_template = load_template(template or default_template())
        if threshold is None:
            threshold = default_threshold(judge_template, by)
        cost = None
        judge = None
        if rejudge:
            settings = LLMSettings.from_env(model=model or None, base_url=base_url or None, **(llm or {}))
            cost = {"calls": 0, "tokens": 0, "cached": 0, "rows": 0, "seconds": 0.0}
            judge = self._store_judge(judge_template, settings, reask, source, output, cost)
        started = time.monotonic()
        try:
            aligned, report = align.align_rows(rows, threshold, method=method, by=by, folds=folds, seed=seed,
                                               judge=judge, examples=examples)
        except align.AlignError as exc:
            raise FileSessionError(f"{source}: {exc}") from None
        if cost is not None:
            cost["seconds"] = round(time.monotonic() - started, 1)
            report.cost = cost
        with RowWriter(output) as writer:
            for row in aligned:
                writer.write(row)
        if report_path:
            Path(report_path).write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
        return AlignOutcome(report, len(aligned), sum(bool(row["final_keep"]) for row in aligned),
                            sum(row["aligned_score"] is not None for row in aligned))

    def _store_judge(self, template, settings: LLMSettings, reask: int | None, source: str, output: str,
                     cost: dict) -> Callable[[list[dict], list[dict]], list[dict]]:
        """judge(examples, rows): the rows through a JudgeTask with those examples, in this session's run store,
        one run per set of examples, counting what the calls cost in `cost`."""
        from backtrans.judge import JudgeTask
        from backtrans.runner import run_loop, run_rows

        def judge(examples: list[dict], rows: list[dict]) -> list[dict]:
            task = JudgeTask(template, settings, reask=reask, examples=examples)
            pairs = [{"instruction": str(row["instruction"]), "generation": str(row.get("generation") or "")}
                     for row in rows]

            async def go() -> tuple[list[dict], Progress]:
                client = LLMClient(settings)
                store = RunStore(self.store_path)
                try:
                    config = RunConfig.for_task(task, source=source, output=f"{output} (aligned judge)")
                    run_id = store.resume_or_start(task.kind, config)
                    progress = Progress(total=len(pairs))
                    results = [result async for _, result in run_rows(pairs, task, client, store, run_id, progress)]
                    store.finish_run(run_id)
                    return results, progress
                finally:
                    store.close()
                    await client.close()

            results, progress = run_loop(go())
            cost["rows"] += progress.done
            cost["cached"] += progress.cached
            cost["calls"] += progress.done - progress.cached + progress.reasks
            cost["tokens"] += progress.tokens
            return results

        return judge

    # --- Argilla ------------------------------------------------------------------------------------------

    def argilla_push(self, source: str, dataset: str, *, workspace: str | None = None,
                     template: str | None = None, threshold: float = DEFAULT_THRESHOLD, by: str = DEFAULT_MEASURE,
                     batch_size: int = 200,
                     overlap: int | None = None, design: str | None = None, resume: bool = True,
                     on_progress: Callable[[int, int], None] | None = None):
        """Every row of a scored file, or of a review plan (its design into the guidelines, its overlap share
        to a dataset that asks two reviewers). `on_progress(sent, total)`. Returns the push reports."""
        from backtrans import argilla

        config = argilla.ArgillaConfig.from_env(workspace=workspace)
        rows = [located.row for located in iter_rows(source)]
        return argilla.push_rows(rows, dataset, config, design=design, overlap=overlap,
                                      template=template or default_template(),
                                      threshold=threshold, by=by, batch_size=batch_size, resume=resume,
                                      on_progress=(lambda n: on_progress(n, len(rows))) if on_progress else None)

    def argilla_pull(self, dataset: str, output: str, *, workspace: str | None = None, scored: str | None = None,
                     policy: str = "majority", threshold: float = DEFAULT_THRESHOLD, by: str = DEFAULT_MEASURE,
                     report_path: str | None = None) -> PullOutcome:
        """Reviewers' decisions merged into the scored file's rows (default: the rows rebuilt from Argilla)."""
        from backtrans import argilla

        config = argilla.ArgillaConfig.from_env(workspace=workspace)
        rows = [located.row for located in iter_rows(scored)] if scored else None
        decisions, merged, report = argilla.pull_merged(rows, dataset, config, policy, threshold,
                                                        check_measure(by))
        with RowWriter(output) as writer:
            for row in merged:
                writer.write(row)
        if report_path:
            Path(report_path).write_text(json.dumps(report, indent=2))
        return PullOutcome(argilla.format_summary(argilla.summary(decisions)), report, len(merged),
                           sum(1 for row in merged if row["final_keep"]))


def read_estimate_report(path: str) -> dict:
    """A `review estimate --json` report: its threshold and measure."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        float(report["threshold"])
        check_measure(report["by"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FileSessionError(f"{path}: not a `review estimate --json` report ({type(exc).__name__}: {exc})"
                               ) from None
    return report
