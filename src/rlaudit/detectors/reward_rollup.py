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
- the cells' totals, in chunks: each holds the cells of the parts one rollup added (`<digest>-c.cells.parquet`,
  sorted by task) with their sorted distinct tasks (`<digest>-c.tasks.npy`); a cell's totals are its rows'
  sums over the chunks. Only the cells of signals with a NaN row so far are summed per cell as they are added:
  a cell without NaN is applicable whatever its rows, so a signal that never had NaN adds its rows' n to the
  applicable totals directly and keeps its rows in the chunk as they come, a row per step (summed if it later
  has NaN). At 10M rollouts (6.25M cells, one signal of five with NaN) the first rollup took 4.4-4.5 CPU s
  grouping every cell, 3.4-3.5 so (`/work/scratch/s46/rollup10a.py`, docs/performance.md, session 46).

A rollup covers the parts of the run's combined file (`partstats.PartStats.combined_stems`; named by a digest of
them, which its footer lists with its chunks) and is never changed. It is built when that file is rewritten
(every `partstats.COMPACT_AT` new parts), from the newest earlier rollup of a subset of those parts plus the
rows of the others, exactly as an audit adds the few loose parts since: per-step rows, values and buckets are
summed; a new cell whose task a chunk has (a binary search in its memory-mapped task list) is read from the
chunks, and its old and new class correct the per-signal sums. So a rollup costs O(parts it adds), chunks are
never rewritten, and a run whose prompts never repeat reads no cell of a chunk at all. (The first rollup of a
long run, e.g. after an upgrade, adds every part once: ~10 CPU s at 10M rollouts.)

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
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..derived.partstats import PartStats
from ..store import sql_string, sql_when
from .reward_stats import APPLIES, APPLIES_MIN, DISCRETE_MAX, sketch_sql

#: seconds a superseded rollup is kept for audits that may still read it (as `segments.GRACE`)
GRACE = 600.0
#: DuckDB memory of a rollup's build (its grouping and sort of the new cells spill beyond it). The first rollup of
#: the 10M-rollout benchmark (6.2M cell rows) peaked at 1,414 MB RSS with the usual 1 GB and was then the cold
#: audit's peak (1,717 MB); 906-913 MB with 512 MB, at the same CPU within the noise (12.6-14.0 against 11.3-13.9
#: CPU s); 660 MB with 256 MB but 14.1-14.5 CPU s (`benchmarks/detectors.py STORE bench reward_health
#: --keep-derived` with the rollup removed, 2026-12-04)
ROLLUP_MEMORY = 512 << 20

# the small tables of a rollup, one file (`_merge`): kind 0 per (split, step, signal), 1 values, 2 sketch buckets,
# 3 the applicable cells' rows per (split, signal), 4 first-NaN histogram per (split, step, signal)
SMALL_SCHEMA = pa.schema([("kind", pa.int8()), ("split", pa.string()), ("step", pa.int64()), ("signal", pa.string()),
                          ("n", pa.int64()), ("nan", pa.int64()), ("inf", pa.int64()), ("finite", pa.int64()),
                          ("lo", pa.float64()), ("hi", pa.float64()), ("value", pa.float64()), ("sgn", pa.int8()),
                          ("b", pa.int32())])

CELLS_SCHEMA = pa.schema([("split", pa.string()), ("signal", pa.string()), ("condition", pa.string()),
                          ("task", pa.uint64()), ("n", pa.int64()), ("nan", pa.int64()), ("first_nan", pa.int64())])

#: the cells' string keys, grouped and sorted as ENUMs (`_merge`)
_KEYS = ("split", "signal", "condition")
_ENUM_KEYS = ", ".join(f"{k}::_rh_{k} AS {k}" for k in _KEYS)
#: the new rows' cells, in two tables: those of the signals that may have NaN (`_rh_nan_signals`) summed per cell
#: (`_rh_lc_nan`); those of the others as they are, a row per step (`_rh_lc_clean`: no cell of a signal without
#: NaN can change class, so only their sums are needed, and a look-up that finds several rows of a cell sums
#: them: `_cells_of`'s callers). Grouping every cell was 1.97 of the 4.4 CPU s of the first rollup at 10M
#: rollouts (6.25M cells, 1 signal of 5 with NaN).
_NAN_CELLS_SQL = f"""SELECT {_ENUM_KEYS}, task, sum(n)::BIGINT AS n, sum(nan)::BIGINT AS nan,
                            min({sql_when('nan > 0', 'step')}) AS first_nan
                     FROM _rh_rows WHERE kind = 0 AND signal IN (SELECT signal FROM _rh_nan_signals) GROUP BY ALL"""
_CLEAN_CELLS_SQL = f"""SELECT {_ENUM_KEYS}, task, n::BIGINT AS n, 0::BIGINT AS nan, NULL::BIGINT AS first_nan
                       FROM _rh_rows WHERE kind = 0 AND signal NOT IN (SELECT signal FROM _rh_nan_signals)"""


def register_rollup(con: duckdb.DuckDBPyConnection, stats: PartStats, root: Path, split: str) -> None:
    """Create the temp tables `rh_steps`, `rh_values`, `rh_sketch` and `rh_nan` (see `reward_stats`) of the
    `split` rows of the whole run, from the rollup of the combined parts (built now if missing) and the loose
    parts of `stats`."""
    small, chunks = rollup(stats, root)
    _merge(con, small, chunks, _loose_sql(con, stats))
    only = f"split = {sql_string(split)}"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rh_steps AS SELECT step, signal, n, nan, inf, finite, lo, hi
                    FROM _rh_merged WHERE kind = 0 AND {only}""")
    con.execute(f"CREATE OR REPLACE TEMP TABLE rh_values AS SELECT signal, value, n FROM _rh_merged "
                f"WHERE kind = 1 AND {only}")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rh_sketch AS {sketch_sql(
        f"(SELECT signal, sgn, b, n FROM _rh_merged WHERE kind = 2 AND {only})")}""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rh_nan AS
        SELECT t.signal, t.nan, t.n, f.first_step FROM (SELECT * FROM _rh_merged WHERE kind = 3 AND {only}) t
        LEFT JOIN (SELECT signal, min(step) AS first_step FROM _rh_merged WHERE kind = 4 AND {only}
                   GROUP BY signal) f USING (signal)
        WHERE t.nan > 0""")


def _merge(con: duckdb.DuckDBPyConnection, small: pa.Table, chunks: list[tuple[Any, np.ndarray]],
           rows: str) -> np.ndarray:
    """Add the per-part rows `rows` (SQL) to a rollup (`small`, `chunks`): the temp table `_rh_merged` (the
    small tables, SMALL_SCHEMA, of every split) and `_rh_lc` (the cells of `rows`, to be kept as a chunk).
    Returns the distinct tasks of `_rh_lc`, sorted."""
    con.register("_rh_small", small)
    con.execute(f"CREATE OR REPLACE TEMP VIEW _rh_rows AS {rows}")
    # the new rows' cells, with the rollup's totals of those it already has (same task: then same key or not).
    # Their string keys (a few distinct values) as ENUMs: hashed and sorted (the chunk, `_build`) as small
    # integers, written as the same strings. The first rollup at 10M rollouts (6.2M cells): grouping 3.9 -> 2.4
    # CPU s, the chunk's sort and write 5.2 -> 2.0 (docs/performance.md, session 36)
    con.execute("CREATE OR REPLACE TEMP TABLE _rh_keys AS SELECT DISTINCT "
                f"{', '.join(_KEYS)} FROM _rh_rows WHERE kind = 0")
    for k in _KEYS:
        con.execute(f"CREATE OR REPLACE TEMP TYPE _rh_{k} AS ENUM "
                    f"(SELECT DISTINCT {k} FROM _rh_keys WHERE {k} IS NOT NULL)")
    # the signals with a NaN row in the rollup or the new rows: only their cells can be applicable or not (a cell
    # without NaN always is); the others' new rows add their n to the applicable totals, cell by cell or not
    nan_signals = "SELECT signal FROM _rh_small WHERE kind = 0 AND nan > 0 AND signal IS NOT NULL UNION " \
                  "SELECT signal FROM _rh_rows WHERE kind = 0 AND nan > 0 AND signal IS NOT NULL"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _rh_nan_signals AS {nan_signals}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _rh_lc_nan AS {_NAN_CELLS_SQL}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _rh_lc_clean AS {_CLEAN_CELLS_SQL}")
    con.execute("CREATE OR REPLACE TEMP VIEW _rh_lc AS SELECT * FROM _rh_lc_nan UNION ALL SELECT * FROM _rh_lc_clean")
    # sorted here, not by DuckDB: the chunk's task list (`_build`) is these, and a second DISTINCT ... ORDER BY over
    # the cells cost ~0.55 CPU s of the first rollup at 10M rollouts (6.2M cells, 1.25M tasks; numpy's sort ~0.1)
    new_tasks = np.sort(np.asarray(con.execute("SELECT DISTINCT task FROM _rh_lc").fetchnumpy()["task"],
                                   dtype=np.uint64))
    # the cells that may change class: the NaN signals' (an old cell of such a signal kept while it had none is
    # in its chunk as rows per step, which `old` sums)
    nan_tasks = np.sort(np.asarray(con.execute("SELECT DISTINCT task FROM _rh_lc_nan").fetchnumpy()["task"],
                                   dtype=np.uint64))
    old_parts = _cells_of(chunks, nan_tasks)
    changed = "_rh_changed" if old_parts.num_rows else "_rh_fresh"  # (a table, a view: two names)
    if old_parts.num_rows:
        con.register("_rh_old_parts", old_parts)
        con.execute("""CREATE OR REPLACE TEMP TABLE _rh_changed AS
            WITH old AS (SELECT split, signal, condition, task, sum(n) AS n, sum(nan) AS nan,
                                min(first_nan) AS first_nan
                         FROM _rh_old_parts GROUP BY ALL)
            SELECT l.split, l.signal, l.condition, l.task, o.n AS old_n, o.nan AS old_nan, o.first_nan AS old_first,
                   l.n + coalesce(o.n, 0) AS n, l.nan + coalesce(o.nan, 0) AS nan,
                   least(l.first_nan, o.first_nan) AS first_nan
            FROM _rh_lc_nan l LEFT JOIN old o ON o.split IS NOT DISTINCT FROM l.split AND o.signal = l.signal
                 AND o.condition = l.condition AND o.task = l.task""")
    else:  # no new cell's task is in the rollup (a first rollup; prompts that do not repeat): nothing to join
        con.execute("""CREATE OR REPLACE TEMP VIEW _rh_fresh AS
            SELECT split, signal, condition, task, NULL::BIGINT AS old_n, NULL::BIGINT AS old_nan,
                   NULL::BIGINT AS old_first, n, nan, first_nan FROM _rh_lc_nan""")
    old_applies = f"old_n IS NOT NULL AND old_n - old_nan >= {APPLIES_MIN} * old_n"  # APPLIES, of the old totals
    cols = "kind, split, step, signal, n, nan, inf, finite, lo, hi, value, sgn, b"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _rh_merged AS
        WITH u AS (SELECT {cols} FROM _rh_small UNION ALL SELECT {cols} FROM _rh_rows WHERE kind IN (0, 1, 2)),
        -- the distinct values of a (split, signal) that has more than DISCRETE_MAX + 1 of them, or a busy step
        -- (value NULL), are one NULL row: only a discrete signal's values are read (`reward_health._bands`), and
        -- a run of small steps each with few values (15,625 steps of 64 rollouts) had as many as its rollouts,
        -- regrouped by every audit. New parts only add values, so a collapsed signal stays collapsed.
        v AS (SELECT split, signal, value, sum(n) AS n,
                     count(*) OVER (PARTITION BY split, signal) > {DISCRETE_MAX + 1}
                     OR bool_or(value IS NULL) OVER (PARTITION BY split, signal) AS busy
              FROM u WHERE kind = 1 GROUP BY split, signal, value)
        SELECT 0::TINYINT AS kind, split, step, signal, sum(n)::BIGINT AS n, sum(nan)::BIGINT AS nan,
               sum(inf)::BIGINT AS inf, sum(finite)::BIGINT AS finite, min(lo) AS lo, max(hi) AS hi,
               NULL::DOUBLE AS value, NULL::TINYINT AS sgn, NULL::INTEGER AS b
        FROM u WHERE kind = 0 GROUP BY split, step, signal
        UNION ALL
        SELECT 1, split, NULL, signal, n, NULL, NULL, NULL, NULL, NULL, value, NULL, NULL FROM v WHERE NOT busy
        UNION ALL
        SELECT 1, split, NULL, signal, sum(n), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM v WHERE busy
        GROUP BY split, signal
        UNION ALL
        SELECT 2, split, NULL, signal, sum(n), NULL, NULL, NULL, NULL, NULL, NULL, sgn, b FROM u WHERE kind = 2
        GROUP BY split, signal, sgn, b
        UNION ALL
        SELECT 3, split, NULL, signal, sum(n), sum(nan), NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM (
            SELECT split, signal, n, nan FROM _rh_small WHERE kind = 3
            UNION ALL SELECT split, signal, -old_n, -old_nan FROM {changed} WHERE {old_applies}
            UNION ALL SELECT split, signal, n, nan FROM {changed} WHERE {APPLIES}
            UNION ALL SELECT split, signal, n, nan FROM _rh_lc_clean) GROUP BY split, signal
        UNION ALL
        SELECT 4, split, step, signal, sum(n), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM (
            SELECT split, signal, step, n FROM _rh_small WHERE kind = 4
            UNION ALL SELECT split, signal, old_first, -1 FROM {changed} WHERE {old_applies} AND old_nan > 0
            UNION ALL SELECT split, signal, first_nan, 1 FROM {changed} WHERE {APPLIES} AND nan > 0)
        GROUP BY split, signal, step HAVING sum(n) > 0""")
    return new_tasks


def _loose_sql(con: duckdb.DuckDBPyConnection, stats: PartStats) -> str:
    """SELECT of the rows of the parts that the combined file does not hold."""
    selects = []
    if stats.files:
        paths = ", ".join(sql_string(str(p)) for p in stats.files)
        selects.append(f"SELECT * FROM read_parquet([{paths}], union_by_name = true)")
    if stats.tables:
        con.register("_rh_loose_mem", pa.concat_tables(stats.tables, promote_options="default"))
        selects.append("SELECT * FROM _rh_loose_mem")
    if not selects:  # no loose part: the columns of the per-part rows, no row
        return _EMPTY_ROWS
    return " UNION ALL BY NAME ".join(selects)


_EMPTY_ROWS = ("SELECT NULL::TINYINT AS kind, NULL::VARCHAR AS split, NULL::BIGINT AS step, NULL::VARCHAR AS signal, "
               "NULL::VARCHAR AS condition, NULL::UBIGINT AS task, NULL::BIGINT AS n, NULL::BIGINT AS nan, "
               "NULL::BIGINT AS inf, NULL::BIGINT AS finite, NULL::DOUBLE AS lo, NULL::DOUBLE AS hi, "
               "NULL::DOUBLE AS value, NULL::TINYINT AS sgn, NULL::INTEGER AS b WHERE FALSE")


def rollup(stats: PartStats, root: Path) -> tuple[pa.Table, list[tuple[Any, np.ndarray]]]:
    """(small tables, chunks) of the rollup of the combined parts of `stats`: read from `rollup/` beside the
    combined file, or built from the newest earlier rollup of a subset of them and the rows of the others, and
    written there (kept in memory where the store cannot be written)."""
    if stats.combined is None or not stats.combined_stems:
        return SMALL_SCHEMA.empty_table(), []
    d = stats.combined.parent / "rollup"
    stems = stats.combined_stems
    got = _read(d / f"{_digest(stems)}.parquet", d)
    if got is not None:
        return got[1], got[2]
    base: tuple[list[str], pa.Table, list[tuple[Any, np.ndarray]]] = ([], SMALL_SCHEMA.empty_table(), [])
    held = set(stems)
    for f in sorted(d.glob("*.parquet"), key=lambda f: f.stat().st_mtime, reverse=True) if d.is_dir() else []:
        if f.name.count(".") == 1 and (old := _read(f, d)) is not None and set(old[0]) <= held:
            if len(old[0]) > len(base[0]):
                base = old
    return _build(stats, root, d, base)


def _digest(stems: list[str]) -> str:
    return hashlib.sha1(json.dumps(sorted(stems)).encode()).hexdigest()[:16]


def _read(path: Path, d: Path) -> tuple[list[str], pa.Table, list[tuple[Any, np.ndarray]]] | None:
    """(stems, small tables, chunks) of the rollup `path`, or None when it is missing or unreadable."""
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[_META])
        chunks = [(d / f"{c}.cells.parquet", np.load(d / f"{c}.tasks.npy", mmap_mode="r")) for c in meta["chunks"]]
        if not all(cells.is_file() for cells, _ in chunks):
            return None
        return meta["stems"], table.replace_schema_metadata(None), chunks
    except (OSError, KeyError, ValueError, pa.ArrowInvalid):
        return None


_META = b"rlaudit_rollup"


def _build(stats: PartStats, root: Path, d: Path, base: tuple[list[str], pa.Table, list[tuple[Any, np.ndarray]]]
           ) -> tuple[pa.Table, list[tuple[Any, np.ndarray]]]:
    """The rollup of `stats.combined_stems`: the rollup `base` of some of them plus the combined file's rows of
    the others, whose cells become a new chunk (sorted by task, so that a look-up reads only the row groups of
    its tasks). Written into `d`: the chunk first, the small tables (naming their stems and chunks) last."""
    from .. import duck

    stems = stats.combined_stems
    new = [s for s in stems if s not in set(base[0])]
    chunk, digest = _digest(new) + "-c", _digest(stems)
    names = [c.name.split(".")[0] for c, _ in base[2] if isinstance(c, Path)] + [chunk]
    sorted_cells = "SELECT * FROM _rh_lc ORDER BY task"
    with duck.connect(root, at_most=ROLLUP_MEMORY) as con:
        rows = (f"SELECT * EXCLUDE (_stem) FROM read_parquet({sql_string(str(stats.combined))}) "
                f"WHERE _stem IN ({', '.join(sql_string(s) for s in new)})") if new else _EMPTY_ROWS
        tasks = _merge(con, base[1], base[2], rows)
        small = con.sql("SELECT * FROM _rh_merged").to_arrow_table().cast(SMALL_SCHEMA)
        try:  # the chunk straight from DuckDB (the first rollup of a long run holds millions of cells)
            if len(names) != len(base[2]) + 1:
                raise OSError("the base rollup is in memory")
            d.mkdir(parents=True, exist_ok=True)
            _atomic(d / f"{chunk}.cells.parquet", lambda p: con.execute(
                f"COPY ({sorted_cells}) TO {sql_string(str(p))} (FORMAT parquet, COMPRESSION lz4_raw, "
                "ROW_GROUP_SIZE 16384)"))
            _atomic(d / f"{chunk}.tasks.npy", lambda p: np.save(p, tasks, allow_pickle=False), suffix=".npy")
            meta = json.dumps({"stems": stems, "chunks": names}).encode()
            _atomic(d / f"{digest}.parquet", lambda p: pq.write_table(small.replace_schema_metadata({_META: meta}), p))
        except (OSError, duckdb.Error):  # a read-only or full store: this audit's rollup stays in memory
            return small, base[2] + [(con.sql(sorted_cells).to_arrow_table().cast(CELLS_SCHEMA), tasks)]
    _prune(d, digest, names)
    return small, base[2] + [(d / f"{chunk}.cells.parquet", tasks)]


def _cells_of(chunks: list[tuple[Any, np.ndarray]], wanted: np.ndarray) -> pa.Table:
    """The cells of `chunks` (each a file or table, with its sorted distinct tasks) whose task is among `wanted`,
    found by binary search first: a run whose new parts bring only new tasks reads no cell."""
    out = [CELLS_SCHEMA.empty_table()]
    for cells, tasks in chunks:
        if not len(tasks) or not len(wanted):
            continue
        i = np.searchsorted(tasks, wanted)
        i[i == len(tasks)] = 0
        hit = np.unique(wanted[tasks[i] == wanted])
        if not len(hit):
            continue
        filt = pc.is_in(pc.field("task"), pa.array(hit, pa.uint64()))
        table = cells.filter(filt) if isinstance(cells, pa.Table) else pq.read_table(cells, filters=filt)
        out.append(table.cast(CELLS_SCHEMA))  # row groups of other tasks are skipped by their range
    return pa.concat_tables(out)


def _atomic(path: Path, write, suffix: str = "") -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _prune(d: Path, keep: str, chunks: list[str]) -> None:
    """Remove rollups other than `keep`, and chunks it does not use, last changed more than GRACE seconds ago
    (superseded: an audit that started before may still read them meanwhile)."""
    now = time.time()
    used = {keep, *chunks}
    for f in d.iterdir():
        if not f.name.startswith(".") and f.name.split(".")[0] not in used:
            with contextlib.suppress(OSError):
                if now - f.stat().st_mtime > GRACE:
                    f.unlink()
