"""The `training_health` detector: is the run learning at all? GRPO pathologies from rollouts and scalar logs.

Checks from the rollouts rlaudit stores (aggregated per step and prompt group in DuckDB; Python only sees one
row per step or per group):

- `zero_variance`: share of prompt groups (>= 2 rollouts) whose total reward is the same for every rollout, so
  their GRPO advantages are all zero and they carry no gradient. Split into `all_correct` (the constant is at
  the top of the run's reward distribution, >= its 95th percentile), `all_wrong` (<= its 5th percentile) and
  `other` (the percentiles of the scope's finite rewards, from per-part tables: exact where each step has at
  most 65 distinct rewards, as binary or graded rewards do, else within 1% relative: `training_stats`).
  Tested on the last third of the steps: one-sided binomial test of share > 50% over the groups of
  that window (Wilson 95% interval; `window`, `groups` and `zero_groups` in its statistics say what was counted).
  Severity **medium** above 50%, **high** above 75%; `direction` says which kind dominates. Onset: first step from which the 3-step moving share stays above 50%.
- `advantage_ess`: effective sample size of the advantages, ESS/N = (sum |A|)^2 / (N sum A^2) per step (the
  logged `advantage`, else (r - group mean) / (group std + 1e-4)). Zero-variance groups already lower it; the
  check is on the rollouts of groups that do vary: ESS/N < 0.35 there (binary rewards in groups of 8 cannot go below 0.44) in the last third means a few outlier
  rewards dominate the advantages (**medium**). One-sided t-test over the window's per-step values.
- `length_growth`: mean completion length (tokens when a tokenizer is given or the log carries token counts,
  else characters: `health.lengths`; the finding's `unit` says which) in the last third / in the first third, stratified by
  nothing but with a cluster-robust (prompt-group) standard error of the log ratio; **medium** when the ratio
  is >= 1.5, **high** >= 2.5 (one-sided z-test of log ratio > 0). Per condition ratios are in `by_condition`.
  Onset: `stats.onset_index` on the per-step means against the first third.
- `truncation`: share of completions that ended without their end marker (an unclosed `<think>`: reasoning
  without an answer) or that the trainer marked as cut at the length limit (metadata `finish_reason` /
  `stop_reason` = "length", `is_truncated` / `truncated` = true), or whose token length reached the limit when
  it is known (`max_tokens` option or metadata). Only when the run shows such markers at all
  (else the reader does not know, and the finding's absence means nothing: `notes` says so). **medium** when
  the last third's rate is >= 5% and above the first third's (two-proportion z-test), **high** >= 10%.
- `reward_eval_divergence`: when the run has eval-split rows at >= 4 steps: the training reward rises
  (Mann-Kendall on per-step means) while the eval reward falls. p = max of the two one-sided p-values
  (intersection-union test); the eval change (last third - first third of eval steps) with a Welch 95%
  interval. **high**: the reward-hacking signature.
- `plateau`: per reward signal (the total `reward` and each component in `rewards`), with >= 12 steps: the
  linear change of the per-step mean over the run is within +-0.2 within-step standard deviations (a small
  effect), shown by two one-sided t-tests on the OLS slope (TOST; p = the larger one-sided p, 90% interval).
  **low** (a signal that does not move may be fine if it started at its ceiling); `signal` names it
  (`reward` or `rewards.<name>`). A single component equal to the total is tested once.

Checks from the trainer's scalar logs, found beside the rollouts or named per run (option `metrics`, the CLI's
`--scalar-log`; `rlaudit.health.scalars` reads TRL, verl, prime-rl, TensorBoard and W&B logs; the finding says
which keys were read): `entropy_collapse` (entropy in the last third < 30% of the first third, falling:
**medium**, < 10%: **high**), `kl_drift` (KL rising, last third > 10x first third and > 0.1: **medium**),
`clip_saturation` (clip fraction in the last third > 0.2: **medium**), `grad_norm` (non-finite values: **high**;
spikes > 10x the median: **medium**), `truncation` from the trainer's own clipped ratio when the rollouts do not
show it.

Multiple testing: every check that produces a p-value is one hypothesis; Benjamini-Hochberg over all of them
in the run, and a finding needs q <= 0.05 as well as its effect threshold. Each finding carries `check`,
`onset_step`, `statistics` (estimate, 95% interval, p, q, tests), `steps` (the per-step series), evidence
(steps, groups, rollouts) and `trainer` (the format), from which `remedy` names the setting to change.
"""

from __future__ import annotations

import itertools

import math
from pathlib import Path
from collections.abc import Callable
from typing import Any

import duckdb
import numpy as np

from ..findings import Evidence, Finding
from ..health.lengths import LengthUnit, length_view
from ..derived.partstats import scope_sql
from . import DetectContext, Detector, register
from .training_stats import (clusters_local, lower_quantiles, register_training_stats, reward_quantiles,
                             split_groups, zero_steps)

ALPHA = 0.05
ZV_MEDIUM, ZV_HIGH = 0.5, 0.75
ESS_MIN = 0.35
LEN_MEDIUM, LEN_HIGH = 1.5, 2.5
TRUNC_MEDIUM, TRUNC_HIGH = 0.05, 0.10
MIN_STEPS = 6
PLATEAU_MIN_STEPS, PLATEAU_MARGIN = 12, 0.2
EVIDENCE = 5


@register
class TrainingHealthDetector(Detector):
    name = "training_health"
    kinds = ("training_health",)
    description = ("Is the run learning: zero-variance groups, advantage ESS, length growth, truncation, reward vs "
                   "eval divergence, plateaus; entropy, KL, clipping and gradients from scalar logs.")
    part_stats = ("training_health",)
    light = True  # the per-part statistics' small tables
    #: False computes everything from the rollouts (the reference the cached statistics are tested against)
    use_cache = True

    def detect(self, ctx: DetectContext) -> list[Finding]:
        con = ctx.connect()
        manifest = ctx.store.manifest(ctx.run)
        trainer = str(manifest.get("format") or "")
        candidates: list[dict[str, Any]] = []
        notes: list[str] = []
        tokenizer, max_tokens = ctx.option(self.name, "tokenizer", None), ctx.option(self.name, "max_tokens", None)
        # from per-part statistics cached beside the run (`training_stats`), unless a tokenizer or a limit
        # given for this audit changes the lengths: then from the rollouts
        cached = tokenizer is None and max_tokens is None and self.use_cache
        if cached:
            register_training_stats(con, ctx.part_stats("training_health"), ctx.scope_sql(),
                                    scope_sql(ctx.config.max_step, None))
        steps = [int(r[0]) for r in con.execute(
            f"SELECT DISTINCT step FROM {'ts_lcells' if cached else 'rollouts'} ORDER BY step").fetchall()]
        if len(steps) >= MIN_STEPS:
            unit = length_view(con, tokenizer, max_tokens, **(_unit_counts(con) if cached else {}))
            notes.append(unit.describe())
            early, late = _windows(steps)
            candidates += _zero_variance(con, steps, early, late, cached and not split_groups(con))
            candidates += _length(con, steps, early, late, unit, cached)
            trunc, note = _truncation(con, steps, early, late, unit, cached)
            candidates += trunc
            if note:
                notes.append(note)
            candidates += _divergence(con, ctx.config.max_step, cached)
            candidates += _plateau(con, steps, cached)
        else:
            notes.append(f"only {len(steps)} step(s): the rollout checks need at least {MIN_STEPS}")
        scalar_paths = ctx.option(self.name, "metrics", {}).get(ctx.run) if isinstance(
            ctx.option(self.name, "metrics", {}), dict) else None
        candidates += _scalar_checks(manifest.get("source", ""), scalar_paths, ctx.config.max_step, notes,
                                     rollout_truncation=any(c["check"] == "truncation" for c in candidates))
        _bh(candidates)
        out = []
        for c in candidates:
            if c["severity"] is None:
                continue
            q = c["statistics"].get("q_value")
            if q is not None and not q <= ALPHA:
                continue
            evidence = c.pop("evidence_sql", None)
            ev = _evidence(con, *evidence) if evidence else []
            out.append(Finding(
                kind="training_health", run=ctx.run, severity=c.pop("severity"), title=c.pop("title"),
                explanation=c.pop("explanation"), score=float(c.pop("score")),
                fields={**c, "trainer": trainer, "notes": notes}, evidence=ev))
        return out


# ---------------------------------------------------------------------------------------------- helpers
def _unit_counts(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """`length_view`'s whole-run counts (rows, rows with metadata token counts; the metadata limit's min, max and
    count), from the cached cells instead of a scan of every rollout's metadata."""
    n, tn, lo, hi, mx = con.execute("SELECT coalesce(sum(n), 0), coalesce(sum(tn), 0), min(mx_lo), max(mx_hi), "
                                    "coalesce(sum(mx_n), 0) FROM ts_lcells").fetchone()
    return {"known": (int(n), int(tn)), "limits": (lo, hi, int(mx))}


def _reward_quantiles(con: duckdb.DuckDBPyConnection, qs: tuple[float, ...]) -> dict[float, float] | None:
    """`training_stats.reward_quantiles` exactly, from the rollouts (the reference path): the finite rewards'
    distinct values with their rows."""
    counted = con.execute("""SELECT reward, count(*) FROM rollouts WHERE isfinite(reward) GROUP BY reward
                             ORDER BY reward""").fetchall()
    return lower_quantiles(counted, qs) if counted else None


def _windows(steps: list[int]) -> tuple[list[int], list[int]]:
    k = max(2, len(steps) // 3)
    return steps[:k], steps[-k:]


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _evidence(con: duckdb.DuckDBPyConnection, where: str, note: str) -> list[Evidence]:
    rows = _rows(con, f"""SELECT rollout_id, step, condition, group_id, reward, length(completion) AS chars,
                          left(coalesce(answer, ''), 200) AS text FROM th_rollouts WHERE {where}
                          ORDER BY step DESC, group_id, rollout_id LIMIT {EVIDENCE}""")
    return [Evidence(rollout_id=r["rollout_id"], step=int(r["step"]), condition=r["condition"], text=r["text"],
                     note=note, data={"group_id": r["group_id"], "reward": r["reward"], "chars": r["chars"]})
            for r in rows]


def _wilson(x: float, n: float) -> list[float]:
    from ..stats import wilson_interval

    lo, hi = wilson_interval(np.array([x]), np.array([n]))
    return [float(lo[0]), float(hi[0])]


def _series(steps: list[int], values: list[float]) -> list[list[float]]:
    # [int(s), round(float(v), 6)] a pair, by C-level maps: a 15,625-step run's ten series in ~0.03 s, not 0.3
    rounded = map(round, np.asarray(values, dtype=np.float64).tolist(), itertools.repeat(6))
    return list(map(list, zip(map(int, steps), rounded)))


def _stay_above(steps: list[int], values: np.ndarray, threshold: float, width: int = 3) -> int | None:
    """First step from which the moving mean (window `width`) stays >= threshold to the end."""
    if len(values) == 0:
        return None
    from ..stats import moving_sum

    h = width // 2
    smooth = moving_sum(values, h) / moving_sum(np.ones(len(values)), h)  # windows truncated at the ends
    above = smooth >= threshold
    if not above[-1]:
        return None
    i = len(above) - 1
    while i > 0 and above[i - 1]:
        i -= 1
    return int(steps[i])


def _mk(y: np.ndarray) -> tuple[float, float]:
    """(S, two-sided p) of the Mann-Kendall trend test (stats.mann_kendall) of one series."""
    from ..stats import mann_kendall

    s, p = mann_kendall(np.asarray(y, dtype=float)[None, :])
    return float(s[0]), float(p[0])


def _one_sided(s: float, p_two: float, direction: int) -> float:
    return p_two / 2 if s * direction > 0 else 1 - p_two / 2


def _bh(candidates: list[dict[str, Any]]) -> None:
    from ..stats import benjamini_hochberg

    p = np.array([c["statistics"].get("p_value") if c["statistics"].get("p_value") is not None else np.nan
                  for c in candidates], dtype=float)
    q = benjamini_hochberg(p)
    m = int(np.isfinite(p).sum())
    for c, qq in zip(candidates, q):
        if np.isfinite(qq):
            c["statistics"]["q_value"] = float(qq)
            c["statistics"]["tests"] = m


def _candidate(check: str, severity: str | None, title: str, explanation: str, score: float, statistics: dict,
               onset_step: int | None, **extra: Any) -> dict[str, Any]:
    return {"check": check, "severity": severity, "title": title, "explanation": explanation, "score": score,
            "statistics": statistics, "onset_step": onset_step, **extra}


# ---------------------------------------------------------------------------------------------- rollout checks
def _zero_variance(con: duckdb.DuckDBPyConnection, steps: list[int], early: list[int], late: list[int],
                   cached: bool = False) -> list[dict[str, Any]]:
    from ..stats import binom, t as student_t

    q = reward_quantiles(con, (0.05, 0.95)) if cached else _reward_quantiles(con, (0.05, 0.95))
    if q is None:
        return []
    q05, q95 = q[0.05], q[0.95]
    tol = 1e-9 * max(1.0, abs(q05), abs(q95))
    rolled = zero_steps(con, q05, q95, tol) if cached else None
    if rolled is not None:  # per step from the per-part rollups (`training_stats.zero_steps`)
        per_step = [dict(zip(("step", "groups", "zv", "top", "bottom"), r)) for r in rolled[0]]
        zero_groups = (f"SELECT (step, group_id) FROM ts_groups WHERE rf >= 2 AND hi - lo <= {tol} "
                       f"AND step >= {late[0]}")
    elif cached:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE th_groups AS
            SELECT step, group_id, rf AS n, lo, hi, mean, sd, has_adv, hi - lo <= {tol} AS zero, s1, s2
            FROM ts_groups WHERE rf >= 2""")
    else:
        con.execute(f"""
        CREATE OR REPLACE TEMP TABLE th_groups AS
        SELECT step, group_id, count(*) AS n, min(reward) AS lo, max(reward) AS hi, avg(reward) AS mean,
               coalesce(stddev_samp(reward), 0) AS sd, max(hi_adv) AS has_adv,
               max(reward) - min(reward) <= {tol} AS zero
        FROM (SELECT step, group_id, reward, advantage IS NOT NULL AS hi_adv FROM rollouts
              WHERE group_id IS NOT NULL AND isfinite(reward))
        GROUP BY step, group_id HAVING count(*) >= 2""")
    if rolled is None:
        per_step = _rows(con, f"""
            SELECT step, count(*) AS groups, count(*) FILTER (WHERE zero) AS zv,
                   count(*) FILTER (WHERE zero AND lo >= {q95} - {tol}) AS top,
                   count(*) FILTER (WHERE zero AND lo <= {q05} + {tol} AND NOT lo >= {q95} - {tol}) AS bottom
            FROM th_groups GROUP BY step ORDER BY step""")
        zero_groups = f"SELECT (step, group_id) FROM th_groups WHERE zero AND step >= {late[0]}"
    if not per_step:
        return []
    st = [r["step"] for r in per_step]
    groups = np.array([r["groups"] for r in per_step], dtype=float)
    zv = np.array([r["zv"] for r in per_step], dtype=float)
    top = np.array([r["top"] for r in per_step], dtype=float)
    bottom = np.array([r["bottom"] for r in per_step], dtype=float)
    late_mask = np.isin(st, late)
    n_late, k_late = groups[late_mask].sum(), zv[late_mask].sum()
    out: list[dict[str, Any]] = []
    if n_late > 0:
        share = k_late / n_late
        top_share, bottom_share = top[late_mask].sum() / n_late, bottom[late_mask].sum() / n_late
        p = float(binom.sf(k_late - 1, n_late, ZV_MEDIUM))
        direction = "all_correct" if top_share >= bottom_share and top_share >= share - top_share - bottom_share \
            else "all_wrong" if bottom_share >= share - top_share - bottom_share else "other"
        severity = "high" if share >= ZV_HIGH else "medium" if share >= ZV_MEDIUM else None
        per = zv / np.maximum(groups, 1)
        onset = _stay_above(st, per, ZV_MEDIUM)
        what = {"all_correct": "every rollout got the top reward (all correct)",
                "all_wrong": "every rollout got the bottom reward (all wrong)",
                "other": "every rollout got the same middling reward"}[direction]
        out.append(_candidate(
            "zero_variance", severity,
            f"{share:.0%} of prompt groups carry no learning signal in the last third of the run "
            f"(mostly {direction.replace('_', '-')})",
            f"In steps {late[0]}-{late[-1]}, {int(k_late)} of {int(n_late)} prompt groups had the same reward for "
            f"every rollout ({top_share:.0%} at the top, {bottom_share:.0%} at the bottom of the reward range), so "
            f"their GRPO advantages are zero and they contribute no gradient: {what}. The run spends its "
            "generation budget on prompts it cannot learn from.",
            share, {"estimate": share, "ci": _wilson(k_late, n_late), "null": ZV_MEDIUM, "p_value": p,
                    "window": [int(late[0]), int(late[-1])], "groups": int(n_late), "zero_groups": int(k_late),
                    "test": "one-sided binomial, share > 0.5 over the groups of the last third",
                    "all_correct_share": top_share, "all_wrong_share": bottom_share,
                    "early_share": float(zv[~late_mask].sum() / max(groups[~late_mask].sum(), 1))},
            onset, direction=direction, steps=_series(st, per),
            evidence_sql=(f"(step, group_id) IN ({zero_groups})", "zero-variance group: same reward for every rollout")))
    # advantage ESS over the rollouts of groups that vary
    ess = [dict(zip(("step", "s1", "s2", "n"), r)) for r in rolled[1]] if rolled is not None else _rows(con, """
        SELECT step, sum(s1) AS s1, sum(s2) AS s2, sum(n) AS n FROM th_groups WHERE NOT zero
        GROUP BY step ORDER BY step""" if cached else """
        SELECT r.step, sum(abs(a)) AS s1, sum(a * a) AS s2, count(*) AS n FROM (
            SELECT r.step, coalesce(r.advantage, (r.reward - g.mean) / (g.sd + 1e-4)) AS a
            FROM rollouts r JOIN th_groups g USING (step, group_id)
            WHERE NOT g.zero AND isfinite(r.reward)) r
        GROUP BY r.step ORDER BY r.step""")
    if ess:
        es = [r["step"] for r in ess]
        frac = np.array([(r["s1"] ** 2) / (r["n"] * r["s2"]) if r["s2"] and r["n"] else np.nan for r in ess])
        vals = frac[np.isin(es, late) & np.isfinite(frac)]
        if len(vals) >= 3:
            mean, sd = float(vals.mean()), float(vals.std(ddof=1))
            se = sd / math.sqrt(len(vals)) if sd > 0 else 1e-12
            tstat = (mean - ESS_MIN) / se
            p = float(student_t.cdf(tstat, len(vals) - 1))
            half = float(student_t.ppf(0.975, len(vals) - 1) * se)
            out.append(_candidate(
                "advantage_ess", "medium" if mean < ESS_MIN else None,
                f"advantages are dominated by a few rollouts (ESS {mean:.0%} of the rollouts in varying groups)",
                f"In steps {late[0]}-{late[-1]}, the effective sample size of the advantages within prompt groups "
                f"that vary is {mean:.0%} of their rollouts: a few outlier rewards carry most of the gradient.",
                1 - mean, {"estimate": mean, "ci": [mean - half, mean + half], "null": ESS_MIN, "p_value": p,
                           "test": "one-sided t-test over the last third's per-step ESS/N, mean < 0.35"},
                None, steps=_series(es, frac)))
    return out


def _length(con: duckdb.DuckDBPyConnection, steps: list[int], early: list[int], late: list[int], unit: LengthUnit,
            cached: bool = False) -> list[dict[str, Any]]:
    from ..stats import norm, onset_index

    x, x2 = ("tlen", "tlen2") if unit.unit == "tokens" else ("clen", "clen2")
    per_step = _rows(con, f"""SELECT step, sum({x})::DOUBLE AS x, sum({x2}) AS q, sum(n) AS n
                              FROM ts_lcells GROUP BY step ORDER BY step""" if cached else """
                          SELECT step, sum(th_len)::DOUBLE AS x, sum(th_len ^ 2) AS q, count(*) AS n
                          FROM th_rollouts GROUP BY step ORDER BY step""")
    # per window and condition, the sums over prompt groups (clusters) that the cluster-robust SE of a ratio of
    # sums needs: aggregated inside DuckDB, so the run's groups never come to Python
    xx, xn = ("t_xx", "t_xn") if unit.unit == "tokens" else ("c_xx", "c_xn")
    # the same sums from the per-step rollups of kind 7 when no cluster spans steps or parts
    cells = _rows(con, f"""
        SELECT CASE WHEN step <= {early[-1]} THEN 0 ELSE 1 END AS w, condition, sum(c_g)::DOUBLE AS g,
               sum({x})::DOUBLE AS sx, sum(n)::DOUBLE AS sn, sum({xx}) AS sxx, sum({xn}) AS sxn, sum(c_nn) AS snn
        FROM ts_lcells WHERE step <= {early[-1]} OR step >= {late[0]} GROUP BY ALL""") \
        if cached and clusters_local(con) else _rows(con, f"""
        SELECT w, condition, count(*)::DOUBLE AS g, sum(x) AS sx, sum(n) AS sn, sum(x * x) AS sxx,
               sum(x * n) AS sxn, sum(n * n) AS snn
        FROM (SELECT CASE WHEN step <= {early[-1]} THEN 0 ELSE 1 END AS w, condition,
                     {f"sum({x})::DOUBLE AS x, sum(n)::DOUBLE AS n" if cached else
                      "sum(th_len)::DOUBLE AS x, count(*)::DOUBLE AS n"}
              FROM {"ts_cells" if cached else "th_rollouts"} WHERE step <= {early[-1]} OR step >= {late[0]}
              GROUP BY w, condition, {"gkey" if cached else "coalesce(group_id, rollout_id)"})
        GROUP BY w, condition""")
    if not per_step or not cells:
        return []
    ccond = [c["condition"] for c in cells]

    def ratio(keep: Callable[[Any], bool]) -> tuple[float, float] | None:
        parts = []
        for w in (0, 1):
            t = {k: sum(c[k] for c in cells if c["w"] == w and keep(c["condition"]))
                 for k in ("g", "sx", "sn", "sxx", "sxn", "snn")}
            if t["sn"] == 0:
                return None
            m = t["sx"] / t["sn"]
            # ratio_of_sums_se from sums: sum_g (x_g - m n_g)^2 = Sxx - 2 m Sxn + m^2 Snn
            resid = max(0.0, t["sxx"] - 2 * m * t["sxn"] + m * m * t["snn"])
            se = math.sqrt(t["g"] / (t["g"] - 1) * resid) / t["sn"] if t["g"] >= 2 else float("nan")
            parts.append((m, se))
        (m0, se0), (m1, se1) = parts
        if m0 <= 0 or m1 <= 0:
            return None
        se_log = math.sqrt((se0 / m0) ** 2 + (se1 / m1) ** 2) if np.isfinite(se0) and np.isfinite(se1) else np.nan
        return m1 / m0, se_log

    overall = ratio(lambda cond: True)
    if overall is None or not np.isfinite(overall[1]):
        return []
    r, se = overall
    z = math.log(r) / se if se > 0 else (np.inf if r > 1 else -np.inf)
    p = float(norm.sf(z))
    by_condition = {}
    for cond in sorted(set(ccond)):
        rc = ratio(lambda c, _c=cond: c == _c)
        if rc is not None and np.isfinite(rc[1]):
            by_condition[cond] = {"ratio": rc[0], "ci": [rc[0] * math.exp(-1.96 * rc[1]),
                                                         rc[0] * math.exp(1.96 * rc[1])]}
    st = [r_["step"] for r_ in per_step]
    x = np.array([r_["x"] for r_ in per_step])
    qq = np.array([r_["q"] for r_ in per_step])
    n = np.array([r_["n"] for r_ in per_step], dtype=float)
    base = np.isin(st, early)
    idx = onset_index(x, qq, n, base, +1, half_width=1, z=3.09, design_effect=2.0, presence=False)
    means = x / np.maximum(n, 1)
    severity = "high" if r >= LEN_HIGH else "medium" if r >= LEN_MEDIUM else None
    top = max(by_condition.items(), key=lambda kv: kv[1]["ratio"], default=(None, None))[0]
    return [_candidate(
        "length_growth", severity, f"completions grew {r:.1f}x longer over the run (in {unit.unit})",
        f"Mean completion length went from {means[base].mean():.0f} {unit.unit} (steps {early[0]}-{early[-1]}) to "
        f"{means[np.isin(st, late)].mean():.0f} (steps {late[0]}-{late[-1]}), x{r:.2f}"
        + (f"; most in condition {top!r} (x{by_condition[top]['ratio']:.2f})" if top else "") + ". Length "
        "growth costs generation time, and under a length limit it ends in truncation.",
        r, {"estimate": r, "ci": [r * math.exp(-1.96 * se), r * math.exp(1.96 * se)], "null": 1.0, "p_value": p,
            "test": "one-sided z-test of the log ratio of mean lengths (last third / first third), prompt-group "
                    "cluster-robust standard error"},
        int(st[idx]) if idx is not None else None, by_condition=by_condition, steps=_series(st, means),
        unit=unit.unit, length_source=unit.source,
        evidence_sql=(f"step >= {late[0]} AND th_len >= (SELECT approx_quantile(th_len, 0.9) FROM th_rollouts "
                      f"WHERE step >= {late[0]})", "one of the longest late completions"))]


TRUNCATED_SQL = """(
    coalesce(th_len >= th_max, false) OR
    (reasoning IS NOT NULL AND coalesce(answer, '') = '' AND completion NOT LIKE '%</think>%')
    OR coalesce(lower(json_extract_string(CASE WHEN json_valid(metadata) THEN metadata END, '$.finish_reason')), '') = 'length'
    OR coalesce(lower(json_extract_string(CASE WHEN json_valid(metadata) THEN metadata END, '$.stop_reason')), '') = 'length'
    OR coalesce(json_extract_string(CASE WHEN json_valid(metadata) THEN metadata END, '$.is_truncated'), '') = 'true'
    OR coalesce(json_extract_string(CASE WHEN json_valid(metadata) THEN metadata END, '$.truncated'), '') = 'true')"""


def _truncation(con: duckdb.DuckDBPyConnection, steps: list[int], early: list[int], late: list[int],
                unit: LengthUnit, cached: bool = False) -> tuple[list[dict[str, Any]], str | None]:
    from ..stats import norm, onset_index

    mk, tr = ("mk_t", "tr_t") if unit.unit == "tokens" else ("mk_c", "tr_c")
    markers = con.execute(f"SELECT coalesce(sum({mk}), 0) FROM ts_lcells") if cached else con.execute("""SELECT count(*) FILTER (WHERE th_max IS NOT NULL OR reasoning IS NOT NULL OR completion LIKE '%</think>%'
                                 OR json_extract_string(CASE WHEN json_valid(metadata) THEN metadata END, '$.finish_reason') IS NOT NULL
                                 OR json_extract_string(CASE WHEN json_valid(metadata) THEN metadata END, '$.stop_reason') IS NOT NULL
                                 OR json_extract_string(CASE WHEN json_valid(metadata) THEN metadata END, '$.is_truncated') IS NOT NULL
                                 OR json_extract_string(CASE WHEN json_valid(metadata) THEN metadata END, '$.truncated') IS NOT NULL) FROM th_rollouts""")
    if not markers.fetchone()[0]:
        return [], ("truncation: the rollouts carry no end marker (think tags) and no finish reason, so truncation "
                    "is unknown from them")
    per_step = _rows(con, f"""SELECT step, sum({tr}) AS t, sum(n) AS n FROM ts_lcells GROUP BY step ORDER BY step"""
                     if cached else f"""SELECT step, count(*) FILTER (WHERE {TRUNCATED_SQL}) AS t, count(*) AS n
                              FROM th_rollouts GROUP BY step ORDER BY step""")
    st = [r["step"] for r in per_step]
    t = np.array([r["t"] for r in per_step], dtype=float)
    n = np.array([r["n"] for r in per_step], dtype=float)
    e, lt = np.isin(st, early), np.isin(st, late)
    t0, n0, t1, n1 = t[e].sum(), n[e].sum(), t[lt].sum(), n[lt].sum()
    if n0 == 0 or n1 == 0:
        return [], None
    p0, p1 = t0 / n0, t1 / n1
    pool = (t0 + t1) / (n0 + n1)
    se = math.sqrt(pool * (1 - pool) * (1 / n0 + 1 / n1)) if 0 < pool < 1 else 0.0
    p = float(norm.sf((p1 - p0) / se)) if se > 0 else (0.0 if p1 > p0 else 1.0)
    idx = onset_index(t, t, n, e, +1, half_width=1, design_effect=2.0)
    severity = "high" if p1 >= TRUNC_HIGH else "medium" if p1 >= TRUNC_MEDIUM else None
    if p1 <= p0:
        severity = None
    return [_candidate(
        "truncation", severity, f"{p1:.1%} of completions are truncated in the last third of the run "
        f"(from {p0:.1%})",
        f"In steps {late[0]}-{late[-1]}, {int(t1)} of {int(n1)} completions stopped before their end marker (or "
        f"were marked as cut at the length limit"
        + (f", or reached it: {unit.max_tokens:g} tokens" if unit.max_tokens else
           ", or reached the per-rollout token limit" if unit.has_max else "") + f"), against {p0:.1%} in steps {early[0]}-{early[-1]}. A truncated "
        "completion has no answer to grade, and its reward teaches the policy about an unfinished text.",
        p1, {"estimate": p1, "ci": _wilson(t1, n1), "early": p0, "early_ci": _wilson(t0, n0), "p_value": p,
             "test": "one-sided two-proportion z-test, last third > first third"},
        int(st[idx]) if idx is not None else None, source="rollouts", steps=_series(st, t / np.maximum(n, 1)),
        unit=unit.unit, max_tokens=unit.max_tokens,
        evidence_sql=(f"step >= {late[0]} AND {TRUNCATED_SQL}", "truncated completion"))], None


def _divergence(con: duckdb.DuckDBPyConnection, max_step: int | None, cached: bool = False
                ) -> list[dict[str, Any]]:
    from ..stats import t as student_t

    cap = f" AND step <= {int(max_step)}" if max_step is not None else ""
    ev = _rows(con, "SELECT step, m, n FROM ts_eval WHERE total ORDER BY step" if cached else f"""
                    SELECT step, avg(reward) AS m, count(*) AS n FROM all_rollouts
                    WHERE split = 'eval' AND isfinite(reward){cap} GROUP BY step ORDER BY step""")
    if len(ev) < 4:
        return []
    tr = _rows(con, "SELECT step, m FROM ts_signals WHERE total ORDER BY step" if cached else
               "SELECT step, avg(reward) AS m FROM rollouts WHERE isfinite(reward) GROUP BY step ORDER BY step")
    if len(tr) < 4:
        return []
    s_tr, p_tr = _mk(np.array([r["m"] for r in tr]))
    s_ev, p_ev = _mk(np.array([r["m"] for r in ev]))
    p_up, p_down = _one_sided(s_tr, p_tr, +1), _one_sided(s_ev, p_ev, -1)
    p = max(p_up, p_down)
    em = np.array([r["m"] for r in ev])
    k = max(2, len(em) // 3)
    a, b = em[:k], em[-k:]
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else 1.0
    half = float(student_t.ppf(0.975, dof) * se) if se > 0 else 0.0
    tm = np.array([r["m"] for r in tr])
    kt = max(2, len(tm) // 3)
    severity = "high" if s_tr > 0 and s_ev < 0 and diff < 0 else None
    ev_steps = [r["step"] for r in ev]
    onset = None
    if severity:
        peak = int(np.argmax(em[: len(em) - 1])) if len(em) > 1 else 0
        onset = int(ev_steps[peak])
    return [_candidate(
        "reward_eval_divergence", severity,
        f"training reward rose while the eval reward fell ({diff:+.3g} on eval)",
        f"The training reward rose from {tm[:kt].mean():.3g} to {tm[-kt:].mean():.3g} while the eval-split "
        f"reward fell from {a.mean():.3g} to {b.mean():.3g} (eval steps {ev_steps[0]}-{ev_steps[-1]}): the policy "
        "is learning something the training reward pays for and held-out evaluation does not, the signature of "
        "reward hacking.",
        abs(diff), {"estimate": diff, "ci": [diff - half, diff + half], "p_value": p,
                    "p_train_rise": p_up, "p_eval_fall": p_down,
                    "test": "Mann-Kendall on per-step means, intersection-union (max of the one-sided p-values); "
                            "interval: Welch, eval last third - first third"},
        onset, steps=_series(ev_steps, em), train_steps=_series([r["step"] for r in tr], tm),
        evidence_sql=None)]


def _plateau(con: duckdb.DuckDBPyConnection, steps: list[int], cached: bool = False) -> list[dict[str, Any]]:
    """One plateau test per reward signal: the total and each component of `rewards` (see the module doc)."""
    if len(steps) < PLATEAU_MIN_STEPS:
        return []
    if cached:
        total = _columns(con, "SELECT step, m, sd, n FROM ts_signals WHERE total ORDER BY step")
        parts = _columns(con, "SELECT signal, step, m, sd, n FROM ts_signals WHERE NOT total ORDER BY signal, step")
    else:
        total, parts = _plateau_rows(con)
    series: dict[str, dict[str, np.ndarray]] = {"reward": total}
    signal = parts.pop("signal")
    for name in dict.fromkeys(signal.tolist()):  # in order: the rows are sorted by signal
        at = np.flatnonzero(signal == name)
        series[f"rewards.{name}"] = {k: v[at[0]:at[-1] + 1] for k, v in parts.items()}
    return _plateau_series(series, total)


def _columns(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, np.ndarray]:
    """The query's columns as numpy arrays (per-step rows: a long run has tens of thousands, not dicts each);
    a numeric column with NULLs as floats with NaN there."""
    out = {}
    for k, v in con.execute(sql).fetchnumpy().items():
        if np.ma.isMaskedArray(v):
            v = np.ma.filled(v.astype(np.float64), np.nan) if v.dtype.kind in "biuf" else np.ma.filled(v, None)
        out[k] = np.asarray(v)
    return out


def _plateau_rows(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    total = _columns(con, """SELECT step, avg(reward) AS m, coalesce(stddev_samp(reward), 0) AS sd, count(*) AS n
                             FROM rollouts WHERE isfinite(reward) GROUP BY step ORDER BY step""")
    parts = _columns(con, """SELECT k AS signal, step, avg(v) AS m, coalesce(stddev_samp(v), 0) AS sd,
                                    count(*) AS n
                             FROM (SELECT step, unnest(map_keys(rewards)) AS k, unnest(map_values(rewards)) AS v
                                   FROM rollouts) WHERE isfinite(v) GROUP BY k, step ORDER BY k, step""")
    return total, parts


def _plateau_series(series: dict[str, dict[str, np.ndarray]], total: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One plateau candidate per signal's per-step series (a single component equal to the total once)."""
    if len(series) == 2 and all(len(v["step"]) == len(total["step"]) for v in series.values()):
        # a single component equal to the total is one signal, not two tests
        only = next(k for k in series if k != "reward")
        a, b = np.asarray(total["m"], np.float64), np.asarray(series[only]["m"], np.float64)
        if bool(np.all(np.abs(a - b) <= 1e-9 * np.maximum(1.0, np.abs(a)))):
            del series[only]
    out = []
    for signal, rows in series.items():
        c = _plateau_one(signal, rows)
        if c is not None:
            out.append(c)
    return out


def _plateau_one(signal: str, rows: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Two one-sided tests (TOST) that the change of the per-step mean over the run lies within +-margin."""
    from ..stats import t as student_t

    if len(rows["step"]) < PLATEAU_MIN_STEPS:
        return None
    x, y, sd, n = (np.asarray(rows[k], dtype=float) for k in ("step", "m", "sd", "n"))
    within = float(np.sqrt(np.sum((n - 1) * sd**2) / max(np.sum(n - 1), 1)))
    if within <= 0:
        return None  # a constant signal: reward_health reports it
    margin = PLATEAU_MARGIN * within
    xc = x - x.mean()
    sxx = float(np.sum(xc**2))
    slope = float(np.sum(xc * (y - y.mean())) / sxx)
    resid = y - y.mean() - slope * xc
    dof = len(y) - 2
    se_slope = float(np.sqrt(np.sum(resid**2) / dof / sxx))
    span = float(x[-1] - x[0])
    change, se = slope * span, se_slope * span
    if se > 0:
        p = float(max(student_t.sf((change + margin) / se, dof), student_t.sf((margin - change) / se, dof)))
    else:
        p = 0.0 if abs(change) < margin else 1.0
    half = float(student_t.ppf(0.95, dof) * se)
    name = "the total reward" if signal == "reward" else f"reward component {signal.split('.', 1)[1]!r}"
    k = max(1, len(y) // 3)
    return _candidate(
        "plateau", "low" if abs(change) < margin else None,
        f"{name} did not improve over the run",
        f"The per-step mean of {name} changed by {change:+.3g} over {len(y)} steps (from {y[:k].mean():.3g} to "
        f"{y[-k:].mean():.3g}), within +-{margin:.3g} ({PLATEAU_MARGIN} of its within-step standard deviation "
        f"{within:.3g}): this signal is not being learned, or started at its ceiling.",
        1 - p, {"estimate": change, "ci": [change - half, change + half], "margin": margin, "p_value": p,
                "test": f"TOST equivalence test of the linear change over the run (OLS on per-step means) within "
                        f"+-{PLATEAU_MARGIN} within-step SD; 90% interval"},
        None, signal=signal, steps=_series([int(v) for v in x], y))


# ---------------------------------------------------------------------------------------------- scalar logs
def _scalar_checks(source: str, paths: list[str] | None, max_step: int | None, notes: list[str],
                   rollout_truncation: bool) -> list[dict[str, Any]]:
    from ..health.scalars import find_scalar_logs, read_scalar_logs

    files = [Path(p) for p in paths] if paths else (find_scalar_logs(source) if source and source != "live"
                                                     else [])
    if not files:
        notes.append("no trainer scalar logs found beside the rollouts (trainer_state.json, metric JSONL, "
                     "TensorBoard events): entropy, KL, clipping and gradient checks did not run")
        return []
    log = read_scalar_logs(files)
    if max_step is not None:
        log.rows = [r for r in log.rows if r[0] <= max_step]
    found = log.found()
    origin = "named for this run" if paths else "found beside the rollouts"
    notes.append(f"scalar logs {origin}: {', '.join(log.files) or 'none readable'}; keys found: "
                 + (", ".join(f"{m}={k}" for m, k in found.items()) or "none of the known keys")
                 + f" (of {len(log.keys)} keys logged)")
    notes.extend(f"scalar log skipped: {reason}" for reason in log.skipped)
    base = {"scalar_files": log.files, "scalar_keys": found}
    out: list[dict[str, Any]] = []

    def series(metric: str) -> tuple[str, np.ndarray, np.ndarray] | None:
        key = found.get(metric)
        if key is None:
            return None
        st, vals = log.series(key)
        if len(st) < 4:
            return None
        return key, np.array(st), np.array(vals, dtype=float)

    def thirds(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = max(1, len(v) // 3)
        return v[:k], v[-k:]

    if (s := series("entropy")) is not None:
        key, st, v = s
        a, b = thirds(v[np.isfinite(v)])
        if len(a) and a.mean() > 0:
            ratio = float(b.mean() / a.mean())
            mk_s, mk_p = _mk(v)
            out.append(_candidate(
                "entropy_collapse", "high" if ratio < 0.1 else "medium" if ratio < 0.3 else None,
                f"policy entropy collapsed to {ratio:.0%} of its early value ({key})",
                f"`{key}` fell from {a.mean():.3g} to {b.mean():.3g}: the policy has stopped exploring, so groups "
                "become identical and learning stalls.", 1 - ratio,
                {"estimate": ratio, "p_value": _one_sided(mk_s, mk_p, -1), "key": key,
                 "test": "Mann-Kendall (falling); effect: last third / first third < 0.3"},
                _stay_below(st, v, 0.3 * a.mean()), steps=_series(list(st), v), **base))
    if (s := series("kl")) is not None:
        key, st, v = s
        a, b = thirds(v[np.isfinite(v)])
        mk_s, mk_p = _mk(v)
        grew = b.mean() > 0.1 and b.mean() > 10 * max(a.mean(), 1e-12)
        out.append(_candidate(
            "kl_drift", "medium" if grew else None, f"KL to the reference policy keeps growing ({key})",
            f"`{key}` rose from {a.mean():.3g} to {b.mean():.3g}: the policy is drifting far from its reference.",
            float(b.mean()), {"estimate": float(b.mean()), "early": float(a.mean()), "key": key,
                              "p_value": _one_sided(mk_s, mk_p, +1), "test": "Mann-Kendall (rising)"},
            None, steps=_series(list(st), v), **base))
    if (s := series("clip_fraction")) is not None:
        key, st, v = s
        from ..stats import t as student_t

        _, b = thirds(v[np.isfinite(v)])
        if len(b) >= 2:
            mean, sd = float(b.mean()), float(b.std(ddof=1))
            se = sd / math.sqrt(len(b)) if sd > 0 else 1e-12
            p = float(student_t.sf((mean - 0.2) / se, len(b) - 1))
            out.append(_candidate(
                "clip_saturation", "medium" if mean > 0.2 else None,
                f"{mean:.0%} of tokens are clipped ({key})",
                f"`{key}` averaged {mean:.3g} in the last third: most updates hit the clip range, so the step size "
                "is set by the clip rather than the gradient.", mean,
                {"estimate": mean, "null": 0.2, "p_value": p, "key": key,
                 "test": "one-sided t-test over the last third, mean > 0.2"}, None,
                steps=_series(list(st), v), **base))
    if (s := series("grad_norm")) is not None:
        key, st, v = s
        bad = ~np.isfinite(v)
        med = float(np.median(v[~bad])) if (~bad).any() else float("nan")
        spikes = (~bad) & (v > 10 * med) if med > 0 else np.zeros_like(bad)
        if bad.any() or spikes.any():
            first = int(st[np.flatnonzero(bad | spikes)[0]])
            out.append(_candidate(
                "grad_norm", "high" if bad.any() else "medium",
                f"gradient norm {'is not finite' if bad.any() else 'spikes'} at {int(bad.sum() + spikes.sum())} "
                f"logged step(s) ({key})",
                f"`{key}` has {int(bad.sum())} non-finite value(s) and {int(spikes.sum())} spike(s) above 10x its "
                f"median {med:.3g}, first at step {first}.", float(bad.sum() + spikes.sum()),
                {"median": med, "non_finite": int(bad.sum()), "spikes": int(spikes.sum()), "key": key,
                 "p_value": None, "test": "rule: non-finite, or > 10x the median"}, first,
                steps=_series(list(st), v), **base))
    if not rollout_truncation and (s := series("truncation")) is not None:
        key, st, v = s
        a, b = thirds(v[np.isfinite(v)])
        mean = float(b.mean())
        out.append(_candidate(
            "truncation", "high" if mean >= TRUNC_HIGH and mean > a.mean() else
            "medium" if mean >= TRUNC_MEDIUM and mean > a.mean() else None,
            f"{mean:.1%} of completions are truncated in the last third ({key})",
            f"`{key}` rose from {a.mean():.3g} to {mean:.3g}.", mean,
            {"estimate": mean, "early": float(a.mean()), "key": key, "p_value": None,
             "test": "rule on the trainer's logged rate"}, None, source="scalar_log",
            steps=_series(list(st), v), **base))
    return out


def _stay_below(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    below = values <= threshold
    if not len(below) or not below[-1]:
        return None
    i = len(below) - 1
    while i > 0 and below[i - 1]:
        i -= 1
    return int(steps[i])


def metrics_option(paths: dict[str, list[str]]) -> dict[str, Any]:
    """AuditConfig.options entry that points the detector at scalar logs per run: {run: [paths]}."""
    return {"training_health": {"metrics": {k: [str(p) for p in v] for k, v in paths.items()}}}


__all__ = ["TrainingHealthDetector", "metrics_option", "TRUNCATED_SQL"]
