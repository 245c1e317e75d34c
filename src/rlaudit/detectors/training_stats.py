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

- kinds 5-8, per step, so that a warm audit reads a few rows per step instead of one per group and cell (1.25M
  each at 10M rollouts; copying and grouping them was ~1.5 of training_health's 1.8 CPU s): kind 5 per (split,
  step) the groups of >= 2 rows `g2`, the varying ones `gv` with their rows `gv_n`, smallest spread `gv_min`
  and ESS sums `s1`, `s2`; kind 6 the constant groups `z_n` by their value `z_lo`; kind 7 per (split, step,
  condition) kind 1's sums with the length ratio's cluster sums (`c_g` clusters, `c_nn`, `c_xx`, `c_xn`,
  `t_xx`, `t_xn`) and `c_local` (every cluster key names its step, `<step>:...`, as the readers name groups);
  kind 8 per (split, step, condition, signal) the rows whose value is not NaN (`applies`: generalization's
  signals that apply in one condition). `zero_steps` and `clusters_local` say when they answer exactly; else
  the detector reads kinds 0 and 1 as before.

The small kinds (`SMALL`: every kind but 0 and 1) of the combined file's parts are also kept in one file beside
it (`_small_rollup`), so a warm audit does not scan the combined file's rows of every kind.

Kinds 3 and 4 give the reward's q05 / q95 that split zero-variance groups into all-correct and all-wrong
(`reward_quantiles`): exact where every step of the scope has few distinct rewards (binary or graded rewards, the
runs where groups are constant), else from the merged sketch within a relative error of `reward_stats.ALPHA`
(~1%), as `reward_health`'s bounds. Before, a t-digest over every reward of the run was computed on every audit.

Everything `training_health` computes from the rollouts comes from these tables, except the evidence rows. A
tokenizer or a `max_tokens` option changes the lengths, so the detector computes those audits from the rollouts,
as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from pathlib import Path

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..health.lengths import MAX_SQL, TOKENS_SQL
from ..derived import grouped
from ..derived.partstats import COMPACT_MEMORY, CompiledKind, PartStats, define, each_signal
from .. import duck
from ..store import sql_string, sql_when, write_atomic
from .reward_stats import DISCRETE_MAX, MID_SQL, bucket_sql, finite_sql, sketch_and_values

VERSION = 4
_META = "CASE WHEN json_valid(metadata) THEN metadata END"


def _with_metadata(sql: str, otherwise: str) -> str:
    """`sql`, a test of the metadata, evaluated only where a rollout has metadata (`otherwise`: its value without):
    a CASE branch runs on its own rows only, and the ~15 JSON tests of every rollout without metadata (NULL each)
    cost ~0.03 CPU s per 160,000 rollouts."""
    return f"CASE WHEN metadata IS NULL THEN {otherwise} ELSE ({sql}) END"


_MARK = ("(_reasoned OR _think OR "
         + _with_metadata(" OR ".join(f"json_extract_string({_META}, '$.{k}') IS NOT NULL"
                                      for k in ("finish_reason", "stop_reason", "is_truncated", "truncated")),
                          "FALSE") + ")")
_CUT_META = f"""coalesce(lower(json_extract_string({_META}, '$.finish_reason')), '') = 'length'
    OR coalesce(lower(json_extract_string({_META}, '$.stop_reason')), '') = 'length'
    OR coalesce(json_extract_string({_META}, '$.is_truncated'), '') = 'true'
    OR coalesce(json_extract_string({_META}, '$.truncated'), '') = 'true'"""
_CUT = f"((_reasoned AND _unanswered AND NOT _think) OR {_with_metadata(_CUT_META, 'FALSE')})"
#: what the query reads of the completion, its reasoning and its answer (not the texts: `partstats.Kind`; the
#: completion's length and `</think>` test are kept in the part, `layout.FACTS`)
_TEXT = ("_completion_chars::DOUBLE AS _clen", "_think_close AS _think",
         "_has_reasoning AS _reasoned", "_empty_answer AS _unanswered")


def part_sql(signals: tuple[str, ...]) -> str:
    """The kinds of the module doc over a batch whose signals are `signals` (`partstats.SIGNAL_COLUMNS`: kinds 2
    and 8 aggregate each signal's column per step, in one group-by of the batch's rollouts each, and a signal
    has rows where a rollout has it)."""
    moments = ", ".join(f"count({finite_sql(f'_r{i}')}) AS n{i}, avg({finite_sql(f'_r{i}')}) AS m{i}, "
                        f"coalesce(stddev_samp({finite_sql(f'_r{i}')}), 0) AS sd{i}" for i in range(len(signals)))
    per_signal = each_signal(signals, lambda i, name: (
        f"SELECT 2::TINYINT AS kind, _part, split, step, {name} AS signal, FALSE AS total, n{i} AS n, m{i} AS m, "
        f"sd{i} AS sd FROM moments WHERE n{i} > 0"))
    def valued(i: int) -> str:
        return sql_when(f"_r{i} IS NOT NULL AND NOT isnan(_r{i})")

    applies = ", ".join(f"count({sql_when(f'_h{i}')}) AS h{i}, count({valued(i)}) AS a{i}" for i in range(len(signals)))
    varied = "rf >= 2 AND hi > lo"  # a group of two or more rollouts whose rewards differ
    per_condition = each_signal(signals, lambda i, name: (
        f"SELECT 8::TINYINT AS kind, _part, split, step, condition, {name} AS signal, a{i} AS applies "
        f"FROM applies WHERE h{i} > 0"))
    return f"""
WITH base AS MATERIALIZED (
    SELECT _part, split, step, condition, group_id, _gkey AS gkey, reward, advantage,
           _clen AS clen, {_with_metadata(TOKENS_SQL, 'NULL')} AS tlen, {_with_metadata(MAX_SQL, 'NULL')} AS tmax,
           {_MARK} AS mk, {_CUT} AS cut
    FROM src),
g AS MATERIALIZED (
      SELECT _part, split, step, group_id, count(*) AS rf, min(reward) AS lo, max(reward) AS hi, avg(reward) AS mean,
             coalesce(stddev_samp(reward), 0) AS sd, max(advantage IS NOT NULL) AS has_adv,
             count(advantage) AS _na, sum(abs(advantage)) AS _s1, sum(advantage ^ 2) AS _s2
      FROM base WHERE group_id IS NOT NULL AND isfinite(reward) GROUP BY _part, split, step, group_id),
-- the ESS sums need the group's mean only where a row has no logged advantage: the other groups' sums come with
-- their statistics (a join of every row with its group was ~15% of this query)
ess AS (SELECT g._part, g.split, g.step, g.group_id,
               sum(abs(coalesce(b.advantage, (b.reward - g.mean) / (g.sd + 1e-4)))) AS s1,
               sum(coalesce(b.advantage, (b.reward - g.mean) / (g.sd + 1e-4)) ^ 2) AS s2
        FROM base b JOIN (SELECT * FROM g WHERE _na < rf) g USING (_part, split, step, group_id)
        WHERE isfinite(b.reward) GROUP BY g._part, g.split, g.step, g.group_id),
gs AS MATERIALIZED (SELECT g.* EXCLUDE (_na, _s1, _s2), CASE WHEN _na = rf THEN _s1 ELSE ess.s1 END AS s1,
                           CASE WHEN _na = rf THEN _s2 ELSE ess.s2 END AS s2
                    FROM g LEFT JOIN ess USING (_part, split, step, group_id)),
cells AS MATERIALIZED (
    SELECT _part, split, step, condition, gkey, count(*) AS n, sum(clen) AS clen,
           sum(clen ^ 2) AS clen2, sum(tlen) AS tlen, sum(tlen ^ 2) AS tlen2, count(tlen) AS tn, count(tmax) AS mx_n,
           min(tmax) AS mx_lo, max(tmax) AS mx_hi, count({sql_when('mk')}) AS mk_c,
           count({sql_when('mk OR tmax IS NOT NULL')}) AS mk_t, count({sql_when('cut')}) AS tr_c,
           count({sql_when('coalesce(tlen >= tmax, false) OR cut')}) AS tr_t
    FROM base GROUP BY _part, split, step, condition, gkey),
-- kind 4's buckets, and the (part, split, step)s whose rewards fill more than DISCRETE_MAX + 1 of them, so have
-- more distinct values than kind 3 keeps: only the others are grouped by value (as `reward_stats.part_sql`; the
-- group by every value of a continuous reward was this query's largest aggregate)
rb AS MATERIALIZED (SELECT _part, split, step, sign(reward)::TINYINT AS sgn, {bucket_sql("reward")} AS b,
                           count(*) AS n
                    FROM base WHERE isfinite(reward) GROUP BY _part, split, step, sign(reward), {bucket_sql("reward")}),
rbusy AS (SELECT _part, split, step, sum(n)::BIGINT AS n FROM rb GROUP BY _part, split, step
          HAVING count(*) > {DISCRETE_MAX + 1}),
rv AS (SELECT _part, split, step, reward AS value, count(*) AS n FROM base ANTI JOIN rbusy USING (_part, split, step)
       WHERE isfinite(reward) GROUP BY ALL),
-- the values per step by a grouped count joined back, not a window (count(*) OVER (PARTITION BY ...) sorted every
-- distinct value: 1.05 -> 0.92 CPU s of this query over the 1M benchmark's parts)
rvd AS (SELECT * FROM rv JOIN (SELECT _part, split, step, count(*) AS d FROM rv GROUP BY ALL) USING (_part, split, step)),
moments AS (SELECT _part, split, step, count({finite_sql('reward')}) AS n, avg({finite_sql('reward')}) AS m,
                   coalesce(stddev_samp({finite_sql('reward')}), 0) AS sd, {moments}
            FROM src GROUP BY _part, split, step),
applies AS (SELECT _part, split, step, coalesce(condition, '') AS condition, {applies}
            FROM src GROUP BY _part, split, step, coalesce(condition, ''))
SELECT 0::TINYINT AS kind, * FROM gs
UNION ALL BY NAME
SELECT 1::TINYINT AS kind, * FROM cells
UNION ALL BY NAME
SELECT 5::TINYINT AS kind, _part, split, step, count({sql_when('rf >= 2')}) AS g2, count({sql_when(varied)}) AS gv,
       sum({sql_when(varied, 'rf')})::BIGINT AS gv_n, min({sql_when(varied, 'hi - lo')}) AS gv_min,
       sum({sql_when(varied, 's1')}) AS s1, sum({sql_when(varied, 's2')}) AS s2
FROM gs GROUP BY _part, split, step
UNION ALL BY NAME
SELECT 6::TINYINT AS kind, _part, split, step, lo AS z_lo, count(*) AS z_n
FROM gs WHERE rf >= 2 AND hi = lo GROUP BY _part, split, step, lo
UNION ALL BY NAME
SELECT 7::TINYINT AS kind, _part, split, step, condition, sum(n)::BIGINT AS n, sum(clen) AS clen,
       sum(clen2) AS clen2, sum(tlen) AS tlen, sum(tlen2) AS tlen2, sum(tn)::BIGINT AS tn,
       sum(mx_n)::BIGINT AS mx_n, min(mx_lo) AS mx_lo, max(mx_hi) AS mx_hi, sum(mk_c)::BIGINT AS mk_c,
       sum(mk_t)::BIGINT AS mk_t, sum(tr_c)::BIGINT AS tr_c, sum(tr_t)::BIGINT AS tr_t, count(*) AS c_g,
       sum(n::DOUBLE * n) AS c_nn, sum(clen * clen) AS c_xx, sum(clen * n) AS c_xn, sum(tlen * tlen) AS t_xx,
       sum(tlen * n) AS t_xn, bool_and(starts_with(gkey, step::VARCHAR || ':')) AS c_local
FROM cells GROUP BY _part, split, step, condition
UNION ALL BY NAME
SELECT 2::TINYINT AS kind, _part, split, step, NULL::VARCHAR AS signal, TRUE AS total, n, m, sd FROM moments
WHERE n > 0
UNION ALL BY NAME
SELECT * FROM ({per_signal})
UNION ALL BY NAME
SELECT * FROM ({per_condition})
UNION ALL BY NAME
SELECT 3::TINYINT AS kind, _part, split, step, CASE WHEN d <= {DISCRETE_MAX + 1} THEN value END AS value,
       sum(n)::BIGINT AS n
FROM rvd GROUP BY _part, split, step, CASE WHEN d <= {DISCRETE_MAX + 1} THEN value END
UNION ALL BY NAME
SELECT 3::TINYINT AS kind, _part, split, step, NULL::DOUBLE AS value, n FROM rbusy
UNION ALL BY NAME
SELECT 4::TINYINT AS kind, _part, split, step, sgn, b, n FROM rb
"""


def part_arrow(keys: Any, signals: tuple[str, ...], schema: pa.Schema) -> pa.Table:
    """`part_sql`'s rows from the batch's columns (`partstats.CompiledKind`; `grouped.Keys` of its rows, with
    `base`'s per-rollout columns evaluated by DuckDB as it read them: `_ARROW`)."""
    reward, _ = keys.floats("reward")
    finite = np.isfinite(reward)
    sketch, values = sketch_and_values(keys, reward, finite)
    return grouped.table(schema, [*_groups(keys, reward, finite), *_cells(keys),
                                  *_moments(keys, signals, reward, finite), (len(values["n"]), {**values, "kind": 3}),
                                  (len(sketch["n"]), {**sketch, "kind": 4})])


def _groups(keys: Any, reward: np.ndarray, finite: np.ndarray) -> list[tuple[int, dict[str, Any]]]:
    """Kinds 0 (per prompt group: its rows with a finite reward), 5 (per step of the groups) and 6 (the constant
    groups per step and value) of `part_sql`."""
    advantage, no_adv = keys.floats("advantage")
    in_group = finite & ~np.asarray(keys.table.column("group_id").is_null().to_numpy(zero_copy_only=False), bool)
    gid, gfirst = keys.groups(*grouped.STEP, "group_id", where=in_group)
    g, r, a, na = len(gfirst), reward[in_group], advantage[in_group], no_adv[in_group]
    every = np.ones(len(gid), bool)
    rf, total, m2 = grouped.compiled().moments(gid, g, r, every)
    lo, hi = grouped.extremes(gid, g, r, every)
    mean = total / np.maximum(rf, 1)
    sd = np.sqrt(np.divide(m2, rf - 1, out=np.zeros(g), where=rf > 1))  # coalesce(stddev_samp, 0)
    # the ESS sums: the logged advantages where every row of the group has one, else each row's logged advantage
    # or its standardised reward
    filled = np.where(na, (r - mean[gid]) / (sd[gid] + 1e-4), a)
    s1 = np.bincount(gid, weights=np.abs(filled), minlength=g)
    s2 = np.bincount(gid, weights=filled * filled, minlength=g)
    out = [(g, {**grouped.keyed(keys, (*grouped.STEP, "group_id"), gfirst), "kind": 0, "rf": rf, "lo": lo, "hi": hi,
                "mean": mean, "sd": sd, "has_adv": grouped.count(gid, g, ~na) > 0, "s1": s1, "s2": s2})]
    lo_v, hi_v = np.asarray(lo.to_numpy(zero_copy_only=False)), np.asarray(hi.to_numpy(zero_copy_only=False))
    varied = (rf >= 2) & (hi_v > lo_v)
    steps = grouped.Keys(pa.table(grouped.keyed(keys, grouped.STEP, gfirst)))
    sid, sfirst = steps.groups(*grouped.STEP)
    k, n_varied = len(sfirst), grouped.count(sid, len(sfirst), varied)
    out.append((k, {**grouped.keyed(steps, grouped.STEP, sfirst), "kind": 5, "g2": grouped.count(sid, k, rf >= 2),
                    "gv": n_varied, "gv_min": grouped.extremes(sid, k, hi_v - lo_v, varied)[0],
                    "gv_n": pa.array(np.bincount(sid[varied], weights=rf[varied], minlength=k).astype(np.int64),
                                     mask=n_varied == 0),
                    "s1": grouped.total(sid, k, s1, varied), "s2": grouped.total(sid, k, s2, varied)}))
    constant = (rf >= 2) & (hi_v == lo_v)
    zeros = grouped.Keys(pa.table({**grouped.keyed(keys, grouped.STEP, gfirst), "z_lo": lo_v + 0.0}))  # -0.0 is 0.0
    zid, zfirst = zeros.groups(*grouped.STEP, "z_lo", where=constant)
    out.append((len(zfirst), {**grouped.keyed(zeros, (*grouped.STEP, "z_lo"), zfirst), "kind": 6,
                              "z_n": grouped.count(zid, len(zfirst))}))
    return out


def _cells(keys: Any) -> list[tuple[int, dict[str, Any]]]:
    """Kinds 1 (per condition and cluster) and 7 (their sums per condition) of `part_sql`."""
    cid, cfirst = keys.groups(*grouped.STEP, "condition", "_gkey")
    c = len(cfirst)
    clen, no_clen = keys.floats("_clen")
    tlen, no_tlen = keys.floats("_tlen")
    tmax, no_tmax = keys.floats("_tmax")
    mk, cut = keys.bools("_mk")[0], keys.bools("_cut")[0]
    n = grouped.count(cid, c)
    sums = {"clen": grouped.total(cid, c, clen, ~no_clen), "clen2": grouped.total(cid, c, clen * clen, ~no_clen),
            "tlen": grouped.total(cid, c, tlen, ~no_tlen), "tlen2": grouped.total(cid, c, tlen * tlen, ~no_tlen)}
    mx_lo, mx_hi = grouped.extremes(cid, c, tmax, ~no_tmax)
    counts = {"tn": grouped.count(cid, c, ~no_tlen), "mx_n": grouped.count(cid, c, ~no_tmax),
              "mk_c": grouped.count(cid, c, mk), "mk_t": grouped.count(cid, c, mk | ~no_tmax),
              "tr_c": grouped.count(cid, c, cut),
              "tr_t": grouped.count(cid, c, (~no_tlen & ~no_tmax & (tlen >= tmax)) | cut)}
    gkey = keys.take("_gkey", cfirst)
    cells = {**grouped.keyed(keys, (*grouped.STEP, "condition"), cfirst), "gkey": gkey, "n": n,
             **sums, **counts, "mx_lo": mx_lo, "mx_hi": mx_hi}
    out = [(c, {**cells, "kind": 1})]
    # kind 7: the cells summed per condition
    by = grouped.Keys(pa.table(grouped.keyed(keys, (*grouped.STEP, "condition"), cfirst)))
    qid, qfirst = by.groups(*grouped.STEP, "condition")
    q = len(qfirst)

    def tot(x: np.ndarray, null: np.ndarray) -> pa.Array:
        return grouped.total(qid, q, x, ~null)

    (cl, cl_null), (cl2, cl2_null), (tl, tl_null), (tl2, tl2_null) = (
        grouped.floats(sums[k]) for k in ("clen", "clen2", "tlen", "tlen2"))
    nn = n.astype(np.float64)
    lo_v, lo_null = grouped.floats(mx_lo)
    hi_v, hi_null = grouped.floats(mx_hi)
    local = _local(gkey, cells["step"])
    out.append((q, {**grouped.keyed(by, (*grouped.STEP, "condition"), qfirst), "kind": 7,
                    "n": np.bincount(qid, weights=nn, minlength=q).astype(np.int64),
                    "clen": tot(cl, cl_null), "clen2": tot(cl2, cl2_null), "tlen": tot(tl, tl_null),
                    "tlen2": tot(tl2, tl2_null),
                    **{k: np.bincount(qid, weights=counts[k], minlength=q).astype(np.int64)
                       for k in ("tn", "mx_n", "mk_c", "mk_t", "tr_c", "tr_t")},
                    "mx_lo": grouped.extremes(qid, q, lo_v, ~lo_null)[0],
                    "mx_hi": grouped.extremes(qid, q, hi_v, ~hi_null)[1],
                    "c_g": grouped.count(qid, q), "c_nn": np.bincount(qid, weights=nn * nn, minlength=q),
                    "c_xx": tot(cl * cl, cl_null), "c_xn": tot(cl * nn, cl_null), "t_xx": tot(tl * tl, tl_null),
                    "t_xn": tot(tl * nn, tl_null), "c_local": grouped.count(qid, q, ~local) == 0}))
    return out


def _local(gkey: pa.Array, step: pa.Array) -> np.ndarray:
    """Per cluster, whether its key names its step (`starts_with(gkey, step::VARCHAR || ':')`), a slice compare
    per length of the prefix."""
    prefix = pc.binary_join_element_wise(step.cast(pa.string()), pa.scalar(":"), "")
    size = np.asarray(pc.utf8_length(prefix).to_numpy(zero_copy_only=False), np.int64)
    out = np.zeros(len(gkey), bool)
    for length in np.unique(size):
        rows = np.flatnonzero(size == length)
        take = pa.array(rows)
        head = pc.utf8_slice_codeunits(gkey.take(take), 0, int(length))
        same = pc.fill_null(pc.equal(head, prefix.take(take)), False)
        out[rows] = np.asarray(same.to_numpy(zero_copy_only=False), bool)
    return out


def _moments(keys: Any, signals: tuple[str, ...], reward: np.ndarray, finite: np.ndarray
             ) -> list[tuple[int, dict[str, Any]]]:
    """Kinds 2 (the finite values' moments per step, of the total and of each signal) and 8 (per condition, the
    rows where a signal has a value) of `part_sql`."""
    sid, sfirst = keys.groups(*grouped.STEP)
    k = len(sfirst)
    steps = grouped.keyed(keys, grouped.STEP, sfirst)

    def moments(x: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
        n, mean, sd = grouped.moments(sid, k, x, keep)
        return {"n": n, "m": mean, "sd": pc.fill_null(sd, 0.0)}

    first = moments(reward, finite)
    out = [(int((first["n"] > 0).sum()), grouped.pick({**steps, "kind": 2, "total": True, **first},
                                                       first["n"] > 0))]
    keys.coalesced("condition", "_cond")
    aid, afirst = keys.groups(*grouped.STEP, "_cond")
    a = len(afirst)
    conds = {**grouped.keyed(keys, grouped.STEP, afirst), "condition": keys.take("_cond", afirst)}
    for i, name in enumerate(signals):
        r, _ = keys.floats(f"_r{i}")
        h, _ = keys.bools(f"_h{i}")
        each = moments(r, np.isfinite(r))
        out.append((int((each["n"] > 0).sum()), grouped.pick({**steps, "kind": 2, "signal": name, "total": False,
                                                               **each}, each["n"] > 0)))
        has = grouped.count(aid, a, h)
        out.append((int((has > 0).sum()), grouped.pick({**conds, "kind": 8, "signal": name,
                                                         "applies": grouped.count(aid, a, ~np.isnan(r))}, has > 0)))
    return out


#: `base`'s per-rollout columns, evaluated by DuckDB as it reads the batch for the compiled form, and the keys
_ARROW = (("_part", "_part"), ("split", "split"), ("step", "step"), ("condition", "condition"),
          ("group_id", "group_id"), ("_gkey", "_gkey"), ("reward", "reward"), ("advantage", "advantage"),
          ("_clen", "_clen"), ("_tlen", _with_metadata(TOKENS_SQL, "NULL")), ("_tmax", _with_metadata(MAX_SQL, "NULL")),
          ("_mk", _MARK), ("_cut", _CUT))

# the rollout id only where there is no group id (`partstats` reads a batch into a table: ids are long)
KIND = define("training_health", VERSION, part_sql, ("split", "step", "condition", "group_id",
                                                     "coalesce(group_id, rollout_id) AS _gkey", "reward",
                                                     "advantage", "metadata", "rewards", *_TEXT),
              CompiledKind(_ARROW, part_arrow))


def register_training_stats(con: duckdb.DuckDBPyConnection, stats: PartStats, scope: str, eval_scope: str) -> None:
    """Create, within `scope`, the tables `ts_steps` (kind 5), `ts_zero` (kind 6), `ts_lcells` (kind 7) and
    `ts_signals` (kind 2, merged per step and signal; split 'eval' within `eval_scope` as `ts_eval`), and the
    views `ts_groups` (kind 0) and `ts_cells` (kind 1), read only where the rollups do not answer (`zero_steps`,
    `clusters_local`), from the run's parts `stats` (`part_stats` of `KIND`)."""
    stats.register(con, "ts_parts")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW ts_groups AS
        SELECT step, group_id, rf, lo, hi, mean, sd, has_adv, s1, s2 FROM ts_parts WHERE kind = 0 AND {scope}""")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW ts_cells AS
        SELECT step, condition, gkey, n, clen, clen2, tlen, tlen2, tn, mx_n, mx_lo, mx_hi, mk_c, mk_t, tr_c, tr_t
        FROM ts_parts WHERE kind = 1 AND {scope}""")
    # the small kinds in one read (the eval split's signals with them), of the combined parts' rollup (`_small`)
    small = _small(con, stats)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ts_small AS
        SELECT * EXCLUDE (gkey, group_id, rf, lo, hi, mean, has_adv, sgn, b, applies), {scope} AS in_scope
        FROM {small} WHERE kind IN (2, 3, 5, 6, 7) AND ({scope} OR kind = 2 AND split = 'eval' AND {eval_scope})""")
    con.execute("""CREATE OR REPLACE TEMP TABLE ts_steps AS
        SELECT step, g2, gv, gv_n, gv_min, s1, s2 FROM ts_small WHERE kind = 5 AND in_scope""")
    con.execute("CREATE OR REPLACE TEMP TABLE ts_zero AS SELECT step, z_lo, z_n FROM ts_small WHERE kind = 6 AND in_scope")
    con.execute("""CREATE OR REPLACE TEMP TABLE ts_lcells AS
        SELECT step, condition, n, clen, clen2, tlen, tlen2, tn, mx_n, mx_lo, mx_hi, mk_c, mk_t, tr_c, tr_t, c_g,
               c_nn, c_xx, c_xn, t_xx, t_xn, c_local FROM ts_small WHERE kind = 7 AND in_scope""")
    for name, where in (("ts_signals", "in_scope"), ("ts_eval", f"split = 'eval' AND {eval_scope}")):
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {_merged_signals(where, 'ts_small')}")
    con.execute("""CREATE OR REPLACE TEMP TABLE ts_reward_values AS
        SELECT value, sum(n) AS n FROM ts_small WHERE kind = 3 AND in_scope GROUP BY value""")
    # a view: read only when some step has more distinct rewards than kind 3 keeps (`reward_quantiles`)
    con.execute(f"""CREATE OR REPLACE TEMP VIEW ts_reward_sketch AS
        SELECT {MID_SQL} AS mid, sum(n) AS n FROM {small} WHERE kind = 4 AND {scope} GROUP BY sgn, b""")


#: the kinds of one row per step (or a few: signals, values, buckets, groups' and cells' sums), which every warm
#: audit reads, unlike the rows per group and cell (kinds 0 and 1)
SMALL = (2, 3, 4, 5, 6, 7, 8)
#: seconds a superseded rollup of the small kinds is kept for audits that may still read it (as `segments.GRACE`)
GRACE = 600.0
#: how a rollup is written (part of its name's digest, so that a rollup of an older layout is written anew): 2,
#: sorted by kind in row groups of ROLLUP_GROUP rows. Kind 4 (the reward sketch's buckets: ~500 rows a step, 95%
#: of the rows at 10M rollouts) is read only when a step has more distinct rewards than kind 3 keeps; in one
#: row group it was decoded by every warm audit's `ts_small` (67 of its 112 ms at 10M, 15 at 1M)
ROLLUP_LAYOUT = 2
ROLLUP_GROUP = 32_768
#: rows of the rollup read and written at a time (`_small_rollup`)
ROLLUP_BATCH = 4 * ROLLUP_GROUP


def register_small(con: duckdb.DuckDBPyConnection, stats: PartStats, name: str) -> str:
    """A relation of every part's rows of the SMALL kinds (`_small`), its views named after `name`."""
    stats.register(con, name)
    return _small(con, stats, name)


def _small(con: duckdb.DuckDBPyConnection, stats: PartStats, parts: str = "ts_parts") -> str:
    """A relation holding every part's rows of the SMALL kinds: the rollup of the combined file's parts
    (`_small_rollup`) and the rows of the parts added since, else the parts' rows (`ts_parts`). A scan of the
    combined file reads its rows of every kind (4.5M at 10M rollouts, most of them per group and cell: 0.3 CPU s);
    its rollup holds the small kinds' rows only."""
    rolled = _small_rollup(stats) if stats.combined is not None and stats.combined_stems else None
    if rolled is None:
        return parts
    selects = [f"SELECT * FROM read_parquet({sql_string(str(rolled))})"]
    rest = PartStats(files=stats.files, tables=stats.tables, table_stems=stats.table_stems)
    if rest.files or rest.tables:
        rest.register(con, f"{parts}_loose")
        selects.append(f"SELECT * FROM {parts}_loose WHERE kind IN {SMALL}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {parts}_small AS {' UNION ALL BY NAME '.join(selects)}")
    return f"{parts}_small"


def _small_rollup(stats: PartStats) -> Path | None:
    """The SMALL kinds' rows of the combined file's parts (`stats.combined_stems`), in a file beside it named by
    a digest of those parts (`combined.small-<digest>.parquet`: `prune_cached` keeps it with the combined file),
    written by the first audit that reads them (once per rewrite of the combined file, every
    `partstats.COMPACT_AT` new parts). A part that leaves the run changes the digest, so no stale row is read.
    None where it cannot be written (read-only, full store): the caller reads the parts' rows."""
    assert stats.combined is not None
    digest = hashlib.sha256(json.dumps([ROLLUP_LAYOUT, *sorted(stats.combined_stems)]).encode()).hexdigest()[:20]
    path = stats.combined.with_name(f"combined.small-{digest}.parquet")
    if path.is_file():
        return path
    stems = ", ".join(sql_string(st) for st in stats.combined_stems)

    def write(tmp: Path) -> None:
        # kind by kind (each kind's rows in their order), streamed a batch at a time into row groups of one kind
        # each, which a filter on `kind` skips. Reading and sorting the whole rollup held it all: ~1.4 GB at
        # 15,625 steps, where kind 4 has ~500 rows a step
        with duck.connect(at_most=COMPACT_MEMORY) as c:
            writer = None
            try:
                for k in sorted(SMALL):
                    reader = c.sql(f"""SELECT * EXCLUDE (_stem) FROM read_parquet({sql_string(str(stats.combined))})
                                       WHERE kind = {k} AND _stem IN ({stems})""").to_arrow_reader(ROLLUP_BATCH)
                    writer = writer or pq.ParquetWriter(tmp, reader.schema, compression="zstd")
                    for batch in reader:
                        writer.write_table(pa.Table.from_batches([batch]), row_group_size=ROLLUP_GROUP)
            finally:
                if writer is not None:
                    writer.close()

    try:
        if not write_atomic(path, write):
            return None
    except duckdb.Error:
        return None
    now = time.time()
    for old in path.parent.glob("combined.small-*.parquet"):
        with contextlib.suppress(OSError):
            if old != path and old.stat().st_mtime < now - GRACE:
                old.unlink()
    return path


def zero_steps(con: duckdb.DuckDBPyConnection, q05: float, q95: float, tol: float
               ) -> tuple[list[tuple], list[tuple]] | None:
    """The zero-variance check's per-step rows (step, groups, zero, top, bottom) and the ESS check's (step, s1,
    s2, n over the groups that vary) from kinds 5 and 6, or None when some varying group's spread is within
    `tol` (then it counts as zero: the detector reads the groups). Exact when no group spans parts
    (`split_groups`): every group is in one part's rows, and a spread of 0 is within any `tol`."""
    low = con.execute("SELECT min(gv_min) FROM ts_steps").fetchone()[0]
    if low is not None and not low > tol:
        return None
    per_step = con.execute(f"""
        WITH z AS (SELECT step, sum(z_n) AS zv, coalesce(sum(z_n) FILTER (WHERE z_lo >= {q95} - {tol}), 0) AS top,
                          coalesce(sum(z_n) FILTER (WHERE z_lo <= {q05} + {tol} AND NOT z_lo >= {q95} - {tol}), 0)
                          AS bottom FROM ts_zero GROUP BY step),
             s AS (SELECT step, sum(g2) AS groups FROM ts_steps GROUP BY step HAVING sum(g2) > 0)
        SELECT step, groups, coalesce(zv, 0), coalesce(top, 0), coalesce(bottom, 0)
        FROM s LEFT JOIN z USING (step) ORDER BY step""").fetchall()
    ess = con.execute("""SELECT step, sum(s1) AS s1, sum(s2) AS s2, sum(gv_n) AS n FROM ts_steps WHERE gv > 0
                         GROUP BY step ORDER BY step""").fetchall()
    return per_step, ess


def clusters_local(con: duckdb.DuckDBPyConnection) -> bool:
    """True when the length check's clusters (condition and group, else rollout) can be summed from kind 7: every
    cluster key names its step (`<step>:...`, as the readers name groups), so no cluster spans steps, and each
    (step, condition) of the scope is in one part and split, so no cluster spans parts."""
    return bool(con.execute("""SELECT coalesce(bool_and(c_local AND k = 1), TRUE) FROM (
        SELECT bool_and(c_local) AS c_local, count(*) AS k FROM ts_lcells GROUP BY step, condition)""").fetchone()[0])


def reward_quantiles(con: duckdb.DuckDBPyConnection, qs: tuple[float, ...]) -> dict[float, float] | None:
    """The scope's finite total reward at each quantile q of `qs` (the value of rank floor(q (n - 1)), 0-based:
    numpy's 'lower' quantile), or None without such rows: exact from the merged values of kind 3 when no step
    of the scope had more than DISCRETE_MAX + 1 of them, else the midpoint of the sketch's bucket holding that
    rank (kind 4), within `reward_stats.ALPHA` of the exact value, relative. Ranked in DuckDB: a run of many
    small steps has as many distinct values as rollouts (1M of them at 15,625 steps of 64, 2.6 s through Python)."""
    nulls, rows = con.execute("SELECT count(*) FILTER (WHERE value IS NULL), count(*) FROM ts_reward_values"
                              ).fetchone()
    if not rows:
        return None
    source = "SELECT mid AS value, n FROM ts_reward_sketch" if nulls else "SELECT value, n FROM ts_reward_values"
    return ranked_quantiles(con, source, qs)


def ranked_quantiles(con: duckdb.DuckDBPyConnection, source: str, qs: tuple[float, ...]) -> dict[float, float]:
    """`lower_quantiles` of the rows (value, n) of the query `source`, ranked by DuckDB: only the quantiles come
    back to Python."""
    if not qs:
        return {}
    picks = ", ".join(f"min(value) FILTER (WHERE cum > floor({float(q)!r} * (total - 1)))" for q in qs)
    row = con.execute(f"""WITH c AS (SELECT value, sum(n) OVER (ORDER BY value ROWS UNBOUNDED PRECEDING) AS cum,
                                           sum(n) OVER () AS total FROM ({source}) WHERE n > 0)
                          SELECT {picks} FROM c""").fetchone()
    return {q: float(v) for q, v in zip(qs, row) if v is not None}


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


def _merged_signals(where: str, table: str = "ts_parts") -> str:
    """Per step and signal: rows, mean and sample SD pooled over the rows of kind 2 (several when a step spans
    parts or splits; one row is passed through unchanged)."""
    return f"""
        WITH s AS (SELECT step, signal, total, n, m, sd, sum(n * m) OVER w / sum(n) OVER w AS gm,
                          count(*) OVER w AS k
                   FROM {table} WHERE kind = 2 AND {where}
                   WINDOW w AS (PARTITION BY step, signal, total))
        SELECT step, signal, total, sum(n) AS n,
               CASE WHEN any_value(k) = 1 THEN any_value(m) ELSE any_value(gm) END AS m,
               CASE WHEN any_value(k) = 1 THEN any_value(sd) WHEN sum(n) < 2 THEN 0 ELSE
                    sqrt((sum((n - 1) * sd * sd) + sum(n * (m - gm) ^ 2)) / (sum(n) - 1)) END AS sd
        FROM s GROUP BY step, signal, total"""


def split_groups(con: duckdb.DuckDBPyConnection) -> bool:
    """True when some prompt group (step, group_id) has rows in more than one part (or split) of the scope. Only
    a step with group rows (kind 5) in several parts or splits can have one: the groups are read for those."""
    shared = "SELECT step FROM ts_steps GROUP BY step HAVING count(*) > 1"
    if not con.execute(f"SELECT count(*) FROM ({shared})").fetchone()[0]:
        return False
    return bool(con.execute(f"SELECT count(*) FROM (SELECT step, group_id FROM ts_groups WHERE step IN ({shared}) "
                            "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0])
