"""How well does a local judge model tell good instruction/answer pairs from bad ones?

For each model x judge template: start the project's local llama.cpp server (threads=2, parallel=1),
judge every labelled pair through the project's own judge path (JudgeTask + LLMClient + run_rows on an
in-memory RunStore), and report

  - AUC of the parsed integer score (Mann-Whitney; ties count half; an unparsed reply counts as the
    scale's midpoint, so a judge that never parses sits at 0.5),
  - AUC of expected_score (the digit-probability expectation), falling back to the parsed score where a
    reply has no logprobs, and to the midpoint where it has neither,
  - the share of replies that parsed, the mean score of good vs bad pairs, and seconds per pair,
  - what the reasons are worth: the share of non-empty reasons; the share that copy the rubric (at least
    half of the reason's word 4-grams occur in one of the template's own lines); and the share that name
    something of the pair (a word of the instruction or answer that is not a stop word and not in the rubric).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/judge_quality.py \
        --models smollm2-135m qwen2.5-coder-1.5b --templates humpback humpback-short \
        --cell-limit qwen2.5-coder-1.5b:humpback=20 --json bench/out/judge_quality.json

The labelled set (bench/data/judge_labelled.jsonl) has columns instruction, generation, label (1 = the
question with its own answer; 0 = another question's answer, or a truncated/garbled one) and kind.
Rows alternate good/bad per question, so `--limit N` (first N rows) stays balanced.

Models are those of backtrans.local.MODELS (the weights must be installed: see requirements-judge.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backtrans import local  # noqa: E402
from backtrans.judge import JudgeTask  # noqa: E402
from backtrans.llm import LLMClient, LLMSettings  # noqa: E402
from backtrans.runner import Progress, run_rows  # noqa: E402
from backtrans.store import RunStore  # noqa: E402
from backtrans.templates import load_template  # noqa: E402

DATA = ROOT / "bench" / "data" / "judge_labelled.jsonl"


def start_server(model: str, threads: int, parallel: int, log_path: Path) -> local.LLMServer:
    return local.start_llm(model, threads=threads, parallel=parallel, log_path=log_path, timeout_s=300)


# --- metrics --------------------------------------------------------------------------------------------


def auc(scores: list[float], labels: list[int]) -> float | None:
    """P(score of a random good pair > score of a random bad pair), ties counting half (Mann-Whitney U)."""
    good = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    bad = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    if not good or not bad:
        return None
    wins = 0.0
    for g in good:
        for b in bad:
            wins += 1.0 if g > b else 0.5 if g == b else 0.0
    return wins / (len(good) * len(bad))


# --- reasons ----------------------------------------------------------------------------------------------

COPY_SHARE = 0.5  # a reason whose word 4-grams come from the rubric at least this often copies it
_STOP = frozenset("""
a an the and or but if of to in on at by for with from as is are was were be been being it its this that
these those there their they them he she his her we our you your i me my not no nor so than then too very can
could would should will shall may might must do does did done has have had having what which who whom whose
when where why how all any both each few more most other some such only own same just also about into over
under again further once here out up down off above below between through during before after answer
answers response question instruction user score rating reason because does doesn't isn't instead
""".split())


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def _grams(words: list[str], n: int = 4) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def rubric_text(source: str) -> list[str]:
    """The template's own lines: its text without the header comment and without Jinja tags."""
    body = re.sub(r"\{#.*?#\}", "", source, flags=re.DOTALL)
    body = re.sub(r"\{\{.*?\}\}|\{%.*?%\}", "", body, flags=re.DOTALL)
    return [line for line in body.splitlines() if line.strip()]


def copies_rubric(reason: str, rubric_grams: set[tuple[str, ...]]) -> bool:
    grams = _grams(_words(reason))
    return bool(grams) and len(grams & rubric_grams) >= COPY_SHARE * len(grams)


def names_the_pair(reason: str, row: dict, rubric_words: set[str]) -> bool:
    pair = set(_words(row["instruction"] + " " + row["generation"]))
    return any(w in pair and w not in rubric_words and w not in _STOP and len(w) > 2 for w in _words(reason))


def reason_figures(rows: list[dict], results: list[dict], rubric: list[str]) -> dict:
    rubric_grams = set().union(*(_grams(_words(line)) for line in rubric)) if rubric else set()
    rubric_words = set(_words(" ".join(rubric)))
    reasons = [(res.get("reason") or "").strip() for res in results]
    n = len(reasons)
    if not n:
        return {}
    return {
        "reason_nonempty_share": round(sum(bool(r) for r in reasons) / n, 3),
        "reason_copies_rubric_share": round(sum(copies_rubric(r, rubric_grams) for r in reasons) / n, 3),
        "reason_names_pair_share": round(
            sum(names_the_pair(r, row, rubric_words) for r, row in zip(reasons, rows, strict=True)) / n, 3),
        "reason_words_median": statistics.median(len(_words(r)) for r in reasons),
    }


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def summarise(rows: list[dict], results: list[dict], lo: int, hi: int) -> dict:
    mid = (lo + hi) / 2
    labels = [r["label"] for r in rows]
    parsed = [res["score"] for res in results]
    score_or_mid = [s if s is not None else mid for s in parsed]
    expected = [
        res["expected_score"] if res.get("expected_score") is not None
        else res["score"] if res["score"] is not None else mid
        for res in results
    ]
    n = len(rows)

    def by_kind(values: list[float], kind: str) -> float | None:
        keep = [i for i, r in enumerate(rows) if r["kind"] in ("matched", kind)]
        return _round(auc([values[i] for i in keep], [labels[i] for i in keep]))

    return {
        "n": n,
        "n_good": sum(labels),
        "n_bad": n - sum(labels),
        "auc_score": _round(auc(score_or_mid, labels)),
        "auc_score_parsed_only": _round(auc(
            [s for s in parsed if s is not None], [y for s, y in zip(parsed, labels, strict=True) if s is not None])),
        "auc_expected": _round(auc(expected, labels)),
        "auc_expected_vs_mismatched": by_kind(expected, "mismatched"),
        "auc_expected_vs_truncated": by_kind(expected, "truncated"),
        "parsed_share": round(sum(s is not None for s in parsed) / n, 3) if n else None,
        "logprob_share": round(sum(res.get("expected_score") is not None for res in results) / n, 3) if n else None,
        "mean_score_good": _mean([s for s, y in zip(parsed, labels, strict=True) if y == 1 and s is not None]),
        "mean_score_bad": _mean([s for s, y in zip(parsed, labels, strict=True) if y == 0 and s is not None]),
        "mean_expected_good": _mean([e for e, y in zip(expected, labels, strict=True) if y == 1]),
        "mean_expected_bad": _mean([e for e, y in zip(expected, labels, strict=True) if y == 0]),
        "score_counts": {str(k): parsed.count(k) for k in range(lo, hi + 1)} | {"none": parsed.count(None)},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- one cell: a model x a template --------------------------------------------------------------------


async def judge_rows(task: JudgeTask, settings: LLMSettings, rows: list[dict], label: str
                     ) -> tuple[list[dict], list[float], Progress]:
    client = LLMClient(settings)
    store = RunStore(":memory:")
    try:
        # Warm-up, not counted: loads the weights into the cache and fills the slot's KV cache with the
        # template's shared prefix, as it would be after the first pair of any real run.
        await task.call(client, {"instruction": "Name a primary colour.", "generation": "Red is a primary colour."})
        run_id = store.start_run(task.kind, {"bench": label})
        results, seconds = [], []
        last = time.perf_counter()
        progress = Progress(total=len(rows))
        async for row, result in run_rows(rows, task, client, store, run_id, progress):
            now = time.perf_counter()
            seconds.append(now - last)
            last = now
            results.append(result)
            print(f"  {len(results):3d}/{len(rows)} label={row['label']} {row['kind']:<10} score={result['score']} "
                  f"exp={result['expected_score']} {seconds[-1]:.1f}s", file=sys.stderr, flush=True)
        return results, seconds, progress
    finally:
        store.close()
        await client.close()


def run_cell(model: str, template_name: str, rows: list[dict], args: argparse.Namespace, log_path: Path) -> dict:
    template = load_template(template_name)
    if args.force_logprobs and not template.logprobs:
        # Generation is greedy (temperature 0), so asking for logprobs does not change the text; it only lets
        # expected_score read the digit probabilities at the reply's own "Score: N".
        template = dataclasses.replace(template, logprobs=True)
    print(f"== {model} x {template_name}: {len(rows)} pairs", file=sys.stderr, flush=True)
    started = time.perf_counter()
    server = start_server(model, args.threads, args.parallel, log_path)
    startup_s = time.perf_counter() - started
    try:
        settings = LLMSettings(base_url=server.base_url, api_key="local", model=model, concurrency=args.parallel,
                               timeout_s=600, max_retries=1)
        task = JudgeTask(template, settings)
        results, seconds, progress = asyncio.run(judge_rows(task, settings, rows, f"{model}/{template_name}"))
    finally:
        server.stop()
    summary = summarise(rows, results, template.score_min, template.score_max)
    summary.update(reason_figures(rows, results, rubric_text(template.source)))
    summary.update(
        model=model,
        template=template_name,
        template_logprobs=template.logprobs,
        max_tokens=template.max_tokens,
        prefill=template.prefill,
        seconds_per_pair=round(sum(seconds) / len(seconds), 2) if seconds else None,
        seconds_median=round(statistics.median(seconds), 2) if seconds else None,
        seconds_total=round(sum(seconds), 1),
        prompt_tokens_per_pair=round(progress.prompt_tokens / len(rows), 1) if rows else None,
        completion_tokens_per_pair=round(progress.completion_tokens / len(rows), 1) if rows else None,
        startup_s=round(startup_s, 1),
        llm_errors=sum(r["status"] == "llm_error" for r in results),
        rows=[
            {k: row[k] for k in ("label", "kind")} | {"instruction": row["instruction"][:60]}
            | {k: res[k] for k in ("score", "expected_score", "status", "reason", "raw_output")}
            | {"seconds": round(s, 2)}
            for row, res, s in zip(rows, results, seconds, strict=True)
        ],
    )
    return summary


# --- output -----------------------------------------------------------------------------------------------


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def table(cells: list[dict]) -> str:
    head = ("model", "template", "n", "AUC score", "AUC expected", "parsed", "logprobs",
            "good/bad score", "good/bad expected", "s/pair mean (median)", "out tok/pair")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        lines.append("| " + " | ".join([
            c["model"], c["template"], str(c["n"]), _fmt(c["auc_score"]), _fmt(c["auc_expected"]),
            _fmt(c["parsed_share"], ".0%"), _fmt(c["logprob_share"], ".0%"),
            f"{_fmt(c['mean_score_good'], '.2f')} / {_fmt(c['mean_score_bad'], '.2f')}",
            f"{_fmt(c['mean_expected_good'], '.2f')} / {_fmt(c['mean_expected_bad'], '.2f')}",
            f"{_fmt(c['seconds_per_pair'], '.1f')} ({_fmt(c.get('seconds_median'), '.1f')})",
            _fmt(c.get("completion_tokens_per_pair"), ".0f"),
        ]) + " |")
    return "\n".join(lines)


def reason_table(cells: list[dict]) -> str:
    head = ("model", "template", "n", "reason non-empty", f"copies rubric (>={COPY_SHARE:.0%} of 4-grams)",
            "names the pair", "words (median)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        lines.append("| " + " | ".join([
            c["model"], c["template"], str(c["n"]), _fmt(c.get("reason_nonempty_share"), ".0%"),
            _fmt(c.get("reason_copies_rubric_share"), ".0%"), _fmt(c.get("reason_names_pair_share"), ".0%"),
            _fmt(c.get("reason_words_median"), ".0f"),
        ]) + " |")
    return "\n".join(lines)


def parse_cell_limits(items: list[str]) -> dict[tuple[str, str], int]:
    limits = {}
    for item in items:
        cell, _, n = item.rpartition("=")
        model, _, template = cell.partition(":")
        if not (model and template and n.isdigit()):
            raise SystemExit(f"--cell-limit wants MODEL:TEMPLATE=N, not {item!r}")
        limits[(model, template)] = int(n)
    return limits


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-1.5b"])
    parser.add_argument("--templates", nargs="+", default=["humpback", "humpback-short"])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--limit", type=int, help="judge only the first N pairs (rows alternate good/bad)")
    parser.add_argument("--cell-limit", action="append", default=[], metavar="MODEL:TEMPLATE=N",
                        help="a smaller limit for one slow cell, e.g. qwen2.5-coder-1.5b:humpback=20")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--no-force-logprobs", dest="force_logprobs", action="store_false",
                        help="do not ask for logprobs where the template does not (then expected = parsed score)")
    parser.add_argument("--json", help="write the figures, and every reply, to this file")
    args = parser.parse_args(argv)

    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.limit:
        rows = rows[: args.limit]
    limits = parse_cell_limits(args.cell_limit)
    log_path = local.state_dir() / "bench-llm.log"

    cells = []
    for model in args.models:
        for template_name in args.templates:
            n = limits.get((model, template_name), len(rows))
            cells.append(run_cell(model, template_name, rows[:n], args, log_path))
            print(table(cells[-1:]).splitlines()[-1], file=sys.stderr, flush=True)

    print(table(cells))
    print()
    print(reason_table(cells))
    print(f"\nAUC: unparsed replies count as the midpoint. 'expected' = expected_score, else the parsed score. "
          f"threads={args.threads} parallel={args.parallel}; s/pair excludes one warm-up call.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "data": os.path.relpath(Path(args.data).resolve(), ROOT),
            "threads": args.threads, "parallel": args.parallel, "force_logprobs": args.force_logprobs,
            "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg(), "python": platform.python_version(),
            "command": "bench/judge_quality.py " + " ".join(argv),
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "cells": cells}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
