"""Many visitors at once on one app: does the page starve the work?

Starts the fake OpenAI-compatible server (250 ms a call) and app.py as a Space runs it, then drives 1, 16, 48
and 96 visitors at once through gradio_client, each in its own thread with a file of its own (40 pairs by
default), judged with the app's model. Prints, per crowd: p50 / p95 / max visitor time (upload to done), the
app process's CPU per judged row, its RSS, and rows per second; first, the app's CPU with nobody on it.

    python bench/visitors.py [--visitors 1 16 48 96] [--rows 40] [--latency 0.25] [--app-root DIR] [--profile P] [--pin]

`--app-root` runs another checkout's app.py (an older commit, for before/after figures).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import JUDGE, AppServer, FakeProcess, client_for, upload, write_jsonl  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
IDLE_S = 5.0  # how long the app is watched with nobody on it


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pin(app_pid: int, fake_pid: int) -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--pin needs at least two cores")
    os.sched_setaffinity(app_pid, {cores[-1]})
    for pid in (fake_pid, 0):  # 0: this process, the visitors' threads
        os.sched_setaffinity(pid, set(cores[:-1]))


def visit(url: str, path: Path, times: list[float], errors: list[str], start: threading.Barrier) -> None:
    try:
        client = client_for(url)
        start.wait()
        began = time.perf_counter()
        upload(client, path)
        status = client.predict(**JUDGE, api_name="/judge")[-1]
        if "**Done:** " not in status:
            errors.append(status)
            return
        times.append(time.perf_counter() - began)
    except Exception as exc:  # noqa: BLE001 - a failed visitor is counted, not fatal to the bench
        errors.append(f"{type(exc).__name__}: {exc}")


def profiler(pid: int, out: Path) -> subprocess.Popen:
    """py-spy on the app (the thread holding the GIL only), stopped by SIGINT, which makes it write `out`."""
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--gil", "--rate", "100", "--format", "raw",
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def crowd(app: AppServer, folder: Path, visitors: int, rows: int, salt: str, profile: Path | None = None) -> dict:
    paths = [write_jsonl(folder / f"{salt}-{v}.jsonl", [
        {"instruction": f"{salt} visitor {v} question {i}?", "generation": f"answer {i}"} for i in range(rows)])
        for v in range(visitors)]
    times: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(visitors + 1)
    threads = [threading.Thread(target=visit, args=(app.url, path, times, errors, start)) for path in paths]
    for thread in threads:
        thread.start()
    start.wait()  # every client connected: the clock starts for all at once
    spy = profiler(app.process.pid, profile) if profile else None
    cpu_before, began = cpu_seconds(app.process.pid), time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    cpu = cpu_seconds(app.process.pid) - cpu_before
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    ordered = sorted(times) or [float("nan")]
    judged = len(times) * rows
    return {"visitors": visitors, "done": len(times), "errors": errors, "p50": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))], "max": ordered[-1],
            "cpu_ms_per_row": 1000 * cpu / judged if judged else float("nan"), "rss_mb": rss_mb(app.process.pid),
            "rows_per_s": judged / wall if wall else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, nargs="+", default=[1, 16, 48, 96])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--app-root", type=Path, default=ROOT)
    parser.add_argument("--profile", type=Path, metavar="PREFIX", help="record py-spy (raw stacks) on the app during "
                        "each crowd's measured window (clients already connected) to PREFIX.N.raw")
    parser.add_argument("--pin", action="store_true", help="the app on a core of its own, the visitors and the fake "
                        "server on the others: as on a Space, whose visitors are not on its machine")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="backtrans-visitors-"))
    fake = FakeProcess("--latency", str(args.latency))
    # As a Space runs it, with the app's model lent to visitors and no per-owner job cap in the way.
    app = AppServer(folder, {"OPENAI_BASE_URL": fake.url, "BACKTRANS_MODEL": "m", "SPACE_ID": "bench/visitors",
                             "BACKTRANS_SHARE_SERVER_KEY": "1", "BACKTRANS_ROWS_PER_DAY": "0",
                             "BACKTRANS_MAX_CONCURRENCY": "256", "BACKTRANS_OAUTH": "0",
                             "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
                             "HF_HUB_DISABLE_TELEMETRY": "1"}, root=args.app_root.resolve())
    if args.pin:
        pin(app.process.pid, fake.process.pid)
    print(f"app: {args.app_root.resolve()}; {args.rows} pairs a visitor, {args.latency * 1000:.0f} ms a call, "
          f"concurrency {JUDGE['concurrency']} a visitor")
    cpu_before = cpu_seconds(app.process.pid)
    time.sleep(IDLE_S)
    print(f"idle app: {1000 * (cpu_seconds(app.process.pid) - cpu_before) / IDLE_S:.0f} ms of CPU a second")
    print("| visitors | finished | p50 s | p95 s | max s | app CPU ms/row | RSS MB | rows/s |")
    print("|---|---|---|---|---|---|---|---|")
    alone = None
    try:
        for number, visitors in enumerate(args.visitors):
            profile = args.profile.with_name(f"{args.profile.name}.{number}.raw") if args.profile else None
            result = crowd(app, folder, visitors, args.rows, f"c{number}", profile)
            alone = alone if alone is not None else result["max"]
            print(f"| {visitors} | {result['done']}/{visitors} | {result['p50']:.2f} | {result['p95']:.2f} | "
                  f"{result['max']:.2f} | {result['cpu_ms_per_row']:.2f} | {result['rss_mb']:.0f} | "
                  f"{result['rows_per_s']:.0f} |", flush=True)
            for error in result["errors"][:3]:
                print(f"    error: {error[:200]}")
    finally:
        app.stop()
        fake.stop()
    if alone is not None:
        print(f"goal: every visitor within 10 x one alone + 5 s = {10 * alone + 5:.1f} s; app CPU <= 2 ms/row")


if __name__ == "__main__":
    main()
