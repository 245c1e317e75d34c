"""The term sets read parts with Arrow (`tokens._read_parts`: canonical columns, the texts where they lie in the
completion at their spans, or cut out): the same rows, in the same order, as the DuckDB view over the files
(`layout.view_columns`) they were read through before, for generated completions (think tags closed, unclosed,
repeated, around nothing; multi-byte text; empty completions), texts a format logged itself instead of a span,
and parts of layout 1 (text only); and several parts in one batch, each a run of rows. Deterministic under the
CI Hypothesis profile."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given
from hypothesis import strategies as st

from canonical_parts import canonical_part
from rlaudit.derived import tokens
from rlaudit.layout import view_columns
from rlaudit.store import sql_list

_PIECES = ["<think>", "</think>", " ", "\n", "\t", "", "a", "word", "é", "中", "😀", "\xa0", "<", ">", "!", "?"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join)
_ROW = st.tuples(_TEXT, st.one_of(st.none(), _TEXT), st.one_of(st.none(), _TEXT),  # completion, logged texts
                 st.one_of(st.none(), _TEXT), st.integers(0, 3))  # prompt, step


def _part(rows: list, spans: bool, name: str) -> pa.Table:
    n = len(rows)
    return canonical_part([r[:3] for r in rows], spans, rollout_id=pa.array([f"{name}:{i}" for i in range(n)]),
                          step=pa.array([r[4] for r in rows], pa.int64()),
                          task=pa.array([None if i % 2 else "t" for i in range(n)], pa.string()),
                          group_id=pa.array([str(i // 2) for i in range(n)]),
                          prompt=pa.array([r[3] or "" for r in rows], pa.string()))


@given(st.lists(st.lists(_ROW, max_size=8), min_size=1, max_size=3), st.sampled_from([1, 3]))
def test_parts_read_with_arrow_equal_the_view(tmp_path_factory, parts, layout):
    d = tmp_path_factory.mktemp("parts")
    paths = []
    for i, rows in enumerate(parts):
        paths.append(d / f"p{i}.parquet")
        pq.write_table(_part(rows, spans=layout >= 2, name=f"p{i}"), paths[-1])
    got, bounds, places = tokens._read_parts(paths, layout)
    assert bounds.tolist() == [sum(len(p) for p in parts[:i]) for i in range(len(parts) + 1)]
    cols = ", ".join(tokens._COLUMNS)
    with duckdb.connect() as con:
        files = sql_list([str(p) for p in paths])
        want = con.sql(f"SELECT {cols} FROM (SELECT {view_columns(layout)} FROM read_parquet({files}))").to_arrow_table()
    assert got.column_names == [c for c in tokens._COLUMNS if c not in tokens.WHERES]
    for c in got.column_names:
        assert got.column(c).to_pylist() == want.column(c).to_pylist(), c
        assert got.schema.field(c).type == want.schema.field(c).type, c
    for where, place in places.items():  # the texts where they lie: cut out, and row by row
        assert place.strings().to_pylist() == want.column(where).to_pylist(), where
        assert place.valid.tolist() == [t is not None for t in want.column(where).to_pylist()]
        assert [bytes(place.data[lo:hi]).decode() for lo, hi in zip(place.lo, place.hi)] == [
            t or "" for t in want.column(where).to_pylist()]
