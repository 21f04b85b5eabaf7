"""Where rows run: in this process on asyncio (backtrans.runner, the default), on a Ray cluster
(`ray_engine`, `--engine ray`), or as an OpenAI Batch API job (`batch`, `--batch`)."""


class EngineError(Exception):
    """The engine cannot run the job (a cluster it cannot join, or a job that can make no progress).

    The message names what is missing and what was kept: finished rows are in the store, so running the
    same command again resumes."""
