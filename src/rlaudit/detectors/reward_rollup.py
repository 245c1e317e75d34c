"""Run-level rollups of reward_health's per-part statistics, so that a warm audit of the whole run costs O(new
parts), not O(steps) or O(cells).

The per-part tables (`reward_stats`) hold one row per step, signal, condition and task: at 10M rollouts (2,000
steps, a fresh prompt per group) that is 6.2M rows, and merging them on every audit (registering them and
grouping the cells for the `nan` check) cost ~3 CPU s of a 7 s warm audit. Everything the checks need from the
whole run is small once rolled up, except the cells of the `nan` check:

- per step and signal: rows, NaN, inf, finite, min and max (the `non_finite`, `constant`/`stuck` and
  `out_of_range` checks, and which steps hold their evidence);
- the distinct values and the sketch's buckets per signal (the out-of-range bounds);
- for `nan`, per signal the rows and NaN rows of the applicable cells (NaN in less than half of their rows) and,
  per step, how many applicable cells with NaN have their first NaN there (so the first step survives a cell
  changing class);
- every cell's totals (`<digest>.cells.parquet`, sorted by task) and the sorted distinct tasks
  (`<digest>.tasks.npy`).

A rollup covers the parts of the run's combined file (`partstats.PartStats.combined_stems`; named by a digest of
them), is built once when that file is written, and is never changed. An audit adds the few loose parts since:
per-step rows, values and buckets are summed; a loose cell whose task the rollup has (a binary search in the
memory-mapped task list) is read from the rollup's cells, and its old and new class correct the per-signal sums.
A run whose prompts never repeat reads no cell of the rollup at all.

The rollups serve audits of one split of the whole run (no `max_step`; the default audit is of split 'train'):
they are kept per split, and the classes of the cells depend on the steps and splits in scope, so an audit
limited by `max_step`, or of every split at once, merges the per-part rows as before
(`reward_stats.register_reward_stats`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..partstats import PartStats
from ..store import sql_string
from .reward_stats import APPLIES, APPLIES_MIN, sketch_sql

#: seconds a superseded rollup is kept for audits that may still read it (as `segments.GRACE`)
GRACE = 600.0

# the small tables of a rollup, one file: kind 0 per (step, signal), 1 values, 2 sketch buckets, 3 the applicable
# cells' rows per signal, 4 first-NaN histogram per (step, signal)
_SMALL_SQL = f"""
SELECT 0::TINYINT AS kind, split, step, signal, sum(n)::BIGINT AS n, sum(nan)::BIGINT AS nan, sum(inf)::BIGINT AS inf,
       sum(finite)::BIGINT AS finite, min(lo) AS lo, max(hi) AS hi,
       NULL::DOUBLE AS value, NULL::TINYINT AS sgn, NULL::INTEGER AS b
FROM src WHERE kind = 0 GROUP BY split, step, signal
UNION ALL
SELECT 1, split, NULL, signal, sum(n), NULL, NULL, NULL, NULL, NULL, value, NULL, NULL FROM src WHERE kind = 1
GROUP BY split, signal, value
UNION ALL
SELECT 2, split, NULL, signal, sum(n), NULL, NULL, NULL, NULL, NULL, NULL, sgn, b FROM src WHERE kind = 2
GROUP BY split, signal, sgn, b
UNION ALL
SELECT 3, split, NULL, signal, sum(n), sum(nan), NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM cells
WHERE {APPLIES} GROUP BY split, signal
UNION ALL
SELECT 4, split, first_nan, signal, count(*), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM cells
WHERE {APPLIES} AND nan > 0 GROUP BY split, signal, first_nan
"""

SMALL_SCHEMA = pa.schema([("kind", pa.int8()), ("split", pa.string()), ("step", pa.int64()), ("signal", pa.string()), ("n", pa.int64()),
                          ("nan", pa.int64()), ("inf", pa.int64()), ("finite", pa.int64()), ("lo", pa.float64()),
                          ("hi", pa.float64()), ("value", pa.float64()), ("sgn", pa.int8()), ("b", pa.int32())])

_CELLS_SQL = """SELECT split, signal, condition, task, sum(n)::BIGINT AS n, sum(nan)::BIGINT AS nan,
                       min(step) FILTER (WHERE nan > 0) AS first_nan
                FROM src WHERE kind = 0 GROUP BY split, signal, condition, task"""


def register_rollup(con: duckdb.DuckDBPyConnection, stats: PartStats, root: Path, split: str) -> None:
    """Create the temp tables `rh_steps`, `rh_values`, `rh_sketch` and `rh_nan` (see `reward_stats`) of the
    `split` rows of the whole run, from the rollup of the combined parts (built now if missing) and the loose
    parts of `stats`."""
    small, cells_path, tasks = _rollup(stats, root)
    con.register("_rh_small_all", small)
    con.execute(f"CREATE OR REPLACE TEMP VIEW _rh_small AS SELECT * FROM _rh_small_all WHERE split = {sql_string(split)}")
    loose = _loose_sql(con, stats)
    con.execute(f"CREATE OR REPLACE TEMP VIEW _rh_loose AS SELECT * FROM ({loose}) WHERE split = {sql_string(split)}")
    con.execute("""CREATE OR REPLACE TEMP TABLE rh_steps AS
        SELECT step, signal, sum(n) AS n, sum(nan) AS nan, sum(inf) AS inf, sum(finite) AS finite, min(lo) AS lo,
               max(hi) AS hi
        FROM (SELECT step, signal, n, nan, inf, finite, lo, hi FROM _rh_small WHERE kind = 0
              UNION ALL SELECT step, signal, n, nan, inf, finite, lo, hi FROM _rh_loose WHERE kind = 0)
        GROUP BY step, signal""")
    con.execute("""CREATE OR REPLACE TEMP TABLE rh_values AS
        SELECT signal, value, sum(n) AS n
        FROM (SELECT signal, value, n FROM _rh_small WHERE kind = 1
              UNION ALL SELECT signal, value, n FROM _rh_loose WHERE kind = 1) GROUP BY signal, value""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rh_sketch AS {sketch_sql(
        "(SELECT signal, sgn, b, n FROM _rh_small WHERE kind = 2 UNION ALL "
        "SELECT signal, sgn, b, n FROM _rh_loose WHERE kind = 2)")}""")
    # the loose parts' cells, with the rollup's totals of those it already has (same task: then same key or not)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _rh_lc AS {_CELLS_SQL.replace('FROM src', 'FROM _rh_loose')}")
    new_tasks = con.execute("SELECT DISTINCT task FROM _rh_lc").fetchnumpy()["task"]
    con.register("_rh_old_all", _cells_of(cells_path, tasks, np.asarray(new_tasks, dtype=np.uint64)))
    con.execute(f"CREATE OR REPLACE TEMP VIEW _rh_old AS SELECT * FROM _rh_old_all WHERE split = {sql_string(split)}")
    con.execute("""CREATE OR REPLACE TEMP TABLE _rh_changed AS
        SELECT l.signal, l.condition, l.task, o.n AS old_n, o.nan AS old_nan, o.first_nan AS old_first,
               l.n + coalesce(o.n, 0) AS n, l.nan + coalesce(o.nan, 0) AS nan,
               least(l.first_nan, o.first_nan) AS first_nan
        FROM _rh_lc l LEFT JOIN _rh_old o USING (split, signal, condition, task)""")
    old_applies = f"old_n IS NOT NULL AND old_n - old_nan >= {APPLIES_MIN} * old_n"  # APPLIES, of the old totals
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rh_nan AS
        WITH totals AS (
            SELECT signal, sum(n) AS n, sum(nan) AS nan FROM (
                SELECT signal, n, nan FROM _rh_small WHERE kind = 3
                UNION ALL SELECT signal, -old_n, -old_nan FROM _rh_changed WHERE {old_applies}
                UNION ALL SELECT signal, n, nan FROM _rh_changed WHERE {APPLIES}) GROUP BY signal),
        firsts AS (
            SELECT signal, min(step) AS first_step FROM (
                SELECT signal, step, sum(n) AS cells FROM (
                    SELECT signal, step, n FROM _rh_small WHERE kind = 4
                    UNION ALL SELECT signal, old_first, -1 FROM _rh_changed WHERE {old_applies} AND old_nan > 0
                    UNION ALL SELECT signal, first_nan, 1 FROM _rh_changed WHERE {APPLIES} AND nan > 0)
                GROUP BY signal, step) WHERE cells > 0 GROUP BY signal)
        SELECT signal, nan, n, first_step FROM totals LEFT JOIN firsts USING (signal) WHERE nan > 0""")


def _loose_sql(con: duckdb.DuckDBPyConnection, stats: PartStats) -> str:
    """SELECT of the rows of the parts that the combined file does not hold."""
    selects = []
    if stats.files:
        paths = ", ".join(sql_string(str(p)) for p in stats.files)
        selects.append(f"SELECT * FROM read_parquet([{paths}], union_by_name = true)")
    if stats.tables:
        con.register("_rh_loose_mem", pa.concat_tables(stats.tables, promote_options="default"))
        selects.append("SELECT * FROM _rh_loose_mem")
    if not selects:  # no loose part: the rollup's columns, no rows (kind 0 of an empty rollup has them all)
        return ("SELECT NULL::TINYINT AS kind, NULL::VARCHAR AS split, NULL::BIGINT AS step, NULL::VARCHAR AS signal, NULL::VARCHAR AS "
                "condition, NULL::UBIGINT AS task, NULL::BIGINT AS n, NULL::BIGINT AS nan, NULL::BIGINT AS inf, "
                "NULL::BIGINT AS finite, NULL::DOUBLE AS lo, NULL::DOUBLE AS hi, NULL::DOUBLE AS value, "
                "NULL::TINYINT AS sgn, NULL::INTEGER AS b WHERE FALSE")
    return " UNION ALL BY NAME ".join(selects)


def _rollup(stats: PartStats, root: Path) -> tuple[pa.Table, Path | pa.Table | None, np.ndarray]:
    """(small tables, cells (file or table), sorted distinct tasks) of the combined parts of `stats`: read from
    `rollup/` beside the combined file, or built and written there (kept in memory where the store cannot be
    written)."""
    if stats.combined is None or not stats.combined_stems:
        return _empty_small(), None, np.zeros(0, np.uint64)
    digest = hashlib.sha1(json.dumps(stats.combined_stems).encode()).hexdigest()[:16]
    d = stats.combined.parent / "rollup"
    small_path, cells_path, tasks_path = d / f"{digest}.parquet", d / f"{digest}.cells.parquet", d / f"{digest}.tasks.npy"
    with contextlib.suppress(OSError, pa.ArrowInvalid, ValueError):
        if small_path.is_file():  # written last: the other two are complete
            return pq.read_table(small_path), cells_path, np.load(tasks_path, mmap_mode="r")
    small, cells = _build(stats, root)
    tasks = np.unique(cells.column("task").to_numpy()).astype(np.uint64)
    try:
        d.mkdir(parents=True, exist_ok=True)
        _atomic(cells_path, lambda p: pq.write_table(cells, p, compression="zstd", row_group_size=16384))
        _atomic(tasks_path, lambda p: np.save(p, tasks, allow_pickle=False), suffix=".npy")
        _atomic(small_path, lambda p: pq.write_table(small, p))
    except OSError:  # a read-only or full store: this audit's rollup stays in memory
        return small, cells, tasks
    _prune(d, digest)
    return small, cells_path, tasks


def _build(stats: PartStats, root: Path) -> tuple[pa.Table, pa.Table]:
    """Roll up the combined file's rows of `stats.combined_stems`: (small tables, cells sorted by task)."""
    from ..store import bound_memory

    where = ", ".join(sql_string(s) for s in stats.combined_stems)
    with duckdb.connect() as con:
        con.execute("SET enable_progress_bar = false")
        bound_memory(con, root)
        con.execute(f"CREATE TEMP VIEW src AS SELECT * EXCLUDE (_stem) FROM read_parquet("
                    f"{sql_string(str(stats.combined))}) WHERE _stem IN ({where})")
        con.execute(f"CREATE TEMP TABLE cells AS {_CELLS_SQL}")
        small = con.sql(_SMALL_SQL).to_arrow_table().cast(SMALL_SCHEMA)
        cells = con.sql("SELECT * FROM cells ORDER BY task, split, signal, condition").to_arrow_table()
    return small, cells


def _empty_small() -> pa.Table:
    return SMALL_SCHEMA.empty_table()


def _cells_of(cells: Path | pa.Table | None, tasks: np.ndarray, wanted: np.ndarray) -> pa.Table:
    """The rollup's cells whose task is among `wanted` (found by binary search in the sorted `tasks` first, so
    that a run whose loose parts bring only new tasks reads no cell)."""
    schema = pa.schema([("split", pa.string()), ("signal", pa.string()), ("condition", pa.string()), ("task", pa.uint64()),
                        ("n", pa.int64()), ("nan", pa.int64()), ("first_nan", pa.int64())])
    if cells is None or not len(tasks) or not len(wanted):
        return schema.empty_table()
    i = np.searchsorted(tasks, wanted)
    i[i == len(tasks)] = 0
    hit = np.unique(wanted[tasks[i] == wanted])
    if not len(hit):
        return schema.empty_table()
    filt = pc.is_in(pc.field("task"), pa.array(hit, pa.uint64()))
    if isinstance(cells, pa.Table):
        return cells.filter(filt).cast(schema)
    return pq.read_table(cells, filters=filt).cast(schema)  # row groups of other tasks are skipped by their range


def _atomic(path: Path, write, suffix: str = "") -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _prune(d: Path, keep: str) -> None:
    """Remove rollups other than `keep` last changed more than GRACE seconds ago (superseded ones: the combined
    file they cover was replaced; an audit that started before may still read them meanwhile)."""
    now = time.time()
    for f in d.iterdir():
        if not f.name.startswith(".") and f.name.split(".")[0] != keep:
            with contextlib.suppress(OSError):
                if now - f.stat().st_mtime > GRACE:
                    f.unlink()
