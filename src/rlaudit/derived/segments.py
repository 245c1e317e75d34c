"""Segments: per-part derived files merged into a few larger ones, so that a view over a long run opens tens of
files instead of thousands.

Derived data is cached per stored part (term sets and their per-step counts, cell tables): a new step adds only
its own files. But a view over every part of a 2,000-step run opened 2,000 files per kind, and DuckDB pays ~3 ms
of CPU per Parquet file it opens (the cell tables of the 10M-rollout benchmark: 5.8 CPU s from 2,000 files, 1.0
from one file holding the same rows). So the files of one kind are merged like a log-structured merge tree:

- FANOUT consecutive loose files (in the run's part order) become one level-1 segment; FANOUT segments of one
  level become one of the next level. A view then reads at most FANOUT - 1 loose files and segments per level
  (about 35 files for 2,000 parts), and every row is rewritten once per level (log_FANOUT of the parts).
- A segment lists the files it holds in its footer (`rlaudit_members`), is written atomically under a name
  derived from that list (two audits merging at once write the same file), and is used only when every file it
  holds is among those asked for; otherwise those files are read loose. The loose files stay (views over a
  subset of the parts, such as the window steps', read them) until their parts leave the run. A segment that
  cannot be read (torn) is not used, and the next merge writes it again.
- A segment merged into a larger one is removed after GRACE seconds (an audit that opened a view over it may
  still be reading it).

A merge that fails (disk full, read-only store) leaves the loose files: segments cost speed, never results.

The merges of one `covering` call share one DuckDB connection (opening one costs ~13 ms of CPU; merging 16 files
of per-step counts, ~20). Where the files are being written now (a cold audit computing every part: `Fresh`), the
level-1 segments the next merge would write are written from the tables in memory as soon as all their members'
files are: nothing is read back, and DuckDB's COPY from Arrow costs 20-50% less CPU than from the 16 files. They
are the same files, with the same names and rows, as the merge would write. One 16-part group of the 1M-rollout
benchmark, its four kinds (counts, cells, cellterms, promptterms; DuckDB 2.0): 0.26 CPU s merged from the files
with a connection each, 0.12 from memory (with `termcells.SEGMENT_COMPRESSION`).
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
import pyarrow as pa
import pyarrow.parquet as pq

from .partstats import COMPACT_MEMORY  # a merge is a streaming COPY, often beside a detector's connection
from ..store import bound_memory, sql_list, sql_string

FANOUT = 16
#: seconds a superseded segment is kept for audits that may still read it
GRACE = 600.0
_KEY = b"rlaudit_members"
_LEVELS = 8


class Held(dict):
    """Tables of per-part files just written, by file name, for `covering(held=...)`, kept only up to `budget`
    bytes in all: beyond it (a run whose per-part rows are large, e.g. every rollout exposed) the files are read
    back as before instead of holding the whole run in memory. `keep` is called by the scan's worker threads:
    the budget is checked and charged under a lock."""

    def __init__(self, budget: int = 64 << 20):
        super().__init__()
        self.budget = budget
        self.size = 0
        self._lock = threading.Lock()

    def keep(self, name: str, table: pa.Table) -> None:
        size = table.nbytes
        with self._lock:
            if self.size + size <= self.budget:
                self[name] = table
                self.size += size


def covering(paths: list[Path], kind: str, merge: bool = True, held: dict[str, pa.Table] | None = None,
             compression: str = "lz4") -> list[Path]:
    """Files whose rows are exactly those of `paths` (per-part files of one `kind` in one directory): usable
    segments and the files they do not hold. With `merge`, first merge what has accumulated (see module doc),
    into segments compressed with `compression` (DuckDB's name: "lz4", "uncompressed", ...).

    `held`: the rows of loose files the caller has just written and still holds (file name -> table, one schema):
    a level-1 segment of held files only is written from them instead of being read back from the files (a cold
    audit writes every part's file and merges them at once). A caller that writes the files over a long time
    and cannot hold them all until then uses `Fresh`."""
    if not paths:
        return []
    seg_dir = paths[0].parent / "segments" / kind
    segments = _segments(seg_dir)
    if merge:
        with _Connection() as con:
            try:
                segments = _merge(paths, seg_dir, segments, con, compression, held or {})
            except (OSError, duckdb.Error):
                segments = _segments(seg_dir)  # what a merge that failed half-way left
    chosen, loose = _choose(paths, segments)
    return [p for p, _, _ in chosen] + loose


def _segments(seg_dir: Path) -> list[tuple[Path, int, list[str]]]:
    """(path, level, member file names) of every readable segment, highest level first."""
    out = []
    for f in seg_dir.glob("L*.parquet") if seg_dir.is_dir() else []:
        try:
            meta = pq.read_schema(f).metadata or {}
            out.append((f, int(f.name[1:f.name.index("-")]), json.loads(meta[_KEY])))
        except (OSError, ValueError, KeyError, pa.ArrowInvalid):
            continue
    return sorted(out, key=lambda s: (-s[1], s[0].name))


def _choose(paths: list[Path], segments: list[tuple[Path, int, list[str]]]
            ) -> tuple[list[tuple[Path, int, list[str]]], list[Path]]:
    """The segments to read (highest level first, each holding only wanted files not yet covered) and the
    wanted files left loose, in `paths` order."""
    wanted = {p.name for p in paths}
    covered: set[str] = set()
    chosen = []
    for seg in segments:
        members = set(seg[2])
        if members <= wanted and not members & covered:
            chosen.append(seg)
            covered |= members
    return chosen, [p for p in paths if p.name not in covered]


def _merge(paths: list[Path], seg_dir: Path, segments: list[tuple[Path, int, list[str]]], con: _Connection,
           compression: str, held: dict[str, pa.Table]) -> list[tuple[Path, int, list[str]]]:
    """Merge FANOUT loose files into a level-1 segment, and FANOUT segments of a level into one of the next,
    while there are enough; then remove segments superseded more than GRACE seconds ago. Returns the segments
    that hold `paths` afterwards, highest level first."""
    chosen, loose = _choose(paths, segments)
    for group in _groups(loose):
        tables = [held[p.name] for p in group] if all(p.name in held for p in group) else None
        chosen.append(_write(seg_dir, 1, [(p, [p.name]) for p in group], con, compression, tables))
    for level in range(1, _LEVELS):
        same = [s for s in chosen if s[1] == level]
        for i in range(0, len(same) - FANOUT + 1, FANOUT):
            group = same[i:i + FANOUT]
            chosen = [s for s in chosen if s not in group]
            chosen.append(_write(seg_dir, level + 1, [(s[0], s[2]) for s in group], con, compression))
            for s in group:  # superseded now: the grace period starts
                with contextlib.suppress(OSError):
                    os.utime(s[0])
    used = {s[0] for s in chosen}
    now = time.time()
    for path, _, _ in segments:
        if path not in used:
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > GRACE:
                    path.unlink()
    return sorted(chosen, key=lambda s: (-s[1], s[0].name))


def _readable(path: Path) -> bool:
    try:
        return _KEY in (pq.read_schema(path).metadata or {})
    except (OSError, pa.ArrowInvalid):
        return False


def _groups(loose: list[Path]) -> list[list[Path]]:
    """The level-1 segments to merge `loose` files into: FANOUT consecutive files each (a remainder stays loose)."""
    return [loose[i:i + FANOUT] for i in range(0, len(loose) - FANOUT + 1, FANOUT)]


def _path(seg_dir: Path, level: int, members: list[str]) -> Path:
    """A segment's name: derived from its members, so two audits merging the same files write the same file."""
    digest = hashlib.sha1("\n".join(members).encode()).hexdigest()[:16]
    return seg_dir / f"L{level}-{digest}.parquet"


class _Connection:
    """One DuckDB connection for a series of merges, opened at the first."""

    def __init__(self) -> None:
        self._con: duckdb.DuckDBPyConnection | None = None

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._con is not None:
            self._con.close()

    def get(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = duckdb.connect()
            # one thread: a merge of small files is a stream, and DuckDB's threads cost it ~50% more CPU than they
            # save time (one 16-file merge of cell terms: 0.17 -> 0.11 CPU s)
            self._con.execute("SET enable_progress_bar = false; SET threads = 1")
            bound_memory(self._con, at_most=COMPACT_MEMORY)
        return self._con


def _write(seg_dir: Path, level: int, sources: list[tuple[Path, list[str]]], con: _Connection, compression: str,
           tables: list[pa.Table] | None = None) -> tuple[Path, int, list[str]]:
    """One segment of `level` holding the rows of `sources` (files, each with the member names it holds), read
    from the files or, when given, from `tables` (the same rows, one table per source, in memory)."""
    members = [m for _, names in sources for m in names]
    path = _path(seg_dir, level, members)
    if path.is_file() and _readable(path):  # an unreadable (torn) one is written again
        return path, level, members
    seg_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp")
    c = con.get()
    if tables is None:
        rows = f"(SELECT * FROM read_parquet({sql_list([str(p) for p, _ in sources])}, union_by_name = true))"
    else:
        rows = "_segment_rows"
        c.register(rows, pa.concat_tables(tables, promote_options="default"))
    try:
        c.execute(f"COPY {rows} TO {sql_string(str(tmp))} (FORMAT parquet, COMPRESSION {compression}, "
                  f"KV_METADATA {{rlaudit_members: {sql_string(json.dumps(members))}}})")
        os.replace(tmp, path)
    finally:
        if tables is not None:
            c.unregister(rows)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path, level, members


class Fresh:
    """Level-1 segments written from tables in memory while the per-part files they hold are written (a cold
    audit computing every part): for each kind, the groups of files `covering` would merge next that are all
    among those being written now; `add` holds each such file's table until its group is complete, then writes
    the group's segment. A group whose file could not be written, or whose tables would take more than `hold`
    bytes with those held already, is given up (the next `covering` merges it from the files): memory stays
    bounded whatever the parts' size (the 1M-rollout benchmark's groups of four kinds hold 83 MB). Not
    thread-safe: one caller adds. A context manager: its one DuckDB connection is closed on leaving."""

    def __init__(self, kinds: dict[str, tuple[list[Path], str]], fresh: set[Path], hold: int = 256 << 20):
        """`kinds`: per kind, every part's file in the run's order (as `covering` will be asked for them, not all
        written yet) and the segments' compression; `fresh`: the files about to be written."""
        self._group: dict[Path, tuple[Path, list[Path]]] = {}
        self._compression: dict[Path, str] = {}
        for kind, (paths, compression) in kinds.items():
            if not paths:
                continue
            seg_dir = paths[0].parent / "segments" / kind
            self._compression[seg_dir] = compression
            for group in _groups(_choose(paths, _segments(seg_dir))[1]):
                if set(group) <= fresh and not _readable(_path(seg_dir, 1, [p.name for p in group])):
                    self._group.update((p, (seg_dir, group)) for p in group)
        self._held: dict[Path, pa.Table] = {}
        self._hold, self._bytes = hold, 0
        self._con = _Connection()

    def __enter__(self) -> Fresh:
        return self

    def __exit__(self, *exc: object) -> None:
        self._held.clear()
        self._bytes = 0
        self._con.__exit__()

    def add(self, path: Path, written: Path | pa.Table, table: pa.Table) -> None:
        """`table` was written to `path` (`written` is the path, or the table where the write failed)."""
        seg_dir, group = self._group.get(path, (None, []))
        if seg_dir is None:
            return
        if not isinstance(written, Path) or self._bytes + table.nbytes > self._hold:
            self._drop(group)
            return
        self._held[path] = table
        self._bytes += table.nbytes
        if all(p in self._held for p in group):
            tables = [self._held[p] for p in group]
            self._drop(group)
            with contextlib.suppress(OSError, duckdb.Error):
                _write(seg_dir, 1, [(p, [p.name]) for p in group], self._con, self._compression[seg_dir], tables)

    def _drop(self, group: list[Path]) -> None:
        for p in group:
            t = self._held.pop(p, None)
            self._bytes -= t.nbytes if t is not None else 0
            self._group.pop(p, None)
