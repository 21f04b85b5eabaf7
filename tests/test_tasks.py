"""The three prompt tasks share one base and one result shape: every output column, the task's status
and error columns, and the runner's `status`, whether the call worked, gave nothing usable, or failed."""

import pytest

from backtrans.augment import BackwardTask as OldBackwardPath
from backtrans.augment import ResponseTask as OldResponsePath
from backtrans.backward import BackwardTask
from backtrans.generate import ResponseTask
from backtrans.judge import JudgeTask
from backtrans.llm import Completion, LLMSettings
from backtrans.runner import run_one
from backtrans.tasks import PromptTask
from backtrans.templates import TemplateError, load_template

EXAMPLES = [{"instruction": "How do plants eat?", "output": "Leaves turn sunlight into sugar."}]


def _tasks(settings: LLMSettings) -> dict[str, PromptTask]:
    return {
        "judge": JudgeTask(load_template("humpback"), settings),
        "generate": ResponseTask(load_template("generate-response"), settings),
        "augment": BackwardTask(load_template("backward-instruction"), settings, EXAMPLES),
    }


ROWS = {
    "judge": {"instruction": "Say hi [[score=4]]", "generation": "Hi!"},
    "generate": {"instruction": "Say hi"},
    "augment": {"generation": "Steep green tea at 80 °C for two minutes."},
}


def test_old_import_paths_are_the_same_classes():
    assert (OldBackwardPath, OldResponsePath) == (BackwardTask, ResponseTask)


@pytest.mark.parametrize("kind", ["judge", "generate", "augment"])
def test_every_result_has_the_same_shape(fake_llm, kind):
    task = _tasks(LLMSettings(base_url=fake_llm.url, model="fake"))[kind]
    assert isinstance(task, PromptTask) and task.kind == kind
    shape = set(task.output_columns) | {"status", task.status_column, task.error_column}

    ok = run_one(task, dict(ROWS[kind]))
    assert set(ok) == shape | {"asks", "raw_outputs"}  # the runner adds how often it asked, and every reply
    assert ok["asks"] == 1 and len(ok["raw_outputs"]) == 1
    assert (ok["status"], ok[task.status_column], ok[task.error_column]) == ("ok", "ok", "")
    assert ok[task.model_column] == "fake"

    empty = task.parse(ROWS[kind], Completion(text="   ", model="m2"))
    assert set(empty) == shape
    assert empty["status"] == empty[task.status_column] == "parse_error"
    assert empty[task.error_column] == "empty reply" and empty[task.model_column] == "m2"

    failed = task.failure(ROWS[kind], "HTTP 500 after 3 attempts")
    assert set(failed) == shape
    assert (failed["status"], failed[task.status_column]) == ("llm_error", "llm_error")
    assert failed[task.error_column] == "HTTP 500 after 3 attempts" and failed[task.model_column] == "fake"


def test_a_task_refuses_a_template_of_another_kind_and_keys_follow_its_inputs():
    settings = LLMSettings(model="a")
    with pytest.raises(TemplateError, match="is a judge template, not a generate template"):
        ResponseTask(load_template("humpback"), settings)
    template = load_template("backward-instruction")
    row = ROWS["augment"]
    key = BackwardTask(template, settings, EXAMPLES).key(row)
    assert key == BackwardTask(template, LLMSettings(model="a"), list(EXAMPLES)).key(dict(row))
    assert key != BackwardTask(template, settings, EXAMPLES[:0]).key(row)
    assert key != BackwardTask(template, settings, EXAMPLES).key({"generation": "other"})


def test_a_given_response_needs_no_call():
    task = ResponseTask(load_template("generate-response"), LLMSettings(model="a"))
    given = task.skip({"instruction": "q", "generation": "already here"})
    assert given == {"generation": "already here", "generation_model": None, "generation_status": "given",
                     "generation_error": "", "status": "ok"}
    assert task.skip({"instruction": "q", "generation": ""}) is None
