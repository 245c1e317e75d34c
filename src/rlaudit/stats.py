"""Shared statistics: trend tests, false-discovery control, bootstrap and paired-preference intervals.

Each detector appends the statistics it needs here, so that they are written and tested once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


# ---------------------------------------------------------------------------------------------------------------
# Within-group comparisons, the group bootstrap and Benjamini-Hochberg (written for reward attribution,
# rlaudit.attribution.trace; benjamini_hochberg is general: reuse it rather than adding another).
#
# GRPO-style trainers compare the rollouts of one prompt group with each other, so these statistics are computed
# inside groups and aggregated as sums of per-group quantities. Every pooled estimate is then a ratio of group
# sums, and resampling groups (not rollouts) gives confidence intervals that respect the clustering.

def _poisson1_table() -> np.ndarray:
    """Poisson(1) inverse CDF at 2**16 evenly spaced quantiles: indexing it with a uniform 16-bit integer gives
    a Poisson(1) draw (probabilities exact to 2**-16), several times faster than `Generator.poisson` for the
    hundreds of millions of weights a bootstrap over 100k groups needs."""
    k = np.arange(20)
    cdf = np.cumsum(np.exp(-1.0) / np.cumprod(np.r_[1.0, k[1:]]))
    u = (np.arange(2**16) + 0.5) / 2**16
    return np.searchsorted(cdf, u).astype(np.float32)


_POISSON1_TABLE: np.ndarray | None = None


def poisson_weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Poisson(1) bootstrap weights (float32): resampling units with replacement, one weight per unit."""
    global _POISSON1_TABLE
    if _POISSON1_TABLE is None:
        _POISSON1_TABLE = _poisson1_table()
    return _POISSON1_TABLE[rng.integers(0, 2**16, size=shape, dtype=np.uint16)]


def bootstrap_group_sums(group_stats: np.ndarray, n_boot: int = 1000, seed: int = 0, chunk: int = 8192,
                         max_weights: int = 2**25) -> np.ndarray:
    """Bootstrap replicates of column sums of a (groups x stats) matrix, resampling whole groups.

    Each replicate draws a Poisson(1) weight per group (the Poisson bootstrap, equivalent to resampling groups
    with replacement for many groups) and returns the weighted column sums: (n_boot x stats). Ratios of these
    sums are bootstrap replicates of ratio estimators (e.g. pooled paired preference = sum U / sum pairs). All
    statistics share the same weights, so joint quantities (shares, differences) are resampled coherently.
    Groups whose statistics are all zero do not change any sum and are skipped. Blocks of groups are multiplied
    in float32 (relative error ~1e-7 per block sum) and accumulated in float64.

    When groups x n_boot exceeds `max_weights` (about 33k groups at 1000 replicates) the replicate sums are
    drawn from their normal limit instead: a Poisson-weighted sum of independent group rows has mean sum_g s_g
    and covariance sum_g s_g s_g^T exactly, and with that many groups it is normal to within the bootstrap's
    own Monte Carlo error (central limit theorem). Ratios of the drawn sums keep the ratios' nonlinearity.
    """
    stats = np.asarray(group_stats, dtype=np.float64)
    if stats.ndim != 2:
        raise ValueError("group_stats must be a 2-d (groups x stats) array")
    stats = stats[np.any(stats != 0, axis=1)]
    rng = np.random.default_rng(seed)
    if stats.shape[0] * n_boot > max_weights:
        mean = stats.sum(axis=0)
        vals, vecs = np.linalg.eigh(stats.T @ stats)
        root = vecs * np.sqrt(np.clip(vals, 0.0, None))
        return mean + rng.standard_normal((n_boot, stats.shape[1])) @ root.T
    out = np.zeros((n_boot, stats.shape[1]), dtype=np.float64)
    for lo in range(0, stats.shape[0], chunk):
        block = stats[lo:lo + chunk]
        out += poisson_weights(rng, (n_boot, block.shape[0])) @ block.astype(np.float32)
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
    """1-based ranks of `values` within each group of `codes` (non-negative integers), ties given their average
    rank. Vectorised: values are replaced by their dense rank, combined with the group code into one integer key,
    sorted once (several times faster than a two-key lexsort), and tie runs found by comparing neighbours."""
    codes = np.asarray(codes)
    values = np.asarray(values, dtype=np.float64)
    n = codes.size
    ranks = np.empty(n, dtype=np.float64)
    if n == 0:
        return ranks
    _, dense = np.unique(values, return_inverse=True)
    key = codes.astype(np.int64) * (int(dense.max()) + 1) + dense.reshape(-1)
    order = np.argsort(key)
    c, k = codes[order], key[order]
    pos = np.arange(1, n + 1, dtype=np.float64)
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    new_group[1:] = c[1:] != c[:-1]
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    new_run[1:] = k[1:] != k[:-1]
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


# ---------------------------------------------------------------------------------------------------------------
# Trends over training steps, stratified prevalence ratios, onsets and lagged correlation (written for
# emerging-behaviour discovery and cross-condition generalisation, rlaudit.detectors.emerging/generalization).

def mann_kendall(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mann-Kendall trend test of each row of a (rows x T) array: (S statistic, two-sided p-value).

    S counts increasing minus decreasing pairs in time order; its variance carries the usual tie correction and
    the z statistic a continuity correction. NaN entries (e.g. steps without rollouts) are skipped. Rows with
    fewer than 3 values get p = 1. Non-parametric, so per-step prevalences, means or lengths all work.
    """
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    rows, t = y.shape
    s = np.zeros(rows)
    for lag in range(1, t):  # pairs (i, i + lag): increasing minus decreasing (a NaN compares false: skipped)
        later, earlier = y[:, lag:], y[:, :t - lag]
        s += np.count_nonzero(later > earlier, axis=1) - np.count_nonzero(later < earlier, axis=1)
    valid = ~np.isnan(y)
    n = valid.sum(axis=1).astype(np.float64)
    ties = _tie_term(y)
    var = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(var > 0, (s - np.sign(s)) / np.sqrt(var), 0.0)
    p = np.where(n >= 3, 2 * norm.sf(np.abs(z)), 1.0)
    return s, p


def _tie_term(y: np.ndarray) -> np.ndarray:
    """Per row, the sum over groups of equal (non-NaN) values of c (c - 1) (2c + 5), c the group size: each row
    sorted (NaNs last), runs of equal neighbours counted at once."""
    rows, t = y.shape
    if not rows or not t:
        return np.zeros(rows)
    ys = np.sort(y, axis=1)
    start = np.ones((rows, t), bool)
    start[:, 1:] = ys[:, 1:] != ys[:, :-1]  # NaN != NaN: every NaN starts a run of its own, dropped below
    run = np.cumsum(start.ravel()) - 1  # a run id per entry, unique over rows
    keep = ~np.isnan(ys.ravel())
    counts = np.bincount(run[keep], minlength=int(run[-1]) + 1).astype(np.float64)
    per_run = counts * (counts - 1.0) * (2.0 * counts + 5.0)
    row_of_run = np.repeat(np.arange(rows), start.sum(axis=1))
    return np.bincount(row_of_run, weights=per_run, minlength=rows)


def stratified_ratio(sx: np.ndarray, sxx: np.ndarray, sxn: np.ndarray, n: np.ndarray, snn: np.ndarray,
                     g: np.ndarray, presence: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Late-vs-early ratio of a per-rollout value (presence 0/1, or a numeric feature), stratified and
    cluster-robust: (ratio, standard error of its log), one per candidate.

    Inputs are sufficient sums over clusters (prompt groups / recurring prompts) within each window and stratum
    (task x condition): for each candidate k, window w (0 = early, 1 = late) and stratum s,
    `sx[k,w,s]` = sum of values, `sxx` = sum over clusters of (cluster value sum)^2, `sxn` = sum over clusters of
    (cluster value sum x cluster size); per window and stratum `n` = rollouts, `snn` = sum of squared cluster
    sizes, `g` = clusters. Shapes (K, 2, S); the totals may also be (2, S) when shared by all candidates.

    The estimate is the Mantel-Haenszel ratio sum_s w_s m1_s / sum_s w_s m0_s with w_s = n0 n1 / (n0 + n1), so a
    shift of the mix of tasks or conditions between windows does not count as a rise (strata seen in one window
    only carry no weight). Half a rollout's worth of value is added to each window (continuity correction: a
    term absent early still gets a finite ratio). The variance of the log ratio is the cluster sandwich
    (linearisation of a ratio of cluster sums, with G/(G-1) small-sample factor), so rollouts of one prompt
    are not counted as independent evidence; for presence it is floored at the binomial variance of the crude
    counts, so that a window without any occurrence cannot claim zero variance.
    """
    sx, sxx, sxn = (np.asarray(a, dtype=np.float64) for a in (sx, sxx, sxn))
    n, snn, g = (np.broadcast_to(np.asarray(a, dtype=np.float64), sx.shape) for a in (n, snn, g))
    n0, n1 = n[:, 0], n[:, 1]
    both = (n0 > 0) & (n1 > 0)
    w = np.where(both, n0 * n1 / np.where(both, n0 + n1, 1.0), 0.0)
    safe_n = np.where(n > 0, n, 1.0)
    m = sx / safe_n
    a = (w * m[:, 1]).sum(-1)
    c = (w * m[:, 0]).sum(-1)
    wsum = w.sum(-1)
    ok = wsum > 0
    wsum = np.where(ok, wsum, 1.0)
    a_cc = a + 0.5 * wsum / np.maximum((n1 * both).sum(-1), 1.0)
    c_cc = c + 0.5 * wsum / np.maximum((n0 * both).sum(-1), 1.0)
    resid_ss = np.maximum(sxx - 2 * m * sxn + m**2 * snn, 0.0)
    small = np.where(g > 1, g / np.maximum(g - 1, 1.0), 1.0)
    coef = (w[:, None, :] / safe_n) ** 2 * small * both[:, None, :]
    var_a = (coef[:, 1] * resid_ss[:, 1]).sum(-1)
    var_c = (coef[:, 0] * resid_ss[:, 0]).sum(-1)
    var_log = var_a / a_cc**2 + var_c / c_cc**2
    if presence:
        x1, x0 = (sx[:, 1] * both).sum(-1), (sx[:, 0] * both).sum(-1)
        t1, t0 = (n1 * both).sum(-1), (n0 * both).sum(-1)
        floor = 1 / (x1 + 0.5) - 1 / (t1 + 0.5) + 1 / (x0 + 0.5) - 1 / (t0 + 0.5)
        var_log = np.maximum(var_log, floor)
    ratio, se = a_cc / c_cc, np.sqrt(var_log)
    return np.where(ok, ratio, np.nan), np.where(ok, se, np.nan)


def moving_sum(x: np.ndarray, half_width: int) -> np.ndarray:
    """Centred moving sum along the last axis (window 2h+1, truncated at the ends)."""
    x = np.asarray(x, dtype=np.float64)
    if half_width <= 0:
        return x.copy()
    c = np.cumsum(np.pad(x, [(0, 0)] * (x.ndim - 1) + [(1, 0)]), axis=-1)
    t = x.shape[-1]
    hi = np.minimum(np.arange(t) + half_width + 1, t)
    lo = np.maximum(np.arange(t) - half_width, 0)
    return c[..., hi] - c[..., lo]


def onset_index(x: np.ndarray, q: np.ndarray, n: np.ndarray, baseline: np.ndarray, direction: int,
                half_width: int = 1, z: float = 3.09, design_effect: float = 1.0,
                presence: bool = True, fraction: float = 0.1, min_baseline: int = 2) -> int | None:
    """Index of the first step where a change has begun: the smoothed mean has moved from the level before it by
    a `fraction` of the whole change, significantly, and stays so.

    Per step: `x` = sum of values, `q` = sum of squared values (= x for presence), `n` = rollouts. For a
    candidate step i the smoothed mean (centred window of 2h+1 steps) is compared with the pooled mean of every
    step before that window (steps < i - h, at least `min_baseline` of them): the level before the change, however
    early it starts. (`baseline`, the early window of the effect test, is not used as the reference: a change
    that begins inside it would otherwise be dated at its end.) Step i departs when

    - the departure is significant: one-sided z >= `z` (default 3.09, p = 0.001), variances inflated by
      `design_effect` for within-group correlation; presence counts get half a rollout of continuity correction
      so that a lone occurrence is not a rise; and
    - it is at least `fraction` (0.1) of the whole change, the distance from the reference level to the most
      extreme smoothed mean in the direction of the change: the change has begun, not only become detectable.

    Onset is the first such step from which the departure (against the same reference) holds for h+1 consecutive
    steps (or to the end of the series), and whose own mean (unsmoothed) has moved by the same fraction: the
    centred window reaches h steps ahead, so without that a step change would be dated up to h steps before it
    happens. None when it never does. The significance condition binds when data are
    few (the onset comes late); with more rollouts per step it is met earlier and the fraction condition dates
    the onset, so more data never moves the estimate away from where the change begins.
    """
    del baseline  # kept for callers: the reference is the steps before each candidate (see above)
    x, q, n = (np.asarray(a, dtype=np.float64) for a in (x, q, n))
    h, t = max(0, int(half_width)), len(x)
    mean, var = _mean_and_variance(moving_sum(x, h), moving_sum(q, h), moving_sum(n, h), presence)
    # reference for candidate i: steps [0, i - h), as cumulative sums (index i - h)
    cx, cq, cn = (np.concatenate([[0.0], np.cumsum(a)]) for a in (x, q, n))
    extreme = np.nanmax(direction * mean) if np.isfinite(mean).any() else np.nan

    # every candidate at once (elementwise the same arithmetic as one at a time, so the same onset): candidate
    # i departs at steps i..i+h (those before the end) against the steps before i - h; at 2,000 steps a loop
    # over candidates cost ~0.02 CPU s a series in numpy call overhead alone
    cand = np.arange(min_baseline + h, t)
    k = cand - h
    x0, q0, n0 = cx[k], cq[k], cn[k]
    mean0, var0 = _mean_and_variance(x0, q0, n0, presence)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = n0 > 0
        for d in range(h + 1):
            j = cand + d
            inside = j < t
            jj = np.minimum(j, t - 1)
            diff = direction * (mean[jj] - mean0)
            score = diff / np.sqrt(design_effect * (var[jj] + var0))
            big = diff >= fraction * (extreme - direction * mean0)
            ok &= ~inside | ((np.nan_to_num(score, nan=0.0) >= z) & big & (diff > 0))
        own = x / n  # each step's own mean
        plain0 = x0 / n0
        ok &= direction * (own[cand] - plain0) >= fraction * (extreme - direction * plain0)
    hit = np.flatnonzero(ok)
    return int(cand[hit[0]]) if len(hit) else None


def _mean_and_variance(x: np.ndarray, q: np.ndarray, n: np.ndarray, presence: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a sum of values `x` (of squares `q`) over `n` rollouts and the variance of that mean; presence
    counts get half a rollout of continuity correction (`onset_index`: a lone occurrence is not a rise)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if presence:
            mean = (x + 0.5) / (n + 1.0)
            return mean, mean * (1 - mean) / (n + 1.0)
        mean = x / n
        return mean, np.maximum(q / n - mean**2, 0) / n


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / sd, ignoring NaN; a constant series becomes zeros."""
    x = np.asarray(x, dtype=np.float64)
    sd = np.nanstd(x)
    return np.zeros_like(x) if not sd > 0 else (x - np.nanmean(x)) / sd


def lagged_correlation(source: np.ndarray, target: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Best Pearson correlation of two equally spaced series over lags -max_lag..max_lag: (corr, lag).

    A positive lag means `target` follows `source` (target[t + lag] tracks source[t]). Pairs with a NaN are
    skipped; lags leaving fewer than 3 pairs are not considered. Returns (nan, 0) when no lag qualifies.

    Every lag's r is estimated at once from FFT cross-correlations (`_lag_estimates`: O(n log n), where one lag at
    a time costs O(n * lags) = O(n^2): 0.3 s at 15,625 steps, 2 s at 39,062); the lags whose estimate comes within
    `_NEAR` of the best are then computed exactly, one at a time (`_lag_r`), and chosen among as a scan of every
    lag would choose (ascending, ties within 1e-12 to the smaller |lag|), so the answer is the exact scan's. The
    exact scan alone where the series are short."""
    a, b = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    lags = np.arange(-max_lag, max_lag + 1)
    if len(a) * len(lags) <= _EXACT_WORK:
        exact = lags
    else:
        est = _lag_estimates(a, b, max_lag)
        top = np.nanmax(est) if np.isfinite(est).any() else -np.inf
        exact = lags[~(est < top - _NEAR)]  # near the best, and every lag whose estimate is not a number
    best, best_lag = -np.inf, 0
    for lag in exact.tolist():
        r = _lag_r(a, b, lag)
        if r is None:
            continue
        if r > best + 1e-12 or (abs(r - best) <= 1e-12 and abs(lag) < abs(best_lag)):
            best, best_lag = r, lag
    return (float("nan"), 0) if best == -np.inf else (best, best_lag)


#: series length x lags up to which `lagged_correlation` computes every lag exactly
_EXACT_WORK = 200_000
#: lags whose FFT estimate is within this of the best estimate are computed exactly: the estimates' error is
#: ~1e-12 for z-scored series (sums of n terms of order 1, in double precision)
_NEAR = 1e-6


def _lag_r(a: np.ndarray, b: np.ndarray, lag: int) -> float | None:
    """Pearson's r of the pairs (a[t], b[t + lag]) without a NaN, from the centred pairs directly (`np.corrcoef`
    per lag cost ~0.1 CPU s at 2,000 steps, 401 lags, in call overhead); None for fewer than 3 pairs or a
    constant side (zero sum of squares)."""
    x, y = (a[:len(a) - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[:len(b) + lag])
    ok = ~(np.isnan(x) | np.isnan(y))
    if np.count_nonzero(ok) < 3:
        return None
    x, y = x[ok], y[ok]
    x, y = x - x.mean(), y - y.mean()
    sxx, syy = float(x @ x), float(y @ y)
    if not (sxx > 0 and syy > 0):
        return None
    return min(1.0, max(-1.0, float(x @ y) / math.sqrt(sxx * syy)))


def _lag_estimates(a: np.ndarray, b: np.ndarray, max_lag: int) -> np.ndarray:
    """Estimates of `_lag_r` at lags -max_lag..max_lag from the lag-wise sums of the pairs (counts, sums, squares
    and products of the non-NaN values, each a cross-correlation by FFT); NaN where a lag has fewer than 3 pairs
    or a side close to constant (computed exactly then)."""
    ma, mb = ~np.isnan(a), ~np.isnan(b)
    a0, b0 = np.where(ma, a, 0.0), np.where(mb, b, 0.0)
    size = 1 << int(len(a) + len(b)).bit_length()
    fa = np.fft.rfft(np.stack([ma.astype(np.float64), a0, a0 * a0]), size)
    fb = np.fft.rfft(np.stack([mb.astype(np.float64), b0, b0 * b0]), size)

    def corr(i: int, j: int) -> np.ndarray:  # sum over t of side_i(a)[t] * side_j(b)[t + lag], lag by lag
        c = np.fft.irfft(np.conj(fa[i]) * fb[j], size)
        return np.concatenate([c[size - max_lag:], c[:max_lag + 1]])

    n, sx, sy = np.round(corr(0, 0)), corr(1, 0), corr(0, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sxx = corr(2, 0) - sx * sx / n
        syy = corr(0, 2) - sy * sy / n
        r = (corr(1, 1) - sx * sy / n) / np.sqrt(sxx * syy)
    shaky = (n < 3) | ~(sxx > 1e-6 * n) | ~(syy > 1e-6 * n)
    return np.where(shaky, np.nan, np.clip(r, -1.0, 1.0))


def wilson_interval(x: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for binomial proportions x/n (elementwise); n = 0 gives (0, 1)."""
    x, n = np.asarray(x, dtype=np.float64), np.asarray(n, dtype=np.float64)
    zz = norm.ppf(0.5 + level / 2) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, x / n, 0.0)
        centre = (p + zz / (2 * n)) / (1 + zz / n)
        half = np.sqrt(zz) * np.sqrt(p * (1 - p) / n + zz / (4 * n**2)) / (1 + zz / n)
    return np.where(n > 0, centre - half, 0.0), np.where(n > 0, centre + half, 1.0)


def stable_uniform(keys: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) per integer key (splitmix64's finaliser): the same key always gets
    the same number, on every machine and in every version, so a sample drawn by thresholding it (the steps an
    audit traces) stays the same as a run grows."""
    from .cot.shingles import splitmix64

    z = splitmix64(np.asarray(keys, dtype=np.int64))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# ---------------------------------------------------------------------------------------------------------------
# Distribution tails without scipy.stats. The detectors need the normal and Student t tails and quantiles, one
# binomial tail and Fisher's one-sided exact test; scipy.stats computes each with one special function (its
# `_cdf`, `_sf`, `_ppf` of the distribution), wrapped in generic code for the support's ends and invalid
# arguments. These call the same special functions and take the same branches, so they give scipy.stats'
# values bit for bit (tests/test_distributions.py compares them over every kind of argument; with scipy 1.11, whose
# binomial and hypergeometric ufuncs live in scipy.stats, these import it: `_boost`). Why: importing
# scipy.stats costs every audit process ~0.35 s (~0.45 s with scipy.special, which these import alone in ~0.1 s),
# on one core between its ingest and its first detector (docs/performance.md, session 48), for five functions.

def _special() -> Any:
    import scipy.special

    return scipy.special


def _boost(name: str) -> Any:
    """scipy's ufunc `name` of Boost's distributions (`_binom_sf`, `_hypergeom_cdf`): in `scipy.special` since
    scipy 1.12, in `scipy.stats._boost` (importing scipy.stats) before."""
    from scipy.special import _ufuncs

    found = getattr(_ufuncs, name, None)
    if found is None:
        from scipy.stats import _boost as boost

        found = getattr(boost, name)
    return found


def _out(x: np.ndarray) -> Any:
    """A 0-d result as a NumPy scalar, as scipy.stats returns it."""
    return x[()] if x.ndim == 0 else x


class _Normal:
    """`scipy.stats.norm` (standard: no loc or scale) for `cdf`, `sf`, `ppf` and `isf`."""

    @staticmethod
    def cdf(x: Any) -> Any:
        return _out(np.asarray(_special().ndtr(np.asarray(x, dtype=np.float64))))

    @staticmethod
    def sf(x: Any) -> Any:
        return _out(np.asarray(_special().ndtr(-np.asarray(x, dtype=np.float64))))

    @staticmethod
    def ppf(q: Any) -> Any:
        return _out(_quantile(np.asarray(q, dtype=np.float64), _special().ndtri, -np.inf, np.inf))

    @staticmethod
    def isf(q: Any) -> Any:
        return _out(_quantile(np.asarray(q, dtype=np.float64), lambda v: -_special().ndtri(v), np.inf, -np.inf))


class _StudentT:
    """`scipy.stats.t` (standard) for `cdf`, `sf` and `ppf`; `df` may be infinite (the normal limit)."""

    @staticmethod
    def cdf(x: Any, df: Any) -> Any:
        x, df = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(df, dtype=np.float64))
        tail = np.asarray(_special().stdtr(df, x))
        return _out(_tail(x, df > 0, tail, at_low=0.0, at_high=1.0))

    @staticmethod
    def sf(x: Any, df: Any) -> Any:
        x, df = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(df, dtype=np.float64))
        tail = np.asarray(_special().stdtr(df, -x))
        return _out(_tail(x, df > 0, tail, at_low=1.0, at_high=0.0))

    @staticmethod
    def ppf(q: Any, df: Any) -> Any:
        q, df = np.broadcast_arrays(np.asarray(q, dtype=np.float64), np.asarray(df, dtype=np.float64))
        return _out(_quantile(q, lambda v: _special().stdtrit(df, v), -np.inf, np.inf, ok=df > 0))


def _tail(x: np.ndarray, ok: np.ndarray, value: np.ndarray, at_low: float, at_high: float) -> np.ndarray:
    """scipy.stats' `rv_continuous.cdf`/`sf` around a tail on the whole line: NaN where an argument is invalid or
    x is NaN, the limits at x = -inf and +inf, the special function elsewhere."""
    out = np.where(np.isneginf(x), at_low, np.where(np.isposinf(x), at_high, value))
    return np.where(~ok | np.isnan(x), np.nan, out)


def _quantile(q: np.ndarray, f: Callable[[np.ndarray], Any], at_0: float, at_1: float,
              ok: np.ndarray | bool = True) -> np.ndarray:
    """scipy.stats' `rv_continuous.ppf`/`isf`: `f` inside (0, 1), the support's ends at 0 and 1, NaN elsewhere."""
    inside = (q > 0) & (q < 1)
    value = np.asarray(f(np.where(inside, q, 0.5)), dtype=np.float64)
    out = np.where(q == 0, at_0, np.where(q == 1, at_1, np.where(inside, value, np.nan)))
    return np.where(ok, out, np.nan)


class _Binomial:
    """`scipy.stats.binom` for `sf` (scipy's `binom._sf`, the same special function and branches)."""

    @staticmethod
    def sf(k: Any, n: Any, p: Any) -> Any:
        k, n, p = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (k, n, p)))
        ok = (n >= 0) & (n == np.round(n)) & (p >= 0) & (p <= 1)  # (an infinite n passes, as in scipy)
        inside = ok & (k >= 0) & (k < n) & np.isfinite(k)
        value = np.clip(_boost("_binom_sf")(np.floor(np.where(inside, k, 0)), np.where(inside, n, 1),
                                          np.where(inside, p, 0.5)), 0, 1)
        out = np.where(inside, value, np.where(ok & ((k < 0) | np.isneginf(k)), 1.0, 0.0))
        return _out(np.where(~ok | np.isnan(k), np.nan, out))


norm = _Normal()
t = _StudentT()
binom = _Binomial()


def fisher_exact_greater(table: Any) -> float:
    """One-sided p-value of Fisher's exact test on a 2 x 2 table of counts, for a larger first cell than chance
    (`scipy.stats.fisher_exact(table, alternative="greater").pvalue`: the hypergeometric tail of the second
    column, 1 where a row or a column is empty)."""
    c = np.asarray(table, dtype=np.int64)
    if c.shape != (2, 2) or np.any(c < 0):
        raise ValueError(f"fisher_exact_greater: a 2 x 2 table of non-negative counts, got {c.tolist()}")
    if 0 in c.sum(axis=0) or 0 in c.sum(axis=1):
        return 1.0
    big, n1, draws, k = int(c.sum()), int(c[0].sum()), int(c[0, 1] + c[1, 1]), int(c[0, 1])
    if k >= min(n1, draws):  # the support's upper end (scipy's `rv_discrete.cdf`)
        return 1.0
    if k < max(draws - (big - n1), 0):
        return 0.0
    return min(float(np.clip(_boost("_hypergeom_cdf")(k, n1, draws, big), 0, 1)), 1.0)
