"""The distilabel 1.5.3 side of `bench/throughput.py`. Runs in bench/.venv-distilabel, never in the project venv.

The same pipeline as distilabel's own InstructionBacktranslation example: LoadDataFromDicts ->
InstructionBacktranslation(llm=OpenAILLM(...), input_batch_size=B), run with use_cache=False and a throw-away
DISTILABEL_CACHE_DIR so that every pair really reaches the server. Prints one JSON line on stdout:
the pipeline.run() time, the LLM span (first batch sent -> last batch answered, measured in the step's worker
process), and how many rows came back with a score.

    bench/.venv-distilabel/bin/python bench/distilabel_pipeline.py INPUT.jsonl --base-url URL --batch-size 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="JSONL with instruction and generation")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", default="fake")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="InstructionBacktranslation input_batch_size (default: distilabel's own, 50)")
    args = parser.parse_args()

    cache_dir = tempfile.mkdtemp(prefix="distilabel-cache-")
    os.environ["DISTILABEL_CACHE_DIR"] = cache_dir
    os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
    spans_path = os.path.join(cache_dir, "llm-spans.txt")

    from distilabel.models import OpenAILLM
    from distilabel.models.llms.base import AsyncLLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import InstructionBacktranslation

    # Time each concurrent batch inside the worker (distilabel forks its step processes, so this patch is
    # inherited). Only timestamps are written; the calls themselves are distilabel's own.
    original = AsyncLLM._agenerate

    async def timed(self, inputs, num_generations=1, **kwargs):
        started = time.time()
        try:
            return await original(self, inputs, num_generations, **kwargs)
        finally:
            with open(spans_path, "a") as spans:
                spans.write(f"{started} {time.time()} {len(inputs)}\n")

    AsyncLLM._agenerate = timed

    with open(args.input) as f:
        data = [json.loads(line) for line in f if line.strip()]

    task_kwargs = {} if args.batch_size is None else {"input_batch_size": args.batch_size}
    with Pipeline(name="bench-instruction-backtranslation") as pipeline:
        load = LoadDataFromDicts(data=data)
        judge = InstructionBacktranslation(
            llm=OpenAILLM(base_url=args.base_url, api_key="x", model=args.model),
            **task_kwargs,
        )
        load >> judge

    started = time.perf_counter()
    distiset = pipeline.run(use_cache=False)
    pipeline_s = time.perf_counter() - started

    rows = distiset["default"]["train"]
    scores = rows["score"]
    spans = []
    if os.path.exists(spans_path):
        with open(spans_path) as f:
            spans = [tuple(float(x) for x in line.split()) for line in f if line.strip()]
    llm_span_s = (max(s[1] for s in spans) - min(s[0] for s in spans)) if spans else None
    print(json.dumps({
        "rows": len(rows),
        "scored": sum(score is not None for score in scores),
        "input_batch_size": judge.input_batch_size,
        "batches": len(spans),
        "pipeline_s": round(pipeline_s, 3),
        "llm_span_s": None if llm_span_s is None else round(llm_span_s, 3),
        "cache_dir": cache_dir,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
