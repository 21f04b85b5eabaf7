"""What judging, response generation and instruction writing share: a prompt template rendered for a row,
one chat call, and a result with one shape.

Every result holds the task's `output_columns`, the runner's `status` (ok, parse_error, llm_error, or a
task's own for rows that need no call) and an error text. A task names its own status and error columns
(`status_column`, `error_column`) where its output sits beside other tasks' columns in one file: a
generated response keeps `generation_status` next to the judge's `status`. A subclass says what goes
into the cache key (`key_fields`), what the template sees (`prompt_values`) and how a reply becomes its
output columns (`read`); the base does the rest, and satisfies runner.Task.

A reply with no usable answer (a `parse_error`: a judge's reply with no score) is asked again, up to `reask`
more times (the template's `reask` setting, default 1, unless the caller says otherwise), with the same prompt.
The runner does the asking and keeps every reply; the task only says how many asks it allows and how one is
sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from backtrans.llm import Completion, LLMClient, LLMSettings
from backtrans.store import content_key
from backtrans.templates import Template

# A re-ask of a template that decodes greedily (temperature 0) samples at this temperature instead: on a
# deterministic server the same prompt at temperature 0 only returns the same unparsable reply again.
REASK_TEMPERATURE = 0.7


class PromptTask:
    kind: str = ""
    output_columns: tuple[str, ...] = ()
    status_column: str = "status"
    error_column: str = "error"
    model_column: str | None = None

    def __init__(self, template: Template, settings: LLMSettings, *, reask: int | None = None):
        """`reask`: how many more times a reply with no usable answer is asked again (None: the template's)."""
        self.template = template.require_kind(self.kind)
        self.settings = settings
        self.params = template.generation_params()
        self.reask = template.reask if reask is None else reask
        if self.reask < 0:
            raise ValueError(f"reask must be 0 or more, got {self.reask}")

    # --- what a subclass says ---------------------------------------------------------------------------

    def key_fields(self, row: dict) -> Sequence[object]:
        """The parts of the row (and task) whose change must mean a fresh call rather than a cached one."""
        raise NotImplementedError

    def prompt_values(self, row: dict) -> dict:
        return row

    def read(self, row: dict, completion: Completion) -> tuple[dict, str]:
        """The output columns from a reply, and an error text: empty when the reply was usable."""
        raise NotImplementedError

    # --- runner.Task --------------------------------------------------------------------------------------

    def key(self, row: dict) -> str:
        return content_key(self.kind, self.template.digest, self.settings.cache_identity(), self.params,
                           *self.key_fields(row))

    def skip(self, row: dict) -> dict | None:
        return None

    def prompt(self, row: dict) -> str:
        """The user message for a row."""
        return self.template.render(**self.prompt_values(row))

    async def call(self, client: LLMClient, row: dict, reask: bool = False) -> Completion:
        """One chat call. `reask`: the same prompt again after a reply that did not parse."""
        params = self.params
        if reask and not params["temperature"]:
            params = {**params, "temperature": REASK_TEMPERATURE}
        return await client.chat(self.prompt(row), **params)

    def parse(self, row: dict, completion: Completion) -> dict:
        outputs, error = self.read(row, completion)
        return self.result(outputs, "parse_error" if error else "ok", error, completion.model)

    def failure(self, row: dict, error: str) -> dict:
        return self.result({}, "llm_error", error)

    def result(self, outputs: dict, status: str, error: str = "", model: str | None = None) -> dict:
        """The one result shape: every output column (None when not produced), the task's status and
        error columns, and the runner's `status`."""
        out = dict.fromkeys(self.output_columns)
        out.update(outputs)
        if self.model_column is not None and self.model_column not in outputs:
            out[self.model_column] = model or self.settings.model
        out[self.status_column] = status
        out[self.error_column] = error
        out["status"] = status
        return out
