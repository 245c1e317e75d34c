"""`store.sql_when`: an aggregate of `CASE WHEN condition THEN value END` equals the aggregate FILTER (WHERE
condition), which the per-part statistics relied on before (their cached tables must not change with the form)."""

from __future__ import annotations

import math

import duckdb
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from rlaudit.store import sql_when

VALUES = st.one_of(st.none(), st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                   st.floats(-1e6, 1e6, allow_nan=False), st.integers(-3, 3).map(float))
ROWS = st.lists(st.tuples(st.integers(0, 3), VALUES, st.one_of(st.none(), st.booleans())), max_size=60)
#: (aggregate, value): the aggregates the statistics take of a filtered column; '1' stands for count(*)
AGGREGATES = [("count", "1"), ("count", "x"), ("sum", "x"), ("min", "x"), ("max", "x"), ("avg", "x"),
              ("stddev_samp", "x")]
CONDITIONS = ["flag", "isfinite(x)", "x IS NULL OR isnan(x)", "flag AND NOT isnan(x)", "isinf(x)"]


def _both(rows: list[tuple[int, float | None, bool | None]]) -> tuple[list, list]:
    con = duckdb.connect()
    con.register("t", pa.table({"g": pa.array([r[0] for r in rows], pa.int64()),
                                "x": pa.array([r[1] for r in rows], pa.float64()),
                                "flag": pa.array([r[2] for r in rows], pa.bool_())}))
    filtered, case = [], []
    for fn, value in AGGREGATES:
        for cond in CONDITIONS:
            arg = "*" if value == "1" else value
            filtered.append(f"{fn}({arg}) FILTER (WHERE {cond})")
            case.append(f"{fn}({sql_when(cond, value)})")

    def run(items: list[str]) -> list:
        return con.execute(f"SELECT g, {', '.join(items)} FROM t GROUP BY g ORDER BY g").fetchall()

    return run(filtered), run(case)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b and type(a) is type(b)


@given(ROWS)
def test_an_aggregate_of_sql_when_equals_the_filtered_aggregate(rows):
    filtered, case = _both(rows)
    assert len(filtered) == len(case)
    for f_row, c_row in zip(filtered, case):
        assert all(_same(a, b) for a, b in zip(f_row, c_row)), (f_row, c_row)


def test_the_types_are_those_of_the_filtered_aggregates():
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT range::DOUBLE AS x, range % 2 = 0 AS flag FROM range(10)")
    for fn, value in AGGREGATES:
        arg = "*" if value == "1" else value
        types = con.execute(f"SELECT typeof({fn}({arg}) FILTER (WHERE flag)), "
                            f"typeof({fn}({sql_when('flag', value)})) FROM t").fetchall()[0]
        assert types[0] == types[1], (fn, types)
