"""Per-step tracking statistics and bounded step samples."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from rlaudit.behaviors import parse_behavior
from rlaudit.live import StepSample
from rlaudit.live.tracking import BehaviorTracker, Tracked, rate_ratio


def test_rate_ratio_matches_hand_computation():
    ratio, lo, hi, z = rate_ratio(10, 100, 30, 100)
    assert math.isclose(ratio, (30.5 / 101) / (10.5 / 101))
    se = math.sqrt(1 / 30.5 - 1 / 101 + 1 / 10.5 - 1 / 101)
    assert math.isclose(z, math.log(ratio) / se) and lo < ratio < hi
    assert rate_ratio(0, 50, 0, 50)[0] == 1.0  # nothing either side: no change


def _tracker_with(counts: dict[tuple[int, str], tuple[int, int]], known=()) -> BehaviorTracker:
    tracker = BehaviorTracker(alpha=0.01)
    t = Tracked(behavior=parse_behavior("goblin"), column="answer", label="goblin", known=set(known))
    t.add([(s, c, n, k) for (s, c), (n, k) in counts.items()])
    tracker.tracked["goblin"] = t
    return tracker


def test_no_false_alarm_under_the_null_over_many_looks():
    rng = np.random.default_rng(7)
    alarms = 0
    for trial in range(20):
        counts = {}
        tracker = None
        for step in range(1, 121):
            for cond in ("a", "b", "c"):
                counts[(step, cond)] = (32, int(rng.binomial(32, 0.05)))
            if step >= 4:
                tracker = _tracker_with(counts) if tracker is None else tracker
                tracker.tracked["goblin"].add([(step, c, 32, counts[(step, c)][1]) for c in ("a", "b", "c")])
                alarms += bool(tracker.check("r", step))
    assert alarms == 0  # 20 runs x 117 looks x 3 conditions, stable prevalence: never an alert


def test_spread_to_an_unaffected_condition_is_found_and_known_ones_are_not_repeated():
    counts = {}
    for step in range(1, 41):
        counts[(step, "nerdy")] = (32, 20)
        counts[(step, "plain")] = (32, 1 if step <= 20 else 12)
    found = _tracker_with(counts, known={"nerdy"}).check("r", 40)
    assert [f["target_condition"] for f in found] == ["plain"]
    f = found[0]
    assert f.kind == "behavior_spread" and f["ratio"] > 5 and f["ratio_ci"][0] > 1 and f["z"] > f["z_critical"]
    assert f["source_conditions"] == ["nerdy"] and len(f["series"]["steps"]) == 40


@given(st.lists(st.integers(0, 10_000), min_size=0, max_size=400), st.integers(0, 20), st.integers(2, 20),
       st.integers(0, 20))
def test_step_sample_is_bounded_and_keeps_both_ends(steps, baseline, recent, middle):
    sample = StepSample(baseline=baseline, recent=recent, middle=middle)
    chosen = sample.select(steps)
    unique = sorted(set(steps))
    assert chosen == sorted(set(chosen)) and set(chosen) <= set(unique)
    assert len(chosen) <= max(sample.size, 0) or chosen == unique
    if unique:
        assert unique[-1] in chosen  # the latest step is always audited
        if baseline:
            assert unique[0] in chosen
    if len(unique) <= sample.size:
        assert chosen == unique
