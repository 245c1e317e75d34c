"""Per-part sums of every term's cell counts, per (step, split, task, condition): what `emerging`'s window
statistics add up, kept per run so that a warm audit reads a few thousand numbers per window step instead of
every (cell, term) row of the window.

Why: the window statistics (`emerging._window_sums`) sum, per term, window and stratum, over the clusters (a
prompt within a window) the counts x of rollouts containing the term, their squares and their products with the
cluster's rollouts n, and, over the clusters whose prompt holds the term, n, n^2 and their number. Done in SQL
over the window parts' cell tables, that joined ~21M (cell, term) rows and ~13M (prompt, term) rows twice per
audit at 10M rollouts (~2.9 CPU s; the windows are capped at 250,000 rollouts, but the terms that pass the trend
screen grow with the run: 608 answer terms at 10M against 168 at 1M). Almost every cluster is one cell (a prompt
seen in one step of the window; after thinning, all of them at 10M), and for those the sums are sums over
cells, which add up per (step, split, task, condition) whatever the window: so each part's cells are summed
once per term and key (`part_sums`: six integers per (key, term): sx, sxx, sxn over the cells, pn, pnn, pg over
the cells whose prompt holds the term; n is the rollouts with reasoning for a reasoning term), and the window
sums are sums of those rows over the window's keys, plus an exact correction for the few clusters of several
cells (`emerging._window_sums`). Integer sums: the same values in any order.

A part's sums are computed from its cell tables the first time a window holds one of its steps, and cached per
run beside the cell tables (`window_sums/`) in chunks (`chunks`: one `.npy` matrix per chunk, memory-mapped,
rows [key, term id, sx, sxx, sxn, pn, pnn, pg] part after part, each part's keys and row range in the
manifest). A warm audit computes the new step's part (and any window part not yet summed) and writes a chunk of
those: O(new parts). The cache's key is the vocabulary's term ids per `where` (another vocabulary's sums are
never read); a part that left the run, a torn or missing chunk voids it (what is needed is computed again).
Stores keeping derived data in memory compute the window parts' sums on each audit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import kernels
from ..memory import in_order, workers
from ..store import write_atomic
from . import chunks

VERSION = 1
#: the sums of a row, after its key index and term id
FIELDS = ("sx", "sxx", "sxn", "pn", "pnn", "pg")
#: the columns of the cell tables the sums read
COLUMNS = {"cells": ["cell", "part", "step", "split", "task", "condition", "prompt_key", "n", "n_r"],
           "cellterms": ["cell", "term_id", "x"], "promptterms": ["prompt_key", "term_id"]}
#: rows (or pairs) summed at once: arrays of a few MB, which the allocator reuses
BLOCK = 1 << 19
#: parts read and summed at once (their cell tables held together: ~3 MB a part at 5,000 rollouts), and steps: a
#: batch's dense sums grow with its keys, a few per step, so a batch of parts that hold several steps each
#: (`Store.part_rows`) stops at BATCH_STEPS (16 parts of 17 steps: the 1M-rollout run in 1,000-row files peaked
#: here at 1,266 MB against 1,033 with a part per step)
BATCH_PARTS = 16
BATCH_STEPS = 16
#: what a batch holds while it is summed (`memory.workers`): its cell tables and the dense sums of its keys
#: (FIELDS x keys x terms int64: ~75 MB for 16 parts of 12 keys and a vocabulary of 8,000 terms, at most 24 MB
#: a pass since `DENSE_SLOTS`)
BATCH_MEMORY = 160 << 20
#: parts (or steps: a part may hold several) summed at once above which the compiled pass is used: loading it
#: (~0.1-0.5 CPU s a process) costs more than the numpy path's few parts of a warm audit (~10-20 ms a part)
NUMBA_PARTS = 8
#: (key, term) slots of one pass's dense sums (FIELDS x slots int64: 24 MB) at most: a batch whose keys times the
#: vocabulary's terms exceed it is summed a range of keys at a time, each pass over all of the batch's rows keeping
#: those of its keys. A run with many tasks has hundreds of keys in one part: the demo's 7,680-rollout prime-rl run
#: (644 keys x 6,510 terms) made one 192 MB matrix, fresh pages every time, ~0.5 s of its audit
#: (docs/performance.md, session 49), where its rows make ~0.1M nonzero sums.
DENSE_SLOTS = 1 << 19
#: stands for a NULL split in the keys (a cell of no split is in no scope: SQL's NULL = NULL is not true)
NULL_SPLIT = "\x00null"


@dataclass
class PartSums:
    """One part's sums: `keys` (step, split, task ('' for none), condition) and `rows` (R x 8 integers: key
    index, term id, then `FIELDS`)."""

    keys: list[tuple[int, str, str, str]]
    rows: np.ndarray

    def key_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """Every row's key index and term id (int64): what a reader selects its rows by (`fields`)."""
        return np.asarray(self.rows[:, 0], np.int64), np.asarray(self.rows[:, 1], np.int64)

    def fields(self, rows: np.ndarray) -> np.ndarray:
        """The `FIELDS` (int64) of the rows selected by `rows` (a mask or indices)."""
        return np.asarray(self.rows[rows, 2:], np.int64)


def part_sums(cells: pa.Table, cellterms: pa.Table, promptterms: pa.Table, reasoning: np.ndarray
              ) -> dict[str, PartSums]:
    """The sums of some parts (`part`: a column of `cells`) from their cell tables (`termcells`), per part.
    `reasoning`: per term id, 1 for a reasoning term, 0 for an answer term, -1 for an id outside the vocabulary
    (left out).

    Per (key, term): sx, sxx, sxn = the sums over the part's cells of x, x^2 and x n (x: the cell's rollouts
    containing the term, n: its rollouts, those with reasoning for a reasoning term); pn, pnn, pg = the sums of
    n, n^2 and 1 over the cells with n > 0 whose prompt holds the term (each (prompt, term) once: a prompt's
    terms are those of its text, `prompt_key` a hash of it, so one part's list of them is every part's). A cell
    belongs to one part (parts that share a step may hold the same cell: those are not summed here)."""
    cell = np.asarray(cells["cell"].to_numpy(), np.uint64)
    split = pc.fill_null(cells["split"].cast(pa.string()), NULL_SPLIT).to_pylist()
    task = pc.fill_null(cells["task"].cast(pa.string()), "").to_pylist()
    part = cells["part"].to_pylist()
    key_of: dict[tuple[str, tuple[int, str, str, str]], int] = {}
    cell_key = np.array([key_of.setdefault((p, tuple(k)), len(key_of)) for p, *k in zip(
        part, cells["step"].to_pylist(), split, task, cells["condition"].to_pylist())], np.int64)
    numba = kernels.use_numba() and max(len(set(part)), pc.count_distinct(cells["step"]).as_py()) > NUMBA_PARTS
    width = len(reasoning)
    layout = _KeyLayout.of(key_of)
    span = max(1, DENSE_SLOTS // max(width, 1))  # keys summed in one pass (`DENSE_SLOTS`)
    found = []
    # one buffer for every pass, zeroed again after the first: a new one per pass would be fresh pages each time.
    # Made by np.zeros (calloc): a page no sum touches is never written, nor faulted in
    buffer = np.zeros(len(FIELDS) * min(span, max(len(key_of), 1)) * width, np.int64) if numba else None
    batch = _NumbaBatch.of(cell, cell_key, cells, reasoning) if numba else None  # once for every pass
    for lo in range(0, max(len(key_of), 1), span):
        keys = (lo, min(len(key_of), lo + span))
        out = _sums_numba(batch, keys, cellterms, promptterms, buffer) if batch is not None else None
        if out is None:
            out = _sums_numpy(cell, cell_key, keys, cells, cellterms, promptterms, reasoning)
        found.append(_by_part(out, layout, width, lo))
    if len(found) == 1:
        return found[0]
    return {p: PartSums(found[0][p].keys, np.concatenate([f[p].rows for f in found])) for p in found[0]}


@dataclass
class _NumbaBatch:
    """What every pass of the compiled sums reads of a batch's cells, made once per batch: the cells sorted (and
    where each came from), their keys, rollouts `n` and `n_r`, the prompts sorted (and where each came from), and
    each term id's place (`reasoning`), all as the kernels take them."""

    cell_sorted: np.ndarray
    cell_order: np.ndarray
    cell_key: np.ndarray
    n: np.ndarray
    n_r: np.ndarray
    prompts_sorted: np.ndarray
    prompt_order: np.ndarray
    reasoning: np.ndarray

    @classmethod
    def of(cls, cell: np.ndarray, cell_key: np.ndarray, cells: pa.Table, reasoning: np.ndarray) -> _NumbaBatch:
        c = np.ascontiguousarray
        order = np.argsort(cell, kind="stable")
        prompts = np.asarray(cells["prompt_key"].to_numpy(), np.uint64)
        porder = np.argsort(prompts, kind="stable")
        n, n_r = (c(np.asarray(cells[name].to_numpy(), np.int64)) for name in ("n", "n_r"))
        return cls(c(cell[order]), c(order.astype(np.int64)), c(cell_key), n, n_r, c(prompts[porder]),
                   c(porder.astype(np.int64)), c(reasoning.astype(np.int64)))


def _sums_numba(batch: _NumbaBatch, keys: tuple[int, int], cellterms: pa.Table, promptterms: pa.Table,
                buffer: np.ndarray | None = None) -> np.ndarray | None:
    """`part_sums`' sums of the keys in [keys[0], keys[1]) in one compiled pass over the rows, chunk by chunk of
    the Arrow tables (their numpy views: no copy of the whole columns, which cost more than the sums): FIELDS x
    (key - keys[0], term), in `buffer`'s first elements where given (int64, large enough; zeroed here unless this
    is the first pass, keys[0] = 0: then it must be zeros); None where the input is not as the kernel expects (a
    prompt's terms unsorted or repeated: the numpy path sorts them)."""
    c = np.ascontiguousarray
    k = compiled()
    b = batch
    width = len(b.reasoning)
    lo, hi = keys
    size = len(FIELDS) * (hi - lo) * width
    if buffer is None:
        out = np.zeros((len(FIELDS), (hi - lo) * width), np.int64)
    else:
        out = buffer[:size].reshape(len(FIELDS), (hi - lo) * width)
        if lo:
            out.fill(0)

    def chunks_of(t: pa.Table, names: list[str], dtypes: list[Any]):
        t = t.select(names)
        for chunk in t.to_batches():
            yield [c(np.asarray(chunk.column(i).to_numpy(zero_copy_only=False), d)) for i, d in enumerate(dtypes)]

    for ct_cell, ct_term, ct_x in chunks_of(cellterms, ["cell", "term_id", "x"], [np.uint64, np.int32, np.int32]):
        if k.cell_sums(b.cell_sorted, b.cell_order, b.cell_key, lo, hi, b.n, b.n_r, ct_cell, ct_term, ct_x,
                       b.reasoning, width, out):
            raise ValueError("window sums: a cell term row names a cell missing from the parts' cells")
    done = np.zeros(len(b.prompts_sorted), np.bool_)
    state = np.array([0, 0, -1], np.int64)  # across chunks: the last prompt key (its bits), its last term, whether active
    for pk, pt in chunks_of(promptterms, ["prompt_key", "term_id"], [np.uint64, np.int32]):
        status = k.prompt_sums(b.prompts_sorted, b.prompt_order, b.cell_key, lo, hi, b.n, b.n_r, pk, pt,
                               b.reasoning, width, out, done, state)
        if status == 2:
            return None
    return out


def _sums_numpy(cell: np.ndarray, cell_key: np.ndarray, keys: tuple[int, int], cells: pa.Table,
                cellterms: pa.Table, promptterms: pa.Table, reasoning: np.ndarray) -> np.ndarray:
    """`part_sums`' sums of the keys in [keys[0], keys[1]) in numpy (the reference, and the path without numba):
    FIELDS x (key - keys[0], term)."""
    lo, hi = keys
    key_of = range(lo, hi)
    n = np.asarray(cells["n"].to_numpy(), np.int64)
    n_r = np.asarray(cells["n_r"].to_numpy(), np.int64)
    width = len(reasoning)
    space = len(key_of) * width
    order = np.argsort(cell, kind="stable")
    sorted_cell = cell[order]
    if len(cell) > 1 and np.any(sorted_cell[1:] == sorted_cell[:-1]):
        raise ValueError("window sums: a cell held by two parts (a shared step)")
    is_r = np.tile(reasoning == 1, len(key_of))  # per (key, term) code: a reasoning term's n is n_r
    acc = np.zeros((10, space))  # sx, sxx, sxn with n, with n_r, then (pn, pnn, pg) x (n, n_r) interleaved

    def sums(row: int, code: np.ndarray, weights: np.ndarray | None) -> None:
        acc[row] += np.bincount(code, weights=weights, minlength=space)

    def codes(key: np.ndarray, lengths: np.ndarray, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(code, kept) of the rows of runs (one key and `lengths` rows each; the rows' `terms`): the code
        (key - lo) * width + term of the rows whose key is in [lo, hi), and which rows those are."""
        kept = np.repeat((key >= lo) & (key < hi), lengths)
        code = np.repeat((key - lo) * width, lengths)
        code += terms
        return code[kept], kept

    # (cell, term) counts, in blocks of BLOCK rows: arrays of a few MB are reused by the allocator, where a
    # whole batch's (tens of MB each) are fresh pages every time (page faults cost more than the sums). A
    # part's rows of one cell are consecutive: each run looked up once; no masks: n and n_r both summed, the
    # term's own taken after
    ct_cell = np.asarray(cellterms["cell"].to_numpy(), np.uint64)
    term = np.asarray(cellterms["term_id"].to_numpy(), np.int64)
    x_all = np.asarray(cellterms["x"].to_numpy(), np.int64)
    if len(term) and (term.min() < 0 or term.max() >= width):  # ids outside the vocabulary count for none
        inside = (term >= 0) & (term < width)
        ct_cell, term, x_all = ct_cell[inside], term[inside], x_all[inside]
    for at in range(0, len(ct_cell), BLOCK):
        c = ct_cell[at:at + BLOCK]
        heads = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        lengths = np.diff(np.r_[heads, len(c)])
        pos = np.minimum(np.searchsorted(sorted_cell, c[heads]), max(len(cell) - 1, 0))
        if not len(cell) or not np.array_equal(sorted_cell[pos], c[heads]):
            raise ValueError("window sums: a cell term row names a cell missing from the parts' cells")
        hc = order[pos]
        code, kept = codes(cell_key[hc], lengths, term[at:at + BLOCK])
        x = x_all[at:at + BLOCK].astype(np.float64)[kept]
        sums(0, code, x)
        sums(1, code, x * x)
        sums(2, code, x * np.repeat(n[hc], lengths)[kept])
        sums(3, code, x * np.repeat(n_r[hc], lengths)[kept])
    # the cells whose prompt holds a term: each cell paired with its prompt's terms, taken from the first run of
    # rows of that prompt (a part's rows of one prompt are consecutive, its terms sorted and distinct: checked)
    pk = np.asarray(promptterms["prompt_key"].to_numpy(), np.uint64)
    pt = np.asarray(promptterms["term_id"].to_numpy(), np.int64)
    if len(pt) and (pt.min() < 0 or pt.max() >= width):
        inside = (pt >= 0) & (pt < width)
        pk, pt = pk[inside], pt[inside]
    if len(pk) and len(cell):
        starts = np.flatnonzero(np.r_[True, pk[1:] != pk[:-1]])
        if np.any(np.diff(pt)[np.diff(pk) == 0] <= 0):
            # a prompt's terms unsorted or repeated: sorted, each (prompt, term) once
            po = np.lexsort((pt, pk))
            pk, pt = pk[po], pt[po]
            first = np.r_[True, (pk[1:] != pk[:-1]) | (pt[1:] != pt[:-1])]
            pk, pt = pk[first], pt[first]
            starts = np.flatnonzero(np.r_[True, pk[1:] != pk[:-1]])
        ends = np.r_[starts[1:], len(pk)]
        run_keys, first_run = np.unique(pk[starts], return_index=True)
        lo_run, len_run = starts[first_run], (ends - starts)[first_run]
        cell_prompt = np.asarray(cells["prompt_key"].to_numpy(), np.uint64)
        at = np.minimum(np.searchsorted(run_keys, cell_prompt), len(run_keys) - 1)
        length = np.where(run_keys[at] == cell_prompt, len_run[at], 0)
        # cells in blocks of about BLOCK pairs
        bounds = np.searchsorted(np.cumsum(length), np.arange(BLOCK, int(length.sum()) + BLOCK, BLOCK), "right")
        for a, b in zip(np.r_[0, bounds[:-1]], bounds):
            ln = length[a:b]
            total = int(ln.sum())
            if not total:
                continue
            shift = np.repeat(lo_run[at[a:b]] - (np.cumsum(ln) - ln), ln)
            shift += np.arange(total)
            code, kept = codes(cell_key[a:b], ln, pt[shift])
            for row, nc in ((4, n[a:b]), (5, n_r[a:b])):
                w = np.repeat(nc.astype(np.float64), ln)[kept]
                sums(row, code, w)
                sums(row + 2, code, w * w)
                sums(row + 4, code, (w > 0).astype(np.float64))
    out = np.stack([acc[0], acc[1], np.where(is_r, acc[3], acc[2]), np.where(is_r, acc[5], acc[4]),
                    np.where(is_r, acc[7], acc[6]), np.where(is_r, acc[9], acc[8])]).astype(np.int64)
    out[:, np.tile(reasoning < 0, len(key_of))] = 0  # ids outside the vocabulary
    return out


@dataclass
class _KeyLayout:
    """Where each key of a batch goes: its part's position (`part_of`), that part's keys in index order
    (`keys`), and per key index its part (`key_part`) and its index among its part's keys (`local`)."""

    part_of: dict[str, int]
    keys: list[list[tuple[int, str, str, str]]]
    key_part: np.ndarray
    local: np.ndarray

    @classmethod
    def of(cls, key_of: dict[tuple[str, tuple[int, str, str, str]], int]) -> _KeyLayout:
        part_of: dict[str, int] = {}
        keys: list[list[tuple[int, str, str, str]]] = []
        key_part = np.empty(len(key_of), np.int64)
        local = np.empty(len(key_of), np.int64)
        for (p, k), i in sorted(key_of.items(), key=lambda item: item[1]):
            j = part_of.setdefault(p, len(part_of))
            if j == len(keys):
                keys.append([])
            key_part[i], local[i] = j, len(keys[j])
            keys[j].append(k)
        return cls(part_of, keys, key_part, local)


def _by_part(out: np.ndarray, layout: _KeyLayout, width: int, lo: int = 0) -> dict[str, PartSums]:
    """The nonzero (key, term) rows of `out` (FIELDS x (key - lo, term): the sums of keys from `lo` on), per part
    of the batch (every part, with no rows where none of its keys is in `out`), in (key, term) order. The
    nonzero codes are found once for the batch and each part's rows are a range of them (sorted by part where
    its keys are not numbered part by part). A copy of every part's (fields x keys x terms) block and a scan of
    it cost ~1.1 CPU s of the 3,906-step run's ~1.7 here."""
    some = out[0] != 0
    for f in range(1, len(FIELDS)):
        some |= out[f] != 0
    code = np.flatnonzero(some)  # (key - lo) * width + term, increasing
    key = code // width + lo
    part = layout.key_part[key]
    if len(part) > 1 and bool((part[1:] < part[:-1]).any()):  # (the keys are usually numbered part by part)
        order = np.argsort(part, kind="stable")
        code, key, part = code[order], key[order], part[order]
    rows = np.empty((len(code), 2 + len(FIELDS)), np.int64)
    rows[:, 0] = layout.local[key]
    rows[:, 1] = code % width
    rows[:, 2:] = out[:, code].T
    bounds = np.searchsorted(part, np.arange(len(layout.part_of) + 1))
    return {p: PartSums(layout.keys[i], rows[bounds[i]:bounds[i + 1]]) for p, i in layout.part_of.items()}


def window_sums(parts: list[tuple[str, dict[str, Any]]], wanted: set[str], vocab: pa.Table, read,
                cache: Path | None, steps_of: dict[str, int] | None = None) -> list[PartSums]:
    """The sums of the parts named in `wanted` (of `parts`: (name, cell table entries)), from the cache where it
    holds them, else computed (`read(names)`: those parts' three cell tables, `COLUMNS`, in one read) and added
    to the cache as a chunk of their own. `cache`: the run's cache directory (None: nothing cached).
    `steps_of`: the steps each part spans (default 1), which bound a batch (`BATCH_STEPS`)."""
    reasoning = _reasoning(vocab)
    key = _key(vocab)
    names = {name for name, _ in parts}
    held = _load(cache, key, names) if cache is not None else None
    listed, blocks = held if held is not None else ([], [])
    have: dict[str, PartSums] = {}
    for c, arr in zip(listed, blocks):
        for i, p in enumerate(c.parts):
            if p in wanted:
                have[p] = _InChunk(c.info, arr, i)
    new = [name for name, _ in parts if name in wanted and name not in have]
    # a cold audit's ~80-100 window parts, in batches (memory bounded by a batch per thread), by
    # `memory.workers` threads: `read` must be thread-safe (the reads, kernels and numpy release the GIL; one
    # thread left a core idle for ~0.7 s of a cold 1M audit)
    batches: list[list[str]] = []
    steps = 0
    for name in new:
        span = max(1, (steps_of or {}).get(name, 1))
        if not batches or len(batches[-1]) >= BATCH_PARTS or steps + span > BATCH_STEPS:
            batches.append([])
            steps = 0
        batches[-1].append(name)
        steps += span
    n = min(len(batches), workers(BATCH_MEMORY))
    empty = PartSums([], np.zeros((0, 2 + len(FIELDS)), np.int64))
    # each batch's sums added to the cache as they come and then read from its mapped chunk: held in memory, a
    # cold audit's window parts' sums grew with the window's steps (15,625 steps of 64 rollouts: ~1 GB)
    for batch, sums in zip(batches, in_order(lambda names: part_sums(*read(set(names)), reasoning), batches, n,
                                             "windowsums")):
        fresh = [(name, sums.get(name, empty)) for name in batch]
        added = None
        if cache is not None:
            added = chunks.append(cache, key, listed, blocks, batch, _stack([s for _, s in fresh]),
                                  lambda pieces: _concat(pieces, listed, blocks),
                                  lambda names_, stacked: _write(cache, key, names_, stacked), full=_full)
        if added is None:  # nothing cached, or it could not be written: held
            have.update(fresh)
            continue
        listed, blocks = added, blocks[:len(added) - 1] + [_map(cache, added[-1])]
        for c, arr in zip(listed, blocks):  # a merge may have moved parts read before into the new chunk
            for i, p in enumerate(c.parts):
                if p in wanted:
                    have[p] = _InChunk(c.info, arr, i)
    return [have[name] for name, _ in parts if name in wanted]


#: rows of a chunk above which later chunks are not merged into it (`chunks.merge_count`): a cold audit's
#: window parts are cached a batch at a time, and merging them all back into one would hold them all again. A
#: merge writes its chunks' rows again: with 1M rows, a cold audit of 3,906 steps of 256 rollouts (27 batches of
#: ~285,000 rows) wrote each row 2-3 times; at 256K rows each batch is a chunk of its own: emerging alone, cold
#: window sums, three pairs, 5.71-5.87 -> 5.06-5.12 s (7.30-7.43 -> 6.34-6.42 CPU s), the 1M benchmark's 200
#: steps 1.77-1.94 -> 1.63-1.75 s (the same five chunks)
FULL_ROWS = 1 << 18


def _full(c: chunks.Chunk) -> bool:
    ranges = c.info.get("ranges")
    return bool(ranges) and ranges[-1][1] >= FULL_ROWS


class _InChunk(PartSums):
    """The `i`-th part's sums of a stack (`info`: its keys and per-part ranges, as `_Stacked` and a chunk's
    manifest entry hold them; `arr`: its rows, a chunk's memory-mapped matrix or a stack in memory), copied out
    as int64, its key indices made the part's own, each time `rows` is read (a chunk is mapped read-only, and a
    stack in memory is not changed): a reader of many parts holds one part's copy at a time (`release` drops the
    mapped pages after)."""

    def __init__(self, info: dict[str, Any], arr: np.ndarray, i: int):
        lo, hi, k0, k1 = info["ranges"][i]
        self.keys = [tuple(k) for k in info["keys"][k0:k1]]
        self._at = (arr, lo, hi, k0)

    @property
    def rows(self) -> np.ndarray:  # type: ignore[override]
        arr, lo, hi, k0 = self._at
        rows = np.array(arr[lo:hi], np.int64)
        rows[:, 0] -= k0
        return rows

    def key_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """As `PartSums.key_terms`, read from the chunk's two columns only (a window thinned over many steps
        uses a few of a part's keys: the other six columns of the rest are never copied)."""
        arr, lo, hi, k0 = self._at
        return arr[lo:hi, 0].astype(np.int64) - k0, arr[lo:hi, 1].astype(np.int64)

    def fields(self, rows: np.ndarray) -> np.ndarray:
        arr, lo, hi, _ = self._at
        return np.asarray(arr[lo:hi][rows, 2:], np.int64)


def release(sums: list[PartSums]) -> None:
    """Drop the mapped pages of the chunks holding `sums` from this process (`chunks.release`): once summed, a
    run's window sums need not stay resident (at 39,062 steps of 256 rollouts a warm audit's window parts mapped
    1.3 GB as it summed them). A later read maps them back."""
    for arr in {id(s._at[0]): s._at[0] for s in sums if isinstance(s, _InChunk)}.values():
        chunks.release(arr)


def _reasoning(vocab: pa.Table) -> np.ndarray:
    ids = np.asarray(vocab["term_id"].to_numpy(), np.int64)
    out = np.full(int(ids.max(initial=-1)) + 1, -1, np.int64)
    out[ids] = np.asarray(pc.equal(vocab["where"], "reasoning").to_numpy(zero_copy_only=False), np.int64)
    return out


def _key(vocab: pa.Table) -> str:
    """The cache's key: its layout's version and the vocabulary's term ids per `where`."""
    h = hashlib.sha1()
    for w, ids in zip(vocab["where"].to_pylist(), vocab["term_id"].to_pylist()):
        h.update(f"{w}\0{ids}\n".encode())
    return f"v{VERSION}-{h.hexdigest()[:20]}"


@dataclass
class _Stacked:
    """Several parts' sums in one matrix, as a chunk holds them: keys of all, rows part after part, per part
    (row from, row to, key from, key to)."""

    keys: list[tuple[int, str, str, str]]
    rows: np.ndarray
    ranges: list[list[int]]


def _stack(sums: list[PartSums]) -> _Stacked:
    """The parts' sums in one matrix, as a chunk holds them: each part's key indices offset by the keys before
    it, in the smallest integer type that holds every value (`_dtype`), written into the matrix directly. (Copied
    per part as int64, concatenated, then narrowed for the file: at 3,906 steps of 256 rollouts the window parts'
    sums are 7.7M rows, ~470 MB as int64, and those copies put emerging's peak RSS at ~2 GB.)"""
    keys: list[tuple[int, str, str, str]] = []
    ranges = []
    n_keys = sum(len(s.keys) for s in sums)
    rows = [s.rows for s in sums]  # once: a chunk's part (`_InChunk`) makes a copy each time
    low = min((int(r.min()) for r in rows if r.size), default=0)
    high = max([n_keys - 1] + [int(r.max()) for r in rows if r.size])
    out = np.empty((sum(len(r) for r in rows), 2 + len(FIELDS)), _dtype(low, high))
    at = 0
    for s, r in zip(sums, rows):
        n = len(r)
        out[at:at + n] = r
        out[at:at + n, 0] += len(keys)
        ranges.append([at, at + n, len(keys), len(keys) + len(s.keys)])
        keys += s.keys
        at += n
    return _Stacked(keys, out, ranges)


def _dtype(low: int, high: int) -> type:
    """The smallest of uint16, int32 and int64 holding `low`..`high` (at 5,000 rollouts a step, 16 bits: ~8,600
    rows, 140 kB a part)."""
    return np.uint16 if 0 <= low and high < 2 ** 16 else np.int32 if -2 ** 31 <= low and high < 2 ** 31 else np.int64


def _concat(pieces: list[Any], listed: list[chunks.Chunk], blocks: list[np.ndarray]) -> _Stacked:
    """One stack of chunks' rows (`pieces`: mapped chunk matrices, then the new parts' stack)."""
    out: list[PartSums] = []
    for piece in pieces:
        if isinstance(piece, _Stacked):
            info = {"keys": piece.keys, "ranges": piece.ranges}
            arr = piece.rows
        else:
            c = listed[next(i for i, b in enumerate(blocks) if b is piece)]
            info, arr = c.info, piece
        out += [_InChunk(info, arr, i) for i in range(len(info["ranges"]))]
    return _stack(out)


def _write(directory: Path, key: str, parts: list[str], stacked: _Stacked) -> chunks.Chunk | None:
    """Write a chunk of the parts `parts` (their rows `stacked`) and describe it (None where it could not be)."""
    name = chunks.chunk_name(key, parts, ".npy")
    arr = stacked.rows  # in the smallest type that holds them (`_stack`)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    if not write_atomic(directory / name, write):
        return None
    return chunks.Chunk(name, list(parts), {"keys": [list(k) for k in stacked.keys], "ranges": stacked.ranges})


def _load(directory: Path, key: str, parts: set[str]) -> tuple[list[chunks.Chunk], list[np.ndarray]] | None:
    """The cached chunks and their matrices (memory-mapped); None when there is no cache, it is of another
    vocabulary, holds a part no longer in the run, or a chunk is torn."""
    held = chunks.load(directory, key, parts)
    if held is None:
        return None
    try:
        blocks = [_map(directory, c) for c in held[0]]
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError):
        return None
    return held[0], blocks


def _map(directory: Path, c: chunks.Chunk) -> np.ndarray:
    """A chunk's matrix, memory-mapped, checked against its manifest entry."""
    arr = np.load(directory / c.name, mmap_mode="r", allow_pickle=False)
    ranges, keys = c.info["ranges"], c.info["keys"]
    if arr.ndim != 2 or arr.shape[1] != 2 + len(FIELDS) or len(ranges) != len(c.parts) or (
            ranges and (ranges[-1][1] != len(arr) or ranges[-1][3] != len(keys))):
        raise ValueError("window sums: a chunk's shape does not match its manifest")
    return arr


# ---------------------------------------------------------------------------------------------------------------
# Kernel source: plain Python over numpy arrays, compiled by `compiled()`.

def _cell_sums(cell_sorted, cell_order, cell_key, key_lo, key_hi, n, n_r, ct_cell, ct_term, ct_x, reasoning,
               width, out):
    """sx, sxx, sxn of some (cell, term) rows into `out`, of the cells whose key is in [key_lo, key_hi) (at
    (key - key_lo) * width + term); a run of one cell's rows looked up once (binary search in the sorted cells).
    Returns 0, or 1 (a cell that is not there)."""
    nt = len(reasoning)
    nc_cells = len(cell_sorted)
    ci = -1
    base = 0
    skip = False
    for i in range(len(ct_cell)):
        c = ct_cell[i]
        if i == 0 or c != ct_cell[i - 1]:
            j = np.searchsorted(cell_sorted, c)
            if j >= nc_cells or cell_sorted[j] != c:
                return 1
            ci = cell_order[j]
            skip = cell_key[ci] < key_lo or cell_key[ci] >= key_hi
            base = (cell_key[ci] - key_lo) * width
        if skip:
            continue
        t = ct_term[i]
        if t < 0 or t >= nt:  # outside the vocabulary: counts for none
            continue
        r = reasoning[t]
        if r < 0:
            continue
        nc = n_r[ci] if r == 1 else n[ci]
        x = np.int64(ct_x[i])
        k = base + t
        out[0, k] += x
        out[1, k] += x * x
        out[2, k] += x * nc
    return 0


def _prompt_sums(prompt_sorted, prompt_order, cell_key, key_lo, key_hi, n, n_r, pk, pt, reasoning, width, out,
                 done, state):
    """pn, pnn, pg of some (prompt, term) rows into `out`, of the cells whose key is in [key_lo, key_hi) (at
    (key - key_lo) * width + term): each prompt's first run of rows paired with every cell of that prompt
    (`done`: the prompts paired). `state` carries a run across chunks (the last key's bits,
    its last term, 1 where that run is being paired). Returns 0, or 2 (a prompt's terms not strictly increasing:
    the numpy path)."""
    nt = len(reasoning)
    m = len(pk)
    i = 0
    while i < m:
        key = pk[i]
        j = i + 1
        while j < m and pk[j] == key:
            if pt[j] <= pt[j - 1]:
                return 2
            j += 1
        if i == 0 and np.int64(key) == state[0] and state[2] >= 0:
            # the run goes on from the last chunk: paired if that part of it was
            if pt[0] <= state[1]:
                return 2
            active = state[2] == 1
        else:
            a = np.searchsorted(prompt_sorted, key)
            active = a < len(prompt_sorted) and prompt_sorted[a] == key and not done[a]
        a = np.searchsorted(prompt_sorted, key)
        if active:
            b = a
            while b < len(prompt_sorted) and prompt_sorted[b] == key:
                done[b] = True
                b += 1
            for q in range(a, b):
                cq = prompt_order[q]
                if cell_key[cq] < key_lo or cell_key[cq] >= key_hi:
                    continue
                base = (cell_key[cq] - key_lo) * width
                for u in range(i, j):
                    t = pt[u]
                    if t < 0 or t >= nt:
                        continue
                    r = reasoning[t]
                    if r < 0:
                        continue
                    nc = n_r[cq] if r == 1 else n[cq]
                    if nc > 0:
                        k = base + t
                        out[3, k] += nc
                        out[4, k] += nc * nc
                        out[5, k] += 1
        state[0] = np.int64(key)
        state[1] = pt[j - 1]
        state[2] = 1 if active else 0
        i = j
    return 0


def _build() -> SimpleNamespace:
    """The window-sums kernel, compiled (see `kernels.Compiled`)."""
    import numba

    t = numba.types

    def ro(dtype: Any) -> Any:
        return t.Array(dtype, 1, "C", readonly=True)

    u64, i64, i32 = ro(t.uint64), ro(t.int64), ro(t.int32)
    out = t.Array(t.int64, 2, "C")
    return SimpleNamespace(
        cell_sums=kernels.jit(_cell_sums, t.int64(u64, i64, i64, t.int64, t.int64, i64, i64, u64, i32, i32, i64,
                                                  t.int64, out)),
        prompt_sums=kernels.jit(_prompt_sums, t.int64(u64, i64, i64, t.int64, t.int64, i64, i64, u64, i32, i64,
                                                      t.int64, out, t.Array(t.bool_, 1, "C"),
                                                      t.Array(t.int64, 1, "C"))))


compiled = kernels.Compiled(_build)
