"""Response generation: the `generation` for an instruction that has none, as the seed pipeline's
TextGeneration step does."""

from __future__ import annotations

from backtrans.llm import Completion
from backtrans.tasks import PromptTask

GENERATE_COLUMNS = ("generation", "generation_model", "generation_status", "generation_error")


class ResponseTask(PromptTask):
    """Writes the `generation` for an instruction that has none."""

    kind = "generate"
    output_columns = GENERATE_COLUMNS
    status_column = "generation_status"
    error_column = "generation_error"
    model_column = "generation_model"

    def key_fields(self, row: dict) -> tuple[str]:
        return (row["instruction"],)

    def skip(self, row: dict) -> dict | None:
        if row.get("generation"):
            # "given" in the task's own column; to the runner the row is simply done.
            return self.result({"generation": row["generation"], "generation_model": None}, "given") | {
                "status": "ok"}
        return None

    def read(self, row: dict, completion: Completion) -> tuple[dict, str]:
        text = completion.text.removeprefix(self.template.prefill).strip()
        return {"generation": text or None}, "" if text else "empty reply"
