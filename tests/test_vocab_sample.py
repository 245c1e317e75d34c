"""The vocabulary sample's bins and order (`tokens._binned`) equal the SQL they replaced."""

from __future__ import annotations

import duckdb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.derived.tokens import _binned

rows = st.lists(st.tuples(st.integers(-5, 400), st.sampled_from(["b", "a", "c-2", None]),
                          st.text(max_size=3)), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(rows, st.integers(1, 25))
def test_bins_and_order_equal_the_window_function_query(data, bins):
    table = pa.table({"step": pa.array([r[0] for r in data], pa.int64()),
                      "condition": pa.array([r[1] for r in data], pa.string()),
                      "answer": pa.array([r[2] for r in data], pa.string()),
                      "reasoning": pa.array([r[2][::-1] for r in data], pa.string())})
    con = duckdb.connect()
    con.register("sampled", table)
    expected = con.sql(f"""
        SELECT bin, condition, answer, reasoning FROM (
            SELECT row_number() OVER () AS sid, condition, answer, reasoning,
                   least({bins - 1}, CAST(floor({bins} * (step - min(step) OVER ())
                         / (max(step) OVER () - min(step) OVER () + 1)) AS INTEGER)) AS bin
            FROM sampled) ORDER BY bin, condition, sid""").to_arrow_table()
    got = _binned(table, bins)
    assert got.column_names == expected.column_names
    for name in got.column_names:
        assert got.column(name).to_pylist() == expected.column(name).to_pylist(), name
