"""Calibration of attribution's intervals on runs whose truth is known in closed form.

Unlike the scenarios, which test whether the auditor finds a mistake, this checks the statistics themselves:
one reward model pays `effect` extra for a behaviour present in 40% of rollouts, on top of a per-prompt effect
and unit noise (rm = effect * tic + N(0, 1) per group + N(0, 1)), next to a small unrelated signal. The true
paired preference is then Phi(effect / sqrt 2) and the true effect is `effect`; a 95% interval should cover
each in about 95% of runs. Shared by the test suite (a short check) and `benchmarks/attribution.py --coverage`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps


def attribution_interval_coverage(runs: int, n_boot: int, effect: float = 0.3, groups: int = 120, size: int = 6,
                                  first_seed: int = 100) -> tuple[float, float]:
    """(share of runs whose paired-preference interval covers the truth, same for the effect interval)."""
    from ..attribution.trace import Frame, attribute
    from ..behaviors import parse_behavior

    truth = sps.norm.cdf(effect / np.sqrt(2))
    hits_p = hits_e = 0
    for seed in range(runs):
        rng = np.random.default_rng(first_seed + seed)
        n = groups * size
        g = np.repeat(np.arange(groups), size)
        tic = (rng.random(n) < 0.4).astype(float)
        rm = effect * tic + rng.normal(0, 1, groups)[g] + rng.normal(0, 1, n)
        other = rng.normal(0, 0.1, n)
        frame = Frame.build(g, step=np.zeros(n, np.int64), condition=np.zeros(n, np.int64), condition_names=["a"],
                            task=np.full(n, -1), task_names=[], behavior=tic, components={"rm": rm, "fmt": other},
                            reward=rm + other, advantage=None)
        sig = attribute(frame, parse_behavior("goblin"), n_boot=n_boot, seed=seed).signal("rm")
        hits_p += sig.paired_preference_ci[0] <= truth <= sig.paired_preference_ci[1]
        hits_e += sig.effect_ci[0] <= effect <= sig.effect_ci[1]
    return hits_p / runs, hits_e / runs
