"""Where rows run: in this process on asyncio (backtrans.runner, the default), on a Ray cluster
(`ray_engine`, `--engine ray`), or as an OpenAI Batch API job (`batch`, `--batch`)."""
