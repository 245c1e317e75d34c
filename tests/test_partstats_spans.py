"""`partstats.SPAN_TESTS` (whether a part's reasoning / answer is there, or empty, read from the span columns)
equal the same tests of the canonical texts that `layout.view_columns` cuts out of the completion, for generated
completions (think tags closed, unclosed, repeated, around nothing; multi-byte text; empty completions), texts
that a format logged itself instead of a span, and parts of layout 1 (text only). Deterministic under the CI
Hypothesis profile."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given
from hypothesis import strategies as st

from rlaudit.layout import part_table, view_columns
from rlaudit.derived.partstats import _span_tests
from rlaudit.schema import ROLLOUT_SCHEMA
from rlaudit.text import reasoning_spans

_PIECES = ["<think>", "</think>", " ", "\n", "\t", "", "a", "word", "é", "中", "😀", "\xa0", "\u3000", "<", ">"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join)
_ROW = st.tuples(_TEXT, st.one_of(st.none(), _TEXT), st.one_of(st.none(), _TEXT))  # completion, logged texts


def _part(rows: list[tuple[str, str | None, str | None]], spans: bool) -> pa.Table:
    n = len(rows)
    completion = pa.array([r[0] for r in rows], pa.string())
    columns = {f.name: pa.nulls(n, f.type) for f in ROLLOUT_SCHEMA}
    columns.update(run=pa.array(["r"] * n), rollout_id=pa.array([str(i) for i in range(n)]),
                   step=pa.array([0] * n, pa.int64()), split=pa.array(["train"] * n), condition=pa.array(["c"] * n),
                   prompt=pa.array(["p"] * n), completion=completion,
                   reasoning=pa.array([r[1] for r in rows], pa.string()),
                   # a null answer stands for "cut it from the completion"; a part of layout 1 keeps it as ''
                   answer=pa.array([r[2] if r[2] is not None or spans else "" for r in rows], pa.string()),
                   rewards=pa.array([[] for _ in range(n)], ROLLOUT_SCHEMA.field("rewards").type),
                   grader_inputs=pa.array([[] for _ in range(n)], ROLLOUT_SCHEMA.field("grader_inputs").type))
    if not spans:
        return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in ROLLOUT_SCHEMA], schema=ROLLOUT_SCHEMA)
    return part_table(columns, reasoning_spans(completion))


@given(st.lists(_ROW, min_size=1, max_size=12), st.sampled_from([1, 3]))
def test_span_tests_equal_the_tests_of_the_cut_texts(tmp_path_factory, rows, layout):
    path = tmp_path_factory.mktemp("part") / "part.parquet"
    pq.write_table(_part(rows, spans=layout >= 2), path)
    expected = """reasoning IS NOT NULL, coalesce(reasoning, '') = '', answer IS NOT NULL, coalesce(answer, '') = ''"""
    got = "_has_reasoning, _empty_reasoning, _has_answer, _empty_answer"
    with duckdb.connect() as con:
        a, b = (con.execute(f"SELECT {cols} FROM (SELECT {view_columns(layout)}, {_span_tests(layout)} "
                            f"FROM read_parquet('{path}')) ORDER BY rollout_id").fetchall()
                for cols in (expected, got))
    assert a == b
