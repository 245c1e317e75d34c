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
  subset of the parts, such as the window steps', read them) until their parts leave the run.
- A segment merged into a larger one is removed after GRACE seconds (an audit that opened a view over it may
  still be reading it).

A merge that fails (disk full, read-only store) leaves the loose files: segments cost speed, never results.
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
from .store import bound_memory, sql_list, sql_string

FANOUT = 16
#: seconds a superseded segment is kept for audits that may still read it
GRACE = 600.0
_KEY = b"rlaudit_members"
_LEVELS = 8


class Held(dict):
    """Tables of per-part files just written, by file name, for `covering(held=...)`, kept only up to `budget`
    bytes in all: beyond it (a run whose per-part rows are large, e.g. every rollout exposed) the files are read
    back as before instead of holding the whole run in memory."""

    def __init__(self, budget: int = 64 << 20):
        super().__init__()
        self.budget = budget
        self.size = 0

    def keep(self, name: str, table: pa.Table) -> None:
        size = table.nbytes
        if self.size + size <= self.budget:
            self[name] = table
            self.size += size


def covering(paths: list[Path], kind: str, merge: bool = True,
             held: dict[str, pa.Table] | None = None) -> list[Path]:
    """Files whose rows are exactly those of `paths` (per-part files of one `kind` in one directory): usable
    segments and the files they do not hold. With `merge`, first merge what has accumulated (see module doc).

    `held`: the rows of loose files the caller has just written and still holds (file name -> table, one schema):
    a level-1 segment of held files only is written from them instead of being read back from the files (a cold
    audit writes every part's file and merges them at once)."""
    if not paths:
        return []
    seg_dir = paths[0].parent / "segments" / kind
    segments = _segments(seg_dir)
    if merge:
        try:
            segments = _merge(paths, seg_dir, segments, held or {})
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


def _merge(paths: list[Path], seg_dir: Path, segments: list[tuple[Path, int, list[str]]],
           held: dict[str, pa.Table]) -> list[tuple[Path, int, list[str]]]:
    """Merge FANOUT loose files into a level-1 segment, and FANOUT segments of a level into one of the next,
    while there are enough; then remove segments superseded more than GRACE seconds ago. Returns the segments
    that hold `paths` afterwards, highest level first."""
    chosen, loose = _choose(paths, segments)
    for i in range(0, len(loose) - FANOUT + 1, FANOUT):
        group = loose[i:i + FANOUT]
        if all(p.name in held for p in group):
            chosen.append(_write_held(seg_dir, [p.name for p in group], [held[p.name] for p in group]))
        else:
            chosen.append(_write(seg_dir, 1, [(p, [p.name]) for p in group]))
    for level in range(1, _LEVELS):
        same = [s for s in chosen if s[1] == level]
        for i in range(0, len(same) - FANOUT + 1, FANOUT):
            group = same[i:i + FANOUT]
            chosen = [s for s in chosen if s not in group]
            chosen.append(_write(seg_dir, level + 1, [(s[0], s[2]) for s in group]))
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


def _write_held(seg_dir: Path, members: list[str], tables: list[pa.Table]) -> tuple[Path, int, list[str]]:
    """The level-1 segment of `members` from their rows in hand (`tables`, in member order): what `_write`
    would read back from their files, written with Arrow (no database connection, no re-read)."""
    digest = hashlib.sha1("\n".join(members).encode()).hexdigest()[:16]
    path = seg_dir / f"L1-{digest}.parquet"
    if path.is_file():
        return path, 1, members
    seg_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp")
    table = pa.concat_tables(tables)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _KEY: json.dumps(members).encode()})
    try:
        pq.write_table(table, tmp, compression="lz4")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path, 1, members


def _write(seg_dir: Path, level: int, sources: list[tuple[Path, list[str]]]) -> tuple[Path, int, list[str]]:
    """One segment of `level` holding the rows of `sources` (files, each with the member names it holds)."""
    members = [m for _, names in sources for m in names]
    digest = hashlib.sha1("\n".join(members).encode()).hexdigest()[:16]
    path = seg_dir / f"L{level}-{digest}.parquet"
    if path.is_file():
        return path, level, members
    seg_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp")
    try:
        with duckdb.connect() as con:
            # one thread: a merge of small files is a stream, and DuckDB's threads cost it ~50% more CPU than they
            # save time (one 16-file merge of cell terms: 0.17 -> 0.11 CPU s)
            con.execute("SET enable_progress_bar = false; SET threads = 1")
            bound_memory(con, at_most=COMPACT_MEMORY)
            con.execute(f"COPY (SELECT * FROM read_parquet({sql_list([str(p) for p, _ in sources])}, "
                        f"union_by_name = true)) TO {sql_string(str(tmp))} (FORMAT parquet, COMPRESSION lz4, "
                        f"KV_METADATA {{rlaudit_members: {sql_string(json.dumps(members))}}})")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path, level, members

