"""The CoT screen's coarse answer keys, computed once per stored part and cached beside the run.

The screen (`rlaudit.cot.screen`) pairs rollouts of a prompt group whose answers are identical. Finding the
candidates means normalising and hashing every answer of the run (reading every completion), which cost ~2.5 s
per audit at 1M rollouts, warm or cold. The hash of a row's answer never changes, so it is stored per part
(`derived/cot_screen/<key>/<part>.parquet`: rollout_id, step, split, group_id, ck of the rows the screen can
pair); a run that grows by a step hashes only the new part, and the screen reads the answers of candidate rows
alone. The key names DuckDB's version, whose `hash` computes `ck`: keys of two versions are never mixed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..layout import view_columns
from ..store import Store, bound_memory
from .screen import ANSWER_HASH, SCREENABLE

_VERSION = 1


def screen_keys(store: Store, run: str, where: str) -> str | None:
    """SQL of the cached coarse keys of the run's rows within `where` (a condition on step and split), or None
    where they cannot be cached (a store that keeps derived data in memory, or cannot be written): the screen
    then computes them itself."""
    if not getattr(store, "persist_derived", True):
        return None
    base = store.run_dir(run) / "derived" / "cot_screen"
    cache = base / f"v{_VERSION}-duckdb{duckdb.__version__}"
    parts = store.parts(run)
    layouts = store.part_layouts(run)
    paths = [cache / f"{part.stem}.parquet" for part in parts]
    todo = [part for part, path in zip(parts, paths) if not path.is_file()]
    if todo:
        con = duckdb.connect()
        try:
            bound_memory(con)
            con.execute("SET enable_progress_bar = false")
            for layout in sorted({layouts.get(p.name, 1) for p in todo}):
                if not _write_parts(con, [p for p in todo if layouts.get(p.name, 1) == layout], layout, cache):
                    return None
        finally:
            con.close()
    _prune(base, cache, {p.stem for p in parts})
    if not paths:
        return None
    files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    return f"(SELECT * FROM read_parquet([{files}]) WHERE {where})"


def _write_parts(con: duckdb.DuckDBPyConnection, parts: list[Path], layout: int, cache: Path) -> bool:
    """Hash the answers of `parts` (all of one layout) in one streamed query, one cache file per part: a query
    per part costs more than the hashing at 5,000 rows a part. DuckDB keeps the files' order, so a part's rows
    arrive together and are written as soon as the next part's begin (memory: one part's keys). Should a part's
    rows ever come back after it was written, its file would be incomplete: those parts are hashed again, one
    query each. False when the cache cannot be written."""
    files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts)
    sql = (f"SELECT filename AS _file, rollout_id, step, split, group_id, {ANSWER_HASH} AS ck FROM "
           f"(SELECT {view_columns(layout)}, filename FROM read_parquet([{files}], filename = true)) "
           f"WHERE {SCREENABLE}")
    by_name = {str(p): p for p in parts}
    written: set[str] = set()
    current, batches, again = None, [], set()
    try:
        for batch in con.sql(sql).to_arrow_reader(1 << 16):
            table = pa.Table.from_batches([batch])
            names = table.column("_file")
            for name in pc.unique(names).to_pylist():
                rows = table.filter(pc.equal(names, name)).drop_columns(["_file"])
                if name != current:
                    if current is not None:
                        _flush(by_name[current], batches, cache, written, again)
                    current, batches = name, []
                batches.append(rows)
        if current is not None:
            _flush(by_name[current], batches, cache, written, again)
        for part in parts:  # parts with no row the screen can pair: an empty file marks them done
            if str(part) not in written:
                _save(con.sql(f"{sql} LIMIT 0").to_arrow_table().drop_columns(["_file"]), cache, part)
        for name in again:
            part = by_name[name]
            _save(con.sql(sql.replace(f"[{files}]", "['" + name.replace("'", "''") + "']")).to_arrow_table()
                  .drop_columns(["_file"]), cache, part)
        return True
    except OSError:
        return False


def _flush(part: Path, batches: list[pa.Table], cache: Path, written: set[str], again: set[str]) -> None:
    if str(part) in written:
        again.add(str(part))
        return
    _save(pa.concat_tables(batches), cache, part)
    written.add(str(part))


def _save(table: pa.Table, cache: Path, part: Path) -> None:
    """Write one part's keys atomically (a temporary name of this writer's own, then a rename)."""
    path = cache / f"{part.stem}.parquet"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, compression="zstd", compression_level=1)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _prune(base: Path, cache: Path, stems: set[str]) -> None:
    """Drop keys of other versions and of parts the run no longer lists (a read-only store keeps them)."""
    if not base.is_dir():
        return
    for d in base.iterdir():
        if d.is_dir() and d != cache:
            shutil.rmtree(d, ignore_errors=True)
    for f in cache.glob("*.parquet") if cache.is_dir() else []:
        if f.stem not in stems:
            with contextlib.suppress(OSError):
                f.unlink(missing_ok=True)
