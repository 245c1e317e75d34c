"""Statistics used by discovery and generalisation (the ones appended for them; attribution tests its own)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from rlaudit.stats import (lagged_correlation, mann_kendall, moving_sum, onset_index, stratified_ratio,
                           wilson_interval, zscore)


def test_mann_kendall_agrees_with_kendall_tau_against_time():
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(0.1, 1, 40))
    s, p = mann_kendall(y)
    tau, p_tau = kendalltau(np.arange(40), y)
    assert np.sign(s[0]) == np.sign(tau) and p[0] == pytest.approx(p_tau, rel=0.15)


def test_mann_kendall_rows_ties_and_nans():
    rows = np.array([[0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [0, 0, 1, np.nan, 1, 2]], float)
    s, p = mann_kendall(rows)
    assert p[0] == 1.0 and s[0] == 0
    assert s[1] == 15 and s[2] == -15 and p[1] == p[2] < 0.01
    assert s[3] > 0 and 0 < p[3] < 1
    assert mann_kendall(np.array([[1.0, 2.0]]))[1][0] == 1.0  # too short


def _one_stratum(x0, n0, x1, n1, clusters=None):
    """Sufficient sums for one stratum: each rollout its own cluster, or `clusters` equal all-or-none clusters."""
    k = len(x0)
    sx = np.stack([x0, x1], 1)[:, :, None].astype(float)
    n = np.array([[n0], [n1]], float)
    m = np.ones_like(n) if clusters is None else n / clusters  # cluster size
    sxx = sx * m[None]  # clusters hold m occurrences or none: sum x_c^2 = x m
    g = n / m
    snn = n * m
    return sx, sxx, sxx.copy(), np.broadcast_to(n, (k, 2, 1)), np.broadcast_to(snn, (k, 2, 1)), \
        np.broadcast_to(g, (k, 2, 1))


def test_stratified_ratio_one_stratum_is_the_continuity_corrected_crude_ratio():
    ratio, se = stratified_ratio(*_one_stratum(np.array([20.0, 0.0]), 1000, np.array([200.0, 50.0]), 1000))
    assert ratio[0] == pytest.approx(200.5 / 20.5, rel=1e-6)
    assert ratio[1] == pytest.approx(50.5 / 0.5, rel=1e-6)  # absent early: finite
    crude_se = np.sqrt(1 / 200.5 - 1 / 1000.5 + 1 / 20.5 - 1 / 1000.5)
    assert se[0] == pytest.approx(crude_se, rel=0.05)


def test_stratified_ratio_ignores_a_change_of_mix():
    # two strata with constant prevalence (50% and 1%); the high stratum grows from 10% to 60% of the traffic
    sx = np.array([[[50, 10], [300, 4]]], float)  # (K=1, window, stratum)
    n = np.array([[[100, 1000], [600, 400]]], float)
    ratio, se = stratified_ratio(sx, sx, sx, n, n, n)
    crude = (304 / 1000) / (60 / 1100)
    assert crude > 5 and ratio[0] == pytest.approx(1.0, abs=0.05)
    assert ratio[0] * np.exp(-1.96 * se[0]) < 1 < ratio[0] * np.exp(1.96 * se[0])


def test_clustered_rollouts_widen_the_interval():
    _, se_independent = stratified_ratio(*_one_stratum(np.array([40.0]), 800, np.array([120.0]), 800))
    # the same counts, but rollouts come in all-or-none groups of 8 (100 clusters per window)
    _, se_grouped = stratified_ratio(*_one_stratum(np.array([40.0]), 800, np.array([120.0]), 800, clusters=100))
    assert se_grouped[0] > 2 * se_independent[0]


def test_onset_finds_a_step_change_and_ignores_noise():
    rng = np.random.default_rng(1)
    n = np.full(40, 200.0)
    p = np.where(np.arange(40) >= 20, 0.3, 0.02)
    x = rng.binomial(200, p).astype(float)
    base = np.arange(40) < 8
    at = onset_index(x, x, n, base, direction=1, half_width=1)
    assert at is not None and 18 <= at <= 21
    flat = rng.binomial(200, 0.02, 40).astype(float)
    assert onset_index(flat, flat, n, base, direction=1, half_width=1) is None
    assert onset_index(x, x, n, base, direction=-1, half_width=1) is None


def test_lagged_correlation_recovers_a_shift():
    t = np.arange(60)
    a = 1 / (1 + np.exp(-(t - 20) / 3))
    b = 0.3 / (1 + np.exp(-(t - 26) / 3))
    r, lag = lagged_correlation(zscore(a), zscore(b), max_lag=10)
    assert lag == 6 and r > 0.99
    r0, lag0 = lagged_correlation(a, a, 5)
    assert lag0 == 0 and r0 == pytest.approx(1.0)
    assert np.isnan(lagged_correlation(np.ones(10), a[:10], 3)[0])


def test_moving_sum_and_wilson():
    assert moving_sum(np.array([1.0, 2, 3, 4]), 1).tolist() == [3, 6, 9, 7]
    lo, hi = wilson_interval(np.array([0, 50]), np.array([100, 100]))
    assert lo[0] == pytest.approx(0, abs=1e-12) and 0.03 < hi[0] < 0.04
    assert lo[1] == pytest.approx(0.4038, abs=1e-3) and hi[1] == pytest.approx(0.5962, abs=1e-3)
    assert zscore(np.ones(5)).tolist() == [0.0] * 5


def test_mann_kendall_equals_the_pairwise_definition_with_ties_and_nans():
    """S and the tie-corrected p-value of the vectorised test equal the textbook pairwise computation (S over
    all i < j of sign(y_j - y_i), NaNs skipped; ties by value counts) on integer-valued rows full of ties."""
    from scipy.stats import norm

    rng = np.random.default_rng(7)
    for _ in range(40):
        rows, t = int(rng.integers(1, 12)), int(rng.integers(0, 25))
        y = rng.integers(0, 4, (rows, t)).astype(float) / int(rng.integers(1, 4))
        y[rng.random((rows, t)) < 0.2] = np.nan
        s, p = mann_kendall(y)
        for r in range(rows):
            v = y[r][~np.isnan(y[r])]
            s_ref = sum(np.sign(y[r, j] - y[r, i]) for i in range(t) for j in range(i + 1, t)
                        if not np.isnan(y[r, i]) and not np.isnan(y[r, j]))
            _, c = np.unique(v, return_counts=True)
            n = len(v)
            var = (n * (n - 1) * (2 * n + 5) - np.sum(c * (c - 1.0) * (2.0 * c + 5.0))) / 18.0
            z = (s_ref - np.sign(s_ref)) / np.sqrt(var) if var > 0 else 0.0
            assert s[r] == s_ref
            assert p[r] == (2 * norm.sf(abs(z)) if n >= 3 else 1.0)


def test_stable_uniform_is_fixed_and_uniform():
    from rlaudit.stats import stable_uniform

    keys = np.arange(200_000)
    u = stable_uniform(keys)
    assert ((u >= 0) & (u < 1)).all()
    assert np.array_equal(u, stable_uniform(keys.copy()))  # a function of the key alone
    assert stable_uniform(np.array([5]))[0] == 0.386768045983934  # the same on every machine and version
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert counts.min() > 0.95 * len(keys) / 20 and counts.max() < 1.05 * len(keys) / 20
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01  # neighbouring steps are not kept together
