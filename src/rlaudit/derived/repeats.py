"""The prompts that occur in more than one cell of a run, kept per run and grown by the parts added since.

Why: a cluster of the generalization detector's window statistics is a prompt's rollouts within a window
(per condition and stratum), and it holds several cells only where the prompt recurs: at another step, in
another split, or in two parts that share a step. Every other cluster is one cell, so its sums are the cell's
and add up per step (`gensteps`' cluster columns, cached per part); only the recurring prompts' cells need to
be grouped by prompt. Which prompts recur is a question about the whole run, answered here without reading
every part's cells on each audit.

Layout (`chunks`): per chunk of parts one `.npy` array of two rows, the sorted distinct prompt keys of the
chunk's cells and a flag per key: 1 when the key was known to recur when the chunk was written (it occurs in
more than one of the chunk's cells, or it was found in an earlier chunk). The run's recurring prompts are the
union of the flagged keys: a key that recurs across chunks is flagged in the later one. An audit that adds parts
reads their cells' prompt keys only, looks them up in the earlier chunks (binary search, memory-mapped) and
writes a chunk of their own: O(new parts) plus a scan of the flags (~10 MB at 10M rollouts). A part that left
the run or a torn chunk voids the cache (rebuilt from every part's cells); stores that keep derived data in
memory compute it each time.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ..store import write_atomic
from . import chunks
from .termcells import TermCells

VERSION = 1
_KEY = f"repeats-v{VERSION}"


def recurring(cell_parts: TermCells, con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """Sorted uint64 prompt keys that occur in more than one cell (row of a part's `cells`) of the run."""
    names = [name for name, _ in cell_parts.parts]
    d = _cache_dir(cell_parts)
    listed, held = _read(d, set(names)) if d else ([], [])
    have = {p for c in listed for p in c.parts}
    new_parts = [n for n in names if n not in have]
    if new_parts or not listed:
        keys, counts = np.unique(_prompt_keys(cell_parts, con, set(new_parts) if listed else None),
                                 return_counts=True)
        flag = counts > 1
        for arr in held:  # a key already in an earlier chunk recurs
            old = arr[0]
            at = np.searchsorted(old, keys)
            flag |= (at < len(old)) & (old[np.minimum(at, len(old) - 1)] == keys)
        rows = np.stack([keys, flag.astype(np.uint64)]) if len(keys) else np.zeros((2, 0), np.uint64)
        if d:
            _write(d, listed, held, new_parts if listed else names, rows)
        held = held + [rows]
    out = [arr[0][arr[1] == 1] for arr in held]
    return np.unique(np.concatenate(out)) if out else np.zeros(0, np.uint64)


def _prompt_keys(cell_parts: TermCells, con: duckdb.DuckDBPyConnection, only: set[str] | None) -> np.ndarray:
    cell_parts.register(con, "cells", "_rp_cells", only=only)
    keys = con.sql("SELECT prompt_key FROM _rp_cells WHERE prompt_key IS NOT NULL").fetchnumpy()["prompt_key"]
    con.execute("DROP VIEW IF EXISTS _rp_cells")
    return np.asarray(keys, np.uint64)


def _merge(arrays: list[np.ndarray]) -> np.ndarray:
    """Chunks merged: their keys, each flagged when flagged in any or held by more than one."""
    keys = np.concatenate([a[0] for a in arrays])
    flags = np.concatenate([a[1] for a in arrays])
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    flag = np.zeros(len(uniq), np.uint64)
    np.maximum.at(flag, inverse, flags)
    flag[counts > 1] = 1
    return np.stack([uniq, flag]) if len(uniq) else np.zeros((2, 0), np.uint64)


def _cache_dir(cell_parts: TermCells) -> Path | None:
    entries = [p["cells"] for _, p in cell_parts.parts]
    if not entries or any(isinstance(e, pa.Table) for e in entries):
        return None
    return Path(entries[0]).parent / "prompt_repeats"


def _read(d: Path, parts: set[str]) -> tuple[list[chunks.Chunk], list[np.ndarray]]:
    loaded = chunks.load(d, _KEY, parts)
    if loaded is None:
        return [], []
    listed, _ = loaded
    try:
        held = [np.load(d / c.name, mmap_mode="r") for c in listed]
    except (OSError, ValueError):
        return [], []
    if any(a.ndim != 2 or a.shape[0] != 2 or a.dtype != np.uint64 for a in held):
        return [], []
    return listed, held


def _write(d: Path, listed: list[chunks.Chunk], held: list[np.ndarray], parts: list[str], rows: np.ndarray
           ) -> None:
    def write(names: list[str], arr: np.ndarray) -> chunks.Chunk | None:
        name = chunks.chunk_name(_KEY, names, ".npy")

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(arr, np.uint64))

        return chunks.Chunk(name, list(names)) if write_atomic(d / name, save) else None

    chunks.append(d, _KEY, listed, held, parts, rows, _merge, write)
