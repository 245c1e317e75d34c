"""Row validation for raw reader batches: each problem names the field and what was expected."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .base import FileRows, ReadContext, SourceFile
from .columns import to_numbers, to_steps
from ..text import ThinkTags
from .messages import as_text, combine, is_message_list_type, is_text_type, turn_columns


def report_bad_rows(bad: pa.Array, reasons: pa.Array | str, lines: pa.Array, file: SourceFile | FileRows,
                    ctx: ReadContext, raw: pa.Array | None = None) -> None:
    """Report every row flagged in `bad` (a loop over the bad rows only), each with its file."""
    idx = np.flatnonzero(pc.fill_null(bad, False).to_numpy(zero_copy_only=False))
    line_list = lines.to_pylist()
    reason_list = reasons.to_pylist() if isinstance(reasons, pa.Array) else None
    raw_list = raw.to_pylist() if raw is not None and len(idx) else None
    for i in idx:
        reason = reason_list[i] if reason_list is not None else reasons
        where = file.of(int(i)) if isinstance(file, FileRows) else file
        ctx.bad(where, line_list[i], reason, (str(raw_list[i])[:2000] if raw_list else ""))


class Validator:
    """Accumulates per-row problems of one raw batch, reports them, and drops the bad rows.

    Each check names the field and what was expected, so the quarantine reads like
    "field 'score': expected a number, got 'abc'".
    """

    def __init__(self, table: pa.Table, lines: pa.Array, file: SourceFile | FileRows, ctx: ReadContext):
        """`file`: the file the rows are of, or each row's file (`FileRows`)."""
        self.table, self.lines, self.file, self.ctx = table, lines, file, ctx
        self.reason = pa.nulls(table.num_rows, pa.string())

    def flag(self, bad: pa.Array, reason: str | pa.Array) -> None:
        bad = pc.fill_null(bad, False)
        if not pc.any(bad).as_py():
            return
        reason = reason if isinstance(reason, pa.Array) else pa.array([reason] * len(bad), pa.string())
        self.reason = pc.coalesce(self.reason, pc.if_else(bad, reason, pa.scalar(None, pa.string())))

    def require(self, name: str, values: pa.Array | None) -> None:
        if values is None:
            self.flag(pa.array(np.ones(self.table.num_rows, dtype=bool)), f"missing required field {name!r}")
        else:
            self.flag(pc.is_null(values), f"missing required field {name!r} (absent or null)")

    def number(self, name: str, values: pa.Array | None, required: bool = False) -> pa.Array | None:
        if values is None:
            if required:
                self.require(name, None)
            return None
        numbers, bad = to_numbers(values)
        if pc.any(bad).as_py():
            self.flag(bad, self._got(name, "a number", values))
        if required:
            self.flag(pc.and_(pc.is_null(numbers), pc.invert(bad)), f"missing required field {name!r} (absent or null)")
        return numbers

    def step(self, name: str, values: pa.Array | None) -> pa.Array | None:
        if values is None:
            return None
        steps, bad = to_steps(values)
        if pc.any(bad).as_py():
            self.flag(bad, self._got(name, "an integer step", values))
        return steps

    def completion(self, values: pa.Array | None, tags: ThinkTags) -> dict[str, pa.Array]:
        """Raw completion columns of a required `completion` field: text as it is, or a message list split by the
        multi-turn rule (`messages.turn_columns`: reasoning of every turn, tool calls and outputs apart)."""
        if values is not None and is_message_list_type(values.type):
            self.require("completion", values)
            return turn_columns(values, tags)
        return {"completion": self.text("completion", values, required=True)}

    def text(self, name: str, values: pa.Array | None, required: bool = False) -> pa.Array | None:
        if values is None:
            if required:
                self.require(name, None)
            return None
        values = combine(values)
        typ = values.type
        if not (is_text_type(typ) or pa.types.is_dictionary(typ) or is_message_list_type(typ)):
            self.flag(pc.is_valid(values), f"field {name!r}: expected text or a list of chat messages, "
                                            f"got {_type_name(typ)}")
            values = pa.nulls(len(values), pa.string())
        else:
            values = as_text(values)
        if required:
            self.require(name, values)
        return values

    def _got(self, name: str, expected: str, values: pa.Array) -> pa.Array:
        shown = pc.utf8_slice_codeunits(combine(values).cast(pa.string()), 0, 80) if _castable_to_str(values) \
            else pa.array([_type_name(values.type)] * len(values), pa.string())
        return pc.binary_join_element_wise(pa.scalar(f"field {name!r}: expected {expected}, got "),
                                           pc.fill_null(shown, "null"), "")

    def done(self) -> tuple[pa.Table, pa.Array, RowFilter]:
        """(good rows, their line numbers, the filter that keeps the good rows of any parallel column)."""
        bad = pc.is_valid(self.reason)
        if not pc.any(bad).as_py():
            return self.table, self.lines, RowFilter(None)
        report_bad_rows(bad, self.reason, self.lines, self.file, self.ctx)
        keep = RowFilter(pc.invert(bad))
        return keep(self.table), keep(self.lines), keep


class RowFilter:
    """Keeps the good rows of a column or table; a no-op (no copy) when every row is good."""

    def __init__(self, mask: pa.Array | None):
        self.mask = mask

    def __call__(self, values):
        return values if self.mask is None else values.filter(self.mask)


def _castable_to_str(values: pa.Array) -> bool:
    t = values.type
    return is_text_type(t) or pa.types.is_dictionary(t) or pa.types.is_integer(t) or pa.types.is_floating(t) \
        or pa.types.is_boolean(t)


def _type_name(typ: pa.DataType) -> str:
    if pa.types.is_struct(typ) or pa.types.is_map(typ):
        return "an object"
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return "a list"
    if pa.types.is_boolean(typ):
        return "a boolean"
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return "a number"
    return str(typ)


@dataclass(frozen=True)
class Loaded:
    """A Parquet file opened, and read whole where it is small, before its checks (`load_parquet`): the file
    (None where it could not be opened: `error` says why) and its rows (None where not read)."""

    pf: pq.ParquetFile | None
    error: Exception | None = None
    table: pa.Table | None = None


def load_parquet(path: Path, whole_rows: int = -1) -> Loaded:
    """`path` opened as `open_parquet` opens it, and read whole when it has at most `whole_rows` rows (a read
    that fails leaves `table` None: the file is read again, and its error reported, batch by batch): a reader
    that needs a small file whole reads it once, for its checks and for its rows (TRL's step files)."""
    source = None
    try:
        source = pa.OSFile(str(path))
        pf = pq.ParquetFile(source, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as exc:
        if source is not None:
            source.close()
        return Loaded(None, exc)
    table = None
    if pf.metadata.num_rows <= whole_rows:
        with contextlib.suppress(pa.ArrowInvalid, OSError):
            table = pf.read(use_threads=False)
    return Loaded(pf, None, table)


def open_parquet(file: SourceFile, ctx: ReadContext, required: tuple[str, ...],
                 layout: str, loaded: Loaded | None = None) -> pq.ParquetFile | None:
    """The Parquet file behind `file` when it is readable and has the `required` columns; otherwise the file is
    quarantined with what was expected (`layout`: the columns this trainer writes) and None returned. `loaded`:
    the file as `load_parquet` opened it already (else it is opened here).

    Opened without pre-buffering (whose reads go through Arrow's I/O thread): a reader decodes its file on a
    thread of its own (`prefetch`), beside ingest's finalize and write threads, so Arrow's threads only add
    hand-offs (with `use_threads=False` on the read, ~0.2 of ~1.3 CPU s for the 1M benchmark's 200 files).
    Opened as a local file (`pa.OSFile`), not a path: Arrow resolves a path's filesystem on every open, ~0.05 ms
    of ~0.13 a file (3,906 step files: ~0.2 s). Not memory-mapped: a file a trainer truncates under a map
    kills the process (SIGBUS) where a read fails."""
    loaded = loaded or load_parquet(file.path)
    pf = loaded.pf
    if pf is None:
        ctx.bad(file, None, f"not a readable Parquet file ({loaded.error})")
        return None
    names = pf.schema_arrow.names
    absent = [c for c in required if c not in names]
    if absent:
        ctx.bad(file, None, f"missing required column(s) {absent}; {layout} (found {names})")
        return None
    return pf
