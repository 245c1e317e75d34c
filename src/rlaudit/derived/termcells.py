"""Per-part cell tables of the term sets: what the `emerging` and `generalization` statistics need, without a
row per rollout.

Those statistics never look at a single rollout's term list: they sum over *cells*, the rollouts of one
(step, split, task, condition, prompt) (a cluster of the window statistics is a (window, stratum, prompt) union
of cells; a per-condition series a union of cells of one step). So every stored part's cached term sets
(`tokens.term_sets`) are reduced once to a small table and flat lists, cached beside them under the same
vocabulary id, which three tables are had from:

- `cells`: per cell (`cell`: a 64-bit hash of its five keys, and the keys themselves) the rollouts `n`, those
  with reasoning `n_r`, and for every style column the sum and the sum of squares (`answer__length`,
  `answer__length__q`; reasoning columns over the rollouts with reasoning only, as the detectors filter them);
- `promptterms`: the distinct (prompt_key, term_id) of the part's prompts (a prompt holding a term takes its
  cells out of the term's rollouts at risk). *Not cached* either: made when asked (`TermCells.prompt_terms`,
  usually for a few terms) from the prompts' lists the part's `termlists` hold (below);
- `cellterms`: per cell and term id the rollouts containing the term (`x`; reasoning terms among rollouts with
  reasoning), copies of the prompt already excluded by the term sets. *Not cached*: made when asked
  (`TermCells.cellterms`) from the part's `termlists`: its rollouts' cells, whether they have reasoning, and
  their term lists as flat arrays (`TermLists`, one uncompressed `.npy` file a part, written by the term-set worker
  from the arrays it holds).

Why `cellterms` is not kept: it has ~40 rows a rollout (x = 1 in ~80% of them: cells are small, so it is about
as large as the term lists themselves), and building and writing it for every part cost ~3-6 CPU s of a cold
audit at 1M rollouts (docs/performance.md, session 17 "cellsreduce"), while its readers want few of those rows:
the window sums the window parts' (~80 of 200 parts cold, then one new part a warm audit: `windowsums` caches
their sums), the focus readers a few terms of every part (`TermCells.focus`, cached per run: O(run) once per new
focus term), generalization's step sums and the roll-ups the focus terms of the new parts. Each reads the
parts' `termlists` and counts the pairs it needs (a focus scan only those of its terms). Why not the term sets'
own lists: Parquet's list levels make their read cost ~3-4 CPU ms a part, the flat arrays' ~0.1.

The stored tables are made where the term sets are: `tokens.term_sets` computes a part's term sets in a worker
thread and reduces them there, from the arrays it holds (`reduce_arrays`, numpy; no second read of the term sets), and
writes them beside the term sets (`keep`); `term_cells` then finds them memoised or cached. A part's term sets
count as cached only with their cell tables (`cached`), so a part whose cell tables are missing is computed
again whole (the term sets alone no longer hold the prompts' terms). A run that grows by a step reduces only the
new part; a warm audit reads the small tables (at 1M rollouts: ~125k cells) instead of re-reading every
rollout's term lists. Parts that share a step may hold the same cell: its rows are summed by the readers
(`emerging.Scope`), in any order. A store that keeps derived data in memory (`persist_derived = False`) gets the
same tables in memory, memoised on the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import chunks, kernels, segments
from ..errors import RlauditError
from ..store import Store, prune_cached, write_atomic, write_cached
from .tokens import WHERES, TermSets, style_columns, union_view

#: 2: `cellterms` no longer stored (made from `termlists` when asked); 3: `termlists` hold each rollout's `rid`;
#: 4: `promptterms` no longer stored (made from the prompts' lists in `termlists`)
VERSION = 4
#: the cached tables (files, or rows in segments); `cellterms` and `promptterms` are made from `LISTS` when asked
KINDS = ("cells",)
#: the tables made from `LISTS` when asked (`TermCells.register`)
LIST_KINDS = ("cellterms", "promptterms")
#: the per-part flat term lists (`TermLists`): a file of its own per part, never in a segment
LISTS = "termlists"
#: the cell key: two cells share a hash with probability ~2^-64 per pair
CELL = "hash(step, split, task, condition, prompt_key)"
#: terms kept in a run's focus cache (`TermCells.focus`): those of the latest audit, plus earlier ones up to this
FOCUS_TERMS = 256
_FOCUS_KEY = f"focus-v{VERSION}"


@dataclass
class TermCells:
    """Per part (name), its cell table and flat lists (`LISTS`): cached files or, for stores that do not persist
    derived data, the table and lists themselves."""

    parts: list[tuple[str, dict[str, Any]]]
    #: the last `focus` rows built (rows, parts, terms): a second detector asking for the same terms reuses them
    _focus: tuple[pa.Table, list[str], list[int]] | None = field(default=None, repr=False)

    def register(self, con: duckdb.DuckDBPyConnection, kind: str, view: str, only: set[str] | None = None,
                 term_ids: Iterable[int] | None = None) -> None:
        """View `view` over the `kind` table of every part (or of the parts named in `only`); for `cellterms`
        and `promptterms` over their rows made now from the parts' lists (`cellterms`, `prompt_terms`), those
        of `term_ids` only when given (a few terms' rows: a gather, not every row)."""
        if kind in LIST_KINDS:
            made = self.cellterms(only, term_ids) if kind == "cellterms" else self.prompt_terms(only, term_ids)
            con.register(f"_{view}_rows", made)
            con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM _{view}_rows")
            return
        union_view(con, view, [p[kind] for name, p in self.parts if only is None or name in only],
                   lambda: _empty(kind), segment=kind, compression=SEGMENT_COMPRESSION[kind], merge=only is None)

    def focus(self, con: duckdb.DuckDBPyConnection, term_ids: set[int], table: str, view: bool = False) -> None:
        """Temp table `table` (cell, term_id, x), or with `view` a view over the rows held in memory (mapped): the
        `cellterms` rows of `term_ids` over every part.

        Why a cache: these are the few terms a detector reports (`emerging.Scope.focus_on`), and scanning every
        part's `cellterms` for them costs O(run) on every audit (3.7 of the 15.6 CPU s of a warm emerging audit
        of the 10M-rollout benchmark). Their rows are small and the reported terms change rarely, so they are
        kept per run, for a set of terms (the manifest's), in chunks of parts (`chunks`: Arrow IPC files,
        memory-mapped): an audit maps them and scans the per-part files only for what they lack: the parts
        added since, for every term, written as a chunk of their own (O(new parts); reading and writing one
        whole file cost ~0.5 CPU s at 10M rollouts), or, when terms are added, every part for those, written
        with the rest as one chunk. A part that left the run voids the cache (it is rebuilt). The cache keeps
        the terms of this call plus earlier ones while there are at most FOCUS_TERMS."""
        wanted = sorted({int(t) for t in term_ids})
        names = [name for name, _ in self.parts]
        d = self.cache_dir("focus")
        listed: list[chunks.Chunk] = []
        held: list[pa.Table] = []
        if self._focus is not None and self._focus[1] == names and set(wanted) <= set(self._focus[2]):
            rows, parts, terms = self._focus
        else:
            held, parts, terms, listed = _read_focus(d, set(names)) if d else ([], [], [], [])
            rows = pa.concat_tables(held) if listed else None
        keep = sorted(set(terms) | set(wanted)) if len(set(terms) | set(wanted)) <= FOCUS_TERMS else wanted
        old_terms = sorted(set(terms) & set(keep))
        new_parts = [n for n in names if n not in set(parts)]
        pieces = [] if rows is None else [rows if set(terms) <= set(keep) else
                                          rows.filter(pc.is_in(rows["term_id"], pa.array(keep, pa.int32())))]
        if set(keep) - set(old_terms):
            pieces.append(self._scan(con, None, sorted(set(keep) - set(old_terms))))
        added = None
        if new_parts and old_terms:
            added = self._scan(con, set(new_parts), old_terms)
            pieces.append(added)
        out = pa.concat_tables(pieces) if pieces else _empty("cellterms")
        self._focus = (out, names, keep)
        if d and keep != terms:  # other terms: one chunk of every part
            _write_focus(d, [], [], names, out, keep)
        elif d and new_parts and listed:  # the new parts' rows, a chunk of their own
            _write_focus(d, listed, held, new_parts, added if added is not None else _empty("cellterms"), keep)
        con.register(f"_{table}_rows", out)
        ids = ", ".join(map(str, wanted)) or "NULL"
        if view:  # not copied (at 10M rollouts ~4.7M rows: ~0.1 CPU s a warm audit)
            con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM _{table}_rows"
                        + ("" if keep == wanted else f" WHERE term_id IN ({ids})"))
            return
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM _{table}_rows WHERE term_id IN ({ids})")
        con.unregister(f"_{table}_rows")

    def prompt_terms(self, only: set[str] | None = None, term_ids: Iterable[int] | None = None) -> pa.Table:
        """The `promptterms` rows (`SCHEMAS`) of the parts named in `only` (None: every part), of every term or
        of `term_ids` only, made from the parts' flat lists of their prompts' terms (`part_prompt_terms`)."""
        ids = None if term_ids is None else np.asarray(sorted({int(t) for t in term_ids}), np.int64)
        pieces = [part_prompt_terms(p[LISTS], ids) for name, p in self.parts if only is None or name in only]
        return pa.concat_tables(pieces) if pieces else _empty("promptterms")

    def cellterms(self, only: set[str] | None = None, term_ids: Iterable[int] | None = None) -> pa.Table:
        """The `cellterms` rows (`SCHEMAS`) of the parts named in `only` (None: every part), of every term or of
        `term_ids` only, made from the parts' flat term lists (`part_cellterms`), part after part."""
        ids = None if term_ids is None else np.asarray(sorted({int(t) for t in term_ids}), np.int64)
        pieces = [part_cellterms(p[LISTS], ids) for name, p in self.parts if only is None or name in only]
        return pa.concat_tables(pieces) if pieces else _empty("cellterms")

    def cache_dir(self, name: str) -> Path | None:
        """Folder `name` beside the parts' cell tables, for a cache derived from them (the focus rows, emerging's
        window sums), or None where the cell tables are kept in memory (a store that does not persist derived
        data: nor should what is derived from them)."""
        entries = [p["cells"] for _, p in self.parts]
        if not entries or any(isinstance(e, pa.Table) for e in entries):
            return None
        return Path(entries[0]).parent / name

    def _scan(self, con: duckdb.DuckDBPyConnection, only: set[str] | None, term_ids: list[int]) -> pa.Table:
        """The `cellterms` rows of `term_ids` in the parts named in `only` (None: every part)."""
        return self.cellterms(only, term_ids)


def term_cells(store: Store, run: str, sets: TermSets, prune: bool = True) -> TermCells:
    """The cell tables of every part of `sets`. `prune`: remove the cached tables of parts `sets` does not hold
    (off when `sets` is a shard of the run).

    `tokens.term_sets` makes every part's cell tables with its term sets: those it computed in this process are
    memoised (`remember`), those an earlier process computed are cached files (a part counts as cached only when
    they exist, `cached`)."""
    persist = getattr(store, "persist_derived", True)
    memo = store.__dict__.setdefault("_term_cells_memo", {})
    out = []
    held: dict[str, set[str]] | None = None
    for name, files in sets.parts:
        terms = files["terms"]
        hit = memo.get(name)
        entry = hit[1] if hit is not None and (
            hit[0] is terms or (isinstance(hit[0], str) and hit[0] == str(terms))) else None
        if entry is None and not isinstance(terms, pa.Table) and persist:
            if held is None:
                held = segments_held(Path(terms).parent)
            entry = cached(Path(terms), name, held=held)
        if entry is None:
            raise FileNotFoundError(f"the cell tables of part {name} are missing beside its term sets {terms} "
                                    "(removed while the audit ran?); the next audit computes them again")
        remember(store, name, terms, entry)
        out.append((name, entry))
    if prune and persist and sets.parts and not isinstance(sets.parts[0][1]["terms"], pa.Table):
        first = Path(sets.parts[0][1]["terms"])
        base = first.parent.parent.parent / "termcells"
        prune_cached(base, base / f"{first.parent.name}-v{VERSION}", {_stem(n) for n, _ in sets.parts})
    return TermCells(parts=out)


def cached(terms: Path, part: str, listing: set[str] | None = None, held: dict[str, set[str]] | None = None
           ) -> dict[str, Path] | None:
    """The cached cell tables (kind -> file) of a part whose term sets are cached at `terms`, or None when any
    is missing: its file, or its rows in a segment (a cold audit writes most parts' cell tables into segments
    only, `tokens._fresh_segments`). `listing` and `held`: the names in their directory (`cell_dir`) and, per
    kind, those a segment holds (`segments_held`), found once by a caller that asks for every part (a long
    run's thousands of parts: one listing instead of three stats per part)."""
    files = cell_files(terms.parent, part)
    for kind, f in files.items():
        if f.name in listing if listing is not None else f.is_file():
            continue
        if f.name not in (held[kind] if held is not None else segments.held(f.parent / "segments" / kind)):
            return None
    lists = lists_file(terms.parent, part)
    if not (lists.name in listing if listing is not None else lists.is_file()):
        return None
    return {**files, LISTS: lists}


def segments_held(term_sets_dir: Path) -> dict[str, set[str]]:
    """Per kind, the names of the cell-table files whose rows a segment holds (`segments.held`)."""
    d = cell_dir(term_sets_dir)
    return {kind: segments.held(d / "segments" / kind) for kind in KINDS}


def cell_files(term_sets_dir: Path, part: str) -> dict[str, Path]:
    """Where a part's cell tables (kind -> file, `KINDS`: those a segment may hold) are cached, its term sets
    being cached in `term_sets_dir`."""
    d = cell_dir(term_sets_dir)
    return {kind: d / f"{_stem(part)}.{kind}.parquet" for kind in KINDS}


def lists_file(term_sets_dir: Path, part: str) -> Path:
    """Where a part's flat term lists (`TermLists`) are cached, beside its cell tables."""
    return cell_dir(term_sets_dir) / f"{_stem(part)}.{LISTS}.npy"


def cell_dir(term_sets_dir: Path) -> Path:
    """Where the cell tables of the parts whose term sets are cached in `term_sets_dir` are cached: under the
    same vocabulary id (`derived/termcells/<vocab id>-v<VERSION>/`)."""
    return term_sets_dir.parent.parent / "termcells" / f"{term_sets_dir.name}-v{VERSION}"


def keep(store: Store, part: str, terms: Path | pa.Table, tables: dict[str, pa.Table], skip: set[str] = frozenset()
         ) -> dict[str, Any]:
    """Cache one part's cell tables where `term_cells` looks for them: files beside its cached term sets
    (`terms`, their file), or the tables themselves where the term sets are kept in memory (a store with
    `persist_derived = False`, or one that could not be written). `skip`: kinds not written as files (a segment
    written from memory holds them, `tokens._fresh_segments`); their entries are the files' paths all the same
    (`segments.covering` finds their rows). Thread-safe: the term-set workers call it."""
    if isinstance(terms, pa.Table) or not getattr(store, "persist_derived", True):
        return tables
    files = cell_files(Path(terms).parent, part)
    out = {kind: files[kind] if kind in skip else write(files[kind], kind, t) for kind, t in tables.items()
           if kind != LISTS}
    out[LISTS] = tables[LISTS].save(lists_file(Path(terms).parent, part))
    return out


def write(path: Path, kind: str, table: pa.Table) -> Path | pa.Table:
    """Write one part's cell table of `kind` (see `_PARQUET`); the table itself where it cannot be written."""
    return write_cached(path, table, **_PARQUET[kind])


#: How `cells` is written. (Before `VERSION` 2 and 4, `cellterms` and `promptterms` were written too, sorted by
#: cell (prompt) then term id, the cell's dictionary and the ids delta-encoded, uncompressed: per part of the
#: 1M-rollout benchmark (pyarrow 26, DuckDB 2.0; CPU ms to write / for DuckDB to read, size) cellterms 3.8 / 2.6
#: / 418 KB, promptterms 1.9 / 1.1 / 172 KB; both are now made from the parts' flat lists when asked.)
_PARQUET: dict[str, dict[str, Any]] = {
    "cells": {"compression": "lz4", "use_dictionary": False, "write_statistics": ["step", "split"]},
}
#: How each kind's segments written from memory are written (`segments.Codec`; the module doc there has the
#: measurements): `cells` by pyarrow, with dictionaries and statistics for every column (DuckDB reads that file
#: as fast as its own, and without dictionaries ~20% slower: its constant style columns).
SEGMENT_COMPRESSION: dict[str, Any] = {
    "cells": {"compression": "lz4", "use_dictionary": True, "write_statistics": True},
}


def remember(store: Store, part: str, terms: Path | pa.Table, entry: dict[str, Any]) -> None:
    """Memoise a part's cell tables (`keep`) on the store, keyed by its term sets (`terms`: a part computed
    again gets new term sets, so an old entry is never mistaken for it)."""
    memo = store.__dict__.setdefault("_term_cells_memo", {})
    memo[part] = (terms if isinstance(terms, pa.Table) else str(terms), entry)


def reduce_arrays(part: str, terms: pa.Table, cell: np.ndarray, has_reasoning: np.ndarray,
                  pairs: list[tuple[np.ndarray, np.ndarray]], prompt_idx: np.ndarray, prompt_keys: np.ndarray,
                  prompt_off: np.ndarray, prompt_ids: np.ndarray) -> dict[str, Any]:
    """The cached tables of one part (`KINDS`) and its flat term lists (`LISTS`), in numpy, from arrays the
    term-set computation holds anyway.

    `terms`: the part's rows (scope keys and style columns; its list columns are not read); `cell`: each row's
    cell key (`CELL`, by DuckDB); `pairs`: per place (`WHERES` order) the rows' term sets as (offsets per row
    from 0, term ids); `prompt_idx`: each row's prompt, an index into `prompt_keys` and into the
    prompts' term lists (`prompt_ids[prompt_off[i]:prompt_off[i + 1]]`). Equals the former DuckDB aggregate:
    style values are whole numbers, so their sums are exact in any order; a cell without reasoning has NULL
    reasoning sums (SQL's sum over no rows)."""
    keys, first, g = np.unique(cell, return_index=True, return_inverse=True)
    g = g.ravel()
    k = len(keys)
    cols: dict[str, pa.Array] = {"cell": pa.array(keys, pa.uint64())}
    at = pa.array(first)
    for col in ("step", "split", "condition", "task", "prompt_key"):
        cols[col] = terms.column(col).take(at).cast(_CELLS_TYPES[col])
    n_r = np.bincount(g[has_reasoning], minlength=k)
    cols.update({"part": pa.array([part] * k, pa.string()), "n": pa.array(np.bincount(g, minlength=k)),
                 "n_r": pa.array(n_r)})
    for col, where, _ in style_columns():
        v = np.asarray(terms.column(col).to_numpy(), np.float64)
        rows = has_reasoning if where == "reasoning" else slice(None)
        none = n_r == 0 if where == "reasoning" else None
        for name, w in ((col, v[rows]), (f"{col}__q", v[rows] * v[rows])):
            cols[name] = pa.array(np.bincount(g[rows], weights=w, minlength=k), pa.float64(), mask=none)
    used = np.unique(prompt_idx)
    start, end = prompt_off[used], prompt_off[used + 1]
    p_off = np.zeros(len(used) + 1, np.int64)
    np.cumsum(end - start, out=p_off[1:])
    prompts = (np.asarray(prompt_keys[used], np.uint64), p_off, _ranges(prompt_ids, start, end))
    rid = np.asarray(terms.column("rid").to_numpy(), np.uint64)
    return {"cells": pa.table(cols), LISTS: TermLists.of(cell, has_reasoning, pairs, rid, prompts)}


@dataclass
class TermLists:
    """One part's rollouts as `cellterms` needs them: each one's cell (`CELL`), whether it has reasoning, and
    per place (`WHERES` order) the term lists as flat arrays (offsets per rollout from 0, ids); each one's
    `rid` (the term sets' key), so that readers of the term sets' rows take the lists from here (the term-set
    files hold none: `tokens.with_lists`, `tokens.TermSets.holding`); and the part's distinct prompts' terms
    (`prompts`: their keys, offsets per prompt from 0, ids), which `promptterms` rows are made from
    (`part_prompt_terms`). Kept as one uncompressed `.npy` file a part (`save`, `load`): ~0.7 MB at 5,000
    rollouts, read in ~0.1-0.3 ms, against ~3-4 ms for the same lists from a Parquet file (its list levels).

    Why the prompts' terms are here and not a Parquet table of (prompt_key, term_id) rows of their own (as
    before `VERSION` 4): every reader but the window sums asks for a few terms' prompts (a gather, as
    `TermSets.pairs` does for the rollouts), and those tables were the costliest derived write of a cold audit
    (0.52 of ~1.7 CPU s of derived writes at 1M rollouts, 42.5 MB; 649 MB at 10M)."""

    cell: np.ndarray
    has_reasoning: np.ndarray
    lists: list[tuple[np.ndarray, np.ndarray]]
    rid: np.ndarray
    prompts: tuple[np.ndarray, np.ndarray, np.ndarray]
    #: the distinct ids the part's prompts hold, sorted: a gather of a few terms' prompts (`part_prompt_terms`)
    #: reads the prompts' lists only of the parts where some of the terms are held (the focus terms of a cold
    #: 1M audit are held by no prompt: three gathers over every part's lists cost ~0.45 CPU s for no row)
    held: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))

    @classmethod
    def of(cls, cell: np.ndarray, has_reasoning: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]],
           rid: np.ndarray, prompts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> TermLists:
        """From the term-set worker's arrays, in the smallest types that hold them (ids in 16 bits while the
        vocabulary has fewer than 65,536 terms); `prompts` (keys, offsets, ids): none when not given."""
        def small(a: np.ndarray) -> np.ndarray:
            top = int(a.max(initial=0))
            return a.astype(np.uint16 if top < 1 << 16 else np.int32 if top < 1 << 31 else np.int64)

        keys, off, ids = prompts if prompts is not None else (np.zeros(0, np.uint64), np.zeros(1, np.int64),
                                                               np.zeros(0, np.int64))
        ids = small(np.asarray(ids))
        return cls(np.asarray(cell, np.uint64), np.asarray(has_reasoning, bool),
                   [(small(off), small(ids)) for off, ids in pairs], np.asarray(rid, np.uint64),
                   (np.asarray(keys, np.uint64), small(np.asarray(off)), ids),
                   small(np.flatnonzero(np.bincount(ids)) if len(ids) else np.zeros(0, np.int64)))

    def save(self, path: Path) -> Path | TermLists:
        """Write to `path` (atomically): the arrays one after another, each as `np.save` writes it (one file
        and no archive: `np.savez`'s zip and CRC made a part's read ~1 ms instead of ~0.1); the lists
        themselves where the store cannot be written."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                for a in (self.cell, self.has_reasoning, self.rid, *(a for pair in self.lists for a in pair),
                          self.held, *self.prompts):
                    np.save(f, a, allow_pickle=False)

        return path if write_atomic(path, write) else self

    @classmethod
    def load(cls, path: Path | TermLists, only: str | None = None, terms: np.ndarray | None = None) -> TermLists:
        """The lists `save` wrote to `path` (or `path` itself, lists kept in memory). `only` (a place, "rollouts"
        or "prompt"): that place's lists and `rid`, the rollouts' cells and lists (not `rid`), or the prompts'
        lists, only; the other arrays skipped unread and left empty (`TermSets.holding` reads one place of every
        sampled part, `part_cellterms` the rollouts, `part_prompt_terms` the prompts).
        `terms` (sorted ids, with "prompt"): the prompts' lists are read only where their prompts hold one of
        them (`held`), else left empty. A file damaged after it was written (`save` writes atomically) is an
        error naming it and the remedy, not numpy's bare message."""
        if isinstance(path, TermLists):
            return path
        none = (np.zeros(0, np.uint64), np.zeros(1, np.int64), np.zeros(0, np.int64))
        try:
            with open(path, "rb") as f:
                kept = {"rollouts": {"cell", "has_reasoning", *WHERES}, "prompt": set()}.get(only, {"rid", only})
                want = lambda name: only is None or name in kept  # noqa: E731
                cell, has_reasoning, rid = (_read(f, want(n)) for n in ("cell", "has_reasoning", "rid"))
                lists = [(_read(f, want(w)), _read(f, want(w))) for w in WHERES]
                if only is not None and only != "prompt":  # the prompts come last: not read at all
                    return cls(cell, has_reasoning, lists, rid, none)
                held = _read(f, True)
                if terms is not None and not _meets(held, terms):
                    return cls(cell, has_reasoning, lists, rid, none, held)
                return cls(cell, has_reasoning, lists, rid, tuple(_read(f, True) for _ in range(3)), held)
        except (ValueError, EOFError) as exc:
            raise RlauditError(f"{path}: cached term lists unreadable ({exc}); delete the file and the next audit "
                               "computes them again") from None


def part_prompt_terms(lists: Path | TermLists, term_ids: np.ndarray | None = None) -> pa.Table:
    """One part's `promptterms` rows (`SCHEMAS`: (prompt_key, term_id), distinct per prompt), of the sorted
    `term_ids` only when given (the positions of those ids in the prompts' flat lists, their prompts by the
    offsets), from its flat term lists (`TermLists`, or their file)."""
    keys, off, ids = TermLists.load(lists, only="prompt", terms=term_ids).prompts
    if term_ids is None:
        key, term = np.repeat(keys, np.diff(np.asarray(off, np.int64))), ids
    else:
        prompt, at = flat_hits(off, ids, id_mask(term_ids, int(ids.max(initial=0))))
        key, term = keys[prompt], ids[at]
    return pa.table({"prompt_key": pa.array(key, pa.uint64()), "term_id": pa.array(term, pa.int32())},
                    schema=SCHEMAS["promptterms"])


def id_mask(term_ids: np.ndarray, top: int) -> np.ndarray:
    """Per id from 0 to the larger of `top` and the largest of `term_ids`, whether `term_ids` holds it: a gather
    of a list's ids in it then answers membership (`np.isin` compares every id with each term in turn)."""
    mask = np.zeros(max(top, int(term_ids.max(initial=-1))) + 1, bool)
    mask[term_ids[term_ids >= 0]] = True
    return mask


def flat_hits(off: np.ndarray, flat: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, position) of every id of flat lists (`off`: offsets per row from 0, `flat`: the ids) that `mask`
    marks (`id_mask`, covering every id of `flat`): the positions by one gather, their rows by a binary search
    in the offsets (a few thousand hits a part where a few terms are asked)."""
    at = np.flatnonzero(mask[flat])
    return np.searchsorted(np.asarray(off, np.int64), at, side="right") - 1, at


def _meets(held: np.ndarray, terms: np.ndarray) -> bool:
    """Whether two sorted arrays of ids share one."""
    at = np.searchsorted(held, terms)
    return bool(len(held)) and bool((held[np.minimum(at, len(held) - 1)] == terms).any())


def _read(f: Any, keep: bool) -> np.ndarray:
    """The next array `np.save` wrote to `f`, or (not `keep`) an empty one of its type, its bytes skipped."""
    if keep:
        return np.load(f, allow_pickle=False)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError("an array of objects")
    f.seek(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
    return np.zeros(0, dtype)


def part_cellterms(lists: Path | TermLists, term_ids: np.ndarray | None = None) -> pa.Table:
    """One part's `cellterms` rows (`SCHEMAS`), of the sorted `term_ids` only when given, from its flat term
    lists (`TermLists`, or their file): each rollout's answer terms, and its reasoning terms if it has reasoning,
    counted per (cell, term): every term by `_cell_terms` (the rows the term-set workers cached before `VERSION`
    2, in the same order); a few (a focus scan) from the positions of their ids alone (`_some_terms`), ~0.3 ms
    a part instead of ~3, the cells of those rollouts only (ranking every rollout's cell was ~0.75 of the 10M
    benchmark's ~4.3 CPU s of focus scans). Readers sum the rows, in any order."""
    t = TermLists.load(lists, only="rollouts")
    if term_ids is None:
        keys, g = np.unique(t.cell, return_inverse=True)
        pairs = [(np.asarray(off, np.int64), np.asarray(ids, np.int32)) for off, ids in t.lists]
        cell_idx, term_id, x = _cell_terms(g.ravel().astype(np.int64), t.has_reasoning, pairs)
    else:
        rows, ids = _some_terms(t, term_ids)
        keys, g = np.unique(t.cell[rows], return_inverse=True)
        cell_idx, term_id, x = _count_pairs(g.ravel().astype(np.int64), ids)
    return pa.table({"cell": pa.array(keys[cell_idx], pa.uint64()), "term_id": pa.array(term_id, pa.int32()),
                     "x": pa.array(x, pa.int32())}, schema=SCHEMAS["cellterms"])


def _some_terms(t: TermLists, term_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, term id) of every hit of the terms `term_ids` in the lists `t` (`flat_hits`), reasoning hits of
    rollouts without reasoning left out."""
    rows, ids = [], []
    mask = id_mask(term_ids, max(int(flat.max(initial=0)) for _, flat in t.lists))
    for where, (off, flat) in zip(WHERES, t.lists):
        r, at = flat_hits(off, flat, mask)
        if where == "reasoning":
            r, at = r[t.has_reasoning[r]], at[t.has_reasoning[r]]
        rows.append(r)
        ids.append(flat[at].astype(np.int64))
    return np.concatenate(rows), np.concatenate(ids)


def _ranges(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """values[lo[i]:hi[i]], one range after another: a view where each range starts where the one before ends
    (a part whose rows use all its prompts: ~1.2 ms a part of the 1M benchmark's 20,000 rollouts saved), else
    copied range by range where numba is used (the ranges' bytes, `kernels.gather_spans`: a part's prompts' term
    lists, ~130k ids, 0.6 -> 0.1 ms), else through one index array."""
    if len(lo) and np.array_equal(lo[1:], hi[:-1]):  # ranges end to end (every prompt of a part used): a view
        return values[lo[0]:hi[-1]]
    width = values.dtype.itemsize
    got = kernels.gather_spans(np.ascontiguousarray(values).view(np.uint8), lo * width, hi * width)
    if got is not None:
        return got[0].view(values.dtype)
    length = hi - lo
    within = np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length)
    return values[np.repeat(lo, length) + within]


def _cell_terms(g: np.ndarray, has_reasoning: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell index, term id, rollouts) per distinct (cell, term): answer terms of every row, reasoning terms of the
    rows with reasoning (`pairs`: per place, offsets per row and ids). Compiled where numba is installed
    (`kernels.cell_term_counts`: the pairs by cell, not sorted within a cell), else one sort (sorted by cell and
    id). Readers sum the rows, in any order."""
    if not any(len(v) for _, v in pairs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if kernels.use_numba():
        n_ids = max((int(v.max()) + 1 for _, v in pairs if len(v)), default=0)
        return kernels.cell_term_counts(g, pairs, has_reasoning, n_ids)
    rows, ids = [], []
    for where, (off, v) in zip(WHERES, pairs):
        r = np.repeat(np.arange(len(off) - 1, dtype=np.int64), np.diff(off))
        if where == "reasoning":
            keep = has_reasoning[r]
            r, v = r[keep], v[keep]
        rows.append(r)
        ids.append(v)
    return _count_pairs(g[np.concatenate(rows)], np.concatenate(ids).astype(np.int64))


def _count_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (a, b) pairs of two non-negative integer arrays with their counts, sorted by a then b: one
    bincount of a * width + b when the product space is small, else one sort of those codes (in 32 bits when
    they fit: a 32-bit sort is about 1.5x as fast) and the lengths of its runs."""
    if not len(a):
        return a, b, np.zeros(0, np.int64)
    width = int(b.max()) + 1
    space = (int(a.max()) + 1) * width
    if space <= 8 * len(a) + (1 << 16):
        counts = np.bincount(a * width + b, minlength=space)
        code = np.flatnonzero(counts)
        x = counts[code]
    else:
        dtype = np.uint32 if space <= (1 << 32) else np.int64
        code = np.sort(a.astype(dtype) * dtype(width) + b.astype(dtype))
        new = np.empty(len(code), bool)
        new[0] = True
        np.not_equal(code[1:], code[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        x = np.diff(np.append(starts, len(code)))
        code = code[starts].astype(np.int64)
    return code // width, code % width, x


_CELLS_TYPES = {"cell": pa.uint64(), "step": pa.int64(), "split": pa.string(), "condition": pa.string(),
                "task": pa.string(), "prompt_key": pa.uint64(), "part": pa.string(), "n": pa.int64(),
                "n_r": pa.int64()}
SCHEMAS = {
    "cells": pa.schema(list(_CELLS_TYPES.items()) + [(f"{col}{q}", pa.float64()) for col, _, _ in style_columns()
                                                     for q in ("", "__q")]),
    "cellterms": pa.schema([("cell", pa.uint64()), ("term_id", pa.int32()), ("x", pa.int32())]),
    "promptterms": pa.schema([("prompt_key", pa.uint64()), ("term_id", pa.int32())]),
}


def _empty(kind: str) -> pa.Table:
    return SCHEMAS[kind].empty_table()


def _read_focus(d: Path, parts: set[str]) -> tuple[list[pa.Table], list[str], list[int], list[chunks.Chunk]]:
    """A focus cache's rows per chunk (memory-mapped), parts, terms and chunks; nothing when it is missing,
    unreadable or holds a part that is no longer among `parts` (its rows would count that part)."""
    listed, tables, info = chunks.load_tables(d, _FOCUS_KEY, parts, SCHEMAS["cellterms"])
    if "terms" not in info:
        return [], [], [], []
    return tables, [p for c in listed for p in c.parts], list(info["terms"]), listed


def _write_focus(d: Path, listed: list[chunks.Chunk], held: list[pa.Table], parts: list[str], rows: pa.Table,
                 terms: list[int]) -> None:
    """Add a chunk of `rows` (those of the parts `parts`) after the chunks `listed` (whose rows are `held`):
    `chunks.append_table` (`listed` empty: the cache is this chunk alone, and the former single-file layout,
    `focus/cellterms.parquet`, goes)."""
    chunks.append_table(d, _FOCUS_KEY, listed, held, parts, rows, SCHEMAS["cellterms"], {"terms": terms},
                        former=d / "cellterms.parquet")


def _stem(part: str) -> str:
    return Path(part).stem



def read(path: Path | pa.Table, columns: list[str] | None = None) -> pa.Table:
    """One cached table, or its `columns` (`pq.ParquetFile.read`: `pq.read_table` would import pandas); a file
    a segment holds instead is read from it."""
    if isinstance(path, pa.Table):
        return path if columns is None else path.select(columns)
    if not Path(path).is_file():
        t = segments.read_member(Path(path), Path(path).name.rsplit(".", 2)[-2])
        return t if columns is None else t.select(columns)
    return pq.ParquetFile(path).read(columns=columns)
