"""The grader probe: counterfactual edits of the reasoning vs the grader's own noise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "detectors"))
from cot_synth import make_run  # noqa: E402

import probe_graders as g  # noqa: E402
from rlaudit.errors import RlauditError  # noqa: E402
from rlaudit.cot.probe import ProbeConfig, counterfactuals, load_grader, probe, probe_grader, static_check  # noqa: E402


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    from rlaudit.cot.probe import load_rollouts
    from rlaudit.store import Store

    store = Store(tmp_path_factory.mktemp("probe") / "store")
    table, _ = make_run(run="probe", steps=4, groups=4, group_size=4, seed=7)
    store.append("probe", table, "p")
    return load_rollouts(store, "probe", samples=60)


CONFIG = ProbeConfig(samples=60, repeats=3)


@pytest.mark.parametrize("grader", [g.answer_only, g.stochastic_answer_only, g.coin_flip_answer_only,
                                    g.conversational_answer_only, g.compute_score])
def test_answer_only_graders_are_not_cot_sensitive(rows, grader):
    result = probe(grader, rows, CONFIG)
    assert result["cot_sensitive"] is False, result["variants"]
    assert result["errors"] == 0


@pytest.mark.parametrize("grader,must_move", [
    (g.full_completion, {"removed", "swapped", "inject_head", "inject_tail"}),
    (g.verl_full, {"removed", "swapped"}),
    (g.tail_only, {"inject_tail", "tail_altered"}),
    (g.unclosed_only, {"unclosed_swapped", "unclosed_inject_tail"}),
])
def test_graders_that_read_the_reasoning_are_caught(rows, grader, must_move):
    result = probe(grader, rows, CONFIG)
    assert result["cot_sensitive"] is True and result["p_value"] < 0.05
    for v in must_move:
        assert result["variants"][v]["fraction_moved"] > 0.5, v
    assert result["examples"] and result["examples"][0]["variant"] in result["variants"]


def test_partial_readers_do_not_move_on_unexercised_variants(rows):
    result = probe(g.unclosed_only, rows, CONFIG)
    assert result["variants"]["swapped"]["moved"] == 0  # with the tag present it reads only the answer
    assert result["noise"]["deterministic"] is True


def test_stochastic_noise_is_measured(rows):
    result = probe(g.stochastic_answer_only, rows, CONFIG)
    assert result["noise"]["deterministic"] is False and result["noise"]["rescore_moved_rate"] == 1.0
    assert result["noise"]["mean_abs_noise"] > 0.1


def test_counterfactuals_keep_the_answer_and_edit_only_the_reasoning(rows):
    texts = counterfactuals(rows, ProbeConfig().tags)
    for i, r in enumerate(rows):
        for v in ("removed", "swapped", "inject_head", "inject_tail", "tail_altered"):
            assert texts[v][i].endswith("</think>" + r.answer)
            assert texts[v][i] != texts["original"][i]
        assert "</think>" not in texts["unclosed_swapped"][i] and texts["unclosed_swapped"][i].endswith(r.answer)


def test_static_check_warns_only_on_graders_that_never_strip(rows):
    assert static_check(g.full_completion)["warning"]
    assert static_check(g.tail_only)["warning"]
    stripping = static_check(g.answer_only)
    assert stripping["warning"] is None and "</think>" in stripping["reasoning_markers"]
    assert static_check(g.stochastic_answer_only)["strips_reasoning"]  # reached through answer_only()


def test_probe_grader_end_to_end_with_json(tmp_path):
    from rlaudit.store import Store

    store = Store(tmp_path / "store")
    table, _ = make_run(run="e2e", steps=3, groups=4, group_size=4, seed=1)
    store.append("e2e", table, "p")
    out = tmp_path / "probe.json"
    result = probe_grader("probe_graders:tail_only", "e2e", store, ProbeConfig(samples=40), json_path=out)
    saved = json.loads(out.read_text())
    assert saved["cot_sensitive"] is True and result["run"] == "e2e"
    assert saved["static_check"]["warning"]


def test_bad_grader_specs_are_clear_errors(tmp_path):
    with pytest.raises(RlauditError, match="MODULE:FUNCTION"):
        load_grader("no_colon")
    with pytest.raises(RlauditError, match="cannot import"):
        load_grader("no_such_module_xyz:f")
    with pytest.raises(RlauditError, match="no attribute"):
        load_grader("probe_graders:missing")
    path = tmp_path / "mine.py"
    path.write_text("def f(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    assert load_grader(f"{path}:f")(None, ["a"]) == [1.0]


def test_cli_probe_grader_on_a_run_directory(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rlaudit.cli import app

    table, _ = make_run(run="clidir", steps=2, groups=4, group_size=4, seed=4)
    src = tmp_path / "clidir"
    src.mkdir()
    with open(src / "rollouts.jsonl", "w") as fh:
        for r in table.to_pylist():
            rec = {k: r[k] for k in ("step", "group_id", "prompt", "completion", "task")}
            rec["rewards"] = dict(r["rewards"])
            fh.write(json.dumps(rec) + "\n")
    out = tmp_path / "probe.json"
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    result = CliRunner().invoke(app, ["probe-grader", "probe_graders:answer_only", str(src), "--store",
                                      str(tmp_path / "store"), "--json", str(out), "--samples", "30"])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["run"] == "clidir" and saved["samples"] == 30 and saved["cot_sensitive"] is False
