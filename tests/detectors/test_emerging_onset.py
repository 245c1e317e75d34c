"""The onset of an emerging behaviour is dated where the rise begins, and more rollouts date it at least as well.

A tic planted on a logistic curve whose rise begins inside the early window of the effect test (the first 20% of
steps), measured at two sizes of the same run (10x the rollouts per step). The true onset follows the
simulator's definition (`organisms.simulate.onset`: the curve has risen by a tenth of its rise, and by at least 3
points).
"""

from __future__ import annotations

import numpy as np
import pytest
from emerging_synth import Scenario, Tic, curve, make_run

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.organisms.simulate import onset as true_onset
from rlaudit.stats import onset_index

STEPS = 100
TIC = Tic("by my beard", 0.02, 0.3, onset=6)  # logistic centred at step 11; the early window is steps 0-19


def _truth() -> int:
    steps = np.arange(STEPS)
    return true_onset(curve(steps, TIC.start, TIC.end, TIC.onset)) - 1  # the synthetic run counts steps from 0


def _onset(store, groups: int) -> int:
    run = make_run(store, Scenario(steps=STEPS, groups=groups, group_size=8, tics=[TIC], seed=3),
                   run=f"g{groups}")
    found = run_detectors(store, run, AuditConfig(detectors=["emerging"]))
    beard = [f for f in found if f.kind == "emerging_behavior" and "beard" in f["behavior"]]
    assert beard, [f.title for f in found]
    return beard[0]["onset_step"]


def test_more_rollouts_date_the_onset_at_least_as_close_to_the_truth(tmp_path):
    from rlaudit.store import Store

    store = Store(tmp_path / "store")
    truth = _truth()
    small, large = _onset(store, 10), _onset(store, 100)  # 8,000 and 80,000 rollouts
    # before this fix both came at the end of the early window (step >= 20) whatever the run size
    assert abs(large - truth) <= abs(small - truth) and abs(large - truth) <= 3, (truth, small, large)
    assert abs(small - truth) <= 6, (truth, small)


def test_onset_inside_the_early_window_is_not_moved_to_its_end():
    rng = np.random.default_rng(0)
    steps = np.arange(200)
    p = curve(steps, 0.01, 0.25, 10, width=3)
    truth = true_onset(p) - 1
    errors = []
    for per_step in (500, 5000, 50000):
        n = np.full(200, float(per_step))
        x = rng.binomial(per_step, p).astype(float)
        at = onset_index(x, x, n, steps < 40, direction=1, half_width=5)
        assert at is not None
        errors.append(abs(at - truth))
    assert errors == sorted(errors) or max(errors[1:]) <= errors[0], errors
    assert errors[-1] <= 2, errors


@pytest.mark.parametrize("direction", [1, -1])
def test_onset_of_a_flat_series_is_none(direction):
    rng = np.random.default_rng(2)
    n = np.full(200, 5000.0)
    x = rng.binomial(5000, 0.05, 200).astype(float)
    assert onset_index(x, x, n, np.arange(200) < 40, direction=direction, half_width=5) is None
