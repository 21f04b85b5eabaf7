"""Push and pull N records (default 1,000) to a real local Argilla, against bare `dataset.records.log`.

Starts its own Argilla stack (argilla-server on osmem, redis, worker) in a temp folder, then:
- bare: the same records built by hand with the SDK and logged with `dataset.records.log` into a dataset with the
  same settings (the floor: what any tool must pay the server);
- backtrans: `argilla.push` of the same scored rows (settings checks, content-hash ids, suggestions, metadata);
- pull: `argilla.pull` (every response of every record) and the merge;
and prints the times and backtrans' overhead over bare. Each push is repeated and the median reported.

    .venv/bin/python bench/argilla_push.py [--records 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backtrans import argilla as A  # noqa: E402
from backtrans import local  # noqa: E402
from backtrans.templates import load_template  # noqa: E402


def rows(n: int) -> list[dict]:
    return [{"instruction": f"Question {i}: how does item {i} work?", "generation": f"Item {i} works like this. " * 8,
             "score": i % 5 + 1, "expected_score": i % 5 + 0.7, "reason": "Clear and complete.",
             "model_name": "bench-judge", "status": "ok"} for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import argilla as rg

    data = rows(args.records)
    template = load_template("humpback")
    with tempfile.TemporaryDirectory() as home:
        stack = local.start_argilla(home=Path(home))
        try:
            config = A.ArgillaConfig(stack.url, stack.api_key)
            client = rg.Argilla(api_url=stack.url, api_key=stack.api_key)
            A.push(data[:1], "warm-up", config)  # creates the workspace; first requests warm the server
            bare, ours, pulls = [], [], []
            for attempt in range(args.repeats):
                records = [A.to_record(row, template, 4, "bench") for row in data]
                dataset = rg.Dataset(name=f"bare-{attempt}", workspace=config.workspace,
                                     settings=A.dataset_settings(template), client=client).create()
                started = time.perf_counter()
                dataset.records.log(records, batch_size=200)
                bare.append(time.perf_counter() - started)

                started = time.perf_counter()
                A.push(data, f"ours-{attempt}", config, template=template, run_id="bench", batch_size=200)
                ours.append(time.perf_counter() - started)

                started = time.perf_counter()
                decisions = A.pull(f"ours-{attempt}", config)
                A.merge(data, decisions, 4)
                pulls.append(time.perf_counter() - started)
                assert len(decisions) == args.records
        finally:
            stack.stop()
    bare_s, ours_s, pull_s = (statistics.median(x) for x in (bare, ours, pulls))
    overhead = ours_s / bare_s - 1
    print(f"{args.records} records, {args.repeats} repeats, medians (2 cores):")
    print(f"  bare dataset.records.log  {bare_s:6.2f} s   ({args.records / bare_s:6.0f} records/s)   runs {bare}")
    print(f"  backtrans push            {ours_s:6.2f} s   ({args.records / ours_s:6.0f} records/s)   runs {ours}")
    print(f"  backtrans pull + merge    {pull_s:6.2f} s   ({args.records / pull_s:6.0f} records/s)")
    print(f"  push overhead over bare: {overhead:+.1%} (goal <= +10%): {'met' if overhead <= 0.10 else 'NOT met'}")


if __name__ == "__main__":
    main()
