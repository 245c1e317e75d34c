"""Scores, rates per category with transcript-clustered CIs, candidate/baseline ratios, evidence, backtest.

Every sample row (the original turn of each cut, model `original`, and each candidate's resamples) carries one
value per behaviour (0/1, a number for numeric features, NaN when a judge gave no usable answer or the call
failed). A rate is the mean value over the rows of a category; its CI and the ratio's CI come from one Poisson
bootstrap over transcripts (`rlaudit.stats.bootstrap_group_sums`): all samples and cuts of a transcript move
together, and every model is resampled with the same weights, so ratios are paired.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..behaviors import Behavior, parse_behavior
from ..errors import RlauditError
from ..llm.judge import CONVERSATION_MAX_CHARS
from ..stats import bootstrap_group_sums, percentile_interval

DIMENSIONS = ("all", "task", "toolset", "condition")
BASELINE = "original"


def _conversation(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(history, turn, ids of simulated tool outputs) of a row, for judges with view `conversation`."""
    events = json.loads(row.get("tool_events") or "[]")
    return (row.get("history") or [], json.loads(row.get("messages") or "[]"),
            [e["tool_call_id"] for e in events if e.get("simulated")])


def score(rows: list[dict[str, Any]], behaviors: Sequence[Behavior],
          judge_max_chars: int = CONVERSATION_MAX_CHARS) -> None:
    """Adds `values[spec]` to each row (NaN for rows whose generation failed)."""
    texts = pa.array([r["text"] if not r.get("error") else "" for r in rows], pa.string())
    for b in behaviors:
        if b.kind == "judge" and hasattr(b.func, "judge"):
            # judges read the turn as the answer and, with view `all`, the last user message as the prompt;
            # with view `conversation`, the whole transcript (`history` of the row: the messages before the
            # cut) and the turn with its tool outputs; failed generations are not sent
            ok = [i for i, r in enumerate(rows) if not r.get("error")]
            judge = b.func.judge
            if judge.spec.view == "conversation":
                verdicts = judge.judge_conversations([_conversation(rows[i]) for i in ok], judge_max_chars)
            else:
                verdicts = judge.judge_rollouts([rows[i].get("prompt") or "" for i in ok], [None] * len(ok),
                                                [rows[i]["text"] for i in ok])
            vals = np.full(len(rows), np.nan)
            for i, v in zip(ok, verdicts):
                vals[i] = np.nan if v.label is None else float(v.label)
        else:
            vals = b.values(texts) if len(rows) else np.zeros(0)
        for r, v in zip(rows, vals):
            r.setdefault("values", {})[b.spec] = float("nan") if r.get("error") else float(v)


def rate_table(rows: list[dict[str, Any]], specs: Sequence[str], baseline: str = BASELINE, n_boot: int = 1000,
               seed: int = 0, level: float = 0.95) -> list[dict[str, Any]]:
    """One row per (dimension, category, behaviour, model): rate, CI, ratio to the baseline and its CI."""
    models = sorted({r["model"] for r in rows}, key=lambda m: (m != baseline, m))
    out: list[dict[str, Any]] = []
    for dim in DIMENSIONS:
        by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_cat["all" if dim == "all" else str(r[dim])].append(r)
        for cat in sorted(by_cat):
            cat_rows = by_cat[cat]
            tids = sorted({r["transcript_id"] for r in cat_rows})
            tix = {t: i for i, t in enumerate(tids)}
            for spec in specs:
                stats = np.zeros((len(tids), 2 * len(models)))
                mix = {m: j for j, m in enumerate(models)}
                for r in cat_rows:
                    v = r["values"][spec]
                    if math.isnan(v):
                        continue
                    j = 2 * mix[r["model"]]
                    stats[tix[r["transcript_id"]], j] += v
                    stats[tix[r["transcript_id"]], j + 1] += 1
                sums, ns = stats[:, 0::2].sum(0), stats[:, 1::2].sum(0)
                reps = bootstrap_group_sums(stats, n_boot=n_boot, seed=seed) if len(tids) else np.zeros((0, 0))
                with np.errstate(invalid="ignore", divide="ignore"):
                    rate = np.where(ns > 0, sums / np.maximum(ns, 1), np.nan)
                    rrep = reps[:, 0::2] / reps[:, 1::2] if reps.size else np.full((1, len(models)), np.nan)
                lo, hi = percentile_interval(rrep, level)
                b = mix.get(baseline)
                numeric = any(not math.isnan(r["values"][spec]) and r["values"][spec] not in (0.0, 1.0)
                              for r in cat_rows)
                for m, j in mix.items():
                    row = {"dimension": dim, "category": cat, "behavior": spec, "model": m,
                           "transcripts": int(np.sum(stats[:, 2 * j + 1] > 0)), "samples": int(ns[j]),
                           "numeric": numeric, "rate": float(rate[j]), "ci_low": float(lo[j]), "ci_high": float(hi[j]),
                           "baseline": baseline, "ratio": float("nan"), "ratio_low": float("nan"),
                           "ratio_high": float("nan")}
                    if b is not None and m != baseline:
                        with np.errstate(invalid="ignore", divide="ignore"):
                            row["ratio"] = float(rate[j] / rate[b]) if rate[b] > 0 else (
                                float("inf") if rate[j] > 0 else float("nan"))
                            ratio_reps = rrep[:, j] / rrep[:, b]  # x/0 = inf (kept), 0/0 = NaN (dropped)
                        row["ratio_low"], row["ratio_high"] = ratio_interval(ratio_reps, level)
                    out.append(row)
    return out


def ratio_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ratio replicates: NaN (0/0) dropped, infinite ones kept (the order statistic is
    taken, not interpolated), so a baseline that is often zero in the bootstrap gives an open upper bound."""
    reps = replicates[~np.isnan(replicates)]
    if not len(reps):
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha], method="inverted_cdf")
    return float(lo), float(hi)


def evidence(rows: list[dict[str, Any]], specs: Sequence[str], baseline: str = BASELINE, per: int = 5
             ) -> list[dict[str, Any]]:
    """Cuts where a candidate's resample shows a behaviour the baseline turn did not (and the reverse), with
    both turns side by side; the largest differences first."""
    base = {r["cut_id"]: r for r in rows if r["model"] == baseline}
    out: list[dict[str, Any]] = []
    for spec in specs:
        for model in sorted({r["model"] for r in rows} - {baseline}):
            cand = [r for r in rows if r["model"] == model and r["cut_id"] in base]
            diffs = [(r["values"][spec] - base[r["cut_id"]]["values"][spec], r) for r in cand
                     if not math.isnan(r["values"][spec]) and not math.isnan(base[r["cut_id"]]["values"][spec])]
            for direction in (1, -1):
                picked = sorted([d for d in diffs if d[0] * direction > 0], key=lambda d: (-abs(d[0]),
                                                                                          d[1]["cut_id"]))
                seen: set[str] = set()
                for diff, r in picked:
                    if r["cut_id"] in seen or len(seen) >= per:
                        continue
                    seen.add(r["cut_id"])
                    b = base[r["cut_id"]]
                    out.append({"behavior": spec, "model": model, "direction": "gained" if direction > 0 else "lost",
                                "cut_id": r["cut_id"], "sample": r["sample"], "task": r["task"],
                                "toolset": r["toolset"], "condition": r["condition"], "original": b["text"],
                                "resampled": r["text"], "original_value": b["values"][spec],
                                "resampled_value": r["values"][spec], "simulated_calls": r["simulated_calls"],
                                "tool_events": r["tool_events"]})
    return out


# ---------------------------------------------------------------------------------------------- files
SAMPLE_FIELDS = [("transcript_id", pa.string()), ("cut_id", pa.string()), ("cut_index", pa.int64()),
                 ("model", pa.string()), ("sample", pa.int64()), ("task", pa.string()), ("toolset", pa.string()),
                 ("condition", pa.string()), ("prompt", pa.string()), ("text", pa.string()),
                 ("steps", pa.int64()), ("simulated_calls", pa.int64()), ("truncated", pa.bool_()),
                 ("error", pa.string()), ("messages", pa.string()), ("tool_events", pa.string()),
                 ("history_sha256", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64())]
#: what the statistics need of a row (texts and messages stay in samples.parquet)
COMPACT = ("transcript_id", "cut_id", "model", "sample", "task", "toolset", "condition")


class SamplesWriter:
    """Streams sample rows to `samples.parquet` chunk by chunk (one `b:SPEC` column per behaviour)."""

    def __init__(self, path: Path, specs: Sequence[str]):
        self.specs = list(specs)
        self.schema = pa.schema(SAMPLE_FIELDS + [(f"b:{s}", pa.float64()) for s in self.specs])
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(path, self.schema)

    def write(self, rows: list[dict[str, Any]]) -> None:
        names = [f[0] for f in SAMPLE_FIELDS]
        data = [{**{k: r.get(k) for k in names}, **{f"b:{s}": r["values"][s] for s in self.specs}} for r in rows]
        self.writer.write_table(pa.Table.from_pylist(data, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def compact(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{k: r[k] for k in COMPACT}, "values": r["values"]} for r in rows]


def merge_evidence(ev: list[dict[str, Any]], per: int = 5) -> list[dict[str, Any]]:
    """The evidence of several chunks as `evidence` would pick it from all rows at once."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in ev:
        groups[(e["behavior"], e["model"], e["direction"])].append(e)
    out: list[dict[str, Any]] = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2] != "gained")):
        seen: set[str] = set()
        for e in sorted(groups[key], key=lambda e: (-abs(e["resampled_value"] - e["original_value"]),
                                                     e["cut_id"])):
            if e["cut_id"] not in seen and len(seen) < per:
                seen.add(e["cut_id"])
                out.append(e)
    return out


def finish_results(out_dir: Path, rows: list[dict[str, Any]], ev: list[dict[str, Any]], specs: Sequence[str],
                   manifest: dict[str, Any], baseline: str = BASELINE) -> dict[str, Any]:
    """rates.parquet, evidence.parquet, manifest.json and summary.md from (compact) rows and evidence."""
    rates = rate_table(rows, specs, baseline)
    pq.write_table(pa.Table.from_pylist(rates), out_dir / "rates.parquet")
    pq.write_table(pa.Table.from_pylist(ev) if ev else pa.table({"behavior": pa.array([], pa.string())}),
                   out_dir / "evidence.parquet")
    manifest = {**manifest, "behaviors": list(specs), "baseline": baseline}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    (out_dir / "summary.md").write_text(summary_markdown(rates, ev, manifest))
    return {"rates": rates, "evidence": ev}


def write_results(out_dir: Path, rows: list[dict[str, Any]], specs: Sequence[str], manifest: dict[str, Any],
                  baseline: str = BASELINE) -> dict[str, Any]:
    writer = SamplesWriter(out_dir / "samples.parquet", specs)
    writer.write(rows)
    writer.close()
    return finish_results(out_dir, rows, evidence(rows, specs, baseline), specs, manifest, baseline)


def read_samples(dirs: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Sample rows of one or more results directories (original turns of the same cut kept once)."""
    rows: list[dict[str, Any]] = []
    specs: list[str] = []
    seen: set[tuple[str, str, int]] = set()
    for d in dirs:
        path = Path(d) / "samples.parquet"
        if not path.exists():
            raise RlauditError(f"{d}: no samples.parquet (write one with `rlaudit resample ... --out {d}`)")
        for r in pq.read_table(path).to_pylist():
            key = (r["model"], r["cut_id"], r["sample"])
            if key in seen:
                continue
            seen.add(key)
            vals = {k[2:]: (float("nan") if v is None else float(v)) for k, v in r.items() if k.startswith("b:")}
            for s in vals:
                if s not in specs:
                    specs.append(s)
            rows.append({k: v for k, v in r.items() if not k.startswith("b:")} | {"values": vals})
    for r in rows:
        for s in specs:
            r["values"].setdefault(s, float("nan"))
    return rows, specs


def _fmt(x: float, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def rates_markdown(rates: list[dict[str, Any]], dims: Sequence[str] = DIMENSIONS) -> str:
    lines = ["| behaviour | dimension | category | model | transcripts | samples | rate (95% CI) | ratio to "
             "baseline (95% CI) |", "|---|---|---|---|---|---|---|---|"]
    for r in rates:
        if r["dimension"] not in dims:
            continue
        if r["model"] == r["baseline"]:
            ratio = ""
        elif math.isnan(r["ratio"]):  # 0/0: neither model showed the behaviour here
            ratio = "-"
        else:
            ratio = f"{_fmt(r['ratio'], False)} ({_fmt(r['ratio_low'], False)}-{_fmt(r['ratio_high'], False)})"
        pct = not r.get("numeric")
        lines.append(f"| `{r['behavior']}` | {r['dimension']} | {r['category']} | {r['model']} | {r['transcripts']} "
                     f"| {r['samples']} | {_fmt(r['rate'], pct)} ({_fmt(r['ci_low'], pct)}-{_fmt(r['ci_high'], pct)})"
                     f"{'' if pct else ' (mean)'} | {ratio} |")
    return "\n".join(lines)


def summary_markdown(rates: list[dict[str, Any]], ev: list[dict[str, Any]], manifest: dict[str, Any]) -> str:
    parts = ["# Resampling results", "",
             f"Transcripts: {manifest.get('transcripts')}, cuts: {manifest.get('cuts')} (`--cut "
             f"{manifest.get('cut')}`), samples per cut: {manifest.get('samples')}, candidates: "
             f"{', '.join(manifest.get('candidates', []))}; simulated tool outputs: "
             f"{manifest.get('simulated_calls', 0)}. CIs: 95% bootstrap clustered by transcript.", "",
             "## Rates", "", rates_markdown(rates), ""]
    if ev:
        parts += ["## Evidence (original turn beside the resampled one)", ""]
        for e in ev[:20]:
            parts += [f"- `{e['behavior']}` {e['direction']} by **{e['model']}** at `{e['cut_id']}` "
                      f"(sample {e['sample']}, {e['simulated_calls']} simulated tool outputs)",
                      f"  - original: {_quote(e['original'])}", f"  - resampled: {_quote(e['resampled'])}"]
    return "\n".join(parts) + "\n"


def _quote(text: str, n: int = 240) -> str:
    t = " ".join((text or "").split())
    return "`" + (t[:n] + ("..." if len(t) > n else "")).replace("`", "'") + "`"


# ---------------------------------------------------------------------------------------------- backtest
def _smoothed(rate: float, n: int) -> float:
    return (rate * n + 0.5) / (n + 1)


def backtest(rates: list[dict[str, Any]], observed: list[dict[str, Any]], model: str,
             baseline: str = BASELINE) -> dict[str, Any]:
    """Forecast (the candidate's resampled rate) against the rate later observed on real traffic, per category
    and behaviour: multiplicative error max(f/o, o/f) on rates smoothed by (x + 0.5)/(n + 1), and whether the
    direction of change from the baseline (original turns) was right. `observed` is a rate table of the
    observed traffic scored as model `observed`."""
    idx = {(r["dimension"], r["category"], r["behavior"], r["model"]): r for r in rates}
    rows = []
    for o in observed:
        if o["model"] != "observed":
            continue
        key = (o["dimension"], o["category"], o["behavior"])
        f, b = idx.get(key + (model,)), idx.get(key + (baseline,))
        if f is None or b is None or f["samples"] == 0 or o["samples"] == 0:
            continue
        if f.get("numeric") or o.get("numeric"):  # means of numeric features: no smoothing
            fs, os_ = f["rate"], o["rate"]
        else:
            fs, os_ = _smoothed(f["rate"], f["samples"]), _smoothed(o["rate"], o["samples"])
        with np.errstate(divide="ignore", invalid="ignore"):
            err = float(max(fs / os_, os_ / fs)) if fs > 0 and os_ > 0 else (1.0 if fs == os_ else float("inf"))
        df, do = f["rate"] - b["rate"], o["rate"] - b["rate"]
        rows.append({"dimension": key[0], "category": key[1], "behavior": key[2], "baseline_rate": b["rate"],
                     "forecast": f["rate"], "observed": o["rate"], "observed_samples": o["samples"],
                     "error": err, "direction_right": bool(np.sign(df) == np.sign(do))})
    cats = [r for r in rows if r["dimension"] != "all"] or rows
    errors = np.array([r["error"] for r in cats])
    return {"model": model, "baseline": baseline, "categories": len(cats),
            "median_error": float(np.median(errors)) if len(errors) else float("nan"),
            "geomean_error": float(np.exp(np.mean(np.log(errors)))) if len(errors) else float("nan"),
            "directional_accuracy": float(np.mean([r["direction_right"] for r in cats])) if cats else float("nan"),
            "rows": rows}


def backtest_markdown(result: dict[str, Any]) -> str:
    lines = [f"Backtest of `{result['model']}` against observed traffic: {result['categories']} categories, "
             f"median multiplicative error {result['median_error']:.2f}x (geometric mean "
             f"{result['geomean_error']:.2f}x), direction right in {100 * result['directional_accuracy']:.0f}%.",
             "", "| behaviour | dimension | category | baseline | forecast | observed | error | direction |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| `{r['behavior']}` | {r['dimension']} | {r['category']} | {_fmt(r['baseline_rate'])} | "
                     f"{_fmt(r['forecast'])} | {_fmt(r['observed'])} | {r['error']:.2f}x | "
                     f"{'right' if r['direction_right'] else 'wrong'} |")
    return "\n".join(lines)


def parse_behaviors(specs: Sequence[str]) -> list[Behavior]:
    return [parse_behavior(s) for s in specs]
