"""Vectorised column helpers shared by the trainer readers: numbers, maps, metadata JSON, extra columns.

Everything here works on whole Arrow columns; per-row Python is confined to the rows that are bad.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .base import ReadOptions, SourceFile
from .messages import as_text, combine, is_message_list_type, is_text_type


def to_numbers(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(float64 values, bad-row mask) of a column that should hold numbers.

    Integers, floats and booleans convert; numeric strings ("0.5") convert too (some loggers stringify); any
    other string is a bad row. Nulls stay null and are not bad (callers decide whether the field is required).
    """
    values = combine(values)
    typ = values.type
    if pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_boolean(typ) or pa.types.is_null(typ):
        return pc.cast(values, pa.float64(), safe=False), pa.array(np.zeros(len(values), dtype=bool))
    if is_text_type(typ) or pa.types.is_dictionary(typ):
        text = pc.utf8_trim_whitespace(values.cast(pa.string()))
        ok = pc.match_substring_regex(text, r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^(?i:[-+]?(nan|inf|infinity))$")
        bad = pc.fill_null(pc.invert(ok), False)
        cleaned = pc.if_else(bad, pa.scalar(None, pa.string()), text)
        return cleaned.cast(pa.float64()), bad
    return pa.nulls(len(values), pa.float64()), pc.is_valid(values)


#: Largest step size accepted: a step beyond it (2^62, 1e300) is a corrupt record, not a training step, and would
#: overflow step arithmetic downstream.
MAX_STEP = 10**9


def to_steps(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(int64 steps, bad-row mask): integers, integral floats and integer strings no larger than `MAX_STEP` in
    size are steps."""
    numbers, bad = to_numbers(values)
    finite = pc.fill_null(pc.is_finite(numbers), True)
    integral = pc.fill_null(pc.equal(pc.floor(numbers), numbers), True)
    in_range = pc.fill_null(pc.less_equal(pc.abs(numbers), float(MAX_STEP)), True)
    bad = pc.or_(bad, pc.invert(pc.and_(pc.and_(finite, integral), in_range)))
    safe = pc.if_else(bad, pa.scalar(None, pa.float64()), numbers)
    return safe.cast(pa.int64()), bad


def map_from_columns(columns: dict[str, pa.Array], value_type: pa.DataType, drop_null: bool, n: int) -> pa.Array:
    """A map<string, value_type> array whose row i holds {name: columns[name][i]} (vectorised).

    With `drop_null`, null entries are left out of the row's map (grader inputs: a grader that saw nothing).
    Without it, nulls become NaN for float maps (reward signals: NaN means the signal did not apply).
    """
    names = list(columns)
    typ = pa.map_(pa.string(), value_type)
    if not names:
        return pa.MapArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()),
                                       pa.array([], value_type)).cast(typ)
    k = len(names)
    arrays = [pc.cast(combine(columns[name]), value_type, safe=False) for name in names]
    if pa.types.is_floating(value_type) and not drop_null:
        matrix = np.column_stack([a.to_numpy(zero_copy_only=False) for a in arrays]).astype(np.float64)
        items = pa.array(matrix.ravel())
        keys = pc.take(pa.array(names, pa.string()), pa.array(np.tile(np.arange(k), n)))
        offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
        return pa.MapArray.from_arrays(offsets, keys, items).cast(typ)
    stacked = pa.concat_arrays(arrays)
    order = (np.arange(k, dtype=np.int64)[None, :] * n + np.arange(n, dtype=np.int64)[:, None]).ravel()
    key_codes = np.tile(np.arange(k), n)
    if drop_null:
        valid = stacked.is_valid().to_numpy(zero_copy_only=False)[order]
        order, key_codes = order[valid], key_codes[valid]
        counts = valid.reshape(n, k).sum(axis=1)
    else:
        counts = np.full(n, k)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    keys = pc.take(pa.array(names, pa.string()), pa.array(key_codes))
    items = pc.take(stacked, pa.array(order))
    return pa.MapArray.from_arrays(pa.array(offsets), keys, items).cast(typ)


def metadata_from_columns(table: pa.Table) -> pa.Array:
    """One JSON object per row from `table`'s columns (null where every field is null). Vectorised in DuckDB."""
    if table.num_columns == 0:
        return pa.nulls(table.num_rows, pa.string())
    fast = _metadata_from_plain_columns(table)
    if fast is not None:
        return fast
    from ..store import sql_ident  # (the store imports the readers)

    names = table.column_names
    as_json = {f.name for f in table.schema if f.metadata and f.metadata.get(b"rlaudit") == b"json"}
    fields = ", ".join(f"{sql_ident(c)} := {sql_ident(c)}" + ("::JSON" if c in as_json else "") for c in names)
    any_valid = " OR ".join(f"{sql_ident(c)} IS NOT NULL" for c in names)
    out = duck_query(f"SELECT CASE WHEN {any_valid} THEN to_json(struct_pack({fields}))::VARCHAR END AS m "
                     "FROM src", table)
    return combine(out.column(0)).cast(pa.string())


def _metadata_from_plain_columns(table: pa.Table) -> pa.Array | None:
    """`metadata_from_columns` with Arrow string kernels, for tables of text and boolean columns only.

    Leftover fields are usually short strings (verl's `gts`, `pred`, request ids), and a DuckDB query costs
    ~3 ms per batch however small the batch is. Text needs only `\\` and `"` escaped unless it holds control
    characters, whose escapes vary per character; those tables, like numbers (whose formatting DuckDB owns)
    and nested values, return None and take the DuckDB path. The output is byte-identical to that path.
    """
    pieces: list[pa.Array | str] = []
    valid = None
    for i, field in enumerate(table.schema):
        typ = field.type
        name_json = json.dumps(field.name, ensure_ascii=False)
        if (field.metadata and field.metadata.get(b"rlaudit") == b"json") or name_json[1:-1] != field.name:
            return None
        values = combine(table.column(i))
        if is_text_type(typ):
            values = values.cast(pa.string())
            if pc.any(pc.match_substring_regex(values, r"[\x00-\x1f]")).as_py():
                return None
            escaped = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
            text = pc.binary_join_element_wise('"', escaped, '"', "")
        elif pa.types.is_boolean(typ):
            text = pc.if_else(values, "true", "false")
        else:
            return None
        pieces += [("{" if i == 0 else ",") + name_json + ":", pc.fill_null(text, "null")]
        valid = pc.is_valid(values) if valid is None else pc.or_(valid, pc.is_valid(values))
    out = pc.binary_join_element_wise(*pieces, "}", "")
    return pc.if_else(valid, out, pa.scalar(None, pa.string()))


_DUCK = threading.local()


def duck_query(sql: str, table: pa.Table) -> pa.Table:
    """Run `sql` over `table` (registered as `src`) on this thread's DuckDB cursor.

    Opening a DuckDB database costs ~15 ms, more than the JSON encoding of one batch, and readers run in a
    fresh thread per file (`prefetch`); so each thread keeps a cursor of the process's one database for such
    work (`duck.cursor`).
    """
    from .. import duck

    held = getattr(_DUCK, "cursor", None)
    if held is None or held[0] != os.getpid():
        held = _DUCK.cursor = (os.getpid(), duck.cursor())
    cur = held[1]
    cur.register("src", table)
    try:
        return cur.sql(sql).to_arrow_table()
    finally:
        cur.unregister("src")


@dataclass
class Extras:
    """A table's non-canonical columns, sorted into reward signals, grader inputs and metadata."""

    rewards: dict[str, pa.Array]
    grader_inputs: dict[str, pa.Array]
    metadata: pa.Table


def classify_extras(table: pa.Table, known: set[str], options: ReadOptions, bool_is_signal: bool) -> Extras:
    """Sort the columns of `table` not in `known`.

    - a column named in `--grader-input GRADER=COLUMN`, or a text column `<grader>_input`: grader input;
    - a numeric column (and a boolean one when `bool_is_signal`): a reward signal;
    - anything else: metadata (JSON per row).
    """
    by_column = {column: grader for grader, column in options.grader_inputs.items()}
    rewards: dict[str, pa.Array] = {}
    graders: dict[str, pa.Array] = {}
    meta: dict[str, pa.Array] = {}
    for name in table.column_names:
        if name in known or name == "line" or name.startswith("__index_level_"):
            continue
        values = combine(table.column(name))
        typ = values.type
        if name in by_column:
            graders[by_column[name]] = as_text(values) if _text_like(typ) else values.cast(pa.string())
        elif name.endswith("_input") and len(name) > len("_input") and _text_like(typ):
            graders.setdefault(name[: -len("_input")], as_text(values))
        elif pa.types.is_integer(typ) or pa.types.is_floating(typ) or (bool_is_signal and pa.types.is_boolean(typ)):
            rewards[name] = pc.cast(values, pa.float64(), safe=False)
        else:
            meta[name] = values
    schema = pa.schema([table.schema.field(name) for name in meta])
    metadata = pa.Table.from_arrays(list(meta.values()), schema=schema) if meta else \
        pa.table({"_": pa.nulls(table.num_rows)}).drop(["_"])
    return Extras(rewards, graders, metadata)


def _text_like(typ: pa.DataType) -> bool:
    return is_text_type(typ) or pa.types.is_dictionary(typ) or is_message_list_type(typ)


def missing_graders(options: ReadOptions, columns: list[str], file: SourceFile) -> None:
    """--grader-input names a column the file (its `columns`) does not have: a user mistake worth an error, not
    silence."""
    absent = sorted(c for c in options.grader_inputs.values() if c not in columns)
    if absent:
        from ..errors import RlauditError

        raise RlauditError(f"{file.relpath}: --grader-input column(s) {absent} not found; the file has "
                           f"{', '.join(columns)}")
