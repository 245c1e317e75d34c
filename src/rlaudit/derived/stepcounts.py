"""The run's per-step term counts as dense arrays, cached per run and grown by the parts added since.

Every audit's trend screen (`detectors.emerging.candidates`) needs, for every candidate term and every step in
scope, the rollouts containing it (`x`) and those whose prompt holds it (`m`): the per-part count tables of
`tokens.term_sets`, one row per (where, term, step, split). Read through DuckDB they cost O(run) on every warm
audit: at 10M rollouts (2,000 steps) 12M rows, ~1.3 CPU s of Parquet decoding, two joins and the scatter into
numpy, for one new step's worth of new rows. So the rows are summed once into dense arrays, per `where` (terms
in the vocabulary's order) x (step, split) columns, and cached per run beside the term sets
(`rollup/step_counts/`) in chunks (`chunks`): each chunk one `.npy` matrix of the columns of some parts (all
four arrays stacked: answer x, answer m, reasoning x, reasoning m), memory-mapped when read, with its columns'
keys in the manifest. An audit maps the chunks, sums only the count tables of the parts added since into a chunk
of their own and writes that and a new manifest: O(new parts), where loading, growing and writing back one
whole file cost ~1.3 CPU s at 10M rollouts. A part that left the run, a torn chunk or another vocabulary void
the cache (it is rebuilt from every part); stores that keep derived data in memory build the arrays each time.

Counts are integers and parts sharing a step add up, as the SQL sums did: `StepCounts.per_step` equals the
per-step sums, whichever chunks hold the columns. What the trend screen reads of every term is less than that:
its sums over bins of steps and over the windows' steps (`StepCounts.group_sums`, the same integers summed by
slices of the mapped columns, no (terms x steps) arrays); `per_step(rows=)` gives the whole series of the few
terms reported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..store import write_atomic
from . import chunks, segments
from .tokens import WHERES

VERSION = 2
#: stands for a NULL split in the columns' keys: such rows match no scope key (as in SQL, NULL = NULL is not true)
NULL_SPLIT = "\x00null"


class Block:
    """The counts of some (step, split) columns (`steps`, `splits`): one matrix (`arr`: rows answer x, answer m,
    reasoning x, reasoning m, terms in the vocabulary's order; int32 where the counts fit, possibly
    memory-mapped from its chunk), with per `where` views `x` and `m`."""

    def __init__(self, arr: np.ndarray, ids: dict[str, np.ndarray], steps: np.ndarray, splits: np.ndarray):
        if arr.ndim != 2 or arr.shape != (_cells(ids), len(steps)) or len(splits) != len(steps):
            raise ValueError("step counts: a chunk's shape does not match its vocabulary and columns")
        self.arr, self.steps, self.splits = arr, steps, splits
        self.x, self.m, at = {}, {}, 0
        for w in WHERES:
            k = len(ids[w])
            self.x[w], self.m[w] = arr[at:at + k], arr[at + k:at + 2 * k]
            at += 2 * k

    def stacked(self) -> np.ndarray:
        """The matrix as a chunk holds it (`_narrow`)."""
        return _narrow(self.arr)

    def release(self) -> None:
        """Drop the pages of a memory-mapped matrix from this process (`chunks.release`): a reader that has summed
        a block does not keep it resident, so a run's counts, however many steps, cost one block of resident
        memory at a time (15,625 steps: ~750 MB mapped in all)."""
        chunks.release(self.arr)


class StepCounts:
    """The run's counts: per-`where` term ids (the vocabulary's order) and the blocks of columns holding them."""

    def __init__(self, ids: dict[str, np.ndarray], blocks: list[Block]):
        self.ids, self.blocks = ids, blocks
        self._scope: tuple[tuple[np.ndarray, ...], list[np.ndarray]] | None = None

    def per_step(self, where: str, term_ids: np.ndarray, key_step: np.ndarray, key_split: np.ndarray,
                 key_si: np.ndarray, t: int, out: tuple[np.ndarray, np.ndarray] | None = None,
                 rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x, m) as float arrays (terms `term_ids` x step index 0..t-1) of the (step, split) keys in scope, each
        mapped to its step index (`key_si`); columns outside the scope are left out, columns of one index summed
        (integers: exact in any order). `rows`: only these rows of `term_ids` (positions; the per-step series of
        the few candidates a detector reports, read from the mapped chunks without the others'). `out`: two
        zeroed (terms x t) arrays to add into and return (a caller holding larger arrays passes views of their
        rows)."""
        self._check(where, term_ids)
        k = len(term_ids) if rows is None else len(rows)
        if out is None:
            out = np.zeros((k, t)), np.zeros((k, t))
        elif any(a.shape != (k, t) for a in out):
            raise ValueError("step counts: `out` must be two (terms x steps) arrays")
        for b, col_si in zip(self.blocks, self._columns(key_step, key_split, key_si)):
            cols = np.flatnonzero(col_si >= 0)
            if not len(cols):
                continue
            si = col_si[cols]
            run = (cols[-1] - cols[0] + 1 == len(cols)) and bool(np.all(np.diff(si) == 1))
            for dense, arr in zip(out, (b.x[where], b.m[where])):
                if rows is not None:
                    arr = arr[rows]
                if run:  # the usual case: the block's columns in scope are consecutive steps (no copy by index)
                    dense[:, si[0]:si[-1] + 1] += arr[:, cols[0]:cols[-1] + 1]
                elif len(np.unique(si)) == len(si):
                    dense[:, si] += arr[:, cols]
                else:  # several columns of one index (all splits of a step; parts sharing a step)
                    order = cols[np.argsort(si, kind="stable")]
                    s = col_si[order]
                    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
                    dense[:, s[starts]] += np.add.reduceat(arr[:, order].astype(np.int64), starts, axis=1)
            b.release()
        return out

    def group_sums(self, where: str, term_ids: np.ndarray, key_step: np.ndarray, key_split: np.ndarray,
                   key_si: np.ndarray, group_of_si: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, m) as int64 arrays (terms `term_ids` x `groups`): the per-step counts summed over the steps of
        each group, step index si in group `group_of_si[si]` (-1: in none), the scope's keys mapped as in
        `per_step`. The same integers as `per_step`'s columns summed, without the (terms x steps) float arrays:
        the trend screen's bins and the windows' sums of every candidate read each mapped column once, summed
        by slices of consecutive columns (at 10M rollouts, 2,000 steps: ~1,500 terms x 2,000 steps a `where`)."""
        self._check(where, term_ids)
        group_of_si = np.asarray(group_of_si, np.int64)
        out = np.zeros((len(term_ids), groups), np.int64), np.zeros((len(term_ids), groups), np.int64)
        for b, col_si in zip(self.blocks, self._columns(key_step, key_split, key_si)):
            col_g = np.where(col_si >= 0, group_of_si[np.maximum(col_si, 0)] if len(group_of_si) else -1, -1)
            cols = np.flatnonzero(col_g >= 0)
            if not len(cols):
                continue
            g = col_g[cols]
            if cols[-1] - cols[0] + 1 == len(cols) and bool(np.all(np.diff(g) >= 0)):
                at, arrs = cols[0], (b.x[where], b.m[where])  # consecutive columns in group order: read in place
            else:
                order = np.argsort(g, kind="stable")
                at, g = 0, g[order]
                arrs = (b.x[where][:, cols[order]], b.m[where][:, cols[order]])
            bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
            for acc, arr in zip(out, arrs):
                # a sum per group of a slice of columns: np.add.reduceat along the columns of a (terms x steps)
                # array took ~7 times as long (the trend bins at 10M rollouts: ~0.1 against ~0.015 CPU s)
                for lo, hi in zip(bounds[:-1], bounds[1:]):
                    acc[:, g[lo]] += arr[:, at + lo:at + hi].sum(axis=1, dtype=np.int64)
            b.release()
        return out

    def _check(self, where: str, term_ids: np.ndarray) -> None:
        if not np.array_equal(self.ids[where], term_ids):
            raise ValueError("step counts: the cached rows are not the vocabulary's terms")

    def _columns(self, key_step: np.ndarray, key_split: np.ndarray, key_si: np.ndarray) -> list[np.ndarray]:
        """Per block, the step index of each of its columns (-1: not in scope), kept for the last keys asked about
        (the same arrays: a detector asks per `where` and per reported candidate; a dict lookup per column costs
        ~2 ms a call at 2,000 steps)."""
        keys = (key_step, key_split, key_si)
        if self._scope is not None and all(a is b for a, b in zip(self._scope[0], keys)):
            return self._scope[1]
        si_of = {(int(s), str(p)): int(i) for s, p, i in zip(key_step, key_split, key_si) if p is not None}
        cols = [np.array([si_of.get((int(s), str(p)), -1) for s, p in zip(b.steps, b.splits)], np.int64)
                for b in self.blocks]
        self._scope = keys, cols
        return cols


def step_counts(parts: list[tuple[str, Any]], vocab: pa.Table, cache: Path | None,
                read_all: Callable[[], Iterable[tuple[str, pa.Table]]]) -> StepCounts:
    """The dense counts of the parts `parts` ((name, count table: file or Arrow table)). `cache`: the run's cache
    directory (None: nothing cached, e.g. a store keeping derived data in memory); `read_all()`: every part's
    name and rows (where, term_id, step, split, x, m), one part at a time, for a build from scratch.

    Built in blocks of at most BLOCK_CELLS counts (the columns of consecutive parts), each written as a chunk
    as soon as it is complete and mapped back (`_Chunks`): the arrays are (terms x steps), and one built whole
    grew with the run's steps (15,625 steps: 1.5 GB of int64 held, 3.1 GB at its peak; 39,062 steps: 8 GB)."""
    ids = _ids(vocab)
    held = _Chunks(cache, _key(ids), ids, {name for name, _ in parts})
    covered = {p for c in held.listed for p in c.parts}
    if held.built:
        pieces: Iterable[tuple[str, pa.Table]] = (
            (name, entry if isinstance(entry, pa.Table) else segments.read_member(Path(entry), "counts"))
            for name, entry in parts if name not in covered)  # the parts added since: a chunk of their own
    else:
        pieces = read_all()
    build = _Builder(ids, held.add)
    for name, rows in pieces:
        build.add(name, rows)
    build.close()
    return StepCounts(ids, held.blocks())


def cache_dir(term_sets_dir: Path) -> Path:
    """Where a run's step counts are cached: beside its term sets (`term_sets_dir`: the vocabulary's directory)."""
    return term_sets_dir / "rollup" / "step_counts"


class Feed:
    """The step counts of a run built as its term sets are computed, part after part in the run's order
    (`tokens.term_sets`, computing every part: a cold audit), into the cache `step_counts` reads: it then finds
    every part's counts there and reads no count table back (at 3,906 steps of 256 rollouts the 17M rows read
    back cost ~3.7 CPU s; 1M rollouts in 200 steps ~0.25). Builds nothing where a cache of this vocabulary is
    there already: `step_counts` grows that one."""

    def __init__(self, cache: Path, vocab: pa.Table, parts: set[str]):
        ids = _ids(vocab)
        held = _Chunks(cache, _key(ids), ids, parts)
        self.builder = None if held.built else _Builder(ids, held.add)

    @property
    def ids(self) -> dict[str, np.ndarray] | None:
        """What a `PartCounts` for `add` is made with (`_ids` of the vocabulary); None where nothing is built."""
        return None if self.builder is None else self.builder.ids

    def add(self, name: str, rows: pa.Table | PartCounts) -> None:
        """A part's counts: its count table, or the same counts as dense rows (`PartCounts`)."""
        if self.builder is None:
            return
        if isinstance(rows, PartCounts):
            self.builder.add_dense(name, rows)
        else:
            self.builder.add(name, rows)

    def close(self) -> None:
        if self.builder is not None:
            self.builder.close()
            self.builder = None


class PartCounts:
    """One part's counts as a block's columns hold them: per (step, split) of the part (`steps`, `splits`: NULL as
    NULL_SPLIT), the x and m of every term of both places (`rows`: columns x `_cells(ids)`, in `_ids` order). What
    `tokens.term_sets` hands a `Feed` in place of the part's count table: the term sets count in dense (cell x term)
    arrays, and turning them into a table's rows (one per term present: 17M rows at 3,906 steps of 256 rollouts)
    and back cost the build ~1.5 CPU s there."""

    def __init__(self, ids: dict[str, np.ndarray], steps: np.ndarray, splits: list[str],
                 counts: dict[str, tuple[np.ndarray, np.ndarray]]):
        """`counts`: per place, (x, m) as (steps x every term id) arrays (a term id is its column)."""
        # int32: a count is of one part's rollouts (half the bytes a computed batch holds until it is added)
        rows = np.concatenate([a[:, ids[w]] for w in WHERES for a in counts[w]], axis=1, dtype=np.int32) \
            if len(steps) else np.zeros((0, _cells(ids)), np.int32)
        # the columns a count table would have: those with a count of some term id (a place's m may count the
        # other place's terms, which add nothing but still make the column, as `_Builder.add` does)
        some = np.zeros(len(steps), bool)
        for w in WHERES:
            for a in counts[w]:
                some |= a.any(axis=1)
        self.steps, self.rows = np.asarray(steps, np.int64)[some], rows[some]
        self.splits = [s for s, k in zip(splits, some.tolist()) if k]


def _ids(vocab: pa.Table) -> dict[str, np.ndarray]:
    """Per `where`, the vocabulary's term ids in its order (the rows of the dense counts)."""
    return {w: np.asarray(vocab.filter(pc.equal(vocab["where"], w))["term_id"].to_numpy(), np.int64) for w in WHERES}


#: counts (terms of both places x 2 x columns) in one block while it is built: 64 MB of int64 (32 MB as its
#: chunk's int32). A run of 200 steps and ~3,000 terms a place is one block; one of 15,625 steps ~24.
BLOCK_CELLS = 8 << 20


class _Chunks:
    """A run's cached chunks (`cache`: None keeps every block in memory) and the blocks added this audit."""

    def __init__(self, cache: Path | None, key: str, ids: dict[str, np.ndarray], parts: set[str]):
        self.cache, self.key, self.ids = cache, key, ids
        loaded = _load(cache, key, ids, parts) if cache is not None else None
        self.built = loaded is not None
        self.listed, self.mapped = loaded if loaded is not None else ([], [])
        self.unsaved: list[Block] = []  # blocks whose chunk could not be written (kept in memory)
        self.cells = _cells(ids)

    def add(self, parts: list[str], block: Block) -> None:
        """Write `block` (the columns of `parts`) as a chunk after those listed (merged with the newest where
        `chunks.merge_count` says, full chunks never), then hold it memory-mapped; in memory where it cannot be
        written."""
        if self.cache is None:
            self.unsaved.append(block)
            return
        full = lambda c: len(c.info.get("steps", ())) * self.cells >= BLOCK_CELLS // 2  # noqa: E731
        listed = chunks.append(self.cache, self.key, self.listed, self.mapped, parts, block,
                               lambda blocks: _concat(blocks, self.ids),
                               lambda names, b: _write(self.cache, self.key, names, b),
                               former=self.cache.parent / "step_counts.npz", full=full)
        if listed is None:
            self.unsaved.append(block)
            return
        self.listed, self.mapped = listed, self.mapped[:len(listed) - 1] + [_map(self.cache, listed[-1], self.ids)]

    def blocks(self) -> list[Block]:
        return self.mapped + self.unsaved


class _Builder:
    """Adds count rows, part by part, into dense blocks of at most BLOCK_CELLS counts (a part's columns stay in
    one block; a block is closed before the part that would take it past the bound, and handed to `done` with
    its parts). A row's place is coded as column x terms + term row, which stays valid as new (step, split)
    columns appear; each part's rows are added where they belong (`np.add.at`; a part's dense columns whole,
    `add_dense`) in a block allocated at its bound once (zero pages cost nothing until written). (Gathered into
    batches of up to 4M rows and counted by a dense `np.bincount` each, the block reallocated and copied per
    batch, the build of 3,906 steps' 17M rows took ~2.0-2.9 CPU s: the bincounts' float arrays as large as the
    block were most of it.)"""

    def __init__(self, ids: dict[str, np.ndarray], done: Callable[[list[str], Block], None]):
        self.ids, self.done = ids, done
        self.cells = _cells(ids)
        self.lookup = {}
        for w, w_ids in ids.items():
            self.lookup[w] = np.full(int(w_ids.max(initial=-1)) + 1, -1, np.int64)
            self.lookup[w][w_ids] = np.arange(len(w_ids))
        self._start()

    def _start(self) -> None:
        self.parts: list[str] = []
        self.keys: list[tuple[int, str]] = []
        self.col_of: dict[tuple[int, str], int] = {}
        self.arr: np.ndarray | None = None  # (columns x cells) counts, column-major: new columns append rows

    def _reserve(self, columns: int) -> None:
        """Room in the block's counts (`arr`, columns x cells) for `columns` columns (at least a block's worth)."""
        if self.arr is None or self.arr.shape[0] < columns:
            grown = np.zeros((max(columns, BLOCK_CELLS // max(self.cells, 1)), self.cells), np.int64)
            if self.arr is not None:
                grown[:self.arr.shape[0]] = self.arr
            self.arr = grown

    def _columns(self, keys: list[tuple[int, str]]) -> np.ndarray:
        """The block columns of a part's (step, split) `keys`, new ones appended (the block closed first where they
        would take it past BLOCK_CELLS) and room reserved for them."""
        new = len({k for k in keys if k not in self.col_of})
        if self.parts and new and (len(self.keys) + new) * self.cells > BLOCK_CELLS:
            self.close()
        for k in keys:
            if k not in self.col_of:
                self.col_of[k] = len(self.keys)
                self.keys.append(k)
        self._reserve(len(self.keys))
        return np.array([self.col_of[k] for k in keys], np.int64)

    def add_dense(self, name: str, part: PartCounts) -> None:
        """Add a part's counts given as dense rows: each row into its column."""
        cols = self._columns([(int(s), p) for s, p in zip(part.steps.tolist(), part.splits)])
        arr = self.arr[:len(self.keys)]
        if len(np.unique(cols)) == len(cols):
            arr[cols] += part.rows
        else:  # a (step, split) twice in the part
            np.add.at(arr, cols, part.rows)
        self.parts.append(name)

    def add(self, name: str, rows: pa.Table) -> None:
        split = pc.dictionary_encode(pc.fill_null(rows["split"].cast(pa.string()), NULL_SPLIT)).combine_chunks()
        names = np.asarray(split.dictionary.to_numpy(zero_copy_only=False), str)
        code = np.asarray(rows["step"].to_numpy(), np.int64) * max(len(names), 1) + split.indices.to_numpy()
        ucode, inv = _distinct(code)
        col = self._columns([(int(u // len(names)), str(names[u % len(names)])) for u in ucode.tolist()])[inv.ravel()]
        flat = self.arr.reshape(-1)
        term = np.asarray(rows["term_id"].to_numpy(), np.int64)
        counts = [np.asarray(rows[c].to_numpy(), np.int64) for c in ("x", "m")]
        at = 0  # the block row of the place's first term (x rows, then m rows)
        for w, w_ids in self.ids.items():
            sel = np.flatnonzero(np.asarray(pc.equal(rows["where"], w).to_numpy(zero_copy_only=False), bool))
            lookup = self.lookup[w]
            t = term[sel]
            row = np.where(t < len(lookup), lookup[np.minimum(t, len(lookup) - 1)], -1) if len(lookup) else t * 0 - 1
            inside = row >= 0  # rows of other terms count for none (as the SQL join on the vocabulary's ids)
            sel, row = sel[inside], row[inside]
            # x at rows at + row, m at rows at + k + row: coded as column * cells + block row
            base = col[sel] * self.cells + at + row
            np.add.at(flat, base, counts[0][sel])
            np.add.at(flat, base + len(w_ids), counts[1][sel])
            at += 2 * len(w_ids)
        self.parts.append(name)

    def close(self) -> None:
        """Hand the block (its columns in (step, split) order, so that a scope's consecutive steps are consecutive
        columns: `per_step` copies them as one slice) to `done`, and start the next."""
        if not self.parts:
            return
        arr = self.arr[:len(self.keys)]  # `add` reserved it
        steps = np.array([k[0] for k in self.keys], np.int64)
        splits = np.array([k[1] for k in self.keys], dtype=object).astype(str)
        order = np.lexsort((splits, steps)) if len(steps) else np.zeros(0, np.int64)
        if not np.array_equal(order, np.arange(len(order))):  # parts in step order (the usual): no reordered copy
            arr = arr[order]
        block = Block(_narrow(arr.T), self.ids, steps[order], splits[order])
        parts = self.parts
        self._start()
        self.done(parts, block)


def _distinct(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(code, return_inverse=True)`. A part's (step, split) codes span a few hundred values: counted in a
    table of their range, not sorted (the sort was a quarter of the build of 3,906 steps' counts); sorted where
    the range is much wider than the rows (steps far apart)."""
    if not len(code):
        return code[:0], code[:0]
    lo, hi = int(code.min()), int(code.max())
    if hi - lo > 4 * len(code) + 1024:
        return np.unique(code, return_inverse=True)
    present = np.flatnonzero(np.bincount(code - lo, minlength=hi - lo + 1))
    index = np.full(hi - lo + 1, -1, np.int64)
    index[present] = np.arange(len(present))
    return present + lo, index[code - lo]


def _cells(ids: dict[str, np.ndarray]) -> int:
    """Counts per (step, split) column: x and m of every term of both places."""
    return 2 * sum(len(v) for v in ids.values())


def _narrow(arr: np.ndarray) -> np.ndarray:
    """`arr` as one C-ordered matrix, in int32 where the counts fit (half the bytes of int64)."""
    if arr.dtype == np.int32:
        return arr
    small = arr.size == 0 or (arr.min() >= 0 and arr.max() < 2 ** 31)
    return np.ascontiguousarray(arr, np.int32 if small else arr.dtype)


def _key(ids: dict[str, np.ndarray]) -> str:
    """The cache's key: its layout's version and the vocabulary's term ids (another vocabulary's counts are
    never read)."""
    h = hashlib.sha1()
    for w in WHERES:
        h.update(w.encode() + b"\0" + np.asarray(ids[w], np.int64).tobytes())
    return f"v{VERSION}-{h.hexdigest()[:20]}"


def _load(directory: Path, key: str, ids: dict[str, np.ndarray], parts: set[str]
          ) -> tuple[list[chunks.Chunk], list[Block]] | None:
    """The cached chunks and their blocks (memory-mapped); None when there is no cache, it is of another layout
    or vocabulary, holds a part no longer in the run, or a chunk is torn."""
    held = chunks.load(directory, key, parts)
    if held is None:
        return None
    try:
        blocks = [_map(directory, c, ids) for c in held[0]]
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    return held[0], blocks


def _map(directory: Path, chunk: chunks.Chunk, ids: dict[str, np.ndarray]) -> Block:
    """The block of a chunk, memory-mapped."""
    return Block(np.load(directory / chunk.name, mmap_mode="r", allow_pickle=False), ids,
                 np.asarray(chunk.info["steps"], np.int64), np.asarray(chunk.info["splits"], str))


def _write(directory: Path, key: str, parts: list[str], block: Block) -> chunks.Chunk | None:
    name = chunks.chunk_name(key, parts, ".npy")
    arr = block.stacked()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    if not write_atomic(directory / name, write):
        return None
    return chunks.Chunk(name, list(parts), {"steps": block.steps.tolist(), "splits": block.splits.tolist()})


def _concat(blocks: list[Block], ids: dict[str, np.ndarray]) -> Block:
    """One block of the columns of `blocks` (a column held by two keeps both: `per_step` adds them up)."""
    return Block(np.concatenate([b.arr for b in blocks], axis=1), ids, np.concatenate([b.steps for b in blocks]),
                 np.concatenate([b.splits for b in blocks]))
