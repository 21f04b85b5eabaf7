"""`--engine ray` on one machine: a local Ray started by the CLI, against the fake server, then a rerun.

    .venv/bin/python bench/ray_engine.py                  # 4000 pairs, latency 0.25 s, --concurrency 64 per actor
    .venv/bin/python bench/ray_engine.py --markdown bench/out/ray_engine.md

For each setting: the whole command's wall time (Ray's start and stop included), the server's request count, and a
rerun of the same command (every row from the store shards: 0 requests). The default engine at the same total
number of requests in flight (actors x concurrency) is run beside it for comparison.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from throughput import ROOT, FakeServer, bench_parser, code_version, fresh_workdir, measure, our_cli, parse_summary


def main() -> int:
    parser = bench_parser(__doc__, "ray_engine", rows=4000, concurrency=64, concurrency_help="per actor")
    parser.add_argument("--actors", type=int, default=2, help="what the engine picks on this 2-core machine")
    args = parser.parse_args()

    work, pairs = fresh_workdir(args.workdir, args.rows)
    n, c, latency = args.rows, args.concurrency, args.latency
    in_flight = args.actors * c
    ideal = math.ceil(n / in_flight) * latency
    version = code_version()
    print(f"backtrans at {version}; {n} pairs, latency {latency}s, {args.actors} actors x {c} = {in_flight} in "
          f"flight, ideal {ideal:.2f}s")
    server = FakeServer(latency)
    rows = []
    try:
        plans = [("default engine", work / "asyncio.sqlite", in_flight, []),
                 ("--engine ray", work / "ray.sqlite", c, ["--engine", "ray"]),
                 ("--engine ray, rerun", work / "ray.sqlite", c, ["--engine", "ray"])]
        for label, store, concurrency, extra in plans:
            server.reset()
            m = measure(our_cli(pairs, work / "out.jsonl", store, server.url, concurrency) + extra, server)
            if m.returncode != 0:
                raise RuntimeError(f"CLI failed:\n{m.stderr[-3000:]}")
            s = parse_summary(m.stderr)
            rows.append({"label": label, "wall_s": m.wall_s, "processing_s": s["secs"], "requests": m.stats["requests"],
                         "ok": s["ok"], "cached": s["cached"], "other": m.other_cores})
            print(f"  {label:22} wall {m.wall_s:6.1f}s | processing {s['secs']:.1f}s | {n / m.wall_s:.0f} rows/s "
                  f"(wall) | {m.stats['requests']} requests | {s['ok']} ok, {s['cached']} from the store | "
                  f"other load {m.other_cores:.2f}", flush=True)
    finally:
        server.stop()
    lines = [f"backtrans at `{version}`; {n} pairs, latency {latency} s, {args.actors} actors x --concurrency {c} "
             f"({in_flight} in flight), ideal ceil({n}/{in_flight}) x {latency} = {ideal:.2f} s.", "",
             "| run | wall s | processing s | rows/s (wall) | share of ideal (processing) | requests | from the store "
             "| other load |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['wall_s']:.1f} | {r['processing_s']:.1f} | {n / r['wall_s']:.0f} | "
                     f"{100 * ideal / r['processing_s']:.0f}% | {r['requests']} | {r['cached']} | {r['other']:.2f} |")
    print("\n" + "\n".join(lines))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
