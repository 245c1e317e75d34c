"""Shared statistics: trend tests, false-discovery control, bootstrap and paired-preference intervals.

Each detector appends the statistics it needs here, so that they are written and tested once.
"""

from __future__ import annotations

import warnings

import numpy as np


# ---------------------------------------------------------------------------------------------------------------
# Within-group comparisons, the group bootstrap and Benjamini-Hochberg (written for reward attribution,
# rlaudit.attribution; benjamini_hochberg is general: reuse it rather than adding another).
#
# GRPO-style trainers compare the rollouts of one prompt group with each other, so these statistics are computed
# inside groups and aggregated as sums of per-group quantities. Every pooled estimate is then a ratio of group
# sums, and resampling groups (not rollouts) gives confidence intervals that respect the clustering.

def _poisson1_table() -> np.ndarray:
    """Poisson(1) inverse CDF at 2**16 evenly spaced quantiles: indexing it with a uniform 16-bit integer gives
    a Poisson(1) draw (probabilities exact to 2**-16), several times faster than `Generator.poisson` for the
    hundreds of millions of weights a bootstrap over 100k groups needs."""
    from scipy.stats import poisson

    u = (np.arange(2**16) + 0.5) / 2**16
    return poisson.ppf(u, 1.0).astype(np.float32)


_POISSON1_TABLE: np.ndarray | None = None


def poisson_weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Poisson(1) bootstrap weights (float32): resampling units with replacement, one weight per unit."""
    global _POISSON1_TABLE
    if _POISSON1_TABLE is None:
        _POISSON1_TABLE = _poisson1_table()
    return _POISSON1_TABLE[rng.integers(0, 2**16, size=shape, dtype=np.uint16)]


def bootstrap_group_sums(group_stats: np.ndarray, n_boot: int = 1000, seed: int = 0,
                         chunk: int = 16384) -> np.ndarray:
    """Bootstrap replicates of column sums of a (groups x stats) matrix, resampling whole groups.

    Each replicate draws a Poisson(1) weight per group (the Poisson bootstrap, equivalent to resampling groups
    with replacement for many groups) and returns the weighted column sums: (n_boot x stats). Ratios of these
    sums are bootstrap replicates of ratio estimators (e.g. pooled paired preference = sum U / sum pairs). All
    statistics share the same weights, so joint quantities (shares, differences) are resampled coherently.
    Groups whose statistics are all zero do not change any sum and are skipped.
    """
    stats = np.asarray(group_stats, dtype=np.float64)
    if stats.ndim != 2:
        raise ValueError("group_stats must be a 2-d (groups x stats) array")
    stats = stats[np.any(stats != 0, axis=1)]
    rng = np.random.default_rng(seed)
    out = np.zeros((n_boot, stats.shape[1]), dtype=np.float64)
    for lo in range(0, stats.shape[0], chunk):
        block = stats[lo:lo + chunk]
        out += poisson_weights(rng, (n_boot, block.shape[0])).astype(np.float64) @ block
    return out


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval along axis 0, ignoring NaN replicates (e.g. a ratio with a zero
    denominator in a replicate). All-NaN columns give NaN bounds."""
    alpha = (1.0 - level) / 2.0
    reps = np.asarray(replicates, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanquantile(reps, alpha, axis=0)
        hi = np.nanquantile(reps, 1.0 - alpha, axis=0)
    return lo, hi


def ratio_of_sums_se(num: np.ndarray, den: np.ndarray) -> float:
    """Cluster-robust (delta-method) standard error of sum(num) / sum(den), one cluster per entry.

    The sandwich estimator for a ratio estimator: Var ~ G/(G-1) * sum_g (num_g - R den_g)^2 / (sum den)^2.
    It treats groups as independent and rollouts within a group as arbitrarily correlated.
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    keep = den != 0
    num, den = num[keep], den[keep]
    g = num.size
    total = den.sum()
    if g < 2 or total == 0:
        return float("nan")
    ratio = num.sum() / total
    resid = num - ratio * den
    return float(np.sqrt(g / (g - 1) * np.sum(resid**2)) / abs(total))


def group_midranks(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` within each group of `codes`, ties given their average rank. Vectorised:
    one lexsort, then tie runs found by comparing neighbours."""
    codes = np.asarray(codes)
    values = np.asarray(values, dtype=np.float64)
    n = codes.size
    ranks = np.empty(n, dtype=np.float64)
    if n == 0:
        return ranks
    order = np.lexsort((values, codes))
    c, v = codes[order], values[order]
    pos = np.arange(1, n + 1, dtype=np.float64)
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    new_group[1:] = c[1:] != c[:-1]
    new_run = new_group.copy()
    new_run[1:] |= v[1:] != v[:-1]
    run = np.cumsum(new_run) - 1
    run_mean = np.bincount(run, weights=pos) / np.bincount(run)
    group_first = np.maximum.accumulate(np.where(new_group, pos, 0.0))
    ranks[order] = run_mean[run] - group_first + 1.0
    return ranks


def grouped_mann_whitney(codes: np.ndarray, values: np.ndarray, labels: np.ndarray,
                         n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: U (pairs (labelled 1, labelled 0) where the labelled-1 value is larger, ties counting 1/2),
    n1 and n0. Rows with NaN value or label are ignored. U / (n1 n0) is the within-group probability that a
    random labelled-1 item beats a random labelled-0 one (the paired preference); sums over groups pool it.
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    ok = ~(np.isnan(values) | np.isnan(labels))
    c, v, lab = np.asarray(codes)[ok], values[ok], labels[ok] > 0.5
    ranks = group_midranks(c, v)
    n1 = np.bincount(c, weights=lab, minlength=n_groups)
    n0 = np.bincount(c, weights=~lab, minlength=n_groups)
    r1 = np.bincount(c, weights=np.where(lab, ranks, 0.0), minlength=n_groups)
    u = r1 - n1 * (n1 + 1) / 2.0
    return u, n1, n0


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values): reject where q <= alpha to control the FDR at alpha.
    NaN p-values stay NaN and do not count as tests."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    order = np.argsort(p[ok])
    ranked = p[ok][order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    out = np.empty(m)
    out[order] = adjusted
    q[ok] = out
    return q
