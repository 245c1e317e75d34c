"""The compiled within-group midranks (`rlaudit.attribution.kernels`) equal `stats.group_midranks` exactly: groups
of every size (insertion-sorted and merge-sorted), groups in any row order, empty codes, ties, signed zeros."""

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
