"""Run-level notes (`ReadContext.note`): what a reader assumed reaches the ingest report, the manifest, the run
summary, the findings JSON and the CLI, and survives incremental ingests that read no file."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlaudit import audit
from rlaudit.cli import app
from rlaudit.readers.trl import TrlReader

from .trainer_files import trl_step


@pytest.fixture
def noting_trl(monkeypatch):
    calls = []

    def prepare(self, source, ctx):
        calls.append(source)
        ctx.note(f"reward weights not found; assumed 1 (prepare call {len(calls)})", key="weights")
        ctx.note("logging_steps=10: 9 of 10 generation batches were never logged")

    monkeypatch.setattr(TrlReader, "prepare", prepare)
    return calls


def _run(tmp_path, steps):
    out = tmp_path / "grpo"
    for step in steps:
        trl_step(out, step, ["system\nBe kind.\nuser\nhi"] * 4, ["<think>r</think>a"] * 4,
                 rewards={"acc": [1.0, 0.0, 1.0, 0.0]})
    return out


def test_notes_flow_to_report_manifest_summary_and_json(tmp_path, store, noting_trl):
    out = _run(tmp_path, [1])
    report = store.ingest(out)
    assert report.notes == ["reward weights not found; assumed 1 (prepare call 1)",
                            "logging_steps=10: 9 of 10 generation batches were never logged"]
    assert store.summary("grpo").notes == report.notes
    assert store.ingest(out).files_read == 0  # nothing new: the notes stay, the keyed one is replaced
    assert store.summary("grpo").notes[0].endswith("(prepare call 2)") and len(store.summary("grpo").notes) == 2
    result = audit([out], store=store, json_path=tmp_path / "f.json")
    data = json.loads((tmp_path / "f.json").read_text())
    assert data["runs"][0]["notes"][1].startswith("logging_steps=10")
    assert data["ingest"][0]["notes"] == result.ingests[0].notes


def test_cli_prints_notes_under_the_ingest_line(tmp_path, noting_trl):
    out = _run(tmp_path, [1, 2])
    r = CliRunner().invoke(app, ["ingest", str(out), "--store", str(tmp_path / "s")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "note: logging_steps=10: 9 of 10 generation batches were never logged" in r.output
