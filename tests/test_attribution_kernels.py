"""The compiled within-group midranks (`rlaudit.attribution.kernels`) equal `stats.group_midranks` exactly: groups
of every size (insertion-sorted and merge-sorted), groups in any row order, empty codes, ties, signed zeros; the
compiled U, label counts and label sums (`_RankCache.pair_sums`) equal the numpy path's bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit import kernels as base_kernels
from rlaudit import stats
from rlaudit.attribution import kernels

pytestmark = pytest.mark.skipif(not base_kernels.available(), reason="numba is not installed")


def _both(codes: np.ndarray, values: np.ndarray, n_groups: int) -> None:
    ref = stats.group_midranks(codes, values)
    got = kernels.compiled().midranks(codes.astype(np.int64), values.astype(np.float64), n_groups)
    assert got.dtype == np.float64 and np.array_equal(got, ref)


@pytest.mark.parametrize("sizes", [[1], [2, 3, 16], [kernels.INSERTION], [kernels.INSERTION + 1, 1, 200],
                                   [5000], [0, 4, 0, 7]])
def test_equal_on_groups_of_every_size(sizes):
    rng = np.random.default_rng(len(sizes) * 7 + sum(sizes))
    codes = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(codes)  # groups need not be contiguous (outcome-matched sub-groups are not)
    for values in (rng.normal(size=codes.size), rng.integers(0, 3, codes.size).astype(float),
                   np.where(rng.random(codes.size) < 0.5, 0.0, -0.0), np.full(codes.size, 1.5)):
        _both(codes, values, len(sizes))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from([0.0, -0.0, 1.0, 2.5, -1.0, 1e300, -1e-300, 3.0])),
                max_size=120),
       st.integers(0, 3))
def test_equal_property(rows, extra_groups):
    codes = np.array([c for c, _ in rows], np.int64)
    values = np.array([v for _, v in rows], np.float64)
    _both(codes, values, int(codes.max(initial=-1)) + 1 + extra_groups)


def test_dispatch_follows_the_backend(monkeypatch):
    codes, values = np.array([1, 0, 1, 1]), np.array([2.0, 5.0, 2.0, 1.0])
    ref = stats.group_midranks(codes, values)
    for choice in ("numpy", "numba"):
        monkeypatch.setenv(base_kernels.ENV, choice)
        assert np.array_equal(kernels.group_midranks(codes, values, 2), ref)


def _pair_sums_both(monkeypatch, codes, values, labels, n_groups):
    from rlaudit.attribution import trace

    out = {}
    for choice in ("numpy", "numba"):
        monkeypatch.setenv(base_kernels.ENV, choice)
        cache = trace._RankCache()
        out[choice] = [cache.pair_sums("k", codes, values, labels, n_groups),
                       cache.pair_sums("k", codes, values, 1.0 - labels, n_groups),  # ranks from the cache
                       cache.mann_whitney("k", codes, values, labels, n_groups)]
    for ref, got in zip(out["numpy"], out["numba"]):
        for a, b in zip(ref, got):
            if a is None or b is None:
                assert a is None and b is None
                continue
            assert np.asarray(a, np.float64).tobytes() == np.asarray(b, np.float64).tobytes()
            assert a.dtype == b.dtype or not np.isfinite(values).any()  # bincount of no rows: int64 zeros


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5),
                          st.sampled_from([0.0, -0.0, 1.0, 2.5, -1.0, 0.1, 1e300, -1e-300, np.nan, np.inf]),
                          st.sampled_from([0.0, 1.0])), max_size=100),
       st.integers(0, 2))
def test_pair_sums_equal_property(rows, extra_groups):
    codes = np.array([c for c, _, _ in rows], np.int64)
    values = np.array([v for _, v, _ in rows], np.float64)
    labels = np.array([x for _, _, x in rows], np.float64)
    with pytest.MonkeyPatch.context() as mp:
        _pair_sums_both(mp, codes, values, labels, int(codes.max(initial=-1)) + 1 + extra_groups)


def test_pair_sums_with_unlabelled_rows(monkeypatch):
    """A numeric behaviour leaves rows at the group median unlabelled (NaN): the numpy reference either way."""
    rng = np.random.default_rng(3)
    codes = np.sort(rng.integers(0, 50, 2000))
    values = rng.normal(size=codes.size)
    labels = np.where(rng.random(codes.size) < 0.1, np.nan, (rng.random(codes.size) < 0.4).astype(float))
    _pair_sums_both(monkeypatch, codes, values, labels, 50)
    labels[np.isfinite(values)] = np.nan_to_num(labels[np.isfinite(values)])  # NaN only where no value: fast path
    values[::7] = np.nan
    labels[::7] = np.nan
    _pair_sums_both(monkeypatch, codes, values, labels, 50)
