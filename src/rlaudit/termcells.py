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
import pyarrow as pa
import pyarrow.parquet as pq

from .store import Store, bound_memory, prune_cached, write_cached
from .tokens import TermSets, style_columns

VERSION = 1
KINDS = ("cells", "cellterms", "promptterms")
#: the cell key: two cells share a hash with probability ~2^-64 per pair
CELL = "hash(step, split, task, condition, prompt_key)"


@dataclass
class TermCells:
    """Per part (name), its three tables: cached files or, for stores that do not persist derived data, tables."""

    parts: list[tuple[str, dict[str, Any]]]

    def register(self, con: duckdb.DuckDBPyConnection, kind: str, view: str, only: set[str] | None = None) -> None:
        """View `view` over the `kind` table of every part (or of the parts named in `only`)."""
        chosen = [p for name, p in self.parts if only is None or name in only]
        paths = [str(p[kind]) for p in chosen if not isinstance(p[kind], pa.Table)]
        tables = [p[kind] for p in chosen if isinstance(p[kind], pa.Table)]
        selects = []
        if paths:
            selects.append(f"SELECT * FROM read_parquet({_sql_list(paths)})")
        if tables:
            con.register(f"_{view}_mem", pa.concat_tables(tables))
            selects.append(f"SELECT * FROM _{view}_mem")
        if not selects:
            con.register(f"_{view}_empty", _empty(kind))
            selects.append(f"SELECT * FROM _{view}_empty")
        con.execute(f"CREATE OR REPLACE VIEW {view} AS {' UNION ALL BY NAME '.join(selects)}")


def term_cells(store: Store, run: str, sets: TermSets) -> TermCells:
    """The cell tables of every part of `sets`, reducing (and caching) the parts that lack them."""
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
            tables = reduce_part(con, sets.part_table(i, "terms"), name)
            entry = tables if cdir is None or not persist else {
                kind: write_cached(cdir / f"{_stem(name)}.{kind}.parquet", t, compression="lz4")
                for kind, t in tables.items()}
        memo[name] = (terms if isinstance(terms, pa.Table) else str(terms), entry)
        out.append((name, entry))
    if con is not None:
        con.close()
    if persist and sets.parts and not isinstance(sets.parts[0][1]["terms"], pa.Table):
        first = Path(sets.parts[0][1]["terms"])
        base = first.parent.parent.parent / "termcells"
        prune_cached(base, base / f"{first.parent.name}-v{VERSION}", {_stem(n) for n, _ in sets.parts})
    return TermCells(parts=out)


def reduce_part(con: duckdb.DuckDBPyConnection, terms: pa.Table, part: str) -> dict[str, pa.Table]:
    """The three cell tables of one part's term sets (see the module doc)."""
    con.register("_part_terms", terms)
    styles = []
    for col, where, _ in style_columns():
        filt = " FILTER (WHERE has_reasoning)" if where == "reasoning" else ""
        styles.append(f"sum({col}){filt} AS {col}, sum({col} * {col}){filt} AS {col}__q")
    cells = con.sql(f"""
        SELECT {CELL} AS cell, step, split, condition, task, prompt_key, {_sql_str(part)} AS part,
               count(*) AS n, count(*) FILTER (WHERE has_reasoning) AS n_r, {", ".join(styles)}
        FROM _part_terms GROUP BY step, split, condition, task, prompt_key ORDER BY cell""").to_arrow_table()
    cellterms = con.sql(f"""
        SELECT cell, term_id, CAST(count(*) AS INTEGER) AS x FROM (
            SELECT {CELL} AS cell, unnest(answer_terms) AS term_id FROM _part_terms
            UNION ALL SELECT {CELL} AS cell, unnest(reasoning_terms) AS term_id FROM _part_terms WHERE has_reasoning)
        GROUP BY ALL ORDER BY term_id, cell""").to_arrow_table()
    promptterms = con.sql("""
        SELECT DISTINCT prompt_key, term_id FROM (
            SELECT prompt_key, unnest(prompt_terms) AS term_id FROM (
                SELECT prompt_key, any_value(prompt_terms) AS prompt_terms FROM _part_terms GROUP BY prompt_key))
        ORDER BY term_id, prompt_key""").to_arrow_table()
    con.unregister("_part_terms")
    return {"cells": cells, "cellterms": cellterms, "promptterms": promptterms}


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


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join(_sql_str(s) for s in items) + "]"


def read(path: Path | pa.Table) -> pa.Table:
    """One cached table (for tests)."""
    return path if isinstance(path, pa.Table) else pq.ParquetFile(path).read()
