"""The shared per-step stratified sample for `judge:` specs (`rlaudit.llm.sampling`): bounds, whole groups,
weights, the stratified rate with its finite-population correction; and its use by trace and live tracking."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rlaudit.attribution.trace import trace
from rlaudit.behaviors import parse_behavior
from rlaudit.llm.sampling import sampled_values, stratified_sample
from rlaudit.llm import LLMClient, ScriptedBackend, set_default_client
from rlaudit.store import Store

from .organisms import organism


def test_sample_is_bounded_per_stratum_keeps_whole_groups_and_weights_restore_sizes():
    strata = [s for s in range(5) for _ in range(40)]
    clusters = [f"{s}-{i // 4}" for s in range(5) for i in range(40)]  # groups of 4
    sample = stratified_sample(strata, cap=10, seed=1, clusters=clusters)
    assert (sample.taken == 8).all()  # two whole groups fit under 10, a third would not
    picked = [clusters[i] for i in sample.index]
    assert all(picked.count(c) == 4 for c in set(picked))
    assert np.bincount(sample.stratum, weights=sample.weight).tolist() == [40.0] * 5
    small = stratified_sample([0, 0, 1], cap=5)
    assert small.index.tolist() == [0, 1, 2] and small.weight.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        stratified_sample([0], cap=0)


def test_stratified_rate_with_finite_population_correction():
    # stratum 0: 100 rows, 10 judged, 4 positive; stratum 1: 300 rows, 10 judged, 1 positive
    strata = [0] * 100 + [1] * 300
    sample = stratified_sample(strata, cap=10, seed=0)
    values = np.array([1.0] * 4 + [0.0] * 6 + [1.0] + [0.0] * 9)
    r = sample.rate(values)
    w = np.array([0.25, 0.75])
    p = np.array([0.4, 0.1])
    s2 = p * (1 - p) * 10 / 9
    fpc = np.array([1 - 10 / 100, 1 - 10 / 300])
    assert r["estimate"] == pytest.approx((w * p).sum())
    assert r["se"] == pytest.approx(np.sqrt((w ** 2 * fpc * s2 / 10).sum()))
    assert r["se"] < sample.rate(values, finite_population=False)["se"]
    # a stratum judged whole has no sampling error
    whole = stratified_sample([0] * 5, cap=10)
    assert whole.rate(np.array([1.0, 0, 0, 1, 0]))["se"] == 0.0
    # coverage over repeated samples of a fixed population
    rng = np.random.default_rng(0)
    population = (rng.random(400) < np.where(np.arange(400) < 100, 0.4, 0.1)).astype(float)
    truth = population.mean()
    hits = 0
    for seed in range(300):
        s = stratified_sample(strata, cap=30, seed=seed)
        lo, hi = s.rate(population[s.index])["ci"]
        hits += lo <= truth <= hi
    assert 0.9 <= hits / 300 <= 0.99


def _answer(request):
    shown = request.messages[-1][1].split("\n\n", 1)[1]
    return '{"label": "%s", "score": 1, "quote": ""}' % ("yes" if "hardcode" in shown else "no")


@pytest.fixture
def judged_llm(monkeypatch):
    backend = ScriptedBackend(_answer)
    set_default_client(LLMClient(backend))
    monkeypatch.setenv("RLAUDIT_JUDGE_PER_STEP", "8")
    yield backend
    set_default_client(None)


def test_sampled_values_judge_only_the_sample(judged_llm):
    texts = pa.array(["hardcode", "loop"] * 50)
    values, sample = sampled_values(parse_behavior("judge:action:special-cased?"), texts, [i // 20 for i in
                                                                                            range(100)])
    assert judged_llm.calls == 40 and np.isnan(values).sum() == 60 and len(sample.index) == 40
    free, none = sampled_values(parse_behavior("hardcode"), texts, [0] * 100)
    assert none is None and free.sum() == 50


def test_trace_with_a_judge_spec_judges_a_bounded_sample_and_finds_the_signal(tmp_path, judged_llm):
    store = Store(tmp_path / "s")
    store.append("clean", organism("clean", steps=10, groups=6), "p1")  # 48 rollouts per step, 'judge' pays
    t = trace(store, "clean", "judge:action:does the answer special-case the tests?", n_boot=200)
    assert judged_llm.calls <= 8 * 10 and t.rollouts == judged_llm.calls  # 2 groups of 4 per step
    assert any("judged" in w and "RLAUDIT_JUDGE_PER_STEP" in w for w in t.warnings)
    full = trace(store, "clean", "hardcode", n_boot=200)
    assert t.top.signal == full.top.signal == "judge" and t.top.significant
    # fewer groups: a wider interval than the full rule-based trace
    width = lambda s: s.paired_preference_ci[1] - s.paired_preference_ci[0]  # noqa: E731
    assert width(t.top) >= width(full.top)


def test_live_tracking_counts_only_judged_rollouts(tmp_path, judged_llm):
    from rlaudit.findings import Finding
    from rlaudit.live.tracking import BehaviorTracker

    store = Store(tmp_path / "s")
    store.append("clean", organism("clean", steps=6, groups=6), "p1")
    tracker = BehaviorTracker()
    finding = Finding(kind="emerging_behavior", run="clean", severity="medium", title="t", explanation="e",
                      fields={"behavior_spec": "judge:action:does the answer special-case the tests?",
                              "where": "answer", "behavior": "special-cased tests"})
    assert tracker.follow(finding, store, "clean")
    tracked = next(iter(tracker.tracked.values()))
    assert judged_llm.calls == 6 * 2 * 8  # at most 8 per (step, condition)
    assert len(tracked.counts) == 12 and all(n == 8 for n, _ in tracked.counts.values())
    # about half the judged rollouts special-case the tests
    assert 0.3 < sum(h for _, h in tracked.counts.values()) / 96 < 0.7
