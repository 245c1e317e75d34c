"""The reader contract, and the shared last mile that turns a reader's raw columns into canonical rows.

A reader knows one trainer's layout. It lists the files of a run (`files`), each an ingest unit the store can
skip when unchanged, and turns one file into *raw* Arrow tables (`read`). A raw table holds whichever of
`RAW_COLUMNS` the format provides plus `line` (1-based line or row number in the file) and, when one line holds
several rollouts, `sub` (their index on the line; null otherwise). `finalize` then does what
is common to all formats, vectorised: rollout ids, the reasoning/answer split, condition labels, type casts.

Bad records never abort a read silently and never vanish: the reader reports them to `ReadContext.bad`, which
quarantines them with file and line (or raises `BadInputError` under `--strict`).
"""

from __future__ import annotations

import json
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..conditions import ConditionLabeler
from ..errors import BadInputError
from ..schema import ROLLOUT_SCHEMA
from ..text import ThinkTags, split_reasoning

#: Columns a reader may put in a raw table (besides `line`). Missing ones are filled by `finalize`.
RAW_COLUMNS = {
    "step": pa.int64(),
    "split": pa.string(),
    "group_id": pa.string(),
    "sample_index": pa.int32(),
    "system_prompt": pa.string(),
    "task": pa.string(),
    "prompt": pa.string(),
    "completion": pa.string(),
    "reasoning": pa.string(),  # only for formats that log reasoning separately (prime-rl reasoning_content)
    "answer": pa.string(),  # likewise
    "rewards": pa.map_(pa.string(), pa.float64()),
    "reward": pa.float64(),
    "advantage": pa.float64(),
    "grader_inputs": pa.map_(pa.string(), pa.string()),
    "metadata": pa.string(),
}


@dataclass(frozen=True)
class SourceFile:
    """One ingest unit of a run: a file, keyed in the store by its path relative to the source root."""

    path: Path
    relpath: str
    split: str = "train"
    step: int | None = None  # from the file name, when the layout encodes it


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int | None
    reason: str
    raw: str = ""

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason, "raw": self.raw[:2000]}


@dataclass
class ReadOptions:
    """User options that change how logs are read. Part of a run's identity in the store."""

    think_tags: ThinkTags = field(default_factory=ThinkTags)
    grader_inputs: dict[str, str] = field(default_factory=dict)  # grader -> column holding its input
    columns: dict[str, str] = field(default_factory=dict)  # canonical column -> source field (generic JSONL)
    group_size: int | None = None  # TRL num_generations, when known
    strict: bool = False


@dataclass
class ReadContext:
    """What a reader needs while reading one run: options, the condition labeler, the bad-record sink."""

    run: str
    options: ReadOptions = field(default_factory=ReadOptions)
    labeler: ConditionLabeler = field(default_factory=ConditionLabeler)
    on_bad: Callable[[BadRecord], None] | None = None
    bad_count: int = 0

    def bad(self, file: SourceFile | str, line: int | None, reason: str, raw: str = "") -> None:
        """Report a bad record: quarantined by default, an error under --strict."""
        name = file.relpath if isinstance(file, SourceFile) else file
        record = BadRecord(name, line, reason, raw)
        if self.options.strict:
            raise BadInputError(f"{record.location}: {reason}")
        self.bad_count += 1
        if self.on_bad is not None:
            self.on_bad(record)


class Reader(ABC):
    """One trainer log layout."""

    name: ClassVar[str]
    description: ClassVar[str]

    @classmethod
    @abstractmethod
    def detect(cls, source: Path) -> bool:
        """True when `source` (a directory or file) looks like this layout."""

    @abstractmethod
    def files(self, source: Path) -> list[SourceFile]:
        """The ingest units of the run, in step order."""

    @abstractmethod
    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        """Raw tables (see module doc) for one file. Bad records go to `ctx.bad`."""


def finalize(raw: pa.Table, file: SourceFile, ctx: ReadContext) -> pa.Table:
    """Turn a reader's raw table into canonical rows (vectorised; no per-row Python)."""
    n = raw.num_rows
    cols: dict[str, pa.Array] = {}

    def col(name: str) -> pa.Array | None:
        if name not in raw.column_names:
            return None
        c = raw.column(name)
        return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

    def const(value: Any, typ: pa.DataType) -> pa.Array:
        return pa.array([value] * n, typ) if value is not None else pa.nulls(n, typ)

    lines = col("line")
    if lines is None:
        lines = pa.array(range(1, n + 1), pa.int64())
    cols["run"] = const(ctx.run, pa.string())
    rollout_id = pc.binary_join_element_wise(const(file.relpath, pa.string()), lines.cast(pa.string()), ":")
    sub = col("sub")  # several rollouts on one line (an episode with several traces): "<file>:<line>.<sub>"
    if sub is not None:
        rollout_id = pc.coalesce(pc.binary_join_element_wise(rollout_id, sub.cast(pa.string()), "."), rollout_id)
    cols["rollout_id"] = rollout_id
    step = col("step")
    if step is None:
        if file.step is None:
            raise BadInputError(f"{file.relpath}: no step column and no step in the file name")
        step = const(file.step, pa.int64())
    elif file.step is not None:
        step = pc.fill_null(step.cast(pa.int64()), file.step)
    cols["step"] = step.cast(pa.int64())
    cols["split"] = pc.fill_null(col("split") or const(None, pa.string()), file.split)
    cols["group_id"] = col("group_id") if col("group_id") is not None else const(None, pa.string())
    cols["sample_index"] = col("sample_index") if col("sample_index") is not None else const(None, pa.int32())
    prompt = pc.fill_null(col("prompt") if col("prompt") is not None else const("", pa.string()), "")
    condition, system_prompt = _assign_conditions(ctx.labeler, prompt.cast(pa.string()), col("system_prompt"))
    cols["condition"] = condition
    cols["system_prompt"] = system_prompt
    cols["task"] = col("task") if col("task") is not None else const(None, pa.string())
    cols["prompt"] = prompt
    completion = pc.fill_null(col("completion") if col("completion") is not None else const("", pa.string()), "")
    reasoning, answer = split_reasoning_fast(completion, ctx.options.think_tags)
    given_reasoning, given_answer = col("reasoning"), col("answer")
    if given_reasoning is not None:  # formats that log reasoning separately win over the tag split
        reasoning = pc.coalesce(given_reasoning, reasoning)
    if given_answer is not None:
        answer = pc.coalesce(given_answer, answer)
    cols["completion"] = completion
    cols["reasoning"] = reasoning
    cols["answer"] = answer
    cols["rewards"] = col("rewards") if col("rewards") is not None else pa.array([[]] * n, RAW_COLUMNS["rewards"])
    cols["reward"] = col("reward") if col("reward") is not None else const(None, pa.float64())
    cols["advantage"] = col("advantage") if col("advantage") is not None else const(None, pa.float64())
    gi = col("grader_inputs")
    cols["grader_inputs"] = gi if gi is not None else pa.array([[]] * n, RAW_COLUMNS["grader_inputs"])
    cols["metadata"] = col("metadata") if col("metadata") is not None else const(None, pa.string())
    arrays = [cols[f.name].cast(f.type) for f in ROLLOUT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=ROLLOUT_SCHEMA)


def metadata_json(rows: list[dict[str, Any]]) -> pa.Array:
    """JSON-encode leftover per-row fields (None for rows with nothing left over)."""
    return pa.array([json.dumps(r, default=str, ensure_ascii=False) if r else None for r in rows], pa.string())


def map_array(rows: list[dict[str, Any]], value_type: pa.DataType) -> pa.Array:
    """Build a map<string, value_type> array from a list of dicts."""
    return pa.array([list(r.items()) for r in rows], pa.map_(pa.string(), value_type))


def _assign_conditions(labeler: ConditionLabeler, prompt: pa.Array,
                       given: pa.Array | None) -> tuple[pa.Array, pa.Array]:
    """`labeler.assign` run once per distinct prompt rather than once per row.

    A GRPO batch repeats each prompt `num_generations` times, and the system-prompt regexes are the costliest
    part of `finalize`; labels depend only on the prompt (and the reader's system prompt, which readers derive
    from the prompt), so labelling the distinct prompts and taking the result back is exact. When a reader's
    system prompt is not a function of the prompt, fall back to labelling every row.
    """
    encoded = pc.dictionary_encode(prompt)
    uniques, index = encoded.dictionary, encoded.indices
    if len(uniques) * 2 > len(prompt):  # mostly distinct: no gain
        return labeler.assign(prompt, given)
    given_u = None
    if given is not None:
        given = given.cast(pa.string())
        first = _first_index(index, len(uniques))
        given_u = pc.take(given, first)
        same = pc.equal(pc.fill_null(pc.take(given_u, index), "\x00"), pc.fill_null(given, "\x00"))
        if not pc.all(same).as_py():
            return labeler.assign(prompt, given)
    cond_u, sys_u = labeler.assign(uniques, given_u)
    return pc.take(cond_u, index), pc.take(sys_u, index)


def _first_index(index: pa.Array, n_unique: int) -> pa.Array:
    """Row of the first occurrence of each dictionary code."""
    codes = index.to_numpy(zero_copy_only=False)
    first = np.full(n_unique, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes), dtype=np.int64))
    return pa.array(first)


# ---------------------------------------------------------------------------------------------------------------
# Vectorised helpers shared by the trainer readers.

def as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A string column from a column that holds strings or chat message lists (rendered 'role: content')."""
    values = _combine(values)
    typ = values.type
    if pa.types.is_string(typ) or pa.types.is_null(typ):
        return values.cast(pa.string())
    if pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
        return values.cast(pa.string())
    if _is_message_list(typ):
        return render_messages(values)
    return pa.array([_py_text(v) for v in values.to_pylist()], pa.string())


def render_messages(messages: pa.Array) -> pa.Array:
    """Render list<struct<role, content>> rows as 'role: content' lines (the form conditions.py reads)."""
    messages = _combine(messages)
    item = messages.type.value_type
    content_type = item.field("content").type if item.get_field_index("content") >= 0 else None
    if content_type is None or not (pa.types.is_string(content_type) or pa.types.is_large_string(content_type)):
        return pa.array([_py_text(v) for v in messages.to_pylist()], pa.string())
    flat = messages.flatten()
    role = pc.fill_null(flat.field("role").cast(pa.string()), "user") if item.get_field_index("role") >= 0 \
        else pa.array(["user"] * len(flat), pa.string())
    content = pc.fill_null(flat.field("content").cast(pa.string()), "")
    lines = pc.binary_join_element_wise(role, content, ": ")
    offsets = pc.subtract(messages.offsets, messages.offsets[0])
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, lines), "\n")
    return pc.if_else(messages.is_valid(), joined, pa.scalar(None, pa.string()))


def completion_columns(messages: pa.Array, tags: ThinkTags) -> dict[str, pa.Array]:
    """completion / reasoning / answer from a message-list completion with optional `reasoning_content`.

    The answer is the assistant's content (a single message) or the rendered turns (several messages); the
    reasoning is the messages' `reasoning_content`. The completion puts the reasoning back inside the think tags
    so that `completion` stays "everything the model generated" like in the text formats.
    """
    messages = _combine(messages)
    item = messages.type.value_type
    if any(item.get_field_index(f) >= 0 and not _is_str(item.field(f).type) for f in ("content", "reasoning_content")):
        rows = [_py_completion(v) for v in messages.to_pylist()]
        answer = pa.array([r[0] for r in rows], pa.string())
        reasoning = pa.array([r[1] for r in rows], pa.string())
    else:
        flat = messages.flatten()
        lengths = pc.fill_null(pc.list_value_length(messages), 0)
        offsets = pc.subtract(messages.offsets, messages.offsets[0])
        first = pc.take(pc.fill_null(flat.field("content").cast(pa.string()), ""),
                        pc.if_else(pc.greater(lengths, 0), offsets.slice(0, len(messages)), 0)) \
            if len(flat) else pa.array([""] * len(messages), pa.string())
        answer = pc.if_else(pc.equal(lengths, 1), first, pc.fill_null(render_messages(messages), ""))
        if item.get_field_index("reasoning_content") >= 0 and len(flat):
            rc = flat.field("reasoning_content").cast(pa.string())
            counts = _count_valid_per_list(offsets, rc)
            kept = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
            joined = pc.binary_join(pa.ListArray.from_arrays(kept, pc.drop_null(rc)), "\n")
            reasoning = pc.if_else(pc.greater(pa.array(counts), 0), joined, pa.scalar(None, pa.string()))
        else:
            reasoning = pa.nulls(len(messages), pa.string())
    completion = pc.if_else(
        pc.is_valid(reasoning),
        pc.binary_join_element_wise(pa.scalar(tags.open), pc.fill_null(reasoning, ""), pa.scalar(tags.close),
                                    answer, ""),
        answer)
    return {"completion": completion, "reasoning": reasoning, "answer": answer}


def _count_valid_per_list(offsets: pa.Array, values: pa.Array) -> np.ndarray:
    valid = values.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(valid)])
    off = offsets.to_numpy()
    return csum[off[1:]] - csum[off[:-1]]


def _is_str(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ)


def _is_message_list(typ: pa.DataType) -> bool:
    return (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and pa.types.is_struct(typ.value_type) \
        and typ.value_type.get_field_index("content") >= 0


def content_text(content: Any) -> str:
    """Text of a message content: a string, or a list of parts ({type: text, text}) with images dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return str(content)


def is_message_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def render_message_list(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m.get('role') or 'user'}: {content_text(m.get('content'))}" for m in messages)


def _py_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return render_message_list(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def _py_completion(messages: list[dict[str, Any]] | None) -> tuple[str, str | None]:
    """(answer, reasoning) of a message-list completion (see `completion_columns`)."""
    if not messages:
        return "", None
    answer = content_text(messages[0].get("content")) if len(messages) == 1 else render_message_list(messages)
    reasonings = [m.get("reasoning_content") for m in messages if m.get("reasoning_content")]
    return answer, ("\n".join(str(r) for r in reasonings) if reasonings else None)


def _combine(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def to_numbers(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(float64 values, bad-row mask) of a column that should hold numbers.

    Integers, floats and booleans convert; numeric strings ("0.5") convert too (some loggers stringify); any
    other string is a bad row. Nulls stay null and are not bad (callers decide whether the field is required).
    """
    values = _combine(values)
    typ = values.type
    if pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_boolean(typ) or pa.types.is_null(typ):
        return pc.cast(values, pa.float64(), safe=False), pa.array(np.zeros(len(values), dtype=bool))
    if _is_str(typ) or pa.types.is_dictionary(typ):
        text = pc.utf8_trim_whitespace(values.cast(pa.string()))
        ok = pc.match_substring_regex(text, r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^(?i:[-+]?(nan|inf|infinity))$")
        bad = pc.fill_null(pc.invert(ok), False)
        cleaned = pc.if_else(bad, pa.scalar(None, pa.string()), text)
        return cleaned.cast(pa.float64()), bad
    return pa.nulls(len(values), pa.float64()), pc.is_valid(values)


def to_steps(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(int64 steps, bad-row mask): integers, integral floats and integer strings are steps."""
    numbers, bad = to_numbers(values)
    finite = pc.fill_null(pc.is_finite(numbers), True)
    integral = pc.fill_null(pc.equal(pc.floor(numbers), numbers), True)
    bad = pc.or_(bad, pc.invert(pc.and_(finite, integral)))
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
    arrays = [pc.cast(_combine(columns[name]), value_type, safe=False) for name in names]
    if pa.types.is_floating(value_type) and not drop_null:
        matrix = np.column_stack([a.to_numpy(zero_copy_only=False) for a in arrays]).astype(np.float64)
        items = pa.array(matrix.ravel())
        keys = pa.array(np.tile(np.array(names, dtype=object), n), pa.string())
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
    names = table.column_names
    as_json = {f.name for f in table.schema if f.metadata and f.metadata.get(b"rlaudit") == b"json"}
    fields = ", ".join(f'"{_sql_ident(c)}" := "{_sql_ident(c)}"' + ("::JSON" if c in as_json else "") for c in names)
    any_valid = " OR ".join(f'"{_sql_ident(c)}" IS NOT NULL' for c in names)
    out = duck_query(f"SELECT CASE WHEN {any_valid} THEN to_json(struct_pack({fields}))::VARCHAR END AS m "
                     "FROM src", table)
    return _combine(out.column(0)).cast(pa.string())


_DUCK = threading.local()


def duck_query(sql: str, table: pa.Table) -> pa.Table:
    """Run `sql` over `table` (registered as `src`) on this thread's cached DuckDB connection.

    Opening a connection costs ~0.1 s, far more than the JSON encoding of one batch, so each thread keeps one.
    """
    con = getattr(_DUCK, "con", None)
    if con is None:
        import duckdb

        con = _DUCK.con = duckdb.connect()
        con.execute("SET threads TO 1")
    con.register("src", table)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.unregister("src")


def prefetch(items: Iterator[pa.Table], depth: int = 2) -> Iterator[pa.Table]:
    """Produce `items` in a background thread, `depth` ahead of the consumer.

    Parsing (Arrow's JSON/Parquet readers, compute kernels) releases the GIL, so a reader's parse/validate work
    overlaps with `finalize` and the store's Parquet writer on the calling thread. Errors (including
    `BadInputError` under --strict) are re-raised in the consumer at the point they occurred.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", done))
        except BaseException as exc:  # handed to the consumer
            put(("error", exc))

    thread = threading.Thread(target=work, name="rlaudit-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        thread.join()


def _sql_ident(name: str) -> str:
    return name.replace('"', '""')


def report_bad_rows(bad: pa.Array, reasons: pa.Array | str, lines: pa.Array, file: SourceFile,
                    ctx: ReadContext, raw: pa.Array | None = None) -> None:
    """Report every row flagged in `bad` (a loop over the bad rows only)."""
    idx = np.flatnonzero(pc.fill_null(bad, False).to_numpy(zero_copy_only=False))
    line_list = lines.to_pylist()
    reason_list = reasons.to_pylist() if isinstance(reasons, pa.Array) else None
    raw_list = raw.to_pylist() if raw is not None and len(idx) else None
    for i in idx:
        reason = reason_list[i] if reason_list is not None else reasons
        ctx.bad(file, line_list[i], reason, (str(raw_list[i])[:2000] if raw_list else ""))


class Validator:
    """Accumulates per-row problems of one raw batch, reports them, and drops the bad rows.

    Each check names the field and what was expected, so the quarantine reads like
    "field 'score': expected a number, got 'abc'".
    """

    def __init__(self, table: pa.Table, lines: pa.Array, file: SourceFile, ctx: ReadContext):
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

    def text(self, name: str, values: pa.Array | None, required: bool = False) -> pa.Array | None:
        if values is None:
            if required:
                self.require(name, None)
            return None
        values = _combine(values)
        typ = values.type
        if not (_is_str(typ) or pa.types.is_dictionary(typ) or _is_message_list(typ)):
            self.flag(pc.is_valid(values), f"field {name!r}: expected text or a list of chat messages, "
                                            f"got {_type_name(typ)}")
            values = pa.nulls(len(values), pa.string())
        else:
            values = as_text(values)
        if required:
            self.require(name, values)
        return values

    def _got(self, name: str, expected: str, values: pa.Array) -> pa.Array:
        shown = pc.utf8_slice_codeunits(_combine(values).cast(pa.string()), 0, 80) if _castable_to_str(values) \
            else pa.array([_type_name(values.type)] * len(values), pa.string())
        return pc.binary_join_element_wise(pa.scalar(f"field {name!r}: expected {expected}, got "),
                                           pc.fill_null(shown, "null"), "")

    def done(self) -> tuple[pa.Table, pa.Array, pa.Array]:
        """(good rows, their line numbers, keep mask) after reporting the bad ones."""
        bad = pc.is_valid(self.reason)
        if pc.any(bad).as_py():
            report_bad_rows(bad, self.reason, self.lines, self.file, self.ctx)
        keep = pc.invert(bad)
        return self.table.filter(keep), self.lines.filter(keep), keep


def _castable_to_str(values: pa.Array) -> bool:
    t = values.type
    return _is_str(t) or pa.types.is_dictionary(t) or pa.types.is_integer(t) or pa.types.is_floating(t) \
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


class ConsecutiveGroups:
    """Prompt groups as runs of consecutive identical prompts, split at `group_size` (TRL's layout).

    Stateful across the batches of one file, so a group cut by a batch boundary stays one group.
    group_id is "<step>:<index of the group in the file>" and sample_index the position in the group.
    """

    def __init__(self, group_size: int | None):
        self.group_size = group_size
        self.last_prompt: str | None = None
        self.last_group = -1
        self.last_pos = -1

    def assign(self, prompts: pa.Array, steps: pa.Array) -> tuple[pa.Array, pa.Array]:
        n = len(prompts)
        if n == 0:
            return pa.array([], pa.string()), pa.array([], pa.int32())
        prompts = pc.fill_null(_combine(prompts).cast(pa.string()), "")
        prev = pa.concat_arrays([pa.array([self.last_prompt], pa.string()), prompts.slice(0, n - 1)])
        new_run = pc.fill_null(pc.not_equal(prompts, prev), True).to_numpy(zero_copy_only=False)
        idx = np.arange(n)
        run_start = np.maximum.accumulate(np.where(new_run, idx, -1))
        continues = run_start < 0  # rows continuing the previous batch's run
        pos = np.where(continues, self.last_pos + 1 + idx, idx - run_start)
        if self.group_size:
            new_group = new_run | (pos % self.group_size == 0)
            sample = pos % self.group_size
        else:
            new_group = new_run
            sample = pos
        group = self.last_group + np.cumsum(new_group)
        self.last_prompt = prompts[n - 1].as_py()
        self.last_group, self.last_pos = int(group[-1]), int(pos[-1])
        group_id = pc.binary_join_element_wise(steps.cast(pa.string()), pa.array(group).cast(pa.string()), ":")
        return group_id, pa.array(sample.astype(np.int32))


class KeyedGroups:
    """Prompt groups keyed by a value (verl's uid, or the prompt text when uid is absent).

    All rows of one file with the same key form one group wherever they are in the file (verl's balance_batch
    reorders rows, so identical prompts need not be adjacent); `group_size` splits larger groups in file order.
    Stateful across the batches of one file.
    """

    def __init__(self, group_size: int | None, use_key_in_id: bool):
        self.group_size = group_size
        self.use_key_in_id = use_key_in_id
        self.codes: dict[str, int] = {}
        self.counts = np.zeros(0, dtype=np.int64)

    def assign(self, keys: pa.Array, steps: pa.Array) -> tuple[pa.Array, pa.Array]:
        n = len(keys)
        if n == 0:
            return pa.array([], pa.string()), pa.array([], pa.int32())
        keys = pc.fill_null(_combine(keys).cast(pa.string()), "")
        encoded = pc.dictionary_encode(keys)
        local = encoded.indices.to_numpy(zero_copy_only=False)
        mapping = np.array([self.codes.setdefault(k, len(self.codes)) for k in encoded.dictionary.to_pylist()],
                           dtype=np.int64)
        codes = mapping[local]
        if len(self.counts) < len(self.codes):
            self.counts = np.concatenate([self.counts, np.zeros(len(self.codes) - len(self.counts), np.int64)])
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        starts = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]
        first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - first
        pos = self.counts[codes] + rank
        np.add.at(self.counts, codes, 1)
        label = keys if self.use_key_in_id else pa.array(codes).cast(pa.string())
        group_id = pc.binary_join_element_wise(steps.cast(pa.string()), label, ":")
        if self.group_size:
            sub = pos // self.group_size
            group_id = pc.if_else(pa.array(sub > 0), pc.binary_join_element_wise(
                group_id, pa.array(sub).cast(pa.string()), "/"), group_id)
            pos = pos % self.group_size
        return group_id, pa.array(pos.astype(np.int32))


# Prompts decoded with skip_special_tokens=True (TRL >= 0.26, verl) lose the chat template's special tokens:
# ChatML becomes "system\n...\nuser\n...", Llama 3 becomes "system\n\n...user\n\n...". conditions.py knows the
# templates with their tokens; these patterns recover the system prompt from the decoded forms.
DECODED_SYSTEM_PATTERNS = [
    r"(?s)^system\n(?P<sys>.*?)\n(?:user|human)\n",
    r"(?s)^system\n\n(?:Cutting Knowledge Date:[^\n]*\n(?:Today Date:[^\n]*\n)?\n?)?(?P<sys>.*?)user\n\n",
]


def decoded_system_prompts(prompts: pa.Array) -> pa.Array:
    """System prompts of chat-template prompts whose special tokens were stripped by decoding (null if none)."""
    prompts = pc.fill_null(_combine(prompts).cast(pa.string()), "")
    if not pc.any(pc.starts_with(prompts, "system\n")).as_py():
        return pa.nulls(len(prompts), pa.string())
    encoded = pc.dictionary_encode(prompts)  # a GRPO batch repeats each prompt: match the distinct ones
    if len(encoded.dictionary) * 2 <= len(prompts):
        return pc.take(decoded_system_prompts(encoded.dictionary), encoded.indices)
    out = pa.nulls(len(prompts), pa.string())
    for pattern in DECODED_SYSTEM_PATTERNS:
        found = pc.struct_field(pc.extract_regex(prompts, pattern), "sys")
        text = pc.utf8_trim_whitespace(found)
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        out = pc.coalesce(out, text)
    return out


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
        values = _combine(table.column(name))
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
    return _is_str(typ) or pa.types.is_dictionary(typ) or _is_message_list(typ)


def missing_graders(options: ReadOptions, table: pa.Table, file: SourceFile) -> None:
    """--grader-input names a column the file does not have: a user mistake worth an error, not silence."""
    absent = sorted(c for c in options.grader_inputs.values() if c not in table.column_names)
    if absent:
        from ..errors import RlauditError

        raise RlauditError(f"{file.relpath}: --grader-input column(s) {absent} not found; the file has "
                           f"{', '.join(table.column_names)}")


def split_reasoning_fast(completions: pa.Array, tags: ThinkTags) -> tuple[pa.Array, pa.Array]:
    """`rlaudit.text.split_reasoning` (same rules, same output) without regular expressions.

    The regex form scans each completion twice with a lazy `.*?`, which made it the costliest step of ingest;
    splitting once at the first closing tag (`split_pattern`, a substring search) and trimming the opening tag
    with a prefix test is several times faster. tests/readers/test_text_split.py checks that both agree.
    """
    completions = pc.fill_null(_combine(completions).cast(pa.string()), "")
    null_str = pa.scalar(None, pa.string())
    parts = pc.split_pattern(completions, pattern=tags.close, max_splits=1)
    closed = pc.equal(pc.list_value_length(parts), 2)
    before = pc.utf8_ltrim(pc.list_element(parts, 0), characters="\t\n\f\r ")  # RE2 \\s
    after = pc.list_element(pc.if_else(closed, parts, pa.scalar(["", ""], parts.type)), 1)
    opened = pc.starts_with(before, tags.open)
    # where `before` starts with the tag, its first occurrence is the prefix: drop it (cheaper than slicing all)
    inner = pc.if_else(opened, pc.replace_substring(before, tags.open, "", max_replacements=1), before)
    reasoning = pc.if_else(closed, inner, pc.if_else(opened, inner, null_str))
    answer = pc.if_else(closed, after, pc.if_else(opened, pa.scalar("", pa.string()), completions))
    return reasoning, pc.utf8_trim_whitespace(answer)
