"""Fairness of a shared app: does one user's big job hold up another user's small one?

Starts the fake OpenAI-compatible server and app.py (as a Space runs it), then times a second user's 30-row
judge job through gradio_client, alone and while a first user's big job (20,000 rows by default) is running.

    python bench/fairness.py [--big 20000] [--repeat 3] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import JUDGE, AppServer, FakeProcess, client_for, upload, write_jsonl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="backtrans-fairness-"))
    fake = FakeProcess("--latency", str(args.latency))
    served = AppServer(folder, {"OPENAI_BASE_URL": fake.url, "BACKTRANS_MODEL": "m"})
    try:
        alone = []
        for number in range(args.repeat):
            # a different template each time: nothing comes from the cache
            alone.append(_fresh(served.url, number))
        big = write_jsonl(folder / "big.jsonl", [{"instruction": f"big question {i}?", "generation": f"answer {i}"}
                                                  for i in range(args.big)])
        first = client_for(served.url)
        upload(first, big)
        job = first.submit(**{**JUDGE, "concurrency": 32}, api_name="/judge")
        time.sleep(3)  # the big job is under way
        beside = [_fresh(served.url, 100 + n) for n in range(args.repeat)]
        running = not job.done()
        done_before = fake.stats()["requests"]
        job.cancel()
    finally:
        served.stop()
        fake.stop()
    print(f"second user's 30-row job, alone:             median {statistics.median(alone):.2f} s "
          f"({', '.join(f'{t:.2f}' for t in alone)})")
    print(f"second user's 30-row job, beside {args.big:,} rows: median {statistics.median(beside):.2f} s "
          f"({', '.join(f'{t:.2f}' for t in beside)}); big job still running: {running}; "
          f"{done_before:,} LLM requests served by then")


def _fresh(url: str, salt: int) -> float:
    """A 30-row job no cache can answer: the sample with a custom template that differs per call."""
    client = client_for(url)
    client.predict(api_name="/load_sample")
    template = f"Rate this ({salt}):\n{{{{ instruction }}}}\n{{{{ generation }}}}"
    started = time.perf_counter()
    status = client.predict(**{**JUDGE, "template_name": "custom", "custom_text": template, "concurrency": 8},
                            api_name="/judge")[-1]
    elapsed = time.perf_counter() - started
    assert "**Done:** 30 rows" in status, status
    return elapsed


if __name__ == "__main__":
    main()
