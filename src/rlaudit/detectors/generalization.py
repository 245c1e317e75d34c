"""The `generalization` detector: did a behaviour learnt under one condition spread to conditions that never
rewarded it?

For every medium or high rising behaviour found by `emerging`:

1. *Per condition*: prevalence per step (rollouts at risk, as in discovery) and the late-vs-early prevalence
   ratio with a cluster-robust CI (stratified by task within the condition, clustered by prompt), tested per
   condition; Benjamini-Hochberg over all (behaviour, condition) tests. A condition "rose" when q <= alpha and
   its CI lies above 1. The early (baseline) window is discovery's early window (a share of the steps), ended at
   the behaviour's onset when that comes first and leaves at least `min_steps` steps (`baseline_steps`): with
   many steps a fixed share of the run reaches past the onset, and a baseline holding part of the rise
   understated the spread (the goblin organism at 102,400 rollouts, 200 steps: 40 early steps against an onset
   at 16, so the spread came out low where the default size finds it medium). The onset is estimated once, on
   the pooled run by discovery, before any condition is tested; it selects where the baseline ends, not which
   condition is tested, and a condition with no rise has the same expected prevalence on either side of it.
2. *Source condition*, in order of evidence strength:
   - a reward signal that applies only in one condition (NaN elsewhere) and correlates positively with the
     behaviour there, within prompt groups (the comparison a GRPO trainer makes; p < 0.01): the behaviour was
     paid for in that condition (`source_reason` "reward"; attribution proper is the `attribution` detector's);
   - otherwise, among conditions that rose, the one whose share of occurrences most exceeds its share of traffic
     (`source_reason` "lift"), provided it exceeds it by at least 1.5x: a behaviour learnt in one condition has
     been there longer and more often (the goblin signature: 2.5% of traffic, 66.7% of mentions), whereas one
     that rose everywhere alike has no source. (Onsets alone would mislead: a small condition has less power,
     so its onset is detected later even when the behaviour started there.)
3. *Targets*: every other condition that rose (when the source was chosen by lift, not those whose onset came
   before the source's). When none rose on its own but all other conditions pooled (stratified by condition and
   task) did, they are reported together as one target, `target_condition` "(all other conditions)" with the
   list in `target_conditions`: a faint spread over many small conditions is still a spread. For each target, the two per-step prevalence curves are smoothed,
   z-scored and cross-correlated over lags of +-max(1, steps/10) steps: `correlation` is the best Pearson r and
   `lag_steps` its lag (positive: the target follows the source). Overlapping rescaled curves with a small lag
   are the signature of a behaviour learnt once and expressed everywhere.

Severity: **high** when the behaviour is high and it spread substantially (target ratio CI lower bound >= 2 and
prevalence up by >= 0.10) to a condition where no applicable reward signal correlates with it (it never paid
for it there, `paid_in_target` false); **medium** when the target's lower bound >= 1.5 and its prevalence rose by
>= 0.05, or its lower bound >= 2 and its prevalence rose by >= 0.02 (the emerging detector's medium rule);
otherwise **low**.

Cost of a warm audit: an n-gram's per-condition series and its window cluster sums come from per-part sums
cached per run (`derived.gensteps`, grown by the new part), only the clusters of recurring prompts
(`derived.repeats`) being grouped from their cells: O(new part) plus O(steps), where summing every cell in scope
grew with the run (~0.3 CPU s a behaviour at 10M rollouts). Style features, and scopes whose parts share a step,
sum the cells as before.

`figures(finding)` returns plotly figures (raw prevalence per condition, and the rescaled overlay) built from a
finding's fields alone, for the report.
"""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from ..findings import Evidence, Finding
from ..stats import (benjamini_hochberg, lagged_correlation, moving_sum, norm, onset_index, stratified_ratio,
                     t as student_t, zscore)
from ..derived import gensteps, repeats
from . import DetectContext, Detector, register
from .emerging import Params, Scope, scope_for

REWARD_P = 0.01
MIN_LIFT = 1.5
OTHERS = "(all other conditions)"  # mention share / traffic share a source needs when no reward signal singles it out


@register
class GeneralizationDetector(Detector):
    name = "generalization"
    kinds = ("generalization",)
    description = "Behaviours that rose in one condition (persona, system prompt) and spread to others."
    requires = ("emerging",)
    part_stats = ("training_health",)  # which reward signals apply in one condition only (`_condition_signals`)
    eager = True  # the shared term-set scope is released after this detector, before attribution and the rest
    # its detect reads the term-set scope emerging left (a few terms' per-step counts) on one core: it runs beside
    # attribution (`detectors._beside`), which leaves a core idle for a stretch, instead of alone before it
    light = True

    def detect(self, ctx: DetectContext) -> list[Finding]:
        behaviours = [f for f in ctx.of_kind("emerging_behavior")
                      if f.severity in ("medium", "high") and f.get("direction") == "up"]
        if not behaviours:
            return []
        options = ctx.config.options.get(self.name, {})
        alpha = float(options.get("alpha", 0.05))
        params = Params.from_options(ctx.config.options.get("emerging", {}))
        scope = scope_for(ctx, params)
        if len(scope.conditions) < 2 or scope.n_steps < 4:
            return []
        ngrams = [k[1] for k in (_key(scope, f) for f in behaviours) if k is not None and k[0] == "ngram"]
        scope.focus_on(ngrams)
        if ngrams:  # the n-grams' per-condition, per-step sums: cached per part (`derived.gensteps`)
            scope.con.register("gen_steps", gensteps.step_sums(scope.cell_parts, scope.con, ngrams))
            if not scope.shared:  # the prompts whose clusters hold more than one cell (`_cluster_sums`)
                recurring = repeats.recurring(scope.cell_parts, scope.con)
                scope.con.register("gen_recurring", pa.table({"prompt_key": pa.array(recurring, pa.uint64())}))
        signals = _condition_signals(ctx, scope)
        analyses = [a for a in (_analyse(scope, f, signals, alpha, params.min_steps) for f in behaviours)
                    if a is not None]
        if not analyses:
            return []
        q = benjamini_hochberg(np.concatenate([a["p"] for a in analyses]))
        found: list[Finding] = []
        offset = 0
        for a in analyses:
            a["q"] = q[offset:offset + len(a["p"])]
            offset += len(a["p"])
            found += _findings(ctx, scope, a, signals, alpha)
        return found


# ---------------------------------------------------------------------------------------------------------------

def _key(scope: Scope, f: Finding) -> tuple[str, str | int] | None:
    where, ftype = f["where"], f["feature_type"]
    if ftype == "ngram":
        tid = scope.term_id(where, f["term"])
        return None if tid is None else (ftype, tid)
    return ftype, f["term"].removeprefix("style:")


def _analyse(scope: Scope, f: Finding, signals: dict[str, str], alpha: float, min_steps: int
             ) -> dict[str, Any] | None:
    key = _key(scope, f)
    if key is None:
        return None
    where, (ftype, k) = f["where"], key
    value, risk = scope.value_sql(where, ftype, k), scope.at_risk_sql(ftype, k)
    cells = scope.cell_values(where, ftype, k)  # the cells at risk, with the behaviour's sums
    conds = scope.conditions
    t, nc = scope.n_steps, len(conds)
    x, q, n = _per_step(scope, where, ftype, k, cells)
    # the baseline: the early window, ended at the behaviour's onset (found by discovery on the pooled run) when
    # that comes earlier and leaves at least `min_steps` steps. With many steps the early window (a fixed share of
    # the run) can reach past the onset; a baseline that holds part of the rise understates the spread.
    w = scope.window
    base = _baseline_steps(scope, f, min_steps)
    sx, sxx, sxn, nw, snn, g = _cluster_sums(scope, where, ftype, k, cells, base)
    presence = not f.get("numeric", False)
    ratio, se = stratified_ratio(sx, sxx, sxn, nw, snn, g, presence=presence)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.log(ratio) / se
    p = np.where(np.isfinite(z), 2 * norm.sf(np.abs(z)), np.nan)
    early, late = np.arange(t) < base, np.arange(t) >= t - w
    with np.errstate(invalid="ignore", divide="ignore"):
        p0 = x[:, early].sum(1) / n[:, early].sum(1)
        p1 = x[:, late].sum(1) / n[:, late].sum(1)
    h = max(1, t // 40)
    onsets = [onset_index(x[i], q[i], n[i], early, 1, half_width=h, presence=presence) for i in range(nc)]
    a = {"baseline_steps": base, "finding": f, "where": where, "ftype": ftype, "key": k, "x": x, "n": n,
         "ratio": ratio, "se": se,
         "p": p, "p0": p0, "p1": p1, "onsets": onsets, "h": h, "value": value, "risk": risk}
    if not _choose_source(scope, a, signals, alpha):
        return None
    # all other conditions pooled (stratified by condition and task): more power for a faint spread
    others = np.arange(nc) != a["source"]
    pr, ps = stratified_ratio(sx[others].sum(0)[None], sxx[others].sum(0)[None], sxn[others].sum(0)[None],
                              nw[others].sum(0)[None], snn[others].sum(0)[None], g[others].sum(0)[None],
                              presence=presence)
    a["pooled"] = {"ratio": float(pr[0]), "se": float(ps[0]), "x": x[others].sum(0), "n": n[others].sum(0)}
    zp = math.log(pr[0]) / ps[0] if np.isfinite(pr[0]) and ps[0] > 0 else 0.0
    a["p"] = np.append(p, 2 * norm.sf(abs(zp)))
    return a


def _per_step(scope: Scope, where: str, ftype: str, k: str | int, cells: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, q, n) per condition and step index of one behaviour over the rollouts at risk. An n-gram's are read
    from its per-part sums (`gensteps`, registered by `detect` as `gen_steps`: O(steps), where summing the
    scope's cells cost O(run), ~0.11 CPU s a behaviour at 10M rollouts); a style feature's from the cells."""
    conds = scope.conditions
    cidx = {c: i for i, c in enumerate(conds)}
    x, q, n = (np.zeros((len(conds), scope.n_steps)) for _ in range(3))
    if ftype == "ngram":
        nc = scope.n_col(where)
        sql = f"""SELECT g.condition, k.si, sum(g.{nc}) AS n, sum(g.x) AS x, sum(g.x) AS q
                  FROM gen_steps g JOIN keys k USING (step, split) WHERE g.term_id = {int(k)} GROUP BY ALL"""
    else:
        sql = f"SELECT condition, si, sum(n) AS n, sum(x) AS x, sum(q) AS q FROM ({cells}) GROUP BY ALL"
    for c, si, nn, xx, qq in scope.con.execute(sql).fetchall():
        n[cidx[c], si], x[cidx[c], si], q[cidx[c], si] = nn, xx or 0, qq or 0
    return x, q, n


def _cluster_sums(scope: Scope, where: str, ftype: str, k: str | int, cells: str, base: int
                  ) -> tuple[np.ndarray, ...]:
    """Per condition, window (0: the baseline's `base` steps, 1: the late window) and stratum, the sums over
    prompt clusters that `stratified_ratio` takes: sum X, X^2, X*N, N, N^2 and the clusters, X (N) a cluster's
    rollouts holding the behaviour (at risk).

    A cluster is one cell unless its prompt recurs (`repeats.recurring`: at another step, in another split), so
    an n-gram's sums are its per-part cluster columns (`gensteps`, cached per part) over the windows' steps, and
    only the recurring prompts' cells are grouped by prompt, correcting their single-cell terms: O(steps) plus
    those cells, where grouping every window cell cost O(run) (~0.18 CPU s at 10M rollouts). A style feature,
    or a scope where parts share a step (a cell's rows are then summed over its parts), groups every cell."""
    conds, t, w = scope.conditions, scope.n_steps, scope.window
    cidx = {c: i for i, c in enumerate(conds)}
    s = max(scope.n_strata, 1)
    sums = np.zeros((6, len(conds), 2, s))
    window_sql = f"CASE WHEN si < {base} THEN 0 WHEN si >= {t - w} THEN 1 END"
    in_window = f"(si < {base} OR si >= {t - w})"
    grouped = f"""SELECT condition, {window_sql} AS win, s, prompt_key, sum(x) AS x, sum(n) AS nc,
                         sum(x * x) AS cxx, sum(x * n) AS cxn, sum(n * n) AS cnn, count(*) AS cg
                  FROM ({cells}) WHERE {in_window}"""
    if ftype == "ngram" and not scope.shared:
        r = "_r" if scope.n_col(where) == "n_r" else ""
        queries = [f"""SELECT g.condition, {window_sql} AS win, st.s, sum(g.x), sum(g.xx), sum(g.xn{r}),
                              sum(g.n{r}), sum(g.nn{r}), sum(g.g{r})
                       FROM gen_steps g JOIN keys USING (step, split)
                       JOIN strata st ON st.task_key = g.task_key AND st.condition = g.condition
                       WHERE g.term_id = {int(k)} AND {in_window} GROUP BY ALL"""]
        if scope.con.execute("SELECT count(*) FROM gen_recurring").fetchall()[0][0]:
            # a recurring prompt's cluster in place of its cells' single-cell terms (its X and N sums are theirs)
            queries.append(f"""SELECT condition, win, s, 0, sum(x * x) - sum(cxx), sum(x * nc) - sum(cxn), 0,
                                      sum(nc * nc) - sum(cnn), count(*) - sum(cg)
                               FROM ({grouped} AND prompt_key IN (SELECT prompt_key FROM gen_recurring)
                                     GROUP BY ALL) GROUP BY ALL""")
    else:
        queries = [f"""SELECT condition, win, s, sum(x), sum(x * x), sum(x * nc), sum(nc), sum(nc * nc), count(*)
                       FROM ({grouped} GROUP BY ALL) GROUP BY ALL"""]
    for sql in queries:
        for c, win, st, *v in scope.con.execute(sql).fetchall():
            sums[:, cidx[c], win, st] += np.asarray(v, dtype=np.float64)
    return tuple(sums)


def _choose_source(scope: Scope, a: dict[str, Any], signals: dict[str, str], alpha: float) -> bool:
    """Set a["source"], a["reason"], a["rewarded"] (see module doc); False when no condition qualifies."""
    conds = scope.conditions
    by_cond = a["finding"].get("by_condition", {})
    a["lift"] = np.array([by_cond.get(c, {}).get("mention_share", 0)
                          / max(by_cond.get(c, {}).get("traffic_share", 0), 1e-12) for c in conds])
    a["source"], a["reason"], a["rewarded"] = None, "lift", None
    for sig, cond in signals.items():
        r, p = _reward_correlation(scope, a, sig, cond)
        if p < REWARD_P and r > 0 and (a["rewarded"] is None or r > a["rewarded"][1]):
            a["source"], a["reason"], a["rewarded"] = conds.index(cond), "reward", (sig, r, p)
    if a["source"] is None:
        lo = a["ratio"] * np.exp(-1.96 * a["se"])
        risen = [i for i in range(len(conds)) if a["p"][i] <= alpha and lo[i] > 1 and a["onsets"][i] is not None]
        if not risen:
            return False
        a["source"] = max(risen, key=lambda i: (a["lift"][i], -i))
        if a["lift"][a["source"]] < MIN_LIFT:
            return False  # no condition stands out: the behaviour rose everywhere alike
    return True


def _condition_signals(ctx: DetectContext, scope: Scope) -> dict[str, str]:
    """Reward signals that apply in exactly one condition (non-NaN there, NaN or absent elsewhere).

    Counted from the `training_health` detector's per-part statistics (`training_stats` kind 8: per part, step,
    condition and signal the rows with a value that is not NaN), cached beside the run, so a warm audit reads the
    new part's rewards and the rollup of the combined parts' small rows only (reward_health's rows per task,
    6.2M at 10M rollouts, cost 0.4 CPU s to scan); a store that keeps derived data in memory would recompute them
    for every part, so there the rewards are counted directly."""
    if getattr(scope.store, "persist_derived", True):
        from .training_stats import register_small

        rows = register_small(scope.con, ctx.part_stats("training_health"), "gen_ts_parts")
        sql = f"""SELECT signal, condition, sum(applies) AS applies FROM {rows} r
                  SEMI JOIN keys k ON k.step = r.step AND k.split IS NOT DISTINCT FROM r.split
                  WHERE kind = 8 GROUP BY ALL ORDER BY ALL"""
    else:
        sql = f"""SELECT signal, condition, count(*) FILTER (WHERE NOT isnan(value) AND value IS NOT NULL) AS applies
                  FROM {_scope_rewards(scope)} GROUP BY ALL ORDER BY ALL"""
    rows = scope.con.execute(sql).fetchall()
    by_signal: dict[str, dict[str, int]] = {}
    for sig, cond, applies in rows:
        by_signal.setdefault(sig, {})[cond] = applies
    out = {}
    for sig, per in by_signal.items():
        live = [c for c, k in per.items() if k > 0]
        if len(live) == 1 and len(scope.conditions) > 1:
            out[sig] = live[0]
    return out


def _reward_correlation(scope: Scope, a: dict[str, Any], signal: str, condition: str) -> tuple[float, float]:
    """Within-prompt-group correlation of the behaviour with a reward signal in one condition: (r, p). Over
    the scope's rollouts, or a systematic sample of its steps in a long run (`Scope.sampled_rows`)."""
    rows_view, sampled = scope.sampled_rows()
    rewards = _sampled_rewards(scope) if rows_view != "rt_parts" else _scope_rewards(scope)
    value = scope.sampled_value_sql(a["where"], a["ftype"], a["key"])
    rows = scope.con.execute(f"""
        WITH b AS (SELECT rollout_id, group_id, {value} AS v FROM {rows_view} SEMI JOIN keys USING (step, split)
                   WHERE condition = ? AND {sampled} AND {scope.filter(a['where'])} AND {a['risk']}),
             r AS (SELECT rollout_id, value FROM {rewards} WHERE condition = ? AND signal = ? AND NOT isnan(value)
                   AND {sampled}),
             j AS (SELECT coalesce(group_id, rollout_id) AS grp, v, value FROM b JOIN r USING (rollout_id)),
             d AS (SELECT v - avg(v) OVER (PARTITION BY grp) AS dv,
                          value - avg(value) OVER (PARTITION BY grp) AS dr, grp FROM j)
        SELECT corr(dv, dr), count(*), count(DISTINCT grp) FROM d""", [condition, condition, signal]).fetchall()[0]
    r, n, groups = rows
    dof = (n or 0) - (groups or 0) - 1
    if r is None or not math.isfinite(r) or dof < 3:
        return float("nan"), 1.0
    tt = r * math.sqrt(dof / max(1e-12, 1 - r * r))
    return float(r), float(2 * student_t.sf(abs(tt), dof))


def _scope_rewards(scope: Scope) -> str:
    """The view of the scope's rewards, one row per rollout and signal (`Store.rewards_view`: a part's shared
    signals read from its columns), created at the first question (its binding costs ~7 ms at 500 parts), on
    the scope's connection: a temp view, seen by that connection only (`rlaudit.duck`)."""
    if not _has_view(scope.con, "gen_rewards"):
        scope.store.rewards_view(scope.con, [scope.run], "gen_rewards", where=scope.where)
    return "gen_rewards"


def _sampled_rewards(scope: Scope) -> str:
    """`rewards_long` over only the parts that may hold the sampled steps (`Scope.sampled_rows`), within the
    audit's scope: the full view lists every stored part, and DuckDB opens each one's footer to skip it (~0.25 ms
    a part: ~0.5 CPU s of a warm audit at 2,000 parts), so its cost grew with the run."""
    con = scope.con
    if not _has_view(con, "gen_sample_rewards"):
        steps = con.execute("SELECT step FROM sample_steps").fetchnumpy()["step"]
        scope.store.rewards_view(con, [scope.run], "gen_sample_rewards", steps, where=scope.where)
    return "gen_sample_rewards"


def _has_view(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether `con` sees a view `name` (its result read whole: a result left half-read on the scope's connection
    stops the next registration on it)."""
    return bool(con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]).fetchall()[0][0])


def _findings(ctx: DetectContext, scope: Scope, a: dict[str, Any], signals: dict[str, str],
              alpha: float) -> list[Finding]:
    f: Finding = a["finding"]
    conds = list(scope.conditions)
    source, reason, rewarded = a["source"], a["reason"], a["rewarded"]
    q_pooled = float(a["q"][-1])
    lo = a["ratio"] * np.exp(-1.96 * a["se"])
    rose = (a["q"][:-1] <= alpha) & (lo > 1)
    by_cond = f.get("by_condition", {})
    x, n = a["x"], a["n"]
    targets = [t for t in range(len(conds)) if t != source and rose[t]
               and (reason == "reward" or _not_earlier(a["onsets"][t], a["onsets"][source], a["h"]))]
    pooled = a["pooled"]
    pooled_lo = pooled["ratio"] * math.exp(-1.96 * pooled["se"])
    if not targets and len(conds) > 2 and q_pooled <= alpha and pooled_lo > 1:
        # no single condition is significant, but together the others rose: report them as one target
        conds.append(OTHERS)
        x, n = np.vstack([x, pooled["x"]]), np.vstack([n, pooled["n"]])
        w = scope.window
        early, late = np.arange(scope.n_steps) < a["baseline_steps"], np.arange(scope.n_steps) >= scope.n_steps - w
        a = {**a, "ratio": np.append(a["ratio"], pooled["ratio"]), "se": np.append(a["se"], pooled["se"]),
             "q": np.append(a["q"][:-1], q_pooled),
             "p0": np.append(a["p0"], pooled["x"][early].sum() / max(pooled["n"][early].sum(), 1)),
             "p1": np.append(a["p1"], pooled["x"][late].sum() / max(pooled["n"][late].sum(), 1)),
             "onsets": a["onsets"] + [None]}
        lo = a["ratio"] * np.exp(-1.96 * a["se"])
        targets = [len(conds) - 1]
    h = a["h"]
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = moving_sum(x, h) / moving_sum(n, h)
        raw = np.where(n > 0, x / n, np.nan)
    max_lag = max(1, scope.n_steps // 10)
    spacing = float(np.median(np.diff(scope.steps))) if scope.n_steps > 1 else 1.0
    series = {c: {"steps": scope.steps.tolist(), "prevalence": raw[i].tolist(), "rollouts": n[i].astype(int).tolist()}
              for i, c in enumerate(conds)}
    out = []
    for tgt in targets:
        corr, lag = lagged_correlation(zscore(smooth[source]), zscore(smooth[tgt]), max_lag)
        covered = ([c for i, c in enumerate(scope.conditions) if i != source] if conds[tgt] == OTHERS
                   else [conds[tgt]])
        paid = []
        for sig, cond in signals.items():
            if cond in covered:
                r, p = _reward_correlation(scope, a, sig, cond)
                if p < REWARD_P and r > 0:
                    paid.append(sig)
        d = float(a["p1"][tgt] - a["p0"][tgt])
        ci = [float(lo[tgt]), float(a["ratio"][tgt] * math.exp(1.96 * a["se"][tgt]))]
        if f.severity == "high" and ci[0] >= 2 and d >= 0.10 and not paid:
            sev = "high"
        elif (ci[0] >= 1.5 and d >= 0.05) or (ci[0] >= 2 and d >= 0.02):
            sev = "medium"
        else:
            sev = "low"
        src_c, tgt_c = conds[source], conds[tgt]
        src_bc = by_cond.get(src_c, {})
        fields_ = {
            "behavior": f["behavior"], "behavior_spec": f["behavior_spec"], "terms": f.get("terms", []),
            "where": a["where"],
            "feature_type": a["ftype"], "source_condition": src_c, "target_condition": tgt_c,
            "target_conditions": covered,
            "source_reason": reason, "rewarded_by": rewarded[0] if rewarded else None,
            "reward_correlation": rewarded[1] if rewarded else None, "paid_in_target": bool(paid),
            "correlation": corr, "lag_steps": lag * spacing,
            "mention_share": src_bc.get("mention_share"), "traffic_share": src_bc.get("traffic_share"),
            "target_mention_share": by_cond.get(tgt_c, {}).get("mention_share"),
            "target_traffic_share": by_cond.get(tgt_c, {}).get("traffic_share"),
            "source_prevalence_start": float(a["p0"][source]), "source_prevalence_end": float(a["p1"][source]),
            "target_prevalence_start": float(a["p0"][tgt]), "target_prevalence_end": float(a["p1"][tgt]),
            "target_ratio": float(a["ratio"][tgt]), "target_ratio_ci": ci, "q_value": float(a["q"][tgt]),
            "baseline_steps": int(a["baseline_steps"]),
            "source_onset_step": _step(scope, a["onsets"][source]), "target_onset_step": _step(scope, a["onsets"][tgt]),
            "series": series,
        }
        why = (f"its reward signal {rewarded[0]!r} (applies only there) favours it within prompt groups "
               f"(r = {rewarded[1]:.2f})" if rewarded else "it is over-represented there")
        title = (f"\"{f['behavior']}\" spread from {src_c!r} to {tgt_c!r}: {a['p0'][tgt]:.1%} -> "
                 f"{a['p1'][tgt]:.1%} of {tgt_c!r} rollouts")
        explanation = (
            f"Source {src_c!r} because {why}; it holds {fields_['traffic_share'] or 0:.1%} of rollouts but "
            f"{fields_['mention_share'] or 0:.1%} of occurrences. In {tgt_c!r} the prevalence ratio late vs early is "
            f"{a['ratio'][tgt]:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f}, q = {a['q'][tgt]:.2g}); the rescaled curves "
            f"correlate at r = {corr:.2f} with the target {_lag_words(lag * spacing)}. "
            + ("No reward signal that applies there favours it." if not paid
               else f"Signals applying there that favour it: {', '.join(paid)}."))
        score = d * (corr if np.isfinite(corr) else 0.0)
        out.append(Finding(kind="generalization", run=ctx.run, severity=sev, title=title, explanation=explanation,
                           score=float(score), fields=fields_, evidence=_evidence(scope, a, tgt_c, f)))
    return out


def _baseline_steps(scope: Scope, f: Finding, min_steps: int) -> int:
    """Steps in the baseline window: the early window, or the steps before the behaviour's onset if fewer and at
    least `min_steps` (the onset is discovery's, on the pooled run, so it does not depend on the condition)."""
    w, onset = scope.window, f.get("onset_step")
    if onset is None:
        return w
    before = int(np.searchsorted(scope.steps, onset))
    return before if min_steps <= before < w else w


def _not_earlier(target: int | None, source: int | None, h: int) -> bool:
    """Target onset not before the source's (beyond the smoothing half-width; onsets are step indices)."""
    return target is not None and source is not None and target >= source - h


def _step(scope: Scope, idx: int | None) -> int | None:
    return None if idx is None else int(scope.steps[idx])


def _evidence(scope: Scope, a: dict[str, Any], condition: str, f: Finding, limit: int = 3) -> list[Evidence]:
    """Late target-condition rollouts that show the behaviour (the emerging finding's snippets, if any)."""
    mine = [e for e in f.evidence if e.condition == condition][:limit]
    if mine:
        return mine
    rows = scope.con.execute(f"""SELECT rollout_id, step FROM {scope.rows(a['ftype'])}
        WHERE condition = ? AND win = 1 AND {scope.filter(a['where'])} AND {a['value']} > 0
        ORDER BY step DESC, hash(rollout_id) LIMIT {limit}""", [condition]).fetchall()
    return [Evidence(rollout_id=r, step=int(s), condition=condition, note=f"{a['where']} showing {f['behavior_spec']}")
            for r, s in rows]


# ---------------------------------------------------------------------------------------------------------------
# Figures for the report.

def figures(finding: Finding | dict[str, Any]) -> list[Any]:
    """Plotly figures for a `generalization` (or `emerging_behavior`) finding, from its fields alone:
    prevalence per condition over steps (raw), and the same curves z-scored so their shapes overlay."""
    import plotly.graph_objects as go

    get = finding.get if isinstance(finding, Finding) else finding.get
    series = get("series") or {}
    name = get("behavior") or get("behavior_spec") or "behaviour"
    if "steps" in series:  # an emerging finding: one overall curve, plus by_condition is not per step
        series = {"all": series}
    highlight = {get("source_condition"), get("target_condition")}
    raw, scaled = go.Figure(), go.Figure()
    for cond, s in series.items():
        steps = s.get("steps", [])
        prev = np.array([np.nan if v is None else v for v in s.get("prevalence", [])], dtype=float)
        width = 3 if cond in highlight else 1.5
        label = cond + (" (source)" if cond == get("source_condition") else
                        " (target)" if cond == get("target_condition") else "")
        raw.add_trace(go.Scatter(x=steps, y=prev.tolist(), mode="lines", name=label, line={"width": width}))
        smooth = _nan_smooth(prev, max(1, len(prev) // 40))
        scaled.add_trace(go.Scatter(x=steps, y=zscore(smooth).tolist(), mode="lines", name=label,
                                    line={"width": width}))
    raw.update_layout(title=f"Prevalence of \"{name}\" per condition", xaxis_title="step",
                      yaxis_title="share of rollouts", yaxis_tickformat=".0%", template="plotly_white")
    corr, lag = get("correlation"), get("lag_steps")
    subtitle = f" (r = {corr:.2f}, lag {lag:g} steps)" if isinstance(corr, float) and math.isfinite(corr) else ""
    scaled.update_layout(title=f"Rescaled (z-scored) prevalence of \"{name}\"{subtitle}", xaxis_title="step",
                         yaxis_title="z-score", template="plotly_white")
    return [raw, scaled]


def _nan_smooth(y: np.ndarray, h: int) -> np.ndarray:
    ok = np.isfinite(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return moving_sum(np.where(ok, y, 0.0), h) / moving_sum(ok.astype(float), h)


def _lag_words(steps: float) -> str:
    """The lag of the target behind the source in words: never a negative 'lagging by'."""
    if steps > 0:
        return f"lagging by {steps:g} step{'s' if steps != 1 else ''}"
    if steps < 0:
        return f"leading by {-steps:g} step{'s' if steps != -1 else ''}"
    return "in step (no lag)"
