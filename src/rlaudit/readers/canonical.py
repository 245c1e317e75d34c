"""rlaudit's own canonical JSONL/Parquet, and any JSONL/Parquet table given a column mapping.

Canonical records use the column names of `rlaudit.schema` (`step`, `prompt`, `completion`, `rewards` as an
object of signal -> number, `grader_inputs` as an object of grader -> text, ...). Other tables are read with a
mapping `canonical=source` (`--columns step=global_step,completion=response`); numeric fields that are not mapped
become reward signals, like TRL's reward columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import register
from .base import RAW_COLUMNS, ReadContext, Reader, SourceFile, map_array, metadata_json
from .jsonl import iter_json_records

_BATCH = 8192
_SCALAR = {"step", "split", "group_id", "sample_index", "system_prompt", "task", "prompt", "completion",
           "reasoning", "answer", "reward", "advantage"}
_SKIP_DIRS = {".rlaudit", ".git", "__pycache__"}


def _table_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    return sorted(p for p in source.rglob("*") if p.suffix in (".jsonl", ".parquet") and p.is_file()
                  and not _SKIP_DIRS & set(p.relative_to(source).parts) and not p.name.startswith("."))


@register
class CanonicalReader(Reader):
    name = "canonical"
    description = "rlaudit canonical JSONL/Parquet (*.jsonl, *.parquet), or any table with --columns mapping"

    @classmethod
    def detect(cls, source: Path) -> bool:
        return bool(_table_files(source))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        return [SourceFile(p, str(p.relative_to(root))) for p in _table_files(source)]

    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        records = self._records(file, ctx)
        batch: list[tuple[int, dict[str, Any]]] = []
        for item in records:
            batch.append(item)
            if len(batch) >= _BATCH:
                yield self._to_raw(batch, file, ctx)
                batch = []
        if batch:
            yield self._to_raw(batch, file, ctx)

    def _records(self, file: SourceFile, ctx: ReadContext) -> Iterator[tuple[int, dict[str, Any]]]:
        if file.path.suffix == ".parquet":
            pf = pq.ParquetFile(file.path)
            row = 0
            for rb in pf.iter_batches(batch_size=_BATCH):
                for rec in rb.to_pylist():
                    row += 1
                    yield row, rec
        else:
            yield from iter_json_records(file, ctx)

    def _to_raw(self, batch: list[tuple[int, dict[str, Any]]], file: SourceFile, ctx: ReadContext) -> pa.Table:
        mapping = ctx.options.columns  # canonical -> source
        reverse = {v: k for k, v in mapping.items()}
        cols: dict[str, list[Any]] = {k: [] for k in _SCALAR}
        rewards, graders, metas, lines = [], [], [], []
        for lineno, rec in batch:
            row = {reverse.get(k, k): v for k, v in rec.items()}
            problem = _check(row)
            if problem:
                ctx.bad(file, lineno, problem, str(rec)[:2000])
                continue
            lines.append(lineno)
            for k in _SCALAR:
                cols[k].append(row.pop(k, None))
            r = row.pop("rewards", None) or {}
            g = row.pop("grader_inputs", None) or {}
            if isinstance(r, list):  # Parquet maps come back as [(k, v), ...]
                r = dict(r)
            if isinstance(g, list):
                g = dict(g)
            meta = row.pop("metadata", None)
            meta = dict(meta) if isinstance(meta, dict) else {}
            for k in list(row):  # unmapped numeric fields are reward signals; the rest is metadata
                v = row.pop(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    r[k] = v
                else:
                    meta[k] = v
            rewards.append({str(k): _num(v) for k, v in r.items()})
            graders.append({str(k): str(v) for k, v in g.items() if v is not None})
            metas.append(meta)
        arrays = {k: pa.array(_clean(k, v), RAW_COLUMNS[k]) for k, v in cols.items()}
        arrays["rewards"] = map_array(rewards, pa.float64())
        arrays["grader_inputs"] = map_array(graders, pa.string())
        arrays["metadata"] = metadata_json(metas)
        arrays["line"] = pa.array(lines, pa.int64())
        return pa.table(arrays)


def _check(row: dict[str, Any]) -> str | None:
    """Why a record cannot be a rollout, or None."""
    for name in ("prompt", "completion"):
        if name not in row:
            return f"missing required field {name!r}"
    if "step" not in row:
        return "missing required field 'step' (map it with --columns step=FIELD)"
    try:
        if row["step"] is None or int(row["step"]) != float(row["step"]):
            raise ValueError
    except (TypeError, ValueError):
        return f"field 'step': expected an integer, got {row['step']!r}"
    for name in ("reward", "advantage"):
        v = row.get(name)
        if v is not None and not _is_number(v):
            return f"field {name!r}: expected a number, got {v!r}"
    r = row.get("rewards")
    if r is not None and not isinstance(r, (dict, list)):
        return f"field 'rewards': expected an object of signal -> number, got {type(r).__name__}"
    if isinstance(r, dict):
        for k, v in r.items():
            if v is not None and not _is_number(v):
                return f"field 'rewards.{k}': expected a number, got {v!r}"
    return None


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _clean(name: str, values: list[Any]) -> list[Any]:
    typ = RAW_COLUMNS[name]
    if pa.types.is_integer(typ):
        return [None if v is None else int(v) for v in values]
    if pa.types.is_floating(typ):
        return [None if v is None else float(v) for v in values]
    return [None if v is None else _text(v) for v in values]


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(m, dict) and "content" in m for m in v):  # a message list
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in v)
    return str(v)
