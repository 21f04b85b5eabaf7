"""Argilla at scale: push, resume and pull N records (default 20,000) through a real local Argilla.

Starts its own Argilla stack (argilla-server on osmem, redis, worker) in a temp folder. Each phase runs in its
own child process so that its peak memory (ru_maxrss) is its own:
- push: `argilla.push` of N scored rows made on the fly, batches of --batch-size; the rate per quarter
  of the run shows whether it slows as the dataset grows (what an extrapolation to 100k rests on);
- rerun: the same push again, which lists the ids and push hashes on the server and sends nothing
  (the cost of resuming a finished push);
- pull: `argilla.pull` of every record with its responses, and the merge.
Then the peak resident memory (VmHWM) of each server process.

    .venv/bin/python bench/argilla_scale.py [--records 20000] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backtrans import argilla as A  # noqa: E402

DATASET = "scale"


def rows(n: int):
    for i in range(n):
        yield {"instruction": f"Question {i}: how does item {i} work?", "generation": f"Item {i} works like this. " * 8,
               "score": i % 5 + 1, "expected_score": i % 5 + 0.7, "reason": "Clear and complete.",
               "model_name": "bench-judge", "status": "ok"}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(phase: str, records: int, batch_size: int) -> dict:
    config = A.ArgillaConfig.from_env()
    baseline = _peak_mib()
    marks: list[tuple[float, int]] = []
    started = time.perf_counter()
    if phase in ("push", "rerun"):
        report = A.push(rows(records), DATASET, config, batch_size=batch_size,
                        on_progress=lambda n: marks.append((time.perf_counter(), n)))
        result = {"pushed": report.pushed, "skipped": report.skipped}
    else:
        decisions = A.pull(DATASET, config)
        merged = A.merge(rows(records), decisions, 4)
        result = {"pulled": len(decisions), "merged": len(merged)}
    elapsed = time.perf_counter() - started
    quarters = []
    if phase == "push" and marks:
        # records/s within each quarter of the run, from the progress callbacks
        last_t, last_n = started, 0
        for q in range(1, 5):
            target = records * q // 4
            t, n = next((t, n) for t, n in marks if n >= target)
            if n > last_n:  # a batch larger than a quarter covers two
                quarters.append(round((n - last_n) / (t - last_t), 1))
                last_t, last_n = t, n
    return {"phase": phase, "seconds": round(elapsed, 2), "records_per_s": round(records / elapsed, 1),
            "peak_rss_mib": round(_peak_mib(), 1), "start_rss_mib": round(baseline, 1),
            "quarters_records_per_s": quarters, **result}


def _hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--phase", choices=["push", "rerun", "pull"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(child(args.phase, args.records, args.batch_size)))
        return

    from backtrans import local

    results = []
    with tempfile.TemporaryDirectory() as home:
        stack = local.start_argilla(home=Path(home))
        try:
            # The key goes to the children through the environment, never on a command line.
            env = {**os.environ, "ARGILLA_API_URL": stack.url, "ARGILLA_API_KEY": stack.api_key}
            for phase in ("push", "rerun", "pull"):
                done = subprocess.run([sys.executable, __file__, "--phase", phase, "--records", str(args.records),
                                       "--batch-size", str(args.batch_size)], env=env, capture_output=True,
                                      text=True, check=False)
                if done.returncode != 0:
                    sys.exit(f"{phase} failed:\n{done.stderr[-3000:]}")
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), flush=True)
            servers = {name: _hwm_mib(pid) for name, pid in stack.pids.items()}
        finally:
            stack.stop()
    push, rerun, pull = results
    assert push["pushed"] == args.records and rerun["pushed"] == 0 and pull["pulled"] == args.records
    n = args.records
    print(f"\n{n} records, batches of {args.batch_size}, 2 cores:")
    print(f"  push         {push['seconds']:8.1f} s  {push['records_per_s']:7.1f} records/s  "
          f"peak RSS {push['peak_rss_mib']} MiB (at start, before the SDK loads: {push['start_rss_mib']} MiB)")
    print(f"    records/s by quarter of the run: {push['quarters_records_per_s']}")
    print(f"  rerun (resume, nothing to send) {rerun['seconds']:6.1f} s  peak RSS {rerun['peak_rss_mib']} MiB")
    print(f"  pull + merge {pull['seconds']:8.1f} s  {pull['records_per_s']:7.1f} records/s  "
          f"peak RSS {pull['peak_rss_mib']} MiB")
    print(f"  server peak RSS (VmHWM, MiB): {servers}")
    scale = 100_000 / n
    print(f"  linear extrapolation to 100,000 (not measured): push ~{push['seconds'] * scale / 60:.0f} min, "
          f"pull ~{pull['seconds'] * scale:.0f} s")


if __name__ == "__main__":
    main()
