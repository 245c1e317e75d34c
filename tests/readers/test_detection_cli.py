"""Layout detection precedence and the CLI's error paths (exit code 2, one clear message, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rlaudit.cli import app
from rlaudit.errors import UnknownLayoutError
from rlaudit.readers import READERS, resolve_reader

from .trainer_files import primerl_step, trl_step, verifiers_episode, verifiers_trace, verl_step


def test_registration_order_is_detection_precedence():
    assert [r.name for r in READERS] == ["trl", "verl", "prime-rl", "verifiers", "tinker", "nemo-rl", "art", "wandb",
                                         "openrlhf", "trackio", "canonical"]


def test_each_layout_is_detected(tmp_path):
    trl_step(tmp_path / "t", 1, ["p"], ["c"], rewards={"r": [1.0]})
    verl_step(tmp_path / "v" / "rollout_data", 1, ["p"], ["c"], scores=[1.0])
    primerl_step(tmp_path / "p", 1, [verifiers_episode([verifiers_trace(None, "q", "a", None, {"r": (1.0, 1.0)})],
                                                       1, group="g")])
    assert resolve_reader(tmp_path / "t").name == "trl"
    assert resolve_reader(tmp_path / "v").name == "verl"
    assert resolve_reader(tmp_path / "p").name == "prime-rl"


def test_unknown_layout_lists_the_known_layouts(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnknownLayoutError) as err:
        resolve_reader(tmp_path)
    for r in READERS:
        assert r.name in str(err.value)


def _cli(tmp_path, *args):
    """The real console-script entry point, as a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "rlaudit.cli", "ingest", "--store", str(tmp_path / "store"),
                           *map(str, args)], capture_output=True, text=True)
    proc.stderr = " ".join(proc.stderr.split())  # rich wraps long messages
    return proc


def _main(tmp_path, capsys, monkeypatch, *args):
    """`rlaudit.cli.main` in-process (faster than a subprocess): (exit code, stderr)."""
    from rlaudit import cli

    monkeypatch.setattr(sys, "argv", ["rlaudit", "ingest", "--store", str(tmp_path / "store"), *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    return code, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("case", ["empty", "unknown", "wrong-column", "missing"])
def test_cli_user_errors_exit_2_with_a_message(tmp_path, capsys, monkeypatch, case):
    src = tmp_path / "src"
    src.mkdir()
    extra = []
    if case == "unknown":
        (src / "model.bin").write_bytes(b"\0")
    elif case == "wrong-column":
        (src / "rollouts.jsonl").write_text(json.dumps({"step": 1, "prompt": "p", "completion": "c"}) + "\n")
        extra = ["--columns", "step=global_step"]
    elif case == "missing":
        src = tmp_path / "does-not-exist"
    code, err = _main(tmp_path, capsys, monkeypatch, src, *extra)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error:")
    expected = {"empty": "empty directory", "unknown": "unknown layout", "wrong-column": "global_step",
                "missing": "no such file"}[case]
    assert expected in err


@pytest.mark.slow
def test_cli_strict_bad_record_exits_2_naming_file_and_line(tmp_path):
    d = tmp_path / "v"
    verl_step(d, 1, ["p", "p"], ["a", "b"], scores=[1.0, 2.0])
    with open(d / "1.jsonl", "a") as fh:
        fh.write('{"input": "p", "output": "c", "score": "NaN?"}\n')
    proc = _cli(tmp_path, d, "--strict")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "1.jsonl:3" in proc.stderr and "score" in proc.stderr
    proc = _cli(tmp_path, d, "--run", "lenient")
    assert proc.returncode == 0 and "1 bad record" in proc.stderr and "1.jsonl:3" in proc.stderr


def test_cli_runner_ingest_then_runs(tmp_path):
    trl_step(tmp_path / "t", 1, ["p"], ["c"], rewards={"r": [1.0]})
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "t"), "--store", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["runs", "--store", str(tmp_path / "s"), "--json"])
    assert json.loads(result.stdout)[0]["format"] == "trl"


def test_cli_columns_file_maps_a_generic_table(tmp_path, capsys, monkeypatch):
    src = tmp_path / "export"
    src.mkdir()
    (src / "rows.jsonl").write_text(json.dumps({"global_step": 3, "question": "q", "response": "<think>r</think>a",
                                                "judge_seen": "a", "score_a": 1.0}) + "\n")
    cols = tmp_path / "cols.toml"
    cols.write_text('[columns]\nstep = "global_step"\nprompt = "question"\ncompletion = "response"\n')
    code, err = _main(tmp_path, capsys, monkeypatch, src, "--columns-file", cols, "--grader-input", "a=judge_seen")
    assert code == 0, err
    from rlaudit.store import Store

    row = Store(tmp_path / "store").table("export").to_pylist()[0]
    assert row["step"] == 3 and row["reasoning"] == "r" and row["answer"] == "a"
    assert dict(row["grader_inputs"]) == {"a": "a"} and dict(row["rewards"]) == {"score_a": 1.0}
