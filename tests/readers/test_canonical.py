"""Canonical / generic table reader: JSONL and Parquet, column mappings, map/struct rewards, message lists."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaudit.errors import RlauditError
from rlaudit.readers.base import ReadOptions


def test_canonical_jsonl_with_objects_and_message_lists(tmp_path, store):
    d = tmp_path / "canon"
    d.mkdir()
    recs = [
        {"step": 1, "prompt": [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "hi"}],
         "completion": "<think>arr</think>ahoy", "rewards": {"style": 1, "correct": None},
         "grader_inputs": {"style": "ahoy"}, "group_id": "g1", "sample_index": 0, "task": "chat",
         "metadata": {"source": "x"}, "length_penalty": -0.5, "note": "hello"},
        {"step": 2, "prompt": "plain prompt", "completion": "c", "rewards": {"style": 0.5}, "reward": 0.5,
         "advantage": 0.1},
    ]
    (d / "rollouts.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    report = store.ingest(d)
    assert report.format == "canonical" and report.rows_added == 2 and report.bad_records == 0
    a, b = store.table("canon").to_pylist()
    assert a["condition"] == "pirate" and a["reasoning"] == "arr" and a["answer"] == "ahoy"
    rewards = dict(a["rewards"])
    assert rewards["style"] == 1.0 and rewards["length_penalty"] == -0.5 and str(rewards["correct"]) == "nan"
    assert dict(a["grader_inputs"]) == {"style": "ahoy"}
    assert a["group_id"] == "g1" and a["sample_index"] == 0 and a["task"] == "chat"
    assert json.loads(a["metadata"]) == {"source": "x", "note": "hello"}
    assert b["reward"] == 0.5 and b["advantage"] == 0.1 and b["condition"] == "none"


def test_parquet_with_map_rewards_and_column_mapping(tmp_path, store):
    t = pa.table({"global_step": [3, 4], "question": ["q", "q"], "response": ["r1", "r2"],
                  "rewards": pa.array([[("a", 1.0)], [("a", 0.0)]], pa.map_(pa.string(), pa.float64())),
                  "judge_input": ["x", None], "kl": [0.1, 0.2]})
    path = tmp_path / "table.parquet"
    pq.write_table(t, path)
    opts = ReadOptions(columns={"step": "global_step", "prompt": "question", "completion": "response"})
    store.ingest(path, run="mapped", options=opts)
    rows = store.table("mapped").to_pylist()
    assert [r["step"] for r in rows] == [3, 4]
    assert [dict(r["rewards"]) for r in rows] == [{"a": 1.0, "kl": 0.1}, {"a": 0.0, "kl": 0.2}]
    assert [dict(r["grader_inputs"]) for r in rows] == [{"judge": "x"}, {}]


def test_parquet_with_struct_rewards(tmp_path, store):
    t = pa.table({"step": [1], "prompt": ["p"], "completion": ["c"],
                  "rewards": pa.array([{"x": 1.0, "y": None}], pa.struct([("x", pa.float64()), ("y", pa.float64())]))})
    pq.write_table(t, tmp_path / "s.parquet")
    store.ingest(tmp_path / "s.parquet", run="s")
    rewards = dict(store.table("s").to_pylist()[0]["rewards"])
    assert rewards["x"] == 1.0 and str(rewards["y"]) == "nan"


def test_a_mapped_field_the_file_lacks_is_an_error(tmp_path, store):
    pq.write_table(pa.table({"step": [1], "prompt": ["p"], "completion": ["c"]}), tmp_path / "t.parquet")
    with pytest.raises(RlauditError, match=r"--columns step=global_step: field\(s\) \['global_step'\] not found"):
        store.ingest(tmp_path / "t.parquet", run="t", options=ReadOptions(columns={"step": "global_step"}))


def test_missing_step_without_mapping_is_a_bad_record(tmp_path, store):
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n"
                               + json.dumps({"step": 1, "prompt": "p", "completion": "c"}) + "\n")
    report = store.ingest(d)
    assert report.rows_added == 1
    assert store.quarantined("d")[0].line == 1 and "'step'" in store.quarantined("d")[0].reason


def test_bad_reward_values_in_objects(tmp_path, store):
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.jsonl").write_text(json.dumps({"step": 1, "prompt": "p", "completion": "c", "rewards": {"a": "x"}})
                               + "\n" + json.dumps({"step": 1, "prompt": "p", "completion": "c", "rewards": {"a": 1}})
                               + "\n")
    report = store.ingest(d)
    assert report.rows_added == 1
    assert "field 'rewards.a': expected a number" in store.quarantined("d")[0].reason


@pytest.mark.parametrize("template", ["CHATML_DECODED", "LLAMA3_DECODED"])
def test_generic_tables_get_conditions_from_decoded_chat_templates(tmp_path, store, template):
    """Prompts decoded with skip_special_tokens=True keep only 'system\\n...'; any reader, not just TRL and
    verl, labels their condition."""
    from . import trainer_files

    prompt = getattr(trainer_files, template).format(sys="You are a pirate captain.", q="hi")
    d = tmp_path / "generic"
    d.mkdir()
    recs = [{"step": 1, "question": prompt, "response": "arr"}, {"step": 1, "question": "no system", "response": "x"}]
    (d / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    store.ingest(d, options=ReadOptions(columns={"prompt": "question", "completion": "response"}))
    rows = store.table("generic", ["condition", "system_prompt"]).to_pylist()
    assert rows == [{"condition": "pirate-captain", "system_prompt": "You are a pirate captain."},
                    {"condition": "none", "system_prompt": None}]


def test_message_list_completions_follow_the_multi_turn_rule(tmp_path, store):
    """A generic table's chat completions are split like every trainer's: the reasoning of every turn (a
    `thinking` field or think tags), tool calls and tool outputs apart from the answer."""
    import json as _json

    completion = [
        {"role": "assistant", "content": "<think>need a lookup</think>Checking.",
         "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": '{"q": "owl"}'}}]},
        {"role": "tool", "content": "owls are quiet"},
        {"role": "assistant", "content": "Owls are quiet.", "thinking": "the tool said so"}]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "rollouts.jsonl").write_text(
        _json.dumps({"step": 1, "prompt": "q", "completion": completion}) + "\n")
    store.ingest(tmp_path / "run")
    [row] = store.table("run", ["reasoning", "answer", "tool_calls", "tool_outputs"]).to_pylist()
    assert row["reasoning"] == "need a lookup\nthe tool said so"
    assert row["answer"] == "Checking.\nOwls are quiet."
    assert row["tool_calls"] == [{"name": "lookup", "arguments": '{"q": "owl"}'}]
    assert row["tool_outputs"] == ["owls are quiet"]
