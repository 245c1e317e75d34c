"""Writers: each trainer layout as the real trainer writes it, and what rlaudit's readers make of it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlaudit.errors import RlauditError
from rlaudit.organisms import FORMATS, GroundTruth, run, simulate, write
from rlaudit.store import Store

SIZE = dict(steps=3, prompts=4, generations=4)


@pytest.fixture(scope="module")
def sim():
    return run("cot_midrun", seed=1, **SIZE)


def test_trl_layout(sim, tmp_path):
    write(sim, tmp_path, "trl")
    files = sorted((tmp_path / "completions").glob("*.parquet"))
    assert [f.name for f in files] == ["completions_00001.parquet", "completions_00002.parquet",
                                       "completions_00003.parquet"]
    t = pq.read_table(files[0])
    signals = sim.signals
    assert t.column_names == ["step", "prompt", "completion", *signals, *[f"{s}_input" for s in signals],
                              "advantage"]
    row = t.slice(0, 1).to_pylist()[0]
    assert row["prompt"].startswith(("<|im_start|>system\n", "<|im_start|>user\n"))
    assert row["prompt"].endswith("<|im_start|>assistant\n") and row["completion"].startswith("<think>")
    assert t.num_rows == 16 and (tmp_path / "ground_truth.json").is_file()


def test_verl_layout(sim, tmp_path):
    write(sim, tmp_path, "verl")
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["1.jsonl", "2.jsonl", "3.jsonl", "metrics.jsonl"]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and "actor/entropy" in metrics[0]["data"]  # verl's FileLogger
    rec = json.loads((tmp_path / "2.jsonl").read_text().splitlines()[0])
    assert list(rec)[:5] == ["input", "output", "gts", "score", "step"] and rec["step"] == 2
    assert "<|im_start|>" not in rec["input"] and rec["input"].rstrip().endswith("assistant")
    assert set(sim.signals) <= set(rec) and "uid" in rec
    assert math.isclose(rec["score"], sum(rec[s] * w for s, w in
                                          ((s, sim.ground_truth.signals[s]["weight"]) for s in sim.signals)
                                          if not math.isnan(rec[s])))


def test_primerl_layout(sim, tmp_path):
    """verifiers 0.4 episodes as prime-rl logs them (the keys of the conformance suite's, which verifiers' own
    classes write): the policy's trace, its nodes' token arrays, the GRPO advantage on the sampled tokens."""
    write(sim, tmp_path, "prime-rl")
    path = tmp_path / "rollouts" / "step_3" / "train" / "effective" / "traces.jsonl"
    rec = json.loads(path.read_text().splitlines()[0])
    real = json.loads((Path(__file__).parents[1] / "conformance" / "fixtures" / "verifiers" / "prime-rl" / "rollouts"
                       / "step_1" / "train" / "effective" / "traces.jsonl").read_text().splitlines()[1])
    assert set(rec) <= set(real) and {"id", "env", "task", "group", "run", "traces"} <= set(rec)
    assert rec["run"]["work"] == {"type": "train", "step": 3, "policy": {"start": 2, "end": 2}}
    [trace] = rec["traces"]
    assert trace["agent"]["trainable"] and set(trace) - {"agent"} <= set(real["traces"][-1]) | {"is_completed"}
    roles = [n["message"]["role"] for n in trace["nodes"]]
    assert roles[-2:] == ["user", "assistant"] and [n["sampled"] for n in trace["nodes"]][-2:] == [False, True]
    reply = trace["nodes"][-1]
    assert "reasoning_content" in reply["message"] and "<think>" not in reply["message"]["content"]
    assert len(reply["token_ids"]) == len(reply["mask"]) == len(reply["logprobs"]) == len(reply["advantages"])
    assert len(set(reply["advantages"])) == 1 and all(reply["mask"])
    assert set(trace["rewards"]) == set(sim.signals) and set(trace["rewards"]["correctness"]) == {"score", "weight"}
    assert trace["calls"][0]["node"] == len(trace["nodes"]) - 1
    assert trace["calls"][0]["finish_reason"] in ("stop", "length")
    assert all(c["name"] in sim.signals for c in trace["info"].get("judge_calls", []))


def test_ground_truth_round_trips(tmp_path):
    gt = simulate("broken_reward", tmp_path / "b", format="verl", **SIZE)
    back = GroundTruth.read(tmp_path / "b")
    assert back == gt and back.format == "verl" and back.run == "b"
    assert {(i.signal, i.problem) for i in back.issues} == {("brevity_rm", "constant"), ("safety_rm", "nan"),
                                                            ("judge_rm", "out_of_range"), ("rm_server", "stuck")}


def test_unknown_format_is_a_clear_error(sim, tmp_path):
    with pytest.raises(RlauditError, match="unknown simulator format"):
        write(sim, tmp_path, "wandb")


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_recover_the_run(sim, tmp_path, fmt):
    """Readers are written independently from the real formats; both sides agreeing is the check."""
    write(sim, tmp_path / fmt, fmt)
    store = Store(tmp_path / "store")
    report = store.ingest(tmp_path / fmt, run="r", format=fmt)
    assert report.bad_records == 0 and report.rows_added == sim.table.num_rows
    summary = store.summary("r")
    assert set(summary.signals) == set(sim.signals)
    assert set(summary.graders) == {g for row in sim.table.column("grader_inputs").to_pylist() for g, _ in row}
    assert set(summary.conditions) == set(sim.table.column("condition").to_pylist())
    got = store.table("r", ["step", "answer", "reasoning", "grader_inputs"])
    want = {(r["step"], r["answer"]) for r in sim.table.select(["step", "answer"]).to_pylist()}
    assert {(r["step"], r["answer"]) for r in got.to_pylist()} == want
    exposed = [dict(r["grader_inputs"]).get("code_judge", "") for r in got.to_pylist()]
    assert sum("<think>" in e for e in exposed) == sum(
        "<think>" in dict(r).get("code_judge", "") for r in sim.table.column("grader_inputs").to_pylist())
