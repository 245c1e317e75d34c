"""The resampling section of the report: rates per category and behaviour with CIs (candidate vs baseline),
ratios, evidence pairs (the resampled turn beside the original) and the backtest (forecast vs observed).

It reads results directories of `rlaudit resample` (samples.parquet, manifest.json, and backtest.json when
`rlaudit resample backtest` wrote one) and recomputes rates as `rlaudit.evals.compare` does, so several
directories merge and any model can be the baseline. Shown by `rlaudit resample compare DIR... --report
FILE.html` (a page of its own) and as a section of the audit report (`rlaudit report --resample DIR`, or every
`STORE/resample/*/` results directory found beside the store).

Bounded whatever the traffic: categories per figure are capped (the most-sampled first; the table in the
results directory has them all), evidence pairs are capped per behaviour and model, and texts go through the
report's `Clip`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .figures import _PALETTE, Figure, figure
from .sanitize import Clip, plot_label, short

MAX_CATEGORIES = 16  # rows per rate/ratio figure
MAX_PAIRS = 3  # evidence pairs per behaviour, model and direction
_BAND = 1.5  # the seed's anchor: forecasts within 1.5x
_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def discover(store_root: str | Path | None) -> list[Path]:
    """Results directories kept beside a store: `STORE/resample/*/samples.parquet`."""
    if store_root is None:
        return []
    base = Path(store_root) / "resample"
    return sorted(p.parent for p in base.glob("*/samples.parquet")) if base.is_dir() else []


def _fmt(x: float | None, pct: bool) -> str:
    if x is None or math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def _label(r: dict[str, Any]) -> str:
    return "all traffic" if r["dimension"] == "all" else f"{r['dimension']}: {r['category']}"


def _categories(rates: list[dict[str, Any]], baseline: str) -> list[tuple[str, str]]:
    """(dimension, category) pairs to plot: `all` first, then by the baseline's number of turns."""
    base = {(r["dimension"], r["category"]): r["samples"] for r in rates if r["model"] == baseline}
    keys = sorted(base, key=lambda k: (k[0] != "all", -base[k], k))
    # a dimension with one category repeats `all` (e.g. condition: none): left out of the plots
    per_dim: dict[str, int] = {}
    for d, _ in keys:
        per_dim[d] = per_dim.get(d, 0) + 1
    return [k for k in keys if k[0] == "all" or per_dim[k[0]] > 1][:MAX_CATEGORIES]


def rate_figure(fig_id: str, spec: str, rates: list[dict[str, Any]], models: list[str], baseline: str
                ) -> Figure | None:
    """Horizontal bars: the rate per category for each model, with its 95% CI (clustered by transcript)."""
    keys = _categories(rates, baseline)
    if not keys:
        return None
    idx = {(r["dimension"], r["category"], r["model"]): r for r in rates}
    numeric = any(r.get("numeric") for r in rates)
    labels = [plot_label(_label({"dimension": d, "category": c}), 60) for d, c in keys]
    data = []
    for i, m in enumerate(models):
        rows = [idx.get((d, c, m)) for d, c in keys]
        x = [r["rate"] if r and not math.isnan(r["rate"]) else None for r in rows]
        plus = [max(0.0, r["ci_high"] - r["rate"]) if r and not math.isnan(r["ci_high"]) else 0 for r in rows]
        minus = [max(0.0, r["rate"] - r["ci_low"]) if r and not math.isnan(r["ci_low"]) else 0 for r in rows]
        text = [f"{plot_label(m, 40)}: {_fmt(r['rate'], not numeric)} ({_fmt(r['ci_low'], not numeric)} to "
                f"{_fmt(r['ci_high'], not numeric)}), {r['samples']:,} turns" if r else "" for r in rows]
        data.append({"type": "bar", "orientation": "h", "name": plot_label(m, 40), "y": labels, "x": x,
                     "error_x": {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus,
                                 "thickness": 1.2, "width": 3},
                     "marker": {"color": "#7f7f7f" if m == baseline else _PALETTE[i % len(_PALETTE)]},
                     "hovertext": text, "hoverinfo": "text"})
    height = 110 + 24 * len(keys) * max(1, len(models))
    layout = {"barmode": "group", "hovermode": "closest", "margin": {"l": 150, "r": 20, "t": 50, "b": 45},
              "yaxis": {"autorange": "reversed", "automargin": True},
              "xaxis": {"title": {"text": "mean value" if numeric else "share of turns"},
                        **({} if numeric else {"tickformat": ".0%", "rangemode": "tozero"})}}
    return figure(fig_id, f"Rate of {spec} per category (95% CI, clustered by transcript)", data, layout,
                  height=min(height, 900))


def ratio_figure(fig_id: str, spec: str, rates: list[dict[str, Any]], models: list[str], baseline: str
                 ) -> Figure | None:
    """Forest plot: each candidate's ratio to the baseline per category, log scale, 95% CI; an upper bound that
    is open (the baseline was zero in some bootstrap replicates) is drawn to the plot's edge with an arrow."""
    keys = _categories(rates, baseline)
    idx = {(r["dimension"], r["category"], r["model"]): r for r in rates}
    finite = [v for r in rates if r["model"] != baseline for v in (r["ratio"], r["ratio_low"], r["ratio_high"])
              if v is not None and math.isfinite(v) and v > 0]
    if not keys or not finite:
        return None
    lo_edge, hi_edge = min(min(finite), 0.5) / 1.5, max(max(finite), 2.0) * 1.5
    labels = [plot_label(_label({"dimension": d, "category": c}), 60) for d, c in keys]
    data = []
    for i, m in enumerate(x for x in models if x != baseline):
        ys, xs, plus, minus, text, symbols = [], [], [], [], [], []
        for (d, c), label in zip(keys, labels):
            r = idx.get((d, c, m))
            if r is None or r["ratio"] is None or math.isnan(r["ratio"]):
                continue
            x = min(max(r["ratio"], lo_edge), hi_edge)
            hi = hi_edge if not math.isfinite(r["ratio_high"]) else r["ratio_high"]
            lo = (hi_edge if r["ratio_low"] == math.inf  # baseline zero in every replicate: no interval
                  else r["ratio_low"] if math.isfinite(r["ratio_low"]) and r["ratio_low"] > 0 else lo_edge)
            ys.append(label)
            xs.append(x)
            plus.append(max(0.0, hi - x))
            minus.append(max(0.0, x - lo))
            symbols.append("triangle-right" if not math.isfinite(r["ratio"]) or not math.isfinite(r["ratio_high"])
                           else "circle")
            text.append(f"{plot_label(m, 40)} / {plot_label(baseline, 40)}: {_fmt(r['ratio'], False)} "
                        f"({_fmt(r['ratio_low'], False)} to {_fmt(r['ratio_high'], False)})")
        if xs:
            color = _PALETTE[(i + 1) % len(_PALETTE)]
            data.append({"type": "scatter", "mode": "markers", "name": plot_label(m, 40), "y": ys, "x": xs,
                         "cliponaxis": False,
                         "marker": {"color": color, "size": 9, "symbol": symbols},
                         "error_x": {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus,
                                     "color": color, "thickness": 1.5, "width": 4},
                         "hovertext": text, "hoverinfo": "text"})
    if not data:
        return None
    layout = {"hovermode": "closest", "margin": {"l": 150, "r": 20, "t": 50, "b": 45},
              "yaxis": {"autorange": "reversed", "automargin": True, "type": "category",
                        "categoryorder": "array", "categoryarray": labels},
              "xaxis": {"type": "log", "range": [math.log10(lo_edge), math.log10(hi_edge)],
                        "tickvals": [t for t in _TICKS if lo_edge <= t <= hi_edge],
                        "ticktext": [f"{t:g}x" for t in _TICKS if lo_edge <= t <= hi_edge],
                        "title": {"text": f"ratio to {plot_label(baseline, 40)} (log scale)"}},
              "shapes": [{"type": "line", "x0": 1, "x1": 1, "y0": 0, "y1": 1, "yref": "paper",
                          "line": {"color": "#555", "dash": "dot", "width": 1}}]}
    return figure(fig_id, f"{spec}: candidate / {baseline} (95% CI; ▶ open upper bound)", data, layout,
                  height=min(110 + 30 * len(keys), 900))


def backtest_figure(fig_id: str, bt: dict[str, Any]) -> Figure | None:
    """Forecast vs later observed rate per category, the y = x line and the 1.5x band (lines through the
    origin); colour: was the direction of change from the baseline right."""
    rows = [r for r in bt.get("rows", []) if r["dimension"] != "all"] or bt.get("rows", [])
    pts = [r for r in rows if math.isfinite(r["forecast"]) and math.isfinite(r["observed"])]
    if not pts:
        return None
    lo = 0.0
    hi = max(max(r["forecast"] for r in pts), max(r["observed"] for r in pts), 1e-3) * 1.15
    data = [{"type": "scatter", "mode": "lines", "x": [lo, hi], "y": [lo * f, hi * f], "hoverinfo": "skip",
             "line": {"color": "#999" if f == 1 else "#ccc", "dash": "solid" if f == 1 else "dash", "width": 1},
             "name": "forecast = observed" if f == 1 else f"{_BAND}x band", "showlegend": f != 1 / _BAND}
            for f in (1, _BAND, 1 / _BAND)]
    for right, color in ((True, "#2ca02c"), (False, "#d62728")):
        sel = [r for r in pts if r["direction_right"] == right]
        if sel:
            data.append({"type": "scatter", "mode": "markers", "x": [r["forecast"] for r in sel],
                         "y": [r["observed"] for r in sel], "name": "direction right" if right else "direction wrong",
                         "marker": {"color": color, "size": 9},
                         "hovertext": [f"{plot_label(r['behavior'], 40)} · {plot_label(_label(r), 50)}: forecast "
                                       f"{_fmt(r['forecast'], True)}, observed {_fmt(r['observed'], True)}, baseline "
                                       f"{_fmt(r['baseline_rate'], True)}, error {r['error']:.2f}x" for r in sel],
                         "hoverinfo": "text"})
    numeric = any(r["forecast"] > 1 or r["observed"] > 1 for r in pts)
    axis = {"range": [lo, hi], **({} if numeric else {"tickformat": ".0%"})}
    return figure(fig_id, f"Backtest of {bt.get('model')}: forecast vs later observed rate per category", data,
                  {"hovermode": "closest", "xaxis": {**axis, "title": {"text": "forecast (resampled)"}},
                   "yaxis": {**axis, "title": {"text": "observed later"}}}, height=420)


def _events(raw: str | None) -> list[dict[str, Any]]:
    try:
        events = json.loads(raw or "[]")
    except ValueError:
        return []
    return [{"name": short(e.get("name"), 80), "arguments": short(e.get("arguments"), 200),
             "simulated": bool(e.get("simulated")), "output": short(e.get("output"), 400)}
            for e in events if isinstance(e, dict)]


def section(dirs: Sequence[str | Path], baseline: str = "original", clip: Clip | None = None,
            prefix: str = "rs") -> tuple[dict[str, Any], list[Figure]]:
    """The template context of the resampling section and its figures."""
    from ..evals.results import evidence, rate_table, read_samples

    clip = clip or Clip()
    dirs = [Path(d) for d in dirs]
    rows, specs = read_samples(dirs)  # read once: rates (as `rlaudit.evals.compare` gives them) and evidence
    rates = rate_table(rows, specs, baseline)
    models = sorted({r["model"] for r in rates}, key=lambda m: (m != baseline, m))
    if baseline not in models:
        from ..errors import RlauditError

        raise RlauditError(f"resample report: baseline {baseline!r} is not a model in {', '.join(map(str, dirs))} "
                           f"({', '.join(models)})")
    manifests = []
    for d in dirs:
        path = d / "manifest.json"
        manifests.append(json.loads(path.read_text()) if path.exists() else {})
    figures: list[Figure] = []
    behaviors = []
    for b, spec in enumerate(specs):
        mine = [r for r in rates if r["behavior"] == spec]
        figs = [f for f in (rate_figure(f"{prefix}-b{b}-rate", spec, mine, models, baseline),
                            ratio_figure(f"{prefix}-b{b}-ratio", spec, mine, models, baseline)) if f]
        figures += figs
        numeric = any(r.get("numeric") for r in mine)
        headline = [r for r in mine if r["dimension"] == "all"]
        table = [[r["dimension"], short(r["category"], 80), short(r["model"], 60), f"{r['transcripts']:,}",
                  f"{r['samples']:,}",
                  f"{_fmt(r['rate'], not numeric)} ({_fmt(r['ci_low'], not numeric)} to "
                  f"{_fmt(r['ci_high'], not numeric)})",
                  "" if r["model"] == baseline else
                  f"{_fmt(r['ratio'], False)} ({_fmt(r['ratio_low'], False)} to {_fmt(r['ratio_high'], False)})"]
                 for r in mine]
        pairs = []
        for e in evidence(rows, [spec], baseline, per=MAX_PAIRS):
            pairs.append({"model": short(e["model"], 60), "direction": e["direction"],
                          "cut": short(e["cut_id"], 120), "sample": e["sample"],
                          "category": short(f"task {e['task']} · tools {e['toolset']} · condition {e['condition']}",
                                            200),
                          "original": clip(e["original"]), "resampled": clip(e["resampled"]),
                          "original_value": _fmt(e["original_value"], False),
                          "resampled_value": _fmt(e["resampled_value"], False),
                          "events": _events(e["tool_events"])})
        behaviors.append({"spec": short(spec, 300), "figures": [f["id"] for f in figs], "table": table,
                          "headline": [(short(r["model"], 60), _fmt(r["rate"], not numeric),
                                        "" if r["model"] == baseline else _fmt(r["ratio"], False)) for r in headline],
                          "pairs": pairs})
    facts = [("results", ", ".join(short(d.name, 60) for d in dirs)),
             ("transcripts", f"{sum(m.get('transcripts', 0) for m in manifests):,}"),
             ("cuts", f"{sum(m.get('cuts', 0) for m in manifests):,}"),
             ("samples per cut", ", ".join(sorted({str(m.get('samples')) for m in manifests if m}))),
             ("models", ", ".join(short(m, 60) for m in models)), ("baseline", short(baseline, 60)),
             ("simulated tool outputs", f"{sum(m.get('simulated_calls', 0) for m in manifests):,}"),
             ("truncated / failed", f"{sum(m.get('truncated', 0) for m in manifests):,} / "
                                    f"{sum(m.get('errors', 0) for m in manifests):,}")]
    cost = sum(v.get("cost_usd", 0) for m in manifests for v in (m.get("llm") or {}).values())
    cost += sum((m.get("simulator") or {}).get("cost_usd", 0) for m in manifests)
    facts.append(("LLM cost", f"${cost:.4f}"))
    backtests = []
    for i, d in enumerate(dirs):
        path = d / "backtest.json"
        if not path.exists():
            continue
        bt = json.loads(path.read_text())
        fig = backtest_figure(f"{prefix}-bt{i}", bt)
        if fig:
            figures.append(fig)
        backtests.append({
            "dir": short(d.name, 60), "model": short(bt.get("model"), 60), "figure": fig["id"] if fig else None,
            "facts": [("categories", f"{bt.get('categories', 0):,}"),
                      ("median error", f"{bt.get('median_error', float('nan')):.2f}x"),
                      ("geometric-mean error", f"{bt.get('geomean_error', float('nan')):.2f}x"),
                      ("direction right", f"{100 * bt.get('directional_accuracy', float('nan')):.0f}%")],
            "table": [[short(r["behavior"], 80), r["dimension"], short(r["category"], 80),
                       _fmt(r["baseline_rate"], True), _fmt(r["forecast"], True), _fmt(r["observed"], True),
                       f"{r['error']:.2f}x", "right" if r["direction_right"] else "wrong"]
                      for r in bt.get("rows", [])]})
    return {"facts": facts, "behaviors": behaviors, "backtests": backtests, "baseline": short(baseline, 60),
            "max_categories": MAX_CATEGORIES, "max_pairs": MAX_PAIRS}, figures
