"""`--engine ray`: a local Ray started by the CLI, or a real cluster of one and then two worker nodes.

    .venv/bin/python bench/ray_engine.py          # local Ray: 4000 pairs, latency 0.25 s, --concurrency 64 per actor
    .venv/bin/python bench/ray_engine.py --markdown bench/out/ray_engine.md
    .venv/bin/python bench/ray_engine.py --cluster --rows 3000 --concurrency 16 --markdown bench/out/ray_cluster.md

Local: for each setting, the whole command's wall time (Ray's start and stop included), the server's request
count, and a rerun of the same command (every row from the store shards: 0 requests). The default engine at the
same total number of requests in flight (actors x concurrency) is run beside it for comparison.

--cluster: a cluster started as a user starts one (tests/raycluster.py: `ray start` per node, a head with no
CPUs, workers with one CPU each, token authentication on), joined through RAY_ADDRESS with the pool sized by the
engine. With one worker node and then two: the first job on the fresh cluster (16 pairs; it also ships the
package to each node), the fixed start-up (the same command on 16 pairs again: joining, starting the actors,
exiting), the wall time on all the pairs, rows/s over the wall time and over the time past start-up, the
requests, and where the actors ran (Ray's GCS actor table).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from throughput import ROOT, FakeServer, bench_parser, code_version, fresh_workdir, measure, our_cli, parse_summary


def main() -> int:
    parser = bench_parser(__doc__, "ray_engine", rows=4000, concurrency=64, concurrency_help="per actor")
    parser.add_argument("--actors", type=int, default=2, help="local: what the engine picks on this 2-core machine")
    parser.add_argument("--cluster", action="store_true", help="one worker node, then two, instead of a local Ray")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="--cluster: worker nodes to measure")
    args = parser.parse_args()
    return cluster(args) if args.cluster else local(args)


def local(args) -> int:
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
    return _report(lines, args.markdown)


def cluster(args) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.raycluster import RayCluster

    work, pairs = fresh_workdir(args.workdir, args.rows)
    small = work / "small.jsonl"
    small.write_text("".join(pairs.read_text().splitlines(keepends=True)[:16]))
    n, c, latency = args.rows, args.concurrency, args.latency
    version = code_version()
    print(f"backtrans at {version}; {n} pairs, latency {latency}s, --concurrency {c} per actor; worker nodes "
          f"{args.nodes} (1 CPU each), a head with none, token auth on")
    server = FakeServer(latency)
    rows = []
    try:
        for nodes in args.nodes:
            ray_cluster = RayCluster(head_cpus=0, workers=nodes, token=True)
            try:
                env = ray_cluster.driver_env()
                small_runs = []
                for attempt in ("first", "again"):  # the first job on a fresh cluster also ships the package
                    server.reset()
                    small_runs.append(measure(our_cli(small, work / "small-out.jsonl", work / f"small-{nodes}-"
                                                      f"{attempt}.sqlite", server.url, c) + ["--engine", "ray"],
                                              server, env=env))
                    if small_runs[-1].returncode != 0:
                        raise RuntimeError(f"CLI failed:\n{small_runs[-1].stderr[-3000:]}")
                first, start = small_runs
                server.reset()
                driver: list[int] = []  # the CLI's PID: Ray's job table knows the job by it
                m = measure(our_cli(pairs, work / "out.jsonl", work / f"full-{nodes}.sqlite", server.url, c)
                            + ["--engine", "ray"], server, poll=driver.append, env=env)
                if m.returncode != 0:
                    raise RuntimeError(f"CLI failed:\n{m.stderr[-3000:]}")
                s = parse_summary(m.stderr)
                pool = ray_cluster.actors(driver[0]) if driver else []
                placed, actors = sorted({a["node"] for a in pool}), len(pool)
            finally:
                ray_cluster.stop()
            row = {"nodes": nodes, "actors": actors, "first_s": first.wall_s, "start_s": start.wall_s,
                   "wall_s": m.wall_s, "requests": m.stats["requests"], "ok": s["ok"], "placed": placed,
                   "other": m.other_cores}
            rows.append(row)
            print(f"  {nodes} worker node(s), {actors} actors on {', '.join(placed)}: first job {first.wall_s:.1f}s, "
                  f"start-up {start.wall_s:.1f}s | "
                  f"wall {m.wall_s:.1f}s | {n / m.wall_s:.0f} rows/s (wall), "
                  f"{n / max(m.wall_s - start.wall_s, 1e-9):.0f} rows/s past start-up | {m.stats['requests']} "
                  f"requests | {s['ok']} ok | other load {m.other_cores:.2f}", flush=True)
    finally:
        server.stop()
    lines = [f"backtrans at `{version}`; {n} pairs, latency {latency} s, --concurrency {c} per actor, a head with no "
             "CPUs and 1-CPU workers (token auth on), the pool sized by the engine.", "",
             "| worker nodes | actors (where) | first job s (16 pairs) | start-up s (16 pairs again) | wall s | rows/s "
             "(wall) | rows/s past start-up | requests | ok | other load |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['nodes']} | {r['actors']} ({', '.join(r['placed'])}) | {r['first_s']:.1f} | "
                     f"{r['start_s']:.1f} | {r['wall_s']:.1f} | {n / r['wall_s']:.0f} | "
                     f"{n / max(r['wall_s'] - r['start_s'], 1e-9):.0f} | "
                     f"{r['requests']} | {r['ok']} | {r['other']:.2f} |")
    return _report(lines, args.markdown)


def _report(lines: list[str], markdown: str | None) -> int:
    print("\n" + "\n".join(lines))
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
