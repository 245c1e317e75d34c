"""The reader contract, and the shared last mile that turns a reader's raw columns into canonical rows.

A reader knows one trainer's layout. It lists the files of a run (`files`), each an ingest unit the store can
skip when unchanged, and turns one file into *raw* Arrow tables (`read`). A raw table holds whichever of
`RAW_COLUMNS` the format provides plus `line` (1-based line or row number in the file) and, when one line holds
several rollouts, `sub` (their index on the line; null otherwise). `finalize` then does what
is common to all formats, vectorised: rollout ids, the reasoning/answer split, condition labels, type casts.

Bad records never abort a read silently and never vanish: the reader reports them to `ReadContext.bad`, which
quarantines them with file and line (or raises `BadInputError` under `--strict`).

Shared reader machinery lives next to this contract: `messages` (message lists and `reasoning_content`),
`columns` (numbers, maps, metadata JSON, extra columns), `validate` (per-row checks naming the field), `groups`
(prompt groups when the trainer logs no id) and `jsonl` (chunked fast/slow JSONL parsing).
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
from ..layout import part_table, to_canonical
from ..text import ThinkTags, reasoning_spans

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
    "answer": pa.string(),  # likewise (and multi-turn completions: every turn's visible text)
    "tool_calls": pa.list_(pa.struct([pa.field("name", pa.string()), pa.field("arguments", pa.string())])),
    "tool_outputs": pa.list_(pa.string()),
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
    # relpaths of files holding an earlier copy of the same rollouts (prime-rl `all/` once `effective/` exists):
    # ingesting this file drops their stored rows
    replaces: tuple[str, ...] = ()


class FileRows:
    """Which file each row of a table is of, for a table holding several files' rows (`finalize_parts`,
    `TrlReader.read_files`): file i's rows at bounds[i]:bounds[i + 1]."""

    def __init__(self, files: list[SourceFile], bounds: np.ndarray):
        self.files, self.bounds = files, np.asarray(bounds, np.int64)

    @classmethod
    def counted(cls, files: list[SourceFile], counts: list[int]) -> FileRows:
        """The files of `counts[i]` rows each, in order."""
        return cls(files, np.concatenate([[0], np.cumsum(np.asarray(counts, np.int64))]))

    def index(self, row: int) -> int:
        """The file `row` is of, by its position in `files`."""
        return int(np.searchsorted(self.bounds, row, side="right")) - 1

    def of(self, row: int) -> SourceFile:
        return self.files[self.index(row)]

    def each(self, values: list) -> np.ndarray:
        """values[i] repeated over file i's rows."""
        return np.repeat(np.asarray(values), np.diff(self.bounds))

    def kept(self, keep: np.ndarray | None) -> FileRows:
        """The files' rows after a filter (`keep`: a row mask; None keeps every row)."""
        if keep is None:
            return self
        return FileRows(self.files, np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])[self.bounds])


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
    reward_weights: dict[str, float] = field(default_factory=dict)  # TRL reward_weights by reward column
    strict: bool = False


@dataclass
class ReadContext:
    """What a reader needs while reading one run: options, the condition labeler, the bad-record sink."""

    run: str
    options: ReadOptions = field(default_factory=ReadOptions)
    labeler: ConditionLabeler = field(default_factory=ConditionLabeler)
    on_bad: Callable[[BadRecord], None] | None = None
    bad_count: int = 0
    #: run-level notes: what the reader assumed or could not tell from the logs (key -> text, in order)
    notes: dict[str, str] = field(default_factory=dict)

    def note(self, text: str, key: str | None = None) -> None:
        """Record something a user must know to read the numbers right: an assumption the reader made (TRL
        reward weights not logged), data the logs lack (batches never logged), rows relabelled (eval files).
        Shown in the ingest summary and carried in the findings JSON (`runs[].notes`). A later note with the
        same `key` replaces the earlier one (default key: the text itself)."""
        self.notes[key or text] = text

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

    #: whether a large run's files are parsed in worker processes (`processes`): for a reader whose `read` is
    #: Python per record, so that its parse is not held to the one core of the GIL. Its instances, `SourceFile`,
    #: `ReadOptions` and the errors it raises must pickle, and `read` must not depend on state in this process.
    parse_in_processes: bool = False

    name: ClassVar[str]
    description: ClassVar[str]
    #: whether the layout's fields are named by the user (`ReadOptions.columns`, `--columns`): generic tables.
    #: A trainer's own layout has known fields, and an ingest refuses a mapping for it (else it is ignored)
    maps_columns: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def detect(cls, source: Path) -> bool:
        """True when `source` (a directory or file) looks like this layout."""

    def prepare(self, source: Path, ctx: ReadContext) -> None:
        """Read run-level files once per ingest, before any rollout file (TRL `trainer_state.json`, saved
        configs); keep what `read` needs on `self` and `ctx.note` what was assumed. Default: nothing."""

    @abstractmethod
    def files(self, source: Path) -> list[SourceFile]:
        """The ingest units of the run, in step order."""

    @abstractmethod
    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        """Raw tables (see module doc) for one file. Bad records go to `ctx.bad`."""

    def read_here(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        """`read` parsed on the calling thread, for a caller that reads on a thread of its own already (the
        store's ingest pipeline). Default: `read`; a `PrefetchingReader` skips its parsing thread here."""
        return self.read(file, ctx)

    def read_files(self, files: list[SourceFile], ctx: ReadContext,
                   unreadable: set[str] | None = None) -> Iterator[tuple[SourceFile, pa.Table | None]]:
        """(file, raw table) for every file in order (`read_here`, on the calling thread), then (file, None) to mark
        the end of that file: the store's ingest reads a run through this. A file that cannot be read
        (permissions, I/O error, removed meanwhile) is a bad record, not the end of the ingest; it is listed in
        `unreadable` so that the next ingest tries it again. A reader may join files here (`TrlReader`). A reader
        that sets `parse_in_processes` has large runs' files parsed in worker processes (`processes`)."""
        from .processes import read_in_processes, use_processes

        n_workers = use_processes(self, files)
        if n_workers:
            yield from read_in_processes(self, files, ctx, n_workers, unreadable)
            return
        for file in files:
            try:
                for raw in self.read_here(file, ctx):
                    yield file, raw
            except OSError as exc:
                report_unreadable(file, exc, ctx, unreadable)
            yield file, None


def report_unreadable(file: SourceFile, exc: OSError, ctx: ReadContext, unreadable: set[str] | None) -> None:
    """A file `read_files` could not read: a bad record, and listed in `unreadable` (the next ingest tries it)."""
    if unreadable is not None:
        unreadable.add(file.relpath)
    ctx.bad(file, None, f"unreadable file ({exc.strerror or exc})")


def finalize(raw: pa.Table, file: SourceFile, ctx: ReadContext) -> pa.Table:
    """Turn a reader's raw table into canonical rows (vectorised; no per-row Python)."""
    return to_canonical(finalize_part(raw, file, ctx))


def finalize_part(raw: pa.Table, file: SourceFile, ctx: ReadContext) -> pa.Table:
    """`finalize`, laid out as a store part (`rlaudit.layout`): the reasoning and answer split from the
    completion are kept as spans, not as copies of its text."""
    return finalize_parts([(raw, file)], ctx)[0]


def finalize_parts(raws: list[tuple[pa.Table, SourceFile]], ctx: ReadContext) -> list[pa.Table]:
    """`finalize_part` of each (raw table, its file), in order, computed on the tables together: a run logged a
    step per file (TRL's completions files, per-step JSONL) has thousands of files of a few hundred rows, and
    finalizing each alone cost ~3 CPU ms of fixed work per file (dozens of Arrow calls), more than its rows
    (256-row files: 11.7 of a 1M-rollout ingest's 24 CPU s). The tables must share one schema
    (`same_raw_schema`); the result tables are slices of one table. What depends on the file (rollout ids, its
    step and split where the rows log none, the notes naming a file) is taken per row from its file, and the
    notes are those finalizing the files one by one would leave (the last file's example)."""
    if not raws:
        return []
    raw = raws[0][0] if len(raws) == 1 else pa.concat_tables([r for r, _ in raws])
    rows = FileRows.counted([f for _, f in raws], [r.num_rows for r, _ in raws])
    part = _finalize(raw, rows, ctx)
    return [part.slice(int(lo), int(hi - lo)) for lo, hi in zip(rows.bounds[:-1], rows.bounds[1:])]


def same_raw_schema(a: pa.Table, b: pa.Table) -> bool:
    """Whether raw tables `a` and `b` can be finalized together (`finalize_parts`)."""
    return a.schema.equals(b.schema, check_metadata=False)


def _finalize(raw: pa.Table, rows: FileRows, ctx: ReadContext) -> pa.Table:
    """`finalize_parts` of the concatenated `raw`, whose rows are of the files `rows`."""
    n = raw.num_rows
    files, bounds = rows.files, rows.bounds
    cols: dict[str, pa.Array] = {}
    combined: dict[str, pa.Array] = {}

    def col(name: str) -> pa.Array | None:
        """The raw column `name` as one array (None if absent), combined once: several columns are asked for
        twice, and combining chunks of different tables copies them (`messages.combine`)."""
        if name not in raw.column_names:
            return None
        if name not in combined:
            combined[name] = combine(raw.column(name))
        return combined[name]

    def const(value: Any, typ: pa.DataType) -> pa.Array:
        return pa.repeat(pa.scalar(value, typ), n) if value is not None else pa.nulls(n, typ)

    def per_file(values: list[Any], typ: pa.DataType) -> pa.Array:
        """Each row's value of its file."""
        if all(v == values[0] for v in values):
            return const(values[0], typ)
        return pa.array(values, typ).take(pa.array(rows.each(range(len(values)))))

    def last_file_where(hit: pa.Array) -> tuple[SourceFile, int, int] | None:
        """The last file with a row where `hit` holds: (the file, its first such row, its index)."""
        where = np.flatnonzero(np.asarray(hit.to_numpy(zero_copy_only=False), bool))
        if not len(where):
            return None
        i = rows.index(int(where[-1]))
        return files[i], int(where[np.searchsorted(where, bounds[i])]), i

    def text(name: str) -> pa.Array:
        values = col(name)
        if values is None:
            return const("", pa.string())
        return pc.fill_null(values, "") if values.null_count else values

    lines = col("line")
    if lines is None:
        lines = pa.array(np.concatenate([np.arange(1, c + 1) for c in np.diff(bounds)] or [np.zeros(0)]), pa.int64())
    cols["run"] = const(ctx.run, pa.string())
    rollout_id = pc.binary_join_element_wise(per_file([f.relpath for f in files], pa.string()),
                                             lines.cast(pa.string()), ":")
    sub = col("sub")  # several rollouts on one line (an episode with several traces): "<file>:<line>.<sub>"
    if sub is not None:
        rollout_id = pc.coalesce(pc.binary_join_element_wise(rollout_id, sub.cast(pa.string()), "."), rollout_id)
    cols["rollout_id"] = rollout_id
    step = col("step")
    file_steps = per_file([f.step for f in files], pa.int64())
    if step is None:
        unnamed = next((f for f in files if f.step is None), None)
        if unnamed is not None:
            raise BadInputError(f"{unnamed.relpath}: no step column and no step in the file name")
        step = file_steps
    elif any(f.step is not None for f in files):
        step = step.cast(pa.int64())
        differs = pc.fill_null(pc.not_equal(step, file_steps), False)
        if n and pc.any(differs).as_py():
            file, row, _ = last_file_where(differs)
            ctx.note(f"some lines log a step other than their file name's (e.g. {file.relpath}: step {file.step} in "
                     f"the name, {step[row].as_py()} in a line); the line's step is used", key="step-mismatch")
        step = pc.coalesce(step, file_steps)
    cols["step"] = step.cast(pa.int64())
    if n and (negative := last_file_where(pc.fill_null(pc.less(cols["step"], 0), False))) is not None:
        file, _, i = negative
        lowest = pc.min(cols["step"].slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))).as_py()
        ctx.note(f"negative steps are logged (e.g. {lowest} in {file.relpath}); they are kept as logged",
                 key="negative-steps")
    cols["split"] = pc.coalesce(col("split") or const(None, pa.string()), per_file([f.split for f in files],
                                                                                    pa.string()))
    cols["group_id"] = col("group_id") if col("group_id") is not None else const(None, pa.string())
    cols["sample_index"] = col("sample_index") if col("sample_index") is not None else const(None, pa.int32())
    prompt = text("prompt")
    condition, system_prompt = _assign_conditions(ctx.labeler, prompt.cast(pa.string()), col("system_prompt"))
    cols["condition"] = condition
    cols["system_prompt"] = system_prompt
    cols["task"] = col("task") if col("task") is not None else const(None, pa.string())
    cols["prompt"] = prompt
    completion = text("completion")
    cols["completion"] = completion
    # formats that log reasoning separately (prime-rl) win over the tag split, row by row
    cols["reasoning"] = col("reasoning") if col("reasoning") is not None else const(None, pa.string())
    cols["answer"] = col("answer") if col("answer") is not None else const(None, pa.string())
    cols["rewards"] = col("rewards") if col("rewards") is not None else pa.array([[]] * n, RAW_COLUMNS["rewards"])
    cols["reward"] = col("reward") if col("reward") is not None else const(None, pa.float64())
    cols["advantage"] = col("advantage") if col("advantage") is not None else const(None, pa.float64())
    for name in ("tool_calls", "tool_outputs"):
        cols[name] = col(name) if col(name) is not None else pa.nulls(n, RAW_COLUMNS[name])
    gi = col("grader_inputs")
    cols["grader_inputs"] = gi if gi is not None else pa.array([[]] * n, RAW_COLUMNS["grader_inputs"])
    cols["metadata"] = col("metadata") if col("metadata") is not None else const(None, pa.string())
    return part_table(cols, reasoning_spans(completion, ctx.options.think_tags))


#: `json.dumps(value, ensure_ascii=False, default=str)`, its encoder built once: `json.dumps` with any argument
#: builds one per call, half of the ~9 us a prime-rl row's metadata took (docs/performance.md, session 52)
metadata_text = json.JSONEncoder(ensure_ascii=False, default=str).encode


def metadata_json(rows: list[dict[str, Any]]) -> pa.Array:
    """JSON-encode leftover per-row fields (None for rows with nothing left over)."""
    return pa.array([metadata_text(r) if r else None for r in rows], pa.string())


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
    uniques, codes = encode_distinct(prompt)
    if len(uniques) * 2 > len(prompt):  # mostly distinct: no gain
        return labeler.assign(prompt, given)
    index = pa.array(codes)
    given_u = None
    if given is not None:
        given = given.cast(pa.string())
        first = _first_index(codes, len(uniques))
        given_u = pc.take(given, first)
        same = pc.equal(pc.fill_null(pc.take(given_u, index), "\x00"), pc.fill_null(given, "\x00"))
        if not pc.all(same).as_py():
            return labeler.assign(prompt, given)
    cond_u, sys_u = labeler.assign(uniques, given_u)
    return pc.take(cond_u, index), pc.take(sys_u, index)


def _first_index(codes: np.ndarray, n_unique: int) -> pa.Array:
    """Row of the first occurrence of each dictionary code."""
    first = np.full(n_unique, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes), dtype=np.int64))
    return pa.array(first)


def prefetch(items: Iterator[Any], depth: int = 2, max_bytes: int | None = None) -> Iterator[Any]:
    """Produce `items` in a background thread, up to `depth` ahead of the consumer and, with `max_bytes`, with at
    most that many bytes of tables waiting (`_Waiting`: the buffers the waiting tables hold, each counted once; one
    item always may wait, whatever its size).

    Parsing (Arrow's JSON/Parquet readers, compute kernels) releases the GIL, so a reader's parse/validate work
    overlaps with `finalize` and the store's Parquet writer on the calling thread. Errors (including
    `BadInputError` under --strict) are re-raised in the consumer at the point they occurred.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()
    room = threading.Condition()
    waiting = _Waiting()

    def put(item: Any, tables: list[tuple[Any, int]]) -> bool:
        if max_bytes is not None:
            with room:
                # (a slice of a table whose slices wait adds no bytes: it passes, as its table is held anyway)
                while waiting.items and (more := waiting.added(tables)) and waiting.bytes + more > max_bytes \
                        and not stop.is_set():
                    room.wait(0.1)
                waiting.add(tables)
        while not stop.is_set():
            try:
                q.put((*item, tables), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(("item", item), _tables_held(item) if max_bytes is not None else []):
                    return
            put(("end", done), [])
        except BaseException as exc:  # handed to the consumer
            put(("error", exc), [])

    thread = threading.Thread(target=work, name="rlaudit-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value, tables = q.get()
            if max_bytes is not None:
                with room:
                    waiting.remove(tables)
                    room.notify()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        thread.join()


class _Waiting:
    """The items waiting in a `prefetch` queue and the bytes their tables hold. Readers hand on slices of one
    table (a batch of small files read together, finalized together): a slice keeps its whole table's buffers
    alive, so each table counts its buffers (`get_total_buffer_size`) once, however many of its slices wait
    (`_tables_held`'s keys). Summing each slice's own bytes (`Table.nbytes`, ~22-40 us a table of a dozen columns)
    cost the 15,625 files of 64 rollouts' ingest 2.4 CPU s on its reading threads, and undercounted what they
    held; the buffers' total and the key take ~3.5 us."""

    def __init__(self) -> None:
        self.items = 0  # an item of no bytes waits too: it is what the one-item rule counts
        self.bytes = 0
        self.held: dict[Any, list[int]] = {}  # key -> [bytes, slices waiting]

    def added(self, tables: list[tuple[Any, int]]) -> int:
        """The bytes `tables` would add: those of the tables none of whose slices waits yet."""
        return sum(size for key, size in dict(tables).items() if key not in self.held)

    def add(self, tables: list[tuple[Any, int]]) -> None:
        self.items += 1
        for key, size in tables:
            entry = self.held.get(key)
            if entry is None:
                self.held[key] = [size, 1]
                self.bytes += size
            else:
                entry[1] += 1

    def remove(self, tables: list[tuple[Any, int]]) -> None:
        self.items -= 1
        for key, _ in tables:
            entry = self.held[key]
            entry[1] -= 1
            if not entry[1]:
                self.bytes -= entry[0]
                del self.held[key]


def _tables_held(item: Any) -> list[tuple[Any, int]]:
    """(key, bytes) of each table in `item` (a table, or the ingest's `(file, table)` tuples): the bytes of the
    buffers it holds, and a key its slices share (the addresses of its first and last columns' first buffers and
    those bytes: slices of one table hold the same buffers)."""
    tables = [item] if isinstance(item, pa.Table) else [x for x in item if isinstance(x, pa.Table)] \
        if isinstance(item, tuple) else []
    return [(_table_key(t, size), size) for t in tables for size in (t.get_total_buffer_size(),)]


def _table_key(table: pa.Table, size: int) -> Any:
    """What `_tables_held` keys a table of `size` bytes by; a table of no columns or no buffers is a key of its
    own."""
    ends = []
    for column in (table.column(0), table.column(table.num_columns - 1)) if table.num_columns else ():
        first = next((b for c in column.chunks for b in c.buffers() if b is not None), None)
        if first is None:
            return object()
        ends.append(first.address)
    return (*ends, size) if ends else object()


class PrefetchingReader(Reader):
    """A reader that parses a file (`_read`) on a thread of its own when asked through `read` (`prefetch`: the
    caller's work on one table overlaps the parsing of the next), and on the calling thread through `read_here`:
    the store's ingest pipeline reads on a thread of its own already, where a second thread per file, its tables
    handed over one by one, gained nothing (the 1M-rollout TRL benchmark: ~12k voluntary context switches an
    ingest, most of them these hand-offs)."""

    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        return prefetch(self._read(file, ctx))

    def read_here(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        return self._read(file, ctx)

    @abstractmethod
    def _read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        """Raw tables (see module doc) for one file, parsed on the calling thread. Bad records go to `ctx.bad`."""


from .groups import encode_distinct  # noqa: E402
from .messages import combine, content_text, is_message_list, render_message_list  # noqa: E402  (re-exported)
