"""The `reward_health` detector: reward components that are broken rather than biased.

A reward signal that is NaN where it should apply, infinite, stuck, constant or occasionally enormous does not
teach a habit; it silently changes what the trainer optimises (NaN summed as 0, one x100 score dominating a
group's advantages, a dead reward server returning a default). Checks per signal, all in DuckDB over
`rewards_long`:

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
- `out_of_range`: finite values far outside the bulk: below q05 - 10*S or above q95 + 10*S (t-digest
  quantiles), where the scale S is
  the largest of q95 - q05, the span of the values that each make up >= 5% of rows (for discrete signals, <= 64
  distinct values: a binary signal's rare zeros are not outliers), and 10% of max(|q05|, |q95|); S = 1 when all
  of these are 0. Robust to up to 5% of
  outliers, which cannot move q05/q95. Severity **high** when the share >= 1%, **medium** when there are at
  least 3 such rows, else **low**.

Each finding carries `signal`, `problem`, `share`, `rows`, `first_step` and evidence rollouts.
"""

from __future__ import annotations

from typing import Any

import duckdb

from ..findings import Evidence, Finding
from . import DetectContext, Detector, register

APPLIES_MIN = 0.5  # a cell is applicable when at least this share of its rows is not NaN
OUTLIER_K = 10.0
COMMON_SHARE = 0.05
DISCRETE_MAX = 64  # a signal with at most this many distinct values is discrete (common values are looked up)
STUCK_MIN_STEPS, STUCK_MIN_SHARE, STUCK_MIN_ROWS = 3, 0.10, 20
CONSTANT_MIN_STEPS = 3
EVIDENCE = 5


@register
class RewardHealthDetector(Detector):
    name = "reward_health"
    kinds = ("reward_health",)
    description = "Broken reward components: NaN where they apply, inf, constant, stuck, far out of range."

    def detect(self, ctx: DetectContext) -> list[Finding]:
        con = ctx.connect()
        con.execute("SET enable_progress_bar = false")
        # Applicability cells are condition x task; where the trainer logs no task (TRL, verl without a data
        # source), the prompt stands in for it: a reward that never scores a prompt (no gold answer for an
        # advice question) does not apply to it, which is not the same as NaN on some rollouts of a prompt.
        con.execute("CREATE TEMP TABLE rl AS SELECT rollout_id, step, unnest(map_keys(rewards)) AS signal, "
                    "coalesce(unnest(map_values(rewards)), 'NaN'::DOUBLE) AS value, "  # missing: did not score
                    "coalesce(condition, '') AS condition, "
                    "CASE WHEN task IS NOT NULL THEN hash(task) ELSE hash('prompt:', prompt) END AS task FROM rollouts")
        findings: list[Finding] = []
        for check in (_non_finite, _nan, _constant_or_stuck, _out_of_range):
            findings.extend(check(con, ctx.run))
        return findings


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _evidence(con: duckdb.DuckDBPyConnection, signal: str, where: str, note: str) -> list[Evidence]:
    rows = _rows(con, f"""
        SELECT r.rollout_id, r.step, r.value, o.condition, left(o.answer, 300) AS answer
        FROM rl r JOIN rollouts o USING (rollout_id)
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
            SELECT signal, count(*) FILTER (WHERE isinf(value)) AS bad, count(*) AS n,
                   min(step) FILTER (WHERE isinf(value)) AS first_step
            FROM rl GROUP BY signal HAVING count(*) FILTER (WHERE isinf(value)) > 0 ORDER BY signal"""):
        share = r["bad"] / r["n"]
        out.append(_finding(
            run, r["signal"], "non_finite", "high", f"reward signal {r['signal']} has infinite values",
            f"{r['bad']} rollout(s) ({share:.2%}) scored +-inf from step {r['first_step']}; an infinite reward "
            "makes the group's advantages meaningless.", share, r["bad"], r["first_step"],
            _evidence(con, r["signal"], "isinf(r.value)", "infinite score")))
    return out


def _nan(con: duckdb.DuckDBPyConnection, run: str) -> list[Finding]:
    con.execute("""
        CREATE TEMP TABLE cells AS
        SELECT signal, condition, task, count(*) AS n, count(*) FILTER (WHERE isnan(value)) AS nan,
               min(step) FILTER (WHERE isnan(value)) AS first_step
        FROM rl GROUP BY ALL""")
    out = []
    for r in _rows(con, f"""
            SELECT signal, sum(nan) AS nan, sum(n) AS n, min(first_step) AS first_step
            FROM cells WHERE n - nan >= {APPLIES_MIN} * n
            GROUP BY signal HAVING sum(nan) > 0 ORDER BY signal"""):
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
            _evidence(con, r["signal"], where, "NaN score")))
    return out


def _constant_or_stuck(con: duckdb.DuckDBPyConnection, run: str) -> list[Finding]:
    per_step = _rows(con, """
        SELECT signal, step, min(value) AS lo, max(value) AS hi, count(*) AS n
        FROM rl WHERE isfinite(value) GROUP BY signal, step ORDER BY signal, step""")
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
                    1.0, total, steps[0]["step"], _evidence(con, signal, "TRUE", "constant score"), value=top))
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
            _evidence(con, signal, f"r.step >= {int(since)}", "stuck score"), value=value, historical_max=top))
    return out


def _out_of_range(con: duckdb.DuckDBPyConnection, run: str) -> list[Finding]:
    out = []
    con.execute(f"""
        CREATE TEMP TABLE bands AS
        WITH q AS (SELECT signal, approx_quantile(value, 0.05) AS q05, approx_quantile(value, 0.95) AS q95,
                          count(*) AS n, approx_count_distinct(value) AS distinct_values
                   FROM rl WHERE isfinite(value) GROUP BY signal),
        common AS (SELECT signal, max(value) - min(value) AS span FROM (  -- discrete signals only
                       SELECT signal, value, count(*) AS c FROM rl
                       WHERE signal IN (SELECT signal FROM q WHERE distinct_values <= {DISCRETE_MAX})
                         AND isfinite(value)
                       GROUP BY signal, value) v
                   JOIN q USING (signal) WHERE c >= {COMMON_SHARE} * q.n GROUP BY signal),
        s AS (SELECT q.*, greatest(q95 - q05, coalesce(span, 0), 0.1 * greatest(abs(q05), abs(q95))) AS s0
              FROM q LEFT JOIN common USING (signal))
        SELECT signal, n, q05 - {OUTLIER_K} * (CASE WHEN s0 > 0 THEN s0 ELSE 1.0 END) AS lower_bound,
               q95 + {OUTLIER_K} * (CASE WHEN s0 > 0 THEN s0 ELSE 1.0 END) AS upper_bound FROM s""")
    for r in _rows(con, """
            SELECT r.signal, count(*) AS bad, any_value(b.n) AS n, min(r.step) AS first_step, min(r.value) AS lo,
                   max(r.value) AS hi, any_value(b.lower_bound) AS lower_bound, any_value(b.upper_bound) AS upper_bound
            FROM rl r JOIN bands b USING (signal)
            WHERE isfinite(r.value) AND (r.value < b.lower_bound OR r.value > b.upper_bound)
            GROUP BY r.signal ORDER BY r.signal"""):
        share = r["bad"] / r["n"]
        severity = "high" if share >= 0.01 else "medium" if r["bad"] >= 3 else "low"
        lo, hi = r["lower_bound"], r["upper_bound"]
        out.append(_finding(
            run, r["signal"], "out_of_range", severity,
            f"reward signal {r['signal']} has values far out of range ({share:.2%} of rollouts)",
            f"{r['bad']} rollout(s) scored outside [{lo:.3g}, {hi:.3g}] (min {r['lo']:.3g}, max {r['hi']:.3g}), "
            f"from step {r['first_step']}: a scale or parsing bug; each such score dominates its group's "
            "advantages.", share, r["bad"], r["first_step"],
            _evidence(con, r["signal"], f"r.value < {lo!r} OR r.value > {hi!r}", "out-of-range score"),
            bounds=[lo, hi], min=r["lo"], max=r["hi"]))
    return out
