"""Small statistics used by the CoT-grading scan, screen and probe: interval estimates and multiple testing.

Kept separate so each is tested once; all are vectorised or O(n) numpy.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well behaved at 0, 1 and small n)."""
    if n <= 0:
        return (0.0, 1.0)
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def clopper_pearson_upper(successes: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a binomial proportion (exact)."""
    if n <= 0 or successes >= n:
        return 1.0
    return float(stats.beta.ppf(confidence, successes + 1, n - successes))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    return float(stats.binom.sf(k - 1, n, p))


def bootstrap_mean_ci(values: np.ndarray, confidence: float = 0.95, n_boot: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean."""
    values = np.asarray(values, float)
    if len(values) == 0:
        return (math.nan, math.nan)
    if len(values) == 1 or np.all(values == values[0]):
        return (float(values[0]), float(values[0]))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def benjamini_hochberg(p_values: list[float] | np.ndarray) -> np.ndarray:
    """BH-adjusted q-values (monotone, capped at 1)."""
    p = np.asarray(p_values, float)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def sign_flip_correlation_test(x: np.ndarray, y: np.ndarray, n_perm: int = 2000,
                               seed: int = 0) -> tuple[float, float]:
    """Correlation of paired differences x (score) and y (feature), and a two-sided sign-flip p-value.

    Each element is one pair of rollouts; the pair's orientation is arbitrary, so under the null (the score does
    not depend on the feature) flipping the sign of y for any pair leaves the distribution of sum(x*y)
    unchanged. The statistic is the uncentred correlation sum(x*y)/sqrt(sum x^2 sum y^2).
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    if len(x) < 3 or denom == 0:
        return (0.0, 1.0)
    observed = float((x * y).sum()) / denom
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, len(x)))
    null = (signs * (x * y)).sum(axis=1) / denom
    p = (1 + int((np.abs(null) >= abs(observed) - 1e-12).sum())) / (n_perm + 1)
    return (observed, p)
