"""`rlaudit audit RUN --json --report` on a simulated run with the real detectors: the report holds every
finding the JSON holds, and the run's table and reward curves."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from rlaudit.cli import app
from rlaudit.organisms import simulate


@pytest.mark.slow
def test_audit_writes_a_report_with_every_finding(tmp_path):
    run_dir = tmp_path / "cot_midrun"
    simulate("cot_midrun", run_dir, steps=24, prompts=8, generations=4, seed=3)
    report, findings = tmp_path / "audit.html", tmp_path / "findings.json"
    res = CliRunner().invoke(app, ["audit", str(run_dir), "--store", str(tmp_path / "store"),
                                   "--json", str(findings), "--report", str(report)])
    assert res.exit_code == 0, res.output
    listed = json.loads(findings.read_text(encoding="utf-8"))["findings"]
    html = report.read_text(encoding="utf-8")
    kinds = re.findall(r'<article class="finding item[^"]*" id="finding-\d+" data-run="[^"]*" data-kind="([^"]+)"',
                       html)
    assert kinds == [f["kind"] for f in listed][:200]
    assert '<tr data-run="cot_midrun">' in html and '"id":"run-0-rewards"' in html
    assert "cot_grading" in kinds  # the simulated judge sees the reasoning from mid-run
