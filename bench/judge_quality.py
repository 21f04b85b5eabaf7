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

  - whether a reason argues against its score: the share of reasons whose words describe another level of
    the rubric than the score they follow (`reason_level`, below), and the share with no level at all;
  - re-asks: how many replies parsed only when asked again;
  - two phrasings averaged: for every pair of templates judged on the same rows with the same model, the
    AUC of the mean of their expected scores (the cost is the sum of both cells' seconds).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/judge_quality.py \
        --models smollm2-135m qwen2.5-coder-1.5b --templates humpback humpback-short \
        --data bench/data/judge_labelled.jsonl bench/data/judge_hard.jsonl \
        --cell-limit qwen2.5-coder-1.5b:humpback@judge_hard=40 --json bench/out/judge_quality.json

Two labelled sets (docs/judge-models.md says how each was made):
- bench/data/judge_labelled.jsonl: label 1 = the question with its own answer; 0 = another question's answer,
  or a truncated/garbled one; `kind` says which.
- bench/data/judge_hard.jsonl: label "good" / "bad"; every bad answer is on topic, and `failure` names the
  rubric's failure it has (incomplete, wrong, forum, promotional, repeat, refusal).
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
HARD = ROOT / "bench" / "data" / "judge_hard.jsonl"


def start_server(model: str, threads: int, parallel: int, log_path: Path, n_ctx: int | None = None
                 ) -> local.LLMServer:
    if n_ctx is None:
        return local.start_llm(model, threads=threads, parallel=parallel, log_path=log_path, timeout_s=300)
    # Another context size than the model's registered one: the same server, its ModelSpec changed in the
    # server's own process (the context-length lever).
    import subprocess

    from backtrans.local.process import free_port, wait_http

    port = free_port()
    code = ("import dataclasses, sys; from backtrans.local import models, llm_server; "
            f"models.MODELS[{model!r}] = dataclasses.replace(models.MODELS[{model!r}], n_ctx={n_ctx}); "
            f"llm_server.serve_llm({model!r}, {port}, {threads}, {parallel})")
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
    server = local.LLMServer(process.pid, port, model)
    wait_http(f"http://127.0.0.1:{port}/health", 300, pid=process.pid)
    return server


def load_rows(path: str | Path) -> list[dict]:
    """A labelled set with `label` as 1/0 and `kind` as the kind of pair: `matched`/`good`, or the bad pair's
    kind (the hard set's `failure`)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        label = row["label"]
        row["label"] = 1 if label in (1, True, "good") else 0
        row["kind"] = row.get("kind") or (row.get("failure") or "good")
        rows.append(row)
    return rows


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


# Words that put a reason on a level of the rubric: low (1-2: incomplete, off-topic, wrong, promotional, a repeat,
# a refusal, no direct answer), mid (3: another person's voice), high (4-5: a good assistant answer). A reason
# with a low cue is low whatever else it says ("clear but incomplete"), then mid, then high; one with none has
# no level. Read off the rubric's own lines, and checked by hand on the replies in bench/out.
_LOW = re.compile(
    r"\b(incomplete|cut off|cuts off|unfinished|truncated|vague|off[- ]topic|irrelevant|not relevant|unrelated|"
    r"not related|does not (?:address|answer|provide|explain|mention|give|include|directly|fully|cover)|"
    r"doesn't (?:address|answer|provide|explain|mention|give|include|directly|fully|cover)|fails? to|"
    r"missing|lacks?|lacking|wrong|incorrect|inaccurate|error|mistake|false|misleading|refus\w*|declin\w*|"
    r"promot\w*|advert\w*|marketing|navigation|sales|repeat\w*|restat\w*|nonsens\w*|confus\w*|"
    r"not (?:a |an )?(?:good|helpful|useful|accurate|correct|clear|complete)|unhelpful|no answer|falls short|"
    r"only (?:a|the) high-level|"
    r"high-level|not what)\b", re.IGNORECASE)
_MID = re.compile(
    r"\b(blog|forum|personal|first[- ]person|another person|a person's|other people|someone else|anecdot\w*|"
    r"not (?:written )?(?:by|from|as) an ai|informal|casual|social media|comments? section)\b", re.IGNORECASE)
_HIGH = re.compile(
    r"\b(clear\w*|complete\w*|correct\w*|accurate\w*|helpful|well[- ]written|well[- ]organi[sz]ed|concise|"
    r"comprehensive|direct\w*|good|excellent|perfect|precise|detailed|thorough|relevant|focused|addresses|"
    r"answers the|explains|provides a|gives a|covers|useful)\b", re.IGNORECASE)


def reason_level(reason: str) -> str | None:
    """The rubric level a reason's words describe: "low", "mid", "high", or None."""
    if _LOW.search(reason):
        return "low"
    if _MID.search(reason):
        return "mid"
    if _HIGH.search(reason):
        return "high"
    return None


def score_level(score: int | None, lo: int = 1, hi: int = 5) -> str | None:
    """The rubric level of a score on the 1-5 scale (or the same thirds of another range)."""
    if score is None:
        return None
    share = (score - lo) / (hi - lo)
    return "low" if share < 0.5 else "mid" if share < 0.75 else "high"


def reason_figures(rows: list[dict], results: list[dict], rubric: list[str], lo: int = 1, hi: int = 5) -> dict:
    rubric_grams = set().union(*(_grams(_words(line)) for line in rubric)) if rubric else set()
    rubric_words = set(_words(" ".join(rubric)))
    reasons = [(res.get("reason") or "").strip() for res in results]
    n = len(reasons)
    if not n:
        return {}
    levels = [reason_level(r) for r in reasons]
    scored = [score_level(res.get("score"), lo, hi) for res in results]
    argues = [level is not None and level != mine for level, mine in zip(levels, scored, strict=True)]
    return {
        "reason_argues_share": round(sum(argues) / n, 3),
        "reason_no_level_share": round(sum(level is None for level in levels) / n, 3),
        "reason_argues_examples": [
            {"score": res.get("score"), "level": level, "reason": reason[:160]}
            for res, level, reason, bad in zip(results, levels, reasons, argues, strict=True) if bad][:8],
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
        keep = [i for i, r in enumerate(rows) if r["label"] == 1 or r["kind"] == kind]
        return _round(auc([values[i] for i in keep], [labels[i] for i in keep]))

    bad_kinds = sorted({r["kind"] for r in rows if r["label"] == 0})

    return {
        "n": n,
        "n_good": sum(labels),
        "n_bad": n - sum(labels),
        "auc_score": _round(auc(score_or_mid, labels)),
        "auc_score_parsed_only": _round(auc(
            [s for s in parsed if s is not None], [y for s, y in zip(parsed, labels, strict=True) if s is not None])),
        "auc_expected": _round(auc(expected, labels)),
        "auc_expected_by_kind": {kind: by_kind(expected, kind) for kind in bad_kinds},
        "auc_length_alone": _round(auc([float(len(r["generation"])) for r in rows], labels)),
        "parsed_first_ask_share": round(sum(res.get("asks", 1) == 1 and res["score"] is not None
                                            for res in results) / n, 3) if n else None,
        "reasks": sum(max(0, res.get("asks", 1) - 1) for res in results),
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


async def judge_rows(task: JudgeTask, settings: LLMSettings, rows: list[dict], label: str, store_path: str = ":memory:"
                     ) -> tuple[list[dict], list[float], Progress]:
    client = LLMClient(settings)
    store = RunStore(store_path)
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


def shown(template_name: str) -> str:
    """A bundled template by its name, a template file by its file name's stem."""
    return Path(template_name).stem if template_name.endswith(".jinja2") else template_name


def template_for(name: str, force_logprobs: bool):
    template = load_template(name)
    if force_logprobs and not template.logprobs:
        # Generation is greedy (temperature 0), so asking for logprobs does not change the text; it only lets
        # expected_score read the digit probabilities at the reply's own "Score: N".
        template = dataclasses.replace(template, logprobs=True)
    return template


def run_cell(model: str, template_name: str, data: str, rows: list[dict], server: local.LLMServer,
             args: argparse.Namespace) -> dict:
    template = template_for(template_name, args.force_logprobs)
    print(f"== {model} x {template_name} on {Path(data).stem}: {len(rows)} pairs", file=sys.stderr, flush=True)
    settings = LLMSettings(base_url=server.base_url, api_key="local", model=model, concurrency=args.parallel,
                           timeout_s=600, max_retries=1)
    task = JudgeTask(template, settings, reask=args.reask)
    results, seconds, progress = asyncio.run(judge_rows(task, settings, rows, f"{model}/{template_name}",
                                                        args.store))
    summary = summarise(rows, results, template.score_min, template.score_max)
    summary.update(reason_figures(rows, results, rubric_text(template.source), template.score_min,
                                  template.score_max))
    summary.update(
        model=model,
        template=shown(template_name),
        score_range=[template.score_min, template.score_max],
        data=Path(data).stem,
        n_ctx=args.n_ctx,
        template_logprobs=template.logprobs,
        max_tokens=template.max_tokens,
        prefill=template.prefill,
        seconds_per_pair=round(sum(seconds) / len(seconds), 2) if seconds else None,
        seconds_median=round(statistics.median(seconds), 2) if seconds else None,
        seconds_total=round(sum(seconds), 1),
        prompt_tokens_per_pair=round(progress.prompt_tokens / len(rows), 1) if rows else None,
        completion_tokens_per_pair=round(progress.completion_tokens / len(rows), 1) if rows else None,
        load_avg=os.getloadavg()[0],
        llm_errors=sum(r["status"] == "llm_error" for r in results),
        rows=[
            {k: row[k] for k in ("label", "kind")} | {"id": row.get("id"), "instruction": row["instruction"][:60]}
            | {k: res.get(k) for k in ("score", "expected_score", "status", "reason", "raw_output", "asks")}
            | {"seconds": round(s, 2)}
            for row, res, s in zip(rows, results, seconds, strict=True)
        ],
    )
    return summary


def averaged(cells: list[dict]) -> list[dict]:
    """Two phrasings averaged: every pair of cells of one model on the same rows, their expected scores' mean."""
    out = []
    for i, first in enumerate(cells):
        for second in cells[i + 1:]:
            same = (first["model"], first["data"], first["n"]) == (second["model"], second["data"], second["n"])
            if not same or [r["id"] for r in first["rows"]] != [r["id"] for r in second["rows"]]:
                continue
            # Each on its own scale's share (0 at the bottom, 1 at the top), so a 0-1 and a 1-5 template can be mixed.
            values = [(_share(a, first) + _share(b, second)) / 2
                      for a, b in zip(first["rows"], second["rows"], strict=True)]
            labels = [r["label"] for r in first["rows"]]
            out.append({"model": first["model"], "data": first["data"], "n": first["n"],
                        "templates": f"{first['template']} + {second['template']}",
                        "auc_expected": _round(auc(values, labels)),
                        "auc_first": first["auc_expected"], "auc_second": second["auc_expected"],
                        "seconds_per_pair": round((first["seconds_per_pair"] or 0) + (second["seconds_per_pair"] or 0),
                                                  2)})
    return out


def _share(row: dict, cell: dict) -> float:
    lo, hi = cell["score_range"]
    for key in ("expected_score", "score"):
        if row.get(key) is not None:
            return (float(row[key]) - lo) / (hi - lo)
    return 0.5


# --- output -----------------------------------------------------------------------------------------------


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def table(cells: list[dict]) -> str:
    head = ("model", "template", "set", "n", "AUC score", "AUC expected", "parsed", "logprobs",
            "good/bad score", "good/bad expected", "s/pair mean (median)", "out tok/pair")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        lines.append("| " + " | ".join([
            c["model"], c["template"], c.get("data", "-"), str(c["n"]), _fmt(c["auc_score"]),
            _fmt(c["auc_expected"]),
            _fmt(c["parsed_share"], ".0%"), _fmt(c["logprob_share"], ".0%"),
            f"{_fmt(c['mean_score_good'], '.2f')} / {_fmt(c['mean_score_bad'], '.2f')}",
            f"{_fmt(c['mean_expected_good'], '.2f')} / {_fmt(c['mean_expected_bad'], '.2f')}",
            f"{_fmt(c['seconds_per_pair'], '.1f')} ({_fmt(c.get('seconds_median'), '.1f')})",
            _fmt(c.get("completion_tokens_per_pair"), ".0f"),
        ]) + " |")
    return "\n".join(lines)


def reason_table(cells: list[dict]) -> str:
    head = ("model", "template", "set", "n", "reason argues with its score", "reason has no level",
            "reason non-empty", f"copies rubric (>={COPY_SHARE:.0%} of 4-grams)", "names the pair", "words (median)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        lines.append("| " + " | ".join([
            c["model"], c["template"], c.get("data", "-"), str(c["n"]), _fmt(c.get("reason_argues_share"), ".1%"),
            _fmt(c.get("reason_no_level_share"), ".0%"), _fmt(c.get("reason_nonempty_share"), ".0%"),
            _fmt(c.get("reason_copies_rubric_share"), ".0%"), _fmt(c.get("reason_names_pair_share"), ".0%"),
            _fmt(c.get("reason_words_median"), ".0f"),
        ]) + " |")
    return "\n".join(lines)


def kind_table(cells: list[dict]) -> str:
    kinds = sorted({kind for c in cells for kind in c.get("auc_expected_by_kind", {})})
    head = ("model", "template", "set", *[f"vs {kind}" for kind in kinds])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        by_kind = c.get("auc_expected_by_kind", {})
        lines.append("| " + " | ".join([c["model"], c["template"], c.get("data", "-"),
                                        *[_fmt(by_kind.get(kind)) for kind in kinds]]) + " |")
    return "\n".join(lines)


def averaged_table(rows: list[dict]) -> str:
    head = ("model", "templates averaged", "set", "n", "AUC expected (mean of both)", "each alone", "s/pair (sum)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["model"], r["templates"], r["data"], str(r["n"]), _fmt(r["auc_expected"]),
                                        f"{_fmt(r['auc_first'])} / {_fmt(r['auc_second'])}",
                                        _fmt(r["seconds_per_pair"], ".1f")]) + " |")
    return "\n".join(lines)


def parse_cell_limits(items: list[str]) -> dict[tuple[str, str, str], int]:
    """MODEL:TEMPLATE[@SET]=N, SET being a data file's stem (without it: every set)."""
    limits = {}
    for item in items:
        cell, _, n = item.rpartition("=")
        cell, _, data = cell.partition("@")
        model, _, template = cell.partition(":")
        if not (model and template and n.isdigit()):
            raise SystemExit(f"--cell-limit wants MODEL:TEMPLATE[@SET]=N, not {item!r}")
        limits[(model, template, data)] = int(n)
    return limits


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-1.5b"])
    parser.add_argument("--templates", nargs="+", default=["humpback", "humpback-short"])
    parser.add_argument("--data", nargs="+", default=[str(DATA), str(HARD)])
    parser.add_argument("--limit", type=int, help="judge only the first N pairs (rows alternate good/bad)")
    parser.add_argument("--cell-limit", action="append", default=[], metavar="MODEL:TEMPLATE[@SET]=N",
                        help="a smaller limit for one slow cell, e.g. qwen2.5-coder-1.5b:humpback@judge_hard=40")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, help="the server's context size (default: the model's own)")
    parser.add_argument("--reask", type=int, help="re-asks after a reply with no score (default: the template's)")
    parser.add_argument("--no-force-logprobs", dest="force_logprobs", action="store_false",
                        help="do not ask for logprobs where the template does not (then expected = parsed score)")
    parser.add_argument("--json", help="write the figures, and every reply, to this file (after every cell)")
    parser.add_argument("--store", default=":memory:", help="a run store to keep the replies in (default: none); "
                        "bench/align_quality.py reads the judge's scores from it, and a cell judged again is free")
    parser.add_argument("--reuse", action="store_true", help="keep the cells already in --json (same model, "
                        "template, set, size) instead of judging them again")
    parser.add_argument("--tables-from", nargs="+", metavar="JSON", help="judge nothing: print the tables of the "
                        "cells in these --json files (in this order), and the averages of every pair of them")
    args = parser.parse_args(argv)
    if args.tables_from:
        cells = [cell for path in args.tables_from for cell in json.loads(Path(path).read_text())["cells"]]
        print_tables(cells)
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": {"tables_from": args.tables_from}, "cells": cells,
                                                   "averaged": averaged(cells)}, indent=2, ensure_ascii=False))
        return

    datasets = {data: load_rows(data)[: args.limit] if args.limit else load_rows(data) for data in args.data}
    limits = parse_cell_limits(args.cell_limit)
    log_path = local.state_dir() / "bench-llm.log"
    done: list[dict] = []
    if args.reuse and args.json and Path(args.json).exists():
        done = json.loads(Path(args.json).read_text())["cells"]

    def cell_size(model: str, template: str, data: str) -> int:
        rows = datasets[data]
        stem = Path(data).stem
        return min(len(rows), limits.get((model, template, stem), limits.get((model, template, ""), len(rows))))

    def kept(model: str, template: str, data: str) -> dict | None:
        n = cell_size(model, template, data)
        return next((c for c in done if (c["model"], c["template"], c.get("data"), c["n"], c.get("n_ctx"))
                     == (model, shown(template), Path(data).stem, n, args.n_ctx)), None)

    cells: list[dict] = []
    for model in args.models:
        todo = [(t, d) for t in args.templates for d in args.data if kept(model, t, d) is None]
        server = None
        if todo:
            started = time.perf_counter()
            server = start_server(model, args.threads, args.parallel, log_path, args.n_ctx)
            print(f"{model}: server up in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
        try:
            for template_name in args.templates:
                for data in args.data:
                    cell = kept(model, template_name, data)
                    if cell is None:
                        cell = run_cell(model, template_name, data, datasets[data][: cell_size(model, template_name,
                                                                                                 data)], server, args)
                    cells.append(cell)
                    print(table(cells[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
                    if args.json:
                        write_json(args, argv, cells + [c for c in done if c not in cells])
        finally:
            if server is not None:
                server.stop()

    print_tables(cells)
    print(f"threads={args.threads} parallel={args.parallel}; s/pair excludes one warm-up call.")
    if args.json:
        write_json(args, argv, cells + [c for c in done if c not in cells])


def print_tables(cells: list[dict]) -> None:
    print(table(cells))
    print()
    print(kind_table(cells))
    print()
    print(reason_table(cells))
    pairs = averaged(cells)
    if pairs:
        print()
        print(averaged_table(pairs))
    print("\nAUC: unparsed replies count as the midpoint. 'expected' = expected_score, else the parsed score.")


def write_json(args: argparse.Namespace, argv: list[str], cells: list[dict]) -> None:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "data": [os.path.relpath(Path(d).resolve(), ROOT) for d in args.data],
        "threads": args.threads, "parallel": args.parallel, "force_logprobs": args.force_logprobs,
        "n_ctx": args.n_ctx, "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
        "python": platform.python_version(), "command": "bench/judge_quality.py " + " ".join(argv),
    }
    Path(args.json).write_text(json.dumps({"meta": meta, "cells": cells, "averaged": averaged(cells)}, indent=2,
                                          ensure_ascii=False))


if __name__ == "__main__":
    main()
