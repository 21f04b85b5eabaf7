"""`python -m backtrans ...`: a thin face over the core. Exit 0: every row processed; 2: bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from backtrans.argilla_sync import POLICIES, ArgillaError
from backtrans.augment import (
    BackwardTask,
    FilterReport,
    FilterSettings,
    ResponseTask,
    candidate_rows,
    load_seed_examples,
)
from backtrans.export import ExportError, RowWriter, curated, judge_keeps, keep, push_to_hub, score_histogram
from backtrans.judge import JudgeTask
from backtrans.llm import LLMClient, LLMSettings, redact
from backtrans.records import PAIR_COLUMNS, RecordsError, iter_rows, parse_mapping
from backtrans.runner import FileJob
from backtrans.store import RunStore
from backtrans.templates import DEFAULT_JUDGE_TEMPLATE, TemplateError, load_template

DEFAULT_STORE = os.environ.get("BACKTRANS_STORE", "backtrans-runs.sqlite")


class UsageError(Exception):
    pass


def _llm_options(parser: argparse.ArgumentParser, template_default: str) -> None:
    parser.add_argument("input", nargs="?", help="JSONL, CSV or Parquet file, dataset folder, or Hub dataset id")
    parser.add_argument("-o", "--output", help="output file; its extension picks the format")
    parser.add_argument("--template", default=template_default, help="bundled template name or a .jinja2 path")
    parser.add_argument("--model", help="model name (default: $BACKTRANS_MODEL)")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--rpm", type=float, help="requests per minute limit")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument("--max-retries", type=int, default=6)
    parser.add_argument("--map", action="append", default=[], metavar="SOURCE=TARGET",
                        help="column mapping, e.g. --map prompt=instruction (repeatable)")
    parser.add_argument("--config", dest="hf_config", help="Hub dataset config")
    parser.add_argument("--split", help="Hub dataset split")
    parser.add_argument("--drop-duplicates", action="store_true", help="keep the first of duplicate pairs")
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"run store (default {DEFAULT_STORE})")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue a run from the store, with its settings")
    parser.add_argument("--parent", metavar="RUN_ID", help="this run is the next round of RUN_ID (its lineage): "
                        "the input's earlier verdict columns are kept as score_r1, reason_r1, ...")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-hedge", action="store_true", help="never send a duplicate of a slow request "
                        "(by default one is sent past the 95th latency percentile, for at most 5%% more requests)")
    parser.add_argument("--engine", choices=["asyncio", "ray"], default="asyncio",
                        help="where rows run: this process (default) or a Ray cluster (local if none is given)")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, else start a local one)")
    parser.add_argument("--batch", action="store_true", help="submit the rows as one OpenAI Batch API job "
                        "(files + batches), poll it, and ingest the results")
    parser.add_argument("--batch-poll", type=float, default=10.0, help="seconds between batch status checks")
    parser.add_argument("--batch-file", metavar="PATH", help="only write the Batch API requests file (for vLLM's "
                        "run_batch) for the rows not in the store yet, and stop")
    parser.add_argument("--batch-results", metavar="PATH", help="ingest a Batch API results file (vLLM's "
                        "run_batch output) instead of calling the model")


def _threshold_options(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--min-score", type=float, default=4, help=help_text)
    parser.add_argument("--by", choices=["score", "expected_score"], default="score",
                        help="compare the threshold with the parsed score or the expected score from digit "
                        "probabilities (better for small local judges)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backtrans", description="Instruction backtranslation: "
                                     "score, generate, curate and export instruction-tuning data.")
    sub = parser.add_subparsers(dest="command", required=True)
    _llm_options(sub.add_parser("score", help="judge (instruction, generation) pairs"),
                 os.environ.get("BACKTRANS_TEMPLATE", DEFAULT_JUDGE_TEMPLATE))
    _llm_options(sub.add_parser("generate", help="write responses for instructions that lack one"),
                 "generate-response")
    augment = sub.add_parser("augment", help="self-augmentation: write instructions for unlabelled documents")
    _llm_options(augment, "backward-instruction")
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
    plan.add_argument("--by", choices=["score", "expected_score"], help="default: expected_score where present")
    plan.add_argument("--threshold", type=float, help="the current keep threshold: part of the budget goes near it")
    plan.add_argument("--near-share", type=float, default=0.2, help="share of the budget near the threshold")
    plan.add_argument("--overlap-share", type=float, default=0.1, help="share of the plan for two reviewers")
    estimate = review_sub.add_parser("estimate", help="precision and recall of the kept set, with 95%% intervals")
    estimate.add_argument("input", help="the scored rows with human_keep on the reviewed ones "
                          "(as `argilla pull --scored` writes them)")
    estimate.add_argument("--by", choices=["score", "expected_score"], help="default: expected_score where present")
    estimate.add_argument("--threshold", type=float, help="report this threshold (default: every candidate)")
    estimate.add_argument("--target-precision", type=float, help="choose the threshold that keeps the most pairs "
                          "while the precision's lower bound meets this")
    estimate.add_argument("--json", metavar="REPORT", help="write the chosen (or given) threshold's report here")

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
    push.add_argument("--template", default=os.environ.get("BACKTRANS_TEMPLATE", DEFAULT_JUDGE_TEMPLATE),
                      help="the judge template the scores came from (sets the rating range and guidelines)")
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


def _settings(args: argparse.Namespace) -> LLMSettings:
    return LLMSettings.from_env(model=args.model, base_url=args.base_url, concurrency=args.concurrency,
                                requests_per_minute=args.rpm, timeout_s=args.timeout, max_retries=args.max_retries,
                                hedge=not getattr(args, "no_hedge", False))


def cmd_llm_task(args: argparse.Namespace) -> int:
    if args.resume:
        info = RunStore(args.store).run(args.resume)
        if info is None:
            raise UsageError(f"no run {args.resume!r} in {args.store}")
        config = info.config
        args.input = args.input or config["source"]
        args.output = args.output or config["output"]
        args.template = config["template"]
        args.model = args.model or config["model"]
        args.base_url = args.base_url or config["base_url"]
        args.map = args.map or [f"{k}={v}" for k, v in config["mapping"].items()]
        args.hf_config = args.hf_config or config.get("config")
        args.split = args.split or config.get("split")
    if not args.input or not args.output:
        raise UsageError("give an INPUT and -o OUTPUT (or --resume RUN_ID)")
    settings = _settings(args)
    template = load_template(args.template)
    source = args.input if not Path(args.input).exists() else str(Path(args.input).resolve())
    row_source, report = None, None
    if args.command == "score":
        task, required, optional = JudgeTask(template, settings), PAIR_COLUMNS, ()
    elif args.command == "generate":
        task, required, optional = ResponseTask(template, settings), ("instruction",), ("generation",)
    else:
        task = BackwardTask(template, settings, load_seed_examples(args.seed, args.examples))
        required, optional = ("text",), ()
        filters = FilterSettings(args.min_chars, args.max_chars, args.max_header_caps, args.near_duplicate)

        def row_source():
            nonlocal report
            report = FilterReport()
            return candidate_rows(source, filters, report, config=args.hf_config, split=args.split,
                                  mapping=parse_mapping(args.map))

    job = FileJob(source=source, output=str(Path(args.output).resolve()), task=task, store_path=args.store,
                  mapping=parse_mapping(args.map), required=required, optional=optional,
                  config=args.hf_config, split=args.split, drop_duplicates=args.drop_duplicates,
                  row_source=row_source, parent_run_id=args.parent)
    total = job.validate()  # the whole input is checked before the first call
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="row", file=sys.stderr, dynamic_ncols=True)

    shown = [0.0]

    def on_progress(progress) -> None:
        # Rows are counted as they finish, in any order; the bar follows that count, not the output.
        if bar is not None and progress.done != bar.n:
            now = time.monotonic()
            if now - shown[0] >= 0.2 or progress.done == progress.total:
                shown[0] = now
                bar.set_postfix_str(f"{progress.ok} ok, {progress.parse_error} parse, {progress.llm_error} LLM "
                                    f"errors, {progress.tokens:,} tokens", refresh=False)
            bar.update(progress.done - bar.n)

    if args.engine == "ray" and args.batch:
        raise UsageError("--batch sends the whole file to the provider's batch service; it takes no --engine ray")
    if args.engine == "ray":
        from backtrans.engines.ray_engine import run_job

        run_id, progress = run_job(job, args.ray_address, on_progress=on_progress, total=total, run_id=args.resume)
        counts = "engine ray"
    elif args.batch_file:
        from backtrans.engines.batch import write_file

        count = write_file(job, args.batch_file)
        if bar is not None:
            bar.close()
        print(f"wrote {count} requests to {args.batch_file}", file=sys.stderr)
        return 0
    elif args.batch_results:
        from backtrans.engines.batch import ingest_file

        run_id, progress, counts = ingest_file(job, args.batch_results, on_progress=on_progress, total=total,
                                               run_id=args.resume)
    elif args.batch:
        from backtrans.engines.batch import run_job

        run_id, progress, counts = run_job(job, poll_s=args.batch_poll, on_progress=on_progress, total=total,
                                           run_id=args.resume)
    else:
        client = LLMClient(settings)
        run_id, progress = job.run(client, run_id=args.resume, on_progress=on_progress, total=total)
        counts = client.describe()
    if bar is not None:
        bar.close()
    if report is not None:
        print(f"filters: {report.describe()}", file=sys.stderr)
    print(progress.done_line(), file=sys.stderr)
    print(f"run {run_id}: {progress.summary()}; {counts}", file=sys.stderr)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    decide = keep
    if args.threshold_from:
        report = _read_report(args.threshold_from)
        args.min_score, args.by = float(report["threshold"]), report["by"]
        decide = _human_then_judge
    scores, kept = [], 0
    with RowWriter(args.output) as writer:
        for located in iter_rows(args.input):
            row = located.row
            scores.append(row.get("score"))
            if decide(row, args.min_score, args.by):
                writer.write(row)
                kept += 1
    histogram = score_histogram(scores)
    print(f"kept {kept} of {len(scores)} pairs with {args.by} >= {args.min_score:g}", file=sys.stderr)
    print("scores: " + "  ".join(f"{k}: {v}" for k, v in histogram.items()), file=sys.stderr)
    return 0


def _read_report(path: str) -> dict:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        float(report["threshold"])
        if report["by"] not in ("score", "expected_score"):
            raise ValueError(f"unknown measure {report['by']!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a `review estimate --json` report ({type(exc).__name__}: {exc})") from None
    return report


def _human_then_judge(row: dict, threshold: float, by: str) -> bool:
    """A reviewer's decision where there is one; the judge at the calibrated threshold for the rest."""
    human = row.get("human_keep")
    if human is not None and not (isinstance(human, float) and human != human):
        return bool(human)
    return bool(judge_keeps(row, threshold, by))


def cmd_review(args: argparse.Namespace) -> int:
    import pandas as pd

    from backtrans import review

    frame = pd.DataFrame([located.row for located in iter_rows(args.input, required=("instruction",),
                                                               optional=("generation",))])
    if args.review_command == "plan":
        planned, summary = review.plan(frame, args.budget, seed=args.seed, by=args.by, threshold=args.threshold,
                                       near_share=args.near_share if args.threshold is not None else 0.0,
                                       overlap_share=args.overlap_share)
        with RowWriter(args.output) as writer:
            for row in planned.to_dict("records"):
                writer.write(row)
        print(summary.describe(), file=sys.stderr)
        return 0
    try:
        review.check_population(frame)
    except review.ReviewError as exc:
        raise UsageError(f"{args.input}: {exc}") from None
    if args.target_precision is not None:
        chosen = review.choose_threshold(frame, args.target_precision, args.by)
        if chosen is None:
            print(f"no threshold reaches a precision of {args.target_precision:.0%} with 95% confidence on these "
                  "reviews: review more pairs, or lower the target", file=sys.stderr)
            return 1
        reports = [chosen]
    elif args.threshold is not None:
        reports = [review.estimate(frame, args.threshold, args.by)]
    else:
        reports = [review.estimate(frame, t, args.by) for t in review.candidate_thresholds(frame, args.by)]
    for report in reports:
        print(report.describe())
    agreement = review.reviewer_agreement(frame)
    if agreement.items:
        kappa = agreement.kappa
        print(f"reviewers agree on {agreement.agreement:.0%} of {agreement.items} pairs both reviewed; Cohen's kappa "
              f"{kappa.estimate:.2f} (95% interval {kappa.low:.2f}-{kappa.high:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(reports[-1].to_json(), indent=2), encoding="utf-8")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    rows = (located.row for located in iter_rows(args.input))
    if args.min_score is not None:
        rows = curated(rows, args.min_score, args.by)
    with RowWriter(args.output, args.format, system_tag=args.system_tag) as writer:
        for row in rows:
            writer.write(row)
    print(f"wrote {writer.count} rows to {args.output} ({writer.format})", file=sys.stderr)
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(args.output, args.push_to_hub)}", file=sys.stderr)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    store = RunStore(args.store)
    if args.lineage:
        chain = store.lineage(args.lineage)
        if not chain:
            raise UsageError(f"no run {args.lineage!r} in {args.store}")
        for number, info in enumerate(chain, start=1):
            counts = store.summary(info.run_id)
            print(f"round {number}: {info.run_id}  {info.config.get('model')}  "
                  f"{Path(str(info.config.get('template'))).stem}  rows {counts['rows']}  "
                  f"A4 {counts['A4']}  A5 {counts['A5']}")
        return 0
    for info in store.runs():
        usage = store.usage(info.run_id)
        state = "finished" if info.finished else "unfinished"
        print(f"{info.run_id}  {info.kind:8}  {state:10}  {usage['calls']} calls  "
              f"{usage['prompt_tokens'] + usage['completion_tokens']:,} tokens  {json.dumps(info.config)}")
    return 0


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
            local.exec_app()
        except local.LocalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif args.action == "status":
        lines = local.status()
        print("\n".join(f"{k}: {v}" for k, v in lines.items()) or "no local servers")
    else:
        print("\n".join(local.env_lines()))
    return 0


def cmd_argilla(args: argparse.Namespace) -> int:
    from backtrans import argilla_sync

    config = argilla_sync.ArgillaConfig.from_env(workspace=args.workspace)
    if args.argilla_command == "push":
        rows = [located.row for located in iter_rows(args.input)]
        from tqdm import tqdm

        if rows and all("stratum" in row and "inclusion_prob" in row for row in rows):
            # a `review plan`: its design goes into the guidelines, its overlap into the distribution
            bands: dict[str, tuple[int, float]] = {}
            for row in rows:
                count, probability = bands.get(str(row["stratum"]), (0, float(row["inclusion_prob"])))
                bands[str(row["stratum"])] = (count + 1, probability)
            args.design = args.design or (f"Review plan: {len(rows)} pairs sampled at random within bands of the "
                                          "judge's measure; " + "; ".join(
                                              f"{band}: {count} (inclusion probability {p:.3g})"
                                              for band, (count, p) in sorted(bands.items())))

        options = {"template": args.template, "threshold": args.min_score, "by": args.by,
                   "batch_size": args.batch_size, "resume": not args.no_resume}
        with tqdm(total=len(rows), unit="record", file=sys.stderr, desc="push") as bar:
            options["on_progress"] = lambda n: bar.update(n - bar.n)
            if any(row.get("overlap") for row in rows) and args.overlap is None:
                reports = argilla_sync.push_plan(rows, args.dataset, config, design=args.design, **options)
            else:
                reports = [argilla_sync.push(rows, args.dataset, config, overlap=args.overlap, design=args.design,
                                             **options)]
        for report in reports:
            already = f" ({report.skipped} already there)" if report.skipped else ""
            print(f"pushed {report.pushed} records{already} to {report.workspace}/{report.dataset}: {report.url}",
                  file=sys.stderr)
        return 0
    decisions = argilla_sync.pull_plan(args.dataset, config, args.policy)
    print(argilla_sync.format_summary(argilla_sync.summary(decisions)), file=sys.stderr)
    if args.scored:
        rows = [located.row for located in iter_rows(args.scored)]
    else:
        rows = [d.row for d in decisions.values()]
    merged = argilla_sync.merge(rows, decisions, args.min_score, args.by)
    with RowWriter(args.output) as writer:
        for row in merged:
            writer.write(row)
    report = argilla_sync.agreement(merged, args.min_score, decisions, args.by)
    print(argilla_sync.format_report(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    kept = sum(1 for row in merged if row["final_keep"])
    print(f"wrote {len(merged)} rows to {args.output}; final_keep: {kept}", file=sys.stderr)
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
    "export": cmd_export,
    "runs": cmd_runs,
    "local": cmd_local,
    "argilla": cmd_argilla,
    "deploy": cmd_deploy,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (RecordsError, TemplateError, ExportError, UsageError, ArgillaError) as exc:
        message = redact(redact(str(exc), os.environ.get("OPENAI_API_KEY")), os.environ.get("ARGILLA_API_KEY"))
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished rows are in the store; rerun the same command to resume", file=sys.stderr)
        return 130
