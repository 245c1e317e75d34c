"""The run's cell tables rolled up per (step, split, task, condition), and the prompts holding the reported
terms: small tables cached per run, grown by the parts added since.

Why: the `emerging` scope's whole-run tables (the steps and strata in scope, the per-step rollouts and style sums,
the conditions by traffic), the per-condition numbers of a finding (`emerging._by_condition`) and the prompts
holding a reported term were DuckDB queries over every part's cell tables (`termcells`: at 10M rollouts ~1.25M
cells, ~4.7M (cell, term) rows of the reported terms, and every part's prompt terms), O(run) on every warm audit
for one new step's worth of rows. The sums only need a few rows a step, and each part's are its own (sums over
parts add up: parts that share a step both hold rows of that step). Three tables:

- `strata`: per part and key, the rollouts `n`, those with reasoning `n_r`, and every style column's sum and
  sum of squares (`cells` summed);
- `focus`: for each *focus* term (the n-grams a detector may report) and key, the rollouts of cells whose
  prompt holds the term (`n_held`, `n_r_held`: not at risk; `strata`'s counts less these are the rollouts at
  risk) and those of the cells at risk containing it (`x`); no part column (only `strata` is asked which parts
  hold a step). Computed from the cells whose prompt holds a focus term and the focus terms' cell rows
  (`TermCells.focus`, itself cached per run), never a product of every cell with every term;
- `prompts`: the prompts holding each focus term, for the questions asked of single rollouts and cells (which
  are at risk).

A prompt's terms are a function of its text (`prompt_key` is its hash), so a part's own `promptterms` say
whether its cells' prompts hold a term, as every part's would. Each table is kept per run in chunks of parts
(`chunks`: Arrow IPC files, memory-mapped; `focus` and `prompts` also record their terms): an audit maps them
and computes only the parts added since (O(new parts)). A part that left the run, a missing or torn chunk or
another layout voids a table (it is recomputed from every part); focus terms not cached are computed over every
part once and kept with the earlier ones (at most `termcells.FOCUS_TERMS`). Stores that keep derived data in
memory compute the tables each time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from . import chunks, termcells
from .termcells import TermCells
from .tokens import style_columns

VERSION = 1
KEYS = [("step", pa.int64()), ("split", pa.string()), ("task", pa.string()), ("condition", pa.string()),
        ("part", pa.string())]


def strata_schema() -> pa.Schema:
    style = [f"{col}{q}" for col, _, _ in style_columns() for q in ("", "__q")]
    return pa.schema(KEYS + [("n", pa.int64()), ("n_r", pa.int64())] + [(c, pa.float64()) for c in style])


FOCUS_SCHEMA = pa.schema([("term_id", pa.int32())] + KEYS[:-1] + [
    ("n_held", pa.int64()), ("n_r_held", pa.int64()), ("x", pa.int64())])


def strata(cells: TermCells, con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Per part and (step, split, task, condition): `n`, `n_r` and the style sums (`strata_schema`)."""
    schema = strata_schema()
    sums = ", ".join(f"sum({c}) AS {c}" for c in schema.names[len(KEYS):])

    def compute(only: set[str], _terms: list[int]) -> pa.Table:
        cells.register(con, "cells", "_rollup_cells", only=only)
        return con.sql(f"""SELECT step, split, task, condition, part, {sums} FROM _rollup_cells
                           GROUP BY ALL""").to_arrow_table().cast(schema)

    return _cached(_directory(cells, "strata"), f"strata-v{VERSION}-{len(schema)}", cells, None, compute, schema)


def focus(cells: TermCells, con: duckdb.DuckDBPyConnection, term_ids: set[int]) -> pa.Table:
    """Per focus term and (step, split, task, condition): the rollouts of cells whose prompt holds the term,
    `n_held` and `n_r_held` (not at risk: the rollouts at risk are `strata`'s `n` less these), and those of the
    cells at risk containing it, `x` (`FOCUS_SCHEMA`); rows of `term_ids` and possibly of other terms cached
    with them, several rows of one key possible (their sums are the numbers)."""
    every = {name for name, _ in cells.parts}

    def compute(only: set[str], terms: list[int]) -> pa.Table:
        if not terms:
            return FOCUS_SCHEMA.empty_table()
        con.register("_rollup_terms", pa.table({"term_id": pa.array(terms, pa.int32())}))
        cells.register(con, "cells", "_rollup_cells", only=only)
        cells.register(con, "promptterms", "_rollup_promptterms", only=only, term_ids=terms)
        if only == every:  # the terms' cell rows over every part: the focus cache (`TermCells.focus`), not a scan
            ct = "_rollup_ct_focus"
            cells.focus(con, set(terms), ct, view=True)
        else:
            ct = "_rollup_ct"
            cells.register(con, "cellterms", "_rollup_ct_parts", only=only)
            con.execute("""CREATE OR REPLACE TEMP VIEW _rollup_ct AS SELECT cell, term_id, x FROM _rollup_ct_parts
                           SEMI JOIN _rollup_terms USING (term_id)""")
        # parts that share a step may both hold a cell (the same hash, the same keys): the cells' keys are then
        # taken once, so that each part's term counts meet the cell once
        shared = con.execute("""SELECT count(*) FROM (SELECT step, split FROM _rollup_cells GROUP BY ALL
                                HAVING count(DISTINCT part) > 1)""").fetchall()[0][0] > 0
        keys = "SELECT DISTINCT cell, step, split, task, condition, prompt_key FROM _rollup_cells" if shared \
            else "SELECT cell, step, split, task, condition, prompt_key FROM _rollup_cells"
        # NULL keys (split, task) group together in GROUP BY, where a join on them would drop them
        return con.sql(f"""
            WITH p AS (SELECT DISTINCT prompt_key, term_id FROM _rollup_promptterms)
            SELECT term_id, step, split, task, condition, sum(n_held) AS n_held, sum(n_r_held) AS n_r_held,
                   sum(x) AS x
            FROM (SELECT p.term_id, c.step, c.split, c.task, c.condition, c.n AS n_held, c.n_r AS n_r_held, 0 AS x
                  FROM _rollup_cells c JOIN p USING (prompt_key)
                  UNION ALL
                  SELECT ct.term_id, c.step, c.split, c.task, c.condition, 0, 0, ct.x
                  FROM {ct} ct JOIN ({keys}) c USING (cell)
                  ANTI JOIN p ON p.prompt_key = c.prompt_key AND p.term_id = ct.term_id)
            GROUP BY ALL""").to_arrow_table().cast(FOCUS_SCHEMA)

    return _cached(_directory(cells, "focus"), f"focus-v{VERSION}", cells, sorted(term_ids), compute, FOCUS_SCHEMA)


PROMPTS_SCHEMA = pa.schema([("term_id", pa.int32()), ("prompt_key", pa.uint64())])


def prompts(cells: TermCells, con: duckdb.DuckDBPyConnection, term_ids: set[int]) -> pa.Table:
    """The prompts holding each focus term (`PROMPTS_SCHEMA`): distinct within a chunk, a prompt seen in the
    parts of several chunks listed once per chunk (readers look prompts up, so repeats do no harm); rows of
    `term_ids` and possibly of other terms cached with them."""

    def compute(only: set[str], terms: list[int]) -> pa.Table:
        if not terms:
            return PROMPTS_SCHEMA.empty_table()
        cells.register(con, "promptterms", "_rollup_promptterms", only=only, term_ids=terms)
        return con.sql("""SELECT DISTINCT term_id, prompt_key FROM _rollup_promptterms""").to_arrow_table().cast(
            PROMPTS_SCHEMA)

    return _cached(_directory(cells, "prompts"), f"prompts-v{VERSION}", cells, sorted(term_ids), compute,
                   PROMPTS_SCHEMA)


def _directory(cells: TermCells, name: str) -> Path | None:
    """Where a rollup is cached (beside the parts' cell tables), or None for tables kept in memory."""
    entries = [p["cells"] for _, p in cells.parts]
    if not entries or any(isinstance(e, pa.Table) for e in entries):
        return None
    return Path(entries[0]).parent / "rollup" / name


def _cached(d: Path | None, key: str, cells: TermCells, wanted: list[int] | None,
            compute: Callable[[set[str], list[int]], pa.Table], schema: pa.Schema) -> pa.Table:
    """The rollup of every part of `cells`: the cached chunks (`d`) plus `compute(parts, terms)` of what they
    lack: the parts added since (for the cached terms), terms not cached (`wanted`; None: a rollup without
    terms) over every part. Written back: the new parts as a chunk of their own (`chunks.append`), or, when
    terms were added, everything as one chunk."""
    names = [name for name, _ in cells.parts]
    listed, held, terms = _read(d, key, set(names), schema) if d is not None else ([], [], [])
    if wanted is None:
        keep, old = [], []
    else:
        union = sorted(set(terms) | set(wanted))
        keep = union if len(union) <= termcells.FOCUS_TERMS else sorted(set(wanted))
        old = sorted(set(terms) & set(keep))
    covered = {p for c in listed for p in c.parts}
    new_parts = [n for n in names if n not in covered]
    pieces = list(held)
    if listed and wanted is not None and keep != terms:
        pieces = [t.filter(pc.is_in(t["term_id"], pa.array(keep, pa.int32()))) for t in held] if old else []
    # every part named, not None: a view over every part would merge their segments (`segments.covering`), and
    # a merge removes the segments that views of the caller over some parts read
    if not listed:  # nothing cached: every part
        added = compute(set(names), keep)
        pieces = [added]
    else:
        added = compute(set(new_parts), old if wanted is not None else []) if new_parts else None
        if added is not None:
            pieces.append(added)
        if wanted is not None and set(keep) - set(old):
            pieces.append(compute(set(names), sorted(set(keep) - set(old))))
    out = pa.concat_tables(pieces) if pieces else schema.empty_table()
    if d is None:
        return out
    info = {"terms": keep} if wanted is not None else {}
    if not listed or (wanted is not None and keep != terms):  # one chunk of every part
        _write(d, key, [], [], names, out, schema, info)
    elif new_parts:  # the new parts' rows, a chunk of their own
        _write(d, key, listed, held, new_parts, added, schema, info)
    return out


def _read(d: Path, key: str, parts: set[str], schema: pa.Schema
          ) -> tuple[list[chunks.Chunk], list[pa.Table], list[int]]:
    """A rollup's chunks, their rows (memory-mapped) and its terms; nothing when it is missing, unreadable, of
    another layout or holds a part that is no longer among `parts` (its rows would count that part)."""
    listed, tables, info = chunks.load_tables(d, key, parts, schema)
    return listed, tables, list(info.get("terms", []))


def _write(d: Path, key: str, listed: list[chunks.Chunk], held: list[pa.Table], parts: list[str], rows: pa.Table,
           schema: pa.Schema, info: dict[str, Any]) -> None:
    """Add a chunk of `rows` (those of the parts `parts`) after the chunks `listed` (whose rows are `held`)."""
    chunks.append_table(d, key, listed, held, parts, rows, schema, info)
