"""How canonical rows are laid out in the store's Parquet parts, and how they are turned back into rows.

A part holds the canonical columns (`schema.py`) with one saving. The reasoning and the answer that ingest
splits from `<think>` tags are substrings of the completion, so a part keeps their spans (four int32 columns:
start and end in UTF-8 bytes) instead of the text; `reasoning` and `answer` hold text only where a format
logged it separately (prime-rl `reasoning_content`) or rows were appended as canonical tables (live hooks).
Writing the completion's text once instead of twice roughly halves what ingest compresses and the size on disk.

Nothing outside the store reads parts directly: the `rollouts` view (`Store.connect`) selects `view_columns()`,
and `to_canonical` / `read_part` do the same in Arrow. Parts written before spans existed (layout 1, text only)
stay readable: the store records each part's layout in its manifest, and columns added to the canonical table
since a part was written (`ADDED`) read as null from it.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import ROLLOUT_SCHEMA
from .text import Spans, completion_facts, text_at

#: Layout of parts written by this version (1: text only, no span columns; 2: spans; 3: tool columns; 4: the
#: completion's facts).
LAYOUT = 4

#: Canonical columns that parts of older layouts lack (layout they appeared in); they read as null there.
ADDED = {"tool_calls": 3, "tool_outputs": 3}

#: Text column -> its span columns (start, end: UTF-8 byte offsets into the completion).
SPANS = {"reasoning": ("_reasoning_start", "_reasoning_end"), "answer": ("_answer_start", "_answer_end")}

#: Facts of the completion a part keeps beside it from layout 4 (`text.completion_facts`), so that statistics of
#: every rollout need not read the text (training health's per-part statistics read each part's completion for
#: these alone): its length in characters and whether it holds the literal `</think>`; with the DuckDB SQL that
#: computes them from the completion of an older part (`facts_sql`).
FACTS = {"_completion_chars": ("length(completion)", pa.int32()),
         "_think_close": ("completion LIKE '%</think>%'", pa.bool_())}
FACTS_LAYOUT = 4

PART_SCHEMA = pa.schema(
    [f.with_nullable(True) if f.name in SPANS else f for f in ROLLOUT_SCHEMA]
    + [pa.field(c, pa.int32()) for pair in SPANS.values() for c in pair]
    + [pa.field(name, typ) for name, (_, typ) in FACTS.items()])


def part_table(columns: dict[str, pa.Array], spans: Spans | None = None) -> pa.Table:
    """A part from canonical columns, with the completion's facts (`FACTS`). With `spans`, rows whose
    `reasoning`/`answer` is null take their text from the completion at the span instead (the text column stays
    null there)."""
    n = len(columns["completion"])
    arrays = dict(columns)
    searched = spans.think_close if spans is not None else None  # where the split searched for `</think>`
    arrays.update(zip(FACTS, completion_facts(columns["completion"], searched)))
    for name, span_columns in SPANS.items():
        given = arrays[name]  # text a format logged itself wins over the span, row by row
        for column, bound in zip(span_columns, ("start", "end")):
            if spans is None:
                arrays[column] = pa.nulls(n, pa.int32())
                continue
            at = getattr(spans, f"{name}_{bound}")
            if given.null_count < n:
                at = pc.if_else(pc.is_valid(given), pa.scalar(None, pa.int32()), at)
            arrays[column] = at
    return pa.Table.from_arrays([arrays[f.name].cast(f.type) for f in PART_SCHEMA], schema=PART_SCHEMA)


def from_canonical(table: pa.Table) -> pa.Table:
    """A canonical table as a part (text kept as given, no spans). Nullable columns it lacks (e.g. tables built
    before `ADDED` columns existed) are null."""
    for field in ROLLOUT_SCHEMA:
        if field.name not in table.column_names and field.nullable:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    table = table.select(ROLLOUT_SCHEMA.names).cast(ROLLOUT_SCHEMA)
    return part_table({name: table.column(name).combine_chunks() for name in table.column_names})


def to_canonical(part: pa.Table) -> pa.Table:
    """Canonical rows of a part, or the canonical columns of any selection of its columns (`read_columns`)."""
    fields, arrays = [], []
    for field in ROLLOUT_SCHEMA:
        if field.name not in part.column_names:
            continue
        spanned = field.name in SPANS and SPANS[field.name][0] in part.column_names
        fields.append(field)
        arrays.append((_text(part, field.name) if spanned else part.column(field.name)).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def read_columns(columns: list[str]) -> list[str]:
    """The part columns needed to produce canonical `columns`."""
    need = []
    for name in columns:
        need.append(name)
        if name in SPANS:
            need += ["completion", *SPANS[name]]
    return list(dict.fromkeys(need))


def read_part(path: str | Path, columns: list[str], layout: int = LAYOUT) -> pa.Table:
    """Canonical `columns` of one part file, read with Arrow (no database connection)."""
    absent = [c for c in columns if ADDED.get(c, 0) > layout]
    present = [c for c in columns if c not in absent]
    if layout < 2:
        table = pq.read_table(path, columns=present)
    else:
        table = to_canonical(pq.read_table(path, columns=read_columns(present))).select(present)
    for name in absent:
        field = ROLLOUT_SCHEMA.field(name)
        table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(columns)


def read_stored(path: str | Path, columns: list[str]) -> pa.Table:
    """Stored `columns` of one part file as they are (not canonical), read on the calling thread: readers that
    read parts on worker threads of their own (the CoT scan, the term sets) gain nothing from Arrow's thread
    pool, and `read_table` (a dataset per file) cost 1.4-2.7 CPU s for the 200 parts of the 1M benchmark
    against 1.1-1.3 for `ParquetFile.read`; without pre-buffering, whose reads go through Arrow's I/O thread:
    0.67-0.71 against 0.71-0.76 CPU s, one thread."""
    with pq.ParquetFile(path, pre_buffer=False) as f:
        return f.read(columns=columns, use_threads=False)


def facts_sql(layout: int) -> str:
    """The SELECT list of the completion's facts (`FACTS`) over a part of `layout`: its columns where it keeps
    them, else computed from its completion."""
    if layout >= FACTS_LAYOUT:
        return ", ".join(f'"{name}"' for name in FACTS)
    return ", ".join(f'{sql} AS "{name}"' for name, (sql, _) in FACTS.items())


def view_columns(layout: int = LAYOUT) -> str:
    """The SELECT list that turns parts of `layout` into canonical columns (DuckDB SQL)."""
    items = []
    for name in ROLLOUT_SCHEMA.names:
        if ADDED.get(name, 0) > layout:
            items.append(f'CAST(NULL AS {_DUCKDB_TYPES[name]}) AS "{name}"')
        elif name in SPANS and layout >= 2:
            start, end = SPANS[name]  # a byte slice of the completion (BLOB slices are 1-based, end inclusive)
            items.append(f'CASE WHEN "{start}" IS NULL THEN "{name}" '
                         f'ELSE decode(encode(completion)["{start}" + 1:"{end}"]) END AS "{name}"')
        else:
            items.append(f'"{name}"')
    return ", ".join(items)


#: DuckDB spelling of the types of `ADDED` columns (for the NULLs that stand in for them in older parts).
_DUCKDB_TYPES = {"tool_calls": "STRUCT(name VARCHAR, arguments VARCHAR)[]", "tool_outputs": "VARCHAR[]"}


def _text(part: pa.Table, name: str) -> pa.Array:
    start, end = SPANS[name]
    text = part.column(name).combine_chunks()
    starts = part.column(start).combine_chunks()
    if starts.null_count == len(starts):
        return text
    cut = text_at(part.column("completion"), starts, part.column(end).combine_chunks())
    if text.null_count == len(text):  # every text a span or absent: `cut` is null where the span is (no merge,
        return cut                     # which copied every string: ~2x the cut's cost)
    return pc.if_else(pc.is_valid(starts), cut, text)
