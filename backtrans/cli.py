"""`python -m backtrans ...`: a thin face over the core. Exit 0: every row processed; 2: bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from backtrans.argilla import POLICIES, ArgillaError
from backtrans.decisions import DEFAULT_MEASURE, DEFAULT_THRESHOLD, MEASURES
from backtrans.engines import EngineError
from backtrans.export import ExportError
from backtrans.file_session import AugmentOptions, Engine, FileSession, FileSessionError
from backtrans.records import RecordsError, parse_mapping
from backtrans.redaction import redact
from backtrans.templates import DEFAULT_JUDGE_TEMPLATE, TemplateError, default_template

DEFAULT_STORE = os.environ.get("BACKTRANS_STORE", "backtrans-runs.sqlite")


class UsageError(Exception):
    pass


def _llm_options(parser: argparse.ArgumentParser, template_default: str) -> None:
    """`template_default` is only shown: an unstated template is the resumed run's, else that default."""
    parser.add_argument("input", nargs="?", help="JSONL, CSV or Parquet file, dataset folder, or Hub dataset id")
    parser.add_argument("-o", "--output", help="output file; its extension picks the format")
    parser.add_argument("--template", help=f"bundled template name or a .jinja2 path (default {template_default})")
    parser.add_argument("--model", help="model name (default: $BACKTRANS_MODEL)")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--rpm", type=float, help="requests per minute limit")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument("--max-retries", type=int, default=6, help="transport retries per request (default 6)")
    parser.add_argument("--reask", type=_count, metavar="N", help="ask the same prompt up to N more times when a "
                        "reply has no usable answer (a judge's reply with no score); every reply is kept in the "
                        "store (default: the template's `reask` setting, else 1; 0 turns it off)")
    parser.add_argument("--map", action="append", default=[], metavar="SOURCE=TARGET",
                        help="column mapping, e.g. --map prompt=instruction (repeatable)")
    parser.add_argument("--config", dest="hf_config", help="Hub dataset config")
    parser.add_argument("--split", help="Hub dataset split")
    parser.add_argument("--drop-duplicates", action="store_true", help="keep the first of duplicate pairs")
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"run store (default {DEFAULT_STORE})")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue a run from the store, with its settings "
                        "(any setting given here wins over the stored one)")
    parser.add_argument("--parent", metavar="RUN_ID", help="this run is the next round of RUN_ID (its lineage): "
                        "the input's earlier verdict columns are kept as score_r1, reason_r1, ...")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-hedge", action="store_true", help="never send a duplicate of a slow request "
                        "(by default one is sent past the 95th latency percentile, for at most 5%% more requests)")
    parser.add_argument("--engine", choices=["asyncio", "ray"], default="asyncio",
                        help="where rows run: this process (default) or a Ray cluster (local if none is given)")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, else start a local one)")
    parser.add_argument("--actors", type=int, help="Ray actors, each with its own --concurrency (default: one per "
                        "free CPU of the cluster, at most 8, at least one per node with CPUs)")
    parser.add_argument("--batch", action="store_true", help="submit the rows as one OpenAI Batch API job "
                        "(files + batches), poll it, and ingest the results")
    parser.add_argument("--batch-poll", type=float, default=10.0, help="seconds between batch status checks")
    parser.add_argument("--batch-file", metavar="PATH", help="only write the Batch API requests file (for vLLM's "
                        "run_batch) for the rows not in the store yet, and stop")
    parser.add_argument("--batch-results", metavar="PATH", help="ingest a Batch API results file (vLLM's "
                        "run_batch output) instead of calling the model")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {text!r}")
    return value


def _threshold_options(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--min-score", type=float, default=DEFAULT_THRESHOLD, help=help_text)
    parser.add_argument("--by", choices=MEASURES, default=DEFAULT_MEASURE,
                        help="compare the threshold with the parsed score or the expected score from digit "
                        "probabilities (better for small local judges)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backtrans", description="Instruction backtranslation: "
                                     "score, generate, curate and export instruction-tuning data.")
    sub = parser.add_subparsers(dest="command", required=True)
    _llm_options(sub.add_parser("score", help="judge (instruction, generation) pairs"),
                 default_template("judge"))
    _llm_options(sub.add_parser("generate", help="write responses for instructions that lack one"),
                 default_template("generate"))
    augment = sub.add_parser("augment", help="self-augmentation: write instructions for unlabelled documents")
    _llm_options(augment, default_template("augment"))
    augment.add_argument("--seed", help="JSONL of (instruction, output) seed pairs used as examples "
                         "(default: a few bundled ones)")
    augment.add_argument("--examples", type=int, default=3, help="seed pairs per prompt (default 3)")
    augment.add_argument("--min-chars", type=int, default=200, help="drop shorter segments (default 200)")
    augment.add_argument("--max-chars", type=int, default=6000, help="drop longer segments (default 6000)")
    augment.add_argument("--max-header-caps", type=float, default=0.5,
                         help="drop segments whose header has a larger share of capital letters (default 0.5)")
    augment.add_argument("--near-duplicate", type=float, default=0.8,
                         help="MinHash Jaccard similarity at which segments count as duplicates (default 0.8)")

    curate = sub.add_parser("curate", help="keep the pairs scored at or above a threshold")
    curate.add_argument("input")
    curate.add_argument("-o", "--output", required=True)
    _threshold_options(curate, "4 = the paper's A4 set, 5 = A5")
    curate.add_argument("--threshold-from", metavar="REPORT", help="the threshold (and measure) of a `review "
                        "estimate --json` report; reviewers' decisions (human_keep) still win row by row")

    review = sub.add_parser("review", help="review budgets: a sampling plan, and estimates with intervals")
    review_sub = review.add_subparsers(dest="review_command", required=True)
    plan = review_sub.add_parser("plan", help="pick at most N scored pairs to review, stratified by score band")
    plan.add_argument("input", help="the scored file")
    plan.add_argument("-o", "--output", required=True)
    plan.add_argument("--budget", type=int, required=True, help="the most pairs to review")
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--by", choices=MEASURES, help="default: expected_score where present")
    plan.add_argument("--threshold", type=float, help="the current keep threshold: part of the budget goes near it")
    plan.add_argument("--near-share", type=float, default=0.2, help="share of the budget near the threshold")
    plan.add_argument("--overlap-share", type=float, default=0.1, help="share of the plan for two reviewers")
    estimate = review_sub.add_parser("estimate", help="precision and recall of the kept set, with 95%% intervals")
    estimate.add_argument("input", help="the scored rows with human_keep on the reviewed ones "
                          "(as `argilla pull --scored` writes them)")
    estimate.add_argument("--by", choices=MEASURES, help="default: expected_score where present")
    estimate.add_argument("--threshold", type=float, help="report this threshold (default: every candidate)")
    estimate.add_argument("--target-precision", type=float, help="choose the threshold that keeps the most pairs "
                          "while the precision's lower bound meets this")
    estimate.add_argument("--json", metavar="REPORT", help="write the chosen (or given) threshold's report here")

    align = sub.add_parser("align", help="align the judge with its reviewers: calibrate it on their decisions "
                           "(aligned_score); with --rejudge, also judge again with their overrulings as examples")
    align.add_argument("input", help="the scored rows with human_keep on the reviewed ones (`argilla pull --scored`)")
    align.add_argument("-o", "--output", required=True, help="every row with aligned_score and final_keep")
    align.add_argument("--method", choices=["isotonic", "logistic"], default="isotonic",
                       help="monotone calibration of the measure (default), or logistic on expected score and score")
    align.add_argument("--by", choices=MEASURES[:2], help="the judge's measure (default: expected_score where "
                       "present)")
    align.add_argument("--min-score", type=float, help="the judge's keep threshold the report compares with "
                       "(default: 3.8 by expected score, 4 by score)")
    align.add_argument("--folds", type=int, default=5, help="cross-validation folds for the report (default 5)")
    align.add_argument("--seed", type=int, default=0)
    align.add_argument("--rejudge", action="store_true", help="put the pairs the reviewers overruled (with their "
                       "notes) in the judge's prompt and judge the rows again through the store")
    align.add_argument("--examples", type=int, default=6, help="--rejudge: the most reviewed examples (default 6)")
    for flag, text in (("--template", "--rejudge: the judge template (default $BACKTRANS_TEMPLATE or humpback)"),
                       ("--model", "--rejudge: model name (default: $BACKTRANS_MODEL)"),
                       ("--base-url", "--rejudge: OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")):
        align.add_argument(flag, help=text)
    align.add_argument("--concurrency", type=int, default=16)
    align.add_argument("--timeout", type=float, default=120.0)
    align.add_argument("--reask", type=_count, metavar="N")
    align.add_argument("--store", default=DEFAULT_STORE, help=f"run store (default {DEFAULT_STORE})")
    align.add_argument("--json", metavar="REPORT", help="write the report here")

    export = sub.add_parser("export", help="write a scored or curated file in another format")
    export.add_argument("input")
    export.add_argument("-o", "--output", required=True)
    export.add_argument("--format", choices=["jsonl", "parquet", "csv", "chat"])
    _threshold_options(export, "export only the kept pairs (default: every pair)")
    export.set_defaults(min_score=None)
    export.add_argument("--system-tag", help="chat format: override the paper's seed/augmented system tags")
    export.add_argument("--push-to-hub", metavar="REPO", help="also upload to a Hub dataset repo (needs HF_TOKEN)")

    runs = sub.add_parser("runs", help="list the runs in a store")
    runs.add_argument("--store", default=DEFAULT_STORE)
    runs.add_argument("--lineage", metavar="RUN_ID", help="the rounds that led to RUN_ID, with A4/A5 per round")
    runs.add_argument("--json", action="store_true", help="one JSON object per run and line (for scripts)")

    local = sub.add_parser("local", help="the embedded default: local LLM server and local Argilla")
    local.add_argument("action", choices=["up", "down", "status", "env", "app"],
                       help="app: become the app (app.py), recorded so that `down` stops it too (make run)")
    local.add_argument("--model", help="local model (default: $BACKTRANS_LOCAL_MODEL or qwen2.5-coder-1.5b)")
    local.add_argument("--no-argilla", action="store_true", help="start the LLM server only")

    argilla = sub.add_parser("argilla", help="human review in Argilla: push suggestions, pull decisions")
    argilla_sub = argilla.add_subparsers(dest="argilla_command", required=True)
    push = argilla_sub.add_parser("push", help="push scored pairs with the LLM's verdicts as suggestions")
    push.add_argument("input")
    push.add_argument("--dataset", required=True)
    push.add_argument("--workspace", help="Argilla workspace (default: backtrans)")
    _threshold_options(push, "the suggested keep threshold (default 4)")
    push.add_argument("--template", help="the judge template the scores came from (sets the rating range and "
                      f"guidelines; default $BACKTRANS_TEMPLATE or {DEFAULT_JUDGE_TEMPLATE})")
    push.add_argument("--batch-size", type=int, default=200, help="records per request (at most 500)")
    push.add_argument("--overlap", type=int, help="reviewers each record asks for (the dataset's distribution; "
                      "default 1 for a new dataset, unchanged for an existing one)")
    push.add_argument("--design", help="the sample design, appended to the dataset's guidelines")
    push.add_argument("--no-resume", action="store_true", help="send every record again, even those the server "
                      "already holds unchanged")
    pull = argilla_sub.add_parser("pull", help="pull reviewers' decisions, merge them, report agreement")
    pull.add_argument("--dataset", required=True)
    pull.add_argument("--workspace")
    pull.add_argument("-o", "--output", required=True)
    pull.add_argument("--scored", help="the scored file that was pushed: its rows get the decisions "
                      "(default: rebuild the rows from Argilla)")
    pull.add_argument("--policy", choices=POLICIES, default="majority")
    _threshold_options(pull, "the judge's keep threshold, for final_keep and the agreement (default 4)")
    pull.add_argument("--report", help="write the agreement report as JSON here")

    deploy = sub.add_parser("deploy", help="create or update the Hugging Face Space (see space.yaml)")
    deploy.add_argument("--space", required=True, metavar="OWNER/NAME")
    deploy.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    return parser


def _session(args: argparse.Namespace) -> FileSession:
    return FileSession(getattr(args, "store", DEFAULT_STORE))


KINDS = {"score": "judge", "generate": "generate", "augment": "augment"}


def cmd_llm_task(args: argparse.Namespace) -> int:
    augment = None
    if args.command == "augment":
        augment = AugmentOptions(args.seed, args.examples, args.min_chars, args.max_chars, args.max_header_caps,
                                 args.near_duplicate)
    llm = {"concurrency": args.concurrency, "requests_per_minute": args.rpm, "timeout_s": args.timeout,
           "max_retries": args.max_retries, "hedge": False if args.no_hedge else None}
    prepared = _session(args).prepare(
        KINDS[args.command], resume=args.resume, llm=llm, drop_duplicates=args.drop_duplicates, augment=augment,
        reask=args.reask,
        source=args.input, output=args.output, template=args.template, model=args.model, base_url=args.base_url,
        mapping=parse_mapping(args.map), hf_config=args.hf_config, split=args.split, parent_run_id=args.parent)
    engine = Engine(args.engine, args.ray_address, args.batch, args.batch_poll, args.batch_file, args.batch_results,
                    actors=args.actors)
    bar = None if args.no_progress or args.batch_file else _bar(prepared.total, "row")
    outcome = prepared.run(engine, on_progress=_row_progress(bar) if bar is not None else None)
    if bar is not None:
        bar.close()
    if outcome.filters:
        print(f"filters: {outcome.filters}", file=sys.stderr)
    if outcome.requests_written is not None:
        print(f"wrote {outcome.requests_written} requests to {args.batch_file}", file=sys.stderr)
        return 0
    print(outcome.progress.done_line(), file=sys.stderr)
    print(f"run {outcome.run_id}: {outcome.progress.summary()}; {outcome.counts}", file=sys.stderr)
    print(f"wrote {prepared.config.output}", file=sys.stderr)
    return 0


def _bar(total: int | None, unit: str, desc: str | None = None):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)


def _row_progress(bar) -> Callable:
    shown = [0.0]

    def on_progress(progress) -> None:
        # Rows are counted as they finish, in any order; the bar follows that count, not the output.
        if progress.done != bar.n:
            now = time.monotonic()
            if now - shown[0] >= 0.2 or progress.done == progress.total:
                shown[0] = now
                bar.set_postfix_str(f"{progress.ok} ok, {progress.parse_error} parse, {progress.llm_error} LLM "
                                    f"errors, {progress.tokens:,} tokens", refresh=False)
            bar.update(progress.done - bar.n)

    return on_progress


def cmd_curate(args: argparse.Namespace) -> int:
    outcome = _session(args).curate(args.input, args.output, args.min_score, args.by, args.threshold_from)
    print(f"kept {outcome.kept} of {outcome.total} pairs with {outcome.by} >= {outcome.threshold:g}", file=sys.stderr)
    print("scores: " + "  ".join(f"{k}: {v}" for k, v in outcome.histogram.items()), file=sys.stderr)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    session = _session(args)
    if args.review_command == "plan":
        summary = session.review_plan(args.input, args.output, args.budget, seed=args.seed, by=args.by,
                                      threshold=args.threshold, near_share=args.near_share,
                                      overlap_share=args.overlap_share)
        print(summary.describe(), file=sys.stderr)
        return 0
    reports, agreement = session.review_estimate(args.input, by=args.by, threshold=args.threshold,
                                                 target_precision=args.target_precision, report_path=args.json)
    if not reports:
        print(f"no threshold reaches a precision of {args.target_precision:.0%} with 95% confidence on these "
              "reviews: review more pairs, or lower the target", file=sys.stderr)
        return 1
    for report in reports:
        print(report.describe())
    if agreement.items:
        kappa = agreement.kappa
        print(f"reviewers agree on {agreement.agreement:.0%} of {agreement.items} pairs both reviewed; Cohen's kappa "
              f"{kappa.estimate:.2f} (95% interval {kappa.low:.2f}-{kappa.high:.2f})")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    outcome = _session(args).align(
        args.input, args.output, method=args.method, by=args.by, threshold=args.min_score, folds=args.folds,
        seed=args.seed, rejudge=args.rejudge, examples=args.examples, template=args.template, model=args.model,
        base_url=args.base_url, llm={"concurrency": args.concurrency, "timeout_s": args.timeout}, reask=args.reask,
        report_path=args.json)
    print(outcome.report.describe())
    print(f"wrote {outcome.rows} rows to {args.output}: {outcome.aligned} with an aligned_score; final_keep "
          f"{outcome.kept} (reviewers' decisions, else aligned_score >= 0.5)", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    count, fmt, url = _session(args).export(args.input, args.output, args.format, args.min_score, args.by,
                                            args.system_tag, args.push_to_hub)
    print(f"wrote {count} rows to {args.output} ({fmt})", file=sys.stderr)
    if url:
        print(f"pushed to {url}", file=sys.stderr)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    session = _session(args)
    if args.lineage:
        for number, (info, counts) in enumerate(session.lineage(args.lineage), start=1):
            print(f"round {number}: {info.run_id}  {info.config.get('model')}  "
                  f"{Path(str(info.config.get('template'))).stem}  rows {counts['rows']}  "
                  f"A4 {counts['A4']}  A5 {counts['A5']}")
        return 0
    runs = session.runs()
    if args.json:
        for run in runs:
            print(json.dumps(run.to_json(), ensure_ascii=False))
        return 0
    if not runs:
        print(f"no runs in {session.store_path}", file=sys.stderr)
        return 0
    header = ("run", "started", "kind", "source", "rows", "ok", "parse errors", "LLM errors", "calls", "tokens",
              "state")
    table = [header] + [
        (run.info.run_id, time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.created)), run.info.kind,
         _shorten(run.source, 40), str(run.counts["rows"]), str(run.counts["ok"]), str(run.counts["parse_error"]),
         str(run.counts["llm_error"]), f"{run.usage['calls']:,}", f"{run.tokens:,}",
         "finished" if run.info.finished else "unfinished")
        for run in runs
    ]
    print(_columns(table, numeric=range(4, 10)))
    return 0


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _columns(table: list[tuple[str, ...]], numeric: Iterable[int] = ()) -> str:
    """Rows of cells as aligned columns two spaces apart; `numeric` columns are right-aligned."""
    numeric = set(numeric)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.rjust(width) if i in numeric else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in table)


def cmd_local(args: argparse.Namespace) -> int:
    from backtrans import local

    if args.action == "up":
        state = local.up(args.model or local.DEFAULT_MODEL, argilla=not args.no_argilla)
        llm = state["llm"]
        print(f"LLM:     {llm['base_url']} ({llm['model']})")
        if "argilla" in state and not local.external_argilla():
            argilla = state["argilla"]
            print(f"Argilla: {argilla['url']}  (log in as {argilla['username']} / {argilla['password']})")
        elif local.external_argilla():
            print(f"Argilla: {os.environ['ARGILLA_API_URL']} (external, from ARGILLA_API_URL)")
        print(f"App:     http://127.0.0.1:{os.environ.get('GRADIO_SERVER_PORT', '7860')} "
              "(`make run`, or `eval \"$(python -m backtrans local env)\" && python -m backtrans local app`)")
    elif args.action == "down":
        stopped = local.down()
        print("stopped " + (", ".join(stopped) if stopped else "nothing (no server was running)"))
    elif args.action == "app":
        try:
            return local.run_app()
        except local.LocalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif args.action == "status":
        lines = local.status()
        print("\n".join(f"{k}: {v}" for k, v in lines.items()) or "no local servers")
    else:
        print("\n".join(local.env_lines()))
    return 0


def format_report(report: dict) -> str:
    """A pull's agreement report (`argilla.pull_merged`'s, plain numbers) as the lines the CLI prints."""
    c = report["confusion"]
    lines = [
        f"Agreement of the LLM's keep ({report['by']} >= {report['threshold']:g}) with the reviewers, "
        f"over {report['reviewed']} reviewed pairs:",
        f"  precision {report['precision']}  recall {report['recall']}  F1 {report['f1']}  "
        f"accuracy {report['accuracy']}  Cohen's kappa {report['cohen_kappa']}",
        f"  Spearman (LLM score vs human score, {report['scored_by_both']} pairs): {report['spearman']}",
        "                    human keep   human discard",
        f"  LLM keep          {c['llm_keep_human_keep']:>10}   {c['llm_keep_human_discard']:>13}",
        f"  LLM discard       {c['llm_discard_human_keep']:>10}   {c['llm_discard_human_discard']:>13}",
        "  annotators: " + ("; ".join(f"{user} {counts}" for user, counts in report["annotators"].items()) or "none"),
    ]
    return "\n".join(lines)


def cmd_argilla(args: argparse.Namespace) -> int:
    session = _session(args)
    if args.argilla_command == "push":
        with _bar(None, "record", "push") as bar:

            def on_progress(sent: int, total: int) -> None:
                bar.total = total  # known once the file is read
                bar.update(sent - bar.n)

            reports = session.argilla_push(args.input, args.dataset, workspace=args.workspace, template=args.template,
                                           threshold=args.min_score, by=args.by, batch_size=args.batch_size,
                                           overlap=args.overlap, design=args.design, resume=not args.no_resume,
                                           on_progress=on_progress)
        for report in reports:
            already = f" ({report.skipped} already there)" if report.skipped else ""
            print(f"pushed {report.pushed} records{already} to {report.workspace}/{report.dataset}: {report.url}",
                  file=sys.stderr)
        return 0
    outcome = session.argilla_pull(args.dataset, args.output, workspace=args.workspace, scored=args.scored,
                                   policy=args.policy, threshold=args.min_score, by=args.by, report_path=args.report)
    print(outcome.summary, file=sys.stderr)
    print(format_report(outcome.report))
    print(f"wrote {outcome.rows} rows to {args.output}; final_keep: {outcome.kept}", file=sys.stderr)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from backtrans import deploy

    try:
        plan = deploy.plan(args.space)
        print(plan.describe())
        if args.dry_run:
            print("dry run: nothing was changed")
            return 0
        print(f"deployed: {deploy.deploy(plan)}")
    except deploy.DeployError as exc:
        raise UsageError(str(exc)) from None
    return 0


COMMANDS = {
    "score": cmd_llm_task,
    "generate": cmd_llm_task,
    "augment": cmd_llm_task,
    "curate": cmd_curate,
    "review": cmd_review,
    "align": cmd_align,
    "export": cmd_export,
    "runs": cmd_runs,
    "local": cmd_local,
    "argilla": cmd_argilla,
    "deploy": cmd_deploy,
}


def _mapping_hint(exc: Exception) -> str:
    """The CLI's way to supply a missing column (the core's message names the columns, not a flag)."""
    missing_columns = getattr(exc, "missing_columns", ())
    return f"; map one with --map SOURCE={missing_columns[0]}" if missing_columns else ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (RecordsError, TemplateError, ExportError, UsageError, ArgillaError, FileSessionError) as exc:
        message = redact(redact(str(exc), os.environ.get("OPENAI_API_KEY")), os.environ.get("ARGILLA_API_KEY"))
        print(f"error: {message}{_mapping_hint(exc)}", file=sys.stderr)
        return 2
    except EngineError as exc:  # a cluster that cannot be joined, or a job that cannot go on: what was kept is said
        print(f"error: {redact(str(exc), os.environ.get('RAY_AUTH_TOKEN'))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished rows are in the store; rerun the same command to resume", file=sys.stderr)
        return 130
