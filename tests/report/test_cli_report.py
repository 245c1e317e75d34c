"""`rlaudit report` and the detector progress of `rlaudit audit`: thin front ends over audit_store and the report."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rlaudit import detectors as det
from rlaudit.audit import AuditResult, audit_store
from rlaudit.cli import app
from rlaudit.errors import RlauditError
from rlaudit.findings import Finding

from .conftest import SCRIPT


@pytest.fixture
def one_detector(monkeypatch):
    """A registry holding one detector that flags every run (the real detectors are tested elsewhere)."""
    monkeypatch.setattr(det, "DETECTORS", [])

    class Flag(det.Detector):
        name, kinds, description = "flag", ("flagged",), "flags every run"

        def detect(self, ctx):
            n = ctx.connect().execute("SELECT count(*) FROM rollouts").fetchone()[0]
            return [Finding("flagged", ctx.run, "medium", f"{ctx.run} has {n} rollouts {SCRIPT}")]

    class Second(det.Detector):
        name, kinds, description, requires = "second", (), "finds nothing", ("flag",)

        def detect(self, ctx):
            return []

    det.register(Flag)
    det.register(Second)


def _invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_report_from_the_store_audits_every_run(tmp_path, report_store, one_detector):
    out = tmp_path / "report.html"
    res = _invoke("report", "--store", report_store.root, "--out", out)
    assert res.exit_code == 0, res.output
    html = out.read_text(encoding="utf-8")
    assert html.count("<article") == 2
    assert "grpo-a has 160 rollouts &lt;script&gt;" in html and "grpo-b has 160 rollouts" in html


def test_report_for_chosen_runs_and_from_a_findings_json(tmp_path, report_store, result, one_detector):
    out = tmp_path / "a.html"
    assert _invoke("report", "--store", report_store.root, "--out", out, "--run", "grpo-b").exit_code == 0
    assert out.read_text(encoding="utf-8").count("<article") == 1

    findings = tmp_path / "findings.json"
    AuditResult(runs=result.runs, findings=[f for f in result.findings if f.kind != "emerging_behavior"]
                ).write_json(findings)  # (the sample emerging finding holds lone surrogates: not UTF-8 writable)
    out = tmp_path / "b.html"
    res = _invoke("report", "--store", report_store.root, "--json", findings, "--out", out, "--title", "T <b>")
    assert res.exit_code == 0, res.output
    html = out.read_text(encoding="utf-8")
    assert html.count("<article") == len(result.findings) - 1 and "<title>T &lt;b&gt;</title>" in html

    res = _invoke("report", "--store", tmp_path / "empty", "--json", findings, "--out", out)  # no store: JSON only
    assert res.exit_code == 0 and "rollout not in the store" in out.read_text(encoding="utf-8")


@pytest.mark.parametrize("args, message", [
    (["--store", "{tmp}/nothing"], "holds no runs"),
    (["--store", "{store}", "--run", "nope"], "no run(s) ['nope']"),
    (["--store", "{store}", "--json", "{tmp}/missing.json"], "not a findings JSON file"),
    (["--store", "{store}", "--max-evidence", "-1"], "--max-evidence must be >= 0"),
])
def test_report_user_errors_are_clear(tmp_path, report_store, one_detector, args, message):
    args = [a.format(tmp=tmp_path, store=report_store.root) for a in args]
    res = _invoke("report", *args, "--out", tmp_path / "r.html")
    assert isinstance(res.exception, RlauditError) and message in str(res.exception)


def test_unwritable_output_is_a_user_error(tmp_path, report_store, one_detector):
    res = _invoke("report", "--store", report_store.root, "--out", tmp_path)
    assert isinstance(res.exception, RlauditError) and "is a directory" in str(res.exception)


def test_report_into_a_missing_directory_is_an_error_before_any_work(tmp_path, report_store, one_detector):
    out = tmp_path / "no-such-dir" / "report.html"
    res = _invoke("report", "--store", report_store.root, "--out", out)
    assert isinstance(res.exception, RlauditError) and "does not exist" in str(res.exception)
    assert not out.parent.exists()


def test_audit_store_reports_detector_progress(report_store, one_detector):
    calls = []
    audit_store(report_store, ["grpo-a", "grpo-b"], progress=lambda *a: calls.append(a))
    assert calls == [("grpo-a", "flag", 0, 2), ("grpo-a", "second", 1, 2), ("grpo-a", "", 2, 2),
                     ("grpo-b", "flag", 0, 2), ("grpo-b", "second", 1, 2), ("grpo-b", "", 2, 2)]
