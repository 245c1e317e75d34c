"""`rlaudit audit --fail-on`: the CI gate's exit statuses, end to end through the console entry point, and the
training_health organisms found with their remedies."""

from __future__ import annotations

import json

import pytest

from rlaudit.cli import GATE_FAIL, GATE_INCOMPLETE, gate_status, main
from rlaudit.findings import Finding
from rlaudit.organisms import simulate


def run_main(*args) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
        raise SystemExit(0)  # main returns normally on success
    return exc.value.code or 0


@pytest.fixture(scope="module")
def easy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "easy"
    simulate("easy_groups", out, format="trl", seed=0)
    return out


def test_gate_statuses_are_distinct():
    f = lambda kind, sev: Finding(kind=kind, run="r", severity=sev, title="t",  # noqa: E731
                                  fields={"detector": "x"} if kind == "audit_error" else {})
    assert gate_status([], "medium")[0] == 0
    assert gate_status([f("training_health", "low")], "medium")[0] == 0
    assert gate_status([f("training_health", "medium")], "medium")[0] == GATE_FAIL == 1
    assert gate_status([f("training_health", "medium")], "high")[0] == 0
    assert gate_status([f("audit_error", "low")], "high")[0] == GATE_INCOMPLETE == 3
    # a failing finding wins over an incomplete audit: the pipeline must stop either way, 1 says why
    assert gate_status([f("audit_error", "low"), f("cot_grading", "high")], "high")[0] == GATE_FAIL


@pytest.mark.slow
def test_fail_on_end_to_end(tmp_path, easy_run, monkeypatch, capsys):
    store, out = tmp_path / "store", tmp_path / "f.json"
    code = run_main("audit", easy_run, "--store", store, "--json", out, "--detector", "training_health",
                    "--fail-on", "medium")
    assert code == GATE_FAIL
    assert "gate (--fail-on medium): FAIL" in capsys.readouterr().err
    data = json.loads(out.read_text())
    zv = [f for f in data["findings"] if f["kind"] == "training_health" and f["check"] == "zero_variance"]
    assert zv and zv[0]["severity"] == "high" and zv[0]["direction"] == "all_correct"
    assert zv[0]["trainer"] == "trl" and "num_generations" in zv[0]["remedy"]
    assert any("trainer_state" in n or "no trainer scalar logs" in n for n in zv[0]["notes"])

    # below the threshold: 0 (the same store; the run is re-audited, not re-ingested)
    assert run_main("audit", easy_run, "--store", store, "--detector", "reward_health", "--fail-on", "high") == 0

    # a detector that cannot run: the distinct status 3
    from rlaudit.detectors.training_health import TrainingHealthDetector

    def boom(self, ctx):
        raise RuntimeError("scalar log unreadable")
    monkeypatch.setattr(TrainingHealthDetector, "detect", boom)
    code = run_main("audit", easy_run, "--store", store, "--detector", "training_health", "--fail-on", "high")
    assert code == GATE_INCOMPLETE
    assert "INCOMPLETE" in capsys.readouterr().err

    assert run_main("audit", easy_run, "--store", store, "--fail-on", "severe") == 2  # a usage mistake


@pytest.mark.slow
@pytest.mark.parametrize("scenario,check,fmt", [("easy_groups", "zero_variance", "canonical"),
                                                ("length_blowup", "length_growth", "verl"),
                                                ("length_blowup", "truncation", "canonical"),
                                                ("eval_divergence", "reward_eval_divergence", "canonical")])
def test_organisms_found_with_trainer_settings(tmp_path, scenario, check, fmt):
    from rlaudit.audit import audit
    from rlaudit.detectors import AuditConfig

    src = tmp_path / scenario
    simulate(scenario, src, format=fmt, seed=1)
    result = audit([src], store=tmp_path / "store", format=fmt, config=AuditConfig(detectors=["training_health"]))
    th = {f["check"]: f for f in result.of_kind("training_health")}
    assert check in th and th[check].severity in ("medium", "high")
    assert th[check]["remedy"]
    if fmt == "verl":
        assert "data.max_response_length" in th[check]["remedy"]
