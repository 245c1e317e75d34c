"""reward_health: each problem on hand-made runs, and silence on healthy signals that look odd."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.schema import canonical_table


def make_run(store, signals: dict[str, np.ndarray], steps: int = 20, per_step: int = 32,
             conditions: np.ndarray | None = None, run: str = "r") -> None:
    """A run of steps x per_step rollouts whose reward signals are given row by row (NaN: did not apply)."""
    n = steps * per_step
    step = np.repeat(np.arange(1, steps + 1), per_step)
    cond = conditions if conditions is not None else np.array(["none"] * n)
    rows = {
        "run": [run] * n, "rollout_id": [f"f:{i}" for i in range(n)], "step": step.tolist(),
        "split": ["train"] * n, "group_id": [f"{s}-{i // 8}" for s, i in zip(step, range(n))],
        "sample_index": [i % 8 for i in range(n)], "condition": cond.tolist(), "system_prompt": [None] * n,
        "task": ["t"] * n, "prompt": ["p"] * n, "completion": ["c"] * n, "reasoning": [None] * n,
        "answer": ["a"] * n,
        "rewards": [[(k, float(v[i])) for k, v in signals.items()] for i in range(n)],
        "reward": [0.0] * n, "advantage": [0.0] * n, "grader_inputs": [[] for _ in range(n)],
        "metadata": [None] * n,
    }
    store.append(run, canonical_table(rows), key="all")


def health(store, run: str = "r", **config) -> dict[tuple[str, str], object]:
    found = run_detectors(store, run, AuditConfig(detectors=["reward_health"], **config))
    assert not [f for f in found if f.kind == "audit_error"], found
    return {(f["signal"], f["problem"]): f for f in found}


N = 20 * 32
rng = np.random.default_rng(0)


def healthy() -> np.ndarray:
    return rng.uniform(0, 1, N)


def test_healthy_signals_yield_nothing(store):
    binary_rare_zeros = (rng.random(N) > 0.01).astype(float)  # mostly 1, 1% zeros: rare values are not outliers
    penalty = -np.abs(rng.normal(0, 0.2, N))
    make_run(store, {"judge": healthy(), "binary": binary_rare_zeros, "penalty": penalty,
                     "bounded": np.clip(rng.normal(0.8, 0.01, N), 0, 1)})
    assert health(store) == {}


def test_nan_inside_applicable_cells_is_flagged_but_not_whole_conditions(store):
    cond = np.where(np.arange(N) % 4 == 0, "nerdy", "none")
    persona = np.where(cond == "nerdy", rng.uniform(0, 1, N), np.nan)  # applies only to nerdy: fine
    flaky = healthy()
    flaky[rng.random(N) < 0.05] = np.nan
    make_run(store, {"persona_rm": persona, "flaky": flaky}, conditions=cond)
    found = health(store)
    assert set(found) == {("flaky", "nan")}
    f = found[("flaky", "nan")]
    assert 0.02 < f["share"] < 0.09 and f.severity == "medium"
    assert f.evidence and all(e.rollout_id for e in f.evidence)


def test_nan_severity_scales_with_share(store):
    mostly = healthy()
    mostly[rng.random(N) < 0.2] = np.nan
    make_run(store, {"mostly": mostly})
    assert health(store)[("mostly", "nan")].severity == "high"


def test_infinite_values(store):
    sig = healthy()
    sig[100] = math.inf
    make_run(store, {"sig": sig})
    f = health(store)[("sig", "non_finite")]
    assert f.severity == "high" and f["rows"] == 1 and f["first_step"] == 100 // 32 + 1


def test_constant_signal(store):
    make_run(store, {"const": np.full(N, 0.5), "ok": healthy()})
    found = health(store)
    assert set(found) == {("const", "constant")}
    assert found[("const", "constant")]["value"] == 0.5


def test_stuck_after_varying_vs_saturated_at_max(store):
    stuck = healthy()
    stuck[14 * 32:] = 0.0  # server died at step 15: default 0.0, below its earlier maximum
    saturated = (rng.random(N) < 0.7).astype(float)
    saturated[10 * 32:] = 1.0  # learned: every rollout gets the maximum
    make_run(store, {"server": stuck, "format": saturated})
    found = health(store)
    f = found[("server", "stuck")]
    assert f.severity == "high" and f["first_step"] == 15 and f["value"] == 0.0
    assert found[("format", "saturated")].severity == "info"


def test_short_quiet_tail_is_not_stuck(store):
    sig = healthy()
    sig[-32:] = 0.3  # one step of equal values is not a dead signal
    make_run(store, {"sig": sig})
    assert health(store) == {}


def test_out_of_range_spikes(store):
    sig = healthy()
    hit = np.zeros(N, bool)
    hit[rng.choice(np.arange(8 * 32, N), 5, replace=False)] = True
    sig[hit] *= 100  # x100 scale bug from step 9
    sig[hit] += 50
    make_run(store, {"judge": sig})
    f = health(store)[("judge", "out_of_range")]
    assert f["rows"] == 5 and f["first_step"] >= 9 and f.severity == "medium"  # 0.8% of rows
    assert f["bounds"][1] < 50


def test_max_step_limits_the_audit(store):
    stuck = healthy()
    stuck[14 * 32:] = 0.0
    make_run(store, {"server": stuck})
    assert ("server", "stuck") not in health(store, max_step=14)


@pytest.mark.parametrize("scenario", ["clean_basic", "clean_judges", "clean_legit", "goblin_persona",
                                      "format_marker", "cot_midrun"])
def test_no_findings_on_healthy_simulated_runs(store, scenario):
    from rlaudit.organisms import run

    sim = run(scenario, steps=30, prompts=8)
    store.append(scenario, sim.canonical(), key="all")
    found = run_detectors(store, scenario, AuditConfig(detectors=["reward_health"]))
    assert [f.title for f in found if f.severity != "info"] == []


def test_broken_reward_scenario_is_fully_caught(store):
    from rlaudit.organisms import run

    sim = run("broken_reward", steps=30, prompts=8)
    store.append("b", sim.canonical(), key="all")
    found = health(store, "b")
    expected = {(i.signal, i.problem) for i in sim.ground_truth.issues}
    assert expected <= {k for k, f in found.items() if f.severity in ("medium", "high")}
    assert {k for k, f in found.items() if f.severity != "info"} == expected


def test_without_a_task_column_a_signal_that_skips_whole_prompts_is_not_broken(store):
    """TRL and verl log no task: a correctness reward that returns None for every rollout of the prompts it
    cannot grade (advice questions) does not apply to them; NaN on some rollouts of a graded prompt is broken."""
    n = N
    prompt_id = np.arange(n) // 8  # one prompt per group of 8
    advice = prompt_id % 4 == 0
    correctness = np.where(advice, np.nan, rng.integers(0, 2, n).astype(float))
    flaky = rng.uniform(0, 1, n)
    flaky[(~advice) & (rng.random(n) < 0.05)] = np.nan
    make_run(store, {"correctness": correctness, "flaky": flaky})
    table = store.table("r")
    row = [int(r.split(":")[1]) for r in table.column("rollout_id").to_pylist()]  # store order is not row order
    prompts = pa.array([f"question {prompt_id[i]}" for i in row])
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt", prompts)
    table = table.set_column(table.schema.get_field_index("task"), "task", pa.nulls(n, pa.string()))
    store.append("r", table, key="all")  # replaces the rows under the same key
    found = health(store)
    assert ("correctness", "nan") not in found
    assert ("flaky", "nan") in found
