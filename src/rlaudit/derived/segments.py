"""Segments: per-part derived files merged into a few larger ones, so that a view over a long run opens tens of
files instead of thousands.

Derived data is cached per stored part (term sets and their per-step counts, cell tables): a new step adds only
its own files. But a view over every part of a 2,000-step run opened 2,000 files per kind, and DuckDB pays ~3 ms
of CPU per Parquet file it opens (the cell tables of the 10M-rollout benchmark: 5.8 CPU s from 2,000 files, 1.0
from one file holding the same rows). So the files of one kind are merged like a log-structured merge tree:

- FANOUT consecutive loose files (in the run's part order) become one level-1 segment; FANOUT segments of one
  level become one of the next level. A view then reads at most FANOUT - 1 loose files and segments per level
  (about 35 files for 2,000 parts), and every row is rewritten once per level (log_FANOUT of the parts).
- A segment lists the files it holds in its footer (`rlaudit_members`) with each one's row count
  (`rlaudit_rows`: the rows are written in member order, so a member's rows are one range), is written
  atomically under a name derived from that list (two audits merging at once write the same file), and is
  used whole only when every file it holds is among those asked for; otherwise those files are read loose, or,
  where a file is not there, by its row range of a segment holding it (DuckDB skips the row groups outside
  it). The loose files stay until their parts leave the run. A segment that cannot be read (torn) is not used,
  and the next merge writes it again.
- A segment merged into a larger one is removed after GRACE seconds (an audit that opened a view over it may
  still be reading it).

A merge that fails (disk full, read-only store) leaves the loose files: segments cost speed, never results.

The merges of one `covering` call share one DuckDB connection (opening one costs ~13 ms of CPU; merging 16 files
of per-step counts, ~20). Where the files are being computed now (a cold audit computing every part: `Fresh`),
the level-1 segments the next merge would write are written from the tables in memory, and their members' files
are not written at all: each row is written once (the 1M-rollout benchmark's per-part files of those kinds cost
~1.5 CPU s on top of the segments). They are the same segments, with the same names and rows, as the merge
would write. One 16-part group of the 1M-rollout benchmark, its four kinds (counts, cells, cellterms,
promptterms; DuckDB 2.0): 0.26 CPU s merged from the files with a connection each, 0.12 from memory (with
`termcells.SEGMENT_COMPRESSION`).

Who writes a segment from tables in memory (`Fresh`, `covering(held=...)`) is chosen per kind (`Codec`): pyarrow's
Parquet writer where its file costs less to write and no more to read, DuckDB's COPY elsewhere; merges of files
stay a streaming DuckDB COPY (bounded memory, columns unified by name). Why: writing derived data was ~20% of a
cold audit's busy samples (py-spy, all six detectors on the 1M-rollout benchmark), and a COPY of a registered
table pays for a connection (~13 ms, one per `Fresh`), the registration and a plan on top of the encoding. One
16-part group of that benchmark, CPU ms to write with DuckDB's COPY -> pyarrow (size), and DuckDB's reads of the
segment after (whole or as its readers filter it / by some members' range, `Rows`): per-step counts
(`tokens.COUNTS_SEGMENTS`) 16.5 -> 5.9 (0.18 -> 0.21 MB; reads 5.8 / 2.3 -> 6.8 / 2.1), cells
(`termcells.SEGMENT_COMPRESSION`) 9.7 -> 8.0 (0.29 -> 0.33 MB; 2.0 / 2.3 / 3.5 -> 2.0 / 2.4 / 3.8): pyarrow.
cellterms 63 -> 64-68 (6.9 -> 6.7 MB; reads the same), promptterms 29-32 -> 28-30 (3.5 -> 2.7 MB) but its
filtered reads (the focus's prompts, every warm audit) 10.8-11.6 -> 13.4-14.9: DuckDB's COPY, as before.
Attribution's tables (`attribution.partcache`, "lz4": DuckDB's COPY) would take 25 -> 20 ms with pyarrow and
every column in a dictionary (1.31 -> 1.54 MB, reads 9.8 / 6.3 -> 9.9 / 5.6), if it passed those options. pyarrow
with its defaults read ~2x slower in DuckDB (no dictionaries for strings and constant columns, which DuckDB's
writer picks), and without column statistics DuckDB's aggregates slow by ~45% (cellterms summed by term id 38 ->
56 ms): hence the kinds' options; one row group per member (16 row groups of ~600 rows) read ~2x slower again:
hence ROW_GROUP.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .partstats import COMPACT_MEMORY  # a merge is a streaming COPY, often beside a detector's connection
from .. import duck
from ..store import sql_list, sql_string

FANOUT = 16
#: seconds a superseded segment is kept for audits that may still read it
GRACE = 600.0
_KEY = b"rlaudit_members"
#: each member's row count, in member order (the rows of a member are a contiguous range of the segment)
_ROWS = b"rlaudit_rows"
_LEVELS = 8
#: rows per row group of a segment written by pyarrow: about DuckDB's (122,880), so that a reader of some
#: members' row ranges (`Rows`) skips the row groups outside them as it does in DuckDB's segments (with
#: pyarrow's default, 1Mi rows, one member's range of a 16-part cellterms segment read in 4.4 ms against 3.3)
ROW_GROUP = 1 << 17

#: How a kind's segments are written: a DuckDB codec name ("lz4", "uncompressed", ...: DuckDB's COPY, which
#: picks each column's encoding and writes every column's statistics), or the options of pyarrow's Parquet
#: writer (`pq.write_table`: compression, use_dictionary, write_statistics, column_encoding) for the segments
#: written from tables in memory, whose codec the merges of files through DuckDB use (see module doc)
Codec = str | dict[str, Any]


def duckdb_codec(compression: Codec) -> str:
    """DuckDB's name of `compression`'s codec (see `Codec`), for a COPY."""
    codec = compression.get("compression", "snappy") if isinstance(compression, dict) else compression
    return "uncompressed" if codec in ("none", None) else str(codec)


class _Seg(NamedTuple):
    path: Path
    level: int
    members: list[str]
    rows: list[int] | None  # None: a segment written before row counts were kept (its members have files)


class Rows(NamedTuple):
    """Rows [lo, hi) of a segment file: members whose own files are not there (see `covering`)."""

    path: Path
    ranges: list[tuple[int, int]]


def select_sql(sources: list[Path | Rows]) -> list[str]:
    """SELECT statements (to be unioned) reading `covering`'s result: the whole files in one scan, each `Rows`
    by its row numbers (DuckDB skips the row groups outside them)."""
    files = [str(p) for p in sources if not isinstance(p, Rows)]
    out = [f"SELECT * FROM read_parquet({sql_list(files)})"] if files else []
    for r in sources:
        if isinstance(r, Rows):
            cond = " OR ".join(f"file_row_number BETWEEN {lo} AND {hi - 1}" for lo, hi in r.ranges)
            out.append(f"SELECT * EXCLUDE (file_row_number) FROM read_parquet({sql_string(str(r.path))}, "
                       f"file_row_number = true) WHERE {cond}")
    return out


def held(seg_dir: Path) -> set[str]:
    """Names of the files whose rows a readable segment in `seg_dir` holds as a known row range: such a file
    may be missing (`Fresh` writes the segment instead), its rows are still there."""
    return {m for seg in _segments(seg_dir) if seg.rows is not None for m in seg.members}


def read_member(path: Path, kind: str) -> pa.Table:
    """The rows of one per-part file of `kind`: the file, or where it is missing its range of a segment holding
    it."""
    if path.is_file():
        return pq.ParquetFile(path).read()
    for seg in _segments(path.parent / "segments" / kind):
        if seg.rows is not None and path.name in seg.members:
            return next(_cut(seg.path, [(path.name, *_range(seg, path.name))]))[1]
    raise FileNotFoundError(f"{path}: neither the file nor a segment holding its rows")


def read_members(paths: list[Path], kind: str, merge: bool = True, compression: Codec = "lz4", grow: bool = True
                 ) -> Iterator[tuple[Path, pa.Table]]:
    """Each of `paths` (per-part files of one `kind` in one directory) with its rows, read from `covering`'s
    sources (`merge` and `compression` as there): a segment a row group at a time, cut at its members' row
    ranges. So a reader of a whole long run holds one row group and one part's rows at a time, and knows which
    part each row is of (a view over the segments gives neither). In the sources' order, not `paths`'. `grow`: as
    `covering`'s."""
    if not paths:
        return
    by_name = {p.name: p for p in paths}
    sources = covering(paths, kind, merge=merge, compression=compression, grow=grow)
    info = {s.path: s for s in _segments(paths[0].parent / "segments" / kind)}  # after the merge: its segments
    for src in sources:
        seg = info.get(src.path if isinstance(src, Rows) else src)
        if seg is None:  # a loose file
            yield by_name[src.name], pq.ParquetFile(src).read()
        elif seg.rows is None:  # written before row counts were kept: its members have their files
            for m in seg.members:
                yield by_name[m], pq.ParquetFile(by_name[m]).read()
        else:
            bounds = np.concatenate([[0], np.cumsum(seg.rows)])
            ranges = src.ranges if isinstance(src, Rows) else [(0, int(bounds[-1]))]
            inside = [(m, int(bounds[i]), int(bounds[i + 1])) for i, m in enumerate(seg.members)
                      if m in by_name and any(lo <= bounds[i] and bounds[i + 1] <= hi for lo, hi in ranges)]
            yield from ((by_name[m], t) for m, t in _cut(seg.path, inside))


def _cut(path: Path, members: list[tuple[str, int, int]]) -> Iterator[tuple[str, pa.Table]]:
    """The rows of `members` ((name, first row, end row), in the file's order) of segment `path`, reading each
    row group once."""
    f = pq.ParquetFile(path)
    meta = f.metadata
    starts = [0]
    for i in range(meta.num_row_groups):
        starts.append(starts[-1] + meta.row_group(i).num_rows)
    last: tuple[int, pa.Table] | None = None
    for m, lo, hi in members:
        pieces = []
        g = bisect.bisect_right(starts, lo) - 1
        while lo < hi and g < meta.num_row_groups and starts[g] < hi:
            if last is None or last[0] != g:
                last = (g, f.read_row_group(g))
            a, b = max(lo, starts[g]) - starts[g], min(hi, starts[g + 1]) - starts[g]
            pieces.append(last[1].slice(a, b - a))
            g += 1
        t = pa.concat_tables(pieces) if pieces else f.schema_arrow.empty_table()
        yield m, t.replace_schema_metadata(None)


def _range(seg: _Seg, member: str) -> tuple[int, int]:
    assert seg.rows is not None
    i = seg.members.index(member)
    lo = sum(seg.rows[:i])
    return lo, lo + seg.rows[i]


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
             compression: Codec = "lz4", grow: bool = True) -> list[Path | Rows]:
    """Files whose rows are exactly those of `paths` (per-part files of one `kind` in one directory): usable
    segments and the files they do not hold, and for a file that is not there (`Fresh` wrote its rows into a
    segment only) its rows in a segment that holds it (`Rows`; read them with `select_sql`). With `merge`,
    first merge what has accumulated (see module doc), into segments written as `compression` says (`Codec`):
    `paths` must then be every file of the run (a merge removes the segments holding others after GRACE: their
    members have left the run). Without `merge` `paths` may be any subset of the run's files (a reader of a few
    parts).

    `held`: the rows of loose files the caller has just written and still holds (file name -> table, one schema):
    a level-1 segment of held files only is written from them instead of being read back from the files (a cold
    audit writes every part's file and merges them at once). A caller that writes the files over a long time
    and cannot hold them all until then uses `Fresh`.

    `grow=False`: a merge that removes superseded segments but writes none, for a reader of the whole run that
    reads it once and keeps what it made of it (`stepcounts`: the per-step counts of a cold audit of 15,625 steps,
    ~60M rows, cost 7.7 CPU s to merge before one read)."""
    if not paths:
        return []
    seg_dir = paths[0].parent / "segments" / kind
    segments = _segments(seg_dir)
    if merge:
        with _Connection() as con:
            try:
                segments = _merge(paths, seg_dir, segments, con, compression, held or {}, grow)
            except (OSError, duckdb.Error, pa.ArrowException):
                segments = _segments(seg_dir)  # what a merge that failed half-way left
    chosen, loose = _choose(paths, segments)
    missing = [p for p in loose if not p.is_file()]
    ranged = _locate(missing, segments)
    located = {m for r in ranged for m in r[1]}
    return [s.path for s in chosen] + [p for p in loose if p.name not in located] + [r[0] for r in ranged]


def _locate(missing: list[Path], segments: list[_Seg]) -> list[tuple[Rows, set[str]]]:
    """For files that are not there, their rows in segments holding them (the highest level first: the most
    lasting), as (`Rows`, the members read) per segment. A file no segment holds is left out (its reader
    fails, naming it)."""
    want = {p.name for p in missing}
    out = []
    for seg in segments:
        mine = [m for m in seg.members if m in want] if seg.rows is not None else []
        if not mine:
            continue
        want -= set(mine)
        ranges: list[tuple[int, int]] = []
        for lo, hi in sorted(_range(seg, m) for m in mine):
            if ranges and ranges[-1][1] == lo:
                ranges[-1] = (ranges[-1][0], hi)
            else:
                ranges.append((lo, hi))
        out.append((Rows(seg.path, ranges), set(mine)))
    return out


#: segments' footers already read, by (path, size, mtime): an audit asks for the same segments several times
_FOOTERS: dict[tuple[str, int, int], tuple[list[str], list[int] | None]] = {}


def _segments(seg_dir: Path) -> list[_Seg]:
    """Every readable segment, highest level first."""
    out = []
    for f in seg_dir.glob("L*.parquet") if seg_dir.is_dir() else []:
        try:
            st = f.stat()
            key = (str(f), st.st_size, st.st_mtime_ns)
            if key not in _FOOTERS:
                meta = pq.read_schema(f).metadata or {}
                rows = json.loads(meta[_ROWS]) if _ROWS in meta else None
                _FOOTERS[key] = (json.loads(meta[_KEY]), rows)
            members, rows = _FOOTERS[key]
            out.append(_Seg(f, int(f.name[1:f.name.index("-")]), members, rows))
        except (OSError, ValueError, KeyError, pa.ArrowInvalid):
            continue
    return sorted(out, key=lambda s: (-s[1], s[0].name))


def _choose(paths: list[Path], segments: list[_Seg]) -> tuple[list[_Seg], list[Path]]:
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


def _merge(paths: list[Path], seg_dir: Path, segments: list[_Seg], con: _Connection, compression: Codec,
           held: dict[str, pa.Table], grow: bool = True) -> list[_Seg]:
    """Merge FANOUT loose files into a level-1 segment, and FANOUT segments of a level into one of the next,
    while there are enough; then remove segments superseded more than GRACE seconds ago, but for those holding
    the rows of wanted files that are not there. Returns the readable segments afterwards, highest level first.

    Files that are not there stay where their rows are (a segment that is no longer usable whole, after one of
    its members left the run, is read by ranges): they are not merged again."""
    chosen, loose = _choose(paths, segments)
    missing = [p for p in loose if not p.is_file()]
    gone = {p.name for p in missing}
    for group in _groups([p for p in loose if p.name not in gone]) if grow else []:
        tables = [held[p.name] for p in group] if all(p.name in held for p in group) else None
        chosen.append(_write(seg_dir, 1, [(p, [p.name], None) for p in group], con, compression, tables))
    for level in range(1, _LEVELS if grow else 1):
        same = [s for s in chosen if s.level == level]
        for i in range(0, len(same) - FANOUT + 1, FANOUT):
            group = same[i:i + FANOUT]
            chosen = [s for s in chosen if s not in group]
            chosen.append(_write(seg_dir, level + 1, [(s.path, s.members, s.rows) for s in group], con,
                                 compression))
            for s in group:  # superseded now: the grace period starts
                with contextlib.suppress(OSError):
                    os.utime(s.path)
    used = {s.path for s in chosen} | {r.path for r, _ in _locate(missing, segments)}
    now = time.time()
    kept = []
    for seg in segments:
        if seg.path not in used:
            with contextlib.suppress(OSError):
                if now - seg.path.stat().st_mtime > GRACE:
                    seg.path.unlink()
                    continue
        kept.append(seg)
    # the chosen ones first: `_choose` takes them again
    chosen = sorted(chosen, key=lambda s: (-s.level, s.path.name))
    return chosen + [s for s in kept if s.path not in {c.path for c in chosen}]


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
            # one thread: a merge of small files is a stream, and DuckDB's threads cost it ~50% more CPU than they
            # save time (one 16-file merge of cell terms: 0.17 -> 0.11 CPU s)
            self._con = duck.connect(at_most=COMPACT_MEMORY, threads=1)
        return self._con


def _write(seg_dir: Path, level: int, sources: list[tuple[Path, list[str], list[int] | None]], con: _Connection,
           compression: Codec, tables: list[pa.Table] | None = None) -> _Seg:
    """One segment of `level` holding the rows of `sources` (files, each with the member names it holds and
    their row counts, None where unknown: a per-part file's are read from its footer), read from the files or,
    when given, from `tables` (the same rows, one table per source, in memory). The rows are written in the
    sources' order, so each member's rows are one range; the footer lists the members and their row counts, when
    every source's are known. From `tables` with pyarrow's writer options (`Codec`): pyarrow; otherwise a DuckDB
    COPY (one thread, insertion order kept; from files a streaming one)."""
    members = [m for _, names, _ in sources for m in names]
    path = _path(seg_dir, level, members)
    if path.is_file() and _readable(path):  # an unreadable (torn) one is written again
        return next((s for s in _segments(seg_dir) if s.path == path), _Seg(path, level, members, None))
    if tables is not None:
        counts: list[int] | None = [t.num_rows for t in tables]
    elif level == 1:
        counts = [pq.ParquetFile(p).metadata.num_rows for p, _, _ in sources]
    else:
        counts = None if any(r is None for _, _, r in sources) else [n for _, _, r in sources for n in r or []]
    seg_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp")
    meta = {_KEY: json.dumps(members).encode()}
    if counts is not None:
        meta[_ROWS] = json.dumps(counts).encode()
    registered = ""
    try:
        if tables is not None and isinstance(compression, dict):
            _write_tables(tmp, tables, meta, compression)
        else:
            if tables is None:
                files = sql_list([str(p) for p, _, _ in sources])
                rows = f"(SELECT * FROM read_parquet({files}, union_by_name = true))"
            else:
                rows = registered = "_segment_rows"
                con.get().register(rows, pa.concat_tables(tables, promote_options="default"))
            kv = ", ".join(f"{k.decode()}: {sql_string(v.decode())}" for k, v in meta.items())
            written = con.get().execute(f"COPY {rows} TO {sql_string(str(tmp))} (FORMAT parquet, COMPRESSION "
                                        f"{duckdb_codec(compression)}, KV_METADATA {{{kv}}})").fetchall()[0][0]
            if counts is not None and written != sum(counts):  # a source changed meanwhile: no ranges to trust
                raise OSError(f"segment {path.name}: {written} rows written, its members hold {sum(counts)}")
        os.replace(tmp, path)
    finally:
        if registered:
            con.get().unregister(registered)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return _Seg(path, level, members, counts)


def _write_tables(tmp: Path, tables: list[pa.Table], meta: dict[bytes, bytes], options: dict[str, Any]) -> None:
    """Write `tables` one after another as one Parquet file with `meta` in its footer, by pyarrow with the
    writer options `options` (no DuckDB connection, registration or COPY plan; row groups of ROW_GROUP rows)."""
    table = pa.concat_tables(tables, promote_options="default")
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    pq.write_table(table, tmp, row_group_size=ROW_GROUP, **options)


class Fresh:
    """Level-1 segments written from tables in memory instead of per-part files (a cold audit computing every
    part): for each kind, the groups of files `covering` would merge next that are all among those being
    written now are *planned*. The caller does not write a planned file: it hands its table to `add`, which
    holds it until its group is complete and then writes the group's segment, whose footer records each
    member's rows (`covering` reads a member whose file is not there from that range, `held` lists them). So
    every row is written once, not as a per-part file and again into a segment. A group whose tables would
    take more than `hold` bytes with those held already, or whose segment cannot be written, is given up: its
    files are written after all (by the `write` given with each table), and what cannot be written at all is
    kept in `kept` (file -> table) for the caller to hold in memory. Memory stays bounded whatever the parts'
    size (the 1M-rollout benchmark's groups of four kinds hold 83 MB). `planned` may be asked from any thread;
    `add` is called by one thread. A context manager: its one DuckDB connection is closed on leaving."""

    def __init__(self, kinds: dict[str, tuple[list[Path], Codec]], fresh: set[Path], hold: int = 256 << 20):
        """`kinds`: per kind, every part's file in the run's order (as `covering` will be asked for them, not all
        written yet) and the segments' compression (`Codec`); `fresh`: the files about to be written."""
        self._group: dict[Path, tuple[Path, list[Path]]] = {}
        self._compression: dict[Path, Codec] = {}
        for kind, (paths, compression) in kinds.items():
            if not paths:
                continue
            seg_dir = paths[0].parent / "segments" / kind
            self._compression[seg_dir] = compression
            # the loose files a merge would group: those there, and those written now
            loose = [p for p in _choose(paths, _segments(seg_dir))[1] if p in fresh or p.is_file()]
            for group in _groups(loose):
                if set(group) <= fresh and not _readable(_path(seg_dir, 1, [p.name for p in group])):
                    self._group.update((p, (seg_dir, group)) for p in group)
        self._planned = frozenset(self._group)
        self._held: dict[Path, tuple[pa.Table, Callable[[], Path | pa.Table], int]] = {}
        self._hold, self._bytes = hold, 0
        self._con = _Connection()
        self.kept: dict[Path, pa.Table] = {}

    def __enter__(self) -> Fresh:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:  # every planned file was added: nothing should be left; if so, its file is written
            for path in list(self._held):
                self._spill(path)
        self._held.clear()
        self._bytes = 0
        self._con.__exit__()

    def planned(self, path: Path) -> bool:
        """Whether `path`'s table goes to `add` rather than to its own file."""
        return path in self._planned

    def add(self, path: Path, table: pa.Table, write: Callable[[], Path | pa.Table]) -> None:
        """`table`: the rows of the planned file `path`; `write()` writes that file (returning its path, or the
        table where it could not be written) if its group is given up."""
        seg_dir, group = self._group.get(path, (None, []))
        if seg_dir is None:  # its group was given up
            self._keep(path, write())
            return
        # the buffers the table keeps alive (a slice keeps its whole parent's: counted in full, so shared buffers
        # count once per holder and the budget is reached sooner, never later); `nbytes`, the bytes a slice
        # references, walked every buffer: ~0.1-0.3 ms a table, ~0.27 CPU s of a cold 1M-rollout audit
        size = table.get_total_buffer_size()
        self._held[path] = (table, write, size)
        self._bytes += size
        if self._bytes > self._hold:
            self._give_up(group)
            return
        if all(p in self._held for p in group):
            tables = [self._held[p][0] for p in group]
            try:
                _write(seg_dir, 1, [(p, [p.name], None) for p in group], self._con, self._compression[seg_dir],
                       tables)
            except (OSError, duckdb.Error, pa.ArrowException):
                self._give_up(group)
                return
            self._drop(group)

    def _give_up(self, group: list[Path]) -> None:
        """Write the group's files held so far; those still to come are written as they are added."""
        for p in group:
            self._group.pop(p, None)
            if p in self._held:
                self._spill(p)

    def _spill(self, path: Path) -> None:
        table, write, size = self._held.pop(path)
        self._bytes -= size
        self._keep(path, write())

    def _keep(self, path: Path, written: Path | pa.Table) -> None:
        if not isinstance(written, Path):
            self.kept[path] = written

    def _drop(self, group: list[Path]) -> None:
        for p in group:
            t = self._held.pop(p, None)
            self._bytes -= t[2] if t is not None else 0
            self._group.pop(p, None)
