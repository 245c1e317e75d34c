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


def _scan_every_lag(a, b, max_lag):
    """The reference: Pearson's r at every lag, one at a time (the earlier `lagged_correlation`)."""
    best, best_lag = -np.inf, 0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[:len(a) - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[:len(b) + lag])
        ok = ~(np.isnan(x) | np.isnan(y))
        if ok.sum() < 3:
            continue
        x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
        if not (x @ x > 0 and y @ y > 0):
            continue
        r = min(1.0, max(-1.0, float(x @ y) / np.sqrt(float(x @ x) * float(y @ y))))
        if r > best + 1e-12 or (abs(r - best) <= 1e-12 and abs(lag) < abs(best_lag)):
            best, best_lag = r, lag
    return (float("nan"), 0) if best == -np.inf else (best, best_lag)


@pytest.mark.parametrize("seed", range(8))
def test_lagged_correlation_of_long_series_equals_the_scan_of_every_lag(seed):
    """Property: on series long enough for the FFT estimates (NaN gaps, a constant stretch, a shifted copy, noise
    alone, pure ties), the answer is the exact scan's, r and lag, to the bit."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2_000, 5_000))
    t = np.arange(n, dtype=float)
    shift = int(rng.integers(-80, 80))
    base = np.cumsum(rng.standard_normal(n + 200))
    a = base[100:100 + n] + 0.1 * rng.standard_normal(n)
    b = [base[100 + shift:100 + shift + n] * 0.5 + 0.3 * rng.standard_normal(n),  # a's path, shifted
         rng.standard_normal(n),  # unrelated
         np.where(t < n // 2, 1.0, base[100:100 + n]),  # constant for half the run
         a.copy()][seed % 4]
    for x in (a, b):
        x[rng.random(n) < 0.05] = np.nan
    a, b = zscore(a), zscore(b)
    max_lag = n // 10
    assert lagged_correlation(a, b, max_lag) == _scan_every_lag(a, b, max_lag)


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


def _onset_loop(x: np.ndarray, q: np.ndarray, n: np.ndarray, baseline: np.ndarray, direction: int,
                half_width: int = 1, z: float = 3.09, design_effect: float = 1.0,
                presence: bool = True, fraction: float = 0.1, min_baseline: int = 2) -> int | None:
    """The onset as found one candidate at a time (before it was vectorised): the reference."""
    del baseline  # kept for callers: the reference is the steps before each candidate (see above)
    x, q, n = (np.asarray(a, dtype=np.float64) for a in (x, q, n))
    h, t = max(0, int(half_width)), len(x)
    xs, qs, ns = moving_sum(x, h), moving_sum(q, h), moving_sum(n, h)
    with np.errstate(invalid="ignore", divide="ignore"):
        if presence:
            mean = (xs + 0.5) / (ns + 1.0)
            var = mean * (1 - mean) / (ns + 1.0)
        else:
            mean = xs / ns
            var = np.maximum(qs / ns - mean**2, 0) / ns
    # reference for candidate i: steps [0, i - h), as cumulative sums (index i - h)
    cx, cq, cn = (np.concatenate([[0.0], np.cumsum(a)]) for a in (x, q, n))
    extreme = np.nanmax(direction * mean) if np.isfinite(mean).any() else np.nan

    def departs(i: int, j: np.ndarray) -> np.ndarray:
        k = i - h
        x0, q0, n0 = cx[k], cq[k], cn[k]
        with np.errstate(invalid="ignore", divide="ignore"):
            if presence:
                mean0 = (x0 + 0.5) / (n0 + 1.0)
                var0 = mean0 * (1 - mean0) / (n0 + 1.0)
            else:
                mean0 = x0 / n0
                var0 = max(q0 / n0 - mean0**2, 0) / n0
            diff = direction * (mean[j] - mean0)
            score = diff / np.sqrt(design_effect * (var[j] + var0))
            big = diff >= fraction * (extreme - direction * mean0)
        return (np.nan_to_num(score, nan=0.0) >= z) & big & (diff > 0)

    with np.errstate(invalid="ignore", divide="ignore"):
        own = x / n  # each step's own mean

    def moved(i: int) -> bool:
        k = i - h
        with np.errstate(invalid="ignore", divide="ignore"):
            mean0 = cx[k] / cn[k]
        return bool(direction * (own[i] - mean0) >= fraction * (extreme - direction * mean0))

    first = min_baseline + h
    for i in range(first, t):
        if cn[i - h] <= 0:
            continue
        if departs(i, np.arange(i, min(t, i + h + 1))).all() and moved(i):
            return int(i)
    return None


def test_onset_index_equals_the_candidate_loop():
    """The vectorised onset is the first candidate the loop over candidates returned, on random series: rises,
    falls, flat, presence and numeric values, zero-rollout steps, several half-widths."""
    rng = np.random.default_rng(7)
    for case in range(300):
        t = int(rng.integers(3, 120))
        n = rng.integers(0, 40, t).astype(float) * (rng.random(t) > 0.1)
        shape = rng.choice(["rise", "fall", "flat", "step"])
        level = {"rise": np.linspace(0.05, 0.6, t), "fall": np.linspace(0.6, 0.05, t), "flat": np.full(t, 0.2),
                 "step": np.where(np.arange(t) > t // 2, 0.5, 0.1)}[shape]
        presence = bool(case % 3)
        if presence:
            x = rng.binomial(n.astype(int), level).astype(float)
            q = x
        else:
            vals = rng.gamma(2.0, level[:, None] * 3, (t, 40))
            x = np.array([vals[i, :int(n[i])].sum() for i in range(t)])
            q = np.array([(vals[i, :int(n[i])] ** 2).sum() for i in range(t)])
        for direction in (1, -1):
            for h in (0, 1, 3):
                kw = dict(direction=direction, half_width=h, presence=presence, design_effect=1.0 + case % 2)
                assert onset_index(x, q, n, None, **kw) == _onset_loop(x, q, n, None, **kw), (case, direction, h)


def _lagged_corrcoef(source: np.ndarray, target: np.ndarray, max_lag: int) -> tuple[float, int]:
    """The best lagged correlation by `np.corrcoef` per lag (before it was computed directly): the reference."""
    a, b = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    best, best_lag = -np.inf, 0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[:len(a) - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[:len(b) + lag])
        ok = ~(np.isnan(x) | np.isnan(y))
        if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
            continue
        r = float(np.corrcoef(x[ok], y[ok])[0, 1])
        if r > best + 1e-12 or (abs(r - best) <= 1e-12 and abs(lag) < abs(best_lag)):
            best, best_lag = r, lag
    return (float("nan"), 0) if best == -np.inf else (best, best_lag)


def test_lagged_correlation_equals_corrcoef_per_lag():
    """The same best lag, and r to the last digits, as `np.corrcoef` per lag: noisy shifted copies, NaN gaps,
    constant stretches and ties."""
    rng = np.random.default_rng(11)
    for case in range(200):
        t = int(rng.integers(2, 150))
        a = np.cumsum(rng.normal(size=t))
        b = np.roll(a, int(rng.integers(-5, 6))) + rng.normal(scale=rng.choice([0.0, 0.1, 1.0]), size=t)
        if case % 4 == 0:
            a[rng.random(t) < 0.2] = np.nan
            b[rng.random(t) < 0.2] = np.nan
        if case % 7 == 0:
            b[: t // 2] = 1.0
        if case % 11 == 0:
            b = a.copy()
        max_lag = int(rng.integers(1, max(2, t // 3)))
        got, want = lagged_correlation(a, b, max_lag), _lagged_corrcoef(a, b, max_lag)
        assert got[1] == want[1], case
        assert (np.isnan(got[0]) and np.isnan(want[0])) or abs(got[0] - want[0]) <= 1e-12, case
