"""The `reward_health` detector: reward components that are broken rather than biased.

A reward signal that is NaN where it should apply, infinite, stuck, constant or occasionally enormous does not
teach a habit; it silently changes what the trainer optimises (NaN summed as 0, one x100 score dominating a
group's advantages, a dead reward server returning a default). Checks per signal, all in DuckDB:

- `non_finite`: +-inf values. Severity **high** (one infinite reward poisons a group's advantages).
- `nan`: NaN in cells (condition x task; condition x prompt when no task is logged) where the signal
  otherwise applies. A cell where the signal is NaN in
  at least half of its rows is one where it does not apply (a persona reward outside its persona, a code judge
  outside coding): not a problem. Share = NaN rows / rows of the applicable cells. Severity **high** when the
  share >= 10%, **medium** when >= 0.1% and at least 3 rows, else **low**.
- `constant`: the same finite value in every row of the whole run (at least 3 steps): the signal carries no
  information, so its weight is wasted and it is probably misconfigured. Severity **medium**.
- `stuck`: it varied, then from some step to the end every row has one value that is not the signal's
  historical maximum (a dead server returning a default, a parser that stopped matching). The stuck stretch must
  cover at least 3 steps, 10% of the run's steps and 20 rows. Severity **high**. Stuck *at* the historical
  maximum is saturation (the policy learnt it), reported as `saturated` at **info**.
- `out_of_range`: finite values far outside the bulk: below q05 - 10*S or above q95 + 10*S, where the scale S is
  the largest of q95 - q05, the span of the values that each make up >= 5% of rows (for discrete signals, <= 64
  distinct values: a binary signal's rare zeros are not outliers), and 10% of max(|q05|, |q95|); S = 1 when all
  of these are 0. Quantiles are exact for discrete signals and within 1% (relative) of the exact value
  otherwise (`reward_stats`: a mergeable log-bucket sketch). Robust to up to 5% of
  outliers, which cannot move q05/q95. Severity **high** when the share >= 1%, **medium** when there are at
  least 3 such rows, else **low**.

The counts come from per-part statistics cached beside the run (`reward_stats`, `partstats`): a warm audit after
a new step computes that step's part only; an audit of the whole run reads run-level rollups of those tables
and the parts added since (`reward_rollup`), so its cost does not grow with the run's steps; rows are read only
for evidence and for the steps whose range crosses an out-of-range bound.

Each finding carries `signal`, `problem`, `share`, `rows`, `first_step` and evidence rollouts.
"""

from __future__ import annotations

from typing import Any

import duckdb

from ..findings import Evidence, Finding
from . import DetectContext, Detector, register
from .reward_stats import APPLIES_MIN, DISCRETE_MAX, RL_SQL, quantiles, register_cells, register_reward_stats

OUTLIER_K = 10.0
COMMON_SHARE = 0.05
STUCK_MIN_STEPS, STUCK_MIN_SHARE, STUCK_MIN_ROWS = 3, 0.10, 20
CONSTANT_MIN_STEPS = 3
EVIDENCE = 5


@register
class RewardHealthDetector(Detector):
    name = "reward_health"
    kinds = ("reward_health",)
    description = "Broken reward components: NaN where they apply, inf, constant, stuck, far out of range."
    part_stats = ("reward_health",)
    light = True  # once the roll-up (`prefetch`) is done: the per-part statistics' small tables

    def prefetch(self, ctx: DetectContext) -> None:
        """The run-level rollup of the per-part statistics (`reward_rollup`), built where missing and left on disk
        for `detect`: it reads those statistics alone (the first rollup of a 10M-rollout run: ~16 CPU s)."""
        if ctx.config.max_step is None and ctx.config.split:
            from .reward_rollup import rollup

            rollup(ctx.part_stats("reward_health"), ctx.store.root)

    def detect(self, ctx: DetectContext) -> list[Finding]:
        con = ctx.connect()
        # Applicability cells are condition x task; where the trainer logs no task (TRL, verl without a data
        # source), the prompt stands in for it: a reward that never scores a prompt (no gold answer for an
        # advice question) does not apply to it, which is not the same as NaN on some rollouts of a prompt.
        # Everything but the evidence and the out-of-range rows comes from per-part statistics (`reward_stats`).
        register_reward_stats(con, ctx.part_stats("reward_health"), ctx.store.root, ctx.config.max_step,
                              ctx.config.split)
        con.execute(f"CREATE TEMP VIEW rl AS {RL_SQL}")
        findings: list[Finding] = []
        for check in (_non_finite, _nan, _constant_or_stuck, _out_of_range):
            findings.extend(check(con, ctx.run))
        return findings


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _evidence(con: duckdb.DuckDBPyConnection, signal: str, where: str, note: str, cells: str,
              table: str = "rh_steps", only: str = "TRUE") -> list[Evidence]:
    """The first EVIDENCE rows of `signal` matching `where` (on `rl` as r), read only from the first steps whose
    cells hold enough of them: rows of `table` (`rh_cells`, or `rh_steps` where `cells` is a sum of a step's
    cells) matching `only` counted by `cells`."""
    steps, total = [], 0
    for step, k in con.execute(f"""SELECT step, sum(k) FROM (SELECT step, {cells} AS k FROM {table}
                                   WHERE signal = ? AND {only}) WHERE k > 0 GROUP BY step ORDER BY step""",
                               [signal]).fetchall():
        steps.append(int(step))
        total += k
        if total >= EVIDENCE:
            break
    if not steps:
        return []
    in_steps = ", ".join(map(str, steps))
    rows = _rows(con, f"""
        SELECT r.rollout_id, r.step, r.value, o.condition, left(o.answer, 300) AS answer
        FROM (SELECT * FROM rl WHERE step IN ({in_steps})) r
        JOIN (SELECT * FROM rollouts WHERE step IN ({in_steps})) o USING (rollout_id)
        WHERE r.signal = ? AND ({where}) ORDER BY r.step, r.rollout_id LIMIT {EVIDENCE}""", [signal])
    return [Evidence(rollout_id=r["rollout_id"], step=int(r["step"]), condition=r["condition"], text=r["answer"],
                     note=note, data={"value": r["value"]}) for r in rows]


def _finding(run: str, signal: str, problem: str, severity: str, title: str, explanation: str,
             share: float, rows: int, first_step: int | None, evidence: list[Evidence], **extra: Any) -> Finding:
    return Finding(kind="reward_health", run=run, severity=severity, title=title, explanation=explanation,
                   score=float(share),
                   fields={"signal": signal, "problem": problem, "share": float(share), "rows": int(rows),
                           "first_step": first_step, **extra},
                   evidence=evidence)


def _non_finite(con: duckdb.DuckDBPyConnection, run: str) -> list[Finding]:
    out = []
    for r in _rows(con, """
            SELECT signal, sum(inf) AS bad, sum(n) AS n, min(step) FILTER (WHERE inf > 0) AS first_step
            FROM rh_steps GROUP BY signal HAVING sum(inf) > 0 ORDER BY signal"""):
        share = r["bad"] / r["n"]
        out.append(_finding(
            run, r["signal"], "non_finite", "high", f"reward signal {r['signal']} has infinite values",
            f"{r['bad']} rollout(s) ({share:.2%}) scored +-inf from step {r['first_step']}; an infinite reward "
            "makes the group's advantages meaningless.", share, r["bad"], r["first_step"],
            _evidence(con, r["signal"], "isinf(r.value)", "infinite score", "inf")))
    return out


def _nan(con: duckdb.DuckDBPyConnection, run: str) -> list[Finding]:
    out = []
    for r in _rows(con, "SELECT signal, nan, n, first_step FROM rh_nan ORDER BY signal"):
        register_cells(con)  # the cells, for the evidence (`rh_nan` is rolled up where it can be)
        share = r["nan"] / r["n"]
        severity = "high" if share >= 0.10 else "medium" if share >= 0.001 and r["nan"] >= 3 else "low"
        where = (f"isnan(r.value) AND EXISTS (SELECT 1 FROM cells c WHERE c.signal = r.signal AND "
                 f"c.condition = r.condition AND c.task = r.task AND c.n - c.nan >= {APPLIES_MIN} * c.n)")
        out.append(_finding(
            run, r["signal"], "nan", severity, f"reward signal {r['signal']} is NaN in {share:.1%} of rollouts "
            "where it applies",
            f"{r['nan']} of {r['n']} rollouts in conditions/tasks where {r['signal']} normally scores have NaN "
            f"(first at step {r['first_step']}). Trainers usually sum NaN as 0, so these rollouts lose or gain "
            "reward for no reason (timeouts, parse failures).", share, r["nan"], r["first_step"],
            _evidence(con, r["signal"], where, "NaN score",
                      f"CASE WHEN EXISTS (SELECT 1 FROM cells c WHERE c.signal = rh_cells.signal AND "
                      f"c.condition = rh_cells.condition AND c.task = rh_cells.task AND c.n - c.nan >= "
                      f"{APPLIES_MIN} * c.n) THEN nan ELSE 0 END", table="rh_cells")))
    return out


def _constant_or_stuck(con: duckdb.DuckDBPyConnection, run: str) -> list[Finding]:
    per_step = _rows(con, """
        SELECT signal, step, min(lo) AS lo, max(hi) AS hi, sum(finite) AS n
        FROM rh_steps GROUP BY signal, step HAVING sum(finite) > 0 ORDER BY signal, step""")
    by_signal: dict[str, list[dict[str, Any]]] = {}
    for r in per_step:
        by_signal.setdefault(r["signal"], []).append(r)
    out = []
    for signal, steps in by_signal.items():
        top = max(s["hi"] for s in steps)
        values = {s["lo"] for s in steps} | {s["hi"] for s in steps}
        total = sum(s["n"] for s in steps)
        if len(values) == 1:
            if len(steps) >= CONSTANT_MIN_STEPS:
                out.append(_finding(
                    run, signal, "constant", "medium", f"reward signal {signal} is constant ({top:g})",
                    f"{signal} scored {top:g} in all {total} rollouts over {len(steps)} steps: it carries no "
                    "information (under GRPO it cancels out of every advantage). Probably misconfigured.",
                    1.0, total, steps[0]["step"], _evidence(con, signal, "TRUE", "constant score", "n"), value=top))
            continue
        tail: list[dict[str, Any]] = []  # the longest suffix of steps where every row has one value
        for s in reversed(steps):
            if s["lo"] != s["hi"] or (tail and s["lo"] != tail[0]["lo"]):
                break
            tail.insert(0, s)
        rows = sum(s["n"] for s in tail)
        if (len(tail) < max(STUCK_MIN_STEPS, STUCK_MIN_SHARE * len(steps)) or rows < STUCK_MIN_ROWS
                or len(tail) == len(steps)):
            continue
        value, since = tail[0]["lo"], tail[0]["step"]
        saturated = value >= top
        out.append(_finding(
            run, signal, "saturated" if saturated else "stuck", "info" if saturated else "high",
            f"reward signal {signal} " + (f"saturated at its maximum {value:g} from step {since}" if saturated
                                          else f"stuck at {value:g} from step {since}"),
            (f"Every rollout scored the maximum {value:g} from step {since}: the policy satisfies it; it no longer "
             "separates rollouts." if saturated else
             f"{signal} varied until step {since}, then returned {value:g} for all {rows} rollouts of the last "
             f"{len(tail)} steps, below its earlier maximum {top:g}: a failed reward server or parser, and training "
             "continued without this signal."),
            len(tail) / len(steps), rows, since,
            _evidence(con, signal, f"r.step >= {int(since)}", "stuck score",
                      f"CASE WHEN step >= {int(since)} THEN n ELSE 0 END"), value=value, historical_max=top))
    return out


def _bands(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, float, float]]:
    """Per signal with finite values: (finite rows, lower bound, upper bound) of the module doc. Quantiles are
    exact (numpy's 'lower' quantile) for a discrete signal, from its merged distinct values, else the per-part sketches'
    estimates (`reward_stats.quantiles`, within 1% of the exact value)."""
    sketch = quantiles(con, (0.05, 0.95))
    values: dict[str, list[tuple[float | None, int]]] = {}
    for signal, value, n in con.execute(f"""
            SELECT signal, value, n FROM rh_values WHERE signal IN (
                SELECT signal FROM rh_values GROUP BY signal
                HAVING count(*) <= {DISCRETE_MAX} AND count(*) FILTER (WHERE value IS NULL) = 0)
            ORDER BY signal, value""").fetchall():  # discrete signals only: at most DISCRETE_MAX rows each
        values.setdefault(signal, []).append((value, int(n)))
    out = {}
    for signal, est in sketch.items():
        n, q05, q95, span = est["n"], est[0.05], est[0.95], 0.0
        vals = values.get(signal, [])
        if vals and len(vals) <= DISCRETE_MAX and all(v is not None for v, _ in vals):
            q05, q95 = _exact_quantile(vals, 0.05), _exact_quantile(vals, 0.95)
            common = [v for v, c in vals if c >= COMMON_SHARE * n]
            span = max(common) - min(common) if common else 0.0
        s0 = max(q95 - q05, span, 0.1 * max(abs(q05), abs(q95)))
        scale = s0 if s0 > 0 else 1.0
        out[signal] = (n, q05 - OUTLIER_K * scale, q95 + OUTLIER_K * scale)
    return out


def _exact_quantile(values: list[tuple[float, int]], q: float) -> float:
    """The value of rank floor(q (n - 1)), 0-based, of sorted (value, rows) pairs: the value of rank floor(q (n - 1)), 0-based."""
    n = sum(c for _, c in values)
    rank, cum = int(q * (n - 1)), 0
    for v, c in values:
        cum += c
        if cum > rank:
            return float(v)
    return float(values[-1][0])


def _out_of_range(con: duckdb.DuckDBPyConnection, run: str) -> list[Finding]:
    out = []
    for signal, (n, lower, upper) in sorted(_bands(con).items()):
        # only steps where some cell's finite range crosses a bound can hold such rows: count them exactly there
        steps = [int(r[0]) for r in con.execute(
            "SELECT step FROM rh_steps WHERE signal = ? GROUP BY step HAVING min(lo) < ? OR max(hi) > ?",
            [signal, lower, upper]).fetchall()]
        if not steps:
            continue
        in_steps = ", ".join(map(str, steps))
        rows = _rows(con, f"""
            SELECT count(*) AS bad, min(step) AS first_step, min(value) AS lo, max(value) AS hi
            FROM rl WHERE step IN ({in_steps}) AND signal = ? AND isfinite(value)
              AND (value < ? OR value > ?)""", [signal, lower, upper])
        r = {**rows[0], "signal": signal, "n": n, "lower_bound": lower, "upper_bound": upper}
        if not r["bad"]:
            continue
        share = r["bad"] / r["n"]
        severity = "high" if share >= 0.01 else "medium" if r["bad"] >= 3 else "low"
        lo, hi = r["lower_bound"], r["upper_bound"]
        out.append(_finding(
            run, r["signal"], "out_of_range", severity,
            f"reward signal {r['signal']} has values far out of range ({share:.2%} of rollouts)",
            f"{r['bad']} rollout(s) scored outside [{lo:.3g}, {hi:.3g}] (min {r['lo']:.3g}, max {r['hi']:.3g}), "
            f"from step {r['first_step']}: a scale or parsing bug; each such score dominates its group's "
            "advantages.", share, r["bad"], r["first_step"],
            _evidence(con, r["signal"], f"isfinite(r.value) AND (r.value < {lo!r} OR r.value > {hi!r})",
                      "out-of-range score", f"CASE WHEN lo < {lo!r} OR hi > {hi!r} THEN finite ELSE 0 END",
                      table="rh_cells", only=f"step IN ({in_steps})"),
            bounds=[lo, hi], min=r["lo"], max=r["hi"]))
    return out
