"""`python -m backtrans.local serve-llm ...`: the command line `start_llm` runs the llama.cpp server with.

Not for people (they use `python -m backtrans local up`); it is how the server gets a process of its own.
"""

from __future__ import annotations

import argparse

from backtrans.local.llm_server import serve_llm
from backtrans.local.models import DEFAULT_MODEL


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backtrans.local")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve-llm")
    serve.add_argument("--model", default=DEFAULT_MODEL)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--threads", type=int, default=2)
    serve.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args(argv)
    serve_llm(args.model, args.port, args.threads, args.parallel)


if __name__ == "__main__":
    main()
