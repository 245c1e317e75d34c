"""Per-part summaries of the CoT scan's results, so that a warm audit reads counts and exposures, not every
scanned row of the run.

The scan caches one result row per rollout with grader inputs (and per chance pairing) for each stored part
(`cot_grading.scan_parts`). Every statistic of a finding is a sum over those rows per (chance, grader, split,
step, condition, task), and its evidence needs only the exposed rows; yet an audit aggregated all of them, from
one file per part (2.2M rows in 2,000 files at 10M rollouts: ~1.5 CPU s with the evidence look-ups). So each
part's results are summarised once, beside them (`<scan cache>/summary/<part>.parquet`), with two kinds of rows:

- kind 0: per (chance, grader, split, step, condition, task) the rows `n`, the exposed ones `exposed`, the first
  step with an exposure `first` and the rows with reasoning-only shingles `scannable`;
- kind 1: the exposed rows that are not chance pairings, with their scan columns and the part (`part`, the part
  file's name) that holds the rollout, so that the evidence reads only those parts.

The summaries of a long run are read through merged segments (`rlaudit.derived.segments`). A store that keeps derived
data in memory, or results given as a table, are summarised in memory: the same rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..derived import segments
from ..store import listing, prune_cached, sql_list, write_cached

_VERSION = 2  # 1: summarised by DuckDB

SCHEMA = pa.schema([
    ("kind", pa.int8()), ("chance", pa.bool_()), ("grader", pa.string()), ("split", pa.string()), ("step", pa.int64()),
    ("condition", pa.string()), ("task", pa.string()), ("n", pa.int64()), ("exposed", pa.int64()),
    ("first", pa.int64()), ("scannable", pa.int64()), ("rollout_id", pa.string()), ("containment", pa.float64()),
    ("matched", pa.int64()), ("reasoning_only", pa.int64()), ("longest_span", pa.int64()), ("part", pa.string()),
])
_KEYS = ["chance", "grader", "split", "step", "condition", "task"]


def register_summaries(con: duckdb.DuckDBPyConnection, results: dict[str, Any], parts: list[Path]) -> None:
    """The view `cot_summary` on `con`: the summaries of the scan results `results` (part name -> cached file
    or table) of `parts`, summarising the parts not done yet (each from its own result file). A summary is done
    when its file is there, or its rows are in a segment (`fresh`: the scan wrote them there from memory)."""
    files, tables = [], []
    names: dict[str, tuple[Path, set[str]]] = {}  # per results directory, its summaries' and their names
    for part in parts:
        value = results[part.name]
        if isinstance(value, Path):
            # one listing, not a stat per part; one path built per part (a Path's parent and hash cost ~10 us)
            parent, name = os.path.split(value)
            if parent not in names:
                d = summary_path(value).parent
                names[parent] = d, listing(d) | segments.held(d / "segments" / "summary")
            d, listed = names[parent]
            path = d / name
            if name not in listed:
                written, _ = save_summary(value, pq.read_table(value), part.name)
                if not isinstance(written, Path):
                    tables.append(written)
                    continue
            files.append(path)
        else:
            tables.append(summarise(value, part.name))
    if files:  # other versions' summaries, and those of parts the run no longer lists
        prune_cached(files[0].parent.parent, files[0].parent, {p.stem for p in parts})
    selects = []
    if files:
        if len(names) == 1:  # the files of one directory
            selects += segments.select_sql(segments.covering(files, "summary"))
        else:
            selects.append(f"SELECT * FROM read_parquet({sql_list([str(f) for f in files])})")
    if tables or not selects:
        con.register("_cot_summary_mem", pa.concat_tables(tables or [summarise(None, "")]))
        selects.append("SELECT * FROM _cot_summary_mem")
    con.execute(f"CREATE OR REPLACE TEMP VIEW cot_summary AS {' UNION ALL '.join(selects)}")


def summary_path(results: Path) -> Path:
    """Where the summary of a part's cached scan results (`results`) is cached."""
    return results.parent / "summary" / f"v{_VERSION}" / results.name


def save_summary(results: Path, table: pa.Table, part: str) -> tuple[Path | pa.Table, pa.Table]:
    """Cache the summary of one part's scan results (`table`, cached at `results`), read back by nothing: its
    file, or the summary where it cannot be written, and the summary (`summarise` and `write_summary`)."""
    summary = summarise(table, part)
    return write_summary(summary_path(results), summary), summary


def write_summary(path: Path, summary: pa.Table) -> Path | pa.Table:
    """Write one part's summary at `path` (`summary_path`); the summary itself where it cannot be written.
    Statistics only for the columns readers filter on (`kind`, the audit's step and split)."""
    return write_cached(path, summary, compression="lz4", write_statistics=["kind", "step", "split"])


def fresh(results: list[Path], scanned: list[Path]) -> segments.Fresh | None:
    """The level-1 segments of the summaries of `scanned` (result files about to be written) to be written from
    memory (`segments.Fresh`; `results`: every part's result file, in the run's order), or None where too few
    parts are scanned to fill one: the summaries of a cold audit are then not written as one file per part and
    again into a segment (~1 ms a file, for ~50 rows of 17 columns)."""
    if len(scanned) < segments.FANOUT:
        return None
    return segments.Fresh({"summary": ([summary_path(r) for r in results], "lz4")},
                          {summary_path(r) for r in scanned})


def summarise(results: pa.Table | None, part: str) -> pa.Table:
    """The summary rows (SCHEMA) of one part's scan results (None: no rows), with Arrow: a DuckDB connection per
    part would cost more than the work (~25 ms each). The scan summarises each part from the table it has just
    written, so that a cold audit does not read every part's results back (`register_summaries` then finds them
    done, as a file or as rows of a segment written from memory, `fresh`)."""
    from .scan import EMPTY_RESULTS, RESULT_SCHEMA

    t = (results if results is not None else EMPTY_RESULTS).select(list(RESULT_SCHEMA.names))
    exposed = pc.fill_null(t.column("exposed"), False)
    t = t.append_column("_exposed", pc.cast(exposed, pa.int64()))
    t = t.append_column("_first", pc.if_else(exposed, t.column("step"), pa.scalar(None, pa.int64())))
    t = t.append_column("_scannable", pc.cast(pc.fill_null(pc.greater(t.column("reasoning_only"), 0), False),
                                              pa.int64()))
    g = t.group_by(_KEYS, use_threads=False).aggregate([
        ("_exposed", "count", pc.CountOptions(mode="all")), ("_exposed", "sum"), ("_first", "min"),
        ("_scannable", "sum")])
    counts = {k: g.column(k) for k in _KEYS}
    counts.update(kind=pa.array([0] * len(g), pa.int8()), n=g.column("_exposed_count"),
                  exposed=g.column("_exposed_sum"), first=g.column("_first_min"), scannable=g.column("_scannable_sum"))
    rows = t.filter(pc.and_(exposed, pc.invert(pc.fill_null(t.column("chance"), False))))
    shown = {c: rows.column(c) for c in [*_KEYS, "rollout_id", "containment", "matched", "reasoning_only",
                                         "longest_span"]}
    shown.update(kind=pa.array([1] * len(rows), pa.int8()), part=pa.array([part] * len(rows), pa.string()))
    return pa.concat_tables([_table(counts), _table(shown)])


def _table(columns: dict[str, Any]) -> pa.Table:
    n = len(next(iter(columns.values())))
    return pa.table({f.name: columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type)
                     for f in SCHEMA}, schema=SCHEMA)
