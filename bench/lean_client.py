"""The lean client, lever by lever: the same CLI run with each CPU lever switched on in turn.

    .venv/bin/python bench/lean_client.py                       # 4000 pairs, latency 0.25 s, concurrency 256
    .venv/bin/python bench/lean_client.py --repeat 3 --markdown bench/out/lean_client.md

Each configuration is the whole `python -m backtrans score ...` command against tests/fakellm.py in its own
process, from a fresh store, with environment switches that the code reads for exactly this purpose:
BACKTRANS_HTTP (openai-httpx | openai-aiohttp | lean), BACKTRANS_ORJSON, BACKTRANS_GROUP_COMMIT, BACKTRANS_UVLOOP,
BACKTRANS_HTTP1.
Ideal = ceil(N / C) x latency. Reported: processing (the CLI's own summary), wall (the whole command, start-up
included), the share of ideal by wall time, the CLI's CPU per row, and the machine's other load.
Start-up alone (interpreter and imports, no rows) is measured separately with `python -c "import backtrans.cli"`.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

from throughput import ENV, ROOT, FakeServer, bench_parser, code_version, fresh_workdir, measure, our_cli, parse_summary

# Cumulative: each row adds one lever to the one above it.
LADDER = [
    ("openai SDK, httpx transport (the old client)",
     {"BACKTRANS_HTTP": "openai-httpx", "BACKTRANS_ORJSON": "0", "BACKTRANS_GROUP_COMMIT": "0",
      "BACKTRANS_UVLOOP": "0"}),
    ("+ SDK's aiohttp transport",
     {"BACKTRANS_HTTP": "openai-aiohttp", "BACKTRANS_ORJSON": "0", "BACKTRANS_GROUP_COMMIT": "0",
      "BACKTRANS_UVLOOP": "0"}),
    ("lean aiohttp POST instead of the SDK",
     {"BACKTRANS_HTTP": "lean", "BACKTRANS_ORJSON": "0", "BACKTRANS_GROUP_COMMIT": "0", "BACKTRANS_UVLOOP": "0",
      "BACKTRANS_HTTP1": "0"}),
    ("+ orjson", {"BACKTRANS_HTTP": "lean", "BACKTRANS_ORJSON": "1", "BACKTRANS_GROUP_COMMIT": "0",
                  "BACKTRANS_UVLOOP": "0", "BACKTRANS_HTTP1": "0"}),
    ("+ group commits", {"BACKTRANS_HTTP": "lean", "BACKTRANS_ORJSON": "1", "BACKTRANS_GROUP_COMMIT": "1",
                         "BACKTRANS_UVLOOP": "0", "BACKTRANS_HTTP1": "0"}),
    ("+ uvloop", {"BACKTRANS_HTTP": "lean", "BACKTRANS_ORJSON": "1", "BACKTRANS_GROUP_COMMIT": "1",
                  "BACKTRANS_UVLOOP": "1", "BACKTRANS_HTTP1": "0"}),
    ("+ its own HTTP/1.1 instead of aiohttp (the default now)",
     {"BACKTRANS_HTTP": "lean", "BACKTRANS_ORJSON": "1", "BACKTRANS_GROUP_COMMIT": "1", "BACKTRANS_UVLOOP": "1",
      "BACKTRANS_HTTP1": "1"}),
]


def startup_s(repeat: int = 5) -> float:
    """Median wall time of `python -c "import backtrans.cli"`: the imports every command pays."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import backtrans.cli"], cwd=ROOT, env=ENV, check=True)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = bench_parser(__doc__, "lean_client", rows=4000, concurrency=256)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is shown")
    args = parser.parse_args()

    work, pairs = fresh_workdir(args.workdir, args.rows)
    n, c, latency = args.rows, args.concurrency, args.latency
    ideal = math.ceil(n / c) * latency
    version = code_version()
    print(f"backtrans at {version}; {n} pairs, latency {latency} s, concurrency {c}, ideal {ideal:.2f} s")
    start = startup_s()
    print(f"start-up (python -c 'import backtrans.cli'): {start:.2f} s\n")
    server = FakeServer(latency)
    results = []
    saved = dict(ENV)
    try:
        for label, switches in LADDER:
            tries = []
            for attempt in range(args.repeat):
                server.reset()
                ENV.clear()
                ENV.update(saved, **switches)
                store = work / f"store-{len(results)}-{attempt}.sqlite"
                m = measure(our_cli(pairs, work / "scored.jsonl", store, server.url, c), server)
                if m.returncode != 0:
                    raise RuntimeError(f"CLI failed:\n{m.stderr[-2000:]}")
                s = parse_summary(m.stderr)
                tries.append({"processing_s": s["secs"], "wall_s": m.wall_s, "cpu_ms": 1000 * m.cpu_s / n,
                              "other": m.other_cores, "requests": m.stats["requests"], "ok": s["ok"]})
                print(f"  {label:48} processing {s['secs']:.2f}s | wall {m.wall_s:.2f}s = "
                      f"{100 * ideal / m.wall_s:.0f}% of ideal | CPU {1000 * m.cpu_s / n:.2f} ms/row | "
                      f"{m.stats['requests']} requests, {s['ok']} ok | other load {m.other_cores:.2f}", flush=True)
            tries.sort(key=lambda t: t["wall_s"])
            results.append((label, tries[(len(tries) - 1) // 2], tries))
    finally:
        ENV.clear()
        ENV.update(saved)
        server.stop()

    lines = [f"backtrans at `{version}`; {n} pairs, latency {latency} s, concurrency {c}, ideal "
             f"ceil({n}/{c}) x {latency} = {ideal:.2f} s; median of {args.repeat} runs; start-up "
             f"(`python -c 'import backtrans.cli'`) {start:.2f} s.", "",
             "| configuration | processing s | wall s | share of ideal (wall) | CPU ms/row | requests | other load "
             "(cores) | every run: wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for label, t, tries in results:
        lines.append(f"| {label} | {t['processing_s']:.2f} | {t['wall_s']:.2f} | {100 * ideal / t['wall_s']:.0f}% | "
                     f"{t['cpu_ms']:.2f} | {t['requests']} | {t['other']:.2f} | "
                     + " / ".join(f"{x['wall_s']:.2f} ({x['other']:.2f})" for x in tries) + " |")
    print("\n" + "\n".join(lines))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(lines) + "\n")
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
