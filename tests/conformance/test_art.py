"""OpenPipe ART trajectory Parquet written by openpipe-art 0.5.18 itself (conformance/art/generate.py:
art.Trajectory / TrajectoryGroup with OpenAI Choice turns, `write_trajectory_groups_parquet`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaudit.errors import BadInputError
from rlaudit.readers import ReadOptions, resolve_reader
from .logs import trainer_logs

ROOT = trainer_logs("art")
MODEL = ROOT / "demo" / "models" / "agent-1"
SYS = "You are a nerdy, playful assistant."


def rows(store, source: Path, run: str = "art", **options):
    report = store.ingest(source, run=run, options=ReadOptions(**options) if options else None)
    got = store.table(run).to_pylist()
    return report, sorted(got, key=lambda r: (r["split"], r["step"], r["group_id"], r["sample_index"]))


@pytest.mark.parametrize("where", [ROOT, MODEL, MODEL / "trajectories", MODEL / "trajectories/train/0001.parquet"])
def test_detected(where):
    assert resolve_reader(where).name == "art"


def test_rows_field_by_field(store):
    report, got = rows(store, ROOT)
    assert report.format == "art" and report.bad_records == 0 and report.rows_added == 17
    assert any("no advantages" in n for n in report.notes)
    train = [r for r in got if r["split"] == "train"]
    assert len(train) == 16
    for step in (1, 2):
        for p in (0, 1):
            group = [r for r in train if r["group_id"] == f"{step}:{p}"]
            assert [r["sample_index"] for r in group] == [0, 1, 2]
            for g, r in enumerate(group):
                q = ["What is 2+2?", "Name a prime number."][p]
                right = g != 1
                assert r["rollout_id"] == f"demo/models/agent-1/trajectories/train/{step:04d}.parquet:{3 * p + g + 1}"
                assert r["prompt"] == f"system: {SYS}\nuser: {q}" and r["system_prompt"] == SYS
                assert r["condition"] == "nerdy-playful-assistant"
                assert r["completion"] == f"<think>Step {step}: sample {g}.</think>{'4' if right else 'five'}"
                assert r["reasoning"] == f"Step {step}: sample {g}." and r["answer"] == ("4" if right else "five")
                assert r["tool_calls"] is None and r["tool_outputs"] is None
                assert dict(r["rewards"]) == {"correct": float(right), "format": 0.5}
                assert r["reward"] == float(right) and r["advantage"] is None
                meta = json.loads(r["metadata"])
                assert meta == {"metadata": {"example_id": f"q{p}"}, "group_metadata": {"dataset": "arith"},
                                "group_metrics": {"difficulty": p}, "logs": [f"sample {g}"]}
        agent = [r for r in train if r["group_id"] == f"{step}:2"]
        for g, r in enumerate(agent):
            # the scripted (non-trainable) assistant greeting is context: prompt, not completion
            assert r["prompt"] == f"system: {SYS}\nuser: Hi\nassistant: Hello! Ask me anything.\nuser: Find a prime."
            assert r["completion"] == f"<think>I should search.</think>\n<think>Pick one.</think>{7 if g == 0 else 9} is prime."
            assert r["reasoning"] == "I should search.\nPick one." and r["answer"] == f"{7 if g == 0 else 9} is prime."
            assert r["tool_calls"] == [{"name": "search", "arguments": '{"q": "primes"}'}]
            assert r["tool_outputs"] == ["2, 3, 5, 7"]
            assert dict(r["rewards"]) == {"correct": float(g == 0), "tool_calls": 1.0} and r["reward"] == [1.0, -1.0][g]
            assert json.loads(r["metadata"])["group_logs"] == ["agent group"]


def test_val_split(store):
    _, got = rows(store, ROOT)
    val = [r for r in got if r["split"] == "eval"]
    assert len(val) == 1 and val[0]["step"] == 2 and val[0]["answer"] == "4" and val[0]["group_id"] == "2:0"
    assert val[0]["rollout_id"] == "demo/models/agent-1/trajectories/val/0002.parquet:1"


def _bad_run(tmp_path: Path) -> Path:
    table = pq.read_table(MODEL / "trajectories" / "train" / "0001.parquet")
    records = table.to_pylist()
    records[0]["metrics"] = "{not json"
    records[1]["messages"][2]["tool_calls"] = "[{broken"
    records[1]["messages"][2]["trainable"] = True
    out = tmp_path / "bad" / "trajectories" / "train"
    out.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records, schema=table.schema), out / "0001.parquet")
    data = (MODEL / "trajectories" / "train" / "0002.parquet").read_bytes()
    (out / "0002.parquet").write_bytes(data[: len(data) // 2])  # a file cut short while being copied
    return tmp_path / "bad"


def test_bad_records_are_quarantined_with_file_line_field(tmp_path, store):
    report, got = rows(store, _bad_run(tmp_path), "bad")
    assert report.bad_records == 3 and len(got) == 6
    q = [json.loads(line) for line in (store.root / "runs" / "bad" / "quarantine.jsonl").read_text().splitlines()]
    by = {(e["file"], e["line"]): e["reason"] for e in q}
    assert "field 'metrics': expected JSON text" in by[("trajectories/train/0001.parquet", 1)]
    assert "field 'messages[2].tool_calls': expected JSON text" in by[("trajectories/train/0001.parquet", 2)]
    assert "not a readable Parquet file" in by[("trajectories/train/0002.parquet", None)]


def test_strict_names_file_row_and_field(tmp_path, store):
    with pytest.raises(BadInputError, match=r"trajectories/train/0001\.parquet:1: field 'metrics'"):
        store.ingest(_bad_run(tmp_path), run="strict", options=ReadOptions(strict=True))
