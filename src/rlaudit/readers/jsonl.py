"""Fast, robust JSONL reading shared by the JSON-lines readers.

`read_json_chunks` cuts a file into chunks of a few MB at line boundaries and parses each chunk with Arrow's
multi-threaded JSON reader (the fast path). A chunk the fast path cannot take whole (a torn or invalid line, a
line that is not an object, blank lines, invalid UTF-8, a field whose type changes between lines, or a field
whose type the reader did not expect) is re-read line by line with `json` (the slow path): every bad line is
reported to the context with its exact file and line, and the good lines are kept. Either way a chunk comes back
as an Arrow table plus the 1-based line number of each row, so memory is bounded by the chunk size.

`iter_json_records` is the plain line-by-line iterator, for formats too nested for a columnar parse.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

try:  # a dependency of rlaudit (docs/performance.md, session 52); without it `json` reads every line the same
    import orjson as _orjson
except ImportError:  # a platform without its wheels: the tests force this path (`_orjson = None`)
    _orjson = None

from .base import ReadContext, SourceFile
from .columns import MAX_STEP

CHUNK_BYTES = 16 << 20
#: the line-by-line readers' read buffer (`iter_json_lines`)
READ_BUFFER = 1 << 20

#: Field metadata marking a string column that holds JSON text (mixed-type values the slow path encoded), so
#: that metadata JSON embeds the value rather than a string of it.
JSON_FIELD = {b"rlaudit": b"json"}

#: What a reader expects of a field: "number" (int/float/bool/numeric string), "text" (string or message list),
#: "int" (a step), "string" (a plain string id). Fields not listed may hold anything.
FieldKinds = dict[str, str]


@dataclass
class JsonChunk:
    table: pa.Table
    lines: pa.Array  # int64, 1-based line of each row
    fast: bool  # parsed by the fast path


def read_json_chunks(file: SourceFile, ctx: ReadContext, kinds: FieldKinds | None = None,
                     chunk_bytes: int | None = None) -> Iterator[JsonChunk]:
    """Parsed chunks of a JSONL file; bad lines go to `ctx.bad`. See the module doc."""
    kinds = kinds or {}
    for first_line, data, n_lines, short_line in _chunks(file.path, chunk_bytes or CHUNK_BYTES):
        table = None if short_line else _fast_parse(data, n_lines, kinds)
        if table is not None:
            lines = pa.array(np.arange(first_line, first_line + table.num_rows, dtype=np.int64))
            yield JsonChunk(table, lines, True)
        else:
            chunk = _slow_parse(data, first_line, file, ctx, kinds)
            if chunk is not None:
                yield chunk


def _chunks(path: Any, chunk_bytes: int) -> Iterator[tuple[int, bytes, int, bool]]:
    """(first line number, bytes, number of lines, has a line shorter than 2 bytes) pieces of a file, each
    ending at a newline (except a torn last line).

    A line of 0 or 1 bytes (blank, a lone "\r" or space) cannot hold a JSON object; Arrow's reader skips it,
    which would shift the line numbers of the rows after it, so such a piece must take the line-by-line path.
    Newlines are found with one vectorised NumPy pass, which gives both the count and the line lengths (three
    `bytes` scans for the same facts cost five times as much).
    """
    line = 1
    rest = b""
    with open(path, "rb") as fh:
        if fh.read(3) != b"\xef\xbb\xbf":  # a UTF-8 byte-order mark (some Windows tools) is not part of line 1
            fh.seek(0)
        while True:
            block = fh.read(chunk_bytes)
            if not block:
                break
            data = rest + block
            cut = data.rfind(b"\n")
            if cut < 0:  # one line longer than a chunk: keep reading
                rest = data
                continue
            piece, rest = data[:cut + 1], data[cut + 1:]
            count, short = _scan_lines(piece)
            yield line, piece, count, short
            line += count
    if rest:  # a torn last line (no newline at the end of the file)
        yield line, rest, 1, len(rest) < 2


def _scan_lines(data: bytes) -> tuple[int, bool]:
    """(number of newlines, whether a newline-terminated line is shorter than 2 bytes)."""
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    if not len(ends):
        return 0, False
    lengths = np.diff(ends, prepend=-1) - 1
    return len(ends), bool((lengths < 2).any())


def _fast_parse(data: bytes, n_lines: int, kinds: FieldKinds) -> pa.Table | None:
    """Arrow's JSON reader on a whole chunk, or None when the chunk needs the line-by-line path."""
    try:
        table = pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=1 << 20),
                             parse_options=pj.ParseOptions(newlines_in_values=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows != n_lines:  # e.g. a whitespace-only line, or two objects on one line
        return None
    try:  # Arrow's JSON parser does not check UTF-8; invalid bytes must go to the slow path's quarantine
        table.validate(full=True)
    except pa.ArrowInvalid:
        return None
    for name, kind in kinds.items():
        if name in table.column_names and not _fits(table.schema.field(name).type, kind):
            return None
    return table


def _fits(typ: pa.DataType, kind: str) -> bool:
    if pa.types.is_null(typ):
        return True
    if kind == "number":
        return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
    if kind == "int":
        return pa.types.is_integer(typ)
    if kind == "string":
        return pa.types.is_string(typ) or pa.types.is_large_string(typ)
    if kind == "text":
        return pa.types.is_string(typ) or pa.types.is_large_string(typ) or (
            pa.types.is_list(typ) and pa.types.is_struct(typ.value_type)
            and typ.value_type.get_field_index("content") >= 0
            and pa.types.is_string(typ.value_type.field("content").type))
    if kind in ("number_map", "text_map"):
        want = (lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)) \
            if kind == "number_map" else (lambda t: pa.types.is_string(t) or pa.types.is_null(t))
        return pa.types.is_struct(typ) and all(want(typ.field(i).type) for i in range(typ.num_fields))
    return True


def _slow_parse(data: bytes, first_line: int, file: SourceFile, ctx: ReadContext,
                kinds: FieldKinds) -> JsonChunk | None:
    """Line-by-line parse of one chunk: bad lines are reported, good ones become a table."""
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    raws: list[bytes] = []
    for offset, raw in enumerate(data.split(b"\n")):
        lineno = first_line + offset
        if not raw.strip():
            continue
        obj = parse_line(raw, file, lineno, ctx)
        if obj is None:
            continue
        problem = _kind_problem(obj, kinds)
        if problem:
            ctx.bad(file, lineno, problem, shown(raw))
            continue
        records.append(obj)
        lines.append(lineno)
        raws.append(raw)
    records, lines = _numbers_among_strings(records, lines, raws, file, ctx, kinds)
    if not records:
        return None
    return JsonChunk(records_to_table(records, kinds), pa.array(lines, pa.int64()), False)


def _numbers_among_strings(records: list[dict[str, Any]], lines: list[int], raws: list[bytes], file: SourceFile,
                           ctx: ReadContext, kinds: FieldKinds) -> tuple[list[dict[str, Any]], list[int]]:
    """A field that holds numbers on nearly every line (>= 90%, at least 8 of them) and a word on a few (`"high"`
    in a reward column) is a number field with bad lines: those lines are quarantined (an error under --strict)
    rather than the whole field, and with it a reward signal, being moved to metadata as text."""
    if len(records) < 8:
        return records, lines
    counts: dict[str, list[int]] = {}
    for rec in records:
        for k, v in rec.items():
            if k in kinds or v is None:
                continue
            c = counts.setdefault(k, [0, 0])
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                c[0] += 1
            else:
                c[1] += 1
    mostly = {k for k, (num, other) in counts.items() if other and num >= 8 and num >= 9 * other}
    if not mostly:
        return records, lines
    keep_r, keep_l = [], []
    for rec, line, raw in zip(records, lines, raws):
        wrong = next((k for k in mostly if rec.get(k) is not None and (
            not isinstance(rec[k], (int, float)) or isinstance(rec[k], bool))), None)
        if wrong is None:
            keep_r.append(rec)
            keep_l.append(line)
        else:
            ctx.bad(file, line, f"field {wrong!r}: expected a number (the other lines hold numbers), got "
                                f"{_short(rec[wrong])}", shown(raw))
    return keep_r, keep_l


def parse_line(raw: bytes, file: SourceFile, lineno: int, ctx: ReadContext,
               unread: FlatArrays | None = None) -> dict[str, Any] | None:
    """One JSON object from one line, or None after reporting why not. `unread`: arrays of numbers the reader
    never reads, emptied before the parse (`FlatArrays`); a bad line's message is about the line as written."""
    text = unread.empty(raw) if unread is not None else raw
    obj = _fast_loads(text)
    if isinstance(obj, dict):  # orjson took it: valid UTF-8 without lone surrogates, nothing to report
        return obj
    try:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            if text is raw:
                raise
            obj = json.loads(raw)  # an emptied array held arrays (see `FlatArrays`), or the line is bad as written
    except (ValueError, RecursionError) as exc:
        _report(exc, raw, file, lineno, ctx)
        return None
    if not isinstance(obj, dict):
        ctx.bad(file, lineno, f"expected a JSON object, got {type(obj).__name__}", shown(raw))
        return None
    if _may_hold_surrogate(text) and _has_lone_surrogate(obj):
        ctx.bad(file, lineno, "text holds a lone UTF-16 surrogate (a \\udXXX escape or CESU-8 bytes): not valid "
                              "Unicode", shown(raw))
        return None
    return obj


def _report(exc: Exception, raw: bytes, file: SourceFile, lineno: int, ctx: ReadContext) -> None:
    """Why `json` could not read the line `raw`, with its column."""
    if isinstance(exc, UnicodeDecodeError):
        ctx.bad(file, lineno, f"invalid UTF-8 ({exc.reason} at byte {exc.start})", shown(raw))
    elif isinstance(exc, json.JSONDecodeError):
        # a string still open at the end of the line is a line cut short too
        torn = exc.pos >= len(raw.rstrip()) - 1 or exc.msg.startswith("Unterminated string")
        what = "torn line (JSON ends early)" if torn else "invalid JSON"
        at = "" if exc.msg.endswith(" at") else " at"  # "Unterminated string starting at" + " column N"
        ctx.bad(file, lineno, f"{what}: {exc.msg}{at} column {exc.colno}", shown(raw))
    elif isinstance(exc, RecursionError):
        ctx.bad(file, lineno, "invalid JSON: nested too deeply", shown(raw))
    else:
        raise exc


class FlatArrays:
    """Arrays under the given keys, emptied in a line's bytes before it is parsed: per-token data a reader does not
    read (prime-rl's `token_ids`, `logprobs` and `mask` on every message node are ~40-80% of an episode's bytes;
    parsing them makes ~1,000 Python numbers an episode, docs/performance.md, session 52).

    An array is emptied where the quote before its key's name is not escaped (in a valid line that quote opens a
    key: inside a JSON string every quote is escaped) and no quote comes before its first `]` (it holds no text,
    so every string after it begins and ends where it did). What is left is the line with `[]` there or, where
    the array held arrays, a line that no longer parses, which `parse_line` then reads as written. The emptied
    contents are not read, so not checked."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._opening = re.compile(rb'"(?:' + b"|".join(re.escape(k.encode()) for k in keys) + rb')"\s*:\s*\[')

    def empty(self, raw: bytes) -> bytes:
        find, parts, pos = raw.find, [], 0
        for m in self._opening.finditer(raw):
            start = m.end()
            end = find(b"]", start)
            if end < 0:
                break
            if end > start and raw[m.start() - 1] != 0x5C and find(b'"', start, end) < 0:  # 0x5C: a backslash
                parts.append(raw[pos:start])
                pos = end
        if not parts:
            return raw
        parts.append(raw[pos:])
        return b"".join(parts)


#: Each byte's class for `_fast_loads`' digit check: an ASCII digit -> "0", anything else -> " ".
_DIGITS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_NUMBER = b"0" * 19
_NOT_PARSED = object()


def _fast_loads(raw: bytes) -> Any:
    """The line parsed by orjson, or `_NOT_PARSED` where `json.loads` must decide (`parse_line`).

    orjson parses the nested records of the line-by-line readers ~5-7x faster than `json` (a prime-rl episode of
    9.8 KB: 17 against ~100 us; docs/performance.md, session 52) and on everything it accepts it returns what
    `json` returns, except integers outside 64 bits, which it turns into floats: a line holding a run of 19 digits
    (where such an integer would be: -2^63 has 19) is left to `json`. What orjson refuses and `json` takes
    (NaN and Infinity literals, lone surrogates, which `parse_line` then reports, other encodings than UTF-8,
    nesting deeper than 1,024) goes to `json` too, as does every line where orjson is not installed; errors are
    `json`'s, so a bad line's message does not depend on which parser ran."""
    if _orjson is None or _LONG_NUMBER in raw.translate(_DIGITS):
        return _NOT_PARSED
    try:
        return _orjson.loads(raw)
    except _orjson.JSONDecodeError:
        return _NOT_PARSED


#: Bytes that may decode to a lone surrogate: a \uD800-\uDFFF escape, or the UTF-8-style encoding of one (ED A0-BF).
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_LONE = re.compile("[\ud800-\udfff]")


def _may_hold_surrogate(raw: bytes) -> bool:
    """Whether `raw` holds bytes that may decode to a lone surrogate (`_SURROGATE_HINT`). The two literal
    searches first: the pattern's alternation has no literal prefix, so `re` tried it at every byte, 5.75 us a
    1.1 KB line of the prime-rl reader's traces, 1.42 with the literals first (docs/performance.md, session 49):
    `bytes.__contains__` passes a line without a backslash-u or an 0xED byte at memchr's speed."""
    return (b"\\u" in raw or b"\xed" in raw) and _SURROGATE_HINT.search(raw) is not None


def _has_lone_surrogate(obj: Any) -> bool:
    if isinstance(obj, str):
        return bool(_LONE.search(obj))
    if isinstance(obj, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_lone_surrogate(v) for v in obj)
    return False


def shown(raw: bytes) -> str:
    """A bad record's line as a bad-record report shows it: its first 2,000 bytes."""
    return raw[:2000].decode("utf-8", "replace")


def _kind_problem(obj: dict[str, Any], kinds: FieldKinds) -> str | None:
    for name, kind in kinds.items():
        v = obj.get(name)
        if v is None:
            continue
        if kind == "number" and not _number_like(v):
            return f"field {name!r}: expected a number, got {_short(v)}"
        if kind == "int" and not _int_like(v):
            return f"field {name!r}: expected an integer step (at most {MAX_STEP:.0e} in size), got {_short(v)}"
        if kind == "string" and not isinstance(v, (str, int)):
            return f"field {name!r}: expected a string, got {_short(v)}"
        if kind == "text" and not (isinstance(v, str) or _message_list(v)):
            return f"field {name!r}: expected text or a list of chat messages, got {_short(v)}"
        if kind in ("number_map", "text_map"):
            if not isinstance(v, dict):
                return f"field {name!r}: expected an object of name -> " \
                       f"{'number' if kind == 'number_map' else 'text'}, got {_short(v)}"
            for key, item in v.items():
                if item is None:
                    continue
                if kind == "number_map" and not (isinstance(item, (int, float)) and not isinstance(item, bool)):
                    return f"field '{name}.{key}': expected a number, got {_short(item)}"
                if kind == "text_map" and not isinstance(item, str):
                    return f"field '{name}.{key}': expected text, got {_short(item)}"
    return None


def _number_like(v: Any) -> bool:
    if isinstance(v, (int, float)):
        return True
    if isinstance(v, str):
        try:
            float(v)
            return True
        except ValueError:
            return False
    return False


def _int_like(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return abs(v) <= MAX_STEP
    if isinstance(v, float):
        return v.is_integer() and abs(v) <= MAX_STEP
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return False
        return f.is_integer() and abs(f) <= MAX_STEP
    return False


def _message_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(m, dict) and "content" in m for m in v)


def _short(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return "an object" if isinstance(v, dict) else "a list"
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def records_to_table(records: list[dict[str, Any]], kinds: FieldKinds) -> pa.Table:
    """A table from already-validated records, one column per key, with types that cannot conflict.

    Expected fields take their kind's type (numbers as float64, steps as int64, text rendered from message
    lists); other fields keep a uniform type when all rows agree (number, string, bool) and are otherwise
    JSON-encoded strings, so mixed-type extra fields never break a batch.
    """
    from .base import render_message_list

    names: dict[str, None] = {}
    for rec in records:
        for k in rec:
            names.setdefault(k, None)
    columns: dict[str, pa.Array] = {}
    json_cols: set[str] = set()
    for name in names:
        values = [rec.get(name) for rec in records]
        kind = kinds.get(name)
        if kind == "number":
            columns[name] = pa.array([None if v is None else float(v) for v in values], pa.float64())
        elif kind == "int":
            columns[name] = pa.array([None if v is None else int(float(v)) for v in values], pa.int64())
        elif kind == "string":
            columns[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
        elif kind == "number_map":
            columns[name] = pa.array([None if v is None else [(str(k), math.nan if x is None else float(x))
                                                              for k, x in v.items()] for v in values],
                                     pa.map_(pa.string(), pa.float64()))
        elif kind == "text_map":
            columns[name] = pa.array([None if v is None else [(str(k), x) for k, x in v.items() if x is not None]
                                      for v in values], pa.map_(pa.string(), pa.string()))
        elif kind == "text":
            columns[name] = pa.array([v if v is None or isinstance(v, str) else render_message_list(v)
                                      for v in values], pa.string())
        else:
            columns[name], as_json = _uniform(values)
            if as_json:
                json_cols.add(name)
    fields = [pa.field(name, arr.type, metadata=JSON_FIELD if name in json_cols else None)
              for name, arr in columns.items()]
    return pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields))


def _uniform(values: list[Any]) -> tuple[pa.Array, bool]:
    """(array, holds JSON text) for the values of one extra field."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_()), False
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64()), False
    if all(isinstance(v, str) for v in present):
        return pa.array(values, pa.string()), False
    try:
        return pa.array(values), False
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values],
                        pa.string()), True


def iter_json_records(file: SourceFile, ctx: ReadContext,
                      unread: FlatArrays | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every good line; bad lines are reported. Blank lines are skipped. `unread`:
    see `parse_line`."""
    for lineno, _, obj in iter_json_lines(file, ctx, unread):
        yield lineno, obj


def iter_json_lines(file: SourceFile, ctx: ReadContext,
                    unread: FlatArrays | None = None) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """`iter_json_records` with each line's bytes as written, for a reader that shows a record it cannot take as
    the file holds it (not as parsed: `unread` arrays emptied)."""
    # a 1 MB buffer: lines of ~10 KB (prime-rl episodes) in the default 8 KB one took 11-23 us each to read, 2.4-3.2
    # in this one (docs/performance.md, session 52)
    with open(file.path, "rb", buffering=READ_BUFFER) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if raw.isspace() or not raw:  # (no stripped copy of every line to find the blank ones)
                continue
            raw = raw.rstrip(b"\r\n")
            obj = parse_line(raw, file, lineno, ctx, unread)
            if obj is not None:
                yield lineno, raw, obj


def first_record_keys(path: Any, limit: int = 1 << 22) -> set[str]:
    """Top-level keys of the first non-blank line of a JSONL file (for layout detection).

    When the first line is longer than `limit` it cannot be parsed whole; its keys are then guessed from the
    `"key":` patterns of its head, which is enough to recognise a layout.
    """
    try:
        head = _head_line(path, limit)
    except OSError:
        return set()
    head = head.lstrip()
    line, newline, _ = head.partition(b"\n")
    if not line.strip():
        return set()
    try:
        obj = json.loads(line)
        return set(obj) if isinstance(obj, dict) else set()
    except (ValueError, RecursionError):
        if newline or len(head) < limit:  # a complete but invalid first line, or one still being written
            return set()
        return {m.decode("utf-8", "replace") for m in re.findall(rb'"([A-Za-z_][A-Za-z0-9_]*)"\s*:', line)}


def _head_line(path: Any, limit: int, chunk: int = 1 << 16) -> bytes:
    """The file's bytes up to the end of its first non-blank line (or `limit` bytes): read in 64 KB chunks, so
    asking for a first record does not read a whole step's dump (the fleet scanner asks on every pass)."""
    head = b""
    with open(path, "rb") as fh:
        while len(head) < limit:
            block = fh.read(min(chunk, limit - len(head)))
            if not block:
                break
            head += block
            if b"\n" in head.lstrip():
                break
    return head


def layout_keys(paths: list[Any], max_files: int = 8) -> set[str]:
    """Keys of the first record of the first file (in the given order) whose first record can be read whole.

    Layout detection must not be decided by an empty file, a first line still being written, or one file of
    garbage: those are passed over (up to `max_files` files), and with no readable record the answer is the empty
    set (undecided: a watcher waits for more data)."""
    for path in paths[:max_files]:
        keys = first_record_keys(path)
        if keys:
            return keys
    return set()

