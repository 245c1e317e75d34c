"""Window thinning (`emerging.window_masks`): a long run's windows are read on every k-th step, so the window
statistics cost and hold O(max_window_rollouts), not O(run); the findings stay those of the full windows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.detectors.emerging import window_masks
from rlaudit.organisms import run as simulate_run
from rlaudit.store import Store


def test_windows_within_the_cap_are_read_whole():
    early, late, k = window_masks(np.full(100, 50.0), 20, 1000, 4)
    assert k == (1, 1)
    assert early.tolist() == [i < 20 for i in range(100)] and late.tolist() == [i >= 80 for i in range(100)]


def test_a_window_over_the_cap_keeps_every_kth_step_with_the_newest():
    early, late, k = window_masks(np.full(100, 50.0), 20, 250, 4)  # 1,000 rollouts per window: k = 4
    assert k == (4, 4)
    assert np.flatnonzero(early).tolist() == [0, 4, 8, 12, 16]
    assert np.flatnonzero(late).tolist() == [83, 87, 91, 95, 99]


def test_thinning_keeps_min_steps_and_zero_means_never():
    early, late, k = window_masks(np.full(100, 1000.0), 20, 10, 4)
    assert k == (5, 5) and early.sum() == late.sum() == 4
    assert window_masks(np.full(100, 1e6), 20, 0, 4)[2] == (1, 1)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 5000), min_size=1, max_size=300), st.floats(0.01, 0.5), st.integers(0, 20000),
       st.integers(1, 10))
def test_window_masks_properties(sizes, share, cap, min_steps):
    n = np.asarray(sizes, float)
    t = len(n)
    w = max(1, int(round(share * t)))
    early, late, (k0, k1) = window_masks(n, w, cap, min_steps)
    idx = np.arange(t)
    for mask, inside, k, newest in ((early, idx < w, k0, 0), (late, idx >= t - w, k1, t - 1)):
        assert not (mask & ~inside).any()  # only window steps
        assert mask[newest]  # the run's first step early, its last step late
        assert mask.sum() == math.ceil(w / k)  # one step in k, spread over the window
        total = n[inside].sum()
        if cap <= 0 or total <= cap:
            assert k == 1 and (mask == inside).all()
        else:  # the smallest k within the cap, unless min_steps (or one step) bounds it
            assert k == max(1, min(math.ceil(total / cap), w // min_steps))


@pytest.fixture(scope="module")
def goblin_audits(tmp_path_factory):
    """The goblin organism over 80 steps (one stored part per step), audited with whole windows and with windows
    thinned to one step in two (a cap of 1,100 rollouts on windows of 16 x 128 = 2,048; generalization's reward
    correlations then read one step in five). The run is small, so a thinner window loses the medium finding's
    significance: thinning is for windows far above the default cap of 250,000 rollouts."""
    table = simulate_run("goblin_persona", seed=0, run_name="sim", steps=80, prompts=16, generations=8).canonical()
    store = Store(tmp_path_factory.mktemp("thin") / "store")
    for step in sorted(set(table["step"].to_pylist())):
        import pyarrow.compute as pc

        store.append("sim", table.filter(pc.equal(table["step"], step)), key=f"s{step:04d}")
    out = {}
    for name, cap in (("whole", 250_000), ("thinned", 1100)):
        found = run_detectors(store, "sim", AuditConfig(detectors=["emerging", "generalization"], options={
            "emerging": {"max_window_rollouts": cap}}))
        errors = [f for f in found if f.kind == "audit_error"]
        assert not errors, errors[0].fields.get("traceback")
        out[name] = found
    return out


def _reported(findings, kind="emerging_behavior", severities=("medium", "high")):
    return {(f["behavior_spec"], f["where"]): f for f in findings if f.kind == kind and f.severity in severities}


def test_thinned_windows_find_the_same_behaviours(goblin_audits):
    whole, thinned = _reported(goblin_audits["whole"]), _reported(goblin_audits["thinned"])
    assert whole and set(thinned) == set(whole)
    for key, f in thinned.items():
        assert f["window_thinning"] == {"every": [2, 2], "steps_read": [8, 8], "max_window_rollouts": 1100}
        assert "one step in 2" in f.explanation
        assert "window_thinning" not in whole[key].fields
        # the thinned ratio estimates the whole windows' ratio: within its extra sampling error
        full, thin = whole[key], f
        d = abs(math.log(thin["ratio"]) - math.log(full["ratio"]))
        se = lambda g: (math.log(g["ratio_ci"][1]) - math.log(g["ratio_ci"][0])) / (2 * 1.96)  # noqa: E731
        assert se(thin) > se(full)  # fewer rollouts: a wider interval, never a narrower one
        assert d <= 3.3 * math.sqrt(se(thin) ** 2 - se(full) ** 2)


def test_thinned_generalization_keeps_its_source(goblin_audits):
    def spreads(found):
        return {(f["source_condition"], f["target_condition"], f["source_reason"], f.severity)
                for f in found if f.kind == "generalization"}

    assert spreads(goblin_audits["whole"])
    assert spreads(goblin_audits["thinned"]) == spreads(goblin_audits["whole"])


@pytest.mark.parametrize("options, message", [
    ({"max_window_rollout": 1000}, "unknown 'max_window_rollout'"),
    ({"max_window_rollouts": "lots"}, "'max_window_rollouts': expected a whole number"),
    ({"max_window_rollouts": 2.5}, "'max_window_rollouts': expected a whole number"),
    ({"max_window_rollouts": -1}, "'max_window_rollouts': expected a whole number >= 0"),
    ({"window": 0.9}, "0 < window <= 0.5"),
    ({"alpha": True}, "'alpha': expected a number"),
])
def test_bad_emerging_options_are_errors_that_name_them(options, message):
    from rlaudit.detectors.emerging import Params
    from rlaudit.errors import RlauditError

    with pytest.raises(RlauditError, match=message.replace("(", r"\(")):
        Params.from_options(options)
    assert Params.from_options({"max_window_rollouts": 0, "window": 0.25, "max_terms": 500}).max_window_rollouts == 0


def test_sampled_reward_correlations_read_only_the_sampled_parts(tmp_path, monkeypatch):
    """Generalization's reward correlations over a sample of the steps read the rewards of the parts holding them
    (`generalization._sampled_rewards`): the findings equal those from every part's rewards (`rewards_long`)."""
    import pyarrow.compute as pc

    from rlaudit.detectors import generalization

    table = simulate_run("goblin_persona", seed=0, run_name="sim", steps=80, prompts=16, generations=8).canonical()
    store = Store(tmp_path / "store")
    for step in sorted(set(table["step"].to_pylist())):
        store.append("sim", table.filter(pc.equal(table["step"], step)), key=f"s{step:04d}")
    config = AuditConfig(detectors=["emerging", "generalization"], options={"emerging": {"max_window_rollouts": 1100}})
    read: list[str] = []
    sampled = generalization._sampled_rewards
    monkeypatch.setattr(generalization, "_sampled_rewards", lambda scope: read.append(v := sampled(scope)) or v)
    found = [f.to_json() for f in run_detectors(store, "sim", config) if f.kind == "generalization"]
    assert found and read and set(read) == {"gen_sample_rewards"}
    monkeypatch.setattr(generalization, "_sampled_rewards", lambda scope: "rewards_long")
    again = [f.to_json() for f in run_detectors(store, "sim", config) if f.kind == "generalization"]
    # equal, floats to the last digits (DuckDB's parallel sums of the correlation add in any order)
    assert json.loads(json.dumps(again, default=str), parse_float=lambda x: round(float(x), 12)) == \
        json.loads(json.dumps(found, default=str), parse_float=lambda x: round(float(x), 12))
