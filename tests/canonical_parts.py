"""A canonical part built from generated texts, for the property tests that compare a reader of stored parts
with the DuckDB view over them (`layout.view_columns`): with the answer and reasoning as spans of the completion
(layouts 2+) or as texts of their own (layout 1)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from rlaudit.layout import part_table
from rlaudit.schema import ROLLOUT_SCHEMA
from rlaudit.text import reasoning_spans


def canonical_part(texts: list[tuple[str, str | None, str | None]], spans: bool, **columns: Any) -> pa.Table:
    """One part of `texts` (completion, logged reasoning, logged answer) per row: one condition and split, step
    0, prompt "p", unless `columns` gives others. A null answer stands for "cut it from the completion"; a part of
    layout 1 keeps it as ''."""
    n = len(texts)
    completion = pa.array([t[0] for t in texts], pa.string())
    table = {f.name: pa.nulls(n, f.type) for f in ROLLOUT_SCHEMA}
    table.update(run=pa.array(["r"] * n), rollout_id=pa.array([str(i) for i in range(n)]),
                 step=pa.array([0] * n, pa.int64()), split=pa.array(["train"] * n), condition=pa.array(["c"] * n),
                 prompt=pa.array(["p"] * n), completion=completion,
                 reasoning=pa.array([t[1] for t in texts], pa.string()),
                 answer=pa.array([t[2] if t[2] is not None or spans else "" for t in texts], pa.string()),
                 rewards=pa.array([[] for _ in range(n)], ROLLOUT_SCHEMA.field("rewards").type),
                 grader_inputs=pa.array([[] for _ in range(n)], ROLLOUT_SCHEMA.field("grader_inputs").type))
    table.update(columns)
    if not spans:
        return pa.Table.from_arrays([table[f.name].cast(f.type) for f in ROLLOUT_SCHEMA], schema=ROLLOUT_SCHEMA)
    return part_table(table, reasoning_spans(completion))
