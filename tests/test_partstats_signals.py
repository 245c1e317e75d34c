"""The per-part statistics read the rewards map pivoted into a column per signal (`partstats.SIGNAL_COLUMNS`).
Their per-signal rows equal, as multisets, those of the queries that unnested the map (kept here as the
reference), for generated parts: every rollout with the same signals in the same order (the map read by position)
or not (missing signals, other orders, NULL and empty maps: read by name), NULL, NaN and infinite values, steps
with many distinct values (the sketch's busy steps) and few. Deterministic under the CI Hypothesis profile."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from canonical_parts import canonical_part
from rlaudit.derived import partstats
from rlaudit.detectors.reward_stats import DISCRETE_MAX, TASK_SQL, bucket_sql
from rlaudit.layout import view_columns
from rlaudit.schema import ROLLOUT_SCHEMA

_KINDS = ("reward_health", "training_health", "run_stats", "attribution_meta")
_D = DISCRETE_MAX + 1
_RL = ("SELECT _part, split, step, unnest(map_keys(rewards)) AS signal, "
       "coalesce(unnest(map_values(rewards)), 'NaN'::DOUBLE) AS value, coalesce(condition, '') AS condition, "
       "_task AS task FROM src")
#: the per-signal rows of each kind as the queries that unnested the map computed them
_REFERENCE = {
    "reward_health": f"""
WITH rl AS ({_RL}),
sk AS (SELECT _part, split, step, signal, sign(value)::TINYINT AS sgn, {bucket_sql("value")} AS b, count(*) AS n
       FROM rl WHERE isfinite(value) GROUP BY ALL),
busy AS (SELECT _part, split, step, signal, sum(n)::BIGINT AS n FROM sk GROUP BY _part, split, step, signal
         HAVING count(*) > {_D}),
v AS (SELECT _part, split, step, signal, value, count(*) AS n FROM rl ANTI JOIN busy USING (_part, split, step, signal)
      WHERE isfinite(value) GROUP BY ALL),
vd AS (SELECT *, count(*) OVER (PARTITION BY _part, split, step, signal) AS d FROM v)
SELECT _part, 0::TINYINT AS kind, split, step, signal, condition, task, count(*) AS n,
       count(*) FILTER (WHERE isnan(value)) AS nan, count(*) FILTER (WHERE isinf(value)) AS inf,
       count(*) FILTER (WHERE isfinite(value)) AS finite,
       min(value) FILTER (WHERE isfinite(value)) AS lo, max(value) FILTER (WHERE isfinite(value)) AS hi,
       NULL::DOUBLE AS value, NULL::TINYINT AS sgn, NULL::INTEGER AS b
FROM rl GROUP BY _part, split, step, signal, condition, task
UNION ALL
SELECT _part, 1::TINYINT, split, step, signal, NULL, NULL, sum(n)::BIGINT, NULL, NULL, NULL, NULL, NULL,
       CASE WHEN d <= {_D} THEN value END, NULL, NULL
FROM vd GROUP BY _part, split, step, signal, CASE WHEN d <= {_D} THEN value END
UNION ALL
SELECT _part, 1::TINYINT, split, step, signal, NULL, NULL, n, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM busy
UNION ALL
SELECT _part, 2::TINYINT, split, step, signal, NULL, NULL, n, NULL, NULL, NULL, NULL, NULL, NULL, sgn, b FROM sk""",
    "training_health": """
SELECT 2::TINYINT AS kind, _part, split, step, signal, total, count(*) AS n, avg(v) AS m,
       coalesce(stddev_samp(v), 0) AS sd
FROM (SELECT _part, split, step, unnest(map_keys(rewards)) AS signal, FALSE AS total,
             unnest(map_values(rewards)) AS v FROM src
      UNION ALL SELECT _part, split, step, NULL, TRUE, reward FROM src)
WHERE isfinite(v) GROUP BY _part, split, step, signal, total
UNION ALL BY NAME
SELECT 8::TINYINT AS kind, _part, split, step, coalesce(condition, '') AS condition, signal,
       count(*) FILTER (WHERE v IS NOT NULL AND NOT isnan(v)) AS applies
FROM (SELECT _part, split, step, condition, unnest(map_keys(rewards)) AS signal, unnest(map_values(rewards)) AS v
      FROM src) GROUP BY _part, split, step, coalesce(condition, ''), signal""",
    "run_stats": """
SELECT _part, 1::TINYINT AS kind, split, step, NULL::VARCHAR AS condition, signal, total, count(*) AS n,
       count(value) FILTER (WHERE NOT isnan(value)) AS nv, sum(value) FILTER (WHERE NOT isnan(value)) AS sv
FROM (SELECT _part, split, step, unnest(map_keys(rewards)) AS signal, FALSE AS total,
             unnest(map_values(rewards)) AS value FROM src
      UNION ALL
      SELECT _part, split, step, NULL, TRUE, reward FROM src)
GROUP BY _part, split, step, signal, total""",
    "attribution_meta": """
SELECT DISTINCT _part, split, step, NULL::BIGINT AS n, NULL::BIGINT AS n_group, NULL::BIGINT AS n_reward,
       NULL::BIGINT AS n_adv, NULL::BIGINT AS n_task, unnest(map_keys(rewards)) AS signal FROM src""",
}
#: the reference's rows among a kind's rows (its other rows do not read the map)
_SIGNAL_ROWS = {"reward_health": "TRUE", "training_health": "kind IN (2, 8)", "run_stats": "kind = 1",
                "attribution_meta": "signal IS NOT NULL"}

_VALUES = st.sampled_from([None, float("nan"), float("inf"), float("-inf"), 0.0, 1.0, -2.5, 1e-3, 7.0])
_NAMES = ["acc", "fmt", "len'gth"]


@st.composite
def _parts(draw):
    """1-3 parts: per rollout a rewards map (None: a NULL map), reward, step, split, condition, task."""
    uniform = draw(st.booleans())
    order = draw(st.permutations(_NAMES))[:draw(st.integers(0, 3))]
    parts = []
    for p in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 14))
        # a busy step: more distinct finite values of one signal than the sketch's discrete bound
        busy = draw(st.booleans()) and p == 0
        rows = []
        for i in range(n if not busy else _D + 3):
            if uniform:
                keys = order
            else:
                keys = draw(st.one_of(st.none(), st.permutations(_NAMES).flatmap(
                    lambda q: st.integers(0, 3).map(lambda k: q[:k]))))
            values = None if keys is None else [
                float(i + 2) ** 1.5 if busy and j == 0 else draw(_VALUES) for j, _ in enumerate(keys)]
            rows.append((None if keys is None else list(zip(keys, values)), draw(_VALUES),
                         draw(st.integers(1, 2)), draw(st.sampled_from(["train", "eval"])),
                         draw(st.sampled_from(["c1", "c2"])), draw(st.sampled_from([None, "t"]))))
        parts.append(rows)
    return parts


def _write(rows: list[tuple], path) -> None:
    n = len(rows)
    part = canonical_part([("x", None, None)] * n, spans=False,
                          rewards=pa.array([r[0] for r in rows], ROLLOUT_SCHEMA.field("rewards").type),
                          reward=pa.array([r[1] for r in rows], pa.float64()),
                          step=pa.array([r[2] for r in rows], pa.int64()), split=pa.array([r[3] for r in rows]),
                          condition=pa.array([r[4] for r in rows], pa.string()),
                          task=pa.array([r[5] for r in rows], pa.string()),
                          rollout_id=pa.array([f"{path.stem}-{i}" for i in range(n)]))
    pq.write_table(part, path)


@settings(max_examples=40, deadline=None)
@given(_parts())
def test_pivoted_signals_equal_the_unnested_map(tmp_path_factory, parts):
    root = tmp_path_factory.mktemp("signals")
    paths = [root / f"p{i}.parquet" for i in range(len(parts))]
    for rows, path in zip(parts, paths):
        _write(rows, path)
    got = partstats._compute(paths, {}, [partstats.kind(k) for k in _KINDS], root)
    names = ", ".join(f"'{p}'" for p in paths)
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE src AS SELECT *, {TASK_SQL} AS _task FROM (SELECT {view_columns(1)}, "
                    f"file_index::INTEGER AS _part FROM read_parquet([{names}]))")
        for k in _KINDS:
            con.register("got", got[k].table)
            mine = f"SELECT {', '.join(con.sql(_REFERENCE[k]).columns)} FROM got WHERE {_SIGNAL_ROWS[k]}"
            counts = [con.execute(f"SELECT count(*) FROM (SELECT * FROM ({a}) EXCEPT ALL SELECT * FROM ({b}))")
                      .fetchall()[0][0]
                      for a, b in ((mine, _REFERENCE[k]), (_REFERENCE[k], mine))]
            assert counts == [0, 0], k
            assert con.execute(f"SELECT count(*) FROM ({mine})").fetchall() == \
                con.execute(f"SELECT count(*) FROM ({_REFERENCE[k]})").fetchall()
            con.unregister("got")
