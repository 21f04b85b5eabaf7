import json

import pytest

from backtrans.run_config import RunConfig
from backtrans.store import RunStore

BASE = {"kind": "judge", "source": "in.jsonl", "template": "humpback", "model": "m", "base_url": "http://x/v1"}


def test_round_trip_through_the_store(tmp_path):
    config = RunConfig(**BASE, output="o.jsonl", mapping={"prompt": "instruction"}, hf_config="main", split="test",
                       parent_run_id="r0", rows=7, seeds=[{"instruction": "q", "output": "a"}])
    store = RunStore(tmp_path / "s.sqlite")
    run_id = store.start_run("judge", config)
    assert store.run(run_id).settings == config
    assert store.resume_or_start("judge", config) == run_id  # the same settings find the same run
    assert store.resume_or_start("judge", config.updated(model="other")) != run_id


def test_unset_settings_are_left_out_of_the_record():
    stored = RunConfig(**BASE).to_json()
    assert set(stored) == {"kind", "source", "template", "model", "base_url", "mapping"}
    assert RunConfig(**BASE, hf_config="c").to_json()["config"] == "c"  # the key older records used


def test_an_older_record_still_reads():
    # As FileJob wrote them before RunConfig: no kind, None values, and a key this version does not know.
    old = {"source": "/d/in.jsonl", "output": "/d/o.jsonl", "template": "additive", "template_digest": "abc",
           "model": "m", "base_url": "u", "mapping": {}, "config": None, "split": None, "parent_run_id": None,
           "someday": 1}
    config = RunConfig.from_json(old)
    assert (config.kind, config.template, config.output, config.hf_config) == ("judge", "additive", "/d/o.jsonl", None)
    assert json.loads(json.dumps(config.to_json()))["template_digest"] == "abc"


def test_a_stated_setting_wins_and_an_unstated_one_does_not():
    stored = RunConfig(**BASE, output="o.jsonl", mapping={"a": "instruction"})
    merged = stored.updated(template="humpback-short", model=None, mapping={}, output="")
    assert merged.template == "humpback-short"
    assert (merged.model, merged.mapping, merged.output) == ("m", {"a": "instruction"}, "o.jsonl")
    with pytest.raises(TypeError, match="no setting temperature"):
        stored.updated(temperature=0.5)
    with pytest.raises(ValueError, match="unknown run kind"):
        RunConfig(**{**BASE, "kind": "score"})
