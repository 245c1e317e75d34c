"""rlaudit's own canonical JSONL/Parquet, and any JSONL/Parquet table given a column mapping.

Canonical records use the column names of `rlaudit.schema`: `step`, `prompt`, `completion` (required), and
optionally `split`, `group_id`, `sample_index`, `task`, `system_prompt`, `reasoning`, `answer`, `reward`,
`advantage`, `rewards` (an object / struct / map of signal -> number; null means the signal did not apply and
becomes NaN), `grader_inputs` (object / struct / map of grader -> text), `metadata`.

Other tables are read with a mapping canonical=source (`--columns step=global_step,completion=response` or
`--columns-file`); a mapped field that a file lacks is an error. As in the TRL reader, unmapped numeric fields
are reward signals, text fields `<grader>_input` are grader inputs, and every other field is metadata.
`prompt` and `completion` may be chat message lists ({role, content}); prompts are rendered 'role: content' per
line so the system prompt is found, and an assistant `reasoning_content` becomes the reasoning.

Both file kinds are read columnar: Parquet in record batches, JSONL through `jsonl.read_json_chunks`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import RlauditError
from . import register
from .base import PrefetchingReader, ReadContext, SourceFile
from .columns import classify_extras, duck_query, map_from_columns, metadata_from_columns
from .messages import combine
from .validate import RowFilter, Validator
from .jsonl import first_record_keys, read_json_chunks

BATCH_ROWS = 32_768
_SKIP_DIRS = {".rlaudit", ".git", "__pycache__"}
_TEXT = ("split", "group_id", "system_prompt", "task", "reasoning", "answer")
_KINDS = {"step": "int", "prompt": "text", "completion": "text", "reward": "number", "advantage": "number",
          "sample_index": "int", "rewards": "number_map", "grader_inputs": "text_map"}
_IGNORED = {"run", "rollout_id", "condition"}  # recomputed on ingest
_KNOWN = set(_KINDS) | set(_TEXT) | {"metadata"} | _IGNORED


def _table_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source] if source.suffix in (".jsonl", ".parquet") else []
    return sorted(p for p in source.rglob("*") if p.suffix in (".jsonl", ".parquet") and p.is_file()
                  and not _SKIP_DIRS & set(p.relative_to(source).parts) and not p.name.startswith("."))


@register
class CanonicalReader(PrefetchingReader):
    name = "canonical"
    maps_columns = True
    description = "rlaudit canonical JSONL/Parquet (*.jsonl, *.parquet), or any table with --columns mapping"

    @classmethod
    def detect(cls, source: Path) -> bool:
        """Some table file has a record that can be read whole: empty files and first lines still being written
        decide nothing (a trainer's files seen too early must not be taken for canonical ones)."""
        for path in _table_files(source)[:8]:
            if path.suffix == ".parquet":
                try:
                    if pq.ParquetFile(path).metadata.num_rows:
                        return True
                except Exception:  # noqa: BLE001 - unreadable (being written): undecided
                    continue
            elif first_record_keys(path):
                return True
        return False

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        return [SourceFile(p, str(p.relative_to(root))) for p in _table_files(source)]

    def _read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        mapping = ctx.options.columns  # canonical -> source
        checked = False
        for table, lines in self._tables(file, ctx):
            if not checked:
                _check_mapping(mapping, table.column_names, file)
                checked = True
            raw = self._raw(_rename(table, mapping), lines, file, ctx)
            if raw is not None:
                yield raw

    def _tables(self, file: SourceFile, ctx: ReadContext) -> Iterator[tuple[pa.Table, pa.Array]]:
        if file.path.suffix == ".parquet":
            try:
                pf = pq.ParquetFile(file.path)
                row = 0
                for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                    lines = pa.array(np.arange(row + 1, row + 1 + batch.num_rows, dtype=np.int64))
                    row += batch.num_rows
                    yield pa.Table.from_batches([batch]), lines
            except (pa.ArrowInvalid, OSError) as exc:
                ctx.bad(file, None, f"not a readable Parquet file ({exc})")
            return
        mapping = ctx.options.columns
        kinds = {mapping.get(k, k): kind for k, kind in _KINDS.items()}
        for chunk in read_json_chunks(file, ctx, kinds):
            yield chunk.table, chunk.lines

    def _raw(self, table: pa.Table, lines: pa.Array, file: SourceFile, ctx: ReadContext) -> pa.Table | None:
        col = (lambda name: combine(table.column(name)) if name in table.column_names else None)
        v = Validator(table, lines, file, ctx)
        raw: dict[str, pa.Array] = {}
        step = v.step("step", col("step"))
        v.require("step", step)
        raw["step"] = step if step is not None else pa.nulls(table.num_rows, pa.int64())
        raw["prompt"] = v.text("prompt", col("prompt"), required=True)
        raw.update(v.completion(col("completion"), ctx.options.think_tags))
        for name in ("reward", "advantage"):
            values = v.number(name, col(name))
            if values is not None:
                raw[name] = values
        index = v.step("sample_index", col("sample_index"))
        if index is not None:
            raw["sample_index"] = index.cast(pa.int32())
        for name in _TEXT:
            values = col(name)
            if values is not None:
                raw.setdefault(name, v.text(name, values))
        rewards = _map_column(v, "rewards", col("rewards"), pa.float64())
        graders = _map_column(v, "grader_inputs", col("grader_inputs"), pa.string())
        extras = classify_extras(table, _KNOWN, ctx.options, bool_is_signal=False)
        _, lines, keep = v.done()
        if not len(lines):
            return None
        n = len(lines)
        raw = {k: keep(a) for k, a in raw.items()}
        raw["rewards"] = _merge_maps(keep(rewards) if rewards is not None else None,
                                     {k: keep(a) for k, a in extras.rewards.items()}, pa.float64(), False, n)
        raw["grader_inputs"] = _merge_maps(keep(graders) if graders is not None else None,
                                           {k: keep(a) for k, a in extras.grader_inputs.items()},
                                           pa.string(), True, n)
        raw["metadata"] = _metadata(col("metadata"), extras.metadata, keep)
        raw["line"] = lines
        return pa.table(raw)


def _rename(table: pa.Table, mapping: dict[str, str]) -> pa.Table:
    """Source field names -> canonical names (a mapped canonical name already in the table is dropped)."""
    if not mapping:
        return table
    reverse = {source: canonical for canonical, source in mapping.items()}
    shadowed = {c for c in mapping if c in table.column_names and c not in reverse}
    if shadowed:
        table = table.drop_columns(sorted(shadowed))
    return table.rename_columns([reverse.get(n, n) for n in table.column_names])


def _check_mapping(mapping: dict[str, str], names: list[str], file: SourceFile) -> None:
    absent = {c: s for c, s in mapping.items() if s not in names}
    if absent:
        pairs = ", ".join(f"{c}={s}" for c, s in absent.items())
        raise RlauditError(f"{file.relpath}: --columns {pairs}: field(s) {sorted(absent.values())} not found; the "
                           f"file has {', '.join(names)}")


def _map_column(v: Validator, name: str, values: pa.Array | None, value_type: pa.DataType) -> pa.Array | None:
    """A map<string, value_type> column from a map, a struct, or (JSON slow path) an already-built map."""
    if values is None:
        return None
    typ = values.type
    if pa.types.is_null(typ):
        return None
    target = pa.map_(pa.string(), value_type)
    if pa.types.is_map(typ):
        try:
            return pc.cast(values, target, safe=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            v.flag(pc.is_valid(values), f"field {name!r}: expected an object of name -> "
                                        f"{'number' if value_type == pa.float64() else 'text'}")
            return None
    if pa.types.is_struct(typ):
        fields = {typ.field(i).name: values.field(i) for i in range(typ.num_fields)}
        ok = all(pa.types.is_integer(a.type) or pa.types.is_floating(a.type) or pa.types.is_null(a.type)
                 or pa.types.is_boolean(a.type) for a in fields.values()) if value_type == pa.float64() else all(
            pa.types.is_string(a.type) or pa.types.is_large_string(a.type) or pa.types.is_null(a.type)
            for a in fields.values())
        if ok:
            struct_valid = values.is_valid()
            fields = {k: pc.if_else(struct_valid, pc.cast(a, value_type, safe=False), pa.scalar(None, value_type))
                      for k, a in fields.items()}
            return map_from_columns(fields, value_type, drop_null=value_type != pa.float64(), n=len(values))
    v.flag(pc.is_valid(values), f"field {name!r}: expected an object of name -> "
                                f"{'number' if value_type == pa.float64() else 'text'}, got {typ}")
    return None


def _merge_maps(given: pa.Array | None, extra: dict[str, pa.Array], value_type: pa.DataType, drop_null: bool,
                n: int) -> pa.Array:
    extra_map = map_from_columns(extra, value_type, drop_null=drop_null, n=n) if extra else None
    if given is None:
        return extra_map if extra_map is not None else map_from_columns({}, value_type, drop_null, n)
    given = pc.if_else(given.is_valid(), given, pa.scalar([], given.type)) if given.null_count else given
    if extra_map is None:
        return given
    keys = pa.ListArray.from_arrays(_offsets(given), given.keys)
    values = pa.ListArray.from_arrays(_offsets(given), given.items)
    extra_keys = pa.ListArray.from_arrays(_offsets(extra_map), extra_map.keys)
    extra_values = pa.ListArray.from_arrays(_offsets(extra_map), extra_map.items)
    all_keys = pc.list_flatten(_concat_lists(keys, extra_keys))
    all_values = pc.list_flatten(_concat_lists(values, extra_values))
    counts = pc.add(pc.list_value_length(keys), pc.list_value_length(extra_keys)).to_numpy()
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.MapArray.from_arrays(offsets, all_keys, all_values).cast(pa.map_(pa.string(), value_type))


def _offsets(arr: pa.Array) -> pa.Array:
    return pc.subtract(arr.offsets, arr.offsets[0])


def _concat_lists(a: pa.ListArray, b: pa.ListArray) -> pa.ListArray:
    """Row-wise concatenation of two list arrays of equal length."""
    la, lb = pc.list_value_length(a).to_numpy(), pc.list_value_length(b).to_numpy()
    n = len(la)
    fa, fb = a.flatten(), b.flatten()
    sa = np.concatenate([[0], np.cumsum(la)])
    sb = np.concatenate([[0], np.cumsum(lb)])
    order = np.empty(int(la.sum() + lb.sum()), dtype=np.int64)
    out_offsets = np.concatenate([[0], np.cumsum(la + lb)])
    # vectorised interleave: for each row, its a-items then its b-items, as indices into concat(fa, fb)
    row_of_a = np.repeat(np.arange(n), la)
    row_of_b = np.repeat(np.arange(n), lb)
    dest_a = out_offsets[row_of_a] + (np.arange(len(row_of_a)) - sa[row_of_a])
    dest_b = out_offsets[row_of_b] + la[row_of_b] + (np.arange(len(row_of_b)) - sb[row_of_b])
    order[dest_a] = np.arange(len(row_of_a))
    order[dest_b] = len(fa) + np.arange(len(row_of_b))
    flat = pc.take(pa.concat_arrays([fa, fb]), pa.array(order))
    return pa.ListArray.from_arrays(pa.array(out_offsets.astype(np.int32)), flat)


def _metadata(given: pa.Array | None, extra: pa.Table, keep: RowFilter) -> pa.Array:
    """The record's own `metadata` (an object or JSON text) with the leftover fields merged in at top level."""
    extra_json = metadata_from_columns(keep(extra))
    if given is None or pa.types.is_null(given.type):
        return extra_json
    given = keep(given)
    if pa.types.is_string(given.type) or pa.types.is_large_string(given.type):
        # JSON object text merges; any other text is kept as {"metadata": text}
        g = "CASE WHEN json_valid(g) AND json_type(g::JSON) = 'OBJECT' THEN g::JSON ELSE to_json({'metadata': g}) END"
    else:
        g = "CASE WHEN g IS NOT NULL THEN to_json(g) END"
    out = duck_query(f"SELECT CASE WHEN g IS NULL THEN e WHEN e IS NULL THEN ({g})::VARCHAR "
                     f"ELSE json_merge_patch(({g}), e::JSON)::VARCHAR END AS m FROM src",
                     pa.table({"g": given, "e": extra_json}))
    return combine(out.column(0)).cast(pa.string())
