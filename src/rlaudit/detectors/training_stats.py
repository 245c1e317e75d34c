"""Per-part statistics for `training_health` (cached per part by `partstats`), so a warm audit reads small
tables instead of every rollout.

One table per stored part, keyed by `split` and `step` (any audit scope filters it), with three kinds of rows:

- kind 0, prompt groups (rows with a `group_id` and a finite reward): `rf` rows, `lo`, `hi`, `mean`, `sd`
  (sample, 0 for one row) of the reward, `has_adv`, and the sums `s1` = sum |a|, `s2` = sum a^2 of the advantages
  (the logged one, else (r - mean) / (sd + 1e-4)) that the ESS check needs. These are exact for a group whose rows
  all lie in one part, which is how trainers log; `split_groups` says when a group spans parts (the detector then
  computes the zero-variance check from the rollouts).
- kind 1, length cells per condition and cluster (`gkey`: the group, else the rollout): rows `n`, sums of
  characters `clen`, `clen2` and of metadata token counts `tlen`, `tlen2` with the rows that have one `tn`, the
  metadata length limit (`mx_n`, `mx_lo`, `mx_hi`), rows with an end or finish marker (`mk_c`; `mk_t` adds a
  known limit) and truncated rows (`tr_c` in characters; `tr_t` with token counts against the limit).
  A run without group ids has one cell per rollout: the cache is then as long as the run (still read once,
  instead of parsing every rollout's metadata again).
- kind 2, per reward signal (`total` marks the total `reward`): finite rows `n`, their mean `m` and sample
  standard deviation `sd`. Steps whose rows span parts are merged exactly (Chan's pooled variance).
- kind 3, the total reward's distinct finite values `value` with their rows `n`, for a (split, step) with at
  most `DISCRETE_MAX` + 1 of them; a busier one has a single row with `value` NULL.
- kind 4, the total reward's finite values in the logarithmic buckets of `reward_stats` (`sgn`, `b`), rows `n`.

Kinds 3 and 4 give the reward's q05 / q95 that split zero-variance groups into all-correct and all-wrong
(`reward_quantiles`): exact where every step of the scope has few distinct rewards (binary or graded rewards, the
runs where groups are constant), else from the merged sketch within a relative error of `reward_stats.ALPHA`
(~1%), as `reward_health`'s bounds. Before, a t-digest over every reward of the run was computed on every audit.

Everything `training_health` computes from the rollouts comes from these tables, except the evidence rows. A
tokenizer or a `max_tokens` option changes the lengths, so the detector computes those audits from the rollouts,
as before.
"""

from __future__ import annotations

import duckdb

import math

from ..health.lengths import MAX_SQL, TOKENS_SQL
from ..partstats import PartStats, define
from .reward_stats import DISCRETE_MAX, MID_SQL, bucket_sql

VERSION = 2
_META = "CASE WHEN json_valid(metadata) THEN metadata END"
_MARK = ("(_reasoned OR _think OR "
         + " OR ".join(f"json_extract_string({_META}, '$.{k}') IS NOT NULL"
                       for k in ("finish_reason", "stop_reason", "is_truncated", "truncated")) + ")")
_CUT = f"""(
    (_reasoned AND _unanswered AND NOT _think)
    OR coalesce(lower(json_extract_string({_META}, '$.finish_reason')), '') = 'length'
    OR coalesce(lower(json_extract_string({_META}, '$.stop_reason')), '') = 'length'
    OR coalesce(json_extract_string({_META}, '$.is_truncated'), '') = 'true'
    OR coalesce(json_extract_string({_META}, '$.truncated'), '') = 'true')"""
#: what the query reads of the completion, its reasoning and its answer (not the texts: `partstats.Kind`)
_TEXT = ("length(completion)::DOUBLE AS _clen", "completion LIKE '%</think>%' AS _think",
         "_has_reasoning AS _reasoned", "_empty_answer AS _unanswered")

PART_SQL = f"""
WITH base AS MATERIALIZED (
    SELECT _part, split, step, condition, group_id, _gkey AS gkey, reward, advantage,
           _clen AS clen, {TOKENS_SQL} AS tlen, {MAX_SQL} AS tmax, {_MARK} AS mk, {_CUT} AS cut
    FROM src),
g AS (SELECT _part, split, step, group_id, count(*) AS rf, min(reward) AS lo, max(reward) AS hi, avg(reward) AS mean,
             coalesce(stddev_samp(reward), 0) AS sd, max(advantage IS NOT NULL) AS has_adv
      FROM base WHERE group_id IS NOT NULL AND isfinite(reward) GROUP BY _part, split, step, group_id),
ess AS (SELECT g._part, g.split, g.step, g.group_id,
               sum(abs(coalesce(b.advantage, (b.reward - g.mean) / (g.sd + 1e-4)))) AS s1,
               sum(coalesce(b.advantage, (b.reward - g.mean) / (g.sd + 1e-4)) ^ 2) AS s2
        FROM base b JOIN g USING (_part, split, step, group_id) WHERE isfinite(b.reward)
        GROUP BY g._part, g.split, g.step, g.group_id),
rv AS (SELECT _part, split, step, reward AS value, count(*) AS n FROM base WHERE isfinite(reward) GROUP BY ALL),
-- the values per step by a grouped count joined back, not a window (count(*) OVER (PARTITION BY ...) sorted every
-- distinct value: 1.05 -> 0.92 CPU s of this query over the 1M benchmark's parts)
rvd AS (SELECT * FROM rv JOIN (SELECT _part, split, step, count(*) AS d FROM rv GROUP BY ALL) USING (_part, split, step)),
sig AS (SELECT _part, split, step, unnest(map_keys(rewards)) AS signal, FALSE AS total,
               unnest(map_values(rewards)) AS v FROM src
        UNION ALL SELECT _part, split, step, NULL, TRUE, reward FROM src)
SELECT 0::TINYINT AS kind, g.*, ess.s1, ess.s2 FROM g JOIN ess USING (_part, split, step, group_id)
UNION ALL BY NAME
SELECT 1::TINYINT AS kind, _part, split, step, condition, gkey, count(*) AS n, sum(clen) AS clen,
       sum(clen ^ 2) AS clen2, sum(tlen) AS tlen, sum(tlen ^ 2) AS tlen2, count(tlen) AS tn, count(tmax) AS mx_n,
       min(tmax) AS mx_lo, max(tmax) AS mx_hi, count(*) FILTER (WHERE mk) AS mk_c,
       count(*) FILTER (WHERE mk OR tmax IS NOT NULL) AS mk_t, count(*) FILTER (WHERE cut) AS tr_c,
       count(*) FILTER (WHERE coalesce(tlen >= tmax, false) OR cut) AS tr_t
FROM base GROUP BY _part, split, step, condition, gkey
UNION ALL BY NAME
SELECT 2::TINYINT AS kind, _part, split, step, signal, total, count(*) AS n, avg(v) AS m,
       coalesce(stddev_samp(v), 0) AS sd
FROM sig WHERE isfinite(v) GROUP BY _part, split, step, signal, total
UNION ALL BY NAME
SELECT 3::TINYINT AS kind, _part, split, step, CASE WHEN d <= {DISCRETE_MAX + 1} THEN value END AS value,
       sum(n)::BIGINT AS n
FROM rvd GROUP BY _part, split, step, CASE WHEN d <= {DISCRETE_MAX + 1} THEN value END
UNION ALL BY NAME
SELECT 4::TINYINT AS kind, _part, split, step, sign(reward)::TINYINT AS sgn, {bucket_sql("reward")} AS b,
       count(*) AS n
FROM base WHERE isfinite(reward) GROUP BY _part, split, step, sign(reward), {bucket_sql("reward")}
"""
# the rollout id only where there is no group id (`partstats` reads a batch into a table: ids are long)
KIND = define("training_health", VERSION, PART_SQL, ("split", "step", "condition", "group_id",
                                                     "coalesce(group_id, rollout_id) AS _gkey", "reward",
                                                     "advantage", "metadata", "rewards", *_TEXT))


def register_training_stats(con: duckdb.DuckDBPyConnection, stats: PartStats, scope: str, eval_scope: str) -> None:
    """Create the temp tables `ts_groups` (kind 0), `ts_cells` (kind 1) within `scope`, and `ts_signals`
    (kind 2, merged per step and signal: within `scope`, and split 'eval' within `eval_scope` as `ts_eval`), from
    the run's parts `stats` (`part_stats` of `KIND`)."""
    stats.register(con, "ts_parts")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ts_groups AS
        SELECT step, group_id, rf, lo, hi, mean, sd, has_adv, s1, s2 FROM ts_parts WHERE kind = 0 AND {scope}""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ts_cells AS
        SELECT step, condition, gkey, n, clen, clen2, tlen, tlen2, tn, mx_n, mx_lo, mx_hi, mk_c, mk_t, tr_c, tr_t
        FROM ts_parts WHERE kind = 1 AND {scope}""")
    for name, where in (("ts_signals", scope), ("ts_eval", f"split = 'eval' AND {eval_scope}")):
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {_merged_signals(where)}")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ts_reward_values AS
        SELECT value, sum(n) AS n FROM ts_parts WHERE kind = 3 AND {scope} GROUP BY value""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ts_reward_sketch AS
        SELECT {MID_SQL} AS mid, sum(n) AS n FROM ts_parts WHERE kind = 4 AND {scope} GROUP BY sgn, b""")


def reward_quantiles(con: duckdb.DuckDBPyConnection, qs: tuple[float, ...]) -> dict[float, float] | None:
    """The scope's finite total reward at each quantile q of `qs` (the value of rank floor(q (n - 1)), 0-based:
    numpy's 'lower' quantile), or None without such rows: exact from the merged values of kind 3 when no step
    of the scope had more than DISCRETE_MAX + 1 of them, else the midpoint of the sketch's bucket holding that
    rank (kind 4), within `reward_stats.ALPHA` of the exact value, relative."""
    values = con.execute("SELECT value, n FROM ts_reward_values ORDER BY value NULLS FIRST").fetchall()
    if not values:
        return None
    if values[0][0] is None:
        values = con.execute("SELECT mid, n FROM ts_reward_sketch ORDER BY mid").fetchall()
    return lower_quantiles(values, qs)


def lower_quantiles(counted: list[tuple[float, int]], qs: tuple[float, ...]) -> dict[float, float]:
    """Each quantile q of `qs` (rank floor(q (n - 1)), 0-based) of the values `counted` (value, rows), sorted."""
    total = sum(int(n) for _, n in counted)
    out: dict[float, float] = {}
    cum = 0
    for value, n in counted:
        cum += int(n)
        for q in qs:
            if q not in out and cum > math.floor(q * (total - 1)):
                out[q] = float(value)
    return out


def _merged_signals(where: str) -> str:
    """Per step and signal: rows, mean and sample SD pooled over the rows of kind 2 (several when a step spans
    parts or splits; one row is passed through unchanged)."""
    return f"""
        WITH s AS (SELECT step, signal, total, n, m, sd, sum(n * m) OVER w / sum(n) OVER w AS gm,
                          count(*) OVER w AS k
                   FROM ts_parts WHERE kind = 2 AND {where}
                   WINDOW w AS (PARTITION BY step, signal, total))
        SELECT step, signal, total, sum(n) AS n,
               CASE WHEN any_value(k) = 1 THEN any_value(m) ELSE any_value(gm) END AS m,
               CASE WHEN any_value(k) = 1 THEN any_value(sd) WHEN sum(n) < 2 THEN 0 ELSE
                    sqrt((sum((n - 1) * sd * sd) + sum(n * (m - gm) ^ 2)) / (sum(n) - 1)) END AS sd
        FROM s GROUP BY step, signal, total"""


def split_groups(con: duckdb.DuckDBPyConnection) -> bool:
    """True when some prompt group (step, group_id) has rows in more than one part (or split) of the scope."""
    return bool(con.execute("SELECT count(*) FROM (SELECT step, group_id FROM ts_groups GROUP BY ALL "
                            "HAVING count(*) > 1)").fetchone()[0])
