"""`rlaudit bench` end to end at the small size: what CI runs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlaudit.cli import app
from rlaudit.organisms import SCENARIOS
from rlaudit.organisms.bench import bench_scenario

runner = CliRunner()


# The clean controls, this area's detector's scenario and one behaviour and one exposure scenario: every
# scenario is audited at the default size in test_scenarios_detected; this is the CLI path CI runs.
CI_SCENARIOS = ["clean_basic", "clean_judges", "clean_legit", "broken_reward", "cot_fallback", "format_marker"]


@pytest.mark.slow
def test_small_bench_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--size", "small", "--no-latency", "--json", str(out),
                                 "--scenarios", ",".join(CI_SCENARIOS)])
    assert result.exit_code == 0, result.output
    for name in CI_SCENARIOS:
        assert name in result.output
    assert "recall" in result.output and "precision" in result.output
    data = json.loads(out.read_text())
    assert data["size"] == "small" and [s["scenario"] for s in data["scenarios"]] == CI_SCENARIOS
    totals = data["totals"]
    for key in ("recall", "precision", "attribution_accuracy", "median_latency", "false_findings",
                "false_findings_on_clean", "issues", "detected"):
        assert key in totals
    assert totals["issues"] == sum(len(SCENARIOS[n].build(30).implants) for n in CI_SCENARIOS)
    assert totals["errors"] == 0
    for s in data["scenarios"]:
        assert {"scenario", "clean", "issues", "false_findings", "detected", "total"} <= set(s)
        if s["clean"]:  # the reward_health detector (this area's) never fires on a clean control
            assert not [f for f in s["false_findings"] if f["kind"] == "reward_health"]
    broken = next(s for s in data["scenarios"] if s["scenario"] == "broken_reward")
    assert broken["detected"] == broken["total"] == 4


def test_latency_is_measured_from_onset(tmp_path):
    score = bench_scenario("broken_reward", size="small", latency=True, workdir=tmp_path)
    assert score.detected == score.total == 4
    by_problem = {i.key.split(": ")[1]: i for i in score.issues}
    assert all(i.latency is not None and i.latency >= 0 for i in score.issues)
    assert by_problem["stuck"].onset_step == 18  # the server dies at 60% of 30 steps
    assert by_problem["stuck"].latency <= 30 - 18


def test_unknown_scenario_and_size_are_clear_errors():
    result = runner.invoke(app, ["bench", "--scenarios", "nope", "--no-latency"])
    assert result.exit_code != 0 and "unknown scenario" in str(result.exception or result.output)
    result = runner.invoke(app, ["bench", "--size", "huge", "--no-latency"])
    assert result.exit_code != 0


def test_simulate_command(tmp_path):
    result = runner.invoke(app, ["simulate", "sycophancy", "--out", str(tmp_path / "s"), "--format", "verl",
                                 "--steps", "3", "--prompts", "2", "--generations", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["1.jsonl", "2.jsonl", "3.jsonl",
                                                                   "ground_truth.json", "metrics.jsonl"]
    listing = runner.invoke(app, ["simulate", "--list"])
    assert listing.exit_code == 0 and "goblin_persona" in listing.output


@pytest.mark.parametrize("args,message", [(["nope"], "unknown scenario"),
                                          (["clean_basic", "--format", "wandb"], "unknown simulator format"),
                                          (["clean_basic", "--steps", "0"], "positive integers"),
                                          (["clean_basic"], "--out")])
def test_simulate_bad_input_is_a_clear_error(tmp_path, args, message):
    if "--out" not in args and message != "--out":
        args = [*args, "--out", str(tmp_path / "x")]
    result = runner.invoke(app, ["simulate", *args])
    assert result.exit_code != 0 and message in str(result.exception)
