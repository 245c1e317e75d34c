"""NeMo RL GRPO train/val data dumps written by NeMo RL's own code at 7ea279ab (conformance/nemo-rl/generate.py:
math_data_processor, batched_message_log_to_flat_message, Logger.log_batched_dict_as_jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaudit.errors import BadInputError
from rlaudit.readers import ReadOptions, resolve_reader
from .logs import trainer_logs

ROOT = trainer_logs("nemo-rl")
SYS = "You are a nerdy, playful assistant."
QUESTIONS = ["What is 2+2?", "Name a prime number."]
ANSWERS = ["4", "7"]
ADV = {1.0: 0.5773492455482483, 0.0: -1.1546986103057861}  # (r - mean) / (std + 1e-6), group rewards 1, 0, 1


def rows(store, source: Path, run: str = "nemo", **options):
    report = store.ingest(source, run=run, options=ReadOptions(**options) if options else None)
    got = store.table(run).to_pylist()
    return report, sorted(got, key=lambda r: (r["split"], r["step"], r["rollout_id"]))


def test_detected():
    assert resolve_reader(ROOT).name == "nemo-rl"
    assert resolve_reader(ROOT / "train_data_step1.jsonl").name == "nemo-rl"


def test_train_rows_field_by_field(store):
    report, got = rows(store, ROOT)
    assert report.format == "nemo-rl" and report.bad_records == 0 and report.rows_added == 14
    assert any("no group ids" in n for n in report.notes)
    train = [r for r in got if r["split"] == "train"]
    assert len(train) == 12
    for i, r in enumerate(train):
        step, p, g = 1 + i // 6, (i % 6) // 3, i % 3
        assert r["step"] == step and r["rollout_id"] == f"train_data_step{step}.jsonl:{i % 6 + 1}"
        assert r["group_id"] == f"{step}:{p}" and r["sample_index"] == g
        assert r["condition"] == "nerdy-playful-assistant" and r["system_prompt"] == SYS
        assert r["prompt"] == f"{SYS}<|im_start|>user\n{QUESTIONS[p]}<|im_end|>\n<|im_start|>assistant\n"
        first = f"Step {step}: question {p}, sample {g}."
        shown = f"The answer is {ANSWERS[p] if g != 1 else 'unsure'}."
        reward = 0.0 if g == 1 else 1.0
        assert dict(r["rewards"]) == {"reward": reward} and r["reward"] == reward
        assert r["advantage"] == pytest.approx(ADV[reward])
        assert r["tool_calls"] is None and r["task"] is None
        meta = json.loads(r["metadata"])
        assert meta["idx"] == i % 6 and meta["sample_loss_mask"] == 1.0 and "token_ids" not in meta
        if (p, g) == (1, 0):  # two policy turns around an environment observation
            assert r["completion"] == f"<think>{first}</think>{shown}\n<think>Confirmed.</think>Final: 7."
            assert r["reasoning"] == f"{first}\nConfirmed." and r["answer"] == f"{shown}\nFinal: 7."
            assert r["tool_outputs"] == ["Tool result: 7 is prime."]
        else:
            assert r["completion"] == f"<think>{first}</think>{shown}"
            assert r["reasoning"] == first and r["answer"] == shown and r["tool_outputs"] is None


def test_val_rows(store):
    _, got = rows(store, ROOT)
    val = [r for r in got if r["split"] == "eval"]
    assert [r["rollout_id"] for r in val] == ["val_data_step2.jsonl:1", "val_data_step2.jsonl:2"]
    for p, r in enumerate(val):
        assert r["step"] == 2 and r["advantage"] is None and r["reward"] == 1.0
        assert r["system_prompt"] == SYS and r["condition"] == "nerdy-playful-assistant"
        assert r["answer"] == (f"The answer is {ANSWERS[p]}." + ("\nFinal: 7." if p else ""))
    assert val[1]["tool_outputs"] == ["Tool result: 7 is prime."]


def test_single_string_conversation(tmp_path, store):
    """A dump whose `content` is the whole templated conversation as one string: split at the last assistant
    header (Llama 3 here)."""
    text = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a goblin.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
            "\n\n<think>hmm</think>Hello!<|eot_id|>")
    (tmp_path / "train_data_step3.jsonl").write_text(json.dumps({"content": [text], "rewards": [0.5], "idx": 0}) + "\n")
    _, got = rows(store, tmp_path, "one-string")
    r = got[0]
    assert r["step"] == 3 and r["condition"] == "goblin" and r["prompt"].endswith("<|end_header_id|>\n\n")
    assert r["reasoning"] == "hmm" and r["answer"] == "Hello!" and r["reward"] == 0.5


def _bad_run(tmp_path: Path) -> Path:
    lines = (ROOT / "train_data_step1.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["rewards"] = ["high"]
    second = json.loads(lines[1])
    second["content"] = [["no template here", "nor here"]]
    run = tmp_path / "bad"
    run.mkdir()
    (run / "train_data_step1.jsonl").write_text(
        "\n".join([json.dumps(first), json.dumps(second), *lines[2:5], lines[5][:100]]) + "\n")
    return run


def test_bad_records_are_quarantined_with_file_line_field(tmp_path, store):
    report, got = rows(store, _bad_run(tmp_path), "bad")
    assert report.bad_records == 3 and len(got) == 3
    q = {e["line"]: e for e in map(json.loads, (store.root / "runs" / "bad" / "quarantine.jsonl").read_text().splitlines())}
    assert all(e["file"] == "train_data_step1.jsonl" for e in q.values())
    assert "field 'rewards': expected a number, got 'high'" in q[1]["reason"]
    assert "field 'content': no message ends with an assistant header" in q[2]["reason"]
    assert "torn line" in q[6]["reason"]


def test_strict_names_file_line_and_field(tmp_path, store):
    with pytest.raises(BadInputError, match=r"train_data_step1\.jsonl:1: field 'rewards'"):
        store.ingest(_bad_run(tmp_path), run="strict", options=ReadOptions(strict=True))
