"""`rlaudit.stats`' distribution tails against scipy.stats, which they stand in for (imported in ~0.1 s instead of
~0.45 s): the same values, bit for bit, over ordinary arguments, the support's ends, infinities, NaN and invalid
parameters."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.stats as sps
from hypothesis import given, settings, strategies as st

from rlaudit import stats

SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, -1e-300, 1e300, -1e300, np.inf, -np.inf, np.nan, 37.5, -37.5, 8.2,
           -8.2, 1e-17, 1 - 1e-16]
PROBS = [0.0, 1.0, 0.5, 1e-300, 1e-17, 1 - 1e-16, 0.975, 0.025, -0.1, 1.1, np.nan, np.inf, -np.inf, 0.95, 0.05]
DFS = [1.0, 2.0, 0.5, 3.7, 30.0, 1e6, np.inf, 0.0, -1.0, np.nan]


def same(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
probs = st.one_of(st.floats(0, 1), st.sampled_from(PROBS))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(floats, min_size=1, max_size=8), st.lists(probs, min_size=1, max_size=8))
def test_normal_tails_and_quantiles_equal_scipy(xs, qs):
    for names, arg in ((("cdf", "sf"), np.array(xs)), (("ppf", "isf"), np.array(qs))):
        for name in names:
            assert same(getattr(stats.norm, name)(arg), getattr(sps.norm, name)(arg)), name


@settings(max_examples=300, deadline=None, derandomize=True)
@given(floats, st.one_of(st.floats(0.01, 1e4), st.sampled_from(DFS)), probs)
def test_student_t_equals_scipy(x, df, q):
    assert same(stats.t.cdf(x, df), sps.t.cdf(x, df))
    assert same(stats.t.sf(x, df), sps.t.sf(x, df))
    assert same(stats.t.ppf(q, df), sps.t.ppf(q, df))


def test_every_special_argument_and_parameter_equals_scipy():
    x, q = np.array(SPECIAL), np.array(PROBS)
    assert same(stats.norm.cdf(x), sps.norm.cdf(x)) and same(stats.norm.sf(x), sps.norm.sf(x))
    assert same(stats.norm.ppf(q), sps.norm.ppf(q)) and same(stats.norm.isf(q), sps.norm.isf(q))
    for df in DFS:
        assert same(stats.t.cdf(x, df), sps.t.cdf(x, df)), df
        assert same(stats.t.sf(x, df), sps.t.sf(x, df)), df
        assert same(stats.t.ppf(q, df), sps.t.ppf(q, df)), df
    # scalars in, NumPy scalars out, as the callers use them (`float(...)`, arithmetic)
    assert isinstance(stats.norm.sf(1.5), np.float64) and stats.norm.sf(1.5) == sps.norm.sf(1.5)
    assert isinstance(stats.t.ppf(0.975, 7), np.float64) and stats.t.ppf(0.975, 7) == sps.t.ppf(0.975, 7)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.floats(-3, 60), st.one_of(st.integers(0, 50), st.sampled_from([2.5, -1, np.inf, np.nan])),
       st.one_of(st.floats(0, 1), st.sampled_from([-0.1, 1.1, np.nan])))
def test_binomial_tail_equals_scipy(k, n, p):
    assert same(stats.binom.sf(k, n, p), sps.binom.sf(k, n, p))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 60), min_size=4, max_size=4))
def test_fisher_greater_equals_scipy(cells):
    table = [[cells[0], cells[1]], [cells[2], cells[3]]]
    assert stats.fisher_exact_greater(table) == sps.fisher_exact(table, alternative="greater").pvalue


def test_fisher_greater_on_the_cot_scans_tables():
    """The shape the CoT scan asks about: many exposures against few or none by chance, at 1M-rollout counts."""
    for table in ([[10009, 189168], [0, 199177]], [[7, 993], [0, 1000]], [[1, 0], [0, 1]], [[0, 5], [0, 9]],
                  [[3, 199174], [2, 199175]], [[50, 50], [50, 50]]):
        assert stats.fisher_exact_greater(table) == sps.fisher_exact(table, alternative="greater").pvalue, table
    with pytest.raises(ValueError, match="2 x 2"):
        stats.fisher_exact_greater([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="non-negative"):
        stats.fisher_exact_greater([[1, -2], [3, 4]])


def test_an_audit_does_not_import_scipy_stats(tmp_path):
    """A whole audit (every detector, findings, report) in a fresh process leaves scipy.stats unimported."""
    code = ("import sys\n"
            "from rlaudit import audit\n"
            "from rlaudit.organisms import simulate\n"
            "run = simulate('goblin_persona', sys.argv[1] + '/run', format='trl', seed=3)\n"
            "result = audit([sys.argv[1] + '/run'], store=sys.argv[1] + '/store', report_path=sys.argv[1] + '/r.html')\n"
            "print(len(result.findings), 'scipy.stats' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n, imported = proc.stdout.split()
    assert int(n) > 0 and imported == "False", proc.stdout
