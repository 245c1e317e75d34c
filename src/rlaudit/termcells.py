"""Per-part cell tables of the term sets: what the `emerging` and `generalization` statistics need, without a
row per rollout.

Those statistics never look at a single rollout's term list: they sum over *cells*, the rollouts of one
(step, split, task, condition, prompt) (a cluster of the window statistics is a (window, stratum, prompt) union
of cells; a per-condition series a union of cells of one step). So every stored part's cached term sets
(`tokens.term_sets`) are reduced once to three small tables, cached beside them under the same vocabulary id:

- `cells`: per cell (`cell`: a 64-bit hash of its five keys, and the keys themselves) the rollouts `n`, those
  with reasoning `n_r`, and for every style column the sum and the sum of squares (`answer__length`,
  `answer__length__q`; reasoning columns over the rollouts with reasoning only, as the detectors filter them);
- `cellterms`: per cell and term id the rollouts containing the term (`x`; reasoning terms among rollouts with
  reasoning), copies of the prompt already excluded by the term sets;
- `promptterms`: the distinct (prompt_key, term_id) of the part's prompts (a prompt holding a term takes its
  cells out of the term's rollouts at risk).

A run that grows by a step reduces only the new part; a warm audit reads the small tables (at 1M rollouts:
~125k cells) instead of re-reading every rollout's term lists. Parts that share a step may hold the same cell:
its rows are summed by the readers (`emerging.Scope`). A store that keeps derived data in memory
(`persist_derived = False`) gets the same tables in memory, memoised on the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .store import Store, bound_memory, prune_cached, write_cached
from .tokens import TermSets, style_columns, union_view

VERSION = 1
KINDS = ("cells", "cellterms", "promptterms")
#: the term-set columns the reduction reads (not the rollout ids)
NEEDED = ["step", "split", "condition", "task", "prompt_key", "has_reasoning",
          *[col for col, _, _ in style_columns()], "answer_terms", "reasoning_terms", "prompt_terms"]
#: the cell key: two cells share a hash with probability ~2^-64 per pair
CELL = "hash(step, split, task, condition, prompt_key)"


@dataclass
class TermCells:
    """Per part (name), its three tables: cached files or, for stores that do not persist derived data, tables."""

    parts: list[tuple[str, dict[str, Any]]]

    def register(self, con: duckdb.DuckDBPyConnection, kind: str, view: str, only: set[str] | None = None) -> None:
        """View `view` over the `kind` table of every part (or of the parts named in `only`)."""
        union_view(con, view, [p[kind] for name, p in self.parts if only is None or name in only],
                   lambda: _empty(kind), segment=kind if only is None else None)


def term_cells(store: Store, run: str, sets: TermSets, prune: bool = True) -> TermCells:
    """The cell tables of every part of `sets`, reducing (and caching) the parts that lack them. `prune`: remove
    the cached tables of parts `sets` does not hold (off when `sets` is a shard of the run)."""
    persist = getattr(store, "persist_derived", True)
    memo = store.__dict__.setdefault("_term_cells_memo", {})
    out = []
    con = None
    for i, (name, files) in enumerate(sets.parts):
        terms = files["terms"]
        hit = memo.get(name)
        entry = hit[1] if hit is not None and (
            hit[0] is terms or (isinstance(hit[0], str) and hit[0] == str(terms))) else None
        cdir = Path(terms).parent.parent.parent / "termcells" / f"{Path(terms).parent.name}-v{VERSION}" \
            if not isinstance(terms, pa.Table) else None
        if entry is None and cdir is not None and persist:
            cached = {kind: cdir / f"{_stem(name)}.{kind}.parquet" for kind in KINDS}
            if all(f.is_file() for f in cached.values()):
                entry = cached
        if entry is None:
            if con is None:
                con = duckdb.connect()
                con.execute("SET enable_progress_bar = false")
                bound_memory(con)
            tables = reduce_part(con, read(terms, NEEDED), name)
            entry = tables if cdir is None or not persist else {
                kind: write_cached(cdir / f"{_stem(name)}.{kind}.parquet", t, compression="lz4", use_dictionary=False)
                for kind, t in tables.items()}
        memo[name] = (terms if isinstance(terms, pa.Table) else str(terms), entry)
        out.append((name, entry))
    if con is not None:
        con.close()
    if prune and persist and sets.parts and not isinstance(sets.parts[0][1]["terms"], pa.Table):
        first = Path(sets.parts[0][1]["terms"])
        base = first.parent.parent.parent / "termcells"
        prune_cached(base, base / f"{first.parent.name}-v{VERSION}", {_stem(n) for n, _ in sets.parts})
    return TermCells(parts=out)


def reduce_part(con: duckdb.DuckDBPyConnection, terms: pa.Table, part: str) -> dict[str, pa.Table]:
    """The three cell tables of one part's term sets (see the module doc): the cells by a DuckDB aggregate, the
    (cell, term) counts and the prompts' terms in numpy over the flat term lists (no per-entry SQL)."""
    con.register("_part_terms", terms)
    styles = []
    for col, where, _ in style_columns():
        filt = " FILTER (WHERE has_reasoning)" if where == "reasoning" else ""
        styles.append(f"sum({col}){filt} AS {col}, sum({col} * {col}){filt} AS {col}__q")
    keyed = con.sql(f"SELECT {CELL} AS cell FROM _part_terms").to_arrow_table()
    cells = con.sql(f"""
        SELECT {CELL} AS cell, step, split, condition, task, prompt_key, {_sql_str(part)} AS part,
               count(*) AS n, count(*) FILTER (WHERE has_reasoning) AS n_r, {", ".join(styles)}
        FROM _part_terms GROUP BY step, split, condition, task, prompt_key""").to_arrow_table()
    con.unregister("_part_terms")
    cell_keys, cell_of = np.unique(np.asarray(keyed.column("cell").to_numpy(), np.uint64), return_inverse=True)
    has_reasoning = np.asarray(terms.column("has_reasoning").to_numpy(zero_copy_only=False), bool)
    rows, ids = [], []
    for col, ok in (("answer_terms", None), ("reasoning_terms", has_reasoning)):
        r, v = _flat(terms.column(col))
        if ok is not None:
            keep = ok[r]
            r, v = r[keep], v[keep]
        rows.append(r)
        ids.append(v)
    cell_idx, term_id, x = _count_pairs(cell_of.ravel()[np.concatenate(rows)], np.concatenate(ids))
    cellterms = pa.table({"cell": pa.array(cell_keys[cell_idx], pa.uint64()), "term_id": pa.array(term_id, pa.int32()),
                          "x": pa.array(x, pa.int32())})
    # a prompt's term list is the same in every rollout of it, and distinct: the list of its first rollout
    prompt_keys, first = np.unique(np.asarray(terms.column("prompt_key").to_numpy(), np.uint64), return_index=True)
    r, v = _flat(terms.column("prompt_terms").take(pa.array(first)))
    promptterms = pa.table({"prompt_key": pa.array(prompt_keys[r], pa.uint64()), "term_id": pa.array(v, pa.int32())})
    return {"cells": cells, "cellterms": cellterms, "promptterms": promptterms}


def _flat(lists: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(row, value) of every entry of a list<int32> column (nulls as empty lists)."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks() if lists.num_chunks != 1 else lists.chunk(0)
    lists = pc.fill_null(lists, pa.scalar([], lists.type))
    offsets = np.asarray(lists.offsets.to_numpy(), np.int64)  # of a slice: into the parent's values
    values = np.asarray(lists.values.to_numpy(zero_copy_only=False), np.int64)[offsets[0]:offsets[-1]]
    return np.repeat(np.arange(len(lists), dtype=np.int64), np.diff(offsets)), values


def _count_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (a, b) pairs of two non-negative integer arrays with their counts, by one sort of
    a * width + b (or one bincount when the product space is small)."""
    if not len(a):
        return a, b, np.zeros(0, np.int64)
    width = int(b.max()) + 1
    space = (int(a.max()) + 1) * width
    if space <= 8 * len(a) + (1 << 16):
        counts = np.bincount(a * width + b, minlength=space)
        code = np.flatnonzero(counts)
        x = counts[code]
    else:
        code, x = np.unique(a * width + b, return_counts=True)
    return code // width, code % width, x


_EMPTY: dict[str, pa.Table] = {}


def _empty(kind: str) -> pa.Table:
    if not _EMPTY:
        con = duckdb.connect()
        schema = pa.schema([("rid", pa.uint64()), ("rollout_id", pa.string()), ("step", pa.int64()),
                            ("split", pa.string()), ("condition", pa.string()), ("task", pa.string()),
                            ("group_id", pa.string()), ("prompt_key", pa.uint64()), ("has_reasoning", pa.bool_())]
                           + [(col, pa.float64()) for col, _, _ in style_columns()]
                           + [(c, pa.list_(pa.int32())) for c in ("answer_terms", "reasoning_terms", "prompt_terms")])
        _EMPTY.update({k: t.schema.empty_table() for k, t in reduce_part(con, schema.empty_table(), "").items()})
        con.close()
    return _EMPTY[kind]


def _stem(part: str) -> str:
    return Path(part).stem


def _sql_str(x: str) -> str:
    return "'" + x.replace("'", "''") + "'"


def read(path: Path | pa.Table, columns: list[str] | None = None) -> pa.Table:
    """One cached table, or its `columns` (`pq.ParquetFile.read`: `pq.read_table` would import pandas)."""
    if isinstance(path, pa.Table):
        return path if columns is None else path.select(columns)
    return pq.ParquetFile(path).read(columns=columns)
