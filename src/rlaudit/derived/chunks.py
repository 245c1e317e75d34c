"""A per-run cache kept as a few chunk files named by a manifest, grown by a chunk of the new parts' rows.

Why: a cache of the whole run held in one file (the dense per-step counts, `stepcounts`; the reported terms' cell
rows, `termcells.TermCells.focus`) must be read and written whole on every audit that adds a part: at 10M
rollouts (2,000 steps) ~1.3 CPU s of a warm audit for one new step's worth of rows. Here a cache is a directory
holding chunk files, each the rows of some parts, and `manifest.json` naming them with their parts (and what
else its owner records per chunk). An audit that adds parts writes only a chunk of theirs and a new manifest;
chunks are merged as a binary counter merges (the newest two while the older holds no more parts than the
newer, `merge_count`), so a run of n parts has at most ~log2(n) chunks and each part's rows are rewritten
~log2(n) times over the run's life: O(new parts) per audit, amortised. Chunk files are memory-mapped by their
readers (Arrow IPC, `.npy`): loading costs nothing until rows are used.

Consistency: chunk names are derived from the parts they hold (`chunk_name`), files and manifest are written
under temporary names and renamed (readers see a whole file or none), and a manifest naming a missing or
unreadable chunk, or a part no longer in the run, is no cache at all (its owner rebuilds it from every part).
Chunks no manifest names (merged away, or written by a concurrent audit whose manifest lost the race) are
removed GRACE seconds after they were superseded (`sweep`), so that an audit that read the previous manifest can
still open them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from ..store import write_atomic
from .segments import GRACE

MANIFEST = "manifest.json"


@dataclass
class Chunk:
    name: str  # file name in the cache's directory
    parts: list[str]  # the parts whose rows it holds
    info: dict[str, Any] = field(default_factory=dict)  # what its owner records with it (e.g. its columns)


def load(directory: Path, key: str, parts: set[str]) -> tuple[list[Chunk], dict[str, Any]] | None:
    """The chunks and the manifest's own `info`; None when there is no manifest, it is unreadable or of another
    `key` (layout, vocabulary), a chunk's file is missing, or a chunk holds a part not among `parts` (its rows
    would count a part that has left the run)."""
    try:
        doc = json.loads((directory / MANIFEST).read_text())
        if doc.get("key") != key:
            return None
        chunks = [Chunk(c["name"], list(c["parts"]), dict(c.get("info", {}))) for c in doc["chunks"]]
        info = dict(doc.get("info", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    held = [p for c in chunks for p in c.parts]
    if len(held) != len(set(held)) or not set(held) <= parts:
        return None
    if any(not (directory / c.name).is_file() for c in chunks):
        return None
    return chunks, info


def chunk_name(key: str, parts: list[str], suffix: str) -> str:
    """A chunk's file name: a hash of the cache's key and its parts (two audits writing the same parts' rows
    write the same name, with rows that count the same)."""
    h = hashlib.sha1("\n".join([key, *sorted(parts)]).encode()).hexdigest()[:20]
    return f"c-{h}{suffix}"


def save(directory: Path, key: str, chunks: list[Chunk], info: dict[str, Any] | None = None,
         superseded: list[Chunk] = ()) -> bool:
    """Write the manifest naming `chunks` (their files already written), mark the `superseded` chunks' files
    (merged into others) for removal and sweep those superseded long enough ago."""
    doc = {"key": key, "info": info or {}, "chunks": [{"name": c.name, "parts": c.parts, "info": c.info}
                                                      for c in chunks]}
    ok = write_atomic(directory / MANIFEST, lambda p: p.write_text(json.dumps(doc)))
    if ok:
        now = time.time()
        for c in superseded:
            if c.name not in {k.name for k in chunks}:
                with contextlib.suppress(OSError):
                    os.utime(directory / c.name, (now, now))  # superseded now: removed after GRACE
        sweep(directory, {c.name for c in chunks})
    return ok


def sweep(directory: Path, named: set[str]) -> None:
    """Remove the files of `directory` no manifest names (but the manifest and writers' temporary dot files)
    that were last written or superseded more than GRACE seconds ago."""
    now = time.time()
    with contextlib.suppress(OSError):
        for f in directory.iterdir():
            if f.name == MANIFEST or f.name.startswith(".") or f.name in named:
                continue
            with contextlib.suppress(OSError):
                if now - f.stat().st_mtime > GRACE:
                    f.unlink()


def merge_count(chunks: list[Chunk], full: Callable[[Chunk], bool] = lambda c: False) -> int:
    """How many of the newest chunks to merge into one (0: none): as a binary counter carries, the newest two
    while the older holds no more parts than the newer (with the merged chunk then the newest), and is not
    `full` (an owner whose chunks grow with something else than parts, e.g. a run's steps, bounds them so)."""
    sizes = [len(c.parts) for c in chunks]
    k = 1
    while k < len(sizes) and not full(chunks[-k - 1]) and sizes[-k - 1] <= sum(sizes[-k:]):
        k += 1
    return k if k > 1 else 0


def release(arr: Any) -> None:
    """Drop the pages of a memory-mapped chunk (`arr`: an `np.memmap` or a view of one) from this process; they
    stay in the page cache, and a later read maps them back. What a reader of a whole run's chunks calls once it
    has summed one, so that its resident memory is one chunk, not the run (a no-op for arrays in memory)."""
    import mmap

    import numpy as np

    base = arr
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    mm = getattr(base, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            mm.madvise(mmap.MADV_DONTNEED)


def append(directory: Path, key: str, listed: list[Chunk], held: list[Any], parts: list[str], rows: Any,
           concat: Callable[[list[Any]], Any], write: Callable[[list[str], Any], Chunk | None],
           info: dict[str, Any] | None = None, former: Path | None = None,
           full: Callable[[Chunk], bool] = lambda c: False) -> list[Chunk] | None:
    """Add a chunk of `rows` (those of the parts `parts`) after the chunks `listed` (whose rows are `held`, in
    the same order), merged with the newest as `merge_count` says (`concat` joins rows; `write(parts, rows)`
    writes a chunk file and describes it, None where it could not), and write the manifest naming them all.
    Returns the chunks the manifest now names (the first of `listed` kept as they were, then the new one), or
    None where a chunk or the manifest could not be written: the cache is then as it was. `former`: the file of
    a layout before chunks, removed once a cache built anew (`listed` empty) is saved."""
    k = merge_count(listed + [Chunk("", parts)], full)
    cut = len(listed) - k + 1 if k else len(listed)
    superseded, kept = listed[cut:], listed[:cut]
    if superseded:
        parts = [p for c in superseded for p in c.parts] + parts
        rows = concat(held[cut:] + [rows])
    chunk = write(parts, rows)
    if chunk is None or not save(directory, key, kept + [chunk], info, superseded=superseded):
        return None
    if not listed and former is not None:
        with contextlib.suppress(OSError):
            former.unlink(missing_ok=True)
    return kept + [chunk]


def load_tables(directory: Path, key: str, parts: set[str], schema: pa.Schema
                ) -> tuple[list[Chunk], list[pa.Table], dict[str, Any]]:
    """A cache of Arrow tables kept by `append_table`: its chunks, their rows (memory-mapped, in the chunks'
    order) and the manifest's `info`; all empty when `load` finds no usable cache, a chunk is unreadable or of
    another schema, or the `terms` a cache of per-term rows records are not a list of integers (the owner then
    computes every part anew)."""
    loaded = load(directory, key, parts)
    if loaded is None:
        return [], [], {}
    listed, info = loaded
    terms = info.get("terms", [])
    if not listed or not isinstance(terms, list) or not all(isinstance(t, int) for t in terms):
        return [], [], {}
    try:
        tables = [pa.ipc.open_file(pa.memory_map(str(directory / c.name))).read_all() for c in listed]
    except (OSError, ValueError, pa.ArrowException):
        return [], [], {}
    if any(t.schema != schema for t in tables):
        return [], [], {}
    return listed, tables, info


def append_table(directory: Path, key: str, listed: list[Chunk], held: list[pa.Table], parts: list[str],
                 rows: pa.Table, schema: pa.Schema, info: dict[str, Any] | None = None,
                 former: Path | None = None) -> None:
    """`append` for a cache of Arrow tables (`load_tables` reads it): each chunk an Arrow IPC file, named from
    the key, the manifest's `info` and the chunk's parts."""
    directory.mkdir(parents=True, exist_ok=True)

    def write(names: list[str], table: pa.Table) -> Chunk | None:
        name = chunk_name(key + json.dumps(info or {}, sort_keys=True), names, ".arrow")

        def write_ipc(tmp: Path) -> None:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
                w.write_table(table)

        return Chunk(name, list(names)) if write_atomic(directory / name, write_ipc) else None

    append(directory, key, listed, held, parts, rows.cast(schema), pa.concat_tables, write, info, former)
