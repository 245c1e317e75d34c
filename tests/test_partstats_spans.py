"""`partstats.SPAN_TESTS` (whether a part's reasoning / answer is there, or empty, read from the span columns)
equal the same tests of the canonical texts that `layout.view_columns` cuts out of the completion, for generated
completions (think tags closed, unclosed, repeated, around nothing; multi-byte text; empty completions), texts
that a format logged itself instead of a span, and parts of layout 1 (text only). Deterministic under the CI
Hypothesis profile."""

from __future__ import annotations

import duckdb
import pyarrow.parquet as pq
from hypothesis import given
from hypothesis import strategies as st

from canonical_parts import canonical_part
from rlaudit.layout import view_columns
from rlaudit.derived.partstats import _span_tests

_PIECES = ["<think>", "</think>", " ", "\n", "\t", "", "a", "word", "é", "中", "😀", "\xa0", "\u3000", "<", ">"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join)
_ROW = st.tuples(_TEXT, st.one_of(st.none(), _TEXT), st.one_of(st.none(), _TEXT))  # completion, logged texts


@given(st.lists(_ROW, min_size=1, max_size=12), st.sampled_from([1, 3]))
def test_span_tests_equal_the_tests_of_the_cut_texts(tmp_path_factory, rows, layout):
    path = tmp_path_factory.mktemp("part") / "part.parquet"
    pq.write_table(canonical_part(rows, spans=layout >= 2), path)
    expected = """reasoning IS NOT NULL, coalesce(reasoning, '') = '', answer IS NOT NULL, coalesce(answer, '') = ''"""
    got = "_has_reasoning, _empty_reasoning, _has_answer, _empty_answer"
    with duckdb.connect() as con:
        a, b = (con.execute(f"SELECT {cols} FROM (SELECT {view_columns(layout)}, {_span_tests(layout)} "
                            f"FROM read_parquet('{path}')) ORDER BY rollout_id").fetchall()
                for cols in (expected, got))
    assert a == b
