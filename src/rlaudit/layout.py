"""How canonical rows are laid out in the store's Parquet parts, and how they are turned back into rows.

A part holds the canonical columns (`schema.py`) with one saving. The reasoning and the answer that ingest
splits from `<think>` tags are substrings of the completion, so a part keeps their spans (four int32 columns:
start and end in UTF-8 bytes) instead of the text; `reasoning` and `answer` hold text only where a format
logged it separately (prime-rl `reasoning_content`) or rows were appended as canonical tables (live hooks).
Writing the completion's text once instead of twice roughly halves what ingest compresses and the size on disk.

From layout 5 the reward signals that a part's rollouts share (the same signals in the same order: what every
trainer logs) are one double column each (`reward_column`), and `rewards` keeps a map only for rollouts whose
signals differ (null elsewhere: a canonical `rewards` is never null). The statistics of every rollout read a
signal's values as a column instead of a map's keys and values: ~25% of a part's write and ~70% of the per-part
statistics' pivot were the map. Each part's signals are recorded in the manifest (`StoredPart.signals`), so a
view's SQL is written without opening the files.

Nothing outside the store reads parts directly: the `rollouts` view (`Store.connect`) selects `view_columns()`,
and `to_canonical` / `read_part` do the same in Arrow. Parts written before spans existed (layout 1, text only)
stay readable: the store records each part's layout in its manifest, and columns added to the canonical table
since a part was written (`ADDED`) read as null from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import ROLLOUT_SCHEMA
from .text import Spans, completion_facts, text_at

#: Layout of parts written by this version (1: text only, no span columns; 2: spans; 3: tool columns; 4: the
#: completion's facts; 5: reward signals as columns).
LAYOUT = 5
REWARDS_LAYOUT = 5

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

#: Prefix of a part's reward columns (`reward_column`).
REWARD_PREFIX = "_reward:"

#: The columns every part of this layout has; a part adds one column per shared reward signal (`part_schema`).
PART_SCHEMA = pa.schema(
    [f.with_nullable(True) if f.name in SPANS or f.name == "rewards" else f for f in ROLLOUT_SCHEMA]
    + [pa.field(c, pa.int32()) for pair in SPANS.values() for c in pair]
    + [pa.field(name, typ) for name, (_, typ) in FACTS.items()])


def reward_column(signal: str) -> str:
    """The column of a part that holds `signal`'s values (layout 5)."""
    return REWARD_PREFIX + signal


def part_schema(signals: tuple[str, ...]) -> pa.Schema:
    """The schema of a part whose rollouts share `signals`."""
    return pa.schema(list(PART_SCHEMA) + [pa.field(reward_column(s), pa.float64()) for s in signals])


def part_signals(schema: pa.Schema) -> tuple[str, ...]:
    """The shared signals of a part with `schema` (its reward columns, in order)."""
    return tuple(n[len(REWARD_PREFIX):] for n in schema.names if n.startswith(REWARD_PREFIX))


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
    signals, arrays["rewards"], values = split_rewards(arrays["rewards"])
    schema = part_schema(signals)
    arrays.update(zip(schema.names[len(PART_SCHEMA):], values))
    return pa.Table.from_arrays([arrays[f.name].cast(f.type) for f in schema], schema=schema)


def split_rewards(rewards: pa.Array | pa.ChunkedArray, signals: tuple[str, ...] | None = None
                  ) -> tuple[tuple[str, ...], pa.Array, list[pa.Array]]:
    """(signals, the map left for the other rollouts, each signal's values) of a canonical `rewards` column.
    `signals`: those the columns hold (default: the first rollout's, when its keys are distinct). A rollout whose
    keys are exactly `signals` in that order has its values in the columns and a null map; any other keeps its
    map and nulls in the columns. A null map (not canonical) reads back as an empty one."""
    m = rewards.combine_chunks() if isinstance(rewards, pa.ChunkedArray) else rewards
    if m.offset:  # (a slice's offsets index its parent's keys and items)
        m = pa.concat_arrays([m])
    n = len(m)
    offsets = np.asarray(m.offsets, np.int64)
    lengths = np.diff(offsets)
    if m.null_count:  # (not canonical) a null map is kept as an empty one
        valid = np.asarray(m.is_valid(), bool)
        entries = pa.array(np.flatnonzero(np.repeat(valid, lengths)) + offsets[0], pa.int64())
        lengths = np.where(valid, lengths, 0)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        m = pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), m.keys.take(entries), m.items.take(entries),
                                    type=m.type)
    if signals is None:
        first = m.keys.slice(offsets[0], lengths[0]).to_pylist() if n else []
        signals = tuple(first) if len(set(first)) == len(first) else ()
    k = len(signals)
    row = np.repeat(np.arange(n), lengths)
    keys = m.keys.slice(offsets[0], offsets[-1] - offsets[0]) if n else m.keys.slice(0, 0)
    slot = np.asarray(pc.fill_null(pc.index_in(keys, value_set=pa.array(signals, pa.string())), -1), np.int64)
    wrong = slot != np.arange(len(row)) + offsets[0] - offsets[row]  # a key not in its place
    shared = (lengths == k) & (np.bincount(row[wrong], minlength=n) == 0)
    if shared.all():
        left = pa.nulls(n, m.type)
    elif not shared.any():
        left = m
    else:
        left = pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), m.keys, m.items, type=m.type,
                                       mask=pa.array(shared))
    starts = offsets[:-1]
    values = []
    for j in range(k):
        at = pa.array(starts + j, pa.int64(), mask=~shared)
        values.append(m.items.take(at))
    return tuple(signals), left, values


def join_rewards(part: pa.Table) -> pa.Array:
    """The canonical `rewards` of a part's rows: its map, else its reward columns' values (`split_rewards`)."""
    stored = part.column("rewards").combine_chunks()
    if stored.offset:
        stored = pa.concat_arrays([stored])
    signals = part_signals(part.schema)
    n, k = len(stored), len(signals)
    if not stored.null_count:
        return stored
    shared = np.asarray(stored.is_null(), bool)
    offsets = np.asarray(stored.offsets, np.int64)
    lengths = np.where(shared, k, np.diff(offsets))
    out = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    row = np.repeat(np.arange(n), lengths)
    at = np.arange(int(out[-1])) - out[row]  # an entry's place in its row
    # entries drawn from a pool: the columns' values (signal j of row i at j * n + i), then the stored maps'
    pool_keys = pa.concat_arrays([pa.array(signals, pa.string()).take(pa.array(np.repeat(np.arange(k), n))),
                                  stored.keys.cast(pa.string())])
    pool_items = pa.concat_arrays([part.column(reward_column(s)).combine_chunks().cast(pa.float64())
                                   for s in signals] + [stored.items])
    take = np.where(shared[row], at * n + row, n * k + offsets[:-1][row] + at)
    index = pa.array(take, pa.int64())
    return pa.MapArray.from_arrays(pa.array(out, pa.int32()), pool_keys.take(index), pool_items.take(index),
                                   type=pa.map_(pa.string(), pa.float64()))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` (a part's rows) with the reward columns of `schema`: rows of other signals keep their map."""
    if table.schema.equals(schema):
        return table
    signals, left, values = split_rewards(join_rewards(table), part_signals(schema))
    arrays = {name: table.column(name) for name in table.column_names}
    arrays["rewards"] = left
    arrays.update(zip((reward_column(s) for s in signals), values))
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


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
        if field.name == "rewards":
            arrays.append(join_rewards(part))
            continue
        arrays.append((_text(part, field.name) if spanned else part.column(field.name)).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def read_columns(columns: list[str], schema: pa.Schema | None = None) -> list[str]:
    """The part columns needed to produce canonical `columns` (`rewards`: with the reward columns of the part's
    `schema`, which a caller that reads `rewards` of a layout-5 part must give)."""
    need = []
    for name in columns:
        need.append(name)
        if name in SPANS:
            need += ["completion", *SPANS[name]]
        if name == "rewards" and schema is not None:
            need += [reward_column(s) for s in part_signals(schema)]
    return list(dict.fromkeys(need))


def read_part(path: str | Path, columns: list[str], layout: int = LAYOUT) -> pa.Table:
    """Canonical `columns` of one part file, read with Arrow (no database connection)."""
    absent = [c for c in columns if ADDED.get(c, 0) > layout]
    present = [c for c in columns if c not in absent]
    if layout < 2:
        table = pq.read_table(path, columns=present)
    else:
        schema = pq.read_schema(path) if "rewards" in present and layout >= REWARDS_LAYOUT else None
        table = to_canonical(pq.read_table(path, columns=read_columns(present, schema))).select(present)
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


def view_columns(layout: int = LAYOUT, signals: tuple[str, ...] | None = None) -> str:
    """The SELECT list that turns parts of `layout` (from layout 5: whose rollouts share `signals`, as the
    manifest records them) into canonical columns (DuckDB SQL). Building `rewards` from a part's columns costs
    ~6x reading a stored map: a query over many rollouts reads a signal by `reward_sql` instead."""
    items = []
    for name in ROLLOUT_SCHEMA.names:
        if ADDED.get(name, 0) > layout:
            items.append(f'CAST(NULL AS {_DUCKDB_TYPES[name]}) AS "{name}"')
        elif name == "rewards":
            items.append(f'{rewards_sql(layout, signals)} AS "rewards"')
        elif name in SPANS and layout >= 2:
            start, end = SPANS[name]  # a byte slice of the completion (BLOB slices are 1-based, end inclusive)
            items.append(f'CASE WHEN "{start}" IS NULL THEN "{name}" '
                         f'ELSE decode(encode(completion)["{start}" + 1:"{end}"]) END AS "{name}"')
        else:
            items.append(f'"{name}"')
    return ", ".join(items)


def rewards_sql(layout: int, signals: tuple[str, ...] | None = None) -> str:
    """The canonical `rewards` map over a part of `layout` read as stored (`view_columns`)."""
    if layout < REWARDS_LAYOUT:
        return '"rewards"'
    return f'CASE WHEN "rewards" IS NULL THEN {_reward_map(_signals(layout, signals))} ELSE "rewards" END'


# (the SQL helpers below quote with the store's `sql_string`, `sql_list`, `sql_ident`, imported when called:
# the store imports this module)


def reward_sql(signal: str, layout: int, signals: tuple[str, ...] | None = None) -> str:
    """`signal`'s value (DOUBLE; NULL where the rollout lacks it) over a part of `layout` read as stored (not
    through `view_columns`), whose rollouts share `signals` from layout 5."""
    from .store import sql_ident, sql_string

    at = sql_string(signal)
    if layout >= REWARDS_LAYOUT and signal in _signals(layout, signals):
        return f'CASE WHEN "rewards" IS NULL THEN {sql_ident(reward_column(signal))} ELSE "rewards"[{at}] END'
    return f'CAST("rewards"[{at}] AS DOUBLE)'


def has_reward_sql(signal: str, layout: int, signals: tuple[str, ...] | None = None) -> str:
    """Whether a rollout logs `signal` (a value or null: `map_contains`), over a part as `reward_sql` reads it."""
    from .store import sql_string

    if layout >= REWARDS_LAYOUT and signal in _signals(layout, signals):
        return f'("rewards" IS NULL OR map_contains("rewards", {sql_string(signal)}))'
    return f'coalesce(map_contains("rewards", {sql_string(signal)}), FALSE)'


def same_signals_sql(wanted: tuple[str, ...], layout: int, signals: tuple[str, ...] | None = None) -> str:
    """Whether a rollout logs exactly `wanted`, in that order, over a part as `reward_sql` reads it."""
    from .store import sql_list

    listed = f"{sql_list(list(wanted))}::VARCHAR[]"
    if layout < REWARDS_LAYOUT:
        return f'map_keys("rewards") IS NOT DISTINCT FROM {listed}'
    shared = "TRUE" if tuple(_signals(layout, signals)) == tuple(wanted) else "FALSE"
    return f'CASE WHEN "rewards" IS NULL THEN {shared} ELSE map_keys("rewards") IS NOT DISTINCT FROM {listed} END'


def _signals(layout: int, signals: tuple[str, ...] | None) -> tuple[str, ...]:
    if signals is None:  # a layout-5 part's columns are not known from its layout alone
        raise ValueError(f"a part of layout {layout} needs its reward signals (the manifest's) to be read")
    return signals


def _reward_map(signals: tuple[str, ...]) -> str:
    from .store import sql_ident, sql_list

    values = ", ".join(sql_ident(reward_column(s)) for s in signals)
    return f"map({sql_list(list(signals))}::VARCHAR[], [{values}]::DOUBLE[])"


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
