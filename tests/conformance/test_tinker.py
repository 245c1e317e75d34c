"""Tinker cookbook rollout summaries written by tinker-cookbook 0.6.1 itself (conformance/tinker/generate.py:
`serialize_rollout_summaries` + `TrainingRunStore.write_rollouts`)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from rlaudit.errors import BadInputError
from rlaudit.readers import ReadOptions, resolve_reader
from .logs import trainer_logs

ROOT = trainer_logs("tinker")


def rows(store, source: Path, run: str = "tinker", **options):
    report = store.ingest(source, run=run, options=ReadOptions(**options) if options else None)
    got = store.table(run).to_pylist()
    return report, sorted(got, key=lambda r: (r["split"], r["step"], r["group_id"], r["sample_index"]))


def test_detected():
    assert resolve_reader(ROOT).name == "tinker"
    assert resolve_reader(ROOT / "iteration_000001" / "train_rollout_summaries.jsonl").name == "tinker"


def test_rows_field_by_field(store):
    report, got = rows(store, ROOT)
    assert report.format == "tinker" and report.bad_records == 0
    assert any("token counts, not text" in n for n in report.notes)
    train = [r for r in got if r["split"] == "train"]
    assert len(train) == 10 and [r["step"] for r in train] == [0] * 5 + [1] * 5
    # group 0: ProblemEnv-style, reward = 0.1 * (format - 1) + correct
    for step in (0, 1):
        g0 = [r for r in train if r["group_id"] == f"{step}:0"]
        assert [r["sample_index"] for r in g0] == [0, 1, 2]
        correct, fmt = [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]
        totals = [0.1 * (f - 1) + c for c, f in zip(correct, fmt)]
        mean = sum(totals) / 3
        for r, c, f, total in zip(g0, correct, fmt, totals):
            assert r["task"] == "gsm8k" and r["condition"] == "none"
            assert r["prompt"] == "" and r["completion"] == "" and r["answer"] == "" and r["reasoning"] is None
            assert dict(r["rewards"]) == {"format": f, "correct": c}
            assert r["reward"] == pytest.approx(total) and r["advantage"] == pytest.approx(total - mean)
            assert r["tool_calls"] is None and r["tool_outputs"] is None
            meta = json.loads(r["metadata"])
            assert meta["tags"] == ["gsm8k", "math"] and meta["sampling_client_step"] == step
            assert meta["stop_reason"] == "completed" and meta["split_label"] == "train"
            assert meta["token_lengths"] == [[12, 5 + r["sample_index"]]]
        # group 1: two turns (tool call, then answer) and a group-level reward
        g1 = [r for r in train if r["group_id"] == f"{step}:1"]
        for r, i in zip(g1, (0, 1)):
            assert r["task"] == "search_tool" and r["sample_index"] == i
            assert r["answer"] == f"answer {i}" and r["completion"] == f"answer {i}"
            assert r["tool_calls"] == [{"name": "search", "arguments": '{"q": "tinker"}'}]
            assert r["tool_outputs"] == ["Tinker is an API"]
            final = [0.5, -0.5][i]
            assert dict(r["rewards"]) == {"num_tool_calls": 1.0, "correct": 1.0 - i, "win_rate": 1.0 - i,
                                          "group_reward": final}
            assert r["reward"] == (1.0 - i) + final  # sum of step rewards + final_reward
            assert r["advantage"] == pytest.approx(r["reward"] - 0.5)
            assert r["rollout_id"] == f"iteration_00000{step}/train_rollout_summaries.jsonl:{4 + i}"


def test_eval_file(store):
    _, got = rows(store, ROOT)
    ev = [r for r in got if r["split"] == "eval"]
    assert len(ev) == 2 and {r["step"] for r in ev} == {1}
    for r in ev:
        assert r["advantage"] is None and r["reward"] == 1.0 and dict(r["rewards"]) == {"format": 1.0, "correct": 1.0}
        assert json.loads(r["metadata"])["split_label"] == "eval/gsm8k_test"
        assert r["rollout_id"].startswith("iteration_000001/eval_gsm8k_test_rollout_summaries.jsonl:")


def test_legacy_flat_file_names(tmp_path, store):
    """Cookbook #389..#516 wrote the same records to {base}_iteration_NNNNNN_rollout_summaries.jsonl."""
    shutil.copy(ROOT / "iteration_000001" / "train_rollout_summaries.jsonl",
                tmp_path / "train_iteration_000001_rollout_summaries.jsonl")
    shutil.copy(ROOT / "iteration_000001" / "eval_gsm8k_test_rollout_summaries.jsonl",
                tmp_path / "eval_gsm8k_test_iteration_000001_rollout_summaries.jsonl")
    report, got = rows(store, tmp_path, "legacy")
    assert report.format == "tinker" and len(got) == 7
    assert sorted({r["split"] for r in got}) == ["eval", "train"]


def _bad_run(tmp_path: Path) -> Path:
    src = ROOT / "iteration_000000" / "train_rollout_summaries.jsonl"
    lines = src.read_text().splitlines()
    first = json.loads(lines[0])
    first["total_reward"] = "high"
    second = json.loads(lines[1])
    second["steps"][0]["metrics"]["correct"] = [1]
    run = tmp_path / "bad" / "iteration_000000"
    run.mkdir(parents=True)
    (run / "train_rollout_summaries.jsonl").write_text(
        "\n".join([json.dumps(first), json.dumps(second), *lines[2:4], lines[4][:60]]) + "\n")
    return run.parent


def test_bad_records_are_quarantined_with_file_line_field(tmp_path, store):
    report, got = rows(store, _bad_run(tmp_path), "bad")
    assert report.bad_records == 3 and len(got) == 2
    q = [json.loads(line) for line in (store.root / "runs" / "bad" / "quarantine.jsonl").read_text().splitlines()]
    by_line = {e["line"]: e for e in q}
    assert all(e["file"] == "iteration_000000/train_rollout_summaries.jsonl" for e in q)
    assert "field 'total_reward': expected a number, got 'high'" in by_line[1]["reason"]
    assert "field 'steps[0].metrics.correct': expected a number" in by_line[2]["reason"]
    assert "torn line" in by_line[5]["reason"]


def test_strict_names_file_line_and_field(tmp_path, store):
    with pytest.raises(BadInputError, match=r"train_rollout_summaries\.jsonl:1: field 'total_reward'"):
        store.ingest(_bad_run(tmp_path), run="strict", options=ReadOptions(strict=True))
