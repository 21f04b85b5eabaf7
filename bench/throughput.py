"""Throughput: backtrans' CLI against distilabel 1.5.3, both judging the same pairs on the same fake server.

    .venv/bin/python bench/throughput.py                    # 2000 pairs, latency 0.25 s, c = 16 64 256, batch 10 and 50
    .venv/bin/python bench/throughput.py --markdown bench/out/throughput.md

The fake server (tests/fakellm.py) sleeps `--latency` seconds per request, so the best any client can do with C
requests in flight is ceil(N / C) * latency seconds ("ideal"). Every run starts from a reset server and a fresh store
(no cache hits), and the server's own request count proves that each system really made N calls.

Times reported:
- ours, processing: the `N rows in X.Xs` of the CLI's summary line (excludes interpreter start-up and validation);
- ours, wall: the whole `python -m backtrans score ...` command;
- distilabel, wall: the whole `python bench/distilabel_pipeline.py ...` command (imports, pipeline build, run);
- distilabel, pipeline.run(): its run call alone (starts its worker processes, runs, writes the distiset);
- distilabel, LLM span: first batch sent -> last batch answered, inside its worker (the most favourable to it).
"Other load" is the CPU time the machine spent outside the measured processes during a run, in cores: anything
above ~0.2 on this 2-core machine means another process competed for the CPU and the figures may be disturbed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTILABEL_VENV = ROOT / "bench" / ".venv-distilabel"
DISTILABEL_PY = DISTILABEL_VENV / "bin" / "python"
DISTILABEL_PACKAGES = ["distilabel==1.5.3", "openai", "requests"]
SUMMARY = re.compile(
    r"run (?P<run>\S+): (?P<rows>\d+) rows in (?P<secs>[\d.]+)s: (?P<ok>\d+) ok, (?P<parse>\d+) parse_error, "
    r"(?P<err>\d+) llm_error; (?P<cached>\d+) from the store"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOAL_CONCURRENCY = 64
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}


# --- helpers shared with bench/memory.py ----------------------------------------------------------------------
class FakeServer:
    """tests/fakellm.py in its own process."""

    def __init__(self, latency: float, *extra: str):
        """`extra`: more of tests/fakellm.py's options, such as faults or a latency tail."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakellm", "--port", "0", "--latency", str(latency), *extra],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        line = self.proc.stdout.readline()
        match = re.search(r"(http://\S+/v1)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.url = match.group(1)
        self.root = self.url.removesuffix("/v1")

    def stats(self) -> dict:
        with urllib.request.urlopen(self.root + "/_stats", timeout=10) as r:
            return json.load(r)

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.root + "/_reset", method="POST"), timeout=10).read()

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = parts[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class Measured:
    wall_s: float
    cpu_s: float  # the command and the children it waited for
    maxrss_kb: int
    returncode: int
    stdout: str
    stderr: str
    server_cpu_s: float
    other_cores: float  # average cores busy with something else during the run
    stats: dict = field(default_factory=dict)


def measure(cmd: list[str], server: FakeServer, poll=None, env: dict[str, str] | None = None) -> Measured:
    """Run a command to the end; its wall time, CPU, peak RSS (wait4), and the machine's other load.
    `poll(pid)` is called while it runs; `env` replaces the benchmark's environment (say, a Ray cluster's)."""
    busy0, server0 = machine_busy_s(), server.cpu_s()
    out_path, err_path = Path(f"/tmp/bench-{os.getpid()}.out"), Path(f"/tmp/bench-{os.getpid()}.err")
    with out_path.open("w") as out, err_path.open("w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or ENV, stdout=out, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if poll:
                poll(proc.pid)
            time.sleep(0.05 if not poll else 0.2)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    server_cpu = server.cpu_s() - server0
    other = max(0.0, (machine_busy_s() - busy0) - cpu - server_cpu) / wall
    stdout, stderr = out_path.read_text(), err_path.read_text()
    out_path.unlink(), err_path.unlink()
    return Measured(wall, cpu, usage.ru_maxrss, proc.returncode, stdout, stderr, server_cpu, other, server.stats())


def code_version() -> str:
    """The commit measured, and whether backtrans/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--short", "--", "backtrans"], cwd=ROOT, capture_output=True,
                               text=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def write_pairs(path: Path, n: int) -> None:
    """N distinct (instruction, generation) pairs, streamed to disk."""
    topics = ["photosynthesis", "binary search", "the French revolution", "compound interest", "TCP handshakes",
              "sourdough bread", "plate tectonics", "recursion", "the Krebs cycle", "supply and demand"]
    with path.open("w") as f:
        for i in range(n):
            topic = topics[i % len(topics)]
            f.write(json.dumps({
                "instruction": f"Explain {topic} to a curious twelve-year-old (question {i}).",
                "generation": f"Sure! {topic.capitalize()} is easier than it sounds. Here is the idea, "
                              f"step by step, with an everyday example number {i}.",
            }) + "\n")


def fresh_workdir(workdir: str, rows: int) -> tuple[Path, Path]:
    """An emptied work folder holding `rows` pairs: every benchmark starts from the same clean slate."""
    work = Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pairs = work / "pairs.jsonl"
    write_pairs(pairs, rows)
    return work, pairs


def bench_parser(doc: str, name: str, rows: int, concurrency: int, concurrency_help: str | None = None
                 ) -> argparse.ArgumentParser:
    """The options every fake-server benchmark shares: its size, the server's latency, requests in flight, where
    it works and where its markdown table goes. A benchmark adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, default=concurrency, help=concurrency_help)
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "out" / name))
    parser.add_argument("--markdown", metavar="PATH")
    return parser


def our_cli(input_path: Path, output: Path, store: Path, url: str, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "backtrans", "score", str(input_path), "-o", str(output), "--base-url", url,
            "--model", "fake", "--concurrency", str(concurrency), "--store", str(store), "--no-progress"]


def parse_summary(stderr: str) -> dict:
    match = SUMMARY.search(stderr)
    if not match:
        raise RuntimeError(f"no summary line in the CLI's stderr:\n{stderr[-2000:]}")
    return {k: (float(v) if k == "secs" else v if k == "run" else int(v)) for k, v in match.groupdict().items()}


# --- distilabel -------------------------------------------------------------------------------------------------
def ensure_distilabel() -> None:
    if DISTILABEL_PY.exists():
        check = subprocess.run([str(DISTILABEL_PY), "-c", "import distilabel, openai, requests; "
                                "print(distilabel.__version__)"], capture_output=True, text=True)
        if check.returncode == 0 and check.stdout.strip() == "1.5.3":
            return
    print(f"creating {DISTILABEL_VENV.relative_to(ROOT)} (distilabel 1.5.3; kept out of the project venv)...",
          file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", str(DISTILABEL_VENV)], check=True)
    subprocess.run([str(DISTILABEL_VENV / "bin" / "pip"), "install", "-q", *DISTILABEL_PACKAGES], check=True)


# --- the benchmark ------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="pairs to judge (default 2000)")
    parser.add_argument("--latency", type=float, default=0.25, help="fake server latency per request (s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 50],
                        help="distilabel input_batch_size values (50 is its default)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each setting K times and report the median run (default 1)")
    parser.add_argument("--no-distilabel", action="store_true", help="measure backtrans only")
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "throughput"))
    parser.add_argument("--markdown", metavar="PATH", help="also write the figures as a markdown table")
    args = parser.parse_args()

    work, pairs = fresh_workdir(args.workdir, args.rows)
    n, latency = args.rows, args.latency
    if not args.no_distilabel:
        ensure_distilabel()

    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}; load average before: {os.getloadavg()[0]:.2f}")
    version = code_version()  # before the runs: commits made meanwhile must not relabel them
    print(f"backtrans at {version}")
    print(f"{n} pairs, fake server latency {latency} s\n")
    server = FakeServer(latency)
    ours: list[dict] = []
    theirs: list[dict] = []
    try:
        print("backtrans (python -m backtrans score, fresh store each run)")
        for c in args.concurrency:
            tries = []
            for attempt in range(args.repeat):
                server.reset()
                store = work / f"store-c{c}-{attempt}.sqlite"  # fresh each time: no cache hits
                m = measure(our_cli(pairs, work / f"scored-c{c}.jsonl", store, server.url, c), server)
                if m.returncode != 0:
                    raise RuntimeError(f"CLI failed ({m.returncode}):\n{m.stderr[-2000:]}")
                s = parse_summary(m.stderr)
                ideal = math.ceil(n / c) * latency
                row = {
                    "concurrency": c, "requests": m.stats["requests"], "unique": m.stats["unique_prompts"],
                    "ok": s["ok"], "cached": s["cached"], "processing_s": s["secs"], "wall_s": m.wall_s,
                    "ideal_s": ideal, "pps_processing": n / s["secs"], "pps_wall": n / m.wall_s,
                    "ideal_share": ideal / s["secs"], "ideal_share_wall": ideal / m.wall_s,
                    "cpu_ms_per_row": 1000 * m.cpu_s / n, "server_cpu_s": m.server_cpu_s,
                    "other_cores": m.other_cores, "maxrss_mb": m.maxrss_kb / 1024,
                }
                tries.append(row)
                print(f"  c={c:<4} {row['requests']} requests ({row['ok']} ok, {row['cached']} cached) | "
                      f"processing {s['secs']:.1f}s = {row['pps_processing']:.0f} pairs/s | wall {m.wall_s:.1f}s = "
                      f"{row['pps_wall']:.0f} pairs/s | ideal {ideal:.2f}s -> {100 * row['ideal_share']:.0f}% of "
                      f"ideal ({100 * row['ideal_share_wall']:.0f}% by wall) | CPU {row['cpu_ms_per_row']:.1f} "
                      f"ms/row | other load {m.other_cores:.2f} cores", flush=True)
            ours.append(median_run(tries, "processing_s"))

        if not args.no_distilabel:
            print("\ndistilabel 1.5.3 (LoadDataFromDicts >> InstructionBacktranslation(OpenAILLM), use_cache=False)")
            for batch in args.batch_sizes:
                tries = []
                for _ in range(args.repeat):
                    server.reset()
                    cmd = [str(DISTILABEL_PY), str(ROOT / "bench" / "distilabel_pipeline.py"), str(pairs),
                           "--base-url", server.url]
                    if batch != 50:  # 50 is distilabel's default: leave it unset, as a user would
                        cmd += ["--batch-size", str(batch)]
                    m = measure(cmd, server)
                    if m.returncode != 0:
                        raise RuntimeError(f"distilabel failed ({m.returncode}):\n{m.stderr[-3000:]}")
                    result = json.loads(m.stdout.strip().splitlines()[-1])
                    shutil.rmtree(result["cache_dir"], ignore_errors=True)
                    row = {
                        "batch": result["input_batch_size"], "requests": m.stats["requests"],
                        "unique": m.stats["unique_prompts"], "rows": result["rows"], "scored": result["scored"],
                        "wall_s": m.wall_s, "pipeline_s": result["pipeline_s"], "llm_span_s": result["llm_span_s"],
                        "pps_wall": n / m.wall_s, "pps_pipeline": n / result["pipeline_s"],
                        "pps_span": n / result["llm_span_s"], "cpu_ms_per_row": 1000 * m.cpu_s / n,
                        "other_cores": m.other_cores,
                    }
                    tries.append(row)
                    print(f"  batch={row['batch']:<3} {row['requests']} requests "
                          f"({row['scored']}/{row['rows']} scored) | "
                          f"wall {m.wall_s:.1f}s = {row['pps_wall']:.0f} pairs/s | pipeline.run() "
                          f"{row['pipeline_s']:.1f}s = {row['pps_pipeline']:.0f} pairs/s | LLM span "
                          f"{row['llm_span_s']:.1f}s = {row['pps_span']:.0f} pairs/s | "
                          f"other load {m.other_cores:.2f} cores", flush=True)
                theirs.append(median_run(tries, "pipeline_s"))
    finally:
        server.stop()

    every = [t for r in ours + theirs for t in r["tries"]]
    checks = [t["requests"] == n and t["unique"] == n for t in every]
    print(f"\nevery run made exactly {n} calls with {n} distinct prompts: {'yes' if all(checks) else 'NO'}")
    goals = summarise(ours, theirs, n, latency)
    disturbed = [t for t in every if t["other_cores"] > 0.2]
    if disturbed:
        print(f"\nWARNING: {len(disturbed)} run(s) shared the CPU with other processes (other load > 0.2 cores); "
              "rerun on a quiet machine for clean figures.")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(ours, theirs, goals, n, latency, version))
        print(f"\nwrote {args.markdown}")
    return 0


def median_run(tries: list[dict], key: str) -> dict:
    """With --repeat, the run with the median time stands for the setting; every try is kept for the checks."""
    ranked = sorted(tries, key=lambda r: r[key])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["tries"] = tries
    return chosen


def ratio_table(ours: list[dict], theirs: list[dict]) -> list[dict]:
    rows = []
    for o in ours:
        for t in theirs:
            rows.append({
                "concurrency": o["concurrency"], "batch": t["batch"],
                "wall": o["pps_wall"] / t["pps_wall"],
                "own": o["pps_processing"] / t["pps_pipeline"],
                "span": o["pps_processing"] / t["pps_span"],
            })
    return rows


def summarise(ours: list[dict], theirs: list[dict], n: int, latency: float) -> list[tuple[str, str, bool]]:
    print("\n" + "=" * 100 + "\nSUMMARY")
    for o in ours:
        print(f"  backtrans c={o['concurrency']:<4} {o['pps_processing']:6.0f} pairs/s processing, "
              f"{o['pps_wall']:6.0f} pairs/s wall; {100 * o['ideal_share']:.0f}% of ideal")
    for t in theirs:
        print(f"  distilabel batch={t['batch']:<3} {t['pps_wall']:5.0f} pairs/s wall, {t['pps_pipeline']:5.0f} "
              f"pipeline.run(), {t['pps_span']:5.0f} LLM span")
    if theirs:
        print("  ratios, backtrans / distilabel (wall/wall | processing/pipeline.run() | processing/LLM span):")
        for r in ratio_table(ours, theirs):
            print(f"    c={r['concurrency']:<4} vs batch={r['batch']:<3} {r['wall']:5.1f}x | {r['own']:5.1f}x | "
                  f"{r['span']:5.1f}x")
    goals: list[tuple[str, str, bool]] = []
    at = {o["concurrency"]: o for o in ours}
    if GOAL_CONCURRENCY in at:
        share = at[GOAL_CONCURRENCY]["ideal_share"]
        goals.append((f">= 90% of ideal at concurrency {GOAL_CONCURRENCY}", f"{100 * share:.0f}% "
                      f"({100 * at[GOAL_CONCURRENCY]['ideal_share_wall']:.0f}% by wall)", share >= 0.9))
        for batch, target in ((10, 5.0), (50, 1.5)):
            for r in ratio_table([at[GOAL_CONCURRENCY]], [t for t in theirs if t["batch"] == batch]):
                worst = min(r["wall"], r["own"])
                goals.append((f">= {target}x distilabel at batch {batch} (backtrans c={GOAL_CONCURRENCY})",
                              f"{r['wall']:.1f}x wall, {r['own']:.1f}x own time, {r['span']:.1f}x vs its LLM span",
                              worst >= target))
    print("  goals (ratios must hold both wall/wall and processing/pipeline.run()):")
    for name, value, met in goals:
        print(f"    [{'met' if met else 'NOT MET'}] {name}: {value}")
    return goals


def runs(row: dict, key: str) -> str:
    return " / ".join(f"{t[key]:.1f} ({t['other_cores']:.2f})" for t in row["tries"])


def markdown(ours: list[dict], theirs: list[dict], goals, n: int, latency: float, version: str) -> str:
    repeat = len((ours or theirs)[0]["tries"])
    lines = [f"{n} pairs, fake server latency {latency} s, {os.cpu_count()} cores, backtrans at {version}; "
             f"each setting run {repeat}x, the median run shown (every run: time, and other load in cores).", "",
             "| backtrans concurrency | requests | processing s | wall s | ideal s | pairs/s (processing) "
             "| pairs/s (wall) | share of ideal | CPU ms/row | other load (cores) | every run: processing s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for o in ours:
        lines.append(f"| {o['concurrency']} | {o['requests']} | {o['processing_s']:.1f} | {o['wall_s']:.1f} | "
                     f"{o['ideal_s']:.2f} | {o['pps_processing']:.0f} | {o['pps_wall']:.0f} | "
                     f"{100 * o['ideal_share']:.0f}% ({100 * o['ideal_share_wall']:.0f}% by wall) | "
                     f"{o['cpu_ms_per_row']:.1f} | {o['other_cores']:.2f} | {runs(o, 'processing_s')} |")
    if theirs:
        lines += ["", "| distilabel input_batch_size | requests | scored | wall s | pipeline.run() s | LLM span s "
                  "| pairs/s (wall) | pairs/s (pipeline.run) | pairs/s (LLM span) | other load (cores) "
                  "| every run: pipeline.run() s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for t in theirs:
            lines.append(f"| {t['batch']} | {t['requests']} | {t['scored']} | {t['wall_s']:.1f} | "
                         f"{t['pipeline_s']:.1f} | {t['llm_span_s']:.1f} | {t['pps_wall']:.0f} | "
                         f"{t['pps_pipeline']:.0f} | {t['pps_span']:.0f} | {t['other_cores']:.2f} | "
                         f"{runs(t, 'pipeline_s')} |")
        lines += ["", "| backtrans c | vs distilabel batch | wall / wall | processing / pipeline.run() "
                  "| processing / LLM span |", "|---:|---:|---:|---:|---:|"]
        for r in ratio_table(ours, theirs):
            lines.append(f"| {r['concurrency']} | {r['batch']} | {r['wall']:.1f}x | {r['own']:.1f}x | "
                         f"{r['span']:.1f}x |")
    if goals:
        lines += ["", "| goal | measured | |", "|---|---|---|"]
        lines += [f"| {name} | {value} | {'met' if met else '**not met**'} |" for name, value, met in goals]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
