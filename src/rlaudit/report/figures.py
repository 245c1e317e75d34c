"""Plotly figures for the report, one builder per finding kind, each reading the documented fields defensively.

Detectors document their fields (notes in COMMON.md: `series`, `by_condition`, per-signal tables...), but the
report must never crash on a finding whose fields are missing, malformed or shaped a little differently: every
builder returns an empty list when it cannot find what it needs, and the finding is still shown with its facts
and evidence. Figures are plain dicts `{"id", "data", "layout"}` for `Plotly.newPlot`; the shared look (the
plotly template) is embedded once in the page, not in every figure. Curves longer than `max_points` are
averaged into at most `max_points` step buckets so the report size does not grow with run length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..findings import Finding
from .sanitize import plot_label

Figure = dict[str, Any]
Curve = tuple[list[float], list[float | None]]  # (steps, values)

MAX_POINTS = 500
MAX_CURVES = 12  # conditions or signals per figure; the rest are dropped (the largest are kept)

_STEP_KEYS = ("steps", "step", "x")
_PREVALENCE_KEYS = ("prevalence", "share", "rate", "value", "values", "y")
_EXPOSURE_KEYS = ("exposure_rate", "rate", "exposure", "share", "exposed_share", "share_different", "value",
                  "values", "y", "exposed_samples", "exposed")
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#7f7f7f", "#393b79", "#ad494a")
_FADED = "#c7c7c7"


# ---------------------------------------------------------------------------------------------- field readers
def _number(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _numbers(xs: Any) -> list[float | None] | None:
    """A list of numbers (None for missing/non-finite), or None if `xs` is not a list holding some numbers."""
    if not isinstance(xs, (list, tuple)) or not xs:
        return None
    # finite floats and ints as they are, without a call each (`v - v == 0` is false for NaN and inf; bool is
    # not int by exact type): a 15,625-step run's figures read ~480,000 of them
    vals = [float(x) if ((t := type(x)) is float or t is int) and x - x == 0 else _number(x) for x in xs]
    return vals if any(v is not None for v in vals) else None


def _columns(rows: Any) -> dict[str, list[Any]] | None:
    """[{"step": 1, "prevalence": .1}, ...] -> {"step": [1, ...], "prevalence": [.1, ...]}."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, Mapping) for r in rows):
        return None
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    return {k: [r.get(k) for r in rows] for k in keys}


def series_of(obj: Any, prefer: Sequence[str] = ()) -> tuple[list[float], dict[str, list[float | None]]] | None:
    """Read a series: {"steps": [...], name: [...], ...} or a list of row dicts with a step key.

    Returns (steps, {name: values}) with the `prefer`red names first, or None. Points without a step are dropped.
    """
    if isinstance(obj, list):
        obj = _columns(obj)
    if not isinstance(obj, Mapping):
        return None
    step_key = next((k for k in _STEP_KEYS if k in obj), None)
    if step_key is None:
        return None
    steps = _numbers(obj[step_key])
    if steps is None:
        return None
    values: dict[str, list[float | None]] = {}
    for name, raw in obj.items():
        if name == step_key:
            continue
        vals = _numbers(raw)
        if vals is not None and len(vals) == len(steps):
            values[str(name)] = vals
    if not values:
        return None
    keep = [i for i, s in enumerate(steps) if s is not None]
    steps_ok = [steps[i] for i in keep]
    values = {k: [v[i] for i in keep] for k, v in values.items()}
    order = [k for k in prefer if k in values] + [k for k in values if k not in prefer]
    return steps_ok, {k: values[k] for k in order}


def named_curve_of(obj: Any, prefer: Sequence[str]) -> tuple[list[float], list[float | None], str] | None:
    """The first of the `prefer`red value series of `obj` (or of `obj["series"]`), with its name. Other value
    columns (sample counts...) are never plotted in place of the wanted one."""
    s = series_of(obj, prefer)
    if (s is None or not any(k in s[1] for k in prefer)) and isinstance(obj, Mapping):
        s = series_of(obj.get("series"), prefer)
    if s is None:
        return None
    steps, values = s
    name = next((k for k in prefer if k in values), None)
    return (steps, values[name], name) if name else None


def curve_of(obj: Any, prefer: Sequence[str]) -> Curve | None:
    found = named_curve_of(obj, prefer)
    return (found[0], found[1]) if found else None


def condition_curves(fields: Mapping[str, Any], prefer: Sequence[str] = _PREVALENCE_KEYS) -> dict[str, Curve]:
    """Per-condition curves from whichever documented shape a detector used:

    - `by_condition`: {cond: {"steps": [...], "prevalence": [...]}} or {cond: {"series": {...}, ...}}
    - `series`: {cond: {"steps": [...], ...}} (series per condition), or {"steps": [...], "prevalence":
      {cond: [...]}}, or {"steps": [...], cond: [...], ...} when no value key is a known metric name
    - `series_by_condition` / `condition_series` / `curves`: {cond: series}
    """
    for key in ("by_condition", "series_by_condition", "condition_series", "curves", "series"):
        obj = fields.get(key)
        if not isinstance(obj, Mapping):
            continue
        nested = {str(c): curve_of(v, prefer) for c, v in obj.items() if isinstance(v, (Mapping, list))}
        nested = {c: v for c, v in nested.items() if v is not None}
        if nested:
            return nested
        step_key = next((k for k in _STEP_KEYS if k in obj), None)
        if step_key is None:
            continue
        steps = _numbers(obj[step_key])
        if steps is None:
            continue
        for name in prefer:  # {"steps": [...], "prevalence": {cond: [...]}}
            inner = obj.get(name)
            if isinstance(inner, Mapping):
                out = {str(c): (steps, v) for c, raw in inner.items()
                       if (v := _numbers(raw)) is not None and len(v) == len(steps)}
                if out:
                    return _drop_missing_steps(out)
        if not any(k in obj for k in prefer):  # {"steps": [...], cond_a: [...], cond_b: [...]}
            out = {str(c): (steps, v) for c, raw in obj.items()
                   if c != step_key and (v := _numbers(raw)) is not None and len(v) == len(steps)}
            if len(out) >= 2:
                return _drop_missing_steps(out)
    return {}


def _drop_missing_steps(curves: dict[str, tuple[list[float | None], list[float | None]]]) -> dict[str, Curve]:
    out = {}
    for c, (steps, vals) in curves.items():
        keep = [i for i, s in enumerate(steps) if s is not None]
        out[c] = ([steps[i] for i in keep], [vals[i] for i in keep])  # type: ignore[misc]
    return out


def table_rows(obj: Any, key_name: str, labelled: bool = False) -> list[dict[str, Any]]:
    """A per-item table as rows: a list of dicts, or {item: {...}} (item stored under `key_name`).

    Rows of a list need not name their item; `labelled=True` keeps only rows that do (a figure cannot draw a bar
    or a curve it cannot label: a `cot_grading` finding whose `by_condition` rows lack `condition` raised
    KeyError here).
    """
    if isinstance(obj, list):
        return [dict(r) for r in obj if isinstance(r, Mapping) and (not labelled or r.get(key_name) is not None)]
    if isinstance(obj, Mapping):
        rows = []
        for k, v in obj.items():
            if isinstance(v, Mapping):
                rows.append({key_name: k, **v})
            elif _number(v) is not None:
                rows.append({key_name: k, "value": v})
        return rows
    return []


def interval(x: Any) -> tuple[float, float] | None:
    """[lo, hi] or {"lo"/"low"/"lower": .., "hi"/"high"/"upper": ..} -> (lo, hi)."""
    if isinstance(x, Mapping):
        lo = next((x[k] for k in ("lo", "low", "lower") if k in x), None)
        hi = next((x[k] for k in ("hi", "high", "upper") if k in x), None)
        x = [lo, hi]
    if isinstance(x, (list, tuple)) and len(x) == 2:
        lo, hi = _number(x[0]), _number(x[1])
        if lo is not None and hi is not None:
            return (min(lo, hi), max(lo, hi))
    return None


# ---------------------------------------------------------------------------------------------- helpers
def downsample(steps: Sequence[float], values: Sequence[float | None], max_points: int = MAX_POINTS) -> Curve:
    """Average a curve into at most `max_points` equal-width step buckets (x = mean step of each bucket)."""
    x = np.asarray(steps, dtype=float)
    y = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if len(x) <= max_points:
        return x.tolist(), [None if math.isnan(v) else float(v) for v in y]
    edges = np.linspace(x[0], x[-1], max_points + 1)
    bucket = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max_points - 1)
    counts = np.bincount(bucket, minlength=max_points)
    ok = ~np.isnan(y)
    sum_x = np.bincount(bucket, weights=x, minlength=max_points)
    sum_y = np.bincount(bucket[ok], weights=y[ok], minlength=max_points)
    n_y = np.bincount(bucket[ok], minlength=max_points)
    used = counts > 0
    mx = sum_x[used] / counts[used]
    with np.errstate(invalid="ignore", divide="ignore"):
        my = np.where(n_y[used] > 0, sum_y[used] / np.maximum(n_y[used], 1), np.nan)
    return mx.tolist(), [None if math.isnan(v) else float(v) for v in my]


def zscore(values: Sequence[float | None]) -> list[float | None] | None:
    """Standardise a curve (mean 0, sd 1) so curves of different scale can be overlaid; None if it is flat."""
    y = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    ok = ~np.isnan(y)
    if ok.sum() < 2:
        return None
    mean, sd = float(np.mean(y[ok])), float(np.std(y[ok]))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # flat up to rounding
        return None
    z = (y - mean) / sd
    return [None if math.isnan(v) else float(v) for v in z]


def smooth(values: Sequence[float | None], window: int) -> list[float | None]:
    """Centered moving average that skips missing points (per-step prevalence is noisy; shapes are not)."""
    y = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    if window <= 1 or len(y) < 3:
        return [None if math.isnan(v) else float(v) for v in y]
    ok = ~np.isnan(y)
    kernel = np.ones(window)
    sums = np.convolve(np.where(ok, y, 0.0), kernel, mode="same")
    counts = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(counts > 0, sums / counts, np.nan)
    return [None if math.isnan(v) else float(v) for v in out]


def _is_share(curves: Iterable[Sequence[float | None]]) -> bool:
    vals = [v for c in curves for v in c if v is not None]
    return bool(vals) and min(vals) >= 0.0 and max(vals) <= 1.0


def _largest(curves: dict[str, Curve], limit: int = MAX_CURVES, keep: Sequence[str] = ()) -> dict[str, Curve]:
    if len(curves) <= limit:
        return curves
    peak = {c: max((v for v in vals if v is not None), default=0.0) for c, (_, vals) in curves.items()}
    chosen = [c for c in keep if c in curves]
    chosen += sorted((c for c in curves if c not in chosen), key=lambda c: -peak[c])[: limit - len(chosen)]
    return {c: curves[c] for c in curves if c in chosen}


def _line(x: Sequence[float], y: Sequence[float | None], name: str, color: str, **extra: Any) -> dict[str, Any]:
    return {"type": "scatter", "mode": "lines", "x": list(x), "y": list(y), "name": plot_label(name, 60),
            "line": {"color": color, "width": extra.pop("width", 2), **extra.pop("line", {})},
            "connectgaps": False, **extra}


def _vline(x: float, label: str, xref: str = "x", yref: str = "y domain") -> tuple[dict, dict]:
    shape = {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": xref, "yref": yref,
             "line": {"color": "#555", "dash": "dot", "width": 1}}
    note = {"x": x, "y": 1, "xref": xref, "yref": yref, "text": plot_label(label), "showarrow": False,
            "xanchor": "left", "yanchor": "top", "font": {"size": 10, "color": "#555"}}
    return shape, note


def _round(obj: Any, digits: int = 5) -> Any:
    """Floats in plot data to `digits` significant digits: indistinguishable on screen, a third of the bytes."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else None
    if isinstance(obj, list):
        return [_round(v, digits) for v in obj]
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    return obj


def figure(fig_id: str, title: str, data: list[dict], layout: dict | None = None, height: int = 320) -> Figure:
    base = {"title": {"text": plot_label(title, 120), "font": {"size": 14}}, "height": height,
            "margin": {"l": 60, "r": 20, "t": 50, "b": 45}, "legend": {"orientation": "h", "y": -0.2},
            "hovermode": "x unified"}
    base.update(layout or {})
    return {"id": fig_id, "data": _round(data), "layout": base}


# ---------------------------------------------------------------------------------------------- builders
def prevalence_figure(fig_id: str, fields: Mapping[str, Any], title: str, highlight: Sequence[str] = (),
                      max_points: int = MAX_POINTS) -> Figure | None:
    """Prevalence per condition over steps: raw (left) and rescaled to z-scores (right), the overlay that shows
    a behaviour learned under one condition moving in step everywhere. Falls back to the overall series."""
    curves = condition_curves(fields)
    overall = curve_of(fields.get("series"), _PREVALENCE_KEYS)
    if not curves and overall is None:
        return None
    smoothed = None
    if not curves:
        curves = {"all rollouts": overall}  # type: ignore[dict-item]
        found = named_curve_of(fields.get("series"), ("smoothed",))
        smoothed = downsample(found[0], found[1], max_points) if found else None
    curves = _largest(curves, keep=highlight)
    curves = {c: downsample(x, y, max_points) for c, (x, y) in curves.items()}
    share = _is_share(y for _, y in curves.values())
    two_panels = len(curves) >= 2
    data: list[dict] = []
    for i, (cond, (x, y)) in enumerate(curves.items()):
        faded = bool(highlight) and cond not in highlight
        color = _FADED if faded else _PALETTE[i % len(_PALETTE)]
        group = f"c{i}"
        data.append(_line(x, y, cond, color, legendgroup=group, width=1.5 if faded else 2.5))
        # The rescaled panel shows the highlighted conditions only (all when none is): the overlay to compare.
        z = zscore(smooth(y, max(3, len(y) // 10) | 1)) if two_panels and not faded else None
        if z is not None:
            data.append(_line(x, z, cond, color, legendgroup=group, showlegend=False, xaxis="x2", yaxis="y2",
                              width=1.5 if faded else 2.5))
    if smoothed is not None:  # the detector's own smoothing of the overall curve
        data[0]["line"].update(width=1, color="#9ecae1")
        data.append(_line(*smoothed, "smoothed", "#1f77b4", width=3))
    if overall is not None and len(curves) >= 2:
        x, y = downsample(*overall, max_points)
        data.append(_line(x, y, "all rollouts", "#000", line={"dash": "dot"}, width=1.5))
    layout: dict[str, Any] = {"yaxis": {"title": {"text": "share of rollouts" if share else "prevalence"},
                                        "tickformat": ".0%" if share else None, "rangemode": "tozero"},
                              "xaxis": {"title": {"text": "step"}}}
    if two_panels:
        layout.update({
            "xaxis": {"domain": [0, 0.47], "title": {"text": "step"}},
            "xaxis2": {"domain": [0.53, 1], "title": {"text": "step"}, "anchor": "y2"},
            "yaxis2": {"anchor": "x2", "title": {"text": "z-score of smoothed curve"}},
            "annotations": [
                {"text": "raw", "x": 0.0, "y": 1.0, "xref": "paper", "yref": "paper", "showarrow": False,
                 "xanchor": "left", "yanchor": "bottom", "font": {"size": 11, "color": "#555"}},
                {"text": "rescaled per condition (overlap = same dynamics)", "x": 0.53, "y": 1.0, "xref": "paper",
                 "yref": "paper", "showarrow": False, "xanchor": "left", "yanchor": "bottom",
                 "font": {"size": 11, "color": "#555"}}]})
    onset = _number(fields.get("onset_step", fields.get("first_step")))
    if onset is not None:
        shape, note = _vline(onset, f"onset {onset:g}")
        layout["shapes"] = [shape]
        layout.setdefault("annotations", []).append(note)
    return figure(fig_id, title, data, layout, height=340)


def shares_figure(fig_id: str, fields: Mapping[str, Any]) -> Figure | None:
    """Traffic share vs mention share per condition (a persona with 2.5% of rollouts but 66.7% of mentions)."""
    mention, traffic = fields.get("mention_share"), fields.get("traffic_share")
    rows = table_rows(fields.get("by_condition"), "condition", labelled=True)
    if not isinstance(mention, Mapping) and any("mention_share" in r and "traffic_share" in r for r in rows):
        mention = {r["condition"]: r.get("mention_share") for r in rows}  # {cond: {mention_share, traffic_share}}
        traffic = {r["condition"]: r.get("traffic_share") for r in rows}
    if isinstance(mention, Mapping) and isinstance(traffic, Mapping):
        conds = [c for c in mention if _number(mention[c]) is not None]
        conds = sorted(conds, key=lambda c: -(_number(mention[c]) or 0))[:MAX_CURVES]
        labels = [plot_label(c, 40) for c in conds]
        t_vals = [_number(traffic.get(c)) for c in conds]
        m_vals = [_number(mention.get(c)) for c in conds]
    elif _number(mention) is not None and _number(traffic) is not None:
        cond = fields.get("source_condition") or fields.get("condition") or "condition"
        labels, t_vals, m_vals = [plot_label(cond, 40)], [_number(traffic)], [_number(mention)]
        t_mention, t_traffic = _number(fields.get("target_mention_share")), _number(fields.get("target_traffic_share"))
        if t_mention is not None and t_traffic is not None and fields.get("target_condition") is not None:
            labels.append(plot_label(fields["target_condition"], 40))
            t_vals.append(t_traffic)
            m_vals.append(t_mention)
    else:
        return None
    if not labels:
        return None
    data = [{"type": "bar", "x": labels, "y": t_vals, "name": "share of rollouts (traffic)",
             "marker": {"color": "#9ecae1"}},
            {"type": "bar", "x": labels, "y": m_vals, "name": "share of mentions", "marker": {"color": "#d62728"}}]
    return figure(fig_id, "Where the behaviour shows up: mentions vs traffic per condition", data,
                  {"barmode": "group", "yaxis": {"tickformat": ".0%", "range": [0, 1]}, "hovermode": "closest"},
                  height=300)


def attribution_figure(fig_id: str, fields: Mapping[str, Any]) -> Figure | None:
    """Per reward signal: share of the selection pressure (left) and paired preference with its CI (right)."""
    rows = []
    for key in ("per_signal", "signals", "by_signal", "signal_table", "table"):
        rows = table_rows(fields.get(key), "signal")
        if rows:
            break
    if not rows and fields.get("signal") is not None:
        rows = [{k: fields.get(k) for k in ("signal", "pressure_share", "paired_preference",
                                              "paired_preference_ci")}]
    rows = [r for r in rows if r.get("signal") is not None][:MAX_CURVES * 2]
    if not rows:
        return None
    names = [plot_label(r["signal"], 40) for r in rows]
    pressure = [_number(r.get("pressure_share")) for r in rows]
    pref = [_number(r.get("paired_preference")) for r in rows]
    cis = [interval(r.get("paired_preference_ci")) for r in rows]
    has_pressure = any(v is not None for v in pressure)
    has_pref = any(v is not None for v in pref)
    if not (has_pressure or has_pref):
        return None
    top = str(fields.get("signal", ""))
    colors = ["#d62728" if str(r["signal"]) == top else "#6baed6" for r in rows]
    data: list[dict] = []
    layout: dict[str, Any] = {"hovermode": "closest", "showlegend": False,
                              "yaxis": {"autorange": "reversed", "automargin": True}}
    if has_pressure:
        data.append({"type": "bar", "orientation": "h", "y": names, "x": pressure, "name": "pressure share",
                     "marker": {"color": colors}})
        layout["xaxis"] = {"title": {"text": "share of selection pressure"}, "tickformat": ".0%",
                           "domain": [0, 0.47] if has_pref else [0, 1]}
    if has_pref:
        err_plus = [(ci[1] - p) if ci and p is not None else None for ci, p in zip(cis, pref)]
        err_minus = [(p - ci[0]) if ci and p is not None else None for ci, p in zip(cis, pref)]
        axis = "2" if has_pressure else ""
        data.append({"type": "scatter", "mode": "markers", "y": names, "x": pref, "name": "paired preference",
                     "marker": {"color": colors, "size": 10},
                     "error_x": {"type": "data", "symmetric": False, "array": err_plus, "arrayminus": err_minus,
                                 "color": "#444"},
                     "xaxis": f"x{axis}", "yaxis": f"y{axis}"})
        xkey, ykey = f"xaxis{axis}", f"yaxis{axis}"
        layout[xkey] = {"title": {"text": "P(score with > without), 95% CI"}, "range": [0, 1],
                        "domain": [0.53, 1] if has_pressure else [0, 1]}
        if has_pressure:
            layout[xkey]["anchor"] = "y2"
            layout[ykey] = {"anchor": "x2", "autorange": "reversed", "showticklabels": False,
                            "matches": "y"}
        layout["shapes"] = [{"type": "line", "x0": 0.5, "x1": 0.5, "y0": 0, "y1": 1, "xref": f"x{axis}",
                             "yref": "paper", "line": {"color": "#555", "dash": "dot", "width": 1}}]
    height = 120 + 28 * len(rows)
    return figure(fig_id, "Which reward signal pushes the behaviour", data, layout, height=max(260, height))


def exposure_figure(fig_id: str, fields: Mapping[str, Any], max_points: int = MAX_POINTS) -> Figure | None:
    """CoT exposure over steps: share of the grader's inputs that contained the policy's reasoning."""
    found = named_curve_of(fields.get("series"), _EXPOSURE_KEYS)
    curve = (found[0], found[1]) if found else None
    key = found[2] if found else ""
    if curve is None:
        curves = condition_curves(fields, _EXPOSURE_KEYS)
        if not curves:
            return None
        curves = {c: downsample(x, y, max_points) for c, (x, y) in _largest(curves).items()}
    else:
        curves = {"all rollouts": downsample(*curve, max_points)}
    share = _is_share(y for _, y in curves.values()) and key not in ("exposed", "exposed_samples")
    data = [{**_line(x, y, c, _PALETTE[i % len(_PALETTE)]), "mode": "lines+markers", "marker": {"size": 4}}
            for i, (c, (x, y)) in enumerate(curves.items())]
    if key == "share_different":
        ylabel = "same-answer pairs scored differently"
    else:
        ylabel = "share of grader inputs with CoT" if share else "exposed samples"
    layout: dict[str, Any] = {
        "xaxis": {"title": {"text": "step"}},
        "yaxis": {"title": {"text": ylabel},
                  "tickformat": ".1%" if share else None, "rangemode": "tozero"}}
    first = _number(fields.get("first_step"))
    if first is not None:
        shape, note = _vline(first, f"first exposure, step {first:g}")
        layout.update(shapes=[shape], annotations=[note])
    grader = fields.get("grader") or "grader"
    what = "Suspected CoT grading (statistical screen)" if fields.get("method") == "screen" else "CoT exposure"
    return figure(fig_id, f"{what} over steps: {grader}", data, layout)


def by_condition_bars(fig_id: str, fields: Mapping[str, Any], keys: Sequence[str], title: str) -> Figure | None:
    """A bar per condition for a scalar per condition (e.g. exposure rate), when `by_condition` holds scalars."""
    rows = table_rows(fields.get("by_condition"), "condition", labelled=True)
    labels, vals = [], []
    for r in rows:
        v = next((_number(r[k]) for k in (*keys, "value") if k in r and _number(r[k]) is not None), None)
        if v is not None:
            labels.append(plot_label(r["condition"], 40))
            vals.append(v)
    if not vals:
        return None
    share = all(0 <= v <= 1 for v in vals)
    return figure(fig_id, title, [{"type": "bar", "x": labels, "y": vals, "marker": {"color": "#d62728"}}],
                  {"yaxis": {"tickformat": ".1%" if share else None}, "hovermode": "closest"}, height=280)


def series_figure(fig_id: str, fields: Mapping[str, Any], title: str,
                  max_points: int = MAX_POINTS) -> Figure | None:
    """Any `series` a finding carries, every value column as a line (fallback for other kinds)."""
    s = series_of(fields.get("series"))
    if s is None:
        return None
    steps, values = s
    data = []
    for i, (name, vals) in enumerate(list(values.items())[:MAX_CURVES]):
        x, y = downsample(steps, vals, max_points)
        data.append(_line(x, y, name, _PALETTE[i % len(_PALETTE)]))
    layout: dict[str, Any] = {"xaxis": {"title": {"text": "step"}}}
    first = _number(fields.get("first_step", fields.get("onset_step")))
    if first is not None:
        shape, note = _vline(first, f"step {first:g}")
        layout.update(shapes=[shape], annotations=[note])
    return figure(fig_id, title, data, layout, height=300)


def reward_components_figure(fig_id: str, run: str, curves: Mapping[str, Curve],
                             max_points: int = MAX_POINTS) -> Figure | None:
    """Mean of each reward signal per step for one run (signals that did not apply are excluded, not zero)."""
    if not curves:
        return None
    data = []
    for i, (signal, (x, y)) in enumerate(curves.items()):
        x, y = downsample(x, y, max_points)
        total = signal == "reward (total)"
        data.append(_line(x, y, signal, "#000" if total else _PALETTE[i % len(_PALETTE)],
                          line={"dash": "dash"} if total else {}, width=1.5 if total else 2))
    return figure(fig_id, f"Reward components over steps: {run}", data,
                  {"xaxis": {"title": {"text": "step"}}, "yaxis": {"title": {"text": "mean reward"}}})


def signal_figure(fig_id: str, signal: str, curve: Curve, fields: Mapping[str, Any],
                  max_points: int = MAX_POINTS) -> Figure:
    """One reward signal's mean per step, from the store (for reward-health findings, which carry no series)."""
    x, y = downsample(*curve, max_points)
    layout: dict[str, Any] = {"xaxis": {"title": {"text": "step"}}, "yaxis": {"title": {"text": "mean value"}}}
    first = _number(fields.get("first_step"))
    if first is not None:
        shape, note = _vline(first, f"from step {first:g}")
        layout.update(shapes=[shape], annotations=[note])
    return figure(fig_id, f"Mean of {signal} per step (where it applies)",
                  [{**_line(x, y, signal, "#d62728"), "mode": "lines+markers", "marker": {"size": 4}}], layout,
                  height=280)


# ---------------------------------------------------------------------------------------------- dispatch
def _emerging(f: Finding, fid: str, mp: int) -> list[Figure | None]:
    behavior = f.get("behavior") or f.get("term") or f.title
    return [prevalence_figure(f"{fid}-prev", f.fields, f"Prevalence of “{behavior}” over steps", (), mp),
            shares_figure(f"{fid}-shares", f.fields)]


def _generalization(f: Finding, fid: str, mp: int) -> list[Figure | None]:
    src, dst = f.get("source_condition"), f.get("target_condition")
    highlight = [str(c) for c in (src, dst) if c is not None]
    behavior = f.get("behavior") or f.title
    return [prevalence_figure(f"{fid}-prev", f.fields, f"“{behavior}”: {src} → {dst}", highlight, mp),
            shares_figure(f"{fid}-shares", f.fields)]


def _attribution(f: Finding, fid: str, mp: int) -> list[Figure | None]:
    return [attribution_figure(f"{fid}-attr", f.fields)]


def _cot(f: Finding, fid: str, mp: int) -> list[Figure | None]:
    return [exposure_figure(f"{fid}-exp", f.fields, mp),
            by_condition_bars(f"{fid}-cond", f.fields, _EXPOSURE_KEYS, "CoT exposure per condition")]


_VIEW_NAMES = {"cot": "CoT only", "action": "action only", "all": "all messages"}


def _onset_marks(fields: Mapping[str, Any]) -> dict[str, Any]:
    onset = _number((fields.get("exposure") or {}).get("onset"))
    if onset is None:
        return {}
    shape, note = _vline(onset, f"CoT exposure from step {onset:g}")
    return {"shapes": [shape], "annotations": [note]}


def monitorability_views_figure(fig_id: str, fields: Mapping[str, Any]) -> Figure | None:
    """g-mean² of each monitor view per step window, with its 95% interval as error bars, the exposure onset
    marked; the title carries the verdict."""
    views = fields.get("views")
    if not isinstance(views, Mapping):
        return None
    data = []
    for i, (view, v) in enumerate(views.items()):
        series = v.get("series") if isinstance(v, Mapping) else None
        if not isinstance(series, list):
            continue
        x, y, lo, hi = _window_points(series, lambda w: w.get("g_mean2") or {})
        if x:
            data.append({**_line(x, y, _VIEW_NAMES.get(view, str(view)), _PALETTE[i % len(_PALETTE)],
                                 line={"dash": "dash"} if view == "all" else {}),  # 'all' often overlays 'action'
                         "mode": "lines+markers", "marker": {"size": 7},
                         "error_y": {"type": "data", "array": hi, "arrayminus": lo, "visible": True}})
    if not data:
        return None
    verdict = str(fields.get("verdict") or "").replace("_", " ")
    layout = {"xaxis": {"title": {"text": "step (middle of each window)"}},
              "yaxis": {"title": {"text": "g-mean² = TPR × TNR"}, "range": [-0.05, 1.05]}, **_onset_marks(fields)}
    return figure(fig_id, f"Monitor g-mean² per view over training (verdict: {verdict})", data, layout)


def _window_points(windows: Iterable[Mapping[str, Any]], estimate_of: Callable[[Mapping[str, Any]], Mapping[str, Any]]
                   ) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per-window estimates as points at each window's middle step with their error-bar lengths below and above
    (0 without an interval); `estimate_of(window)` is the mapping holding `estimate` and `ci`. Windows without a
    [first, last] step pair or an estimate are skipped."""
    x, y, lo, hi = [], [], [], []
    for w in windows:
        steps, e = w.get("steps") or [], estimate_of(w)
        est, ci = _number(e.get("estimate")), interval(e.get("ci"))
        if len(steps) != 2 or est is None:
            continue
        x.append((float(steps[0]) + float(steps[1])) / 2)
        y.append(est)
        lo.append(est - ci[0] if ci else 0.0)
        hi.append(ci[1] - est if ci else 0.0)
    return x, y, lo, hi


def verbalisation_figure(fig_id: str, fields: Mapping[str, Any], max_points: int = MAX_POINTS) -> Figure | None:
    """Verbalisation rate per step (of rollouts whose action shows the behaviour, the share whose reasoning
    states it) with the per-window estimates and their intervals."""
    v = fields.get("verbalisation")
    if not isinstance(v, Mapping) or not v.get("steps"):
        return None
    x, y = downsample([float(s) for s in v["steps"]], [_number(s) for s in v.get("series") or []], max_points)
    data = [{**_line(x, y, "per step", "#9aa4b1", width=1), "mode": "lines+markers", "marker": {"size": 3}}]
    wx, wy, lo, hi = _window_points(v.get("windows") or [], lambda w: w)
    if wx:
        data.append({**_line(wx, wy, "per window (95% CI)", "#d62728"), "mode": "markers", "marker": {"size": 9},
                     "error_y": {"type": "data", "array": hi, "arrayminus": lo, "visible": True}})
    trend = v.get("trend") or "flat"
    return figure(fig_id, f"Verbalisation rate over steps (trend {trend}; by {plot_label(str(v.get('by')), 50)})",
                  data, {"xaxis": {"title": {"text": "step"}},
                         "yaxis": {"title": {"text": "reasoning states it"}, "tickformat": ".0%",
                                   "range": [-0.05, 1.05]}, **_onset_marks(fields)}, height=300)


def exposure_cells_figure(fig_id: str, fields: Mapping[str, Any]) -> Figure | None:
    """The four cells of the CoT-only g-mean² difference-in-differences: exposed vs unexposed, before vs after."""
    cot = (fields.get("views") or {}).get("cot") or {}
    d = (cot.get("exposure") or {}).get("g_mean2") or {}
    cells = d.get("cells")
    if not isinstance(cells, Mapping):
        return None
    data = []
    for i, (group, label) in enumerate((("unexposed", "unexposed"), ("exposed", "exposed"))):
        ys = [_number(cells.get(f"{group}_pre")), _number(cells.get(f"{group}_post"))]
        data.append({"type": "bar", "name": label, "x": ["before onset", "after onset"], "y": ys,
                     "marker": {"color": ("#1f77b4", "#d62728")[i]}})
    est, ci = _number(d.get("estimate")), interval(d.get("ci"))
    title = "CoT-only g-mean², exposed vs unexposed"
    if est is not None and ci is not None:
        title += f": DiD {est:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    return figure(fig_id, title, data, {"barmode": "group", "hovermode": "closest",
                                        "yaxis": {"title": {"text": "g-mean²"}, "range": [0, 1.05]}}, height=280)


def _monitorability(f: Finding, fid: str, mp: int) -> list[Figure | None]:
    return [monitorability_views_figure(f"{fid}-views", f.fields), verbalisation_figure(f"{fid}-verbal", f.fields, mp),
            exposure_cells_figure(f"{fid}-cells", f.fields)]


def _generic(f: Finding, fid: str, mp: int) -> list[Figure | None]:
    return [series_figure(f"{fid}-series", f.fields, f.title, mp)]


BUILDERS: dict[str, Callable[[Finding, str, int], list[Figure | None]]] = {
    "emerging_behavior": _emerging,
    "generalization": _generalization,
    "reward_attribution": _attribution,
    "cot_grading": _cot,
    "monitorability": _monitorability,
}


def figures_for(finding: Finding, fig_id: str, max_points: int = MAX_POINTS) -> list[Figure]:
    """The figures of one finding (possibly none). Never raises on malformed fields: a figure that cannot be
    built from what the finding holds is skipped."""
    build = BUILDERS.get(finding.kind, _generic)
    try:
        figs = build(finding, fig_id, max_points)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError):
        figs = []
    return [f for f in figs if f is not None and f["data"]]
