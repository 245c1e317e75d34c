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

Everything `training_health` computes from the rollouts comes from these sums, except the reward's q05/q95
(a t-digest over one column) and the evidence rows. A tokenizer or a `max_tokens` option changes the lengths,
so the detector computes those audits from the rollouts, as before.
"""

from __future__ import annotations

import duckdb

from ..health.lengths import MAX_SQL, TOKENS_SQL
from ..partstats import part_stats
from ..store import Store

VERSION = 1
_META = "CASE WHEN json_valid(metadata) THEN metadata END"
_MARK = ("(reasoning IS NOT NULL OR completion LIKE '%</think>%' OR "
         + " OR ".join(f"json_extract_string({_META}, '$.{k}') IS NOT NULL"
                       for k in ("finish_reason", "stop_reason", "is_truncated", "truncated")) + ")")
_CUT = f"""(
    (reasoning IS NOT NULL AND coalesce(answer, '') = '' AND completion NOT LIKE '%</think>%')
    OR coalesce(lower(json_extract_string({_META}, '$.finish_reason')), '') = 'length'
    OR coalesce(lower(json_extract_string({_META}, '$.stop_reason')), '') = 'length'
    OR coalesce(json_extract_string({_META}, '$.is_truncated'), '') = 'true'
    OR coalesce(json_extract_string({_META}, '$.truncated'), '') = 'true')"""

PART_SQL = f"""
WITH base AS MATERIALIZED (
    SELECT _part, split, step, condition, group_id, coalesce(group_id, rollout_id) AS gkey, reward, advantage,
           length(completion)::DOUBLE AS clen, {TOKENS_SQL} AS tlen, {MAX_SQL} AS tmax, {_MARK} AS mk, {_CUT} AS cut
    FROM src),
g AS (SELECT _part, split, step, group_id, count(*) AS rf, min(reward) AS lo, max(reward) AS hi, avg(reward) AS mean,
             coalesce(stddev_samp(reward), 0) AS sd, max(advantage IS NOT NULL) AS has_adv
      FROM base WHERE group_id IS NOT NULL AND isfinite(reward) GROUP BY _part, split, step, group_id),
ess AS (SELECT g._part, g.split, g.step, g.group_id,
               sum(abs(coalesce(b.advantage, (b.reward - g.mean) / (g.sd + 1e-4)))) AS s1,
               sum(coalesce(b.advantage, (b.reward - g.mean) / (g.sd + 1e-4)) ^ 2) AS s2
        FROM base b JOIN g USING (_part, split, step, group_id) WHERE isfinite(b.reward)
        GROUP BY g._part, g.split, g.step, g.group_id),
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
"""


def register_training_stats(con: duckdb.DuckDBPyConnection, store: Store, run: str, scope: str,
                            eval_scope: str) -> None:
    """Create the temp tables `ts_groups` (kind 0), `ts_cells` (kind 1) within `scope`, and `ts_signals`
    (kind 2, merged per step and signal: within `scope`, and split 'eval' within `eval_scope` as `ts_eval`)."""
    part_stats(store, run, "training_health", VERSION, PART_SQL).register(con, "ts_parts")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ts_groups AS
        SELECT step, group_id, rf, lo, hi, mean, sd, has_adv, s1, s2 FROM ts_parts WHERE kind = 0 AND {scope}""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ts_cells AS
        SELECT step, condition, gkey, n, clen, clen2, tlen, tlen2, tn, mx_n, mx_lo, mx_hi, mk_c, mk_t, tr_c, tr_t
        FROM ts_parts WHERE kind = 1 AND {scope}""")
    for name, where in (("ts_signals", scope), ("ts_eval", f"split = 'eval' AND {eval_scope}")):
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {_merged_signals(where)}")


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
