"""Capture wrappers: what each reward function received, joined back to stored rollouts."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent / "detectors"))
from cot_synth import make_run, no_inputs  # noqa: E402

from rlaudit.audit import audit_store  # noqa: E402
from rlaudit.cot.capture import (capture_grader, flush_all, merge_captured, read_captured,  # noqa: E402
                             wrap_trl_reward, wrap_verl_compute_score)
from rlaudit.detectors import AuditConfig  # noqa: E402
from rlaudit.errors import RlauditError  # noqa: E402


def records(path: Path) -> list[dict]:
    flush_all()
    return [json.loads(line) for line in path.read_text().splitlines()]


def capture_full_completions(store, table, log_dir: Path) -> dict:
    """A TRL judge wrapped by `wrap_trl_reward` and called step by step with `table`'s whole completions (so
    every rollout's reasoning reaches the grader), its capture merged into the stored run: `merge_captured`'s
    counts."""
    def judge(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    wrapped = wrap_trl_reward(judge, log_dir=log_dir)
    rows = table.to_pylist()
    for step in sorted({r["step"] for r in rows}):
        batch = [r for r in rows if r["step"] == step]
        wrapped(prompts=[r["prompt"] for r in batch], completions=[r["completion"] for r in batch],
                trainer_state=SimpleNamespace(global_step=step))
    flush_all()
    return merge_captured(store, table.column("run")[0].as_py(), log_dir)


def test_trl_wrapper_keeps_name_values_and_logs_extra(tmp_path):
    def helpfulness(prompts, completions, completion_ids=None, **kwargs):
        return [float(len(c)) for c in completions]

    extra = {}
    wrapped = wrap_trl_reward(helpfulness, log_dir=tmp_path)
    state = SimpleNamespace(global_step=7)
    out = wrapped(prompts=["p1", "p2"], completions=["<think>r</think>a", "b"], completion_ids=None,
                  trainer_state=state, log_extra=lambda col, vals: extra.__setitem__(col, vals))
    assert out == [17.0, 1.0] and wrapped.__name__ == "helpfulness"
    assert extra == {"helpfulness_input": ["<think>r</think>a", "b"]}
    recs = records(tmp_path / "grader_inputs" / "helpfulness.jsonl")
    assert [(r["step"], r["index"], r["input"]) for r in recs] == [(7, 0, "<think>r</think>a"), (7, 1, "b")]


def test_trl_wrapper_renders_message_lists_and_stays_async(tmp_path):
    async def judge(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    wrapped = wrap_trl_reward(judge, log_dir=tmp_path, name="judge")
    assert asyncio.iscoroutinefunction(wrapped)
    msgs = [[{"role": "assistant", "content": "<think>x</think>y"}]]
    assert asyncio.run(wrapped(prompts=[[{"role": "user", "content": "q"}]], completions=msgs)) == [1.0]
    assert records(tmp_path / "grader_inputs" / "judge.jsonl")[0]["input"] == "<think>x</think>y"


def test_verl_wrapper_records_solution_and_step(tmp_path):
    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        return {"score": 1.0 if ground_truth in solution_str else 0.0}

    wrapped = wrap_verl_compute_score(compute_score, log_dir=tmp_path)
    assert wrapped("gsm8k", "<think>so 4</think>4", "4", {"step": 3}) == {"score": 1.0}
    (rec,) = records(tmp_path / "grader_inputs" / "compute_score.jsonl")
    assert rec["step"] == 3 and rec["input"] == "<think>so 4</think>4" and rec["completion_md5"] is None


def test_captured_full_completions_are_found_by_the_scan_after_merge(store, tmp_path):
    table, _ = make_run(run="cap", steps=3, groups=3, seed=2)
    store.append("cap", no_inputs(table), "p")
    counts = capture_full_completions(store, table, tmp_path / "logs")
    assert counts["matched"] == counts["records"] == table.num_rows and counts["rollouts"] == table.num_rows
    (f,) = audit_store(store, ["cap"], AuditConfig(detectors=["cot_grading"])).of_kind("cot_grading")
    assert f["grader"] == "judge" and f["exposure_rate"] == 1.0 and f.evidence[0].data["span"][1] > 0


def test_captured_inner_judge_that_sees_only_the_answer_is_clean(store, tmp_path):
    table, _ = make_run(run="inner", steps=2, groups=3, seed=3)
    store.append("inner", no_inputs(table), "p")

    def call_judge(text, completion=None):
        return 1.0

    judge = capture_grader(call_judge, "judge", log_dir=tmp_path / "logs", arg=0,
                           completion=lambda text, completion=None: completion)
    for r in table.to_pylist():
        judge(f"Grade this answer: {r['answer']}", completion=r["completion"])
    flush_all()
    assert merge_captured(store, "inner", tmp_path / "logs")["matched"] == table.num_rows
    assert audit_store(store, ["inner"], AuditConfig(detectors=["cot_grading"])).of_kind("cot_grading") == []


def test_bad_capture_files_name_file_and_line(tmp_path):
    path = tmp_path / "judge.jsonl"
    path.write_text('{"grader": "judge", "input": "x"}\nnot json\n')
    with pytest.raises(RlauditError, match=r"judge.jsonl:2: not valid JSON"):
        read_captured(path)
    path.write_text('{"grader": "judge", "input": 3}\n')
    with pytest.raises(RlauditError, match=r"judge.jsonl:1: expected an object"):
        read_captured(path)
    with pytest.raises(RlauditError, match="no captured"):
        read_captured(tmp_path / "empty_dir_missing")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=60), min_size=1, max_size=8),
       st.one_of(st.none(), st.integers(0, 10**6)))
def test_capture_records_round_trip_any_text(tmp_path_factory, texts, step):
    from rlaudit.cot.capture import CaptureLog

    path = tmp_path_factory.mktemp("rt") / "g.jsonl"
    log = CaptureLog(path)
    log.write_many("g", texts, [None] * len(texts), step, log.reserve(len(texts)))
    log.flush()
    table = read_captured(path)
    assert table.column("input").to_pylist() == texts
    assert table.column("step").to_pylist() == [step] * len(texts)


def test_captured_inputs_are_scanned_per_source_file_whatever_the_parts(store, tmp_path):
    """Captured grader inputs are joined to the rollouts in DuckDB; the scan then batches each source file's rows
    in their stored order and draws chance pairings by the file (`cot.detector._scan_todo`), so a run audited
    a part per step and again after compaction (`Store.compact`) gets the same results, pairing for pairing."""
    import duckdb
    import pyarrow.compute as pc

    table, _ = make_run(run="cap", steps=6, groups=6, seed=3)
    for step in range(6):
        store.append("cap", no_inputs(table.filter(pc.equal(table["step"], step))), f"step-{step:04d}")
    capture_full_completions(store, table, tmp_path / "logs")
    config = AuditConfig(detectors=["cot_grading"],
                         options={"cot_grading": {"batch_rows": 5}})
    scans = []
    for compact in (False, True):
        if compact:
            assert store.compact("cap") == 5
        findings = audit_store(store, ["cap"], config).findings
        scans.append(([(f.title, f.fields) for f in findings], duckdb.sql(
            f"SELECT * EXCLUDE (part) FROM read_parquet('{store.run_dir('cap')}/derived/cot_scan/*/*.parquet', "
            "union_by_name=true, filename=part) ORDER BY ALL").fetchall()))
    (findings_a, rows_a), (findings_b, rows_b) = scans
    # (the stride counts logged grader inputs only: with captured ones every batch gets chance pairings, which
    # pair rollouts within a batch, so the batches themselves must be the same)
    assert any(r[-1] is True for r in rows_a)
    assert rows_a == rows_b and findings_a == findings_b and findings_a
