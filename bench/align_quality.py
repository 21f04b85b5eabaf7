"""How much closer does aligning bring the judge to a reviewer whose preference the rubric does not state?

The simulated reviewer keeps a pair only when it is a good answer (the labelled sets' `label`) AND it gives a
concrete example: a number, a code sample, or "for example" / "for instance" / "e.g." / "such as". Every other pair
they discard, with a note saying why ("no concrete example", or the bad answer's failure). The rubric says nothing
about examples, so the judge alone cannot know this.

For 20, 40 and 80 reviews (a random sample of the pool, `--seeds` draws each), the rest of the pool is the rows the
reviewer did not see: agreement with the reviewer there, before (the judge's expected score, kept at the threshold)
and after aligning (aligned_score, kept at 0.5). Calibration alone needs no call. `--rejudge` adds the examples:
the project's JudgeTask with the reviewers' overrulings (align.overruled)
in its prompt, the rows the reviewer did not see judged again on the local llama.cpp server through a run store
(the first seed only; a rerun is free), read at the same threshold (no calibration, so no reviewed row is judged).

The judge's own scores come from the run store that bench/judge_quality.py wrote with `--store` (same model,
template and text: the cache key), so run that first:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/judge_quality.py --models qwen2.5-coder-1.5b \\
        --templates humpback-short --store bench/out/judge.sqlite --json bench/out/judge_default.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/align_quality.py --store bench/out/judge.sqlite [--rejudge]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from judge_quality import DATA, HARD, load_rows  # noqa: E402

from backtrans import align, local  # noqa: E402
from backtrans.judge import JudgeTask  # noqa: E402
from backtrans.llm import LLMClient, LLMSettings  # noqa: E402
from backtrans.runner import Progress, run_rows  # noqa: E402
from backtrans.store import RunStore  # noqa: E402
from backtrans.templates import load_template  # noqa: E402

CONCRETE = re.compile(r"\b(?:for example|for instance|e\.g\.|such as)\b|`|\d", re.IGNORECASE)
NOTES = {"incomplete": "cut off", "wrong": "a wrong fact or step", "forum": "a forum post, not an assistant",
         "promotional": "an advert", "repeat": "only repeats the question", "refusal": "refuses a harmless question",
         "mismatched": "answers another question", "truncated": "cut off or garbled"}


def simulated_reviewer(row: dict) -> tuple[bool, str]:
    """(keep, note) of a reviewer who wants a concrete example in every answer they keep."""
    if not row["label"]:
        return False, NOTES.get(row["kind"], "a bad answer")
    if not CONCRETE.search(row["generation"]):
        return False, "no concrete example (a number, code, or 'for example')"
    return True, ""


def judged(rows: list[dict], model: str, template_name: str, store_path: str, base_url: str | None = None
           ) -> list[dict]:
    """The judge's results for the rows: from the store, and through the server only for what is not in it."""

    async def go(url: str) -> list[dict]:
        settings = LLMSettings(base_url=url, api_key="local", model=model, concurrency=1, timeout_s=600)
        task = JudgeTask(load_template(template_name), settings)
        client, store = LLMClient(settings), RunStore(store_path)
        try:
            run_id = store.start_run("judge", {"bench": "align_quality"})
            pairs = [{"instruction": r["instruction"], "generation": r["generation"]} for r in rows]
            return [result async for _, result in run_rows(pairs, task, client, store, run_id)]
        finally:
            store.close()
            await client.close()

    return asyncio.run(go(base_url or "http://127.0.0.1:9/v1"))


def pool(model: str, template: str, store: str, base_url: str | None) -> list[dict]:
    rows = load_rows(HARD) + load_rows(DATA)
    results = judged(rows, model, template, store, base_url)
    missing = sum(r["status"] != "ok" for r in results)
    if missing:
        raise SystemExit(f"{missing} of {len(rows)} pool rows have no judge score in {store}: run "
                         "bench/judge_quality.py with --store first, or give --serve to judge them here")
    out = []
    for number, (row, result) in enumerate(zip(rows, results, strict=True)):
        keep, note = simulated_reviewer(row)
        out.append({"id": number, "instruction": row["instruction"], "generation": row["generation"],
                    "score": result["score"], "expected_score": result["expected_score"], "truth": keep,
                    "truth_note": note, "label": row["label"], "kind": row["kind"]})
    return out


def unseen_figures(rows: list[dict], aligned: list[dict], threshold: float) -> dict:
    """Agreement with the reviewer on the rows they did not review: before and after aligning."""
    unseen = [(row, new) for row, new in zip(rows, aligned, strict=True) if "human_keep" not in row
              and new.get("aligned_score") is not None]
    truth = [row["truth"] for row, _ in unseen]
    before = align.agreement([row["expected_score"] for row, _ in unseen],
                             [row["expected_score"] >= threshold for row, _ in unseen], truth)
    after = align.agreement([new["aligned_score"] for _, new in unseen],
                            [new["aligned_score"] >= 0.5 for _, new in unseen], truth)
    return {"unseen": len(unseen), "before": before, "after": after}


def draw(rows: list[dict], k: int, seed: int) -> list[dict]:
    """The pool with `k` random rows reviewed (human_keep, human_note), the rest unreviewed."""
    picked = set(random.Random(seed).sample(range(len(rows)), k))
    out = []
    for row in rows:
        row = {key: value for key, value in row.items() if key not in ("truth", "truth_note")} | \
            {"truth": row["truth"], "truth_note": row["truth_note"]}
        if row["id"] in picked:
            row["human_keep"], row["human_note"] = row["truth"], row["truth_note"]
        out.append(row)
    return out


def summary(values: list[float | None]) -> dict:
    values = sorted(v for v in values if v is not None)
    if not values:
        return {"mean": None, "low": None, "high": None}
    return {"mean": round(statistics.fmean(values), 3), "low": round(values[int(0.05 * len(values))], 3),
            "high": round(values[max(0, int(0.95 * len(values)) - 1)], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--template", default="humpback-short")
    parser.add_argument("--store", default=str(ROOT / "bench" / "out" / "judge.sqlite"))
    parser.add_argument("--reviews", type=int, nargs="+", default=[20, 40, 80])
    parser.add_argument("--seeds", type=int, default=20, help="random review samples per size (calibration)")
    parser.add_argument("--threshold", type=float, default=3.8, help="the judge's keep threshold (expected score)")
    parser.add_argument("--method", choices=align.METHODS, default="isotonic")
    parser.add_argument("--rejudge", nargs="*", type=int, metavar="K", help="also the examples, re-judged on the "
                        "local server, for these review counts (default: every --reviews)")
    parser.add_argument("--examples", type=int, default=6, help="--rejudge: reviewed examples in the prompt")
    parser.add_argument("--serve", action="store_true", help="start the local server for rows not in the store")
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "align_quality.json"))
    parser.add_argument("--tables-from", metavar="JSON", nargs="+", help="measure nothing: the table of these files")
    args = parser.parse_args()
    if args.tables_from:
        print(table([r for path in args.tables_from for r in json.loads(Path(path).read_text())["results"]]))
        return

    wants_server = args.serve or args.rejudge is not None
    server = local.start_llm(args.model, parallel=1, timeout_s=300) if wants_server else None
    try:
        rows = pool(args.model, args.template, args.store, server.base_url if server else None)
        print(f"pool: {len(rows)} pairs, the reviewer keeps {sum(r['truth'] for r in rows)}", flush=True)
        results = []
        for k in args.reviews:
            cells = {"refused": 0, "before": {m: [] for m in align.METRICS}, "after": {m: [] for m in align.METRICS}}
            for seed in range(args.seeds):
                sample = draw(rows, k, seed)
                try:
                    aligned, _ = align.align_rows(sample, args.threshold, method=args.method, resamples=50)
                except align.AlignError:
                    cells["refused"] += 1
                    continue
                figures = unseen_figures(sample, aligned, args.threshold)
                for side in ("before", "after"):
                    for metric in align.METRICS:
                        cells[side][metric].append(figures[side][metric])
            result = {"reviews": k, "how": "calibration", "seeds": args.seeds, "refused": cells["refused"],
                      **{side: {m: summary(cells[side][m]) for m in align.METRICS} for side in ("before", "after")}}
            results.append(result)
            print(json.dumps(result), flush=True)
            save(args, results)
            if args.rejudge is not None and (not args.rejudge or k in args.rejudge):
                results.append(rejudged(rows, k, args, server))
                print(json.dumps(results[-1]), flush=True)
                save(args, results)
    finally:
        if server is not None:
            server.stop()
    print(table(results))


def save(args: argparse.Namespace, results: list[dict]) -> None:
    """After every result, so that a long re-judging run that is stopped keeps what it measured."""
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))


def rejudged(rows: list[dict], k: int, args: argparse.Namespace, server) -> dict:
    """The examples lever for the first seed whose sample align accepts: the reviewers' overrulings in the judge's
    prompt (align.overruled, JudgeTask(examples=)), the rows they did not review judged again on the server,
    through the run store. Ranking (AUC) and the keep at the same threshold, before and after, on those rows;
    the reviewed rows are not judged again here (`align --rejudge` does that, for its calibration and report)."""
    import time

    settings = LLMSettings(base_url=server.base_url, api_key="local", model=args.model, concurrency=1,
                           timeout_s=600)
    for seed in range(args.seeds):
        sample = draw(rows, k, seed)
        try:
            align.check_reviews(sample)
        except align.AlignError:
            continue
        examples = align.overruled(sample, args.threshold, "expected_score", args.examples)
        unseen = [row for row in sample if "human_keep" not in row]
        started = time.monotonic()

        results, progress = judge_with(examples, unseen, settings, args)
        scored = [(row, result) for row, result in zip(unseen, results, strict=True)
                  if result.get("expected_score") is not None]
        truth = [row["truth"] for row, _ in scored]
        before = align.agreement([row["expected_score"] for row, _ in scored],
                                 [row["expected_score"] >= args.threshold for row, _ in scored], truth)
        after = align.agreement([result["expected_score"] for _, result in scored],
                                [result["expected_score"] >= args.threshold for _, result in scored], truth)
        return {"reviews": k, "how": "examples (no calibration)", "seed": seed, "examples": len(examples),
                "unseen": len(scored), "calls": progress.done - progress.cached, "cached": progress.cached,
                "seconds": round(time.monotonic() - started, 1),
                "prefix_chars": len(task_prefix(examples)),
                "before": {m: {"mean": _r(before[m])} for m in align.METRICS},
                "after": {m: {"mean": _r(after[m])} for m in align.METRICS}}
    return {"reviews": k, "how": "examples (no calibration)", "refused": args.seeds}


def judge_with(examples: list[dict], rows: list[dict], settings: LLMSettings, args: argparse.Namespace
               ) -> tuple[list[dict], Progress]:
    async def go() -> tuple[list[dict], Progress]:
        task = JudgeTask(load_template(args.template), settings, examples=examples)
        client, store = LLMClient(settings), RunStore(args.store)
        progress = Progress(total=len(rows))
        try:
            run_id = store.start_run("judge", {"bench": "align_quality rejudge"})
            pairs = [{"instruction": r["instruction"], "generation": r["generation"]} for r in rows]
            out = [result async for _, result in run_rows(pairs, task, client, store, run_id, progress)]
        finally:
            store.close()
            await client.close()
        return out, progress

    return asyncio.run(go())


def task_prefix(examples: list[dict]) -> str:
    from backtrans.judge import examples_prefix

    return examples_prefix(examples)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def table(results: list[dict]) -> str:
    head = ("reviews", "aligned by", "samples (refused)", "AUC before -> after", "kappa before -> after",
            "agreement before -> after", "precision before -> after", "recall before -> after")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pair(result: dict, metric: str) -> str:
        if "before" not in result:
            return "-"

        def one(side: str) -> str:
            s = result[side][metric]
            if s.get("mean") is None:
                return "-"
            spread = f" ({s['low']:.2f}-{s['high']:.2f})" if s.get("low") is not None else ""
            return f"{s['mean']:.2f}{spread}"

        return f"{one('before')} -> {one('after')}"

    for r in results:
        samples = f"{r.get('seeds', 1)} ({r.get('refused', 0)})" if r["how"] == "calibration" else \
            f"seed {r.get('seed', '-')}, {r.get('examples', 0)} examples, {r.get('unseen', 0)} rows, " \
            f"{r.get('calls', 0)} calls, {r.get('seconds', 0):.0f} s"
        lines.append("| " + " | ".join([str(r["reviews"]), r["how"], samples,
                                        *[pair(r, m) for m in ("auc", "kappa", "agreement", "precision",
                                                               "recall")]]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
