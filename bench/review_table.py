"""How long the Review step takes to show a page of a large run (goal: under 2 s for 100k rows).

Builds a judged run of N rows (default 100,000) in a Workbench, then times what a click in the Review
step costs on the server: filter + sort + page + histogram + counts (app.refresh_review), and Gradio's
own serialisation of the page it sends to the browser.

    .venv/bin/python bench/review_table.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

import app  # noqa: E402
from backtrans.review_table import STATUSES, Workbench  # noqa: E402
from backtrans.session import PAGE_SIZE  # noqa: E402


def build(rows: int) -> Workbench:
    rng = random.Random(0)
    words = "the a model answer question data python list train score judge helpful clear".split()
    frame = pd.DataFrame({
        "instruction": [" ".join(rng.choices(words, k=12)) + f" #{i}?" for i in range(rows)],
        "generation": [" ".join(rng.choices(words, k=80)) for _ in range(rows)],
    })
    bench = Workbench.from_frame(frame)
    scores = [rng.randint(1, 5) for _ in range(rows)]
    bench.frame["score"] = pd.array(scores, dtype="Float64")
    bench.frame["expected_score"] = pd.array([s - 0.3 for s in scores], dtype="Float64")
    bench.frame["reason"] = "The answer is complete and clear."
    bench.frame["status"] = "ok"
    return bench


def timed(label: str, call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    print(f"  {label:<48} median {median * 1000:8.1f} ms   max {max(times) * 1000:8.1f} ms")
    return max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    started = time.perf_counter()
    from backtrans.owners import owner_for
    from backtrans.workspace import Workspace

    bench = Workspace(Path(tempfile.mkdtemp())).session(owner_for(None, None))  # the app's refresh takes a session
    bench.workbench = build(args.rows)
    print(f"{args.rows:,} judged rows built in {time.perf_counter() - started:.1f}s; page size {PAGE_SIZE}")
    table = gr.Dataframe()
    everything = list(STATUSES)
    cases = {
        "first page, no filter": (4, 0, 10, everything, "", "input order", 1),
        "score >= 4, sorted by score": (4, 4, 10, everything, "", "score, high first", 1),
        "text search 'python'": (4, 0, 10, everything, "python", "input order", 1),
        "page 1000, expected score ascending": (4, 0, 10, everything, "", "expected score, low first", 1000),
        "threshold moved to 5": (5, 0, 10, everything, "", "input order", 1),
    }
    worst = 0.0
    for label, filters in cases.items():
        worst = max(worst, timed(label, lambda f=filters: table.postprocess(app.refresh_review(bench, *f)[0])))
    bench.workbench.override(10, True)
    first_page = cases["first page, no filter"]
    worst = max(worst, timed("with a keep override", lambda: app.refresh_review(bench, *first_page)))
    print(f"worst case: {worst * 1000:.0f} ms (goal < 2000 ms): {'met' if worst < 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
