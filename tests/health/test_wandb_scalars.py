"""W&B scalar logs: run datastores written by wandb's own code (tests/health/fixtures/make_wandb_scalars.py: TRL's
logging through transformers' WandbCallback, verl's Tracking), history exports, and the errors for bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlaudit.health import wire
from rlaudit.health.scalars import (ScalarLogError, find_scalar_logs, read_scalar_file, read_scalar_logs,
                                    scalar_log_files)

FIX = Path(__file__).parent / "fixtures" / "wandb"
TRL_STATE = Path(__file__).parents[1] / "conformance" / "fixtures" / "trl" / "chat_think" / "checkpoint-20" / \
    "trainer_state.json"


def verl_row(s: int) -> dict[str, float]:  # what the generator logged through verl's Tracking
    return {"actor/entropy": 1.0 if s <= 4 else 0.05, "actor/kl_loss": 0.001 * s ** 3,
            "actor/pg_clipfrac": 0.35 + 0.01 * (s % 2), "actor/grad_norm": 1e4 if s == 7 else 1.0,
            "actor/ppo_kl": 0.002, "actor/lr": 1e-6, "critic/score/mean": 0.5}


def test_trl_through_wandb_callback_matches_trainer_state():
    """Every numeric log_history value comes back under `train/<key>` at the trainer's global step (not W&B's
    own `_step` counter)."""
    files = find_scalar_logs(FIX / "trl")
    assert len(files) == 1 and files[0].suffix == ".wandb"
    log = read_scalar_logs(files)
    assert log.formats == {"wandb"} and not log.skipped
    state = json.loads(TRL_STATE.read_text())
    expected = {(e["step"], f"train/{k}", float(v)) for e in state["log_history"] for k, v in e.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert set(log.rows) == expected
    assert log.found()["entropy"] == "train/entropy"
    assert log.found()["clip_fraction"] == "train/clip_ratio/region_mean"


def test_verl_tracking_run_directory():
    log = read_scalar_logs(find_scalar_logs(FIX / "verl"))
    assert log.found() == {"entropy": "actor/entropy", "kl": "actor/kl_loss", "clip_fraction": "actor/pg_clipfrac",
                           "grad_norm": "actor/grad_norm", "learning_rate": "actor/lr", "update_kl": "actor/ppo_kl",
                           "reward": "critic/score/mean"}
    for key in verl_row(1):
        assert log.series(key) == (list(range(1, 13)), [verl_row(s)[key] for s in range(1, 13)])


@pytest.mark.parametrize("name", ["history.csv", "history.jsonl", "ui_export.csv"])
def test_history_exports_equal_the_datastore(name):
    rows, fmt = read_scalar_file(FIX / "export" / name)
    assert fmt == "wandb-export"
    datastore = read_scalar_logs(find_scalar_logs(FIX / "verl")).rows
    assert sorted(rows) == sorted(datastore)


def test_records_spanning_blocks():
    """Records over 32 KiB (wandb splits them into FIRST/LAST chunks) decode whole."""
    path = next((FIX / "wide").rglob("*.wandb"))
    log = read_scalar_logs([path])
    assert len(log.rows) == 3000
    assert log.series("metric/1499") == ([1, 2], [1499.5, 2998.5])


def test_truncated_datastore_reads_its_complete_records(tmp_path):
    """A run still writing: the records before the cut are read, the partial one is not an error."""
    src = next((FIX / "verl").rglob("*.wandb"))
    data = src.read_bytes()
    cut = tmp_path / "run-x.wandb"
    cut.write_bytes(data[: len(data) * 2 // 3])
    rows, _ = read_scalar_file(cut)
    steps = sorted({s for s, _, _ in rows})
    assert steps and steps == list(range(1, len(steps) + 1)) and len(steps) < 12


def test_corrupt_datastore_names_the_file(tmp_path):
    src = next((FIX / "verl").rglob("*.wandb"))
    data = bytearray(src.read_bytes())
    data[200] ^= 0xFF
    bad = tmp_path / "run-bad.wandb"
    bad.write_bytes(bytes(data))
    with pytest.raises(ScalarLogError, match=r"run-bad\.wandb.*checksum"):
        read_scalar_file(bad)
    other = tmp_path / "run-other.wandb"
    other.write_bytes(b"not a datastore at all")
    with pytest.raises(ScalarLogError, match=r"run-other\.wandb: not a W&B datastore"):
        read_scalar_file(other)
    log = read_scalar_logs([bad, other])  # found automatically: skipped with the reason, not fatal
    assert len(log.skipped) == 2 and not log.rows


def test_ui_export_of_several_runs_is_an_error(tmp_path):
    p = tmp_path / "panel.csv"
    p.write_text("Step,a - train/entropy,b - train/entropy\n1,0.5,0.6\n")
    with pytest.raises(ScalarLogError, match="holds 2 runs"):
        read_scalar_file(p)


def test_export_row_without_a_step_names_the_line(tmp_path):
    p = tmp_path / "history.jsonl"
    p.write_text('{"_step": 0, "train/entropy": 1.0}\n{"_step": null, "train/entropy": 0.9}\n'
                 '{"_step": 2, "train/entropy": 0.8}\n')
    with pytest.raises(ScalarLogError, match=r"history\.jsonl: line 2: no step"):
        read_scalar_file(p)


def test_user_named_paths(tmp_path):
    assert scalar_log_files(FIX / "verl") == find_scalar_logs(FIX / "verl")
    run_dir = next((FIX / "verl" / "wandb").glob("*run-*"))
    assert [p.name for p in scalar_log_files(run_dir)] == [next(run_dir.glob("*.wandb")).name]
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ScalarLogError, match=r"notes\.txt: not a recognised scalar log; expected TRL"):
        scalar_log_files(notes)
    with pytest.raises(ScalarLogError, match="no such file"):
        scalar_log_files(tmp_path / "missing.jsonl")
    with pytest.raises(ScalarLogError, match="no scalar log in this directory"):
        scalar_log_files(tmp_path)


def test_latest_run_symlink_is_not_read_twice(tmp_path):
    shutil.copytree(FIX / "verl", tmp_path / "run")
    wandb_dir = tmp_path / "run" / "wandb"
    (wandb_dir / "latest-run").symlink_to(next(wandb_dir.glob("offline-run-*")).name)
    assert len(find_scalar_logs(tmp_path / "run")) == 1


def test_wire_fields_rejects_a_field_past_the_end():
    with pytest.raises(ValueError):
        list(wire.fields(b"\x0a\x05ab"))  # field 1, length 5, only 2 bytes
