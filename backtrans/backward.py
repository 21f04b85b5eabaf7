"""The backward model of instruction backtranslation, played by a prompted model: it writes the
instruction that a web segment answers, with a few seed (instruction, output) pairs as examples."""

from __future__ import annotations

import re

from backtrans.llm import Completion, LLMSettings
from backtrans.tasks import PromptTask
from backtrans.templates import Template

_LABEL = re.compile(r"^(#+\s*)?(instruction|question)\s*:\s*", flags=re.IGNORECASE)


class BackwardTask(PromptTask):
    """Writes the instruction that a segment answers, prompted with seed examples."""

    kind = "augment"
    output_columns = ("instruction", "instruction_model", "augment_status", "augment_error")
    status_column = "augment_status"
    error_column = "augment_error"
    model_column = "instruction_model"

    def __init__(self, template: Template, settings: LLMSettings, examples: list[dict]):
        super().__init__(template, settings)
        self.examples = examples

    def key_fields(self, row: dict) -> tuple[list[dict], str]:
        return self.examples, row["generation"]

    def prompt_values(self, row: dict) -> dict:
        return {"examples": self.examples, "segment": row["generation"]}

    def read(self, row: dict, completion: Completion) -> tuple[dict, str]:
        text = _LABEL.sub("", completion.text.strip()).strip()
        text = text.split("\n### ")[0].strip().strip('"').strip()
        return {"instruction": text or None}, "" if text else "empty reply"
