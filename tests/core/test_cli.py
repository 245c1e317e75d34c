"""The CLI end to end on a simulated run: audit, runs, findings, emerging, formats, schema, and user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rlaudit.cli import app
from rlaudit.organisms import simulate


@pytest.fixture(scope="module")
def goblin_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "goblin"
    simulate("goblin_persona", out, format="trl", seed=3)
    return out


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_audit_then_inspect_the_store(tmp_path, goblin_run):
    store, findings = tmp_path / "store", tmp_path / "f.json"
    r = invoke("audit", goblin_run, "--store", store, "--json", findings)
    assert r.exit_code == 0, r.output
    data = json.loads(findings.read_text())
    assert data["runs"][0]["run"] == "goblin" and data["runs"][0]["format"] == "trl"
    assert any(f["kind"] == "reward_attribution" and f["severity"] == "high" for f in data["findings"])

    r = invoke("runs", "--store", store, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["rows"] == data["runs"][0]["rows"]

    r = invoke("findings", findings, "--kind", "reward_attribution")
    assert r.exit_code == 0

    # a stored run can be named instead of a directory; nothing is ingested twice
    r = invoke("emerging", "goblin", "--store", store, "--min-severity", "medium")
    assert r.exit_code == 0, r.output
    r = invoke("ingest", goblin_run, "--store", store)
    assert r.exit_code == 0 and "0 rows from 0 file(s)" in r.output


def test_formats_and_schema_list_what_exists():
    assert all(name in invoke("formats").stdout for name in ("trl", "verl", "prime-rl", "canonical"))
    assert "| `grader_inputs` |" in invoke("schema").stdout


@pytest.mark.parametrize("args,message", [
    (["audit", "/nonexistent/run"], "no such file or directory"),
    (["emerging", "no-such-run"], "neither a file/directory nor a run"),
    (["audit", "{src}", "--columns", "bogus=field"], "unknown canonical column"),
    (["audit", "{src}", "--condition", "nameonly"], "NAME=REGEX"),
    (["audit", "{src}", "--detector", "nope"], "unknown detector"),
])
def test_user_errors_exit_2_with_one_clear_line(tmp_path, goblin_run, args, message):
    args = [a.format(src=goblin_run) for a in args] + ["--store", str(tmp_path / "s")]
    proc = subprocess.run([sys.executable, "-m", "rlaudit.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_the_terms_count_in_the_behaviour_table_is_the_json_count(monkeypatch):
    from rich.console import Console

    from rlaudit import cli
    from rlaudit.findings import Finding

    rec = Console(record=True, width=200)
    monkeypatch.setattr(cli, "out", rec)
    f = Finding(kind="emerging_behavior", run="r", severity="medium", title="t", explanation="", score=0.1,
                fields={"behavior": "goblin", "terms": ["goblin"] + [f"t{i}" for i in range(29)], "n_terms": 44,
                        "where": "answer", "prevalence_start": 0.01, "prevalence_end": 0.1, "ratio": 7.0,
                        "ratio_ci": [4.0, 10.0], "q_value": 1e-5, "onset_step": 17, "by_condition": {}})
    cli._print_emerging([f], [], "r", 10)
    text = rec.export_text()
    assert "+43 terms" in text and "+29 terms" not in text


def test_a_numeric_style_trace_reports_a_mean_not_a_percentage():
    from types import SimpleNamespace

    from rlaudit.cli import _trace_level

    def pct(x):
        return f"{100 * x:.0f}%"

    assert _trace_level(SimpleNamespace(numeric=True, prevalence=22.75), pct) == "mean 22.8"
    assert _trace_level(SimpleNamespace(numeric=False, prevalence=0.12), pct) == "prevalence 12%"


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_slow_audit_on_the_numpy_kernels_says_how_to_speed_it_up(tmp_path, goblin_run, monkeypatch, backend):
    """A user who installed the bare package runs the numpy kernels (twice the CPU at 1M rollouts): a long audit
    says so, once, after the audit; the compiled path, or an explicit RLAUDIT_KERNEL, says nothing."""
    from rlaudit import cli, kernels

    monkeypatch.setattr(cli, "NUMBA_HINT_SECONDS", 0.0)  # every audit counts as long
    monkeypatch.setattr(kernels, "backend", lambda: backend)
    monkeypatch.delenv(kernels.ENV, raising=False)
    r = invoke("audit", goblin_run, "--store", tmp_path / "store", "--detector", "reward_health")
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert ("pip install 'rlaudit[fast]'" in said) == (backend == "numpy"), said
    monkeypatch.setenv(kernels.ENV, "numpy")  # asked for: no hint
    r = invoke("audit", goblin_run, "--store", tmp_path / "store", "--detector", "reward_health")
    assert r.exit_code == 0 and "rlaudit[fast]" not in r.output


def test_emerging_on_a_run_whose_detectors_fail_says_so_and_exits_3(tmp_path, goblin_run):
    """A detector that could not run found nothing: the command must not answer "no emerging behaviours" with
    exit 0 (it did, for a run whose manifest is corrupt), but name the error and exit 3, as `audit` does."""
    store = tmp_path / "store"
    assert invoke("ingest", goblin_run, "--store", store).exit_code == 0
    (store / "runs" / "goblin" / "run.json").write_text('{"files": {bad json')
    r = invoke("emerging", "goblin", "--store", store)
    assert r.exit_code == 3, r.output
    assert "corrupt manifest" in r.output and "run.json" in r.output
    assert "No emerging behaviours" not in r.output
