"""backtrans: the Gradio face. Layout and wiring only; the work is done in backtrans/.

Steps, top to bottom: Data -> Generate -> Judge -> Review -> Argilla -> Export. Every user's rows
live in their own session state (a `Workbench`); the API key typed here stays in that session.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from backtrans import argilla_sync
from backtrans.augment import (
    BackwardTask,
    FilterReport,
    FilterSettings,
    ResponseTask,
    candidate_rows,
    load_seed_examples,
)
from backtrans.curate import SORTS, STATUSES, Filters, Workbench, histogram, page, record_html, threshold_counts
from backtrans.export import RowWriter, push_to_hub
from backtrans.judge import JudgeTask
from backtrans.llm import LLMSettings, redact
from backtrans.records import SAMPLE_PATH, RecordsError, dataframe_rows, load_records, preview_columns, resolve_columns
from backtrans.runner import stream_results
from backtrans.store import RunStore
from backtrans.templates import TemplateError, list_templates, load_template, parse_template

DATA_DIR = Path(os.environ.get("BACKTRANS_DATA_DIR", Path(__file__).parent / ".backtrans" / "app"))
STORE_PATH = str(DATA_DIR / "runs.sqlite")
DEFAULT_TEMPLATE = os.environ.get("BACKTRANS_TEMPLATE", "humpback")
CUSTOM = "custom"
# A judge template that reads digit probabilities ranks better by expected score (docs/judge-models.md).
KEEP_BY = "expected_score" if load_template(DEFAULT_TEMPLATE).logprobs else "score"
DEFAULT_THRESHOLD = 3.8 if KEEP_BY == "expected_score" else 4
STREAM_EVERY_S = 0.25
PAGE_SIZE = 50
NO_MAPPING = "(none)"


# --- Data --------------------------------------------------------------------------------------------------


def _keep_upload(path: str) -> str:
    """Uploads go to a temp folder Gradio may clean; a content-addressed copy lets a run be resumed."""
    source = Path(path)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    target = DATA_DIR / "uploads" / f"{digest}{source.suffix.lower()}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return str(target)


def inspect_upload(path: str | None):
    """Preview the raw columns and guess the mapping, then load."""
    if not path:
        return gr.update(), gr.update(), pd.DataFrame(), ""
    try:
        path = _keep_upload(path)
        head = preview_columns(path)
    except (RecordsError, OSError) as exc:
        return gr.update(choices=[], value=None), gr.update(choices=[], value=None), pd.DataFrame(), str(exc)
    columns = [str(c) for c in head.columns]
    guessed = {target: source for source, target in resolve_columns(columns, {}, ("instruction", "generation")).items()}
    return (gr.update(choices=columns, value=guessed.get("instruction")),
            gr.update(choices=[NO_MAPPING, *columns], value=guessed.get("generation", NO_MAPPING)),
            head, path)


def load_data(source: str, instruction_column: str | None, generation_column: str | None, config: str = "",
              split: str = ""):
    """Validate and load; errors name the line and column, in the page."""
    if not source:
        return None, pd.DataFrame(), "Upload a JSONL, CSV or Parquet file, give a Hub dataset, or use the sample."
    mapping = {}
    if instruction_column:
        mapping[instruction_column] = "instruction"
    if generation_column and generation_column != NO_MAPPING:
        mapping[generation_column] = "generation"
    try:
        frame = load_records(source, mapping, required=("instruction",), optional=("generation",),
                             config=config or None, split=split or None)
    except RecordsError as exc:
        return None, pd.DataFrame(), f"**Cannot load this data.** {exc}"
    bench = Workbench.from_frame(frame, source_name=source)
    bench.keep_by = KEEP_BY
    missing = int(frame["generation"].isna().sum()) if "generation" in frame else len(frame)
    note = f" {missing} have no response yet: use **Generate**." if missing else ""
    return bench, frame.head(5), f"Loaded **{len(frame)}** pairs from `{Path(source).name}`.{note}"


def load_upload(source, instruction_column, generation_column):
    return load_data(source, instruction_column, generation_column)


def load_sample():
    return (str(SAMPLE_PATH), *load_data(str(SAMPLE_PATH), "instruction", "generation"))


def load_hub(dataset_id: str, config: str, split: str):
    return (dataset_id, *load_data(dataset_id.strip(), None, None, config.strip(), split.strip() or "train"))


# --- Judge and Generate --------------------------------------------------------------------------------------


def _settings(model: str, base_url: str, api_key: str, concurrency: float) -> LLMSettings:
    return LLMSettings.from_env(model=model or None, base_url=base_url or None, api_key=api_key or None,
                                concurrency=int(concurrency))


def _template(name: str, custom_text: str):
    return parse_template(custom_text, CUSTOM) if name == CUSTOM else load_template(name)


def preview_prompt(bench: Workbench | None, name: str, custom_text: str) -> str:
    if bench is None or not len(bench):
        return "Load data to see the prompt for its first row."
    try:
        return _template(name, custom_text).render(**dataframe_rows(bench.frame.head(1))[0])
    except TemplateError as exc:
        return f"Template problem: {exc}"


def template_source(name: str) -> str:
    return load_template(name).source if name != CUSTOM else load_template(DEFAULT_TEMPLATE).source


async def _stream(bench: Workbench, task, rows: list[dict], indexes: list[int], run_config: dict, on_result):
    """Shared by Judge and Generate: apply each result as it arrives, report at most every STREAM_EVERY_S."""
    last = 0.0
    async for position, result, progress in stream_results(rows, task, STORE_PATH, run_config):
        on_result(indexes[position], result)
        if time.monotonic() - last > STREAM_EVERY_S or progress.done == progress.total:
            last = time.monotonic()
            yield progress


def _progress_text(progress) -> str:
    return (f"{progress.done}/{progress.total} rows · {progress.ok} ok · {progress.parse_error} parse errors · "
            f"{progress.llm_error} LLM errors · {progress.cached} from the store · {progress.tokens:,} tokens")


async def judge(bench: Workbench | None, template_name: str, custom_text: str, model: str, base_url: str,
                api_key: str, concurrency: float, threshold: float, min_score: float, max_score: float,
                statuses: list[str], text: str, sort: str):
    filters = Filters(min_score, max_score, tuple(statuses or ()), text, sort)
    if bench is None or not len(bench):
        yield (*review_view(bench, filters, threshold, 1), "Load some data first.")
        return
    try:
        template = _template(template_name, custom_text)
        task = JudgeTask(template, _settings(model, base_url, api_key, concurrency))
    except TemplateError as exc:
        yield (*review_view(bench, filters, threshold, 1), f"**Template problem.** {exc}")
        return
    ready = bench.frame["generation"].notna()
    if not ready.all():
        yield (*review_view(bench, filters, threshold, 1),
               f"{int((~ready).sum())} rows have no response: run **Generate** first.")
        return
    run_config = {"source": bench.source_name, "template": template.path or template.name,
                  "template_digest": template.digest, "model": task.settings.model,
                  "base_url": task.settings.base_url, "rows": len(bench)}
    try:
        async for progress in _stream(bench, task, dataframe_rows(bench.frame), list(range(len(bench))),
                                      run_config, bench.set_result):
            yield (*review_view(bench, filters, threshold, 1), _progress_text(progress))
    except Exception as exc:  # the page stays up and every finished row stays scored
        message = redact(f"{type(exc).__name__}: {exc}", api_key or task.settings.api_key)
        yield (*review_view(bench, filters, threshold, 1), f"**Stopped by an error.** {message}")


async def generate(bench: Workbench | None, model: str, base_url: str, api_key: str, concurrency: float):
    if bench is None or not len(bench):
        yield pd.DataFrame(), "Load some data first."
        return
    task = ResponseTask(load_template("generate-response"), _settings(model, base_url, api_key, concurrency))
    missing = [int(i) for i in bench.frame.index[bench.frame["generation"].isna()]]
    if not missing:
        yield bench.frame.head(5), "Every row already has a response."
        return
    rows = dataframe_rows(bench.frame.loc[missing])

    def apply(index: int, result: dict) -> None:
        bench.frame.at[index, "generation"] = result.get("generation")

    run_config = {"source": bench.source_name, "kind": "generate", "model": task.settings.model,
                  "base_url": task.settings.base_url, "rows": len(missing)}
    try:
        async for progress in _stream(bench, task, rows, missing, run_config, apply):
            yield bench.frame.loc[missing].head(5)[["instruction", "generation"]], _progress_text(progress)
    except Exception as exc:
        yield pd.DataFrame(), f"**Stopped by an error.** {redact(f'{type(exc).__name__}: {exc}', api_key)}"


async def augment(files: list[str] | None, seeds: str | None, min_chars: float, max_chars: float,
                  near_duplicate: float, model: str, base_url: str, api_key: str, concurrency: float):
    """Self-augmentation: documents -> segments -> filters -> an instruction for each segment."""
    if not files:
        yield None, pd.DataFrame(), "Upload documents (.txt, .md, .html, or JSONL/Parquet with a `text` column)."
        return
    folder = DATA_DIR / "documents" / hashlib.sha256("".join(sorted(files)).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, folder / Path(path).name)
    filters = FilterSettings(int(min_chars), int(max_chars), near_duplicate_threshold=float(near_duplicate))
    report = FilterReport()
    try:
        task = BackwardTask(load_template("backward-instruction"), _settings(model, base_url, api_key, concurrency),
                            load_seed_examples(seeds))
        rows = list(candidate_rows([folder / Path(f).name for f in files], filters, report))
    except (RecordsError, TemplateError) as exc:
        yield None, pd.DataFrame(), f"**Cannot read the documents.** {exc}"
        return
    if not rows:
        yield None, pd.DataFrame(), f"No segment passed the filters: {report.describe()}"
        return
    bench = Workbench.from_frame(pd.DataFrame(rows), source_name=str(folder))
    bench.keep_by = KEEP_BY
    bench.frame["instruction"] = None

    def apply(index: int, result: dict) -> None:
        bench.frame.at[index, "instruction"] = result.get("instruction")

    run_config = {"source": str(folder), "kind": "augment", "model": task.settings.model,
                  "base_url": task.settings.base_url, "rows": len(rows), "seeds": task.examples}
    try:
        async for progress in _stream(bench, task, rows, list(range(len(rows))), run_config, apply):
            yield (bench, bench.frame[["instruction", "generation", "source"]].head(8),
                   f"Filters: {report.describe()}. Instructions: {_progress_text(progress)}")
    except Exception as exc:
        yield bench, pd.DataFrame(), f"**Stopped by an error.** {redact(f'{type(exc).__name__}: {exc}', api_key)}"


def list_runs() -> gr.Dropdown:
    runs = RunStore(STORE_PATH).runs() if Path(STORE_PATH).exists() else []
    choices = [(f"{r.run_id} · {r.kind} · {Path(str(r.config.get('source', ''))).name} · "
                f"{'finished' if r.finished else 'unfinished'}", r.run_id) for r in runs]
    return gr.update(choices=choices, value=None)


def resume_run(run_id: str | None):
    """Reload an earlier run's data and settings; finished rows then come from the store."""
    info = RunStore(STORE_PATH).run(run_id) if run_id else None
    if info is None:
        return None, pd.DataFrame(), "Choose a run.", gr.update(), gr.update(), gr.update()
    bench, preview, message = load_data(info.config.get("source", ""), None, None)
    template = Path(str(info.config.get("template", DEFAULT_TEMPLATE))).stem
    return (bench, preview, f"{message} Settings of run `{run_id}` restored: press **Start** to resume.",
            gr.update(value=template), gr.update(value=info.config.get("model") or ""),
            gr.update(value=info.config.get("base_url") or ""))


# --- Review ------------------------------------------------------------------------------------------------


def review_view(bench: Workbench | None, filters: Filters, threshold: float, page_number: float):
    if bench is None or not len(bench):
        empty = pd.DataFrame(columns=["row", "score", "reason", "instruction", "generation", "status"])
        return empty, "Page 1 of 1", histogram(pd.DataFrame()), ""
    view = bench.filtered(filters, float(threshold))
    shown, pages = page(view, int(page_number or 1), PAGE_SIZE)
    counts = threshold_counts(bench.frame["score"], float(threshold))
    kept = int(bench.with_decisions(float(threshold))["final_keep"].sum())
    by = "expected score" if bench.keep_by == "expected_score" else "score"
    summary = (f"Scored {counts['scored']} of {len(bench)} · kept ({by} ≥{float(threshold):g}): **{kept}** · "
               f"A4 (≥4): **{counts['A4']}** · A5 (=5): **{counts['A5']}**"
               + (f" · {len(bench.overrides)} overrides" if bench.overrides else ""))
    info = f"Page {min(int(page_number or 1), pages)} of {pages} · {len(view)} rows match"
    return shown, info, histogram(bench.frame), summary


def refresh_review(bench, threshold, min_score, max_score, statuses, text, sort, page_number):
    return review_view(bench, Filters(min_score, max_score, tuple(statuses or ()), text, sort), threshold,
                       page_number)


def set_keep_by(bench: Workbench | None, keep_by: str, *filters):
    if bench is not None:
        bench.keep_by = keep_by
    return refresh_review(bench, *filters)


def select_row(bench: Workbench | None, table: pd.DataFrame, event: gr.SelectData):
    if bench is None or table is None or table.empty:
        return None, ""
    row_number = int(table.iloc[event.index[0]]["row"])
    return row_number, record_html(bench.frame.iloc[row_number].to_dict())


def overrider(keep: bool | None):
    """A click handler that records a reviewer's keep (True), discard (False) or reset (None) of the selected row."""

    def handle(bench: Workbench | None, row_number: int | None, *filters):
        if bench is not None and row_number is not None:
            bench.override(int(row_number), keep)
        return refresh_review(bench, *filters)

    return handle


# --- Argilla -----------------------------------------------------------------------------------------------


def push_to_argilla(bench: Workbench | None, dataset: str, workspace: str, template_name: str, threshold: float,
                    progress=gr.Progress()):
    if bench is None or not len(bench):
        return "Judge some data first."
    try:
        config = argilla_sync.ArgillaConfig.from_env(workspace=workspace or None)
        template = load_template(template_name if template_name != CUSTOM else DEFAULT_TEMPLATE)
        rows = bench.all_rows()
        report = argilla_sync.push(rows, dataset, config, template=template, threshold=threshold, by=bench.keep_by,
                                   on_progress=lambda n: progress(n / len(rows), desc=f"{n}/{len(rows)} records"))
    except (argilla_sync.ArgillaError, TemplateError) as exc:
        return f"**Push failed.** {exc}"
    return f"Pushed **{report.pushed}** records to [{report.workspace}/{report.dataset}]({report.url})."


def pull_from_argilla(bench: Workbench | None, dataset: str, workspace: str, policy: str, threshold: float):
    empty = pd.DataFrame(columns=["LLM", "human", "pairs"])
    if bench is None or not len(bench):
        return "Judge some data first.", empty, pd.DataFrame()
    try:
        config = argilla_sync.ArgillaConfig.from_env(workspace=workspace or None)
        decisions = argilla_sync.pull(dataset, config, policy)
    except argilla_sync.ArgillaError as exc:
        return f"**Pull failed.** {exc}", empty, pd.DataFrame()
    merged = argilla_sync.merge(bench.all_rows(), decisions, threshold, bench.keep_by)
    for column in ("human_keep", "human_score", "human_note", "reviewer"):
        bench.frame[column] = [row[column] for row in merged]
    report = argilla_sync.agreement(merged, threshold, decisions, bench.keep_by)
    confusion = pd.DataFrame(
        [{"LLM": llm, "human": human, "pairs": report["confusion"][f"llm_{llm}_human_{human}"]}
         for llm in ("keep", "discard") for human in ("keep", "discard")]
    )
    disagreements = set(report["disagreements"])
    disagree = pd.DataFrame([
        {k: row[k] for k in ("instruction", "generation", "score", "human_keep", "human_score", "reviewer")}
        for row in merged if argilla_sync.record_id(row) in disagreements
    ])
    return "```\n" + argilla_sync.format_report(report) + "\n```", confusion, disagree


# --- Export ------------------------------------------------------------------------------------------------


def export_file(bench: Workbench | None, fmt: str, threshold: float) -> str | None:
    if bench is None or not len(bench):
        return None
    suffix = {"jsonl": ".jsonl", "chat": ".jsonl", "csv": ".csv", "parquet": ".parquet"}[fmt]
    path = Path(tempfile.mkdtemp(prefix="backtrans-export-")) / f"backtrans-curated-{fmt}{suffix}"
    with RowWriter(path, fmt) as writer:
        for row in bench.rows_for_export(float(threshold)):
            writer.write(row)
    return str(path)


def export_to_hub(bench: Workbench | None, repo: str, threshold: float) -> str:
    path = export_file(bench, "jsonl", threshold)
    if path is None or not repo.strip():
        return "Judge some data and name a dataset repo (OWNER/NAME) first."
    try:
        return f"Pushed to {push_to_hub(path, repo.strip())}"
    except Exception as exc:  # no network, no token, a refused repo: say so in the page
        return f"**Push to the Hub failed.** {redact(str(exc), os.environ.get('HF_TOKEN'))}"


# --- Layout ------------------------------------------------------------------------------------------------

judge_templates = [t.name for t in list_templates("judge")]

with gr.Blocks(title="backtrans") as demo:
    gr.Markdown("# backtrans\nCurate instruction-tuning data with **instruction backtranslation** (Humpback): "
                "an LLM judge scores each (instruction, response) pair with the paper's 5-point prompt, you review "
                "its verdicts, and export the pairs worth training on.")
    bench_state = gr.State(None)
    source_state = gr.State("")
    selected_row = gr.State(None)

    with gr.Tab("1 · Data"):
        with gr.Row():
            upload = gr.File(label="Upload JSONL, CSV or Parquet", file_types=[".jsonl", ".json", ".csv", ".parquet"],
                             elem_id="data-upload")
            with gr.Column():
                sample = gr.Button("Use the bundled sample (30 pairs)", elem_id="data-sample")
                hub_id = gr.Textbox(label="…or a Hugging Face dataset", placeholder="OWNER/NAME",
                                    elem_id="data-hub-id")
                with gr.Row():
                    hub_config = gr.Textbox(label="Config", elem_id="data-hub-config")
                    hub_split = gr.Textbox(label="Split", value="train", elem_id="data-hub-split")
                hub_load = gr.Button("Load from the Hub", elem_id="data-hub-load")
        with gr.Row():
            instruction_column = gr.Dropdown(label="Instruction column", choices=[], elem_id="map-instruction")
            generation_column = gr.Dropdown(label="Response column", choices=[], elem_id="map-generation")
            apply_mapping = gr.Button("Load with this mapping", elem_id="data-apply-mapping")
        data_status = gr.Markdown(elem_id="data-status")
        data_preview = gr.Dataframe(label="First rows", interactive=False, wrap=True, max_height=260,
                                    elem_id="data-preview")

    with gr.Tab("2 · Generate"):
        gr.Markdown("**Self-augmentation:** turn unlabelled documents into (instruction, response) candidates. "
                    "Documents are cut at their headers, filtered, and the model writes the instruction each "
                    "segment answers, prompted with a few seed pairs. The model settings are those of step 3.")
        with gr.Row():
            documents = gr.File(label="Documents (.txt, .md, .html, or JSONL/Parquet with `text`)",
                                file_count="multiple", elem_id="augment-documents")
            seeds = gr.File(label="Seed (instruction, output) pairs, JSONL (optional)", elem_id="augment-seeds")
        with gr.Row():
            min_chars = gr.Number(200, label="Min segment characters", elem_id="augment-min-chars")
            max_chars = gr.Number(6000, label="Max segment characters", elem_id="augment-max-chars")
            near_duplicate = gr.Slider(0.5, 1.0, value=0.8, step=0.05, label="Near-duplicate similarity",
                                       elem_id="augment-near-duplicate")
        augment_start = gr.Button("Write instructions for the documents", elem_id="augment-start")
        gr.Markdown("**Instruction-only data:** write a response for every instruction that has none.")
        generate_start = gr.Button("Generate missing responses", elem_id="generate-start")
        generate_stop = gr.Button("Stop", variant="stop", elem_id="generate-stop")
        generate_status = gr.Markdown(elem_id="generate-status")
        generate_preview = gr.Dataframe(interactive=False, wrap=True, max_height=260, elem_id="generate-preview")

    with gr.Tab("3 · Judge"):
        with gr.Row():
            default = DEFAULT_TEMPLATE if DEFAULT_TEMPLATE in judge_templates else judge_templates[0]
            template = gr.Dropdown([*judge_templates, CUSTOM], value=default, label="Judge template",
                                   elem_id="judge-template")
            model = gr.Textbox(value=os.environ.get("BACKTRANS_MODEL", ""), label="Model", elem_id="judge-model")
            base_url = gr.Textbox(value=os.environ.get("OPENAI_BASE_URL", ""), label="Base URL",
                                  placeholder="https://api.openai.com/v1", elem_id="judge-base-url")
            api_key = gr.Textbox(label="API key (kept in this session only)", type="password",
                                 placeholder="OPENAI_API_KEY of the server if empty", elem_id="judge-api-key")
            concurrency = gr.Slider(1, 256, value=16, step=1, label="Concurrency", elem_id="judge-concurrency")
        with gr.Accordion("Template and prompt preview", open=False):
            custom_template = gr.Code(template_source(DEFAULT_TEMPLATE) if DEFAULT_TEMPLATE in judge_templates else "",
                                      language="jinja2", label="Custom template (choose 'custom' above)",
                                      elem_id="judge-custom-template")
            prompt_preview = gr.Textbox(label="The prompt for the first row", lines=8, interactive=False,
                                        elem_id="judge-prompt-preview")
        with gr.Row():
            start = gr.Button("Start", variant="primary", elem_id="judge-start")
            stop = gr.Button("Stop", variant="stop", elem_id="judge-stop")
        judge_status = gr.Markdown(elem_id="judge-status")
        with gr.Row():
            runs = gr.Dropdown(label="Resume an earlier run from the store", choices=[], elem_id="judge-runs")
            refresh_runs = gr.Button("Refresh runs", elem_id="judge-refresh-runs")
            resume = gr.Button("Resume this run", elem_id="judge-resume")

    with gr.Tab("4 · Review"):
        with gr.Row():
            threshold = gr.Slider(0, 5, value=DEFAULT_THRESHOLD, step=0.1, label="Keep pairs scored at least",
                                  elem_id="threshold")
            keep_by = gr.Radio([("score", "score"), ("expected score", "expected_score")], value=KEEP_BY,
                               label="Compare with", elem_id="keep-by")
            curation = gr.Markdown(elem_id="threshold-counts")
        with gr.Row():
            min_score = gr.Number(0, label="Min score", elem_id="filter-min")
            max_score = gr.Number(10, label="Max score", elem_id="filter-max")
            statuses = gr.CheckboxGroup(list(STATUSES), value=list(STATUSES), label="Status", elem_id="filter-status")
            search = gr.Textbox(label="Search text", elem_id="filter-text")
            sort = gr.Dropdown(list(SORTS), value="input order", label="Sort", elem_id="filter-sort")
        with gr.Row():
            page_number = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="page-number")
            page_info = gr.Markdown(elem_id="page-info")
        results = gr.Dataframe(label="Pairs with the judge's score and reason (click a row for details)",
                               interactive=False, wrap=True, max_height=600, elem_id="results-table",
                               column_widths=["50px", "60px", "80px", "24%", "24%", "30%", "90px", "80px"])
        with gr.Row():
            with gr.Column(scale=2):
                detail = gr.HTML(elem_id="record-detail")
                with gr.Row():
                    keep_button = gr.Button("Keep", elem_id="override-keep")
                    discard_button = gr.Button("Discard", elem_id="override-discard")
                    clear_button = gr.Button("Use the judge's verdict", elem_id="override-clear")
            scores_plot = gr.BarPlot(x="score", y="pairs", title="Scores", sort=None, elem_id="score-histogram")

    with gr.Tab("5 · Argilla"):
        gr.Markdown("Send the pairs to [Argilla](https://argilla.io) for review, with the judge's verdicts as "
                    "suggestions; pull the reviewers' decisions back. Uses `ARGILLA_API_URL` and `ARGILLA_API_KEY`.")
        with gr.Row():
            argilla_dataset = gr.Textbox("backtrans-review", label="Dataset", elem_id="argilla-dataset")
            argilla_workspace = gr.Textbox(argilla_sync.DEFAULT_WORKSPACE, label="Workspace",
                                           elem_id="argilla-workspace")
            policy = gr.Dropdown(list(argilla_sync.POLICIES), value="majority", label="Several reviewers",
                                 elem_id="argilla-policy")
        with gr.Row():
            push_button = gr.Button("Push to Argilla", elem_id="argilla-push")
            pull_button = gr.Button("Pull decisions", elem_id="argilla-pull")
        argilla_status = gr.Markdown(elem_id="argilla-status")
        agreement_report = gr.Markdown(elem_id="argilla-agreement")
        confusion_plot = gr.BarPlot(x="LLM", y="pairs", color="human", title="Confusion: LLM keep vs human keep",
                                    elem_id="argilla-confusion")
        disagreements = gr.Dataframe(label="Where humans and the LLM disagree", interactive=False, wrap=True,
                                     elem_id="argilla-disagreements")

    with gr.Tab("6 · Export"):
        with gr.Row():
            export_format = gr.Dropdown(["jsonl", "chat", "csv", "parquet"], value="jsonl", label="Format",
                                        info="chat: training format with the paper's system tags",
                                        elem_id="export-format")
            export_download = gr.DownloadButton("Download the curated set", elem_id="export-download")
        with gr.Row():
            hub_repo = gr.Textbox(label="Push the curated set to a Hub dataset (needs HF_TOKEN)",
                                  placeholder="OWNER/NAME", elem_id="export-hub-repo")
            hub_push = gr.Button("Push to the Hub", elem_id="export-hub-push")
        export_status = gr.Markdown(elem_id="export-status")

    # --- wiring ---
    filters = [threshold, min_score, max_score, statuses, search, sort, page_number]
    review_outputs = [results, page_info, scores_plot, curation]
    loaded = [bench_state, data_preview, data_status]

    def refresh_export(event):
        """The download button always holds the current curated set (a DownloadButton cannot build on click)."""
        return event.then(export_file, [bench_state, export_format, threshold], export_download, api_name=False)

    def after_load(event):
        refresh_export(event.then(refresh_review, [bench_state, *filters], review_outputs, api_name=False).then(
            preview_prompt, [bench_state, template, custom_template], prompt_preview, api_name=False))

    upload_event = upload.upload(inspect_upload, upload, [instruction_column, generation_column, data_preview,
                                                          source_state], api_name="inspect_upload")
    after_load(upload_event.then(load_upload, [source_state, instruction_column, generation_column], loaded,
                                 api_name="load_upload"))
    after_load(apply_mapping.click(load_upload, [source_state, instruction_column, generation_column], loaded,
                                   api_name="apply_mapping"))
    after_load(sample.click(load_sample, None, [source_state, *loaded], api_name="load_sample"))
    after_load(hub_load.click(load_hub, [hub_id, hub_config, hub_split], [source_state, *loaded], api_name="load_hub"))

    generating = generate_start.click(generate, [bench_state, model, base_url, api_key, concurrency],
                                      [generate_preview, generate_status], api_name="generate",
                                      show_progress_on=[generate_status])
    augmenting = augment_start.click(augment, [documents, seeds, min_chars, max_chars, near_duplicate, model,
                                               base_url, api_key, concurrency],
                                     [bench_state, generate_preview, generate_status], api_name="augment",
                                     show_progress_on=[generate_status])
    generate_stop.click(None, None, None, cancels=[generating, augmenting])
    after_load(generating)
    after_load(augmenting)

    template.change(lambda name: gr.update(value=template_source(name)) if name != CUSTOM else gr.update(),
                    template, custom_template, api_name=False)
    for trigger in (template.change, custom_template.change):
        trigger(preview_prompt, [bench_state, template, custom_template], prompt_preview, api_name=False)

    judging = start.click(judge, [bench_state, template, custom_template, model, base_url, api_key, concurrency,
                                  threshold, min_score, max_score, statuses, search, sort],
                          [*review_outputs, judge_status], api_name="judge", show_progress_on=[judge_status])
    stop.click(None, None, None, cancels=[judging])
    refresh_export(judging)
    refresh_runs.click(list_runs, None, runs, api_name="list_runs")
    after_load(resume.click(resume_run, runs, [*loaded, template, model, base_url], api_name="resume_run"))

    for control in filters:
        control.change(refresh_review, [bench_state, *filters], review_outputs, api_name=False)
    refresh_export(keep_by.change(set_keep_by, [bench_state, keep_by, *filters], review_outputs, api_name=False))
    for control in (threshold, export_format):
        control.change(export_file, [bench_state, export_format, threshold], export_download, api_name=False)
    results.select(select_row, [bench_state, results], [selected_row, detail], api_name=False)
    for button, decision in ((keep_button, True), (discard_button, False), (clear_button, None)):
        refresh_export(button.click(overrider(decision), [bench_state, selected_row, *filters], review_outputs,
                                    api_name=False))

    push_button.click(push_to_argilla, [bench_state, argilla_dataset, argilla_workspace, template, threshold],
                      argilla_status, api_name="argilla_push")
    pulled = pull_button.click(pull_from_argilla, [bench_state, argilla_dataset, argilla_workspace, policy, threshold],
                               [agreement_report, confusion_plot, disagreements], api_name="argilla_pull")
    refresh_export(pulled.then(refresh_review, [bench_state, *filters], review_outputs, api_name=False))
    hub_push.click(export_to_hub, [bench_state, hub_repo, threshold], export_status, api_name="export_hub")


if __name__ == "__main__":
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    demo.queue(default_concurrency_limit=16, max_size=128).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        show_error=False,
    )
