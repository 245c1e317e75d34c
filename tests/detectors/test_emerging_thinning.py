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


def test_a_window_over_the_cap_keeps_a_lattice_of_the_run_and_the_newest_step():
    # 1,000 rollouts per window: k = 4 would keep 5 steps (250), and the late window one more (the newest): 300
    early, late, k = window_masks(np.full(100, 50.0), 20, 300, 4)
    assert k == (4, 4)
    assert np.flatnonzero(early).tolist() == [0, 4, 8, 12, 16]
    assert np.flatnonzero(late).tolist() == [80, 84, 88, 92, 96, 99]  # si % 4 == 0, and the newest step
    # a cap of 250 is met by k = 4 early (5 steps) but not late (6 steps): the late window takes k = 8 (the
    # floor of min_steps = 2 allows it)
    early, late, k = window_masks(np.full(100, 50.0), 20, 250, 2)
    assert k == (4, 8) and np.flatnonzero(late).tolist() == [80, 88, 96, 99]
    # k a power of two: ceil(1,000 / 300) = 4 steps in 3 would not nest in the lattices of other k
    assert window_masks(np.full(100, 50.0), 20, 400, 4)[2] == (4, 4)


def test_thinning_keeps_min_steps_and_zero_means_never():
    early, late, k = window_masks(np.full(100, 1000.0), 20, 10, 4)
    # w // min_steps = 5: k at most 4 (the largest power of two), so the floor wins over the cap
    assert k == (4, 4) and early.sum() == 5 and late.sum() == 6
    assert window_masks(np.full(100, 1e6), 20, 0, 4)[2] == (1, 1)
    # a window shorter than min_steps is read whole
    assert window_masks(np.full(10, 1e6), 2, 10, 4)[2] == (1, 1)


def _lattice_count(lo: int, hi: int, k: int) -> int:
    """Multiples of k in [lo, hi)."""
    return (hi - 1) // k - (lo - 1) // k


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 5000), min_size=1, max_size=300), st.floats(0.01, 0.5), st.integers(0, 20000),
       st.integers(1, 10))
def test_window_masks_properties(sizes, share, cap, min_steps):
    n = np.asarray(sizes, float)
    t = len(n)
    w = max(1, int(round(share * t)))
    early, late, (k0, k1) = window_masks(n, w, cap, min_steps)
    idx = np.arange(t)
    for mask, inside, k, late_window in ((early, idx < w, k0, False), (late, idx >= t - w, k1, True)):
        lo = t - w if late_window else 0
        assert not (mask & ~inside).any()  # only window steps
        assert k & (k - 1) == 0  # a power of two: the lattices of two k nest
        lattice = inside & (idx % k == 0)  # every k-th step of the run, from its first
        assert (mask == lattice | (idx == t - 1) & late_window).all()  # and the newest step, late
        assert mask[t - 1 if late_window else 0]
        assert _lattice_count(lo, lo + w, k) >= min(min_steps, w)  # the floor: min_steps lattice steps
        total = n[inside].sum()
        if cap <= 0 or total <= cap:
            assert k == 1 and (mask == inside).all()
            continue
        # at most the cap, however the lattice falls on the window, unless the floor stops k growing
        most = np.sort(n[inside])[::-1][:min(w, -(-w // k) + late_window)].sum()
        floor = 2 * k > w // min_steps
        assert most <= cap or floor
        assert n[mask].sum() <= cap or floor
        if k > 1:  # the smallest such power of two
            half = np.sort(n[inside])[::-1][:min(w, -(-w // (k // 2)) + late_window)].sum()
            assert half > cap


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(1, 400), st.integers(1, 120), st.integers(1, 5000), st.integers(1, 400_000),
       st.integers(1, 10), st.floats(0.05, 0.5))
def test_a_new_step_adds_only_itself_to_the_steps_read(start, added, size, cap, min_steps, share):
    """Adding steps one at a time (a run of equal steps, audited after each): every audit reads at most one step
    of each window that no audit read before (the new step late, the window's new last step early), so the
    window parts' cached sums (`windowsums`) serve the rest; k never falls, and the lattices nest as it grows."""
    read: set[int] = set()
    last = None
    for t in range(start, start + added):
        w = max(1, int(round(share * t)))
        early, late, k = window_masks(np.full(t, float(size)), w, cap, min_steps)
        kept = set(np.flatnonzero(early | late).tolist())
        if last is not None:
            assert k[0] >= last[2][0] and k[1] >= last[2][1]
            assert kept - read <= {t - 1, w - 1}
            # nested: the lattice steps kept now that were in a window last time were kept last time
            idx = np.arange(t - 1)
            for now, before, window in ((early, last[0], idx < last[3]), (late, last[1], idx >= t - 1 - last[3])):
                assert not (now[:t - 1] & window & ~before).any()
        read |= kept
        last = (early, late, k, w)


def test_lattices_nest_when_k_doubles():
    n = np.full(2000, 5000.0)
    # the 10M benchmark: 2,000 steps of 5,000, windows of 400 steps: k = 8 early (50 steps: 250,000 rollouts), 16
    # late (50 + the newest would be 255,000)
    early, late, k = window_masks(n, 400, 250_000, 4)
    assert k == (8, 16) and n[early].sum() == 250_000 and n[late].sum() == 130_000
    early2, late2, k2 = window_masks(np.full(2005, 5000.0), 401, 250_000, 4)
    assert k2 == (16, 16)
    assert not (early2[:400] & ~early[:400]).any()  # k doubled: the 16-lattice inside the 8-lattice read before
    assert set(np.flatnonzero(late2)) - set(np.flatnonzero(late)) <= {2000, 2004}


@pytest.fixture(scope="module")
def goblin_audits(tmp_path_factory):
    """The goblin organism over 80 steps (one stored part per step), audited with whole windows and with windows
    thinned (a cap of 1,100 rollouts on windows of 16 x 128 = 2,048: one step in two early, 8 steps; one in four
    late, 4 steps and the newest, as 8 + the newest would hold 1,152; generalization's reward correlations then
    read one step in five). With a cap of 1,200 (one step in two in both windows) the same group of terms is
    found but named "a gremlin": goblin's early prevalence in the kept steps is then exactly twice the name's,
    which `_name_and_terms` lists as a background word; windows of ~1,000 rollouts are that noisy. The run is small, so a thinner window loses the medium finding's
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
        assert f["window_thinning"] == {"every": [2, 4], "steps_read": [8, 5], "max_window_rollouts": 1100}
        assert "one step in 2 of the early window and one in 4 of the late, with its newest step" in f.explanation
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


def test_a_long_runs_reward_correlations_read_a_systematic_sample_of_whole_parts(tmp_path, monkeypatch):
    """Over twice `max_window_rollouts`, generalization's reward correlations read the steps of whole parts (a
    part is read whole or not at all), the newest part always, the others evenly spaced over the run: parts of
    4 steps of 128 rollouts and a cap of 2,200 give every 5th part of 20, 4 parts."""
    import pyarrow.compute as pc

    from rlaudit.detectors.emerging import Scope

    table = simulate_run("goblin_persona", seed=0, run_name="sim", steps=80, prompts=16, generations=8).canonical()
    store = Store(tmp_path / "store")
    for first in range(1, 81, 4):
        rows = table.filter(pc.and_(pc.greater_equal(table["step"], first), pc.less(table["step"], first + 4)))
        store.append("sim", rows, key=f"p{first:04d}")
    captured = []
    real = Scope._sample_parts
    monkeypatch.setattr(Scope, "_sample_parts", lambda self, cap: captured.append(got := real(self, cap)) or got)
    config = AuditConfig(detectors=["emerging", "generalization"], options={"emerging": {"max_window_rollouts": 1100}})
    assert [f for f in run_detectors(store, "sim", config) if f.kind == "generalization"]
    assert captured
    sampled = set(captured[0])
    blocks = [set(range(first, first + 4)) for first in range(1, 81, 4)]
    chosen = [i for i, b in enumerate(blocks) if b & sampled]
    assert all(blocks[i] <= sampled for i in chosen) and sampled == set().union(*(blocks[i] for i in chosen))
    assert chosen == [4, 9, 14, 19]
