"""Per-part sufficient statistics, computed once per stored part and cached beside the run.

Detectors such as `reward_health` aggregate the whole run into small tables (counts, sums, minima per step and
cell). A stored part never changes, so its share of those tables is computed once and kept in
`derived/partstats/<name>/v<version>-duckdb<version>/<part>.parquet`; a run that grows by a step computes only the new part's
table, and a warm audit merges the small per-part tables (`PartStats.sql`) instead of re-reading every rollout.

The SQL given to `part_stats` reads the relation `src`: the canonical rollout columns (`layout.view_columns`)
of the parts still to compute plus `_part` (the part's file name); it must keep `_part` among its output
columns. Its rows are split by `_part` and written per part (without that column). The statistics are not
scoped: callers keep `split` and `step` among the grouping keys and filter the merged rows by the audit's scope,
so audits with different `max_step` or `split` share one cache.

A store that keeps derived data in memory (`persist_derived = False`), or that cannot be written (read-only,
full), gets the same tables in memory for this audit: the merged result is identical, only not reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import RlauditError
from .layout import view_columns
from .store import Store, prune_cached, sql_string, write_cached


#: loose per-part files merged into the run's combined file once there are this many: DuckDB pays ~0.25 ms per
#: file it opens, so a warm audit of a long run reads one combined file and the few parts added since
COMPACT_AT = 16
_STEMS = b"rlaudit_stems"
#: DuckDB memory for writing the combined file: a streaming COPY, often run while a detector holds a large
#: connection open (generalization computes reward_health's tables beside emerging's scope). With the default
#: 1 GB, merging a 10M-rollout run's 2,000 part files took ~750 MB more: generalization peaked at 2,324 MB, and
#: at 1,551 MB with this cap (emerging + generalization on the kept 10M benchmark store). A failed COPY keeps
#: the loose files (`_compact`), so the cap can cost speed, never results.
COMPACT_MEMORY = 256 << 20


@dataclass
class PartStats:
    """The per-part tables of one run: the combined file (its `_stem` column says which part a row is of) and
    the parts it does not hold, as cached files or, where they could not be written, in-memory tables."""

    files: list[Path] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)
    combined: Path | None = None
    combined_stems: list[str] = field(default_factory=list)  # the run's parts that the combined file holds

    def sources(self) -> list[str]:
        """SELECTs of every part's rows (without `_stem`)."""
        selects = []
        if self.combined is not None:
            # always by stem: the combined file may be replaced meanwhile (another audit compacting), with parts
            # this audit reads loose
            where = " WHERE _stem IN (" + ", ".join(sql_string(s) for s in self.combined_stems) + ")"
            selects.append(f"SELECT * EXCLUDE (_stem) FROM read_parquet({sql_string(str(self.combined))}){where}")
        if self.files:
            paths = ", ".join(sql_string(str(p)) for p in self.files)
            selects.append(f"SELECT * FROM read_parquet([{paths}], union_by_name = true)")
        return selects

    def register(self, con: duckdb.DuckDBPyConnection, name: str) -> None:
        """Create the view `name`: every part's rows. A view, not a temp table: the detectors filter it by kind
        into their own small tables, and a scan of the compressed files per query is cheaper than holding every
        row (at 10M rollouts reward_health's rows did not fit DuckDB's memory limit and were spilled to disk:
        5.5 CPU s to register, 1.6 as a view)."""
        selects = self.sources()
        if self.tables:
            con.register(f"_{name}_mem", pa.concat_tables(self.tables, promote_options="default"))
            selects.append(f"SELECT * FROM _{name}_mem")
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {' UNION ALL BY NAME '.join(selects)}")


def part_stats(store: Store, run: str, name: str, version: int, sql: str, batch: int = 16) -> PartStats:
    """The per-part statistics `sql` (see the module doc) of every part of `run`, computing only the parts not
    cached yet, `batch` parts per DuckDB query (one query per part would cost more in overhead than the work)."""
    persist = getattr(store, "persist_derived", True)
    base = store.run_dir(run) / "derived" / "partstats" / name
    # the DuckDB version is part of the key: its hash() (of tasks, prompts) may change between versions
    cache = base / f"v{version}-duckdb{duckdb.__version__}"
    manifest = store.manifest(run)
    parts = store.parts(run, manifest)
    layouts = store.part_layouts(run, manifest)
    combined = cache / "combined.parquet"
    held = _combined_stems(combined)
    out = PartStats()
    todo = []
    for part in parts:
        if not part.is_file():  # as `Store.connect`: a lost part is an error, never a silently smaller run
            raise RlauditError(f"run {run!r}: part file {part} is missing; ingest its source again to repair it "
                               f"(`rlaudit ingest {manifest.get('source', 'SOURCE')} --run {run}`)")
        path = cache / f"{part.stem}.parquet"
        if part.stem in held:
            out.combined_stems.append(part.stem)
        elif path.is_file():  # part names are never reused: a cached table holds for any store that reads it
            out.files.append(path)
        else:
            todo.append(part)
    if out.combined_stems:
        out.combined = combined
    for i in range(0, len(todo), batch):
        for part, table in _compute(todo[i:i + batch], layouts, sql, store.root):
            written = write_cached(cache / f"{part.stem}.parquet", table, compression="zstd") if persist else table
            (out.files if isinstance(written, Path) else out.tables).append(written)
    if not parts:  # the statistics' columns, with no rows
        out.tables.append(_compute([], layouts, sql, store.root)[0][1])
    if persist and len(out.files) >= COMPACT_AT:
        out = _compact(out, combined, store.root)
    if persist:
        prune_cached(base, cache, {p.stem for p in parts} | {"combined"})
    return out


def _combined_stems(path: Path) -> set[str]:
    """The parts a combined file holds (from its footer), or none when there is no readable one."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return set()
    return set(json.loads(meta.get(_STEMS, b"[]")))


def _compact(stats: PartStats, path: Path, root: Path) -> PartStats:
    """Write a new combined file holding every part of `stats` (atomically: readers see the old or the new one);
    the loose files stay until their parts leave the run (a concurrent reader may be reading them)."""
    stems = stats.combined_stems + [p.stem for p in stats.files]
    selects = stats.sources()[:-1] if stats.files else stats.sources()  # the combined rows, with their stems
    if stats.combined is not None:
        selects = [selects[0].replace("SELECT * EXCLUDE (_stem)", "SELECT *", 1)]
    selects += [f"SELECT *, {sql_string(p.stem)} AS _stem FROM read_parquet({sql_string(str(p))})"
                for p in stats.files]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp")
    from .store import bound_memory

    try:
        with duckdb.connect() as con:
            bound_memory(con, root, at_most=COMPACT_MEMORY)
            con.execute(f"COPY ({' UNION ALL BY NAME '.join(selects)}) TO {sql_string(str(tmp))} (FORMAT parquet, "
                        f"COMPRESSION zstd, KV_METADATA {{rlaudit_stems: {sql_string(json.dumps(stems))}}})")
        os.replace(tmp, path)
    except (OSError, duckdb.Error):
        return stats
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return PartStats(tables=stats.tables, combined=path, combined_stems=stems)



def _compute(parts: list[Path], layouts: dict[str, int], sql: str, root: Path) -> list[tuple[Path, pa.Table]]:
    """Run `sql` over `parts` at once and split its result by part."""
    by_layout: dict[int, list[Path]] = {}
    for p in parts:
        by_layout.setdefault(layouts.get(p.name, 1), []).append(p)
    selects = []
    for layout, paths in sorted(by_layout.items()):
        names = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
        selects.append(f"SELECT {view_columns(layout)}, parse_filename(filename) AS _part "
                       f"FROM read_parquet([{names}], filename = true)")
    from .schema import ROLLOUT_SCHEMA
    from .store import bound_memory

    with duckdb.connect() as con:
        con.execute("SET enable_progress_bar = false")
        bound_memory(con, root)
        if not selects:
            con.register("_empty", ROLLOUT_SCHEMA.empty_table())
            selects = ["SELECT *, ''::VARCHAR AS _part FROM _empty"]
        con.execute(f"CREATE VIEW src AS {' UNION ALL '.join(selects)}")
        result = con.sql(sql).to_arrow_table()
    part_col = result.column("_part")
    result = result.drop_columns(["_part"])
    if not parts:
        return [(Path(), result)]
    return [(p, result.filter(pc.equal(part_col, p.name))) for p in parts]


def scope_sql(max_step: int | None, split: str | None) -> str:
    """The audit's scope (`DetectContext.connect`) as a condition on `step` and `split` columns."""
    where = ["TRUE"]
    if max_step is not None:
        where.append(f"step <= {int(max_step)}")
    if split:
        where.append("split = '" + split.replace("'", "''") + "'")
    return " AND ".join(where)
