"""Compiled kernels (numba) for attribution's per-group Mann-Whitney U and label sums (`trace._RankCache`).

Why: `stats.group_midranks` ranks every signal's values within the comparison groups by two sorts of all the
rows (a dense rank of the values, then the (group, rank) key); the groups are small (a GRPO group: 8-16
rollouts), so a counting sort by group and a sort inside each group does the same in one pass. A cold
attribution of the 1M-rollout benchmark ranked 12 signals per batch of 80k rollouts: 0.70 of its 1.87 CPU s
of per-part tables. The ranks are the same numbers: a tie run's midrank is (first + last) / 2 of its 1-based
positions in its group, exact in float64 either way (tests/test_attribution_kernels.py checks both paths on
generated groups, ties, signed zeros and large groups). Given the ranks, `pair_sums` takes each group's U, label
counts and label sums in one pass over the rows instead of five bincounts and their masks (the 1M-rollout
benchmark: ~0.3 of the ~1.3 CPU s of per-part tables), adding the same numbers in the same order.

Which path runs follows `rlaudit.kernels.backend()` (`RLAUDIT_KERNEL=numpy|numba`, numba when importable); the
numpy path (`stats.group_midranks`) stays the reference and the fallback. Compiled at the first use in a process,
then loaded from numba's on-disk cache (`rlaudit.kernels.jit`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import kernels, stats

#: a group up to this size is sorted by insertion (no allocation); larger ones by a merge sort
INSERTION = 32



def group_midranks(codes: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """`stats.group_midranks(codes, values)` for group codes in [0, n_groups) and finite values."""
    if not kernels.use_numba() or not codes.size:
        return stats.group_midranks(codes, values)
    return compiled().midranks(np.ascontiguousarray(codes, np.int64), np.ascontiguousarray(values, np.float64),
                               int(n_groups))


def _midranks(codes, values, n_groups):
    n = codes.size
    start = np.zeros(n_groups + 1, np.int64)
    for i in range(n):
        start[codes[i] + 1] += 1
    for g in range(n_groups):
        start[g + 1] += start[g]
    fill = start[:-1].copy()
    rows = np.empty(n, np.int64)  # the rows of each group, in row order (a counting sort by group)
    for i in range(n):
        rows[fill[codes[i]]] = i
        fill[codes[i]] += 1
    ranks = np.empty(n, np.float64)
    for g in range(n_groups):
        lo, hi = start[g], start[g + 1]
        m = hi - lo
        if m == 0:
            continue
        idx = rows[lo:hi]
        if m <= INSERTION:
            for j in range(1, m):
                r = idx[j]
                v = values[r]
                k = j - 1
                while k >= 0 and values[idx[k]] > v:
                    idx[k + 1] = idx[k]
                    k -= 1
                idx[k + 1] = r
        else:
            idx[:] = idx[np.argsort(values[idx], kind="mergesort")]
        j = 0
        while j < m:  # a run of equal values takes the mean of its 1-based positions
            k = j + 1
            while k < m and values[idx[k]] == values[idx[j]]:
                k += 1
            mid = (j + 1 + k) / 2.0
            for t in range(j, k):
                ranks[idx[t]] = mid
            j = k
    return ranks


def _pair_sums(codes, values, labels, ok, ranks, n_groups):
    """Per group: the sum of the `ranks` (one per `ok` row, in row order) of the rows labelled above 0.5, the
    counts of `ok` rows labelled above 0.5 and not, and the sums of the finite values labelled 1 and labelled
    0: what `trace._RankCache` took from five bincounts and their masks (a dozen passes over the rows). Each sum
    adds its rows in row order from 0.0, as `np.bincount` does, so the results are the same numbers."""
    r1 = np.zeros(n_groups)
    n1 = np.zeros(n_groups)
    n0 = np.zeros(n_groups)
    s1 = np.zeros(n_groups)
    s0 = np.zeros(n_groups)
    j = 0
    for i in range(codes.size):
        g = codes[i]
        lab = labels[i]
        if ok[i]:
            if lab > 0.5:
                n1[g] += 1.0
                r1[g] += ranks[j]
            else:
                n0[g] += 1.0
            j += 1
        v = values[i]
        if np.isfinite(v):
            if lab == 1.0:
                s1[g] += v
            elif lab == 0.0:
                s0[g] += v
    return r1, n1, n0, s1, s0


def _build() -> SimpleNamespace:
    """The rank kernel, compiled (see `rlaudit.kernels.Compiled`)."""
    import numba

    t = numba.types

    def ro(dtype: Any) -> Any:
        return t.Array(dtype, 1, "C", readonly=True)

    return SimpleNamespace(
        midranks=kernels.jit(_midranks, (ro(t.int64), ro(t.float64), t.int64)),
        pair_sums=kernels.jit(_pair_sums, (ro(t.int64), ro(t.float64), ro(t.float64), ro(t.boolean), ro(t.float64),
                                           t.int64)))


compiled = kernels.Compiled(_build)
