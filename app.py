"""backtrans: the Gradio face. Layout and wiring only; the work is done in backtrans/."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from backtrans.export import RowWriter, threshold_counts
from backtrans.judge import RESULT_COLUMNS, JudgeTask
from backtrans.llm import LLMSettings, redact
from backtrans.records import SAMPLE_PATH, RecordsError, dataframe_rows, load_records
from backtrans.runner import stream_results
from backtrans.templates import TemplateError, list_templates, load_template

DATA_DIR = Path(os.environ.get("BACKTRANS_DATA_DIR", Path(__file__).parent / ".backtrans" / "app"))
STORE_PATH = str(DATA_DIR / "runs.sqlite")
TABLE_COLUMNS = ["instruction", "generation", "score", "expected_score", "reason", "status"]
DEFAULT_TEMPLATE = os.environ.get("BACKTRANS_TEMPLATE", "humpback")
STREAM_EVERY_S = 0.25


def empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=TABLE_COLUMNS)


def load_data(path: str | None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    if not path:
        return pd.DataFrame(), empty_table(), "Upload a JSONL, CSV or Parquet file, or use the sample."
    try:
        frame = load_records(path)
    except RecordsError as exc:
        return pd.DataFrame(), empty_table(), f"**Cannot load this file.** {exc}"
    for column in RESULT_COLUMNS:
        frame[column] = None
    return frame, frame.reindex(columns=TABLE_COLUMNS), f"Loaded **{len(frame)}** pairs from `{Path(path).name}`."


def load_sample() -> tuple[pd.DataFrame, pd.DataFrame, str]:
    return load_data(str(SAMPLE_PATH))


async def judge(frame: pd.DataFrame, template_name: str, model: str, base_url: str, api_key: str,
                concurrency: float):
    if frame is None or frame.empty:
        yield frame, empty_table(), "Load some data first."
        return
    try:
        template = load_template(template_name)
        settings = LLMSettings.from_env(model=model or None, base_url=base_url or None, api_key=api_key or None,
                                        concurrency=int(concurrency))
        task = JudgeTask(template, settings)
    except TemplateError as exc:
        yield frame, frame.reindex(columns=TABLE_COLUMNS), f"**Template problem.** {exc}"
        return
    results = frame.reset_index(drop=True).reindex(columns=[*frame.columns.drop(list(RESULT_COLUMNS), errors="ignore"),
                                                            *RESULT_COLUMNS])
    run_config = {"source": "app", "template_digest": template.digest, "model": settings.model,
                  "base_url": settings.base_url, "rows": len(results)}
    last_yield = 0.0
    try:
        async for index, result, progress in stream_results(dataframe_rows(frame), task, STORE_PATH, run_config):
            for column in RESULT_COLUMNS:
                results.at[index, column] = result.get(column)
            if time.monotonic() - last_yield > STREAM_EVERY_S or progress.done == progress.total:
                last_yield = time.monotonic()
                yield results.copy(), results.reindex(columns=TABLE_COLUMNS), _progress_text(progress)
    except Exception as exc:  # keep the page alive and the rows scored so far
        message = redact(f"{type(exc).__name__}: {exc}", settings.api_key)
        yield results, results.reindex(columns=TABLE_COLUMNS), f"**Stopped by an error.** {message}"


def _progress_text(progress) -> str:
    return (f"{progress.done}/{progress.total} rows · {progress.ok} ok · {progress.parse_error} parse errors · "
            f"{progress.llm_error} LLM errors · {progress.cached} from the store · {progress.tokens:,} tokens")


def curation_summary(frame: pd.DataFrame, threshold: float) -> str:
    if frame is None or frame.empty or "score" not in frame:
        return ""
    counts = threshold_counts(frame["score"].tolist(), int(threshold))
    return (f"Scored {counts['scored']} · kept at ≥{int(threshold)}: **{counts['kept']}** · "
            f"A4: {counts['A4']} · A5: {counts['A5']}")


def export(frame: pd.DataFrame, fmt: str, threshold: float) -> str | None:
    if frame is None or frame.empty:
        return None
    from backtrans.export import curated

    suffix = {"jsonl": ".jsonl", "chat": ".jsonl", "csv": ".csv", "parquet": ".parquet"}[fmt]
    folder = Path(tempfile.mkdtemp(prefix="backtrans-export-"))
    path = folder / f"curated-{fmt}{suffix}"
    with RowWriter(path, fmt) as writer:
        for row in curated(dataframe_rows(frame), int(threshold)):
            writer.write(row)
    return str(path)


judge_templates = [t.name for t in list_templates("judge")]

with gr.Blocks(title="backtrans") as demo:
    gr.Markdown("# backtrans\nInstruction backtranslation: score (instruction, response) pairs with an LLM judge "
                "(Humpback's 5-point self-curation prompt), keep the best, export a training set.")
    data = gr.State(pd.DataFrame())

    with gr.Row():
        upload = gr.File(label="Data (JSONL, CSV, Parquet)", file_types=[".jsonl", ".json", ".csv", ".parquet"],
                         elem_id="data-upload")
        with gr.Column():
            sample = gr.Button("Use the bundled sample", elem_id="data-sample")
            data_status = gr.Markdown(elem_id="data-status")

    with gr.Row():
        template = gr.Dropdown(judge_templates, value=DEFAULT_TEMPLATE if DEFAULT_TEMPLATE in judge_templates
                               else judge_templates[0], label="Judge template", elem_id="judge-template")
        model = gr.Textbox(value=os.environ.get("BACKTRANS_MODEL", ""), label="Model", elem_id="judge-model")
        base_url = gr.Textbox(value=os.environ.get("OPENAI_BASE_URL", ""), label="Base URL",
                              placeholder="https://api.openai.com/v1", elem_id="judge-base-url")
        api_key = gr.Textbox(label="API key", type="password", placeholder="from OPENAI_API_KEY if empty",
                             elem_id="judge-api-key")
        concurrency = gr.Slider(1, 256, value=16, step=1, label="Concurrency", elem_id="judge-concurrency")
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id="judge-start")
        stop = gr.Button("Stop", variant="stop", elem_id="judge-stop")
    judge_status = gr.Markdown(elem_id="judge-status")

    table = gr.Dataframe(empty_table(), label="Pairs with the judge's score and reason", interactive=False,
                         wrap=True, max_height=600, elem_id="results-table")
    with gr.Row():
        threshold = gr.Slider(0, 5, value=4, step=1, label="Keep pairs scored at least", elem_id="threshold")
        counts = gr.Markdown(elem_id="threshold-counts")
    with gr.Row():
        export_format = gr.Dropdown(["jsonl", "chat", "csv", "parquet"], value="jsonl", label="Export format",
                                    elem_id="export-format")
        export_file = gr.DownloadButton("Download the curated set", elem_id="export-download")

    loaded = [data, table, data_status]
    upload.upload(load_data, upload, loaded, api_name="load_data")
    sample.click(load_sample, None, loaded, api_name="load_sample")
    run = start.click(judge, [data, template, model, base_url, api_key, concurrency], [data, table, judge_status],
                      api_name="judge", show_progress_on=[judge_status])
    stop.click(None, None, None, cancels=[run])
    for trigger in (run.then, threshold.change):
        trigger(curation_summary, [data, threshold], counts, api_name=False)
    for source in (run.then, threshold.change, export_format.change):
        source(export, [data, export_format, threshold], export_file, api_name=False)


if __name__ == "__main__":
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    demo.queue(default_concurrency_limit=8, max_size=64).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
    )
