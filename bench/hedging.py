"""Hedged requests and the tail: p99 row latency and wall time with and without hedging, and the fault soak.

    .venv/bin/python bench/hedging.py tail      # 2000 pairs, 0.25 s latency, 2% of requests 5 s slower, c = 64
    .venv/bin/python bench/hedging.py soak      # the issue's fault mix at default settings (timeout 120 s)
    .venv/bin/python bench/hedging.py buffer    # memory: 50,000 rows pass a first row that takes 40 s
    .venv/bin/python bench/hedging.py reask     # the soak with hedging, --reask 0 against the default (1)
    .venv/bin/python bench/hedging.py tail soak --markdown bench/out/hedging.md

Every run is the whole `python -m backtrans score ...` command against tests/fakellm.py in its own process, from
a fresh store; `--no-hedge` is the only difference between the two runs of a pair. Row latency is read from the
store's call log: the time from a row's last attempt being sent to its answer, a duplicate's wait included.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
from pathlib import Path

from throughput import (
    ROOT,
    FakeServer,
    bench_parser,
    code_version,
    fresh_workdir,
    measure,
    our_cli,
    parse_summary,
    write_pairs,
)

COUNTS = re.compile(r"retries (\d+) · requests (\d+)"
                    r"(?: · hedges (\d+) \(([\d.]+)% extra load, (\d+) answered first\))?")
SOAK_FAULTS = ("--rate-429", "0.25", "--retry-after", "0.05", "--rate-500", "0.15", "--rate-hang", "0.05",
               "--rate-garbage", "0.05", "--seed", "11")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def one_run(pairs: Path, work: Path, server: FakeServer, concurrency: int, hedge: bool, name: str,
            extra: tuple[str, ...] = (), label: str | None = None) -> dict:
    server.reset()
    store = work / f"{name}-{'hedge' if hedge else 'plain'}.sqlite"
    store.unlink(missing_ok=True)
    output = work / f"{name}.jsonl"
    cmd = our_cli(pairs, output, store, server.url, concurrency) + list(extra) + ([] if hedge else ["--no-hedge"])
    m = measure(cmd, server)
    if m.returncode != 0:
        raise RuntimeError(f"CLI failed:\n{m.stderr[-2000:]}")
    summary = parse_summary(m.stderr)
    counts = COUNTS.search(m.stderr)
    with sqlite3.connect(store) as db:
        latencies = [r[0] for r in db.execute("SELECT latency_s FROM calls WHERE status != 'llm_error'")]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    reasks = re.search(r"re-asked (\d+) times", m.stderr)
    return {
        "label": label, "reasks": int(reasks.group(1)) if reasks else 0,
        "hedge": hedge, "wall_s": m.wall_s, "processing_s": summary["secs"], "ok": summary["ok"],
        "parse_error": summary["parse"], "llm_error": summary["err"], "rows": len(rows),
        "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "max": max(latencies),
        "server_requests": m.stats["requests"], "server_statuses": m.stats["statuses"],
        "retries": int(counts.group(1)), "requests": int(counts.group(2)),
        "hedges": int(counts.group(3) or 0), "hedge_share": float(counts.group(4) or 0),
        "hedge_wins": int(counts.group(5) or 0), "other": m.other_cores, "cpu_s": m.cpu_s,
    }


def show(run: dict) -> str:
    name = run["label"] or ("hedging" if run["hedge"] else "--no-hedge")
    return (f"  {name:10} wall {run['wall_s']:6.1f}s | rows {run['rows']} "
            f"({run['ok']} ok, {run['parse_error']} parse_error, {run['llm_error']} llm_error) | row latency p50 "
            f"{run['p50']:.2f}s p99 {run['p99']:.2f}s max {run['max']:.2f}s | requests {run['requests']} "
            f"(server {run['server_requests']}), retries {run['retries']}, hedges {run['hedges']} "
            f"({run['hedge_share']:.1f}%, {run['hedge_wins']} won), re-asks {run['reasks']} | other load "
            f"{run['other']:.2f}")


def table(title: str, runs: list[dict]) -> list[str]:
    lines = [f"**{title}**", "",
             "| | wall s | rows (ok / parse_error / llm_error) | row latency p50 / p99 / max s | requests (server) "
             "| retries | hedges (share, won) | re-asks | other load |",
             "|---|---:|---|---|---:|---:|---|---:|---:|"]
    for r in runs:
        name = r["label"] or ("hedging (default)" if r["hedge"] else "`--no-hedge`")
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r['rows']} "
                     f"({r['ok']} / {r['parse_error']} / {r['llm_error']}) | {r['p50']:.2f} / {r['p99']:.2f} / "
                     f"{r['max']:.2f} | {r['requests']} ({r['server_requests']}) | {r['retries']} | {r['hedges']} "
                     f"({r['hedge_share']:.1f}%, {r['hedge_wins']}) | {r['reasks']} | {r['other']:.2f} |")
    return lines + [""]


def buffer_runs(work: Path, n: int, head_s: float) -> list[str]:
    """Peak RSS with and without a slow first row: the reorder buffer holds keys, not rows."""
    print(f"buffer: {n} rows at no latency, concurrency 64, --no-hedge; the first row takes {head_s:g} s or not")
    runs = []
    server = FakeServer(0.0)
    try:
        for slow in (False, True):
            pairs = work / f"buffer-{slow}.jsonl"
            write_pairs(pairs, n)
            if slow:
                text = pairs.read_text().split("\n", 1)
                first = json.loads(text[0])
                first["instruction"] += f" [[hang={head_s:g}]]"
                pairs.write_text(json.dumps(first) + "\n" + text[1])
            server.reset()
            store = work / f"buffer-{slow}.sqlite"
            store.unlink(missing_ok=True)
            m = measure(our_cli(pairs, work / "buffer.jsonl", store, server.url, 64) + ["--no-hedge"], server)
            if m.returncode != 0:
                raise RuntimeError(f"CLI failed:\n{m.stderr[-2000:]}")
            summary = parse_summary(m.stderr)
            runs.append((slow, m.wall_s, m.maxrss_kb / 1024, summary["ok"], m.other_cores))
            print(f"  first row {'slow' if slow else 'fast'}: wall {m.wall_s:.1f}s, peak RSS "
                  f"{m.maxrss_kb / 1024:.0f} MB, {summary['ok']} ok, other load {m.other_cores:.2f}", flush=True)
    finally:
        server.stop()
    lines = [f"**Reorder buffer**: {n:,} rows, no latency, concurrency 64, `--no-hedge`", "",
             "| first row | wall s | peak RSS MB | ok | other load |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {f'takes {head_s:g} s' if slow else 'as fast as the rest'} | {wall:.1f} | {rss:.0f} | {ok} | "
              f"{other:.2f} |" for slow, wall, rss, ok, other in runs]
    return lines + [""]


def main() -> int:
    parser = bench_parser(__doc__, "hedging", rows=2000, concurrency=64)
    parser.add_argument("what", nargs="+", choices=["tail", "soak", "buffer", "reask"])
    parser.add_argument("--tail-rate", type=float, default=0.02)
    parser.add_argument("--tail", type=float, default=5.0, help="extra seconds for the slow requests")
    parser.add_argument("--hang", type=float, default=300.0, help="soak: how long a hung request hangs")
    parser.add_argument("--buffer-rows", type=int, default=50_000)
    parser.add_argument("--head-s", type=float, default=40.0, help="buffer: how long the first row takes")
    args = parser.parse_args()

    work, pairs = fresh_workdir(args.workdir, args.rows)
    version = code_version()
    print(f"backtrans at {version}")
    lines = [f"backtrans at `{version}`.", ""]
    if "tail" in args.what:
        print(f"tail: {args.rows} pairs, latency {args.latency}s, {args.tail_rate:.0%} of requests {args.tail}s "
              f"slower, concurrency {args.concurrency}")
        server = FakeServer(args.latency, "--tail-rate", str(args.tail_rate), "--tail", str(args.tail))
        try:
            runs = [one_run(pairs, work, server, args.concurrency, hedge, "tail") for hedge in (False, True)]
        finally:
            server.stop()
        for run in runs:
            print(show(run), flush=True)
        lines += table(f"Latency tail: {args.rows} pairs, {args.latency} s latency, {args.tail_rate:.0%} of requests "
                       f"{args.tail:g} s slower, concurrency {args.concurrency}", runs)
    if "soak" in args.what:
        print(f"soak: {args.rows} pairs, latency {args.latency}s, 25% 429 / 15% 500 / 5% hang {args.hang}s / 5% "
              f"garbage, concurrency {args.concurrency}, default timeout (120 s) and retries")
        server = FakeServer(args.latency, *SOAK_FAULTS, "--hang", str(args.hang))
        try:
            runs = []
            for hedge in (True, False):
                runs.append(one_run(pairs, work, server, args.concurrency, hedge, "soak"))
                print(show(runs[-1]), flush=True)
        finally:
            server.stop()
        lines += table(f"Fault soak: {args.rows} pairs, {args.latency} s latency, 25% 429s, 15% 500s, 5% hangs of "
                       f"{args.hang:g} s (past the 120 s timeout), 5% garbage; concurrency {args.concurrency}, "
                       "every other setting at its default", runs)
    if "reask" in args.what:
        print(f"reask: the soak ({args.rows} pairs, hangs {args.hang}s) with hedging, --reask 0 and the default 1")
        server = FakeServer(args.latency, *SOAK_FAULTS, "--hang", str(args.hang))
        try:
            runs = []
            for reask in ("0", "1"):
                label = "`--reask 0`" if reask == "0" else "`--reask 1` (default)"
                runs.append(one_run(pairs, work, server, args.concurrency, True, f"reask{reask}",
                                    ("--reask", reask), label))
                print(show(runs[-1]), flush=True)
        finally:
            server.stop()
        lines += table(f"Re-ask under the fault soak: {args.rows} pairs, {args.latency} s latency, 25% 429s, 15% "
                       f"500s, 5% hangs of {args.hang:g} s, 5% replies with no score; concurrency "
                       f"{args.concurrency}, hedging, every other setting at its default", runs)
    if "buffer" in args.what:
        lines += buffer_runs(work, args.buffer_rows, args.head_s)
    print("\n" + "\n".join(lines))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(lines))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
