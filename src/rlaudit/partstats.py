"""Per-part sufficient statistics, computed once per stored part and cached beside the run.

Detectors such as `reward_health` aggregate the whole run into small tables (counts, sums, minima per step and
cell). A stored part never changes, so its share of those tables is computed once and kept in
`derived/partstats/<name>/v<version>/<part>.parquet`; a run that grows by a step computes only the new part's
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
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import RlauditError
from .layout import view_columns
from .store import Store, write_cached


@dataclass
class PartStats:
    """The per-part tables of one run: cached files and, where they could not be written, in-memory tables."""

    files: list[Path] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)

    def register(self, con: duckdb.DuckDBPyConnection, name: str) -> None:
        """Create the view `name`: every part's rows (zero rows and no columns when the run has no part)."""
        selects = []
        if self.files:
            paths = ", ".join("'" + str(p).replace("'", "''") + "'" for p in self.files)
            selects.append(f"SELECT * FROM read_parquet([{paths}], union_by_name = true)")
        if self.tables:
            con.register(f"_{name}_mem", pa.concat_tables(self.tables, promote_options="default"))
            selects.append(f"SELECT * FROM _{name}_mem")
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {' UNION ALL BY NAME '.join(selects)}")


def part_stats(store: Store, run: str, name: str, version: int, sql: str, batch: int = 16) -> PartStats:
    """The per-part statistics `sql` (see the module doc) of every part of `run`, computing only the parts not
    cached yet, `batch` parts per DuckDB query (one query per part would cost more in overhead than the work)."""
    persist = getattr(store, "persist_derived", True)
    base = store.run_dir(run) / "derived" / "partstats" / name
    cache = base / f"v{version}"
    manifest = store.manifest(run)
    parts = store.parts(run, manifest)
    layouts = store.part_layouts(run, manifest)
    out = PartStats()
    todo = []
    for part in parts:
        if not part.is_file():  # as `Store.connect`: a lost part is an error, never a silently smaller run
            raise RlauditError(f"run {run!r}: part file {part} is missing; ingest its source again to repair it "
                               f"(`rlaudit ingest {manifest.get('source', 'SOURCE')} --run {run}`)")
        path = cache / f"{part.stem}.parquet"
        if path.is_file():  # part names are never reused: a cached table holds for any store that reads it
            out.files.append(path)
        else:
            todo.append(part)
    for i in range(0, len(todo), batch):
        for part, table in _compute(todo[i:i + batch], layouts, sql, store.root):
            written = write_cached(cache / f"{part.stem}.parquet", table, compression="zstd") if persist else table
            (out.files if isinstance(written, Path) else out.tables).append(written)
    if not parts:  # the statistics' columns, with no rows
        out.tables.append(_compute([], layouts, sql, store.root)[0][1])
    if persist:
        _prune(base, cache, {p.stem for p in parts})
    return out


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


def _prune(base: Path, cache: Path, stems: set[str]) -> None:
    """Drop tables of other versions and of parts the run no longer lists."""
    if not base.is_dir():
        return
    for d in base.iterdir():
        if d.is_dir() and d != cache:
            shutil.rmtree(d, ignore_errors=True)
    for f in cache.glob("*.parquet") if cache.is_dir() else []:
        if f.stem not in stems:
            with contextlib.suppress(OSError):
                f.unlink(missing_ok=True)


def scope_sql(max_step: int | None, split: str | None) -> str:
    """The audit's scope (`DetectContext.connect`) as a condition on `step` and `split` columns."""
    where = ["TRUE"]
    if max_step is not None:
        where.append(f"step <= {int(max_step)}")
    if split:
        where.append("split = '" + split.replace("'", "''") + "'")
    return " AND ".join(where)
