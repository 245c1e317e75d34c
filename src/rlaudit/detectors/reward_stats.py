"""Per-part statistics of the reward signals, for `reward_health` (cached per part by `partstats`).

One table per stored part, with three kinds of rows, all keyed by `split` and `step` (so any audit scope can
filter them) and `signal`:

- kind 0, cells: per condition and task (the prompt's hash where no task is logged) the rows `n`, NaN rows
  `nan`, infinite rows `inf`, finite rows `finite`, and the finite minimum `lo` and maximum `hi`. Summed, they
  give every count of the `non_finite`, `nan` and `constant`/`stuck` checks exactly.
- kind 1, values: the distinct finite values `value` with their rows `n`, for a (split, step, signal) with at
  most `DISCRETE_MAX` + 1 distinct values; a busier one has a single row with `value` NULL. A signal is discrete
  when none of its rows is NULL and at most `DISCRETE_MAX` values remain after merging (an exact count).
- kind 2, sketch: finite values in logarithmic buckets (`sgn`, `b`: sign and ceil(log_gamma |v|); zero alone),
  with their rows `n`. Merged, the buckets give the q05 / q95 of `out_of_range` with a relative error of at most
  ALPHA = (gamma - 1) / (gamma + 1) (a bucket's midpoint 2 gamma^b / (gamma + 1) is within ALPHA of every value
  of (gamma^(b-1), gamma^b]; the rank is exact): a DDSketch, mergeable by adding counts, unlike a t-digest.

Which rows lie out of the resulting bounds is counted exactly, on the rollouts of the steps whose cell minimum
or maximum crosses a bound (none, in a healthy run).
"""

from __future__ import annotations

import math

from pathlib import Path

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from ..derived import grouped
from ..derived.partstats import CompiledKind, PartStats, define, each_signal, scope_sql
from ..store import sql_when

VERSION = 1
GAMMA = 1.02
ALPHA = (GAMMA - 1) / (GAMMA + 1)  # ~0.0099
DISCRETE_MAX = 64
#: a cell (signal, condition, task) applies where at least this share of its rows is not NaN (`reward_health`)
APPLIES_MIN = 0.5
APPLIES = f"n - nan >= {APPLIES_MIN} * n"

#: a cell's task: the logged task, else the prompt, hashed
TASK_SQL = "CASE WHEN task IS NOT NULL THEN hash(task) ELSE hash('prompt:', prompt) END"
#: one row per rollout and signal (a signal missing from a rollout's map did not score it: NaN)
_RL = ("unnest(map_keys(rewards)) AS signal, coalesce(unnest(map_values(rewards)), 'NaN'::DOUBLE) AS value, "
       "coalesce(condition, '') AS condition, ")
RL_COLUMNS = f"{_RL}{TASK_SQL} AS task"
RL_SQL = f"SELECT rollout_id, step, {RL_COLUMNS} FROM rollouts"



def finite_sql(value: str) -> str:
    """`value` where it is finite, else NULL: aggregated, the aggregate over the finite values (`store.sql_when`)."""
    return sql_when(f"isfinite({value})", value)


def bucket_sql(value: str) -> str:
    """The sketch's bucket b of a finite value (with its sign: zero alone, b = 0)."""
    return f"CASE WHEN {value} = 0 THEN 0 ELSE ceil(ln(abs({value})) / {math.log(GAMMA)!r})::INTEGER END"


#: a bucket's midpoint, within ALPHA of every value in it (the module doc)
MID_SQL = f"CASE WHEN sgn = 0 THEN 0.0 ELSE sgn * 2 * pow({GAMMA!r}, b) / {GAMMA + 1!r} END"

#: Kind 1 needs the distinct values only where there are few: a (part, split, step, signal) whose finite values
#: fill more than DISCRETE_MAX + 1 sketch buckets has more distinct values than that (each bucket holds at least
#: one), so its single NULL row is written from the sketch, and only the others are grouped by value (the group by
#: every value of a continuous signal was the query's largest cost). Each signal is a column of `src`
#: (`partstats.SIGNAL_COLUMNS`): kind 0 aggregates every signal's column in one group-by of the batch's rollouts
#: (one row each, not one per rollout and signal), the sketch and the values are a group-by per signal (the values
#: of the steps with few buckets, `calm`, by a semi-join: an anti-join with the busy ones probed every rollout of a
#: continuous signal, ~0.015 CPU s a batch of 160,000 rollouts)
def part_sql(signals: tuple[str, ...]) -> str:
    """The kinds of the module doc over a batch whose signals are `signals` (a rollout without a signal has no
    row of it; a NULL value counts as NaN)."""
    def nan(i: int) -> str:
        return f"(_r{i} IS NULL OR isnan(_r{i}))"

    slots = ", ".join(f"count({sql_when(f'_h{i}')}) AS n{i}, count({sql_when(f'_h{i} AND {nan(i)}')}) AS nan{i}, "
                      f"count({sql_when(f'isinf(_r{i})')}) AS inf{i}, count({finite_sql(f'_r{i}')}) AS finite{i}, "
                      f"min({finite_sql(f'_r{i}')}) AS lo{i}, max({finite_sql(f'_r{i}')}) AS hi{i}"
                      for i in range(len(signals)))
    cells = each_signal(signals, lambda i, name: (
        f"SELECT _part, 0::TINYINT AS kind, split, step, {name} AS signal, condition, task, n{i} AS n, "
        f"nan{i} AS nan, inf{i} AS inf, finite{i} AS finite, lo{i} AS lo, hi{i} AS hi, NULL::DOUBLE AS value, "
        f"NULL::TINYINT AS sgn, NULL::INTEGER AS b FROM cells WHERE n{i} > 0"))
    sketch = each_signal(signals, lambda i, name: (
        f"SELECT _part, split, step, {name} AS signal, sign(_r{i})::TINYINT AS sgn, {bucket_sql(f'_r{i}')} AS b, "
        f"count(*) AS n FROM src WHERE isfinite(_r{i}) GROUP BY _part, split, step, sign(_r{i}), "
        f"{bucket_sql(f'_r{i}')}"))
    values = each_signal(signals, lambda i, name: (
        f"SELECT _part, split, step, {name} AS signal, _r{i} AS value, count(*) AS n "
        f"FROM src SEMI JOIN (SELECT _part, split, step FROM calm WHERE signal = {name}) USING (_part, split, step) "
        f"WHERE isfinite(_r{i}) GROUP BY _part, split, step, _r{i}"))
    return f"""
WITH cells AS (SELECT _part, split, step, coalesce(condition, '') AS condition, _task AS task, {slots}
               FROM src GROUP BY _part, split, step, coalesce(condition, ''), _task),
sk AS MATERIALIZED ({sketch}),
busy AS MATERIALIZED (SELECT _part, split, step, signal, sum(n)::BIGINT AS n FROM sk GROUP BY _part, split, step, signal
                      HAVING count(*) > {DISCRETE_MAX + 1}),
calm AS MATERIALIZED (SELECT _part, split, step, signal FROM sk GROUP BY _part, split, step, signal
                      HAVING count(*) <= {DISCRETE_MAX + 1}),
v AS ({values}),
vd AS (SELECT *, count(*) OVER (PARTITION BY _part, split, step, signal) AS d FROM v)
{cells}
UNION ALL
SELECT _part, 1::TINYINT, split, step, signal, NULL, NULL, sum(n)::BIGINT, NULL, NULL, NULL, NULL, NULL,
       CASE WHEN d <= {DISCRETE_MAX + 1} THEN value END, NULL, NULL
FROM vd GROUP BY _part, split, step, signal, CASE WHEN d <= {DISCRETE_MAX + 1} THEN value END
UNION ALL
SELECT _part, 1::TINYINT, split, step, signal, NULL, NULL, n, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM busy
UNION ALL
SELECT _part, 2::TINYINT, split, step, signal, NULL, NULL, n, NULL, NULL, NULL, NULL, NULL, NULL, sgn, b FROM sk
"""


def part_arrow(keys: Any, signals: tuple[str, ...], schema: pa.Schema) -> pa.Table:
    """`part_sql`'s rows from the batch's columns (`partstats.CompiledKind`; `grouped.Keys` of its rows)."""
    pieces = []
    keys.coalesced("condition", "_cond")
    ids, first = keys.groups(*grouped.STEP, "_cond", "_task")
    g = len(first)
    cells = {**grouped.keyed(keys, grouped.STEP, first), "condition": keys.take("_cond", first),
             "task": keys.take("_task", first)}
    for i, name in enumerate(signals):
        r, _ = keys.floats(f"_r{i}")
        h, _ = keys.bools(f"_h{i}")
        finite = np.isfinite(r)
        n = grouped.count(ids, g, h)
        lo, hi = grouped.extremes(ids, g, r, finite)
        piece = {**cells, "kind": 0, "signal": name, "n": n, "nan": grouped.count(ids, g, h & np.isnan(r)),
                 "inf": grouped.count(ids, g, np.isinf(r)), "finite": grouped.count(ids, g, finite), "lo": lo, "hi": hi}
        pieces.append((int((n > 0).sum()), grouped.pick(piece, n > 0)))
        sketch, values = sketch_and_values(keys, r, finite)
        for rows, columns in ((sketch, {"kind": 2}), (values, {"kind": 1})):
            pieces.append((len(rows["n"]), {**rows, **columns, "signal": name}))
    return grouped.table(schema, pieces)


def sketch_and_values(keys: Any, x: np.ndarray, finite: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """Of the `finite` values x of a batch's rows, per (_part, split, step): the sketch's buckets with their rows
    (`sgn`, `b`, `n`) and the distinct values with their rows (`value`, `n`), or a single row with `value` NULL
    and every finite row where there are more than DISCRETE_MAX + 1 of them (`part_sql`'s kinds 2 and 1; the
    total reward's kinds 4 and 3 of `training_stats`), each with its step's `_part`, `split` and `step`."""
    step_of, step_first = keys.groups(*grouped.STEP)
    steps = len(step_first)
    bucket_first, bucket_n = grouped.bucket_groups(step_of, steps, x, finite, GAMMA)
    sgn, b = grouped.buckets(x[bucket_first], np.ones(len(bucket_first), bool), GAMMA)
    sketch = {**grouped.keyed(keys, grouped.STEP, bucket_first), "sgn": sgn, "b": b, "n": bucket_n}
    busy = np.bincount(step_of[bucket_first], minlength=steps) > DISCRETE_MAX + 1
    per_step = np.bincount(step_of[bucket_first], weights=bucket_n, minlength=steps).astype(np.int64)
    calm = finite & ~busy[step_of]
    value = x + 0.0  # -0.0 and 0.0 are one value, as SQL groups them
    _, pair_first, pair_n = grouped.pairs(step_of, value.view(np.int64), calm)
    distinct = np.bincount(step_of[pair_first], minlength=steps)
    listed = distinct[step_of[pair_first]] <= DISCRETE_MAX + 1
    # a step with too many values: one row of its finite rows, value NULL (busy ones by their buckets)
    many = np.flatnonzero((busy | (distinct > DISCRETE_MAX + 1)) & (per_step > 0))
    value_rows = np.concatenate([pair_first[listed], step_first[many]])
    values = {**grouped.keyed(keys, grouped.STEP, value_rows),
              "value": pa.array(np.concatenate([value[pair_first[listed]], np.zeros(len(many))]),
                                mask=np.arange(len(value_rows)) >= listed.sum()),
              "n": np.concatenate([pair_n[listed], per_step[many]])}
    return sketch, values


# the task's hash, not the prompt (`partstats` reads a batch into a table: prompts are long)
KIND = define("reward_health", VERSION, part_sql, ("split", "step", "rewards", "condition", f"{TASK_SQL} AS _task"),
              CompiledKind(tuple((c, c) for c in ("_part", "split", "step", "condition", "_task")), part_arrow))


def register_reward_stats(con: duckdb.DuckDBPyConnection, stats: PartStats, root: Path, max_step: int | None,
                          split: str | None) -> None:
    """Create, merged over the run's parts within the audit's scope (steps <= `max_step`, rows of `split`), the
    temp tables
    `rh_steps` (step, signal: rows `n`, `nan`, `inf`, `finite`, finite minimum `lo` and maximum `hi`),
    `rh_values` and `rh_sketch` (the kinds 1 and 2 of the module doc, per signal), `rh_nan` (signal, `nan`, `n`,
    `first_step` over the cells where the signal applies, for the signals with NaN there) and `rh_cells` (the
    kind-0 rows: step, signal, condition, task, n, nan, inf, finite, lo, hi).

    An audit of one split of the whole run (no `max_step`: the default) reads the run-level rollups of
    `reward_rollup` and the parts added since (O(new parts)); `rh_cells` is then a view over the per-part rows,
    read only for evidence. Other scopes merge every part's rows. `stats`: the run's `part_stats` of `KIND`;
    `root`: the store's, for the rollups' spill directory."""
    stats.register(con, "rh_parts")
    scope = scope_sql(max_step, split)
    cells = "SELECT step, signal, condition, task, n, nan, inf, finite, lo, hi FROM rh_parts WHERE kind = 0"
    if max_step is None and split:
        from .reward_rollup import register_rollup

        register_rollup(con, stats, root, split)
        con.execute(f"CREATE OR REPLACE TEMP VIEW rh_cells AS {cells} AND {scope}")
        return
    con.execute(f"CREATE OR REPLACE TEMP TABLE rh_cells AS {cells} AND {scope}")
    con.execute("""CREATE OR REPLACE TEMP TABLE rh_steps AS
        SELECT step, signal, sum(n) AS n, sum(nan) AS nan, sum(inf) AS inf, sum(finite) AS finite, min(lo) AS lo,
               max(hi) AS hi FROM rh_cells GROUP BY step, signal""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rh_values AS
        SELECT signal, value, sum(n) AS n
        FROM rh_parts WHERE kind = 1 AND {scope} GROUP BY signal, value""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rh_sketch AS
        {sketch_sql(f"(SELECT signal, sgn, b, n FROM rh_parts WHERE kind = 2 AND {scope})")}""")
    register_cells(con)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rh_nan AS
        SELECT signal, sum(nan) AS nan, sum(n) AS n, min(first_step) AS first_step
        FROM cells WHERE {APPLIES} GROUP BY signal HAVING sum(nan) > 0""")


def register_cells(con: duckdb.DuckDBPyConnection) -> None:
    """The temp table `cells`: `rh_cells` summed per signal, condition and task, with the first step with NaN
    (once per connection: an audit of the whole run needs it only for the evidence of a `nan` finding)."""
    con.execute(f"""CREATE TEMP TABLE IF NOT EXISTS cells AS
        SELECT signal, condition, task, sum(n) AS n, sum(nan) AS nan,
               min({sql_when('nan > 0', 'step')}) AS first_step
        FROM rh_cells GROUP BY ALL""")


def sketch_sql(buckets: str) -> str:
    """The sketch's buckets `buckets` (signal, sgn, b, n) summed per signal and bucket, with their midpoints."""
    return f"SELECT signal, {MID_SQL} AS mid, sum(n) AS n FROM {buckets} GROUP BY signal, sgn, b"


def quantiles(con: duckdb.DuckDBPyConnection, qs: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """Per signal, the rows `n` and the sketch's estimate of each quantile q in `qs` (the bucket holding the
    value of rank floor(q (n - 1)), 0-based: numpy's 'lower' quantile), within ALPHA of the exact value."""
    out: dict[str, dict[str, float]] = {}
    rows = con.execute("""SELECT signal, mid, n, sum(n) OVER (PARTITION BY signal ORDER BY mid) AS cum,
                                 sum(n) OVER (PARTITION BY signal) AS total
                          FROM rh_sketch ORDER BY signal, mid""").fetchall()
    for signal, mid, _n, cum, total in rows:
        d = out.setdefault(signal, {"n": int(total)})
        for q in qs:
            if q not in d and cum > math.floor(q * (total - 1)):
                d[q] = float(mid)
    return out
