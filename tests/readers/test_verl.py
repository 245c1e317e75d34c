"""verl rollout-dump reader on files written like RayPPOTrainer._dump_generations writes them."""

from __future__ import annotations

import json

import pytest

from rlaudit.errors import BadInputError
from rlaudit.readers import resolve_reader
from rlaudit.readers.base import ReadOptions

from .trainer_files import CHATML_DECODED, verl_step


def _batch(step: int, shuffle: bool = True):
    """4 prompts x 3 samples; balance_batch-style reordering interleaves the groups."""
    rows = [(g, i) for g in range(4) for i in range(3)]
    if shuffle:
        rows = rows[::2] + rows[1::2]
    inputs = [CHATML_DECODED.format(sys="You are a careful math tutor." if g % 2 else "You are a goblin.",
                                    q=f"q{g}") for g, _ in rows]
    outputs = [f"<think>step {i}</think>answer {g}" for g, i in rows]
    return rows, inputs, outputs


def test_keys_map_to_canonical_rows(tmp_path, store):
    run = tmp_path / "verl-run"
    rows, inputs, outputs = _batch(5)
    n = len(rows)
    verl_step(run / "rollout", 5, inputs, outputs, scores=[float(i) for _, i in rows], gts=["42"] * n,
              extra={"acc": [bool(i % 2) for _, i in rows], "format": [0.5] * n, "pred": ["x"] * n,
                     "judge_input": [f"answer {g}" for g, _ in rows]})
    report = store.ingest(run)
    assert report.format == "verl" and report.rows_added == n and report.bad_records == 0
    out = store.query("SELECT * FROM rollouts ORDER BY CAST(split_part(rollout_id, ':', 2) AS INT)",
                      runs=["verl-run"]).to_pylist()
    r = out[1]  # group 0, sample 2 after the interleave
    assert r["rollout_id"] == "rollout/5.jsonl:2" and r["step"] == 5 and r["split"] == "train"
    assert r["reward"] == 2.0 and dict(r["rewards"]) == {"acc": 0.0, "format": 0.5}
    assert dict(r["grader_inputs"]) == {"judge": "answer 0"}
    assert json.loads(r["metadata"]) == {"gts": "42", "pred": "x"}
    assert r["reasoning"] == "step 2" and r["answer"] == "answer 0"
    assert {x["condition"] for x in out} == {"goblin", "careful-math-tutor"}


def test_groups_without_uid_key_on_identical_inputs_even_when_reordered(tmp_path, store):
    rows, inputs, outputs = _batch(1)
    verl_step(tmp_path / "r", 1, inputs, outputs, scores=[0.0] * len(rows))
    store.ingest(tmp_path / "r")
    got = store.query("SELECT prompt, group_id, sample_index FROM rollouts ORDER BY rollout_id",
                      runs=["r"]).to_pylist()
    by_group: dict[str, set] = {}
    for g in got:
        by_group.setdefault(g["group_id"], set()).add(g["prompt"])
    assert len(by_group) == 4 and all(len(p) == 1 for p in by_group.values())
    assert sorted(g["sample_index"] for g in got) == sorted([0, 1, 2] * 4)


def test_uid_is_the_group_when_present(tmp_path, store):
    inputs = ["same prompt"] * 4
    verl_step(tmp_path / "r", 2, inputs, ["a", "b", "c", "d"], scores=[0, 1, 0, 1],
              extra={"uid": ["u1", "u2", "u1", "u2"]})
    store.ingest(tmp_path / "r")
    got = store.query("SELECT group_id, sample_index FROM rollouts ORDER BY rollout_id", runs=["r"]).to_pylist()
    assert [(g["group_id"], g["sample_index"]) for g in got] == [("2:u1", 0), ("2:u2", 0), ("2:u1", 1), ("2:u2", 1)]


def test_validation_dir_is_eval_and_duplicate_reward_is_dropped(tmp_path, store):
    run = tmp_path / "run"
    verl_step(run / "rollout_data", 10, ["p"], ["a"], scores=[1.0], extra={"acc": [1.0]})
    # validation dumps carry reward_extra_infos_dict["reward"] = scores
    verl_step(run / "validation_data", 10, ["p", "p"], ["a", "b"], scores=[1.0, 0.0], extra={"reward": [1.0, 0.0]})
    store.ingest(run)
    got = store.query("SELECT split, rewards FROM rollouts ORDER BY split, rollout_id", runs=["run"]).to_pylist()
    assert [g["split"] for g in got] == ["eval", "eval", "train"]
    assert [dict(g["rewards"]) for g in got] == [{"score": 1.0}, {"score": 0.0}, {"acc": 1.0}]


def test_bad_lines_are_quarantined_with_file_line_and_field(tmp_path, store):
    d = tmp_path / "r"
    d.mkdir()
    good = {"input": "p", "output": "o", "gts": None, "score": 1.0, "step": 3}
    lines = [json.dumps(good), json.dumps({**good, "score": "high"}), '{"input": "p", "output": "o", "sc',
             json.dumps({**good, "output": None}), "", json.dumps([1, 2]), json.dumps({**good, "input": 7}),
             json.dumps(good)]
    (d / "3.jsonl").write_text("\n".join(lines) + "\n")
    report = store.ingest(d)
    assert report.rows_added == 2
    bad = {b.line: b.reason for b in store.quarantined("r")}
    assert set(bad) == {2, 3, 4, 6, 7}
    assert "field 'score': expected a number" in bad[2]
    assert bad[3] == "torn line (JSON ends early): Unterminated string starting at column 31"
    assert "'output'" in bad[4]
    assert "expected a JSON object" in bad[6]
    assert "field 'input'" in bad[7]
    assert sorted(store.table("r", ["rollout_id"]).column(0).to_pylist()) == ["3.jsonl:1", "3.jsonl:8"]
    with pytest.raises(BadInputError, match=r"3\.jsonl:2: field 'score'"):
        store.ingest(d, run="strict", options=ReadOptions(strict=True))


def test_verl_is_told_apart_from_canonical_jsonl(tmp_path):
    verl_step(tmp_path / "v", 1, ["p"], ["o"], scores=[1.0])
    assert resolve_reader(tmp_path / "v").name == "verl"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "1.jsonl").write_text(json.dumps({"step": 1, "prompt": "p", "completion": "c"}) + "\n")
    assert resolve_reader(tmp_path / "c").name == "canonical"
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "rollouts.jsonl").write_text(json.dumps({"input": "p", "output": "o", "score": 1}) + "\n")
    assert resolve_reader(tmp_path / "n").name == "canonical"


def test_group_size_splits_large_keyed_groups_and_a_bom_is_not_a_bad_line(tmp_path, store):
    path = verl_step(tmp_path / "r", 4, ["same"] * 6, [f"o{i}" for i in range(6)], scores=[0.0] * 6)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    report = store.ingest(tmp_path / "r", options=ReadOptions(group_size=4))
    assert report.bad_records == 0 and report.rows_added == 6
    got = store.query("SELECT group_id, sample_index FROM rollouts ORDER BY rollout_id", runs=["r"]).to_pylist()
    assert [(g["group_id"], g["sample_index"]) for g in got] == [
        ("4:0", 0), ("4:0", 1), ("4:0", 2), ("4:0", 3), ("4:0/1", 0), ("4:0/1", 1)]


def test_v1_uid_key_groups_by_its_prompt_part_and_old_uids_stay_whole(tmp_path, store):
    # verl 0.9.1 v1 dumps the TransferQueue key {prompt uuid}_{session}_{output index}: unique per sample
    keys = ["a1b2-c3_0_0", "a1b2-c3_1_0", "ffee-01_0_0", "a1b2-c3_2_0", "plain-uuid", "plain-uuid"]
    verl_step(tmp_path / "r", 7, ["p1", "p1", "p2", "p1", "p3", "p3"], list("abcdef"), scores=[0.0] * 6,
              extra={"uid": keys})
    store.ingest(tmp_path / "r")
    got = store.query("SELECT group_id, sample_index FROM rollouts ORDER BY rollout_id", runs=["r"]).to_pylist()
    assert [(g["group_id"], g["sample_index"]) for g in got] == [
        ("7:a1b2-c3", 0), ("7:a1b2-c3", 1), ("7:ffee-01", 0), ("7:a1b2-c3", 2), ("7:plain-uuid", 0),
        ("7:plain-uuid", 1)]


def test_a_reward_key_makes_a_dump_eval_and_is_the_total(tmp_path, store):
    # a validation_data_dir ingested on its own: no directory name says so, the `reward` key does
    d = tmp_path / "dumps"
    verl_step(d, 4, ["p", "p"], ["<think>r</think>long", "short"], scores=[1.0, 1.0],
              extra={"reward": [0.5, 1.0], "acc": [True, True], "overlong_reward": [-0.5, 0.0],
                     "overlong": [True, False]})
    report = store.ingest(d)
    assert any("`reward` key are read as split=eval" in n for n in report.notes)
    got = store.query("SELECT split, reward, rewards, metadata FROM rollouts ORDER BY rollout_id",
                      runs=["dumps"]).to_pylist()
    assert [g["split"] for g in got] == ["eval", "eval"] and [g["reward"] for g in got] == [0.5, 1.0]
    # score (compute_score's own, before the penalty) differs from the total: kept as a component
    assert dict(got[0]["rewards"]) == {"acc": 1.0, "overlong_reward": -0.5, "score": 1.0}
    assert json.loads(got[0]["metadata"])["overlong"] is True


def test_dapo_training_dump_without_reward_adds_the_overlong_penalty(tmp_path, store):
    verl_step(tmp_path / "r", 2, ["p"], ["o"], scores=[1.0], extra={"acc": [1.0], "overlong_reward": [-0.25]})
    report = store.ingest(tmp_path / "r")
    assert any("score + overlong_reward" in n for n in report.notes)
    got = store.query("SELECT split, reward, rewards FROM rollouts", runs=["r"]).to_pylist()[0]
    assert got["split"] == "train" and got["reward"] == 0.75
    # `score` is compute_score's own (unpenalised) score here, not the total: a component like in validation
    assert dict(got["rewards"]) == {"acc": 1.0, "overlong_reward": -0.25, "score": 1.0}


def test_multi_turn_output_with_parallel_tool_calls(tmp_path, store):
    out = ("<think>two lookups</think>Checking.\n<tool_call>\n{\"name\": \"wiki\", \"arguments\": {\"q\": \"a\"}}\n"
           "</tool_call>\n<tool_call>\n{\"name\": \"wiki\", \"arguments\": {\"q\": \"b\"}}\n</tool_call>\nuser\n"
           "<tool_response>\nA is 1\n</tool_response>\n<tool_response>\nB is 2\n</tool_response>\nassistant\n"
           "<think>sum</think>3\n<tool_call>\nnot json\n</tool_call>")
    verl_step(tmp_path / "r", 1, ["p"], [out], scores=[1.0])
    store.ingest(tmp_path / "r")
    r = store.query("SELECT completion, reasoning, answer, tool_calls, tool_outputs FROM rollouts",
                    runs=["r"]).to_pylist()[0]
    assert r["reasoning"] == "two lookups\nsum" and r["answer"] == "Checking.\n3"
    assert r["tool_outputs"] == ["A is 1", "B is 2"]
    assert r["tool_calls"] == [{"name": "wiki", "arguments": '{"q": "a"}'}, {"name": "wiki", "arguments": '{"q": "b"}'},
                               {"name": "", "arguments": "not json"}]
    assert "<tool_response>" not in r["completion"] and r["completion"].endswith("<think>sum</think>3\n"
                                                                                  "<tool_call>\nnot json\n</tool_call>")
