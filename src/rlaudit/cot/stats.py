"""The two interval estimates the CoT-grading scan, screen and probe report, on top of `rlaudit.stats`."""

from __future__ import annotations

import math

import numpy as np

from ..stats import wilson_interval as _wilson_vector


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of one binomial proportion (well behaved at 0, 1 and small n)."""
    lo, hi = _wilson_vector(np.array([successes]), np.array([n]), confidence)
    return (float(max(0.0, lo[0])), float(min(1.0, hi[0])))


def bootstrap_mean_ci(values: np.ndarray, confidence: float = 0.95, n_boot: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean (rollouts are resampled; each is one independent draw)."""
    values = np.asarray(values, float)
    if len(values) == 0:
        return (math.nan, math.nan)
    if np.all(values == values[0]):
        return (float(values[0]), float(values[0]))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))
