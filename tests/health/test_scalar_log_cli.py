"""`rlaudit audit --scalar-log [RUN=]PATH`, end to end through the console entry point: W&B run directories written
by wandb's own code feed the training_health scalar checks; wrong paths and ambiguous runs are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaudit.cli import main
from rlaudit.organisms import simulate

FIX = Path(__file__).parent / "fixtures" / "wandb"


def run_main(*args) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
        raise SystemExit(0)
    return exc.value.code or 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name in ("a", "b"):
        simulate("clean_basic", root / name, format="verl", steps=12, prompts=4, generations=4, seed=1)
    return root


def findings(path: Path) -> dict[str, dict]:
    data = json.loads(path.read_text())
    return {f["check"]: f for f in data["findings"] if f["kind"] == "training_health"}


def test_scalar_log_from_a_wandb_run_directory(runs, tmp_path, capsys):
    out = tmp_path / "f.json"
    code = run_main("audit", runs / "a", "--store", tmp_path / "s", "--json", out, "--detector", "training_health",
                    "--scalar-log", FIX / "verl")
    assert code == 0
    err = capsys.readouterr().err
    assert "scalar logs of a: 1 file(s) (wandb)" in err
    assert "entropy=actor/entropy" in err and "clip_fraction=actor/pg_clipfrac" in err and "not found:" in err
    found = findings(out)
    assert found["entropy_collapse"]["severity"] == "high" and found["entropy_collapse"]["onset_step"] == 5
    assert found["kl_drift"]["severity"] == "medium"
    assert found["clip_saturation"]["severity"] == "medium"
    assert found["grad_norm"]["onset_step"] == 7
    assert found["entropy_collapse"]["scalar_files"][0].endswith(".wandb")
    assert "actor_rollout_ref.actor" in found["entropy_collapse"]["remedy"]  # verl's setting: the run is verl


def test_scalar_log_per_run(runs, tmp_path, capsys):
    out = tmp_path / "f.json"
    code = run_main("audit", runs / "a", runs / "b", "--store", tmp_path / "s", "--json", out,
                    "--detector", "training_health", "--scalar-log", f"b={FIX / 'export' / 'history.csv'}")
    assert code == 0
    data = json.loads(out.read_text())
    by_run = {(f["run"], f["check"]) for f in data["findings"] if f["kind"] == "training_health"}
    assert ("b", "entropy_collapse") in by_run and ("a", "entropy_collapse") not in by_run
    assert "scalar logs of b: 1 file(s) (wandb-export)" in capsys.readouterr().err


def test_scalar_log_errors(runs, tmp_path, capsys):
    store = tmp_path / "s"
    not_a_log = tmp_path / "notes.txt"
    not_a_log.write_text("hello\n")
    assert run_main("audit", runs / "a", "--store", store, "--scalar-log", not_a_log) == 2
    err = capsys.readouterr().err
    assert "notes.txt: not a recognised scalar log; expected TRL trainer_state.json" in err
    assert not store.exists()  # checked before ingesting

    assert run_main("audit", runs / "a", runs / "b", "--store", store, "--scalar-log", FIX / "verl") == 2
    assert "say which run it belongs to with --scalar-log RUN=PATH" in capsys.readouterr().err

    assert run_main("audit", runs / "a", "--store", store, "--scalar-log", f"zzz={FIX / 'verl'}") == 2
    assert "no run 'zzz' in this audit" in capsys.readouterr().err


def test_token_options(runs, tmp_path, capsys):
    store = tmp_path / "s"
    assert run_main("audit", runs / "a", "--store", store, "--tokenizer", tmp_path) == 2
    assert "no tokenizer.json there" in capsys.readouterr().err and not store.exists()
    assert run_main("audit", runs / "a", "--store", store, "--max-completion-tokens", "0") == 2
    assert "--max-completion-tokens must be a positive integer" in capsys.readouterr().err

    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "f.json"
    assert run_main("audit", runs / "a", "--store", store, "--json", out, "--detector", "training_health",
                    "--tokenizer", tmp_path / "tokenizer.json", "--max-completion-tokens", "512",
                    "--scalar-log", FIX / "verl") == 0  # the scalar findings carry the run's notes
    notes = json.loads(out.read_text())["findings"][0]["notes"]
    assert f"length in tokens (tokenizer {tmp_path / 'tokenizer.json'}; limit 512 tokens)" in notes
