"""Per-part sufficient statistics, computed once per stored part and cached beside the run.

Detectors such as `reward_health` aggregate the whole run into small tables (counts, sums, minima per step and
cell). A stored part never changes, so its share of those tables is computed once and kept in
`derived/partstats/<kind>/v<version>-duckdb<version>/<part>.parquet`; a run that grows by a step computes only the new
part's table, and a warm audit merges the small per-part tables (`PartStats.sql`) instead of re-reading every rollout.

Each kind of statistics (`define`: the run summary's `run_stats`, `reward_health`, `training_health`) is an SQL
query over the relation `src`: the canonical rollout columns (`layout.view_columns`) the kind names, of the parts
still to compute, plus `_part` (an integer naming the part within the batch), with the rewards map as a column
per signal (`SIGNAL_COLUMNS`: such a kind's query is a function of the batch's signals); it must keep `_part`
among its output columns. Its rows are
split by `_part` and written per part (without that column), or, into a combined file, kept as the query gave
them with their part's file stem in `_stem` (`_Batch`). The statistics are not scoped: callers keep `split`
and `step` among the grouping keys and filter the merged rows by the audit's scope, so audits with different
`max_step` or `split` share one cache.

This module is the one place that computes them. `part_stats(store, run, kind, also=...)` computes every part's
missing tables of `kind` and of the kinds in `also` (those a whole audit will ask for: `DetectContext.part_stats`
passes the kinds its detectors declare) in one read of each part: a batch of parts is read once into a DuckDB
table holding the union of the kinds' columns, and each kind's query runs on it. Reading was about a third of
the cost of a kind's table on the 1M-rollout benchmark, and three kinds used to read every part three times.

Where the compiled kernels run (`rlaudit.kernels`), a batch whose kinds all have a compiled form
(`CompiledKind`) is not made a DuckDB table: DuckDB reads the parts and evaluates each row's columns (the view
of every layout, the pivot, the JSON of the metadata) into Arrow, and each kind's GROUP BYs run as compiled
passes over those columns (`grouped`): the same rows as its query, which stays the definition and the path
without numba (`tests/test_partstats_compiled.py` checks them against each other). On the 1M benchmark's batch
of 16 parts: the four kinds in ~340 instead of ~540 CPU ms (`benchmarks/partstats.py`).

A store that keeps derived data in memory (`persist_derived = False`), or that cannot be written (read-only,
full), gets the same tables in memory for this audit: the merged result is identical, only not reused (and only
the kind asked for is computed).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..layout import (FACTS, FACTS_LAYOUT, REWARDS_LAYOUT, SPANS, facts_sql, has_reward_sql, reward_sql,
                      same_signals_sql, view_columns)
from ..schema import ROLLOUT_SCHEMA
from .. import duck, progress
from ..store import Store, listing, prune_cached, sql_string, write_cached


#: loose per-part files merged into the run's combined file once there are this many (`_Combined`): DuckDB pays
#: ~0.25 ms per file it opens, so a warm audit of a long run reads one combined file and the few parts added since
COMPACT_AT = 16
_STEMS = b"rlaudit_stems"
#: DuckDB memory for merging many small derived files in one streaming COPY (`segments`), often run while a
#: detector holds a large connection open. With the default 1 GB, merging a 10M-rollout run's 2,000 per-part
#: statistics files (as this module did before `_Combined`) took ~750 MB more: generalization peaked at 2,324 MB,
#: and at 1,551 MB with this cap.
COMPACT_MEMORY = 256 << 20
#: rollouts in one batch of parts (`part_stats`; a part is never split): each batch pays DuckDB's fixed cost of
#: its kinds' queries (planning and setting up the four kinds of an audit: ~40 ms on one thread), so the cold
#: statistics of the 1M-rollout benchmark's 200 parts cost 4.4 CPU s in batches of 8 parts, 3.5 in batches of 16
#: and 3.2 in batches of 32 (~160,000 rollouts, ~120 MB more than one part at a time, within BATCH_MEMORY). Its
#: parts grew to 20,000 rollouts (`Store.part_rows`): the four kinds of 2 / 4 / 8 / 16 such parts cost 82 / 60 /
#: 50 / 43 ms a part on one thread, and hold 98 / 199 MB for 8 / 16 of them; the whole cold audit of the 1M run
#: in turns, three pairs: 22.4-23.1 CPU s in batches of 160,000 rollouts, 22.1-22.4 in batches of 320,000, its
#: peak RSS ~50 MB higher (docs/performance.md, session 39)
BATCH_ROWS = 320_000
#: parts in one batch at most (each one a path in the query and a file DuckDB opens)
BATCH_PARTS = 256
#: steps in one batch at most (as the parts' step ranges in the manifest say): several kinds keep rows per step
#: (reward values and buckets per signal, group statistics), ~400 a step for the 1M benchmark's five signals, so a
#: batch's tables grow with its steps, not only its rollouts. The 1M run in 15,625 steps of 64: a batch of 20
#: parts (5,120 steps) made 2.8M rows and took ~800 MB more (the audit peaked at 2.3 GB), 8 parts (2,048 steps)
#: ~390 MB, 4 parts ~240 MB, at 0.115 / 0.13 / 0.16 CPU s a part; at the default 320,000 rollouts of 5,000 a step
#: a batch holds 64 steps, and 3,906 steps of 256 batch 20 parts (1,280 steps) as before
BATCH_STEPS = 2_048
#: the rows a part counts for where the manifest does not give them: a sixteenth of a batch
_UNKNOWN_ROWS = BATCH_ROWS // 16
#: what one thread computing a batch of parts holds (its DuckDB connection's working set and the batch's tables):
#: what `memory.workers` weighs against the memory budget (`_computed`)
BATCH_MEMORY = 384 << 20
#: what a batch holds per rollout above its connection's working set (16 of the 1M benchmark's parts: ~200 MB for
#: 320,000 rollouts), for the batch's size under a memory budget (`_budget_rows`), and the fewest rollouts a batch
#: is then cut to (the size before session 39)
BYTES_PER_ROW = 640
MIN_BATCH_ROWS = 160_000


def _budget_rows() -> int:
    """BATCH_ROWS, or fewer rollouts (not below MIN_BATCH_ROWS) under a memory budget: as many as
    `memory.sample_bytes` (its share of what the budget leaves) holds at BYTES_PER_ROW each. The cold 1M audit
    under `RLAUDIT_MEMORY=600MB` peaked at 626 MB RSS with batches of 160,000 rollouts and 728 MB with 320,000;
    cut to what the share holds with no floor (one part a batch there), 587 MB, but 26.2 CPU s against 20.7."""
    from ..memory import sample_bytes

    return max(MIN_BATCH_ROWS, min(BATCH_ROWS, sample_bytes(BATCH_ROWS * BYTES_PER_ROW)[0] // BYTES_PER_ROW))


@dataclass(frozen=True)
class Kind:
    """A kind of per-part statistics: its cache name, the version of its query (bump it when `sql` changes what it
    computes: the cache is keyed by it), the query over `src` (module doc) and what it reads of each rollout:
    canonical columns, or `<expression> AS <name>` over them where it needs less than a whole column (a length,
    a test of the completion: several kinds read a batch of parts into one table, and copying the completion
    text into it cost more than its length).

    A kind that reads `rewards` gets the map pivoted (`SIGNAL_COLUMNS`), and its `sql` is then a function of the
    batch's signal names (one per slot)."""

    name: str
    version: int
    sql: str | Callable[[tuple[str, ...]], str]
    columns: tuple[str, ...]
    arrow: CompiledKind | None = None

    def query(self, signals: tuple[str, ...]) -> str:
        """The query over `src` for a batch whose pivoted signals are `signals`."""
        return self.sql(signals) if callable(self.sql) else self.sql


@dataclass(frozen=True)
class CompiledKind:
    """A kind's compiled form (`_compute`'s compiled path): the per-row columns it needs (name, SQL expression
    over `src`'s columns; DuckDB evaluates them as it reads the batch) and `compute(keys, signals, schema)`, its
    query's rows from those columns (`grouped.Keys` of the batch's rows; `schema`: the query's own columns), in
    another order. The query stays the definition: tests check the two against each other."""

    columns: tuple[tuple[str, str], ...]
    compute: Callable[[Any, tuple[str, ...], pa.Schema], pa.Table]


KINDS: dict[str, Kind] = {}
#: the module that defines each kind, imported when a caller asks for a kind before anything imported it
_OWNERS = {"run_stats": "rlaudit.derived.runstats", "reward_health": "rlaudit.detectors.reward_stats",
           "training_health": "rlaudit.detectors.training_stats",
           "attribution_meta": "rlaudit.attribution.partcache"}


def kind(name: str) -> Kind:
    """The kind of per-part statistics called `name`."""
    if name not in KINDS and name in _OWNERS:
        import importlib

        importlib.import_module(_OWNERS[name])
    if name not in KINDS:
        raise ValueError(f"no per-part statistics {name!r}; known: {sorted(KINDS)}")
    return KINDS[name]


#: Tests of the texts a part keeps as spans of the completion (`layout.SPANS`) that a kind's columns may name:
#: `_has_<text>` is `<text> IS NOT NULL`, `_empty_<text>` is `coalesce(<text>, '') = ''`, read from the span
#: columns instead of cutting the text out of the completion (which cost ~0.7 CPU s of the 1M benchmark's 2.6 s
#: of reading its parts into the batch tables).
SPAN_TESTS = tuple(f"_{test}_{text}" for text in SPANS for test in ("has", "empty"))


#: How `src` holds the rewards map for the kinds that read it: one slot per signal of the batch, `_r<i>` its value
#: (NULL where the rollout has none or a NULL one) and `_h<i>` whether the rollout's map has the signal, instead
#: of the map. Kinds aggregate each slot's column over the batch's rows (and turn the per-slot columns into rows
#: per signal, `each_signal`) instead of unnesting the map: one row per rollout, not per rollout and signal, and
#: no group key of signal names (unnesting the map was done 7 times per batch by the four audit kinds, and their
#: group-bys hashed ~800,000 signal names per 160,000 rollouts: the four kinds' queries over one batch of the 1M
#: benchmark, one DuckDB thread, best of 5: 0.45 -> 0.35 CPU s, though planning the longer queries costs 0.07
#: instead of 0.04). The slots are read by position where every rollout of the batch has the first one's signals
#: in that order (how trainers log), else by name (`_pivot`). A batch without signals has one slot that no
#: rollout has (`_h0` false), so that the kinds' SQL keeps its shape and yields no signal rows.
SIGNAL_COLUMNS = ("_r", "_h")


def each_signal(signals: tuple[str, ...], select: Callable[[int, str], str]) -> str:
    """`select(i, name)` (a SELECT of slot i, `name` its signal as an SQL string) of every slot, in one UNION ALL."""
    return "\nUNION ALL\n".join(select(i, sql_string(s)) for i, s in enumerate(signals))


def define(name: str, version: int, sql: str | Callable[[tuple[str, ...]], str], columns: tuple[str, ...],
           arrow: CompiledKind | None = None) -> Kind:
    """Register a kind of per-part statistics (at import of the module that owns its query), with its compiled
    form where it has one."""
    unknown = [c for c in columns if c not in ROLLOUT_SCHEMA.names and " AS " not in c and c not in SPAN_TESTS
               and c not in FACTS]
    if unknown:
        raise ValueError(f"per-part statistics {name!r}: no canonical column(s) {unknown}")
    KINDS[name] = Kind(name, version, sql, tuple(columns), arrow)
    return KINDS[name]


@dataclass
class PartStats:
    """The per-part tables of one run: the combined file (its `_stem` column says which part a row is of) and
    the parts it does not hold, as cached files or, where they could not be written, in-memory tables."""

    files: list[Path] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)
    combined: Path | None = None
    combined_stems: list[str] = field(default_factory=list)  # the run's parts that the combined file holds
    table_stems: list[str] = field(default_factory=list)  # the part of each of `tables`

    def sources(self, stems: bool = False, held: str | None = None) -> list[str]:
        """SELECTs of every part's rows (with `stems`, and their part's file stem as `_stem`). `held`: a relation
        whose column `stem` lists `combined_stems` (`register` makes one), else they are spelt out in the SQL."""
        selects = []
        if self.combined is not None:
            # always by stem: the combined file may be replaced meanwhile (another audit compacting), with parts
            # this audit reads loose. A semi-join with a table of the stems, not `_stem IN (<2,000 literals>)`:
            # the literal list cost ~5 ms to bind per view and ~15 ms per query over it at 10M rollouts, and a
            # warm audit binds and queries these views dozens of times
            where = (f" WHERE _stem IN (SELECT stem FROM {held})" if held is not None else
                     " WHERE _stem IN (" + ", ".join(sql_string(s) for s in self.combined_stems) + ")")
            cols = "*" if stems else "* EXCLUDE (_stem)"
            selects.append(f"SELECT {cols} FROM read_parquet({sql_string(str(self.combined))}){where}")
        if self.files:
            paths = ", ".join(sql_string(str(p)) for p in self.files)
            if stems:  # a loose file is named after its part
                selects.append(f"SELECT * EXCLUDE (filename), parse_filename(filename, true) AS _stem "
                               f"FROM read_parquet([{paths}], union_by_name = true, filename = true)")
            else:
                selects.append(f"SELECT * FROM read_parquet([{paths}], union_by_name = true)")
        return selects

    def register(self, con: duckdb.DuckDBPyConnection, name: str, stems: bool = False) -> None:
        """Create the view `name`: every part's rows (with `stems`, each row's part as `_stem`). A view, not a
        temp table: the detectors filter it by kind into their own small tables, and a scan of the compressed
        files per query is cheaper than holding every row (at 10M rollouts reward_health's rows did not fit
        DuckDB's memory limit and were spilled to disk: 5.5 CPU s to register, 1.6 as a view)."""
        held = None
        if self.combined is not None:
            held = f"_{name}_held"
            con.register(f"{held}_arrow", pa.table({"stem": pa.array(self.combined_stems, pa.string())}))
            con.execute(f"CREATE OR REPLACE TEMP TABLE {held} AS SELECT stem FROM {held}_arrow")
            con.unregister(f"{held}_arrow")
        selects = self.sources(stems, held)
        if self.tables:
            tables = self.tables if not stems else [
                t.append_column("_stem", pa.array([stem] * len(t), pa.string()))
                for t, stem in zip(self.tables, self.table_stems)]
            con.register(f"_{name}_mem", pa.concat_tables(tables, promote_options="default"))
            selects.append(f"SELECT * FROM _{name}_mem")
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {' UNION ALL BY NAME '.join(selects)}")


def part_stats(store: Store, run: str, name: str, also: tuple[str, ...] | list[str] = (),
               batch: int | None = None, batch_rows: int | None = None) -> PartStats:
    """The per-part statistics of kind `name` (see the module doc) of every part of `run`, computing only the
    parts not cached yet, together with the missing tables of the kinds in `also` (one read of each part for all
    of them), in batches of at most `batch` parts (BATCH_PARTS) and about `batch_rows` rollouts (BATCH_ROWS, fewer
    under a memory budget: `_budget_rows`) per DuckDB query (one query per part would cost more in overhead than
    the work).

    Where a kind has COMPACT_AT or more parts to compute or loose, its new tables stream into a new combined
    file (`_Combined`) instead of a file per part that the next step would merge: a cold audit writes each
    kind's rows once. One call at a time per run in this process (`_run_lock`): a call made while another
    computes (an audit's background thread, `detectors.run_detectors`) waits for it, then finds the tables
    cached."""
    with _run_lock(store, run):
        return _part_stats(store, run, name, also, batch, batch_rows)


_RUN_LOCKS: dict[tuple[str, str], threading.RLock] = {}
_RUN_LOCKS_GUARD = threading.Lock()


def _run_lock(store: Store, run: str) -> threading.RLock:
    """The lock of (the store's root, `run`) that `part_stats` holds while it computes and writes a run's tables."""
    with _RUN_LOCKS_GUARD:
        return _RUN_LOCKS.setdefault((str(Path(store.root).resolve()), run), threading.RLock())


def _part_stats(store: Store, run: str, name: str, also: tuple[str, ...] | list[str], batch: int | None,
                batch_rows: int | None) -> PartStats:
    persist = getattr(store, "persist_derived", True)
    # where nothing is kept, the other kinds' tables would be computed for nothing: each is computed when asked
    kinds = [kind(k) for k in dict.fromkeys([name, *(also if persist else ())])]
    manifest = store.manifest(run)
    parts = store.parts(run, manifest)
    layouts = store.part_formats(run, manifest)
    lost = store.missing_part(parts)  # as `Store.connect`: an error, never a silently smaller run
    if lost is not None:
        raise store.missing_error(run, lost, manifest)
    caches = {k.name: _Cache(store, run, k) for k in kinds}
    todo: dict[tuple[str, ...], list[Path]] = {}  # the parts by the kinds they lack
    for part in parts:
        stem = part.stem
        lack = tuple(name for name, c in caches.items() if not c.find(stem))
        if lack:
            todo.setdefault(lack, []).append(part)
    writers = {k: _Combined(c) for k, c in caches.items() if persist and len(c.files) + len(c.todo) >= COMPACT_AT}
    own = caches[name]
    tables: list[pa.Table] = []  # `name`'s tables that are not in a file
    table_stems: list[str] = []  # their parts
    stored = store.stored_parts(run, manifest)
    sizes = {name: p.rows for name, p in stored.items()}
    spans = {name: p.steps[1] - p.steps[0] + 1 for name, p in stored.items() if p.steps}
    jobs = [(lack, chunk) for lack, lacking in todo.items()
            for chunk in _batches(lacking, sizes, batch or BATCH_PARTS, batch_rows or _budget_rows(), spans)]
    with progress.tracking("statistics", sum(len(chunk) for _, chunk in jobs)) as shown:
        for (_, chunk), computed in zip(jobs, _computed(jobs, layouts, store.root)):
            shown.advance(len(chunk))
            for what, rows in computed.items():
                if what in writers and writers[what].add(rows):
                    continue
                for part, table in rows.per_part():
                    written = write_cached(caches[what].path / f"{part.stem}.parquet", table,
                                           **_written(table.schema)) if persist else table
                    if what == name and isinstance(written, Path):
                        own.files.append(written)
                    elif what == name:
                        tables.append(written)
                        table_stems.append(part.stem)
    for writer in writers.values():
        writer.finish()
    if name in writers and writers[name].lost:  # the combined file could not be written: keep them in memory
        for part, t in _compute(writers[name].lost, layouts, [KINDS[name]], store.root)[name].per_part():
            tables.append(t)
            table_stems.append(part.stem)
    if name in writers and writers[name].done:
        out = PartStats(tables=tables, combined=own.combined, combined_stems=writers[name].stems,
                        table_stems=table_stems)
    else:
        out = PartStats(files=own.files, tables=tables, combined=own.combined if own.combined_stems else None,
                        combined_stems=own.combined_stems, table_stems=table_stems)
    if not parts:  # the statistics' columns, with no rows
        out.tables.append(_compute([], layouts, [KINDS[name]], store.root)[name].table.drop_columns(["_part"]))
        out.table_stems.append("")
    if persist:
        prune_cached(own.base, own.path, {p.stem for p in parts} | {"combined"})
    return out


def _batches(parts: list[Path], rows: dict[str, int | None], most: int, most_rows: int,
             spans: dict[str, int] | None = None, most_steps: int | None = None) -> list[list[Path]]:
    """`parts`, in order, cut into batches of at most `most` parts, `most_rows` rows and `most_steps` steps
    (BATCH_STEPS; or one part that has more); `rows`: each part's rows by file name, from the manifest; `spans`:
    the steps each part spans (its step range; 1 where unknown)."""
    most_steps = BATCH_STEPS if most_steps is None else most_steps
    out: list[list[Path]] = []
    batch: list[Path] = []
    held = steps = 0
    for part in parts:
        n = rows.get(part.name)
        n = _UNKNOWN_ROWS if n is None else int(n)
        span = max(1, (spans or {}).get(part.name, 1))
        if batch and (len(batch) >= most or held + n > most_rows or steps + span > most_steps):
            out.append(batch)
            batch, held, steps = [], 0, 0
        batch.append(part)
        held += n
        steps += span
    if batch:
        out.append(batch)
    return out


class _Cache:
    """Where the tables of one kind of a run are cached, and which parts have one (`find`)."""

    def __init__(self, store: Store, run: str, kind: Kind):
        self.base = store.run_dir(run) / "derived" / "partstats" / kind.name
        # the DuckDB version is part of the key: its hash() (of tasks, prompts) may change between versions
        self.path = self.base / f"v{kind.version}-duckdb{duckdb.__version__}"
        self.combined = self.path / "combined.parquet"
        self.held = _combined_stems(self.combined)
        # the loose files, from one listing (a stat per part cost ~10 us with its `Path`: 2,000 parts, 3 kinds,
        # 5 readers per warm audit); read after the combined file's stems, so a concurrent compaction that
        # replaced the combined file and removed the loose ones shows the part in one or the other
        self.loose = listing(self.path)
        self.files: list[Path] = []
        self.combined_stems: list[str] = []
        self.todo: set[str] = set()

    def find(self, stem: str) -> bool:
        """Record where part `stem`'s table is (the combined file, a loose file, or `todo`); False: in `todo`."""
        if stem in self.held:
            self.combined_stems.append(stem)
        elif f"{stem}.parquet" in self.loose:  # part names are never reused: a cached table holds for any store
            self.files.append(self.path / f"{stem}.parquet")
        else:
            self.todo.add(stem)
            return False
        return True


class _Combined:
    """A new combined file of one kind, written while its parts are computed: the computed tables (`add`, a
    batch of parts a row group), then the rows of the parts already cached (the old combined file's and the
    loose files'), then renamed over the old one (`finish`; readers see the old or the new file). If it cannot
    be written (read-only, full), `lost` lists the parts whose tables went into it: the caller recomputes those
    it needs, and the next audit computes the rest again."""

    def __init__(self, cache: _Cache):
        self.cache = cache
        self.stems = cache.combined_stems + [f.stem for f in cache.files] + sorted(cache.todo)
        self.tmp = cache.combined.with_name(
            f".{cache.combined.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp")
        self.writer: pq.ParquetWriter | None = None
        self.added: list[Path] = []
        self.lost: list[Path] = []
        self.done = False

    def add(self, rows: _Batch) -> bool:
        """Append a batch's rows (one row group); False (and nothing appended) once the file has failed."""
        if self.lost:
            return False
        self.added += rows.parts
        try:
            self._write(rows.with_stems())
        except (OSError, pa.ArrowException):
            self._fail()
        return True

    def finish(self) -> None:
        if self.lost:
            return
        try:
            held = pa.array(self.cache.combined_stems, pa.string())
            if self.cache.combined_stems:
                for b in pq.ParquetFile(self.cache.combined).iter_batches():
                    self._write(pa.Table.from_batches([b]).filter(pc.is_in(b.column("_stem"), held)))
            for f in self.cache.files:
                t = pq.read_table(f)
                self._write(t.append_column("_stem", pa.array([f.stem] * len(t), pa.string())))
            if self.writer is None:
                return  # nothing computed, nothing cached: no file
            self.writer.close()
            os.replace(self.tmp, self.cache.combined)
            self.done = True
        except (OSError, pa.ArrowException):
            self._fail()

    def _write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.cache.path.mkdir(parents=True, exist_ok=True)
            schema = table.schema.with_metadata({_STEMS: json.dumps(self.stems).encode()})
            self.writer = pq.ParquetWriter(self.tmp, schema, **_written(schema))
        self.writer.write_table(table.select(self.writer.schema.names).cast(self.writer.schema))

    def _fail(self) -> None:
        self.lost = self.added
        with contextlib.suppress(Exception):
            if self.writer is not None:
                self.writer.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)


def _written(schema: pa.Schema) -> dict:
    """How the tables are written: LZ4, the string columns (few distinct values: splits, signals, conditions,
    part stems) dictionary-encoded, the numbers not (mostly distinct: sums, means, values). Writing the combined
    files of the 1M benchmark's three audit kinds (~16 MB) cost 0.38 CPU s with zstd and every column in a
    dictionary, 0.23 so (18 MB; reading them back through DuckDB costs the same)."""
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    return {"compression": "lz4", "use_dictionary": strings or False}


def _combined_stems(path: Path) -> set[str]:
    """The parts a combined file holds (from its footer), or none when there is no readable one."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return set()
    return set(json.loads(meta.get(_STEMS, b"[]")))


@dataclass(frozen=True)
class _Batch:
    """One kind's rows of a batch of parts, as its query gave them: `table` keeps `_part` (the index of the row's
    part in `parts`)."""

    table: pa.Table
    parts: list[Path]

    def per_part(self) -> list[tuple[Path, pa.Table]]:
        """Each part's rows (without `_part`), for a file or an in-memory table per part."""
        return _by_part(self.table, self.parts)

    def with_stems(self) -> pa.Table:
        """The rows with their part's file stem `_stem` in place of `_part`, in the query's order: what a
        combined file keeps. Splitting them per part first (a sort and a take of every column) and joining the
        pieces again cost ~0.4 CPU s of the 1M benchmark's ~5 for the per-part statistics."""
        stems = pa.array([p.stem for p in self.parts], pa.string()).take(self.table.column("_part"))
        return self.table.drop_columns(["_part"]).append_column("_stem", stems)


def _computed(jobs: list[tuple[tuple[str, ...], list[Path]]], layouts: dict[str, Format], root: Path
              ) -> Iterator[dict[str, _Batch]]:
    """`_compute` of each job (the kinds a batch of parts lacks, the parts), in order. Where a second core and
    the memory budget allow, `memory.workers` threads compute the next batches while the caller writes the last
    one's tables (DuckDB and Arrow release the GIL; one batch at a time left a core idle for a third of a cold
    run's statistics), each connection with its share of DuckDB's memory limit; at most one batch per thread
    waits to be written, so memory stays bounded by the thread count, not the run. Each connection then runs
    one DuckDB thread: the workers already fill the cores, and DuckDB's own threads on top of them cost ~0.6 CPU
    s more of the 1M benchmark's ~6.5 (its task scheduler's waits and wake-ups).

    A connection serves one batch at a time and then the next (`idle`), closed once every batch is computed:
    opening and closing an in-memory database cost ~12 ms a batch (the 200 parts one at a time: 13.8 -> 11.5
    CPU s; in the 1M benchmark's batches ~0.1 of ~3.3)."""
    from ..memory import duckdb_limit, in_order, workers

    n = min(len(jobs), workers(BATCH_MEMORY))
    share, threads = (duckdb_limit() // n, 1) if n > 1 else (None, None)
    idle: queue.SimpleQueue[duckdb.DuckDBPyConnection] = queue.SimpleQueue()
    opened: list[duckdb.DuckDBPyConnection] = []

    def compute(job: tuple[tuple[str, ...], list[Path]]) -> dict[str, _Batch]:
        try:
            con = idle.get_nowait()
        except queue.Empty:
            con = duck.connect(root, at_most=share, threads=threads)
            opened.append(con)
        try:
            return _compute(job[1], layouts, [KINDS[k] for k in job[0]], root, con)
        finally:
            idle.put(con)

    try:
        yield from in_order(compute, jobs, n, "partstats")
    finally:  # (in_order has waited for its threads)
        for con in opened:
            con.close()


def _compute(parts: list[Path], layouts: dict[str, Format], kinds: list[Kind], root: Path,
             con: duckdb.DuckDBPyConnection | None = None) -> dict[str, _Batch]:
    """Read `parts` (name -> (layout, shared signals): `Store.part_formats`) once (the columns `kinds` need, the
    rewards pivoted: `SIGNAL_COLUMNS`) into a DuckDB table `src` and run each kind's query on it (each result
    keeps `_part`: `_Batch`), on `con` (left as it was given: the batch's objects dropped) or a connection of
    its own; or, where every kind has a compiled form, read the columns those need into Arrow and compute each
    kind from them (module doc)."""
    plain = (*ROLLOUT_SCHEMA.names, *SPAN_TESTS, *FACTS)
    columns = [f'"{c}"' for c in plain if c != "rewards" and any(c in k.columns for k in kinds)]
    columns += dict.fromkeys(c for k in kinds for c in k.columns if c not in plain)
    cols = ", ".join(columns)
    pivot = any("rewards" in k.columns for k in kinds)
    by_format: dict[Format, list[Path]] = {}
    for p in parts:
        by_format.setdefault(layouts.get(p.name, (1, ())), []).append(p)
    groups, order = [], []
    for fmt, paths in sorted(by_format.items()):
        groups.append((fmt, ", ".join(sql_string(str(p)) for p in paths), len(order)))
        order += paths

    def reads(signals: tuple[str, ...] | None, by_position: bool) -> list[str]:
        """Each group's rows: its canonical columns, and with `signals` the pivot (`_pivot`), from the stored
        reward columns (layout 5), not from `rewards` rebuilt as a map."""
        out = []
        for (layout, shared), names, first in groups:
            extra = "" if signals is None else _pivot(signals, by_position, layout, shared)
            # `_part` is the part's position in `order` (file_index: its position in the list read), not its file
            # name: every kind groups by it, and an integer key cost ~15% less than the name in those aggregates
            out.append(f"(SELECT {view_columns(layout, shared)}, {_span_tests(layout)}, {facts_sql(layout)}{extra}, "
                       f"file_index::INTEGER + {first} AS _part FROM read_parquet([{names}]))")
        return out

    out: dict[str, _Batch] = {}
    own = con is None
    con = duck.connect(root) if con is None else con
    # for several kinds a table, not a view: each kind's query scans it instead of the files (one kind reads
    # the files directly: copying its columns into a table first cost more than it saved)
    what = "TABLE" if len(kinds) > 1 else "VIEW"
    empty = not groups
    # every kind compiled: the rows as Arrow columns, no table (`CompiledKind`)
    compiled = bool(groups) and all(k.arrow is not None for k in kinds) and _use_compiled()
    try:
        if empty:
            con.register("_empty", ROLLOUT_SCHEMA.empty_table())

        def union(signals: tuple[str, ...] | None, by_position: bool = True) -> str:
            part = ", _part" if order else ", 0 AS _part"
            pivoted = "" if signals is None else ", " + ", ".join(_PIVOTED(max(len(signals), 1)))
            if empty:
                selects = [f"SELECT {cols}{'' if signals is None else _pivot(signals, by_position, 1, ())}{part} "
                           "FROM _empty"]
            else:
                selects = [f"SELECT {cols}{pivoted}{part} FROM {r}" for r in reads(signals, by_position)]
            return " UNION ALL ".join(selects)

        def rows(signals: tuple[str, ...] | None, by_position: bool = True) -> pa.Table:
            items = {name: expr for k in kinds for name, expr in k.arrow.columns}  # type: ignore[union-attr]
            if signals is not None:
                items.update((c, c) for c in _PIVOTED(max(len(signals), 1)))
            select = ", ".join(f"{expr} AS {name}" for name, expr in items.items())
            return con.sql(f"SELECT {select} FROM ({union(signals, by_position)})").to_arrow_table()

        def create(signals: tuple[str, ...] | None, by_position: bool = True) -> None:
            con.execute(f"CREATE OR REPLACE TEMP {what} src AS {union(signals, by_position)}")

        def same_keys(table: pa.Table | None) -> bool:
            if table is not None:
                return pc.all(table.column("_same_keys")).as_py() is not False
            return bool(con.execute("SELECT coalesce(bool_and(_same_keys), TRUE) FROM src").fetchall()[0][0])

        signals: tuple[str, ...] = ()
        table: pa.Table | None = None
        make = rows if compiled else create
        if not pivot:
            table = make(None)
        else:
            signals = _first_signals(con, parts[0] if parts else None, layouts)
            table = make(signals)
            if not same_keys(table):
                stored = " UNION ALL ".join(f"SELECT rewards FROM read_parquet([{names}])" for _, names, _ in groups)
                logged = {r[0] for r in con.execute(f"SELECT DISTINCT unnest(map_keys(rewards)) FROM ({stored})"
                                                    ).fetchall()}  # (the maps kept: rollouts of other signals)
                signals = tuple(sorted(logged.union(*(shared for (_, shared), _, _ in groups))))
                table = make(signals, by_position=False)
        if compiled:
            from .grouped import Keys

            keys = Keys(table)
            for k in kinds:
                schema = _schema(con, k, signals or ("",), union(signals if pivot else None))
                out[k.name] = _Batch(k.arrow.compute(keys, signals, schema), order)  # type: ignore[union-attr]
        else:
            for k in kinds:
                out[k.name] = _Batch(con.sql(k.query(signals or ("",))).to_arrow_table(), order)
    finally:
        if own:
            con.close()
        else:
            if not compiled:
                con.execute(f"DROP {what} IF EXISTS src")
            if empty:
                con.unregister("_empty")
    return out


def _use_compiled() -> bool:
    """Whether the kinds' compiled forms run (`CompiledKind`): where the compiled kernels do (`rlaudit.kernels`)."""
    from ..kernels import use_numba

    return use_numba()


#: the columns of each kind's query per number of signal slots (the names and types do not depend on the
#: signals' names), found once per process by planning the query over an empty `src`
_SCHEMAS: dict[tuple[str, int, int], pa.Schema] = {}
_SCHEMAS_LOCK = threading.Lock()


def _schema(con: duckdb.DuckDBPyConnection, kind: Kind, signals: tuple[str, ...], union: str) -> pa.Schema:
    """The columns (names, order, types) of `kind`'s query over a batch of `signals`, as its SQL gives them."""
    key = (kind.name, kind.version, len(signals))
    if key not in _SCHEMAS:
        with _SCHEMAS_LOCK:
            if key not in _SCHEMAS:
                cur = con.cursor()
                try:
                    cur.execute(f"CREATE OR REPLACE TEMP VIEW src AS SELECT * FROM ({union}) LIMIT 0")
                    _SCHEMAS[key] = cur.sql(kind.query(signals)).limit(0).to_arrow_table().schema
                    cur.execute("DROP VIEW IF EXISTS src")
                finally:
                    cur.close()
    return _SCHEMAS[key]


#: A part's (layout, shared reward signals), as `Store.part_formats` gives it.
Format = tuple[int, tuple[str, ...]]


def _first_signals(con: duckdb.DuckDBPyConnection, part: Path | None, layouts: dict[str, Format]
                   ) -> tuple[str, ...]:
    """The signals of `part`: those its rollouts share (layout 5), else its first rollout's with a rewards map
    (a run logs the same ones for every rollout: `_compute` checks that they are every rollout's)."""
    if part is None:
        return ()
    layout, shared = layouts.get(part.name, (1, ()))
    if layout >= REWARDS_LAYOUT:
        return shared
    rows = con.execute(f"SELECT map_keys(rewards) FROM read_parquet({sql_string(str(part))}) "
                       f"WHERE rewards IS NOT NULL LIMIT 1").fetchall()
    return tuple(rows[0][0]) if rows else ()


def _PIVOTED(k: int) -> list[str]:
    """The names of `_pivot`'s items for `k` slots."""
    return [name for i in range(k) for name in (f"_r{i}", f"_h{i}")] + ["_same_keys"]


def _pivot(signals: tuple[str, ...], by_position: bool, layout: int, shared: tuple[str, ...]) -> str:
    """The SELECT items of `SIGNAL_COLUMNS` for `signals`, and `_same_keys`, over a part of `layout` whose
    rollouts share `shared` (read as stored). `by_position`: every rollout is expected to have exactly
    `signals` in that order, so slot i is a stored map's i-th value (`_same_keys` says where that holds: else
    `_compute` pivots again by name); else each slot is looked up by name. A part's reward columns are read by
    name either way (`layout.reward_sql`)."""
    items = []
    for i, s in enumerate(signals):
        if by_position and layout < REWARDS_LAYOUT:
            items += [f"map_values(rewards)[{i + 1}] AS _r{i}", f"TRUE AS _h{i}"]
        else:
            items += [f"{reward_sql(s, layout, shared)} AS _r{i}", f"{has_reward_sql(s, layout, shared)} AS _h{i}"]
    if not signals:  # a slot no rollout has (`SIGNAL_COLUMNS`)
        items += ["NULL::DOUBLE AS _r0", "FALSE AS _h0"]
    same = same_signals_sql(signals, layout, shared) if by_position else "TRUE"
    return ", " + ", ".join(items) + f", {same} AS _same_keys"


def _span_tests(layout: int) -> str:
    """`SPAN_TESTS` over the columns of a part of `layout`, equal to the tests of the canonical texts that
    `view_columns` cuts out (a span with a null bound cuts out NULL; a slice past the completion's bytes is
    shorter). Only those a query names are computed (DuckDB drops the unused columns of a subquery)."""
    items = []
    for text, (start, end) in SPANS.items():
        if layout < 2:
            has, empty = f'"{text}" IS NOT NULL', f"""coalesce("{text}", '') = ''"""
        else:  # the view's slice is bytes start + 1 .. end of the completion
            has = f'CASE WHEN "{start}" IS NULL THEN "{text}" IS NOT NULL ELSE "{end}" IS NOT NULL END'
            # parts that keep the completion's facts hold spans inside the completion (`text.reasoning_spans`;
            # tests/core/test_kernels.py), so the completion is not read to bound them
            bound = f'"{end}"' if layout >= FACTS_LAYOUT else f'least("{end}", strlen(completion))'
            empty = (f"""CASE WHEN "{start}" IS NULL THEN coalesce("{text}", '') = '' WHEN "{end}" IS NULL THEN TRUE """
                     f'ELSE {bound} <= "{start}" END')
        items += [f'{has} AS "_has_{text}"', f'{empty} AS "_empty_{text}"']
    return ", ".join(items)


def _by_part(result: pa.Table, order: list[Path]) -> list[tuple[Path, pa.Table]]:
    """Each part's rows of `result` (`_part`: the part's index in `order`), in their order in `result`: one
    stable sort and a slice per part (a filter per part cost O(parts x rows) per batch)."""
    part = np.asarray(result.column("_part").to_numpy(), np.int64)
    by = np.argsort(part, kind="stable")
    rows = result.drop_columns(["_part"]).take(pa.array(by))
    counts = np.bincount(part, minlength=len(order))
    starts = np.cumsum(counts) - counts
    return [(p, rows.slice(int(starts[i]), int(counts[i]))) for i, p in enumerate(order)]


def scope_sql(max_step: int | None, split: str | None) -> str:
    """The audit's scope (`DetectContext.connect`) as a condition on `step` and `split` columns."""
    where = ["TRUE"]
    if max_step is not None:
        where.append(f"step <= {int(max_step)}")
    if split:
        where.append("split = '" + split.replace("'", "''") + "'")
    return " AND ".join(where)
