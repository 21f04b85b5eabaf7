"""backtrans: the Gradio face. Layout, wiring and rendering only; the work is done by `backtrans.session.Session`.

Steps, top to bottom: Data -> Generate -> Judge -> Review -> Argilla -> Export, each built by one function.
Each visitor gets a session of their own, owned by their Hugging Face account when signed in, else by a random
id kept in their browser. Handlers map components to session methods; the session returns rows, counts and
curves, and the `render_*` functions here turn them into Markdown, tables, HTML and plots.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import gc
import html
import os
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from backtrans import backends, local
from backtrans.augment import FilterSettings
from backtrans.decisions import ALIGNED_THRESHOLD, default_measure, default_threshold, judge_measure
from backtrans.export import FORMATS as EXPORT_FORMATS
from backtrans.limits import LimitError
from backtrans.owners import BROWSER_ID, new_browser_id, on_space, owner_for
from backtrans.records import SUFFIXES, missing
from backtrans.review_table import SORTS, STATUSES, Filters, plain_value
from backtrans.session import CUSTOM_TEMPLATE, MAX_REASK, NoSuchRun, Session, SessionError
from backtrans.templates import TemplateError, default_template, list_templates, load_template
from backtrans.workspace import Workspace

ROOT = Path(__file__).resolve().parent
STREAM_EVERY_S = 0.25
NO_MAPPING = "(none)"
WORKSPACE: Workspace | None = None  # set by create_app(); one per server process

# The review table: short columns first, so the verdict stays in view beside the pair however long the texts.
REVIEW_COLUMNS = ["row", "verdict", "judge", "score", "expected_score", "reason", "instruction", "generation", "status"]
# Words a table header can wrap between; the data keeps its column names.
HEADERS = {"expected_score": "expected score", "human_keep": "human keep", "human_score": "human score",
           "human_note": "note"}
PREVIEW_CHARS = 200
FORMAT_HINTS = {"jsonl": "jsonl: one JSON object per line, every column kept",
                "chat": "chat: the training format, with the paper's system tags",
                "csv": "csv: for spreadsheets (cells that look like formulas are neutralised)",
                "parquet": "parquet: columnar, typed, for large sets"}
EMPTY_CURVE = pd.DataFrame(columns=["x", "value", "series"])
CONFUSION_COLUMNS = ["LLM", "human", "pairs"]
# Table headers wrap between words, never inside one ("expected score", not "e x p e c t e d").
TABLE_CSS = "table th, table th * { word-break: normal !important; overflow-wrap: normal !important; }"


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


# --- rendering: what the session returns, as the page shows it ----------------------------------------------


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def render_progress(progress, final: bool = False, eta: bool = True) -> str:
    """Rows done, by status, tokens, rate and (with `eta`) the time left; at the end, how long the whole run took."""
    elapsed = time.monotonic() - progress.started
    rate = progress.done / elapsed if elapsed > 0 else 0.0
    counts = (f"{progress.ok} ok · {progress.parse_error} parse errors · {progress.llm_error} LLM errors · "
              f"{progress.cached} from the store · {progress.tokens:,} tokens")
    if progress.reasks:
        counts += f" · {counted(progress.reasks, 're-ask')} ({progress.reask_ok} parsed on one)"
    if final:
        return f"**Done:** {progress.done} rows in {duration(elapsed)} · {counts}"
    left = (progress.total or 0) - progress.done
    left_text = f" · about {duration(left / rate)} left" if eta and rate > 0 and left > 0 else ""
    return f"{progress.done}/{progress.total} rows · {counts} · {rate:.2f} rows/s{left_text}"


def render_loaded(loaded) -> str:
    note = f" {loaded.without_response} have no response yet: use **Generate**." if loaded.without_response else ""
    return f"Loaded **{loaded.rows}** pairs from `{loaded.label}`.{note}"


def render_run(run) -> str:
    when = datetime.datetime.fromtimestamp(run.created).strftime("%Y-%m-%d %H:%M")
    return f"{when} · {run.kind} · {run.label} · {'finished' if run.finished else 'unfinished'}"


def _verdict(keep: object, decided_by: str) -> str:
    if missing(keep):
        return ""
    word = "keep" if bool(keep) else "discard"
    return word if decided_by == "judge" else f"{word} ({decided_by})"


def _shorten(value: object) -> str:
    text = "" if missing(value) else str(value)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def render_review_table(view) -> dict:
    """One page of the review: the verdict first, long texts shortened, earlier rounds' scores beside this one's.
    As Dataframe's own `{"headers", "data"}`: a frame built here only for Gradio to take apart again cost more
    than the rest of a running job's redraw."""
    rows = view.rows
    earlier = sorted(c for c in rows.columns if c.startswith("score_r") and c[7:].isdigit())
    columns = REVIEW_COLUMNS[:1] + earlier + REVIEW_COLUMNS[1:]
    if not view.has_expected:
        columns.remove("expected_score")  # a judge without digit probabilities: no empty column
    shown = {column: [plain_value(value) for value in rows[column].tolist()] if column in rows
             else [None] * len(rows) for column in columns if column not in ("verdict", "judge")}
    if len(rows) and "final_keep" in rows:
        # A row the judge has not answered yet is pending, never a verdict (unless a person already decided it).
        pending = [missing(status) for status in rows["status"].tolist()]
        shown["verdict"] = ["pending" if wait and by == "judge" else _verdict(keep, by)
                            for keep, by, wait in zip(rows["final_keep"].tolist(), rows["decided_by"].tolist(),
                                                      pending, strict=True)]
        shown["judge"] = ["pending" if wait else _verdict(keep, "judge")
                          for keep, wait in zip(rows["judge_keep"].tolist(), pending, strict=True)]
    for column in ("instruction", "generation", "reason"):
        shown[column] = [_shorten(value) for value in shown[column]]
    cells = [shown.get(column, [None] * len(rows)) for column in columns]
    return {"headers": [HEADERS.get(column, column) for column in columns],
            "data": [list(row) for row in zip(*cells, strict=True)]}


def render_histogram(view) -> pd.DataFrame:
    """The bars of the measure: each bin's kept pairs green and its discarded grey, so green adds up to the
    kept count."""
    out = []
    for item in view.bins:
        label = f"{item.low:g}"
        out += [{"bin": label, "pairs": item.kept, "side": "kept"},
                {"bin": label, "pairs": item.discarded, "side": "discarded"}]
    return pd.DataFrame(out, columns=["bin", "pairs", "side"])


MEASURE_WORDS = {"score": "score", "expected_score": "expected score", "aligned_score": "aligned score"}


def render_summary(view) -> str:
    """The counts, under the very measure the Keep by choice names."""
    if not view.total:
        return ""
    overrides = f" · {view.overrides} overrides" if view.overrides else ""
    kept = f"kept at ≥{view.threshold:g}: **{view.kept}** of {view.total}"
    chosen = f"Keep by: **{MEASURE_WORDS[view.keep_by]}**"
    if view.keep_by != "score":
        missing_words = f" (no {MEASURE_WORDS[view.keep_by]}s yet: the score stands in)"
        stand_in = "" if view.measure == view.keep_by else missing_words
        return f"{chosen}{stand_in} · {kept} · scored {view.scored}{overrides}"
    paper = f" (the paper's A4: {view.levels['A4']}, A5: {view.levels['A5']})" if view.levels else ""
    return f"{chosen} · {kept}{paper} · scored {view.scored}{overrides}"


def render_page_info(view) -> str:
    return f"Page {view.page} of {view.pages} · {view.matching} rows match"


def render_review(view):
    return render_review_table(view), render_page_info(view), render_histogram(view), render_summary(view)


def render_record(row: dict | None, by: str = "score", threshold: float | None = None) -> str:
    """One record in full, its verdict under the measure and threshold in force. Every piece of dataset or
    model text is escaped: it renders as text only."""
    if row is None:
        return ""

    def block(title: str, value: object) -> str:
        text = "" if missing(value) else str(value)
        return (f'<div class="bt-block"><div class="bt-title">{html.escape(title)}</div>'
                f'<pre class="bt-text" style="white-space:pre-wrap">{html.escape(text)}</pre></div>')

    score = row.get("score")
    score_text = "none" if missing(score) else str(int(score))
    header = (f"<p><b>Row {html.escape(str(row.get('row', '')))}</b> · score {html.escape(score_text)} · "
              f"status {html.escape(str(row.get('status') or 'pending'))}"
              + (f" · expected {float(row['expected_score']):.2f}" if not missing(row.get("expected_score")) else "")
              + "</p>")
    if "final_keep" in row:
        who = {"you": "you (override)", "reviewer": "a reviewer in Argilla"}.get(str(row.get("decided_by")),
                                                                                  "the judge")
        measure = judge_measure(row, by)
        rule = ""
        if measure is not None and threshold is not None:
            name = "expected score" if by == "expected_score" and not missing(row.get("expected_score")) else "score"
            rule = f" ({name} {measure:.2f} {'≥' if measure >= threshold else '<'} {threshold:g})"
        verdict = "pending" if missing(row.get("status")) and row.get("decided_by") == "judge" else \
            ("keep" if row["final_keep"] else "discard")
        header += (f"<p><b>Verdict: {verdict}</b>, decided by {html.escape(who)}{rule}"
                   + (f" · the judge says {_verdict(row.get('judge_keep'), 'judge') or 'nothing yet'}"
                      if row.get("decided_by") != "judge" else "") + "</p>")
    parts = [header, block("Instruction", row.get("instruction")), block("Response", row.get("generation")),
             block("Judge's reason", row.get("reason")), block("Raw judge output", row.get("raw_output"))]
    if row.get("error"):
        parts.append(block("Error", row.get("error")))
    return '<div class="bt-record">' + "".join(parts) + "</div>"


def render_plan(summary) -> tuple[str, pd.DataFrame]:
    makeup = pd.DataFrame([{"band": band, "pairs": int(info["rows"]), "to review": int(info["planned"]),
                            "inclusion probability": round(info["inclusion_prob"], 4)}
                           for band, info in summary.bands.items()])
    return summary.describe(), makeup


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def render_pushed(reports, planned: bool) -> str:
    what = "records of the review plan" if planned else "records"
    places = " and ".join(f"[{r.workspace}/{r.dataset}]({r.url})" for r in reports)
    return f"Pushed **{sum(r.pushed for r in reports)}** {what} to {places}."


def render_pulled(summary: dict) -> str:
    reviewers = summary["reviewers"]
    who = (f", from {counted(len(reviewers), 'reviewer')} ({', '.join(reviewers)})"
           if reviewers else ", no reviewer has answered yet")
    return f"Pulled **{summary['records']}** records: **{summary['decisions']}** with a reviewer's decision{who}."


def _figure(value: object, percent: bool = True) -> str:
    if value is None or missing(value):
        return "not enough decisions yet"
    return f"{float(value):.0%}" if percent else f"{float(value):.2f}"


def render_agreement(report: dict) -> str:
    """The agreement report for people: each number with its meaning, and the reviewers in a small table."""
    lines = [f"Over **{report['reviewed']}** reviewed pairs, the judge keeps at {report['by'].replace('_', ' ')} "
             f"≥ {report['threshold']:g}:",
             f"- **precision** {_figure(report['precision'])}: of the pairs the judge kept, the share reviewers kept",
             f"- **recall** {_figure(report['recall'])}: of the pairs reviewers kept, the share the judge kept",
             f"- **F1** {_figure(report['f1'], percent=False)}: precision and recall in one number",
             f"- **accuracy** {_figure(report['accuracy'])}: the share of pairs where judge and reviewers agree",
             f"- **Cohen's kappa** {_figure(report['cohen_kappa'], percent=False)}: agreement beyond chance "
             "(0 is chance, 1 is full agreement)"]
    if report.get("scored_by_both"):
        lines.append(f"- **Spearman** {_figure(report['spearman'], percent=False)}: how the judge's and the "
                     f"reviewers' scores rank the {report['scored_by_both']} pairs both scored")
    annotators = report.get("annotators") or {}
    if annotators:
        lines += ["", "| reviewer | keep | discard |", "|---|---|---|"]
        lines += [f"| {html.escape(str(name))} | {counts.get('keep', 0)} | {counts.get('discard', 0)} |"
                  for name, counts in annotators.items()]
    return "\n".join(lines)


def render_confusion(report: dict) -> pd.DataFrame:
    return pd.DataFrame([{"LLM": llm, "human": human, "pairs": report["confusion"][f"llm_{llm}_human_{human}"]}
                         for llm in ("keep", "discard") for human in ("keep", "discard")], columns=CONFUSION_COLUMNS)


def render_estimates(estimates) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    lines = [f"Reviewed **{estimates.reviewed}** pairs; estimates by {estimates.by.replace('_', ' ')} band with "
             "95% intervals ([how](docs/review.md))."]
    target = f"{estimates.target_precision:.0%}"
    suggested = estimates.suggested
    if suggested is None:
        lines.append(f"No threshold reaches {target} precision with 95% confidence yet: review more pairs or lower "
                     "the target.")
    else:
        p, r = suggested.precision, suggested.recall
        lines.append(f"**Suggested threshold {suggested.threshold:g}** for {target} precision: "
                     f"keeps {suggested.kept:,} of {suggested.population:,} · precision {p.estimate:.1%} "
                     f"({p.low:.1%}–{p.high:.1%}) · recall {r.estimate:.1%} ({r.low:.1%}–{r.high:.1%}) · "
                     f"P(precision ≥ {target}) ≈ {suggested.confidence:.0%}")
    agreement = estimates.agreement
    if agreement.items:
        lines.append(f"Reviewers agree on {agreement.agreement:.0%} of the {agreement.items} pairs both reviewed "
                     f"(Cohen's kappa {agreement.kappa.estimate:.2f}, 95% interval {agreement.kappa.low:.2f}–"
                     f"{agreement.kappa.high:.2f}); decisions per reviewer: "
                     + ", ".join(f"{name} {count}" for name, count in agreement.per_reviewer.items()))
    calibration = estimates.calibration
    calibration_long = pd.concat([
        pd.DataFrame({"x": calibration["low_edge"], "value": calibration[column], "series": label})
        for column, label in (("keep_rate", "human keep rate"), ("low", "95% low"), ("high", "95% high"))
    ], ignore_index=True)
    curve = estimates.curve
    curves_long = pd.concat([
        pd.DataFrame({"x": part["threshold"], "value": part[column], "series": f"{metric}{suffix}"})
        for metric, part in curve.groupby("metric")
        for column, suffix in (("estimate", ""), ("low", " 95% low"), ("high", " 95% high"))
    ], ignore_index=True) if len(curve) else EMPTY_CURVE
    return "\n\n".join(lines), calibration_long, curves_long


# --- Data --------------------------------------------------------------------------------------------------


def open_session(browser_id: str | None, profile: gr.OAuthProfile | None):
    """Page load: the owner is the signed-in user, else this browser's own id (made on its first visit)."""
    if not BROWSER_ID.match(browser_id or ""):
        browser_id = new_browser_id()
    owner = owner_for(profile.username if profile else None, browser_id)
    session = _workspace().session(owner)
    who = (f"Signed in as **{owner.label}**: your runs follow your account." if owner.signed_in else
           "Not signed in: your runs are kept for this browser only.")
    return session, browser_id, who, _run_choices(session), render_argilla_login(), *render_previous(session)


def render_argilla_login() -> str:
    """Where reviewers sign in. The local stack's password is shown only to the machine's own user: never on a
    Space, never when the app listens beyond this machine."""
    url = os.environ.get("ARGILLA_API_URL", "").strip()
    if not url:
        return "No Argilla is configured: set `ARGILLA_API_URL` and `ARGILLA_API_KEY` (`make run` starts one)."
    where = f"Reviewers sign in to Argilla at [{url}]({url})"
    loopback = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1") in ("127.0.0.1", "localhost", "::1")
    login = local.argilla_login() if loopback and not on_space() else None
    if login is None:
        return f"{where} with their own Argilla accounts."
    return (f"{where} as **{login['username']}**, password `{login['password']}` (the local stack's; this app "
            "shows it only on this machine).")


CHOOSE_COLUMNS = ("Choose which column is the **instruction** and which the **response**, then press "
                  "**Load with this mapping**.")


def inspect_upload(session: Session | None, file: str | None, profile: gr.OAuthProfile | None):
    """An upload opens with its columns and real rows: the mapping guessed where that is safe, else asked for."""
    session = _session(session, profile)
    if not file:
        return session, gr.update(), gr.update(), pd.DataFrame(), ""
    try:
        found = session.inspect_upload(file, Path(file).name)
    except SessionError as exc:
        return (session, gr.update(choices=[], value=None), gr.update(choices=[], value=None), pd.DataFrame(),
                f"**Cannot load this data.** {exc}")
    if found.instruction_column is None:
        message = f"`{found.label}`: {len(found.columns)} columns. {CHOOSE_COLUMNS}"
    else:
        message = f"`{found.label}`: {len(found.columns)} columns. Check the mapping, then load."
    return (session, gr.update(choices=found.columns, value=found.instruction_column),
            gr.update(choices=[NO_MAPPING, *found.columns], value=found.generation_column or NO_MAPPING),
            found.head, message)


def render_load_error(error: Exception) -> str:
    message = str(error)
    if getattr(error.__cause__ or error, "missing_columns", None) or "missing column" in message:
        message += f". {CHOOSE_COLUMNS}"  # the app's own hint: the dropdowns above, never a CLI flag
    return f"**Cannot load this data.** {message}"


def render_previous(session: Session):
    """The review that new data replaced, one click away; hidden when there is none."""
    shelved = session.previous
    if shelved is None:
        return gr.update(value="", visible=False), gr.update(visible=False)
    parts = [counted(shelved.pairs, "pair"), f"{shelved.scored} judged"]
    if shelved.overrides:
        parts.append(counted(shelved.overrides, "override"))
    if shelved.reviewed:
        parts.append(f"{shelved.reviewed} pulled decisions")
    label = shelved.label.replace("`", "'")
    return (gr.update(value=f"Your previous review: `{label}`, {', '.join(parts)}. Nothing of it is lost.",
                      visible=True), gr.update(visible=True))


def _loaded(session: Session, load, *args):
    """Every load starts a clean slate: no stale status, selection or detail from the data before. A failed
    load keeps the preview of the rows the user is mapping."""
    try:
        loaded = load(*args)
    except SessionError as exc:
        return session, gr.skip(), render_load_error(exc), "", "", gr.update(), *render_previous(session)
    # The run list changes when a job starts or ends, not on a load: only the choice made before is cleared.
    return session, loaded.preview, render_loaded(loaded), "", "", gr.update(value=None), *render_previous(session)


def load_upload(session: Session | None, instruction_column: str | None, generation_column: str | None,
                profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    return _loaded(session, session.load_upload, instruction_column, generation_column)


def load_guessed_upload(session: Session | None, instruction_column: str | None, generation_column: str | None,
                        profile: gr.OAuthProfile | None):
    """Right after an upload: load at once with a safe guess; with none, wait for the user's mapping."""
    if not instruction_column:
        return (gr.skip(),) * 8
    return load_upload(session, instruction_column, generation_column, profile)


def reopen_previous(session: Session | None, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    try:
        shelved = session.reopen_previous()
    except SessionError as exc:
        return session, gr.skip(), str(exc), "", "", gr.update(), *render_previous(session)
    message = (f"Reopened `{shelved.label.replace('`', chr(39))}`: {counted(shelved.pairs, 'pair')} with their "
               "verdicts, overrides and reviewers' decisions as you left them.")
    return session, session.workbench.frame.head(5), message, "", "", gr.update(), *render_previous(session)


def load_sample(session: Session | None, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    return _loaded(session, session.load_sample)


def load_hub(session: Session | None, dataset_id: str, config: str, split: str, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    return _loaded(session, session.load_hub, dataset_id, config, split)


def load_local(session: Session | None, name: str, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    return _loaded(session, session.load_local, name)


# --- Judge and Generate --------------------------------------------------------------------------------------


def _backend(session: Session, backend: str, model: str, base_url: str, api_key: str, concurrency: float,
             token: gr.OAuthToken | None):
    return session.choose_backend(backend, model, base_url, api_key, _hf_token(token), concurrency)


CANNOT_START = (TemplateError, backends.BackendError, LimitError, SessionError)
KIND_WORDS = {"judge": "the judge", "generate": "the responses", "augment": "the instructions"}
# A page reads a job about once a second, redraws the table only when its visible page changed, and the plots
# and counts on a slower clock: many visitors at once must not starve the event loop that sends the requests.
FOLLOW_EVERY_S = 1.0
TABLE_EVERY_S = 3.0
PLOTS_EVERY_S = 5.0
ETA_AFTER_ROWS, ETA_AFTER_S = 3, 10.0  # an ETA from fewer rows or seconds is a wild guess


TEMPLATE_REASK = "template"
REASK_CHOICES = [("as the template says (1 for the bundled ones)", TEMPLATE_REASK), ("never", "0"),
                 *((f"up to {n} {'time' if n == 1 else 'times'}", str(n)) for n in range(1, MAX_REASK + 1))]


def _reask_setting(choice: str) -> str | None:
    return None if choice == TEMPLATE_REASK else choice


def render_job(job) -> str:
    """What a job is doing, from its first second: starting, waiting for the first reply, rows and rate, the end."""
    progress = job.progress
    done = progress.done if progress is not None else 0
    if job.state == "failed":
        return f"**Stopped by an error.** {job.error}"
    if job.state == "stopped":
        return (f"**Stopped.** {done} of {job.total} rows finished; they are kept: press **Start** again to go on "
                "from there.")
    if job.state == "done" and progress is not None:
        return render_progress(progress, final=True)
    if not done:
        if job.elapsed < 1:
            return f"Starting {KIND_WORDS.get(job.kind, 'the job')}…"
        return f"Waiting for the first reply · {duration(job.elapsed)} · {job.total} rows to go"
    text = render_progress(progress, eta=done >= ETA_AFTER_ROWS and job.elapsed >= ETA_AFTER_S)
    if job.filters is not None:
        text = f"Filters: {job.filters.describe()}. Instructions: {text}"
    return text


async def _follow(session: Session, draw, every_s: float = FOLLOW_EVERY_S):
    """Read the owner's job until it ends: `draw(job, final)` gives what to send, with gr.skip() for what has not
    changed. A closed tab ends only this reader, never the job."""
    job = session.job()
    if job is None:
        return
    while True:
        final = not job.running
        yield draw(job, final)
        if final:
            return
        await job.changed(every_s)
        await asyncio.sleep(max(0.0, every_s - 0.05))  # at most one look a second, however fast rows finish


def _review_drawer(session: Session, filters: Filters, threshold: float, page_number: float = 1):
    """Draws the Review step while a job runs: the status every look, the table when a row on the visible page
    changed, the histogram and counts every few seconds, everything at the end."""
    seen = {"version": -1, "table_at": 0.0, "plots_at": time.monotonic()}

    def draw(job, final: bool):
        now = time.monotonic()
        workbench = session.workbench
        table = info = plot = summary = gr.skip()
        moved = workbench is not None and workbench.version != seen["version"]
        if final or (moved and now - seen["table_at"] >= TABLE_EVERY_S):
            plots_due = final or now - seen["plots_at"] >= PLOTS_EVERY_S
            view = session.review(filters, threshold, page_number, bins=plots_due)
            if final or workbench.changed_since(seen["version"], view.rows.index):
                table, info = render_review_table(view), render_page_info(view)
                seen["table_at"] = now
                if plots_due:
                    plot, summary, seen["plots_at"] = render_histogram(view), render_summary(view), now
            seen["version"] = workbench.version
        return table, info, plot, summary, render_job(job)

    return draw


def _preview_drawer(session: Session):
    seen = {"version": -1}

    def draw(job, final: bool):
        workbench = session.workbench
        preview = gr.skip()
        if workbench is not None and (final or workbench.version != seen["version"]):
            preview, seen["version"] = session.generate_preview(), workbench.version
        return preview, render_job(job)

    return draw


async def _start_and_follow(session: Session, filters: Filters, threshold: float, start):
    """`await start()` starts a judge job in the background; then the Review step follows it to its end."""
    try:
        await start()
    except CANNOT_START as exc:
        yield *render_review(session.review(filters, threshold, 1)), f"**Cannot start.** {exc}"
        return
    async for drawn in _follow(session, _review_drawer(session, filters, threshold)):
        yield drawn


async def judge(session: Session | None, template_name: str, custom_text: str, reask: str, backend: str,
                model: str, base_url: str, api_key: str, concurrency: float, threshold: float, min_score: float,
                max_score: float, statuses: list[str], text: str, sort: str, profile: gr.OAuthProfile | None,
                token: gr.OAuthToken | None):
    """Start the judge in the background, then read it. The job goes on if the page closes."""
    session = _session(session, profile)

    async def start() -> None:
        template = session.resolve_template(template_name, custom_text)
        # A name to resolve (the public-endpoint check) must not hold up every visitor's event loop.
        choice = await asyncio.to_thread(_backend, session, backend, model, base_url, api_key, concurrency, token)
        session.start_judge(template, choice, reask=_reask_setting(reask))

    async for drawn in _start_and_follow(session, Filters(min_score, max_score, tuple(statuses or ()), text, sort),
                                         threshold, start):
        yield drawn


async def rejudge(session: Session | None, reask: str, backend: str, model: str, base_url: str, api_key: str,
                  concurrency: float, threshold: float, min_score: float, max_score: float, statuses: list[str],
                  text: str, sort: str, profile: gr.OAuthProfile | None, token: gr.OAuthToken | None):
    """After a pull: the pairs no reviewer decided, judged again with the reviewers' overrulings as examples."""
    session = _session(session, profile)

    started = False

    async def start() -> None:
        nonlocal started
        choice = await asyncio.to_thread(_backend, session, backend, model, base_url, api_key, concurrency, token)
        session.start_rejudge(choice, reask=_reask_setting(reask))
        started = True

    async for *drawn, status in _start_and_follow(
            session, Filters(min_score, max_score, tuple(statuses or ()), text, sort), threshold, start):
        examples = session.workbench.examples_used if started else 0  # set once the first row is in
        yield *drawn, (f"With {counted(examples, 'reviewed example')} ahead of the template: {status}"
                       if examples else status)


async def follow_judge(session: Session | None, threshold: float, min_score: float, max_score: float,
                       statuses: list[str], text: str, sort: str, page_number: float):
    """A page opened while its owner's job runs (a reopened tab, another device) follows it to the end."""
    if session is None or session.job() is None:
        yield (gr.skip(),) * 5
        return
    filters = Filters(min_score, max_score, tuple(statuses or ()), text, sort)
    async for drawn in _follow(session, _review_drawer(session, filters, threshold, page_number)):
        yield drawn


def stop_job(session: Session | None) -> str:
    if session is None or not session.stop_job():
        return gr.skip()
    return "Stopping…"


async def generate(session: Session | None, backend: str, model: str, base_url: str, api_key: str,
                   concurrency: float, profile: gr.OAuthProfile | None, token: gr.OAuthToken | None):
    session = _session(session, profile)
    try:
        choice = await asyncio.to_thread(_backend, session, backend, model, base_url, api_key, concurrency, token)
        session.start_generate(choice)
    except CANNOT_START as exc:
        yield session.generate_preview(), f"**Cannot start.** {exc}"
        return
    async for drawn in _follow(session, _preview_drawer(session)):
        yield drawn


async def augment(session: Session | None, files: list[str] | None, seeds: str | None, min_chars: float,
                  max_chars: float, near_duplicate: float, backend: str, model: str, base_url: str, api_key: str,
                  concurrency: float, profile: gr.OAuthProfile | None, token: gr.OAuthToken | None):
    session = _session(session, profile)
    try:
        filters = FilterSettings(int(min_chars), int(max_chars), near_duplicate_threshold=float(near_duplicate))
        choice = await asyncio.to_thread(_backend, session, backend, model, base_url, api_key, concurrency, token)
        uploads = [(path, Path(path).name) for path in files or []]
        session.start_augment(uploads, seeds, filters, choice)
    except (*CANNOT_START, ValueError) as exc:
        yield session, pd.DataFrame(), f"**Cannot start.** {exc}"
        return
    async for preview, status in _follow(session, _preview_drawer(session)):
        yield session, preview, status


def _run_choices(session: Session) -> list[tuple[str, str]]:
    return [(render_run(run), run.run_id) for run in session.runs()]


def list_runs(session: Session | None, profile: gr.OAuthProfile | None):
    return gr.update(choices=_run_choices(_session(session, profile)), value=None)


def resume_run(session: Session | None, run_id: str | None, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    unchanged = (gr.update(),) * 4
    try:
        resumed = session.resume(run_id)
    except NoSuchRun as exc:
        return session, pd.DataFrame(), str(exc), *unchanged
    except SessionError as exc:
        return session, pd.DataFrame(), f"**Cannot load this data.** {exc}", *unchanged
    return (session, resumed.loaded.preview,
            render_loaded(resumed.loaded) + " Settings restored: press **Start** to resume.",
            gr.update(value=resumed.template), gr.update(value=resumed.backend), gr.update(value=resumed.model),
            gr.update(value=resumed.base_url if resumed.backend == backends.CUSTOM else ""))


def delete_my_data(session: Session | None, profile: gr.OAuthProfile | None):
    session = _session(session, profile)
    runs = session.delete_my_data()
    return session, f"Deleted your data: {runs} runs, with your uploads and exports.", gr.update(choices=[], value=None)


def preview_prompt(session: Session | None, name: str, custom_text: str) -> str:
    try:
        prompt = session.preview_prompt(name, custom_text) if session is not None else None
    except TemplateError as exc:
        return f"Template problem: {exc}"
    return "Load data to see the prompt for its first row." if prompt is None else prompt


def template_defaults(name: str):
    """A judge template brings its own scale: the filters, the measure and the threshold follow it."""
    if name == CUSTOM_TEMPLATE:
        return gr.update(), gr.update(), gr.update(), gr.update()
    template = load_template(name)
    return (gr.update(value=template.score_min), gr.update(value=template.score_max),
            gr.update(value=default_measure(template)),
            gr.update(value=default_threshold(template), minimum=template.score_min, maximum=template.score_max))


def template_source(name: str) -> str:
    return load_template(name if name != CUSTOM_TEMPLATE else default_template()).source


# --- Review ------------------------------------------------------------------------------------------------


def refresh_review(session: Session | None, threshold, min_score, max_score, statuses, text, sort, page_number):
    view = (session or _workspace().session(owner_for(None, None))).review(
        Filters(min_score, max_score, tuple(statuses or ()), text, sort), threshold, page_number)
    return render_review(view)


def set_keep_by(session: Session | None, keep_by: str, *filters):
    if session is not None:
        session.set_keep_by(keep_by)
    return refresh_review(session, *filters)


def threshold_for_measure(session: Session | None, keep_by: str, threshold: float):
    """An aligned score is a probability (keep at 0.5); the other measures live on the judge's scale."""
    template = session.template if session is not None else load_template(default_template())
    if keep_by == "aligned_score":
        return gr.update(minimum=0, maximum=1, value=ALIGNED_THRESHOLD, step=0.05)
    if not template.score_min <= float(threshold) <= template.score_max:
        return gr.update(minimum=template.score_min, maximum=template.score_max, step=0.1,
                         value=default_threshold(template, keep_by))
    return gr.update(minimum=template.score_min, maximum=template.score_max, step=0.1)


def align_judge(session: Session | None):
    """The judge learns from its reviewers: calibrated on their decisions (no new calls), as a new measure."""
    try:
        if session is None:
            raise SessionError("Pull reviewers' decisions first.")
        report = session.align()
    except SessionError as exc:
        return f"**Cannot align yet.** {exc}", gr.update()
    return ("```\n" + report.describe() + "\n```\nKeep by **aligned score** to use it: the probability that a "
            "reviewer keeps the pair, kept at 0.5.", gr.update(value="aligned_score"))


def select_row(session: Session | None, table: pd.DataFrame, event: gr.SelectData):
    if session is None or table is None or table.empty:
        return "", *_override_buttons(False)
    session.select(int(table.iloc[event.index[0]]["row"]))
    detail = show_selected(session)
    return detail, *_override_buttons(session.selected_row is not None)


def show_selected(session: Session | None) -> str:
    """The selected record again, under the measure and threshold now in force."""
    if session is None:
        return ""
    return render_record(session.select(session.selected_row), session.keep_by, session.threshold)


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
        return *view, show_selected(session)

    return handle


# --- Argilla and Export --------------------------------------------------------------------------------------


def push_to_argilla(session: Session | None, dataset: str, workspace: str, threshold: float,
                    progress=gr.Progress()):
    if session is None:
        return "Judge some data first."
    try:
        reports = session.argilla_push(dataset, workspace, threshold, on_progress=lambda n, total: progress(
            n / max(total, 1), desc=f"{n}/{total} records"))
    except SessionError as exc:
        return f"**Push failed.** {exc}"
    return render_pushed(reports, planned=session.planned_review is not None)


def pull_from_argilla(session: Session | None, dataset: str, workspace: str, policy: str, threshold: float):
    nothing = pd.DataFrame(columns=CONFUSION_COLUMNS), pd.DataFrame()
    if session is None:
        return "Judge some data first.", "", *nothing
    try:
        pulled = session.argilla_pull(dataset, workspace, policy, threshold)
    except SessionError as exc:
        return f"**Pull failed.** {exc}", "", *nothing
    return (render_pulled(pulled.summary), render_agreement(pulled.report), render_confusion(pulled.report),
            pulled.disagreements.rename(columns=HEADERS))


def plan_review(session: Session | None, budget: float, seed: float, overlap_share: float, threshold: float):
    try:
        if session is None:
            raise SessionError("Judge some data first: the plan is stratified by the judge's scores.")
        return render_plan(session.review_plan(budget, threshold, seed, overlap_share))
    except SessionError as exc:
        return str(exc), pd.DataFrame()


def review_estimates(session: Session | None, target_precision: float):
    try:
        if session is None:
            raise SessionError("Pull reviewers' decisions first.")
        estimates = session.review_estimate(target_precision)
    except SessionError as exc:
        return str(exc), EMPTY_CURVE, EMPTY_CURVE, None, gr.update(interactive=False)
    text, calibration, curves = render_estimates(estimates)
    suggested = estimates.suggested.threshold if estimates.suggested is not None else None
    return text, calibration, curves, suggested, gr.update(interactive=suggested is not None)


def adopt_threshold(session: Session | None, suggested: float | None):
    """One click: the suggested threshold (and its measure) become the Review step's."""
    if session is None or suggested is None:
        return gr.update(), gr.update()
    return gr.update(value=suggested), gr.update(value=session.measure())


def export_file(session: Session | None, fmt: str, threshold: float):
    try:
        if session is None:
            raise SessionError("Nothing to export yet.")
        exported = session.export(fmt, threshold)
    except SessionError as exc:
        return None, str(exc)
    return exported.path, f"**{exported.rows}** of {exported.total} pairs in `{Path(exported.path).name}`."


def export_to_hub(session: Session | None, repo: str, threshold: float, token: gr.OAuthToken | None) -> str:
    try:
        if session is None:
            raise SessionError("Judge some data first.")
        rows, url = session.export_to_hub(repo, threshold, _hf_token(token))
    except SessionError as exc:
        return str(exc)
    return f"Pushed {rows} pairs to {url}"


# --- Layout: one builder per step ----------------------------------------------------------------------------


def _header(page: SimpleNamespace) -> None:
    with gr.Row():
        gr.Markdown("# backtrans\nCurate instruction-tuning data with **instruction backtranslation** "
                    "(Humpback): an LLM judge scores each (instruction, response) pair with the paper's 5-point "
                    "prompt, you review its verdicts, and export the pairs worth training on.")
        with gr.Column(scale=0, min_width=220):
            if oauth_available():
                gr.LoginButton(elem_id="login")
            page.who = gr.Markdown(elem_id="who")
            page.delete_data = gr.Button("Delete my data", size="sm", variant="stop", elem_id="delete-my-data")
    page.session = gr.State(None)
    page.browser_id = gr.BrowserState(None, storage_key="backtrans-owner", secret=WORKSPACE.browser_secret())


def _data_step(page: SimpleNamespace) -> None:
    with gr.Row():
        page.upload = gr.File(label="Upload JSONL, CSV or Parquet", elem_id="data-upload", file_types=list(SUFFIXES))
        with gr.Column():
            page.sample = gr.Button("Use the bundled sample (30 pairs)", elem_id="data-sample")
            page.hub_id = gr.Textbox(label="…or a Hugging Face dataset", placeholder="OWNER/NAME",
                                     elem_id="data-hub-id")
            with gr.Row():
                page.hub_config = gr.Textbox(label="Config", elem_id="data-hub-config")
                page.hub_split = gr.Textbox(label="Split", value="train", elem_id="data-hub-split")
            page.hub_load = gr.Button("Load from the Hub", elem_id="data-hub-load")
            with gr.Row(visible=WORKSPACE.local_files_dir is not None):
                page.local_name = gr.Textbox(label=f"…or a file in {WORKSPACE.local_files_dir}",
                                             elem_id="data-local-name")
                page.local_load = gr.Button("Load this file", elem_id="data-local-load")
    with gr.Row():
        page.instruction_column = gr.Dropdown(label="Instruction column", choices=[], elem_id="map-instruction")
        page.generation_column = gr.Dropdown(label="Response column", choices=[], elem_id="map-generation")
        page.apply_mapping = gr.Button("Load with this mapping", elem_id="data-apply-mapping")
    page.data_status = gr.Markdown(elem_id="data-status")
    with gr.Row():
        page.previous_review = gr.Markdown(visible=False, elem_id="previous-review")
        page.reopen = gr.Button("Reopen it", visible=False, size="sm", elem_id="reopen-previous")
    page.data_preview = gr.Dataframe(pd.DataFrame(columns=["instruction", "generation"]), label="First rows",
                                     interactive=False, wrap=True, max_height=260, elem_id="data-preview")


def _generate_step(page: SimpleNamespace) -> None:
    gr.Markdown("**Self-augmentation:** turn unlabelled documents into (instruction, response) candidates. "
                "Documents are cut at their headers, filtered, and the model writes the instruction each "
                "segment answers, prompted with a few seed pairs. The model settings are those of step 3.")
    with gr.Row():
        page.documents = gr.File(label="Documents (.txt, .md, .html, or JSONL/Parquet with `text`)",
                                 file_count="multiple", elem_id="augment-documents")
        page.seeds = gr.File(label="Seed (instruction, output) pairs, JSONL (optional)", elem_id="augment-seeds")
    defaults = FilterSettings()
    with gr.Row():
        page.min_chars = gr.Number(defaults.min_chars, label="Min segment characters", elem_id="augment-min-chars")
        page.max_chars = gr.Number(defaults.max_chars, label="Max segment characters", elem_id="augment-max-chars")
        page.near_duplicate = gr.Slider(0.5, 1.0, value=defaults.near_duplicate_threshold, step=0.05,
                                        label="Near-duplicate similarity", elem_id="augment-near-duplicate")
    page.augment_start = gr.Button("Write instructions for the documents", elem_id="augment-start")
    gr.Markdown("**Instruction-only data:** write a response for every instruction that has none.")
    page.generate_start = gr.Button("Generate missing responses", elem_id="generate-start")
    page.generate_stop = gr.Button("Stop", variant="stop", elem_id="generate-stop")
    page.generate_status = gr.Markdown(elem_id="generate-status")
    page.generate_preview = gr.Dataframe(pd.DataFrame(columns=["instruction", "generation"]), interactive=False,
                                         wrap=True, max_height=260, elem_id="generate-preview")


def _judge_step(page: SimpleNamespace) -> None:
    judge_templates = [t.name for t in list_templates("judge")]
    chosen = default_template()
    page.template_info = load_template(chosen if chosen in judge_templates else judge_templates[0])
    default_backend = backends.SERVER if backends.server_key_shared() else backends.HUGGINGFACE
    server_model = os.environ.get("BACKTRANS_MODEL", "")
    with gr.Row():
        page.template = gr.Dropdown([*judge_templates, CUSTOM_TEMPLATE], value=page.template_info.name,
                                    label="Judge template", elem_id="judge-template")
        page.backend = gr.Dropdown([(label, key) for key, label in backends.PRESETS.items()],
                                   value=default_backend, label="Backend", elem_id="judge-backend")
        page.model = gr.Dropdown([m for m in (server_model, *backends.HF_ROUTER_MODELS) if m],
                                 value=server_model if default_backend == backends.SERVER else
                                 backends.HF_ROUTER_MODELS[0], allow_custom_value=True, label="Model",
                                 elem_id="judge-model")
        page.concurrency = gr.Slider(1, WORKSPACE.limits.concurrency or 256, value=16, step=1,
                                     label="Concurrency", elem_id="judge-concurrency")
    with gr.Row():
        page.base_url = gr.Textbox(label="Base URL (custom backend)", placeholder="https://…/v1",
                                   elem_id="judge-base-url")
        page.api_key = gr.Textbox(label="API key (custom backend; kept in this session only)", type="password",
                                  elem_id="judge-api-key")
    with gr.Accordion("Template and prompt preview", open=False):
        page.custom_template = gr.Code(page.template_info.source, language="jinja2",
                                       label="Custom template (choose 'custom' above)",
                                       elem_id="judge-custom-template")
        page.prompt_preview = gr.Textbox(label="The prompt for the first row", lines=8, interactive=False,
                                         elem_id="judge-prompt-preview")
        page.reask = gr.Dropdown(REASK_CHOICES, value=TEMPLATE_REASK, label="Ask again after a reply with no score",
                                 elem_id="judge-reask")
    with gr.Row():
        page.start = gr.Button("Start", variant="primary", elem_id="judge-start")
        page.stop = gr.Button("Stop", variant="stop", elem_id="judge-stop")
    page.judge_status = gr.Markdown(elem_id="judge-status")
    with gr.Row():
        page.runs = gr.Dropdown(label="Resume one of your earlier runs", choices=[], elem_id="judge-runs")
        page.refresh_runs = gr.Button("Refresh runs", elem_id="judge-refresh-runs")
        page.resume = gr.Button("Resume this run", elem_id="judge-resume")


def _review_step(page: SimpleNamespace) -> None:
    template = page.template_info
    with gr.Row():
        page.threshold = gr.Slider(template.score_min, template.score_max, value=default_threshold(template),
                                   step=0.1, label="Keep pairs scored at least", elem_id="threshold")
        page.keep_by = gr.Radio([("score", "score"), ("expected score", "expected_score"),
                                 ("aligned score", "aligned_score")],
                                value=default_measure(template), label="Keep by", elem_id="keep-by")
        page.curation = gr.Markdown(elem_id="threshold-counts")
    with gr.Row():
        page.min_score = gr.Number(template.score_min, label="Min score", elem_id="filter-min")
        page.max_score = gr.Number(template.score_max, label="Max score", elem_id="filter-max")
        page.statuses = gr.CheckboxGroup(list(STATUSES), value=list(STATUSES), label="Status",
                                         elem_id="filter-status")
        page.search = gr.Textbox(label="Search text", elem_id="filter-text")
        page.sort = gr.Dropdown(list(SORTS), value="input order", label="Sort", elem_id="filter-sort")
    with gr.Row():
        page.page_number = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="page-number")
        page.page_info = gr.Markdown(elem_id="page-info")
    page.results = gr.Dataframe(pd.DataFrame(columns=[HEADERS.get(c, c) for c in REVIEW_COLUMNS]),
                                label="Pairs with the judge's verdict, score and reason (click a row for details)",
                                interactive=False, wrap=True, max_height=900, elem_id="results-table")
    with gr.Row():
        with gr.Column(scale=2):
            page.detail = gr.HTML(elem_id="record-detail")
            with gr.Row():
                page.keep_button = gr.Button("Keep", elem_id="override-keep", interactive=False)
                page.discard_button = gr.Button("Discard", elem_id="override-discard", interactive=False)
                page.clear_button = gr.Button("Use the judge's verdict", elem_id="override-clear", interactive=False)
        page.scores_plot = gr.BarPlot(x="bin", y="pairs", color="side", sort=None, elem_id="score-histogram",
                                      title="Pairs by measure: green is kept",
                                      color_map={"kept": "#2e7d32", "discarded": "#9e9e9e"})
    with gr.Accordion("Calibrated threshold (after pulling reviewers' decisions)", open=False, elem_id="calibration"):
        with gr.Row():
            page.target_precision = gr.Slider(0.5, 0.99, value=0.9, step=0.01, label="Target precision",
                                              elem_id="target-precision")
            page.adopt = gr.Button("Adopt the suggested threshold", interactive=False, elem_id="adopt-threshold")
        page.suggested_threshold = gr.State(None)
        page.estimates_text = gr.Markdown(elem_id="review-estimates")
        with gr.Row():
            page.align = gr.Button("Align the judge with the reviewers", elem_id="align-judge")
            page.rejudge = gr.Button("Judge the unreviewed pairs again, with the reviewers' overrulings as examples",
                                     elem_id="rejudge")
        page.align_report = gr.Markdown(elem_id="align-report")
        with gr.Row():
            page.calibration_plot = gr.LinePlot(x="x", y="value", color="series", elem_id="calibration-curve",
                                                title="Human keep rate by band of the judge's measure",
                                                x_title="band (lower edge)", y_title="keep rate")
            page.curves_plot = gr.LinePlot(x="x", y="value", color="series", elem_id="precision-recall",
                                           title="Precision and recall against the threshold (95% band)",
                                           x_title="threshold", y_title="")


def _argilla_step(page: SimpleNamespace) -> None:
    from backtrans import argilla

    gr.Markdown("Send the pairs to [Argilla](https://argilla.io) for review, with the judge's verdicts as "
                "suggestions; pull the reviewers' decisions back. Uses `ARGILLA_API_URL` and `ARGILLA_API_KEY`.")
    with gr.Row():
        page.argilla_dataset = gr.Textbox("backtrans-review", label="Dataset", elem_id="argilla-dataset")
        page.argilla_workspace = gr.Textbox(argilla.DEFAULT_WORKSPACE, label="Workspace",
                                            elem_id="argilla-workspace")
        page.policy = gr.Dropdown(list(argilla.POLICIES), value="majority", label="Several reviewers",
                                  elem_id="argilla-policy")
    with gr.Accordion("Plan review: spend a review budget well", open=False, elem_id="plan-review"):
        gr.Markdown("Pick at most *budget* pairs for reviewers, stratified across bands of the judge's "
                    "measure (plus a share near the threshold), so precision and recall of any threshold "
                    "can be estimated with honest intervals. Once planned, **Push** sends the plan.")
        with gr.Row():
            page.budget = gr.Number(300, label="Review budget (pairs)", precision=0, minimum=1,
                                    elem_id="review-budget")
            page.plan_seed = gr.Number(0, label="Seed", precision=0, elem_id="review-seed")
            page.overlap_share = gr.Slider(0, 0.5, value=0.1, step=0.05, label="Share for two reviewers",
                                           elem_id="review-overlap")
            page.plan_button = gr.Button("Plan review", elem_id="review-plan")
        page.plan_summary = gr.Markdown(elem_id="review-plan-summary")
        page.plan_makeup = gr.Dataframe(pd.DataFrame(columns=["band", "pairs", "to review", "inclusion probability"]),
                                        interactive=False, elem_id="review-plan-makeup")
    with gr.Row():
        page.push_button = gr.Button("Push to Argilla", elem_id="argilla-push")
        page.pull_button = gr.Button("Pull decisions", elem_id="argilla-pull")
    page.argilla_status = gr.Markdown(elem_id="argilla-status")
    page.argilla_login = gr.Markdown(elem_id="argilla-login")
    page.agreement_report = gr.Markdown(elem_id="argilla-agreement")
    page.confusion_plot = gr.BarPlot(x="LLM", y="pairs", color="human", title="Confusion: LLM keep vs human keep",
                                     elem_id="argilla-confusion")
    page.disagreements = gr.Dataframe(
        pd.DataFrame(columns=["instruction", "generation", "score", "expected score", "reason", "human keep",
                              "human score", "note", "reviewer"]),
        label="Where humans and the LLM disagree", interactive=False, wrap=True, max_height=600,
        column_widths=["22%", "22%", "70px", "90px", "16%", "80px", "80px", "12%", "90px"],
        elem_id="argilla-disagreements")


def _export_step(page: SimpleNamespace) -> None:
    with gr.Row():
        page.export_format = gr.Dropdown(list(EXPORT_FORMATS), value="jsonl", label="Format",
                                         info=FORMAT_HINTS["jsonl"], elem_id="export-format")
        page.export_download = gr.DownloadButton("Download the curated set", elem_id="export-download")
    page.export_count = gr.Markdown(elem_id="export-count")
    with gr.Row():
        page.hub_repo = gr.Textbox(label="Push the curated set to your Hub dataset repo", placeholder="OWNER/NAME",
                                   elem_id="export-hub-repo")
        page.hub_push = gr.Button("Push to the Hub", elem_id="export-hub-push")
    page.export_status = gr.Markdown(elem_id="export-status")


def _wire(demo: gr.Blocks, p: SimpleNamespace) -> None:
    filters = [p.threshold, p.min_score, p.max_score, p.statuses, p.search, p.sort, p.page_number]
    review_outputs = [p.results, p.page_info, p.scores_plot, p.curation]
    override_buttons = [p.keep_button, p.discard_button, p.clear_button]
    loaded = [p.session, p.data_preview, p.data_status, p.judge_status, p.generate_status, p.runs, p.previous_review,
              p.reopen]

    opened = demo.load(open_session, [p.browser_id], [p.session, p.browser_id, p.who, p.runs, p.argilla_login,
                                                      p.previous_review, p.reopen], api_name=False)
    # A reopened page shows its owner's rows, and follows a job still running.
    opened.then(refresh_review, [p.session, *filters], review_outputs, api_name=False).then(
        follow_judge, [p.session, *filters], [*review_outputs, p.judge_status], api_name=False,
        concurrency_limit=None)

    def refresh_export(event):
        """The download button always holds the current curated set (a DownloadButton cannot build on click)."""
        return event.then(export_file, [p.session, p.export_format, p.threshold], [p.export_download, p.export_count],
                          api_name=False)

    def after_load(event):
        refresh_export(
            event.then(refresh_review, [p.session, *filters], review_outputs, api_name=False)
            .then(clear_selection, p.session, [p.detail, *override_buttons], api_name=False)
            .then(preview_prompt, [p.session, p.template, p.custom_template], p.prompt_preview, api_name=False))

    # Data: most files need no mapping, so an upload loads at once with the guess; the button reloads with another.
    inspected = p.upload.upload(inspect_upload, [p.session, p.upload],
                                [p.session, p.instruction_column, p.generation_column, p.data_preview, p.data_status],
                                api_name="inspect_upload")
    mapping = [p.session, p.instruction_column, p.generation_column]
    after_load(inspected.success(load_guessed_upload, mapping, loaded, api_name=False))
    after_load(p.reopen.click(reopen_previous, p.session, loaded, api_name="reopen_previous"))
    after_load(p.apply_mapping.click(load_upload, mapping, loaded, api_name="load_upload"))
    after_load(p.sample.click(load_sample, p.session, loaded, api_name="load_sample"))
    after_load(p.hub_load.click(load_hub, [p.session, p.hub_id, p.hub_config, p.hub_split], loaded,
                                api_name="load_hub"))
    after_load(p.local_load.click(load_local, [p.session, p.local_name], loaded, api_name="load_local"))

    # Generate
    llm_inputs = [p.backend, p.model, p.base_url, p.api_key, p.concurrency]
    # A job's reader mostly sleeps: it holds no worker, so readers never queue behind each other.
    generating = p.generate_start.click(generate, [p.session, *llm_inputs], [p.generate_preview, p.generate_status],
                                        api_name="generate", show_progress_on=[p.generate_status],
                                        concurrency_limit=None)
    augmenting = p.augment_start.click(augment, [p.session, p.documents, p.seeds, p.min_chars, p.max_chars,
                                                 p.near_duplicate, *llm_inputs],
                                       [p.session, p.generate_preview, p.generate_status], api_name="augment",
                                       show_progress_on=[p.generate_status], concurrency_limit=None)
    p.generate_stop.click(stop_job, p.session, p.generate_status, api_name="stop_generate")
    after_load(generating)
    after_load(augmenting)

    # Judge
    p.template.change(lambda name: gr.update(value=template_source(name)) if name != CUSTOM_TEMPLATE
                      else gr.update(), p.template, p.custom_template, api_name=False)
    p.template.change(template_defaults, p.template, [p.min_score, p.max_score, p.keep_by, p.threshold],
                      api_name=False)
    for trigger in (p.template.change, p.custom_template.change):
        trigger(preview_prompt, [p.session, p.template, p.custom_template], p.prompt_preview, api_name=False)
    judging = p.start.click(judge, [p.session, p.template, p.custom_template, p.reask, *llm_inputs, *filters[:-1]],
                            [*review_outputs, p.judge_status], api_name="judge", show_progress_on=[p.judge_status],
                            concurrency_limit=None)
    p.stop.click(stop_job, p.session, p.judge_status, api_name="stop")
    refresh_export(judging)
    p.refresh_runs.click(list_runs, p.session, p.runs, api_name="list_runs")
    after_load(p.resume.click(resume_run, [p.session, p.runs],
                              [p.session, p.data_preview, p.data_status, p.template, p.backend, p.model, p.base_url],
                              api_name="resume_run"))
    p.delete_data.click(delete_my_data, p.session, [p.session, p.data_status, p.runs], api_name="delete_my_data")

    # Review
    for control in filters:  # the record on show follows the threshold, as the table does
        control.change(refresh_review, [p.session, *filters], review_outputs, api_name=False).then(
            show_selected, p.session, p.detail, api_name=False)
    keep_by_changed = p.keep_by.change(threshold_for_measure, [p.session, p.keep_by, p.threshold], p.threshold,
                                       api_name=False).then(set_keep_by, [p.session, p.keep_by, *filters],
                                                            review_outputs, api_name=False)
    refresh_export(keep_by_changed)
    keep_by_changed.then(show_selected, p.session, p.detail, api_name=False)
    for control in (p.threshold, p.export_format):
        control.change(export_file, [p.session, p.export_format, p.threshold], [p.export_download, p.export_count],
                       api_name=False)
    p.results.select(select_row, [p.session, p.results], [p.detail, *override_buttons], api_name=False)
    for button, decision in ((p.keep_button, True), (p.discard_button, False), (p.clear_button, None)):
        refresh_export(button.click(overrider(decision), [p.session, *filters], [*review_outputs, p.detail],
                                    api_name=False))

    # Argilla
    p.push_button.click(push_to_argilla, [p.session, p.argilla_dataset, p.argilla_workspace, p.threshold],
                        p.argilla_status, api_name="argilla_push")
    pulled = p.pull_button.click(pull_from_argilla, [p.session, p.argilla_dataset, p.argilla_workspace, p.policy,
                                                     p.threshold],
                                 [p.argilla_status, p.agreement_report, p.confusion_plot, p.disagreements],
                                 api_name="argilla_pull")
    refresh_export(pulled.then(refresh_review, [p.session, *filters], review_outputs, api_name=False))
    estimate_outputs = [p.estimates_text, p.calibration_plot, p.curves_plot, p.suggested_threshold, p.adopt]
    pulled.then(review_estimates, [p.session, p.target_precision], estimate_outputs, api_name=False)
    p.target_precision.change(review_estimates, [p.session, p.target_precision], estimate_outputs,
                              api_name="review_estimates")
    p.align.click(align_judge, p.session, [p.align_report, p.keep_by], api_name="align_judge")
    refresh_export(p.rejudge.click(rejudge, [p.session, p.reask, *llm_inputs, *filters[:-1]],
                                   [*review_outputs, p.align_report], api_name="rejudge", concurrency_limit=None))
    p.adopt.click(adopt_threshold, [p.session, p.suggested_threshold], [p.threshold, p.keep_by], api_name=False)
    p.plan_button.click(plan_review, [p.session, p.budget, p.plan_seed, p.overlap_share, p.threshold],
                        [p.plan_summary, p.plan_makeup], api_name="plan_review")

    # Export
    p.export_format.change(lambda fmt: gr.update(info=FORMAT_HINTS.get(fmt, "")), p.export_format, p.export_format,
                           api_name=False)
    p.hub_push.click(export_to_hub, [p.session, p.hub_repo, p.threshold], p.export_status, api_name="export_hub")


def create_app(workspace: Workspace | None = None) -> gr.Blocks:
    global WORKSPACE
    WORKSPACE = workspace or _workspace()
    WORKSPACE.data_dir.mkdir(parents=True, exist_ok=True)
    page = SimpleNamespace()
    with _LeanBlocks(title="backtrans") as demo:
        _header(page)
        with gr.Tab("1 · Data"):
            _data_step(page)
        with gr.Tab("2 · Generate"):
            _generate_step(page)
        with gr.Tab("3 · Judge"):
            _judge_step(page)
        with gr.Tab("4 · Review"):
            _review_step(page)
        with gr.Tab("5 · Argilla"):
            _argilla_step(page)
        with gr.Tab("6 · Export"):
            _export_step(page)
        _wire(demo, page)
    return demo


class _LeanSessionState(gr.state_holder.SessionState):
    """A visitor's Gradio session that builds a block's config only when a deep link asks for it.

    Gradio keeps, for each session, the config of every block (about 150 here, each made through
    inspect.signature): all of them when the session starts, and again for each input and output of every event.
    Only a deep link reads them. With many visitors at once that bookkeeping was the largest single cost of the
    app's CPU (docs/benchmarks.md). Here the values are kept as they come and a config is made when read, from
    the same block and value, so a deep link sees what it saw before (tests/test_app.py compares the two)."""

    def __init__(self, blocks) -> None:
        super().__init__(SimpleNamespace(default_config=blocks.default_config, blocks={}))
        self._config_ids = dict.fromkeys(blocks.blocks)
        self._values: dict[int, object] = {}

    def __setitem__(self, key: int, value) -> None:
        block = self.blocks_config.blocks.get(key)
        if isinstance(block, gr.State):
            self._state_ttl[key] = (block.time_to_live, datetime.datetime.now())
            self.state_data[key] = value
        else:
            self.blocks_config.blocks[key] = value
        if block:
            self._stale(key)

    def _stale(self, key: int) -> None:
        self.config_values.pop(key, None)
        self._values.pop(key, None)
        self._config_ids[key] = None

    def _update_config(self, key: int) -> None:
        if self[key] is not None:
            self._stale(key)

    def _update_value_in_config(self, key: int, value) -> None:
        self._config_ids[key] = None
        self._values[key] = value

    @property
    def components(self):
        for key in self._config_ids:
            block = self.blocks_config.blocks.get(key)
            if key not in self.config_values and block is not None:
                self.config_values[key] = self.blocks_config.config_for_block(key, [], block)
            if key in self._values and "props" in self.config_values.get(key, {}):
                self.config_values[key]["props"]["value"] = self._values.pop(key)
        return super().components


class _LeanBlocks(gr.Blocks):
    """Blocks whose skipped outputs cost nothing: Gradio builds a new component for every gr.skip() an event
    returns, on every yield, only to send `{"__type__": "update"}`. A job's page yields the status every second
    and skips the table, plots and counts most of the time; here only the outputs that changed are processed,
    and what reaches the page is the same (tests/test_app.py compares the two)."""

    async def postprocess_data(self, block_fn, predictions, state):
        outputs = list(block_fn.outputs)
        if block_fn.batch or len(outputs) < 2 or not isinstance(predictions, (list, tuple)) \
                or len(predictions) != len(outputs):
            return await super().postprocess_data(block_fn, predictions, state)
        changed = [i for i, value in enumerate(predictions) if not _skipped(value)]
        if len(changed) == len(outputs):
            return await super().postprocess_data(block_fn, predictions, state)
        done = [None if block.stateful else gr.skip() for block in outputs]  # what Gradio sends for each
        if changed:
            part = copy.copy(block_fn)
            part.outputs = [outputs[i] for i in changed]
            values = [predictions[i] for i in changed]
            processed = await super().postprocess_data(part, values if len(changed) > 1 else values[0], state)
            for i, value in zip(changed, processed, strict=True):
                done[i] = value
        return done


SKIP = gr.skip()


def _skipped(value: object) -> bool:
    return isinstance(value, dict) and value == SKIP


def lean_sessions() -> None:
    """New Gradio sessions of this process start lean (_LeanSessionState)."""
    gr.state_holder.SessionState = _LeanSessionState


QUEUE_POLL_S = 0.05
# Gradio runs at most `max_threads` events at once (40 by default), and a page following its job holds one for the
# job's length: with more visitors than that, the next visitor's upload waited behind others' progress bars.
QUEUE_SLOTS = 256


def main() -> None:
    # Gradio recomputes its queue's analytics summary (a pandas group-by over the last 10,000 events) after every
    # event by default: with many visitors that costs more than the work. It only feeds a monitoring view.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "500")
    workspace = _workspace()
    workspace.data_dir.mkdir(parents=True, exist_ok=True)
    workspace.expire()
    lean_sessions()
    demo = create_app(workspace)
    # What startup made (Gradio, pandas, the page) lives as long as the process: frozen, the collector stops
    # walking it at every full collection, which with many visitors at once was ~10% of the app's CPU.
    gc.collect()
    gc.freeze()
    # Each event may run for many users at once; one visitor's jobs are capped by the session's job gate,
    # so a long job never queues another visitor's short one behind it.
    demo.queue(default_concurrency_limit=32, max_size=QUEUE_SLOTS)
    # Gradio's queue looks for new events every millisecond when it has a free slot: 5% of a core while nobody
    # is there, and a busier event loop when many are. 50 ms is below what a person notices (idle: 12 ms of CPU
    # a second at 20 ms, 8 at 50, and 48 visitors' crowds no slower).
    demo._queue.sleep_when_free, demo._queue.progress_update_sleep_when_free = QUEUE_POLL_S, 10 * QUEUE_POLL_S
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        show_error=False,
        css=TABLE_CSS,  # Gradio 6 takes page styles at launch
        max_file_size=f"{workspace.limits.upload_mb}mb" if workspace.limits.upload_mb else None,
        max_threads=QUEUE_SLOTS,
    )


if __name__ == "__main__":
    main()
