"""Memory: peak RSS of `python -m backtrans score` over a long input, against a zero-latency fake server.

    .venv/bin/python bench/memory.py                       # 1,000,000 rows (can take over an hour on 2 cores)
    .venv/bin/python bench/memory.py --rows 10000 100000   # several sizes, to see whether RSS grows with N

The input is written to disk a line at a time; the CLI runs at concurrency 64 with a fresh store. Peak RSS is the
CLI process's own ru_maxrss (os.wait4); RSS is also sampled from /proc/PID/status every half second to show
whether it stays flat during the run. With several sizes, the largest run's rate and the RSS trend across sizes
are extrapolated to 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from throughput import ROOT, FakeServer, code_version, measure, our_cli, parse_summary, write_pairs

GOAL_MB = 500
TARGET_ROWS = 1_000_000


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_size(server: FakeServer, work: Path, n: int, concurrency: int) -> dict:
    pairs = work / f"pairs-{n}.jsonl"
    write_pairs(pairs, n)
    store, output = work / f"store-{n}.sqlite", work / f"scored-{n}.jsonl"
    server.reset()
    samples: list[int] = []

    def poll(pid: int) -> None:
        value = rss_kb(pid)
        if value:
            samples.append(value)

    m = measure(our_cli(pairs, output, store, server.url, concurrency), server, poll=poll)
    if m.returncode != 0:
        raise RuntimeError(f"CLI failed ({m.returncode}):\n{m.stderr[-2000:]}")
    s = parse_summary(m.stderr)
    store_mb = sum(p.stat().st_size for p in work.glob(f"store-{n}.sqlite*")) / 2**20
    row = {
        "rows": n, "requests": m.stats["requests"], "ok": s["ok"], "processing_s": s["secs"], "wall_s": m.wall_s,
        "rows_per_s": n / s["secs"], "rows_per_s_wall": n / m.wall_s, "peak_rss_mb": m.maxrss_kb / 1024,
        "rss_quartiles_mb": [samples[min(len(samples) - 1, int(q * len(samples)))] / 1024
                             for q in (0.25, 0.5, 0.75, 0.99)] if samples else [],
        "cpu_ms_per_row": 1000 * m.cpu_s / n, "other_cores": m.other_cores, "store_mb": store_mb,
        "input_mb": pairs.stat().st_size / 2**20, "output_mb": output.stat().st_size / 2**20,
    }
    for path in [pairs, output, *work.glob(f"store-{n}.sqlite*")]:
        path.unlink()
    return row


PREFLIGHT = (
    "import sys, time; from backtrans.records import PAIR_COLUMNS, iter_rows; t = time.perf_counter(); "
    "n = sum(1 for _ in iter_rows(sys.argv[1], {}, PAIR_COLUMNS)); print(n, time.perf_counter() - t)"
)


def run_preflight(server: FakeServer, work: Path, n: int) -> dict:
    """The CLI's validation pass alone (records.iter_rows, as FileJob.validate() calls it), over N rows: no calls,
    so 1,000,000 rows take a minute. It holds one duplicate-detection entry per row, the only per-row state."""
    pairs = work / f"preflight-{n}.jsonl"
    write_pairs(pairs, n)
    m = measure([sys.executable, "-c", PREFLIGHT, str(pairs)], server)
    pairs.unlink()
    if m.returncode != 0:
        raise RuntimeError(f"preflight failed:\n{m.stderr[-2000:]}")
    count, secs = m.stdout.split()
    return {"rows": int(count), "peak_rss_mb": m.maxrss_kb / 1024, "secs": float(secs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[TARGET_ROWS], help="input sizes (default 1000000)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "memory"))
    parser.add_argument("--preflight-rows", type=int, default=TARGET_ROWS,
                        help="also measure the validation pass alone over this many rows (0: skip)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the figures as a markdown table")
    args = parser.parse_args()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"machine: {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}; "
          f"concurrency {args.concurrency}, fake server latency 0")
    version = code_version()
    print(f"backtrans at {version}")
    server = FakeServer(0.0)
    results = []
    preflight = None
    try:
        if args.preflight_rows:
            preflight = run_preflight(server, work, args.preflight_rows)
            print(f"  validation pass alone over {preflight['rows']:,} rows: "
                  f"peak RSS {preflight['peak_rss_mb']:.0f} MB, {preflight['secs']:.1f}s", flush=True)
        for n in sorted(args.rows):
            r = run_size(server, work, n, args.concurrency)
            results.append(r)
            quartiles = ", ".join(f"{q:.0f}" for q in r["rss_quartiles_mb"])
            print(f"  {n:>9,} rows: {r['requests']:,} requests, {r['ok']:,} ok | peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(sampled at 25/50/75/99% of the run: {quartiles} MB) | processing {r['processing_s']:.1f}s = "
                  f"{r['rows_per_s']:.0f} rows/s | wall {r['wall_s']:.1f}s = {r['rows_per_s_wall']:.0f} rows/s | "
                  f"CPU {r['cpu_ms_per_row']:.2f} ms/row | store {r['store_mb']:.0f} MB | "
                  f"other load {r['other_cores']:.2f} cores", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    largest = results[-1]
    print("\nSUMMARY")
    lines = ["| rows | peak RSS MB | RSS at 25/50/75/99% of run MB | processing s | rows/s | wall s | rows/s (wall) "
             "| CPU ms/row | store MB | other load (cores) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        quartiles = " / ".join(f"{q:.0f}" for q in r["rss_quartiles_mb"])
        lines.append(f"| {r['rows']:,} | {r['peak_rss_mb']:.0f} | {quartiles} | {r['processing_s']:.1f} | "
                     f"{r['rows_per_s']:.0f} | {r['wall_s']:.1f} | "
                     f"{r['rows_per_s_wall']:.0f} | {r['cpu_ms_per_row']:.2f} | {r['store_mb']:.0f} | "
                     f"{r['other_cores']:.2f} |")
    notes = []
    if preflight:
        notes.append(f"the validation pass alone (read, check and fingerprint every row, no calls) over "
                     f"{preflight['rows']:,} rows peaks at {preflight['peak_rss_mb']:.0f} MB "
                     f"in {preflight['secs']:.0f}s")
    peak = max(r["peak_rss_mb"] for r in results)
    if largest["rows"] >= TARGET_ROWS:
        notes.append(f"peak RSS at {largest['rows']:,} rows: {peak:.0f} MB -> goal < {GOAL_MB} MB "
                     f"{'met' if peak < GOAL_MB else 'NOT MET'}")
    else:
        eta_s = TARGET_ROWS / largest["rows_per_s_wall"]
        notes.append(f"largest run: {largest['rows']:,} rows (not {TARGET_ROWS:,}); at "
                     f"{largest['rows_per_s_wall']:.0f} rows/s (wall), {TARGET_ROWS:,} rows would take about "
                     f"{eta_s / 60:.0f} min")
        if len(results) >= 2:
            first = results[0]
            slope = (largest["peak_rss_mb"] - first["peak_rss_mb"]) / (largest["rows"] - first["rows"])
            projected = largest["peak_rss_mb"] + max(0.0, slope) * (TARGET_ROWS - largest["rows"])
            notes.append(f"peak RSS grows {slope * 100_000:+.1f} MB per 100k rows between {first['rows']:,} and "
                         f"{largest['rows']:,} rows; linear extrapolation to {TARGET_ROWS:,}: {projected:.0f} MB -> "
                         f"goal < {GOAL_MB} MB {'met' if projected < GOAL_MB else 'NOT MET'} (extrapolated)")
        else:
            notes.append(f"peak RSS {peak:.0f} MB at {largest['rows']:,} rows; run two sizes to extrapolate")
    for line in lines + [""] + notes:
        print(line)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        head = f"{os.cpu_count()} cores, concurrency {args.concurrency}, latency 0, backtrans at {version}."
        Path(args.markdown).write_text("\n".join([head, ""] + lines + [""] + [f"- {n}" for n in notes]) + "\n")
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
