"""backtrans: the Gradio face. Layout and wiring only; the work is done by `backtrans.session.Session`.

Steps, top to bottom: Data -> Generate -> Judge -> Review -> Argilla -> Export. Each visitor gets a
session of their own, owned by their Hugging Face account when signed in, else by a random id kept in
their browser. Handlers map components to session methods and render what those return.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import gradio as gr
import pandas as pd

from backtrans import backends
from backtrans.augment import FilterSettings
from backtrans.curate import SORTS, STATUSES, Filters
from backtrans.export import FORMATS as EXPORT_FORMATS
from backtrans.limits import LimitError
from backtrans.owners import BROWSER_ID, new_browser_id, owner_for
from backtrans.session import (
    CUSTOM_TEMPLATE,
    DEFAULT_TEMPLATE,
    UPLOAD_SUFFIXES,
    NoSuchRun,
    Session,
    SessionError,
    Workspace,
)
from backtrans.templates import TemplateError, list_templates, load_template

ROOT = Path(__file__).resolve().parent
STREAM_EVERY_S = 0.25
NO_MAPPING = "(none)"
WORKSPACE: Workspace | None = None  # set by create_app(); one per server process


def _workspace() -> Workspace:
    global WORKSPACE
    if WORKSPACE is None:
        WORKSPACE = Workspace.from_env(ROOT / ".backtrans" / "app")
    return WORKSPACE


def _session(session: Session | None, profile: gr.OAuthProfile | None) -> Session:
    """The caller's session. A signed-in caller is their Hub account; an API caller that never loaded the page
    gets a fresh anonymous session, which owns nothing yet."""
    if profile is not None:
        if session is not None and session.owner.signed_in and session.owner.label == profile.username:
            return session
        return _workspace().session(owner_for(profile.username, None))
    if session is not None and not session.owner.signed_in:
        return session
    return _workspace().session(owner_for(None, None))


def _hf_token(token: gr.OAuthToken | None) -> str | None:
    return token.token if token is not None else None


def oauth_available() -> bool:
    """A Space with `hf_oauth: true` sets OAUTH_CLIENT_ID. Off a Space, Gradio mocks sign-in with the machine's
    own Hub login, which needs a token: without one the button would stop the app from starting."""
    if os.environ.get("OAUTH_CLIENT_ID"):
        return True
    if os.environ.get("BACKTRANS_OAUTH") == "0":
        return False
    from huggingface_hub import get_token

    return get_token() is not None


# --- Data --------------------------------------------------------------------------------------------------


def open_session(browser_id: str | None, profile: gr.OAuthProfile | None):
    """Page load: the owner is the signed-in user, else this browser's own id (made on its first visit)."""
    if not BROWSER_ID.match(browser_id or ""):
        browser_id = new_browser_id()
    owner = owner_for(profile.username if profile else None, browser_id)
    session = _workspace().session(owner)
    who = (f"Signed in as **{owner.label}**: your runs follow your account." if owner.signed_in else
           "Not signed in: your runs are kept for this browser only.")
    return session, browser_id, who, _run_choices(session)


def inspect_upload(session: Session | None, file: str | None, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    if not file:
        return session, gr.update(), gr.update(), pd.DataFrame(), ""
    try:
        found = session.inspect_upload(file, Path(file).name)
    except SessionError as exc:
        return (session, gr.update(choices=[], value=None), gr.update(choices=[], value=None), pd.DataFrame(),
                f"**Cannot load this data.** {exc}")
    return (session, gr.update(choices=found.columns, value=found.instruction_column),
            gr.update(choices=[NO_MAPPING, *found.columns], value=found.generation_column or NO_MAPPING),
            found.head, found.message)


def _loaded(session: Session, loaded):
    """Every load starts a clean slate: no stale status, selection or detail from the data before."""
    return session, loaded.preview, loaded.message, "", "", gr.update(value=None, choices=_run_choices(session))


def load_upload(session: Session | None, instruction_column: str | None, generation_column: str | None,
                profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    return _loaded(session, session.load_upload(instruction_column, generation_column))


def load_sample(session: Session | None, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    return _loaded(session, session.load_sample())


def load_hub(session: Session | None, dataset_id: str, config: str, split: str, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    return _loaded(session, session.load_hub(dataset_id, config, split))


def load_local(session: Session | None, name: str, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    return _loaded(session, session.load_local(name))


# --- Judge and Generate --------------------------------------------------------------------------------------


def _backend(session: Session, backend: str, model: str, base_url: str, api_key: str, concurrency: float,
             token: gr.OAuthToken | None):
    return session.choose_backend(backend, model, base_url, api_key, _hf_token(token), concurrency)


async def judge(session: Session | None, template_name: str, custom_text: str, backend: str, model: str,
                base_url: str, api_key: str, concurrency: float, threshold: float, min_score: float,
                max_score: float, statuses: list[str], text: str, sort: str, profile: gr.OAuthProfile | None,
                token: gr.OAuthToken | None):
    session = _session(session, profile)
    filters = Filters(min_score, max_score, tuple(statuses or ()), text, sort)

    def view(message: str):
        shown = session.review(filters, threshold, 1)
        return shown.table, shown.page_info, shown.histogram, shown.summary, message

    try:
        template = session.resolve_template(template_name, custom_text)
        choice = _backend(session, backend, model, base_url, api_key, concurrency, token)
        async for update in session.judge(template, choice, every_s=STREAM_EVERY_S):
            yield view(update.message)
    except (TemplateError, backends.BackendError, LimitError) as exc:
        yield view(f"**Cannot start.** {exc}")


async def generate(session: Session | None, backend: str, model: str, base_url: str, api_key: str,
                   concurrency: float, profile: gr.OAuthProfile | None, token: gr.OAuthToken | None):
    session = _session(session, profile)
    try:
        choice = _backend(session, backend, model, base_url, api_key, concurrency, token)
        async for update in session.generate(choice, every_s=STREAM_EVERY_S):
            yield session.generate_preview(), update.message
    except (backends.BackendError, LimitError) as exc:
        yield pd.DataFrame(), f"**Cannot start.** {exc}"


async def augment(session: Session | None, files: list[str] | None, seeds: str | None, min_chars: float,
                  max_chars: float, near_duplicate: float, backend: str, model: str, base_url: str, api_key: str,
                  concurrency: float, profile: gr.OAuthProfile | None, token: gr.OAuthToken | None):
    session = _session(session, profile)
    filters = FilterSettings(int(min_chars), int(max_chars), near_duplicate_threshold=float(near_duplicate))
    try:
        choice = _backend(session, backend, model, base_url, api_key, concurrency, token)
        uploads = [(path, Path(path).name) for path in files or []]
        async for update in session.augment(uploads, seeds, filters, choice, every_s=STREAM_EVERY_S):
            yield session, session.generate_preview(), update.message
    except (backends.BackendError, LimitError) as exc:
        yield session, pd.DataFrame(), f"**Cannot start.** {exc}"


def _run_choices(session: Session) -> list[tuple[str, str]]:
    return [(run.describe(), run.run_id) for run in session.runs()]


def list_runs(session: Session | None, profile: gr.OAuthProfile | None):
    return gr.update(choices=_run_choices(_session(session, profile)), value=None)


def resume_run(session: Session | None, run_id: str | None, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    try:
        resumed = session.resume(run_id)
    except NoSuchRun as exc:
        return session, pd.DataFrame(), str(exc), gr.update(), gr.update(), gr.update(), gr.update()
    preview = session.bench.frame.head(5) if session.bench is not None else pd.DataFrame()
    return (session, preview, resumed.message, gr.update(value=resumed.template), gr.update(value=resumed.backend),
            gr.update(value=resumed.model), gr.update(value=resumed.base_url if resumed.backend == "custom" else ""))


def delete_my_data(session: Session | None, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    return session, session.delete_my_data(), gr.update(choices=[], value=None)


def preview_prompt(session: Session | None, name: str, custom_text: str) -> str:
    if session is None:
        return "Load data to see the prompt for its first row."
    return session.preview_prompt(name, custom_text)


def template_defaults(name: str):
    """A judge template brings its own scale: the filters, the measure and the threshold follow it."""
    if name == CUSTOM_TEMPLATE:
        return gr.update(), gr.update(), gr.update(), gr.update()
    template = load_template(name)
    by = "expected_score" if template.logprobs else "score"
    # 3.8 on a 1-5 scale where expected scores rank (docs/judge-models.md); else the paper's A4 (one below the top)
    span = template.score_max - template.score_min
    threshold = template.score_min + 0.7 * span if template.logprobs else template.score_max - 1
    return (gr.update(value=template.score_min), gr.update(value=template.score_max), gr.update(value=by),
            gr.update(value=round(threshold, 1), minimum=template.score_min, maximum=template.score_max))


def template_source(name: str) -> str:
    return load_template(name).source if name != CUSTOM_TEMPLATE else load_template(DEFAULT_TEMPLATE).source


# --- Review ------------------------------------------------------------------------------------------------


def refresh_review(session: Session | None, threshold, min_score, max_score, statuses, text, sort, page_number):
    view = (session or _workspace().session(owner_for(None, None))).review(
        Filters(min_score, max_score, tuple(statuses or ()), text, sort), threshold, page_number)
    return view.table, view.page_info, view.histogram, view.summary


def set_keep_by(session: Session | None, keep_by: str, *filters):
    if session is not None:
        session.set_keep_by(keep_by)
    return refresh_review(session, *filters)


def select_row(session: Session | None, table: pd.DataFrame, event: gr.SelectData):
    if session is None or table is None or table.empty:
        return "", *_override_buttons(False)
    detail = session.select(int(table.iloc[event.index[0]]["row"]))
    return detail, *_override_buttons(session.selected_row is not None)


def _override_buttons(enabled: bool):
    return tuple(gr.update(interactive=enabled) for _ in range(3))


def clear_selection(session: Session | None):
    if session is not None:
        session.select(None)
    return "", *_override_buttons(False)


def overrider(keep: bool | None):
    """A click handler that records a reviewer's keep (True), discard (False) or reset (None) of the selected row."""

    def handle(session: Session | None, *filters):
        if session is not None:
            session.override(keep)
        view = refresh_review(session, *filters)
        return *view, session.select(session.selected_row) if session is not None else ""

    return handle


# --- Argilla and Export --------------------------------------------------------------------------------------


def push_to_argilla(session: Session | None, dataset: str, workspace: str, threshold: float,
                    progress=gr.Progress()):
    if session is None:
        return "Judge some data first."
    total = len(session.bench) if session.bench is not None else 0
    return session.argilla_push(dataset, workspace, threshold,
                                on_progress=lambda n: progress(n / max(total, 1), desc=f"{n}/{total} records"))


def pull_from_argilla(session: Session | None, dataset: str, workspace: str, policy: str, threshold: float):
    if session is None:
        return "Judge some data first.", "", pd.DataFrame(columns=["LLM", "human", "pairs"]), pd.DataFrame()
    return session.argilla_pull(dataset, workspace, policy, threshold)


def plan_review(session: Session | None, budget: float, seed: float, overlap_share: float, threshold: float):
    if session is None:
        return "Judge some data first: the plan is stratified by the judge's scores.", pd.DataFrame()
    return session.plan_review(budget, threshold, seed, overlap_share)


def review_estimates(session: Session | None, target_precision: float):
    if session is None:
        empty = pd.DataFrame(columns=["x", "value", "series"])
        return "Pull reviewers' decisions first.", empty, empty, None, gr.update(interactive=False)
    text, calibration, curves, suggested = session.review_estimates(target_precision)
    return text, calibration, curves, suggested, gr.update(interactive=suggested is not None)


def adopt_threshold(session: Session | None, suggested: float | None):
    """One click: the suggested threshold (and its measure) become the Review step's."""
    if session is None or suggested is None:
        return gr.update(), gr.update()
    return gr.update(value=suggested), gr.update(value=session.measure())


def export_file(session: Session | None, fmt: str, threshold: float):
    if session is None:
        return None, "Nothing to export yet."
    exported = session.export(fmt, threshold)
    return exported.path, exported.message


def export_to_hub(session: Session | None, repo: str, threshold: float, token: gr.OAuthToken | None) -> str:
    if session is None:
        return "Judge some data first."
    return session.export_to_hub(repo, threshold, _hf_token(token))


# --- Layout ------------------------------------------------------------------------------------------------


def _browser_secret(workspace: Workspace) -> str:
    """BrowserState encrypts what it keeps with this; it must outlive restarts or every visitor loses their runs."""
    secret = os.environ.get("BACKTRANS_BROWSER_SECRET")
    if secret:
        return secret
    path = workspace.data_dir / ".browser-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


# Table headers wrap between words, never inside one ("expected score", not "e x p e c t e d").
TABLE_CSS = "table th, table th * { word-break: normal !important; overflow-wrap: normal !important; }"


def create_app(workspace: Workspace | None = None) -> gr.Blocks:
    global WORKSPACE
    WORKSPACE = workspace or _workspace()
    WORKSPACE.data_dir.mkdir(parents=True, exist_ok=True)
    judge_templates = [t.name for t in list_templates("judge")]
    default_template = DEFAULT_TEMPLATE if DEFAULT_TEMPLATE in judge_templates else judge_templates[0]
    template_info = load_template(default_template)
    keep_by_default = "expected_score" if template_info.logprobs else "score"
    default_backend = backends.SERVER if backends.server_key_shared() else backends.HUGGINGFACE
    server_model = os.environ.get("BACKTRANS_MODEL", "")

    with gr.Blocks(title="backtrans") as demo:
        with gr.Row():
            gr.Markdown("# backtrans\nCurate instruction-tuning data with **instruction backtranslation** "
                        "(Humpback): an LLM judge scores each (instruction, response) pair with the paper's 5-point "
                        "prompt, you review its verdicts, and export the pairs worth training on.")
            with gr.Column(scale=0, min_width=220):
                if oauth_available():
                    gr.LoginButton(elem_id="login")
                who = gr.Markdown(elem_id="who")
                delete_data = gr.Button("Delete my data", size="sm", variant="stop", elem_id="delete-my-data")
        session_state = gr.State(None)
        browser_id = gr.BrowserState(None, storage_key="backtrans-owner", secret=_browser_secret(WORKSPACE))

        with gr.Tab("1 · Data"):
            with gr.Row():
                upload = gr.File(label="Upload JSONL, CSV or Parquet", elem_id="data-upload",
                                 file_types=list(UPLOAD_SUFFIXES))
                with gr.Column():
                    sample = gr.Button("Use the bundled sample (30 pairs)", elem_id="data-sample")
                    hub_id = gr.Textbox(label="…or a Hugging Face dataset", placeholder="OWNER/NAME",
                                        elem_id="data-hub-id")
                    with gr.Row():
                        hub_config = gr.Textbox(label="Config", elem_id="data-hub-config")
                        hub_split = gr.Textbox(label="Split", value="train", elem_id="data-hub-split")
                    hub_load = gr.Button("Load from the Hub", elem_id="data-hub-load")
                    with gr.Row(visible=WORKSPACE.local_files_dir is not None):
                        local_name = gr.Textbox(label=f"…or a file in {WORKSPACE.local_files_dir}",
                                                elem_id="data-local-name")
                        local_load = gr.Button("Load this file", elem_id="data-local-load")
            with gr.Row():
                instruction_column = gr.Dropdown(label="Instruction column", choices=[], elem_id="map-instruction")
                generation_column = gr.Dropdown(label="Response column", choices=[], elem_id="map-generation")
                apply_mapping = gr.Button("Load with this mapping", elem_id="data-apply-mapping")
            data_status = gr.Markdown(elem_id="data-status")
            data_preview = gr.Dataframe(pd.DataFrame(columns=["instruction", "generation"]), label="First rows",
                                        interactive=False, wrap=True, max_height=260, elem_id="data-preview")

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
            generate_preview = gr.Dataframe(pd.DataFrame(columns=["instruction", "generation"]), interactive=False,
                                            wrap=True, max_height=260, elem_id="generate-preview")

        with gr.Tab("3 · Judge"):
            with gr.Row():
                template = gr.Dropdown([*judge_templates, CUSTOM_TEMPLATE], value=default_template,
                                       label="Judge template", elem_id="judge-template")
                backend = gr.Dropdown([(label, key) for key, label in backends.PRESETS.items()],
                                      value=default_backend, label="Backend", elem_id="judge-backend")
                model = gr.Dropdown([m for m in (server_model, *backends.HF_ROUTER_MODELS) if m],
                                    value=server_model if default_backend == backends.SERVER else
                                    backends.HF_ROUTER_MODELS[0], allow_custom_value=True, label="Model",
                                    elem_id="judge-model")
                concurrency = gr.Slider(1, WORKSPACE.limits.concurrency or 256, value=16, step=1,
                                        label="Concurrency", elem_id="judge-concurrency")
            with gr.Row():
                base_url = gr.Textbox(label="Base URL (custom backend)", placeholder="https://…/v1",
                                      elem_id="judge-base-url")
                api_key = gr.Textbox(label="API key (custom backend; kept in this session only)", type="password",
                                     elem_id="judge-api-key")
            with gr.Accordion("Template and prompt preview", open=False):
                custom_template = gr.Code(template_info.source, language="jinja2",
                                          label="Custom template (choose 'custom' above)",
                                          elem_id="judge-custom-template")
                prompt_preview = gr.Textbox(label="The prompt for the first row", lines=8, interactive=False,
                                            elem_id="judge-prompt-preview")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="judge-start")
                stop = gr.Button("Stop", variant="stop", elem_id="judge-stop")
            judge_status = gr.Markdown(elem_id="judge-status")
            with gr.Row():
                runs = gr.Dropdown(label="Resume one of your earlier runs", choices=[], elem_id="judge-runs")
                refresh_runs = gr.Button("Refresh runs", elem_id="judge-refresh-runs")
                resume = gr.Button("Resume this run", elem_id="judge-resume")

        with gr.Tab("4 · Review"):
            with gr.Row():
                threshold = gr.Slider(0, 5, value=3.8 if keep_by_default == "expected_score" else 4, step=0.1,
                                      label="Keep pairs scored at least", elem_id="threshold")
                keep_by = gr.Radio([("score", "score"), ("expected score", "expected_score")],
                                   value=keep_by_default, label="Compare with", elem_id="keep-by")
                curation = gr.Markdown(elem_id="threshold-counts")
            with gr.Row():
                min_score = gr.Number(template_info.score_min, label="Min score", elem_id="filter-min")
                max_score = gr.Number(template_info.score_max, label="Max score", elem_id="filter-max")
                statuses = gr.CheckboxGroup(list(STATUSES), value=list(STATUSES), label="Status",
                                            elem_id="filter-status")
                search = gr.Textbox(label="Search text", elem_id="filter-text")
                sort = gr.Dropdown(list(SORTS), value="input order", label="Sort", elem_id="filter-sort")
            with gr.Row():
                page_number = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="page-number")
                page_info = gr.Markdown(elem_id="page-info")
            results = gr.Dataframe(pd.DataFrame(columns=["row", "verdict", "judge", "score", "reason", "instruction",
                                                         "generation"]),
                                   label="Pairs with the judge's verdict, score and reason (click a row for details)",
                                   interactive=False, wrap=True, max_height=900, elem_id="results-table")
            with gr.Row():
                with gr.Column(scale=2):
                    detail = gr.HTML(elem_id="record-detail")
                    with gr.Row():
                        keep_button = gr.Button("Keep", elem_id="override-keep", interactive=False)
                        discard_button = gr.Button("Discard", elem_id="override-discard", interactive=False)
                        clear_button = gr.Button("Use the judge's verdict", elem_id="override-clear",
                                                 interactive=False)
                scores_plot = gr.BarPlot(x="bin", y="pairs", color="side", sort=None, elem_id="score-histogram",
                                         title="Pairs by measure: green is kept",
                                         color_map={"kept": "#2e7d32", "discarded": "#9e9e9e"})

            with gr.Accordion("Calibrated threshold (after pulling reviewers' decisions)", open=False,
                              elem_id="calibration"):
                with gr.Row():
                    target_precision = gr.Slider(0.5, 0.99, value=0.9, step=0.01, label="Target precision",
                                                 elem_id="target-precision")
                    adopt = gr.Button("Adopt the suggested threshold", interactive=False, elem_id="adopt-threshold")
                suggested_threshold = gr.State(None)
                estimates_text = gr.Markdown(elem_id="review-estimates")
                with gr.Row():
                    calibration_plot = gr.LinePlot(x="x", y="value", color="series", elem_id="calibration-curve",
                                                   title="Human keep rate by band of the judge's measure",
                                                   x_title="band (lower edge)", y_title="keep rate")
                    curves_plot = gr.LinePlot(x="x", y="value", color="series", elem_id="precision-recall",
                                              title="Precision and recall against the threshold (95% band)",
                                              x_title="threshold", y_title="")

        with gr.Tab("5 · Argilla"):
            gr.Markdown("Send the pairs to [Argilla](https://argilla.io) for review, with the judge's verdicts as "
                        "suggestions; pull the reviewers' decisions back. Uses `ARGILLA_API_URL` and "
                        "`ARGILLA_API_KEY`.")
            from backtrans import argilla

            with gr.Row():
                argilla_dataset = gr.Textbox("backtrans-review", label="Dataset", elem_id="argilla-dataset")
                argilla_workspace = gr.Textbox(argilla.DEFAULT_WORKSPACE, label="Workspace",
                                               elem_id="argilla-workspace")
                policy = gr.Dropdown(list(argilla.POLICIES), value="majority", label="Several reviewers",
                                     elem_id="argilla-policy")
            with gr.Accordion("Plan review: spend a review budget well", open=False, elem_id="plan-review"):
                gr.Markdown("Pick at most *budget* pairs for reviewers, stratified across bands of the judge's "
                            "measure (plus a share near the threshold), so precision and recall of any threshold "
                            "can be estimated with honest intervals. Once planned, **Push** sends the plan.")
                with gr.Row():
                    budget = gr.Number(300, label="Review budget (pairs)", precision=0, minimum=1,
                                       elem_id="review-budget")
                    plan_seed = gr.Number(0, label="Seed", precision=0, elem_id="review-seed")
                    overlap_share = gr.Slider(0, 0.5, value=0.1, step=0.05, label="Share for two reviewers",
                                              elem_id="review-overlap")
                    plan_button = gr.Button("Plan review", elem_id="review-plan")
                plan_summary = gr.Markdown(elem_id="review-plan-summary")
                plan_makeup = gr.Dataframe(
                    pd.DataFrame(columns=["band", "pairs", "to review", "inclusion probability"]),
                    interactive=False, elem_id="review-plan-makeup")
            with gr.Row():
                push_button = gr.Button("Push to Argilla", elem_id="argilla-push")
                pull_button = gr.Button("Pull decisions", elem_id="argilla-pull")
            argilla_status = gr.Markdown(elem_id="argilla-status")
            agreement_report = gr.Markdown(elem_id="argilla-agreement")
            confusion_plot = gr.BarPlot(x="LLM", y="pairs", color="human", title="Confusion: LLM keep vs human keep",
                                        elem_id="argilla-confusion")
            disagreements = gr.Dataframe(
                pd.DataFrame(columns=["instruction", "generation", "score", "expected score", "reason", "human keep",
                                      "human score", "note", "reviewer"]),
                label="Where humans and the LLM disagree", interactive=False, wrap=True, max_height=600,
                column_widths=["22%", "22%", "70px", "90px", "16%", "80px", "80px", "12%", "90px"],
                elem_id="argilla-disagreements")

        with gr.Tab("6 · Export"):
            with gr.Row():
                export_format = gr.Dropdown(list(EXPORT_FORMATS), value="jsonl", label="Format",
                                            info="chat: training format with the paper's system tags",
                                            elem_id="export-format")
                export_download = gr.DownloadButton("Download the curated set", elem_id="export-download")
            export_count = gr.Markdown(elem_id="export-count")
            with gr.Row():
                hub_repo = gr.Textbox(label="Push the curated set to your Hub dataset repo", placeholder="OWNER/NAME",
                                      elem_id="export-hub-repo")
                hub_push = gr.Button("Push to the Hub", elem_id="export-hub-push")
            export_status = gr.Markdown(elem_id="export-status")

        # --- wiring ---
        filters = [threshold, min_score, max_score, statuses, search, sort, page_number]
        review_outputs = [results, page_info, scores_plot, curation]
        override_buttons = [keep_button, discard_button, clear_button]
        loaded = [session_state, data_preview, data_status, judge_status, generate_status, runs]

        demo.load(open_session, [browser_id], [session_state, browser_id, who, runs], api_name=False)

        def refresh_export(event):
            """The download button always holds the current curated set (a DownloadButton cannot build on click)."""
            return event.then(export_file, [session_state, export_format, threshold], [export_download, export_count],
                              api_name=False)

        def after_load(event):
            refresh_export(
                event.then(refresh_review, [session_state, *filters], review_outputs, api_name=False)
                .then(clear_selection, session_state, [detail, *override_buttons], api_name=False)
                .then(preview_prompt, [session_state, template, custom_template], prompt_preview, api_name=False))

        inspected = upload.upload(inspect_upload, [session_state, upload],
                                  [session_state, instruction_column, generation_column, data_preview, data_status],
                                  api_name="inspect_upload")
        # Most files need no mapping: load at once with the guess; the mapping button reloads with another.
        after_load(inspected.success(load_upload, [session_state, instruction_column, generation_column], loaded,
                                     api_name=False))
        after_load(apply_mapping.click(load_upload, [session_state, instruction_column, generation_column], loaded,
                                       api_name="load_upload"))
        after_load(sample.click(load_sample, session_state, loaded, api_name="load_sample"))
        after_load(hub_load.click(load_hub, [session_state, hub_id, hub_config, hub_split], loaded,
                                  api_name="load_hub"))
        after_load(local_load.click(load_local, [session_state, local_name], loaded, api_name="load_local"))

        llm_inputs = [backend, model, base_url, api_key, concurrency]
        generating = generate_start.click(generate, [session_state, *llm_inputs], [generate_preview, generate_status],
                                          api_name="generate", show_progress_on=[generate_status])
        augmenting = augment_start.click(augment, [session_state, documents, seeds, min_chars, max_chars,
                                                   near_duplicate, *llm_inputs],
                                         [session_state, generate_preview, generate_status], api_name="augment",
                                         show_progress_on=[generate_status])
        generate_stop.click(None, None, None, cancels=[generating, augmenting])
        after_load(generating)
        after_load(augmenting)

        template.change(lambda name: gr.update(value=template_source(name)) if name != CUSTOM_TEMPLATE
                        else gr.update(), template, custom_template, api_name=False)
        template.change(template_defaults, template, [min_score, max_score, keep_by, threshold], api_name=False)
        for trigger in (template.change, custom_template.change):
            trigger(preview_prompt, [session_state, template, custom_template], prompt_preview, api_name=False)

        judging = start.click(judge, [session_state, template, custom_template, *llm_inputs, *filters[:-1]],
                              [*review_outputs, judge_status], api_name="judge", show_progress_on=[judge_status])
        stop.click(None, None, None, cancels=[judging])
        refresh_export(judging)
        refresh_runs.click(list_runs, session_state, runs, api_name="list_runs")
        after_load(resume.click(resume_run, [session_state, runs],
                                [session_state, data_preview, data_status, template, backend, model, base_url],
                                api_name="resume_run"))
        delete_data.click(delete_my_data, session_state, [session_state, data_status, runs], api_name="delete_my_data")

        for control in filters:
            control.change(refresh_review, [session_state, *filters], review_outputs, api_name=False)
        refresh_export(keep_by.change(set_keep_by, [session_state, keep_by, *filters], review_outputs,
                                      api_name=False))
        for control in (threshold, export_format):
            control.change(export_file, [session_state, export_format, threshold], [export_download, export_count],
                           api_name=False)
        results.select(select_row, [session_state, results], [detail, *override_buttons], api_name=False)
        for button, decision in ((keep_button, True), (discard_button, False), (clear_button, None)):
            refresh_export(button.click(overrider(decision), [session_state, *filters], [*review_outputs, detail],
                                        api_name=False))

        push_button.click(push_to_argilla, [session_state, argilla_dataset, argilla_workspace, threshold],
                          argilla_status, api_name="argilla_push")
        pulled = pull_button.click(pull_from_argilla, [session_state, argilla_dataset, argilla_workspace, policy,
                                                       threshold],
                                   [argilla_status, agreement_report, confusion_plot, disagreements],
                                   api_name="argilla_pull")
        refresh_export(pulled.then(refresh_review, [session_state, *filters], review_outputs, api_name=False))
        estimate_outputs = [estimates_text, calibration_plot, curves_plot, suggested_threshold, adopt]
        pulled.then(review_estimates, [session_state, target_precision], estimate_outputs, api_name=False)
        target_precision.change(review_estimates, [session_state, target_precision], estimate_outputs,
                                api_name="review_estimates")
        adopt.click(adopt_threshold, [session_state, suggested_threshold], [threshold, keep_by], api_name=False)
        plan_button.click(plan_review, [session_state, budget, plan_seed, overlap_share, threshold],
                          [plan_summary, plan_makeup], api_name="plan_review")
        hub_push.click(export_to_hub, [session_state, hub_repo, threshold], export_status, api_name="export_hub")
    return demo


def main() -> None:
    workspace = _workspace()
    workspace.data_dir.mkdir(parents=True, exist_ok=True)
    workspace.expire()
    demo = create_app(workspace)
    # Each event may run for many users at once; one visitor's jobs are capped by the session's job gate,
    # so a long job never queues another visitor's short one behind it.
    demo.queue(default_concurrency_limit=32, max_size=256).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        show_error=False,
        css=TABLE_CSS,  # Gradio 6 takes page styles at launch
        max_file_size=f"{workspace.limits.upload_mb}mb" if workspace.limits.upload_mb else None,
    )


if __name__ == "__main__":
    main()
