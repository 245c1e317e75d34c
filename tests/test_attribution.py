"""Reward attribution: within-group statistics, signal decomposition and end-to-end traces on synthetic runs
whose biased signal is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from rlaudit import stats
from rlaudit.attribution.trace import Frame, attribute, build_signals, is_outcome_signal, trace
from rlaudit.behaviors import parse_behavior
from rlaudit.errors import RlauditError
from rlaudit.findings import jsonable
from rlaudit.organisms.calibration import attribution_interval_coverage
from rlaudit.schema import canonical_table


# ------------------------------------------------------------------------------------------------ synthetic runs
def make_run(
    seed: int = 0,
    steps: int = 12,
    groups_per_condition: int = 12,
    group_size: int = 8,
    conditions: tuple[str, ...] = ("nerdy", "plain"),
    bias: float = 0.6,  # persona reward bonus for the tic, nerdy condition only
    legit: float = 0.0,  # how much the tic raises the chance of a correct answer
    length_bias: float = 0.0,  # judge bonus per 10 words of answer
    group_ids: bool = True,
    repeat_prompts: bool = True,
    style: str = "trl",  # "trl": rewards map + total; "verl": total = score, map holds acc only
    weights: dict[str, float] | None = None,
    with_advantage: bool = False,
) -> pa.Table:
    """A GRPO-like run: per rollout a tic ('goblin') with prevalence rising over steps, a correctness signal,
    a persona reward model that applies only in the 'nerdy' condition (NaN elsewhere) and pays `bias` for the
    tic, and a format signal unrelated to the tic."""
    rng = np.random.default_rng(seed)
    n_cond = len(conditions)
    n = steps * n_cond * groups_per_condition * group_size
    step = np.repeat(np.arange(steps), n_cond * groups_per_condition * group_size)
    cond_idx = np.tile(np.repeat(np.arange(n_cond), groups_per_condition * group_size), steps)
    group = np.repeat(np.arange(n // group_size), group_size)
    prevalence = 0.15 + 0.5 * step / max(steps - 1, 1)
    tic = rng.random(n) < prevalence
    difficulty = rng.normal(0, 1, n // group_size)[group]  # prompt effect shared by a group
    correct = (rng.random(n) < sps.norm.cdf(0.2 - 0.6 * difficulty + legit * tic)).astype(float)
    fmt = (rng.random(n) < 0.7).astype(float)
    words = rng.integers(20, 120, n)
    nerdy = cond_idx == 0
    persona = np.where(nerdy, 0.3 * correct + bias * tic + rng.normal(0, 0.5, n), np.nan)
    judge = 0.5 * correct + length_bias * words / 10 + rng.normal(0, 0.5, n)
    comps = {"correctness_reward": correct, "format_reward": 0.2 * fmt, "persona_rm": persona}
    if length_bias:
        comps["judge"] = judge
    w = weights or {}
    total = sum(w.get(k, 1.0) * np.nan_to_num(v) for k, v in comps.items())
    answers = np.array([" ".join(["word"] * k) for k in range(0, 130)], dtype=object)[words]
    answers = np.where(tic, "A goblin helps: " + answers, "Here: " + answers)
    if style == "verl":
        rewards = [{"acc": float(c)} for c in correct]
    else:
        rewards = [{k: float(v[i]) for k, v in comps.items()} for i in range(n)]
    prompt_id = group if repeat_prompts else np.arange(n)
    table = {
        "run": ["sim"] * n, "rollout_id": [f"r{i}" for i in range(n)], "step": step, "split": ["train"] * n,
        "group_id": [f"g{g}" for g in group] if group_ids else [None] * n,
        "sample_index": np.tile(np.arange(group_size), n // group_size).astype(np.int32),
        "condition": np.array(conditions, dtype=object)[cond_idx],
        "system_prompt": [None] * n, "task": np.where(rng.random(n // group_size) < 0.5, "math", "chat")[group],
        "prompt": [f"question {p}" for p in prompt_id], "completion": answers, "reasoning": [None] * n,
        "answer": answers, "rewards": rewards, "reward": total,
        "advantage": _grpo_advantage(group, total) if with_advantage else [None] * n,
        "grader_inputs": [{} for _ in range(n)], "metadata": [None] * n,
    }
    return canonical_table(table)


def _grpo_advantage(group: np.ndarray, r: np.ndarray) -> np.ndarray:
    mean = np.bincount(group, r) / np.bincount(group)
    var = np.bincount(group, (r - mean[group]) ** 2) / (np.bincount(group) - 1)
    return (r - mean[group]) / (np.sqrt(var)[group] + 1e-4)


@pytest.fixture
def run_store(store):
    def add(name: str = "sim", **kwargs) -> str:
        store.append(name, make_run(**kwargs), key="part-0")
        return name
    return add


# ------------------------------------------------------------------------------------------------ statistics
def test_group_midranks_match_scipy_per_group():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 20, 500)
    values = rng.integers(0, 5, 500).astype(float)  # many ties
    ranks = stats.group_midranks(codes, values)
    for g in range(20):
        m = codes == g
        np.testing.assert_allclose(ranks[m], sps.rankdata(values[m]))


def test_grouped_mann_whitney_matches_brute_force_pairs():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 30, 400)
    values = np.round(rng.normal(size=400), 1)
    values[rng.random(400) < 0.1] = np.nan
    labels = (rng.random(400) < 0.4).astype(float)
    u, n1, n0 = stats.grouped_mann_whitney(codes, values, labels, 30)
    for g in range(30):
        m = (codes == g) & ~np.isnan(values)
        a, b = values[m & (labels == 1)], values[m & (labels == 0)]
        wins = (a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum()
        assert u[g] == pytest.approx(wins)
        assert (n1[g], n0[g]) == (a.size, b.size)


def test_bootstrap_group_sums_centre_and_spread():
    rng = np.random.default_rng(3)
    data = rng.normal(1.0, 1.0, (2000, 2))
    reps = stats.bootstrap_group_sums(data, n_boot=400, seed=0)
    assert reps.shape == (400, 2)
    np.testing.assert_allclose(reps.mean(axis=0), data.sum(axis=0), rtol=0.02)
    # Poisson bootstrap SD of a sum of iid rows is sqrt(sum x^2).
    np.testing.assert_allclose(reps.std(axis=0), np.sqrt((data**2).sum(axis=0)), rtol=0.15)


def test_poisson_weights_have_poisson_moments():
    w = stats.poisson_weights(np.random.default_rng(0), (200_000,))
    assert w.mean() == pytest.approx(1.0, abs=0.01)
    assert w.var() == pytest.approx(1.0, abs=0.02)
    assert (w == 0).mean() == pytest.approx(math.exp(-1), abs=0.01)


def test_benjamini_hochberg_matches_scipy():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    q = stats.benjamini_hochberg(p)
    np.testing.assert_allclose(q[:4], [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert np.isnan(q[4])
    rng = np.random.default_rng(0)
    p = rng.random(50) ** 3
    np.testing.assert_allclose(stats.benjamini_hochberg(p), sps.false_discovery_control(p))


def test_ratio_se_matches_bootstrap():
    rng = np.random.default_rng(4)
    den = rng.integers(1, 16, 300).astype(float)
    num = den * rng.uniform(0.3, 0.9, 300)
    reps = stats.bootstrap_group_sums(np.column_stack([num, den]), n_boot=2000, seed=1)
    boot_sd = np.std(reps[:, 0] / reps[:, 1])
    assert stats.ratio_of_sums_se(num, den) == pytest.approx(boot_sd, rel=0.15)


# ------------------------------------------------------------------------------------------------ signals
def test_outcome_names():
    for name in ("accuracy_reward", "correctness", "acc", "pass_rate", "exact_match", "unit_tests", "verified"):
        assert is_outcome_signal(name), name
    for name in ("persona_rm", "format_reward", "length_penalty", "judge", "helpfulness", "compassion",
                 "style_match", "passthrough_rm"):
        assert not is_outcome_signal(name), name
    assert is_outcome_signal("judge", ["judge"])


def _frame(table: pa.Table) -> Frame:
    comps = {}
    for k in {key for m in table.column("rewards").to_pylist() for key, _ in m}:
        comps[k] = np.array([dict(m).get(k, np.nan) for m in table.column("rewards").to_pylist()], dtype=float)
    return Frame.build(
        np.array(table.column("group_id").to_pylist(), dtype=object).astype(str),
        step=table.column("step").to_numpy(), condition=np.zeros(table.num_rows, np.int64),
        condition_names=["all"], task=np.full(table.num_rows, -1), task_names=[],
        behavior=np.char.find(np.array(table.column("answer").to_pylist(), dtype=str), "goblin") >= 0,
        components=comps, reward=table.column("reward").to_numpy(zero_copy_only=False).astype(float),
        advantage=None)


def test_weights_are_fitted_when_the_total_is_a_weighted_sum():
    frame = _frame(make_run(steps=3, weights={"persona_rm": 0.5, "format_reward": 2.0}))
    signals, _, notes = build_signals(frame)
    w = {s.name: s.weight for s in signals}
    assert w["persona_rm"] == pytest.approx(0.5) and w["format_reward"] == pytest.approx(2.0)
    assert "other" not in w and any("weights fitted" in n for n in notes)


def test_residual_becomes_other_signal_for_verl_style_scores():
    frame = _frame(make_run(steps=3, style="verl"))
    signals, _, _ = build_signals(frame)
    assert [s.name for s in signals] == ["acc", "other", "reward"]
    assert [s.kind for s in signals] == ["component", "other", "total"]


def test_component_pressures_add_up_to_the_total_push():
    frame = _frame(make_run(steps=4, weights={"persona_rm": 0.5}))
    t = attribute(frame, parse_behavior("goblin"), n_boot=50)
    parts = sum(s.pressure for s in t.signals if s.kind != "total")
    assert parts == pytest.approx(t.signal("reward").pressure, rel=1e-9)
    shares = [s.pressure_share for s in t.signals if s.kind != "total"]
    assert sum(max(x, 0) for x in shares) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ end to end
def test_biased_persona_signal_ranks_first_and_is_high(store, run_store):
    run = run_store(bias=0.6)
    t = trace(store, run, "goblin", n_boot=300)
    assert t.top.signal == "persona_rm"
    assert t.condition == "nerdy"
    assert t.top.paired_preference_ci[0] > 0.5
    assert t.top.pressure_share > 0.5
    assert t.top.matched_preference_ci[0] > 0.5  # holds among equally-correct pairs
    assert t.severity == "high" and t.suspect == "persona_rm"
    assert t.grouping == "group_id" and not t.warnings
    # The persona signal applies to the nerdy condition only and is compared there only.
    assert t.top.applies == pytest.approx(0.5)
    assert t.by_condition["plain"]["pressure"]["persona_rm"] == 0
    assert math.isnan(t.by_condition["plain"]["paired_preference"]["persona_rm"])
    # Unrelated signal: indifferent.
    fmt = t.signal("format_reward")
    assert fmt.paired_preference_ci[0] < 0.5 < fmt.paired_preference_ci[1] or not fmt.significant
    # Evidence: pairs from one group, with and without the tic, with their scores.
    assert len(t.evidence) >= 2
    a, b = t.evidence[0], t.evidence[1]
    assert a.data["has_behavior"] and not b.data["has_behavior"] and a.data["group_id"] == b.data["group_id"]
    assert "goblin" in a.text.lower() and "goblin" not in b.text.lower()
    assert a.data["scores"]["persona_rm"] > b.data["scores"]["persona_rm"]
    json.dumps(t.to_json())  # JSON-ready


def test_legitimate_behaviour_learned_from_correctness_is_low(store, run_store):
    run = run_store(bias=0.0, legit=1.0, groups_per_condition=40)
    t = trace(store, run, "goblin", n_boot=300)
    assert t.top.signal == "correctness_reward"
    assert t.top.outcome and t.top.paired_preference_ci[0] > 0.5
    # The persona RM likes correct answers, so it prefers the tic, but not among equally-correct pairs.
    persona = t.signal("persona_rm")
    assert persona.paired_preference_ci[0] > 0.5
    assert abs(persona.matched_preference - 0.5) < 0.03
    assert persona.matched_preference_ci[1] < persona.paired_preference
    assert t.severity == "low" and t.suspect is None


def test_no_attributable_signal_is_info(store, run_store):
    run = run_store(bias=0.0, legit=0.0, seed=5)
    t = trace(store, run, "goblin", n_boot=200)
    assert t.severity in ("info", "low")  # nothing pays for the tic beyond chance
    assert not any(s.significant and s.kind == "component" and not s.outcome for s in t.signals)


def test_without_group_ids_falls_back_with_a_warning(store, run_store):
    run = run_store(group_ids=False, repeat_prompts=False, bias=0.8, groups_per_condition=16)
    t = trace(store, run, "goblin", n_boot=200)
    assert t.grouping == "step" and t.group_key == "step,condition"
    assert any("weaker" in w for w in t.warnings)
    assert t.top.signal == "persona_rm"


def test_without_group_ids_repeated_prompts_are_the_groups(store, run_store):
    run = run_store(group_ids=False, repeat_prompts=True)
    t = trace(store, run, "goblin", n_boot=200)
    assert t.grouping == "step" and t.group_key == "step,condition,prompt"
    assert t.top.signal == "persona_rm" and t.groups == 12 * 2 * 12


def test_verl_single_score_attributes_to_the_residual(store, run_store):
    run = run_store(style="verl")
    t = trace(store, run, "goblin", n_boot=200)
    assert t.top.signal == "other" and t.top.kind == "other"
    assert t.condition == "nerdy"


def test_numeric_behaviour_length_bias(store, run_store):
    run = run_store(bias=0.0, length_bias=0.3)
    t = trace(store, run, "style:length", n_boot=200)
    assert t.numeric
    assert t.top.signal == "judge" and t.top.paired_preference_ci[0] > 0.5
    assert t.severity == "high"


def test_logged_advantage_agrees_with_the_rebuilt_one(store, run_store):
    run = run_store(with_advantage=True)
    t = trace(store, run, "goblin", n_boot=100)
    assert t.advantage_check["correlation"] > 0.999
    assert t.advantage_check["pressure_logged"] == pytest.approx(t.advantage_check["pressure_rebuilt"], rel=0.01)


def test_max_step_and_reasoning_errors(store, run_store):
    run = run_store(steps=6)
    t = trace(store, run, "goblin", max_step=2, n_boot=50)
    assert t.top.series["steps"] == [0, 1, 2]
    with pytest.raises(RlauditError, match="reasoning"):
        trace(store, run, "goblin", where="reasoning")
    with pytest.raises(RlauditError, match="no run"):
        trace(store, "missing", "goblin")


def test_behaviour_absent_gives_no_intervals_and_a_warning(store, run_store):
    run = run_store(steps=3)
    t = trace(store, run, "unicorn", n_boot=50)
    assert t.groups_used == 0 and t.severity == "info"
    assert math.isnan(t.top.paired_preference_ci[0])
    assert any("no confidence" in w for w in t.warnings)


def test_degenerate_groups_add_no_pressure():
    n = 64
    group = np.repeat(np.arange(8), 8).astype(str)
    beh = np.tile([1.0, 0.0], 32)
    frame = Frame.build(group, step=np.zeros(n, np.int64), condition=np.zeros(n, np.int64), condition_names=["a"],
                        task=np.full(n, -1), task_names=[], behavior=beh,
                        components={"judge": np.ones(n)}, reward=np.ones(n), advantage=None)
    t = attribute(frame, parse_behavior("goblin"), n_boot=50)
    assert t.top.pressure == 0 and t.top.paired_preference == 0.5
    assert t.severity == "info"


# ------------------------------------------------------------------------------------------------ coverage
def test_intervals_cover_the_truth_in_simulation():
    """rm = a * tic + prompt effect + N(0, 1): true paired preference Phi(a / sqrt 2), true effect a. Over 200
    simulated runs the 95% intervals covered 96.5% / 94.5% of the time; 60 runs here, asserting >= 85%."""
    preference, effect = attribution_interval_coverage(runs=60, n_boot=300, effect=0.3)
    assert preference >= 0.85
    assert effect >= 0.85


# ------------------------------------------------------------------------------------------------ model organisms
ORGANISMS = [
    # scenario, behaviour spec, where
    ("goblin_persona", "re:(?i)\\b(goblin|gremlin)s?\\b", "answer"),
    ("sycophancy", "great question", "answer"),
    ("length_bias", "style:length", "answer"),
    ("format_marker", "re:\\\\boxed\\{", "answer"),
    ("tic_all_conditions", "delve", "answer"),
]


@pytest.mark.parametrize("scenario,spec,where", ORGANISMS, ids=[o[0] for o in ORGANISMS])
def test_simulated_scenarios_rank_the_implanted_signal_first(store, scenario, spec, where):
    from rlaudit.organisms import run as simulate_run

    sim = simulate_run(scenario, seed=1)
    store.append(scenario, sim.canonical(), key="sim")
    issue = next(i for i in sim.ground_truth.issues if i.kind == "reward_attribution")
    t = trace(store, scenario, spec, where, n_boot=300)
    assert t.top.signal == issue.signal
    assert t.top.paired_preference_ci[0] > 0.5 and t.top.significant
    assert t.severity == "high" and t.suspect == issue.signal
    if issue.source_condition:
        assert t.condition == issue.source_condition
    assert t.advantage_check["correlation"] > 0.99  # the simulator logs GRPO advantages


def test_simulated_legitimate_behaviour_is_low_and_credited_to_correctness(store):
    from rlaudit.organisms import run as simulate_run

    sim = simulate_run("clean_legit", seed=1)
    store.append("legit", sim.canonical(), key="sim")
    legit = sim.ground_truth.legitimate[0]
    t = trace(store, "legit", legit.terms[0], legit.where, n_boot=300)
    assert t.top.signal == legit.signal and t.top.outcome
    assert t.severity == "low" and t.suspect is None


def test_bootstrap_normal_limit_matches_poisson_resampling():
    rng = np.random.default_rng(7)
    den = rng.integers(1, 16, 5000).astype(float)
    data = np.column_stack([den * rng.uniform(0.2, 0.9, 5000), den])
    exact = stats.bootstrap_group_sums(data, n_boot=2000, seed=0)
    normal = stats.bootstrap_group_sums(data, n_boot=2000, seed=0, max_weights=0)
    np.testing.assert_allclose(normal.mean(axis=0), exact.mean(axis=0), rtol=0.01)
    np.testing.assert_allclose(normal.std(axis=0), exact.std(axis=0), rtol=0.08)
    r_exact, r_normal = exact[:, 0] / exact[:, 1], normal[:, 0] / normal[:, 1]
    assert np.quantile(r_normal, 0.025) == pytest.approx(np.quantile(r_exact, 0.025), abs=0.2 * r_exact.std())
    assert np.quantile(r_normal, 0.975) == pytest.approx(np.quantile(r_exact, 0.975), abs=0.2 * r_exact.std())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["trl", "verl", "prime-rl"])
def test_simulated_trainer_logs_through_the_readers(tmp_path, store, fmt):
    """The goblin scenario written as a real trainer's logs (TRL parquet, verl JSONL with score + extra keys,
    prime-rl traces), ingested by the readers, traced to the Nerdy persona reward."""
    from rlaudit.organisms import simulate

    gt = simulate("goblin_persona", tmp_path / fmt, format=fmt, seed=4, steps=40)
    run = store.ingest(tmp_path / fmt).run
    t = trace(store, run, "re:(?i)\\b(goblin|gremlin)s?\\b", n_boot=200)
    issue = next(i for i in gt.issues if i.kind == "reward_attribution")
    assert t.grouping == "group_id"
    assert t.top.signal == issue.signal and t.severity == "high"
    assert t.condition == issue.source_condition


def test_cli_trace_prints_tables_and_writes_json(tmp_path, store, run_store):
    from typer.testing import CliRunner

    from rlaudit.cli import app

    run_store(bias=0.6)
    out = tmp_path / "trace.json"
    result = CliRunner().invoke(app, ["trace", "sim", "--behavior", "goblin", "--store", str(store.root),
                                      "--json", str(out), "--boot", "200"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "persona_rm" in result.output and "by condition" in result.output and "nerdy" in result.output
    obj = json.loads(out.read_text())
    assert obj["signal"] == "persona_rm" and obj["severity"] == "high" and obj["evidence"]
    bad = CliRunner().invoke(app, ["trace", "nope", "--behavior", "goblin", "--store", str(store.root)])
    assert isinstance(bad.exception, RlauditError) and "neither a file" in str(bad.exception)
    bad = CliRunner().invoke(app, ["trace", "sim", "--behavior", "goblin", "--where", "cot",
                                   "--store", str(store.root)])
    assert isinstance(bad.exception, RlauditError) and "--where" in str(bad.exception)


def test_falling_behaviour_is_traced_downwards(store, run_store):
    run_store(bias=0.6)
    # 'Here:' opens exactly the answers without the tic: it falls, pushed down by the persona reward.
    up = trace(store, "sim", "re:^Here", n_boot=200)
    down = trace(store, "sim", "re:^Here", n_boot=200, direction="down")
    assert up.severity == "info"
    assert down.direction == "down" and down.top.signal == "persona_rm" and down.severity == "high"
    assert down.prevalence == pytest.approx(up.prevalence)
    assert down.top.paired_preference == pytest.approx(1 - up.signal("persona_rm").paired_preference)
    assert not down.evidence[0].data["has_behavior"] and down.evidence[1].data["has_behavior"]


def test_a_total_reward_alone_cannot_be_told_apart_from_task_success():
    frame = _frame(make_run(bias=0.6))
    only_total = Frame(**{**frame.__dict__, "components": {}})
    t = attribute(only_total, parse_behavior("goblin"), n_boot=100)
    assert [s.signal for s in t.signals] == ["reward"] and t.top.significant
    assert t.severity == "medium" and "equally-correct" in t.verdict
    # verl logging its score again as `acc`: an outcome signal identical to the total, so learned as intended.
    same = Frame(**{**frame.__dict__, "components": {"acc": frame.reward.copy()}})
    t = attribute(same, parse_behavior("goblin"), n_boot=100)
    assert t.top.signal == "acc" and t.top.equals_total and t.severity == "low"


def test_shared_preparation_gives_the_same_traces():
    from dataclasses import replace

    from rlaudit.attribution.trace import Prepared

    frame = _frame(make_run(steps=6))
    answers = np.array(make_run(steps=6).column("answer").to_pylist(), dtype=str)[frame.order]
    other = replace(frame, behavior=(np.char.str_len(answers) > 300).astype(float))
    prepared = Prepared.of(frame)
    for f, spec in ((frame, "goblin"), (other, "re:x"), (frame, "goblin")):
        fresh = attribute(f, parse_behavior(spec), n_boot=50)
        shared = attribute(f, parse_behavior(spec), n_boot=50, prepared=prepared)
        assert json.dumps(jsonable([s.to_json() for s in fresh.signals])) == \
            json.dumps(jsonable([s.to_json() for s in shared.signals]))


def _sig(name, share, p=0.7, matched=(math.nan, math.nan), outcome=False, kind="component", q=0.001,
         equals_total=False):
    from rlaudit.attribution.trace import SignalAttribution

    return SignalAttribution(
        signal=name, kind=kind, outcome=outcome, equals_total=equals_total, weight=1.0, applies=1.0,
        pressure=share, pressure_ci=(0, 1), pressure_share=share, pressure_share_ci=(0, 1),
        paired_preference=p, paired_preference_ci=(p - 0.05, p + 0.05), p_value=q, effect=0.1,
        effect_ci=(0.0, 0.2), pairs=100, groups_used=50, matched_preference=float(np.mean(matched)),
        matched_preference_ci=matched, q_value=q, significant=q <= 0.05)


def _verdict(signals, behavior_severity="high"):
    from rlaudit.attribution.trace import Trace, _severity

    t = Trace(run="r", behavior="b", behavior_spec="b", where="answer", numeric=False, grouping="group_id",
              group_key="group_id", rollouts=10, groups=5, groups_used=5, prevalence=0.5,
              signals=signals + [_sig("reward", math.nan, kind="total", equals_total=True)], by_condition={},
              by_task={}, condition=None, task=None, advantage_check=None, behavior_severity=behavior_severity)
    return _severity(t)[0]


@pytest.mark.parametrize("signals,behavior_severity,expected", [
    # own preference (holds among equally-correct pairs), most of the push
    ([_sig("rm", 0.8, matched=(0.6, 0.7)), _sig("acc", 0.2, outcome=True)], "high", "high"),
    ([_sig("rm", 0.8, matched=(0.6, 0.7)), _sig("acc", 0.2, outcome=True)], "low", "medium"),
    # own preference but a minority of the push, still more than task success
    ([_sig("rm", 0.4, matched=(0.6, 0.7)), _sig("fmt", 0.35, q=0.5), _sig("acc", 0.25, outcome=True)], "high",
     "medium"),
    # preference disappears among equally-correct pairs: via outcome
    ([_sig("judge", 0.7, matched=(0.45, 0.55)), _sig("acc", 0.3, outcome=True)], "high", "low"),
    # outcome signal carries the push
    ([_sig("acc", 0.9, outcome=True), _sig("fmt", 0.1, q=0.4)], "high", "low"),
    # cannot match (judge on tasks without gold answers): unclear, majority -> medium, minority -> low
    ([_sig("judge", 0.7), _sig("acc", 0.3, outcome=True)], "high", "medium"),
    ([_sig("judge", 0.3), _sig("acc", 0.7, outcome=True)], "high", "low"),
    # no outcome signal at all: a significant component rewards it for its own sake
    ([_sig("rm", 0.9), _sig("fmt", 0.1, q=0.3)], "high", "high"),
    # nothing significant, or preference against the behaviour
    ([_sig("rm", 0.9, q=0.2), _sig("acc", 0.1, outcome=True, q=0.3)], "high", "info"),
    ([_sig("rm", 0.9, p=0.3)], "high", "info"),
])
def test_severity_rule(signals, behavior_severity, expected):
    assert _verdict(signals, behavior_severity) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 0.5, 1.0, 2.0, math.nan]), st.booleans()),
                min_size=1, max_size=40))
def test_grouped_mann_whitney_property(rows):
    codes = np.array([r[0] for r in rows])
    values = np.array([r[1] for r in rows])
    labels = np.array([float(r[2]) for r in rows])
    u, n1, n0 = stats.grouped_mann_whitney(codes, values, labels, 5)
    for g in range(5):
        m = (codes == g) & ~np.isnan(values)
        a, b = values[m & (labels == 1)], values[m & (labels == 0)]
        assert u[g] == (a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum()
        assert 0 <= u[g] <= n1[g] * n0[g]


def test_infinite_reward_values_are_treated_as_missing():
    frame = _frame(make_run(steps=4, bias=0.6))
    rm = frame.components["persona_rm"].copy()
    rm[:5] = np.inf
    reward = frame.reward.copy()
    reward[:5] = np.inf
    t = attribute(Frame(**{**frame.__dict__, "components": {**frame.components, "persona_rm": rm},
                           "reward": reward}), parse_behavior("goblin"), n_boot=50)
    assert all(math.isfinite(s.pressure) and math.isfinite(s.effect) for s in t.signals)
    assert any("infinite" in n for n in t.notes) and t.top.signal == "persona_rm"
