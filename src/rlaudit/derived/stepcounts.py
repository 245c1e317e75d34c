"""The run's per-step term counts as dense arrays, cached per run and grown by the parts added since.

Every audit's trend screen (`detectors.emerging.candidates`) needs, for every candidate term and every step in
scope, the rollouts containing it (`x`) and those whose prompt holds it (`m`): the per-part count tables of
`tokens.term_sets`, one row per (where, term, step, split). Read through DuckDB they cost O(run) on every warm
audit: at 10M rollouts (2,000 steps) 12M rows, ~1.3 CPU s of Parquet decoding, two joins and the scatter into
numpy, for one new step's worth of new rows. So the rows are summed once into dense arrays, per `where` (terms
in the vocabulary's order) x (step, split) columns, kept in one file per run beside the term sets
(`rollup/step_counts.npz`, with the parts it covers): an audit loads it (memory speed), reads only the count
tables of the parts added since, adds them in, and writes the grown arrays back (atomically: concurrent audits
each write a whole file of their own). A part that left the run, a torn file or another vocabulary's rows void
it (it is rebuilt from every part); stores that keep derived data in memory build the arrays each time.

Counts are integers and parts sharing a step add up, as the SQL sums did: the arrays equal the per-step sums.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import segments
from .tokens import WHERES

VERSION = 1
#: stands for a NULL split in the columns' keys: such rows match no scope key (as in SQL, NULL = NULL is not true)
NULL_SPLIT = "\x00null"


class StepCounts:
    """Per `where`, the counts `x` and `m` (terms in the vocabulary's order x (step, split) columns `steps`,
    `splits`; int32 as loaded from the file where they fit, int64 as summed)."""

    def __init__(self, ids: dict[str, np.ndarray], steps: np.ndarray, splits: np.ndarray,
                 x: dict[str, np.ndarray], m: dict[str, np.ndarray]):
        self.ids, self.steps, self.splits, self.x, self.m = ids, steps, splits, x, m

    def per_step(self, where: str, term_ids: np.ndarray, key_step: np.ndarray, key_split: np.ndarray,
                 key_si: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, m) as float arrays (terms `term_ids` x step index 0..t-1) of the (step, split) keys in scope, each
        mapped to its step index (`key_si`); columns outside the scope are left out, columns of one index summed."""
        if not np.array_equal(self.ids[where], term_ids):
            raise ValueError("step counts: the cached rows are not the vocabulary's terms")
        si_of = {(int(s), str(p)): int(i) for s, p, i in zip(key_step, key_split, key_si) if p is not None}
        col_si = np.array([si_of.get((int(s), str(p)), -1) for s, p in zip(self.steps, self.splits)], np.int64)
        cols = np.flatnonzero(col_si >= 0)
        one_each = len(np.unique(col_si[cols])) == len(cols)  # the usual case: one split, no step twice
        out = []
        for arr in (self.x[where], self.m[where]):
            dense = np.zeros((len(term_ids), t))
            if len(cols) and one_each:
                dense[:, col_si[cols]] = arr[:, cols]
            elif len(cols):
                order = cols[np.argsort(col_si[cols], kind="stable")]
                si = col_si[order]
                starts = np.flatnonzero(np.r_[True, si[1:] != si[:-1]])
                dense[:, si[starts]] = np.add.reduceat(arr[:, order].astype(np.int64), starts, axis=1)
            out.append(dense)
        return out[0], out[1]


def step_counts(parts: list[tuple[str, Any]], vocab: pa.Table, cache: Path | None, read_all) -> StepCounts:
    """The dense counts of the parts `parts` ((name, count table: file or Arrow table)). `cache`: the run's file
    (None: nothing cached, e.g. a store keeping derived data in memory); `read_all()`: every part's rows
    (where, term_id, step, split, x, m), an Arrow table or an iterable of Arrow record batches, for a build from
    scratch (the caller's view over segments, streamed: the whole 10M-rollout run's 12M rows held at once took
    the audit to ~1.9 GB)."""
    ids = {w: np.asarray(vocab.filter(pc.equal(vocab["where"], w))["term_id"].to_numpy(), np.int64)
           for w in WHERES}
    names = [name for name, _ in parts]
    held = _load(cache, ids, set(names)) if cache is not None else None
    build = _Builder(ids, held[0] if held is not None else None)
    if held is None:
        pieces = read_all()
        for piece in [pieces] if isinstance(pieces, pa.Table) else pieces:
            build.add(piece if isinstance(piece, pa.Table) else pa.Table.from_batches([piece]))
        covered = names
    else:
        covered = held[1]
        for name, entry in parts:
            if name not in set(covered):
                # a part a cold audit wrote into a segment only has no file of its own: its range of the segment
                build.add(entry if isinstance(entry, pa.Table) else segments.read_member(Path(entry), "counts"))
        covered = covered + [name for name in names if name not in set(covered)]
    counts = build.result()
    if cache is not None and (held is None or len(covered) != len(held[1])):
        _save(cache, counts, covered)
    return counts


class _Builder:
    """Adds count rows into dense arrays. A row's place is coded as column x terms + term row, which stays valid
    as new (step, split) columns appear, so rows are gathered in batches of up to FOLD_ROWS and counted by one
    bincount each (a dense bincount per small batch cost ~6 CPU s for the 10M-rollout run's 116 batches)."""

    FOLD_ROWS = 4 << 20

    def __init__(self, ids: dict[str, np.ndarray], base: StepCounts | None):
        self.ids = ids
        self.keys = [] if base is None else list(zip(base.steps.tolist(), base.splits.tolist()))
        self.col_of = {k: i for i, k in enumerate(self.keys)}
        self.arrays = {(w, name): None if base is None else (base.x if name == "x" else base.m)[w]
                       for w in WHERES for name in ("x", "m")}
        self.lookup = {}
        for w, w_ids in ids.items():
            self.lookup[w] = np.full(int(w_ids.max(initial=-1)) + 1, -1, np.int64)
            self.lookup[w][w_ids] = np.arange(len(w_ids))
        self.pending: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {w: [] for w in WHERES}
        self.rows = 0

    def add(self, rows: pa.Table) -> None:
        split = pc.dictionary_encode(pc.fill_null(rows["split"].cast(pa.string()), NULL_SPLIT)).combine_chunks()
        names = np.asarray(split.dictionary.to_numpy(zero_copy_only=False), str)
        code = np.asarray(rows["step"].to_numpy(), np.int64) * max(len(names), 1) + split.indices.to_numpy()
        ucode, inv = np.unique(code, return_inverse=True)
        keys = [(int(u // len(names)), str(names[u % len(names)])) for u in ucode.tolist()]
        for k in keys:
            if k not in self.col_of:
                self.col_of[k] = len(self.keys)
                self.keys.append(k)
        col = np.array([self.col_of[k] for k in keys], np.int64)[inv.ravel()]
        term = np.asarray(rows["term_id"].to_numpy(), np.int64)
        x, m = (np.asarray(rows[name].to_numpy(), np.int64) for name in ("x", "m"))
        for w, w_ids in self.ids.items():
            sel = np.flatnonzero(np.asarray(pc.equal(rows["where"], w).to_numpy(zero_copy_only=False), bool))
            lookup = self.lookup[w]
            t = term[sel]
            row = np.where(t < len(lookup), lookup[np.minimum(t, len(lookup) - 1)], -1) if len(lookup) else t * 0 - 1
            inside = row >= 0  # rows of other terms count for none (as the SQL join on the vocabulary's ids)
            sel, row = sel[inside], row[inside]
            self.pending[w].append((col[sel] * len(w_ids) + row, x[sel], m[sel]))
        self.rows += len(rows)
        if self.rows >= self.FOLD_ROWS:
            self._fold()

    def _fold(self) -> None:
        c = len(self.keys)
        for w, w_ids in self.ids.items():
            k = len(w_ids)
            pending = self.pending[w]
            codes = np.concatenate([p[0] for p in pending]) if pending else np.zeros(0, np.int64)
            for i, name in ((1, "x"), (2, "m")):
                arr = np.zeros((k, c), np.int64)
                held = self.arrays[(w, name)]
                if held is not None:
                    arr[:, :held.shape[1]] = held
                if len(codes):
                    # integer counts summed as doubles: exact below 2^53
                    weights = np.concatenate([p[i] for p in pending]).astype(np.float64)
                    arr += np.bincount(codes, weights=weights, minlength=c * k).astype(np.int64).reshape(c, k).T
                self.arrays[(w, name)] = arr
            self.pending[w] = []
        self.rows = 0

    def result(self) -> StepCounts:
        self._fold()
        return StepCounts(self.ids, np.array([k[0] for k in self.keys], np.int64),
                          np.array([k[1] for k in self.keys], dtype=object).astype(str),
                          {w: self.arrays[(w, "x")] for w in WHERES}, {w: self.arrays[(w, "m")] for w in WHERES})


def _load(path: Path, ids: dict[str, np.ndarray], parts: set[str]) -> tuple[StepCounts, list[str]] | None:
    """The cached counts and the parts they cover; None when missing, unreadable, of another layout or
    vocabulary, or holding a part no longer in the run (its rows would count that part)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if int(f["version"]) != VERSION:
                return None
            covered = [str(p) for p in f["parts"]]
            if not set(covered) <= parts or any(not np.array_equal(f[f"{w}_ids"], ids[w]) for w in WHERES):
                return None
            return StepCounts(ids, f["steps"].astype(np.int64), f["splits"].astype(str),
                              {w: f[f"{w}_x"] for w in WHERES}, {w: f[f"{w}_m"] for w in WHERES}), covered
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _save(path: Path, counts: StepCounts, parts: list[str]) -> None:
    """Write the counts (int32 where they fit: half the bytes) under a temporary name, then rename; a store that
    cannot be written keeps nothing (a cache is an optimisation, never a reason to fail)."""
    arrays: dict[str, np.ndarray] = {"version": np.array(VERSION), "parts": np.array(parts, str),
                                     "steps": counts.steps, "splits": counts.splits}
    for w in WHERES:
        arrays[f"{w}_ids"] = counts.ids[w]
        for name, arr in (("x", counts.x[w]), ("m", counts.m[w])):
            small = arr.size == 0 or (arr.min() >= 0 and arr.max() < 2 ** 31)
            arrays[f"{w}_{name}"] = arr.astype(np.int32) if small else arr
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
