"""Generation steps: responses for instructions (as the seed pipeline's TextGeneration step does).

Self-augmentation proper (segmenting documents, filters, backward instruction generation) builds on
the same task shape and lands with issue 5.
"""

from __future__ import annotations

from backtrans.llm import Completion, LLMClient, LLMSettings
from backtrans.store import content_key
from backtrans.templates import Template, TemplateError

GENERATE_COLUMNS = ("generation", "generation_model", "generation_status", "generation_error")


class ResponseTask:
    """Writes the `generation` for an instruction that has none."""

    kind = "generate"
    output_columns = GENERATE_COLUMNS

    def __init__(self, template: Template, settings: LLMSettings):
        if template.kind != "generate":
            raise TemplateError(f"template {template.name!r} is a {template.kind} template, not a generate template")
        self.template = template
        self.settings = settings
        self.params = template.generation_params()

    def key(self, row: dict) -> str:
        return content_key(
            self.kind, self.template.digest, self.settings.cache_identity(), self.params, row["instruction"]
        )

    def skip(self, row: dict) -> dict | None:
        if row.get("generation"):
            return {"generation": row["generation"], "generation_model": None, "generation_status": "given",
                    "generation_error": "", "status": "ok"}
        return None

    async def call(self, client: LLMClient, row: dict) -> Completion:
        return await client.chat(self.template.render(**row), **self.params)

    def parse(self, row: dict, completion: Completion) -> dict:
        text = completion.text.removeprefix(self.template.prefill).strip()
        status = "ok" if text else "parse_error"
        return {
            "generation": text or None,
            "generation_model": completion.model or self.settings.model,
            "generation_status": status,
            "generation_error": "" if text else "empty reply",
            "status": status,
        }

    def failure(self, row: dict, error: str) -> dict:
        return {
            "generation": None,
            "generation_model": self.settings.model,
            "generation_status": "llm_error",
            "generation_error": error,
            "status": "llm_error",
        }
