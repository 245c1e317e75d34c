"""Figure builders read each kind's documented fields, in the shapes detectors use, and never crash on others."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlaudit.findings import Finding
from rlaudit.report.figures import (
    BUILDERS, attribution_figure, condition_curves, downsample, exposure_figure, figures_for, prevalence_figure,
    shares_figure, zscore)
from rlaudit.report.sanitize import script_json

from .conftest import IMG, sample_findings

STEPS = list(range(10))


def _prev(scale):
    return [scale * s / 10 for s in STEPS]


@pytest.mark.parametrize("fields", [
    {"by_condition": {"a": {"steps": STEPS, "prevalence": _prev(1)}, "b": {"steps": STEPS, "prevalence": _prev(.1)}}},
    {"by_condition": {"a": {"series": {"steps": STEPS, "prevalence": _prev(1)}, "prevalence_end": .9},
                      "b": {"series": {"steps": STEPS, "prevalence": _prev(.1)}}}},
    {"series": {"a": {"steps": STEPS, "prevalence": _prev(1)}, "b": {"steps": STEPS, "prevalence": _prev(.1)}}},
    {"series": {"steps": STEPS, "prevalence": {"a": _prev(1), "b": _prev(.1)}}},
    {"series": {"steps": STEPS, "a": _prev(1), "b": _prev(.1)}},
    {"by_condition": {"a": [{"step": s, "prevalence": v} for s, v in zip(STEPS, _prev(1))],
                      "b": [{"step": s, "prevalence": v} for s, v in zip(STEPS, _prev(.1))]}},
])
def test_condition_curves_reads_every_documented_shape(fields):
    curves = condition_curves(fields)
    assert set(curves) == {"a", "b"}
    assert curves["a"] == (STEPS, _prev(1)) and curves["b"] == (STEPS, _prev(.1))


def test_flat_series_is_not_mistaken_for_conditions():
    assert condition_curves({"series": {"steps": STEPS, "prevalence": _prev(1), "rollouts": [8] * 10}}) == {}


def test_prevalence_overlay_has_raw_and_rescaled_panels_that_coincide_for_proportional_curves():
    fields = {"by_condition": {"nerdy": {"steps": STEPS, "prevalence": _prev(1)},
                               "default": {"steps": STEPS, "prevalence": _prev(.1)}},
              "series": {"steps": STEPS, "prevalence": _prev(.5)}, "onset_step": 3}
    fig = prevalence_figure("p", fields, "t")
    raw = [t for t in fig["data"] if t.get("xaxis") != "x2"]
    rescaled = [t for t in fig["data"] if t.get("xaxis") == "x2"]
    assert {t["name"] for t in raw} == {"nerdy", "default", "all rollouts"}
    assert len(rescaled) == 2
    np.testing.assert_allclose(rescaled[0]["y"], rescaled[1]["y"])  # the seed's overlay: same dynamics
    assert fig["layout"]["yaxis"]["tickformat"] == ".0%"
    assert fig["layout"]["shapes"][0]["x0"] == 3


def test_prevalence_falls_back_to_the_overall_series_in_one_panel():
    fig = prevalence_figure("p", {"series": {"steps": STEPS, "prevalence": _prev(1)}}, "t")
    assert len(fig["data"]) == 1 and "xaxis2" not in fig["layout"]
    assert prevalence_figure("p", {"series": "nonsense"}, "t") is None


def test_highlighted_conditions_keep_colour_and_others_fade():
    fields = {"series": {c: {"steps": STEPS, "prevalence": _prev(i + 1)} for i, c in enumerate("abc")}}
    fig = prevalence_figure("p", fields, "t", highlight=["a", "b"])
    colours = {t["name"]: t["line"]["color"] for t in fig["data"] if t.get("xaxis") != "x2"}
    assert colours["c"] == "#c7c7c7" and colours["a"] != colours["b"] != "#c7c7c7"
    assert len([t for t in fig["data"] if t.get("xaxis") == "x2"]) == 2  # the overlay: highlighted only


def test_model_text_in_labels_is_escaped_for_plotly():
    fields = {"series": {IMG: {"steps": STEPS, "prevalence": _prev(1)}, "b": {"steps": STEPS, "prevalence": _prev(2)}}}
    names = [t["name"] for t in prevalence_figure("p", fields, IMG)["data"]]
    assert all("<" not in n for n in names) and any(n.startswith("&lt;img") for n in names)


def test_downsample_bounds_points_and_keeps_the_mean():
    steps = np.arange(10_000)
    values = [None if s % 7 == 0 else float(s % 3) for s in steps]
    x, y = downsample(steps, values, 500)
    assert len(x) == len(y) == 500
    finite = [v for v in values if v is not None]
    assert abs(np.mean(y) - np.mean(finite)) < 0.01
    assert downsample([1, 2], [None, 3.0]) == ([1.0, 2.0], [None, 3.0])


def test_zscore_of_a_flat_curve_is_none():
    assert zscore([0.2, 0.2, 0.2]) is None
    assert zscore([None, 1.0]) is None
    z = zscore([1.0, None, 3.0])
    assert z[1] is None and z[0] == pytest.approx(-1) and z[2] == pytest.approx(1)


def test_attribution_bars_from_the_attribution_detectors_signal_records():
    signals = [  # as rlaudit.attribution.trace.SignalAttribution.to_json writes them (nested series included)
        {"signal": "persona", "kind": "component", "pressure_share": 0.9, "paired_preference": 0.76,
         "paired_preference_ci": [0.7, 0.82], "series": {"steps": STEPS, "pressure": _prev(1)}},
        {"signal": "correctness", "kind": "component", "pressure_share": 0.1, "paired_preference": 0.5,
         "paired_preference_ci": [0.45, 0.55]},
        {"signal": "total", "kind": "total", "pressure_share": float("nan"), "paired_preference": 0.7,
         "paired_preference_ci": [0.65, 0.75]}]
    fig = attribution_figure("a", {"signal": "persona", "signals": signals})
    bars, prefs = fig["data"]
    assert bars["y"] == ["persona", "correctness", "total"] and bars["x"] == [0.9, 0.1, None]
    assert bars["marker"]["color"][0] != bars["marker"]["color"][1]  # the traced signal stands out
    assert prefs["error_x"]["array"] == pytest.approx([0.06, 0.05, 0.05])
    assert prefs["error_x"]["arrayminus"] == pytest.approx([0.06, 0.05, 0.05])


def test_attribution_from_the_findings_own_fields_when_no_table():
    fig = attribution_figure("a", {"signal": "persona", "pressure_share": 0.8})
    assert len(fig["data"]) == 1 and fig["data"][0]["x"] == [0.8]
    assert attribution_figure("a", {"signals": [{"signal": "x"}]}) is None


def test_exposure_prefers_the_rate_and_labels_the_statistical_screen():
    scan = {"grader": "judge", "method": "scan", "first_step": 4,
            "series": {"steps": STEPS, "samples": [24] * 10, "exposed": [0] * 4 + [3] * 6,
                       "exposure_rate": [0] * 4 + [0.125] * 6}}
    fig = exposure_figure("e", scan)
    assert fig["data"][0]["y"] == scan["series"]["exposure_rate"]
    assert "CoT exposure" in fig["layout"]["title"]["text"]
    screen = {"grader": "judge", "method": "screen",
              "series": {"steps": STEPS, "pairs": [5] * 10, "share_different": [0.1] * 10}}
    fig = exposure_figure("e", screen)
    assert fig["data"][0]["y"] == [0.1] * 10
    assert "statistical screen" in fig["layout"]["title"]["text"]
    assert fig["layout"]["yaxis"]["title"]["text"] == "same-answer pairs scored differently"


def test_shares_figure_per_condition_and_scalar_forms():
    fig = shares_figure("s", {"mention_share": {"nerdy": .667, "default": .333},
                              "traffic_share": {"nerdy": .025, "default": .975}})
    assert fig["data"][0]["x"] == ["nerdy", "default"] and fig["data"][1]["y"] == [.667, .333]
    fig = shares_figure("s", {"mention_share": .667, "traffic_share": .025, "source_condition": "nerdy"})
    assert fig["data"][0]["x"] == ["nerdy"]
    fig = shares_figure("s", {"mention_share": .667, "traffic_share": .025, "source_condition": "nerdy",
                              "target_condition": "none", "target_mention_share": .1, "target_traffic_share": .3})
    assert fig["data"][0]["x"] == ["nerdy", "none"] and fig["data"][0]["y"] == [.025, .3]
    assert shares_figure("s", {"mention_share": "lots"}) is None


def test_every_sample_finding_gets_its_figures():
    counts = {f.kind: len(figures_for(f, "f")) for f in sample_findings()}
    assert counts == {"emerging_behavior": 1, "generalization": 2, "reward_attribution": 1, "cot_grading": 2,
                      "reward_health": 0, "audit_error": 0, "mystery_kind": 1}


field_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda c: st.lists(c, max_size=6) | st.dictionaries(
        st.sampled_from(["steps", "step", "prevalence", "exposure_rate", "a", "b", "series", "signal",
                         "pressure_share", "paired_preference", "paired_preference_ci", "lo", "hi"]), c, max_size=5),
    max_leaves=25)
fields_st = st.dictionaries(
    st.sampled_from(["series", "by_condition", "signals", "per_signal", "mention_share", "traffic_share",
                     "onset_step", "first_step", "signal", "pressure_share", "paired_preference",
                     "paired_preference_ci", "source_condition", "target_condition", "grader", "method"]),
    field_values, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([*BUILDERS, "reward_health"]), fields_st)
def test_builders_never_raise_on_malformed_fields_and_output_serialises(kind, fields):
    finding = Finding(kind, "r", "low", "t", fields=fields)
    builder = BUILDERS.get(kind)
    figs = builder(finding, "f", 50) if builder else figures_for(finding, "f", 50)
    for fig in figs:
        if fig is not None:
            script_json(fig)
            for trace in fig["data"]:
                for axis in ("x", "y"):
                    assert all(v is None or isinstance(v, str) or math.isfinite(v) for v in trace.get(axis, []))


def test_smooth_is_a_nan_aware_centered_average():
    from rlaudit.report.figures import smooth

    assert smooth([1.0, None, 3.0, 5.0, 7.0], 3) == [1.0, 2.0, 4.0, 5.0, 6.0]
    assert smooth([1.0, 2.0], 5) == [1.0, 2.0]


def test_shares_from_the_emerging_detectors_by_condition_records():
    fields = {"by_condition": {"nerdy": {"traffic_share": .025, "mention_share": .667, "prevalence_end": .3},
                               "none": {"traffic_share": .975, "mention_share": .333}}}
    fig = shares_figure("s", fields)
    assert fig["data"][0]["y"] == [.025, .975] and fig["data"][1]["y"] == [.667, .333]


def test_overall_prevalence_draws_the_detectors_smoothing_on_top():
    fig = prevalence_figure("p", {"series": {"steps": STEPS, "prevalence": _prev(1), "smoothed": _prev(.9),
                                             "rollouts": [8] * 10}}, "t")
    assert [t["name"] for t in fig["data"]] == ["all rollouts", "smoothed"]
    assert fig["data"][1]["y"] == pytest.approx(_prev(.9))


@pytest.mark.parametrize("kind", ["cot_grading", "emerging_behavior", "generalization"])
def test_by_condition_rows_that_do_not_name_their_condition_are_not_drawn(kind):
    """Regression (issue 19): Hypothesis found `by_condition_bars` raising KeyError: 'condition' on a cot_grading
    finding whose `by_condition` is a list of rows without the key; every later run replayed it from .hypothesis/."""
    from rlaudit.report.figures import by_condition_bars, figures_for

    fields = {"by_condition": [{"exposure_rate": 0.5}, {"condition": "nerdy", "exposure_rate": 0.25,
                                                        "mention_share": 0.6, "traffic_share": 0.1},
                               {"mention_share": 0.2, "traffic_share": 0.3}]}
    fig = by_condition_bars("c", fields, ["exposure_rate"], "t")
    assert fig["data"][0]["x"] == ["nerdy"] and fig["data"][0]["y"] == [0.25]
    assert shares_figure("s", fields)["data"][1]["y"] == [0.6]
    figures_for(Finding(kind, "r", "low", "t", fields=fields), "f", 50)  # no KeyError


def test_plotly_template_read_from_plotly_file_equals_plotly_io():
    """The report reads plotly's template from the JSON file plotly ships (to skip building its validated objects);
    what it reads must be what plotly.io gives."""
    import plotly.io as pio

    from rlaudit.report import _plotly_template

    template = _plotly_template()
    assert template == pio.templates["plotly_white"].to_plotly_json()
    assert template["layout"]["plot_bgcolor"] == "white"


def test_plotly_js_read_from_plotly_file_equals_get_plotlyjs():
    from plotly.offline import get_plotlyjs

    from rlaudit.report import _plotly_js

    assert _plotly_js() == get_plotlyjs()
