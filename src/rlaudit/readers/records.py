"""Raw tables from per-record rows, for readers whose records are too nested for a columnar parse.

Tinker rollout summaries, NeMo RL train-data lines and ART trajectories are parsed record by record in Python:
each reader turns one record into a plain dict of canonical raw fields (or raises `BadField` naming the field),
and `rows_table` assembles a batch of those dicts into the raw Arrow table `finalize` expects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa

from .base import RAW_COLUMNS, ReadContext, SourceFile, map_array, metadata_json

#: Rows per raw table: bounds memory while keeping Arrow's per-batch overhead small.
BATCH_ROWS = 4096

_TOOL_CALLS = pa.list_(pa.struct([("name", pa.string()), ("arguments", pa.string())]))
_TOOL_OUTPUTS = pa.list_(pa.string())


class BadField(Exception):
    """A record that cannot be a rollout; the message names the field and what was expected."""


def parsed_rows(records: Iterable[tuple[int, Any]], parse: Callable[[Any], dict[str, Any]], file: SourceFile,
                ctx: ReadContext) -> Iterator[dict[str, Any]]:
    """The rows `parse` makes of (line, record) pairs, each with its `line`. A record it rejects with `BadField`
    is quarantined with its line, the field named in the reason and its raw text; the others go on."""
    for line, record in records:
        try:
            row = parse(record)
        except BadField as exc:
            ctx.bad(file, line, str(exc), json.dumps(record, ensure_ascii=False, default=str)[:2000])
            continue
        row["line"] = line
        yield row


def number(value: Any, name: str, required: bool = False) -> float | None:
    """A float from a JSON number (bools are not numbers here); None when absent and not required."""
    if value is None:
        if required:
            raise BadField(f"missing required field {name!r} (absent or null)")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadField(f"field {name!r}: expected a number, got {_shown(value)}")
    return float(value)


def integer(value: Any, name: str, required: bool = False) -> int | None:
    if value is None:
        if required:
            raise BadField(f"missing required field {name!r} (absent or null)")
        return None
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise BadField(f"field {name!r}: expected an integer, got {_shown(value)}")
    return int(value)


def obj(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadField(f"field {name!r}: expected an object, got {_shown(value)}")
    return value


def seq(value: Any, name: str, required: bool = False) -> list[Any]:
    if value is None:
        if required:
            raise BadField(f"missing required field {name!r} (absent or null)")
        return []
    if not isinstance(value, list):
        raise BadField(f"field {name!r}: expected a list, got {_shown(value)}")
    return value


def text(value: Any, name: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise BadField(f"missing required field {name!r} (absent or null)")
        return None
    if not isinstance(value, str):
        raise BadField(f"field {name!r}: expected text, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The raw table of `rows` (dicts keyed by `RAW_COLUMNS` names plus `line`/`sub`/`tool_calls`/
    `tool_outputs`). A key no row has is left out, so `finalize` fills or derives it (e.g. the think-tag split
    when no row gives `reasoning`/`answer`)."""
    present: set[str] = set()
    for r in rows:
        present.update(k for k, v in r.items() if v is not None)
    cols: dict[str, pa.Array] = {"line": pa.array([r["line"] for r in rows], pa.int64())}
    if "sub" in present:
        cols["sub"] = pa.array([r.get("sub") for r in rows], pa.int32())
    for name, typ in RAW_COLUMNS.items():
        if name not in present and name not in ("rewards", "grader_inputs"):
            continue
        if name in ("rewards", "grader_inputs"):
            cols[name] = map_array([r.get(name) or {} for r in rows], typ.item_type)
        elif name == "metadata":
            cols[name] = metadata_json([r.get(name) for r in rows])
        elif name == "tool_calls":
            cols[name] = pa.array([r.get(name) or None for r in rows], typ)
        elif name == "tool_outputs":
            cols[name] = pa.array([r.get(name) or None for r in rows], typ)
        else:
            cols[name] = pa.array([r.get(name) for r in rows], typ)
    return pa.table(cols)


def nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value
