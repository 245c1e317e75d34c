"""The trend screen of the emerging detector (`emerging.trend_screen`) never changes what is reportable: BH
q-values <= alpha are the same whether screened-out p-values (trend p > alpha) keep their full value
max(p_ratio, p_trend) or are replaced by p_trend. Deterministic under the CI Hypothesis profile."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from rlaudit.detectors.emerging import trend_screen
from rlaudit.stats import benjamini_hochberg

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(st.lists(st.tuples(unit, unit), min_size=1, max_size=60), st.sampled_from([0.01, 0.05, 0.1]),
       st.integers(min_value=0, max_value=20))
def test_screen_keeps_every_reportable_q_value(pairs, alpha, pad):
    p_ratio = np.array([a for a, _ in pairs])
    p_trend = np.array([b for _, b in pairs])
    full = np.concatenate([np.maximum(p_ratio, p_trend), np.ones(pad)])
    keep = trend_screen(p_trend, alpha)
    screened = np.concatenate([np.where(keep, np.maximum(p_ratio, p_trend), p_trend), np.ones(pad)])
    q_full, q_screened = benjamini_hochberg(full), benjamini_hochberg(screened)
    rep_full, rep_screened = q_full <= alpha, q_screened <= alpha
    assert np.array_equal(rep_full, rep_screened)
    assert np.allclose(q_full[rep_full], q_screened[rep_full], rtol=0, atol=1e-15)
    # nothing screened out is reportable, with or without the screen
    assert not rep_full[:len(pairs)][~keep].any()


def test_screen_drops_exactly_the_trendless():
    assert trend_screen(np.array([0.0, 0.05, 0.050001, 1.0]), 0.05).tolist() == [True, True, False, False]
