"""Per-condition, per-step sums of the rollouts at risk of the reported terms, and their single-cell cluster
terms, cached per run and grown by the parts added since.

The `generalization` detector follows every reported n-gram per condition and step (the rollouts at risk, those
whose prompt lacks the term, and how many of them hold it) and sums prompt clusters over two windows. Summed over
every cell in scope on each audit, that cost O(run): at 10M rollouts (2,000 steps, ~1.25M cells) ~0.3 CPU s a
behaviour, for one new step's worth of new cells. Those sums split by part: a cell's prompt holds a term or not
whichever part it is read from (the prompt key is a hash of the prompt's text, and a part's `promptterms` list
the terms of each of its prompts), so the cells at risk in a part, and their sums, are the part's own. So they
are summed once per part into rows per (term_id, step, split, condition, task_key):

- `n`, `n_r`: the rollouts at risk (with reasoning); `x`: those holding the term;
- the terms a cluster of one cell adds to the window statistics (`stratified_ratio`): `xx` (sum of x^2), `xn`,
  `xn_r` (x * n), `nn`, `nn_r` (n^2) and the cells `g`, `g_r` (with n > 0): a prompt that recurs
  (`repeats`) is grouped by the detector from its cells instead.

They are kept per run beside the cell tables (`gen_steps/`), for a set of terms (the manifest's), in chunks of
parts (`chunks`: Arrow IPC files, memory-mapped), as `termcells.TermCells.focus` keeps its rows: an audit maps
them and reads the cell tables only for what they lack, the parts added since (a chunk of their own: O(new
parts)) or, when terms are added, every part for those (one chunk of everything). A part that left the run, a
torn or missing chunk void the cache (it is rebuilt). Stores that keep derived data in memory sum every part each
time.

Counts are integers, and parts sharing a step (both holding rows of one cell) add up, as the sums over the
scope's cells (`emerging.Scope.cell_values`) do: read per (condition, step index), `n`, `n_r` and `x` give the
same numbers (`tests/test_gensteps.py` checks them against that SQL); the cluster columns are a part's own cells'
(used where no cell is held by two parts).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from . import chunks
from .termcells import TermCells
from ..store import sql_when

VERSION = 1
_KEY = f"gensteps-v{VERSION}"
#: terms kept: those of the latest audit, plus earlier ones up to this many
MAX_TERMS = 256
SCHEMA = pa.schema([("term_id", pa.int32()), ("step", pa.int64()), ("split", pa.string()),
                    ("condition", pa.string()), ("task_key", pa.string())]
                   + [(c, pa.int64()) for c in ("n", "n_r", "x", "xx", "xn", "xn_r", "nn", "nn_r", "g", "g_r")])


def step_sums(cell_parts: TermCells, con: duckdb.DuckDBPyConnection, term_ids: set[int] | list[int]) -> pa.Table:
    """Rows (term_id, step, split, condition, n, n_r, x) of `term_ids` (and possibly other terms) over every
    part of `cell_parts`: several rows of one key (parts sharing a step) add up. Cached as the module says."""
    wanted = sorted({int(t) for t in term_ids})
    names = [name for name, _ in cell_parts.parts]
    d = _cache_dir(cell_parts)
    held, parts, terms, listed = _read(d, set(names)) if d else ([], [], [], [])
    keep = sorted(set(terms) | set(wanted)) if len(set(terms) | set(wanted)) <= MAX_TERMS else wanted
    old_terms = sorted(set(terms) & set(keep))
    held_parts = set(parts)
    new_parts = [n for n in names if n not in held_parts]
    pieces = []
    if listed:
        rows = pa.concat_tables(held)
        pieces.append(rows if set(terms) <= set(keep) else rows.filter(
            pc.is_in(rows["term_id"], pa.array(keep, pa.int32()))))
    if set(keep) - set(old_terms):
        pieces.append(_sum_parts(cell_parts, con, None, sorted(set(keep) - set(old_terms))))
    added = None
    if new_parts and old_terms:
        added = _sum_parts(cell_parts, con, set(new_parts), old_terms)
        pieces.append(added)
    out = pa.concat_tables(pieces) if pieces else SCHEMA.empty_table()
    if d and keep != terms:  # other terms: one chunk of every part
        _write(d, [], [], names, out, keep)
    elif d and new_parts and listed and added is not None:  # the new parts' rows, a chunk of their own
        _write(d, listed, held, new_parts, added, keep)
    return out


def _sum_parts(cell_parts: TermCells, con: duckdb.DuckDBPyConnection, only: set[str] | None,
               term_ids: list[int]) -> pa.Table:
    """The rows of `term_ids` summed over the cell tables of the parts `only` (None: every part). A cell is at
    risk of a term unless its prompt holds it; cells without a condition are in no audit's scope (left out).
    Every part's rows of the terms are the run's focus rows (`TermCells.focus`, cached per run, and those of an
    audit's reported terms already read): scanning every part's `cellterms` for them cost ~1 CPU s at 10M
    rollouts; the parts added since are read from their own `cellterms`."""
    cell_parts.register(con, "cells", "_gs_cells", only=only)
    cell_parts.register(con, "promptterms", "_gs_promptterms", only=only, term_ids=term_ids)
    if only is None:
        cell_parts.focus(con, set(term_ids), "_gs_x")
    else:
        cell_parts.register(con, "cellterms", "_gs_cellterms", only=only)
        ids = ", ".join(map(str, term_ids))
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _gs_x AS SELECT cell, term_id, x FROM _gs_cellterms
                        WHERE term_id IN ({ids})""")
    pieces = []
    for k in term_ids:
        # the rollouts at risk per key, then those holding the term: a cell's keys are one per cell hash, and
        # parts that share a step may both hold a cell (both its rows add to `n`, both its term rows to `x`)
        pieces.append(con.sql(f"""
            WITH risk AS (SELECT cell, step, split, condition, coalesce(task, '') AS task_key, n, n_r FROM _gs_cells
                          WHERE condition IS NOT NULL AND prompt_key NOT IN (
                                SELECT prompt_key FROM _gs_promptterms WHERE term_id = {k})),
                 cx AS (SELECT cell, sum(x) AS x FROM _gs_x WHERE term_id = {k} GROUP BY ALL),
                 rc AS (SELECT r.*, coalesce(cx.x, 0) AS x FROM risk r LEFT JOIN cx USING (cell)),
                 nn AS (SELECT step, split, condition, task_key, sum(n) AS n, sum(n_r) AS n_r, sum(x * x) AS xx,
                               sum(x * n) AS xn, sum(x * n_r) AS xn_r, sum(n * n) AS nn, sum(n_r * n_r) AS nn_r,
                               count({sql_when('n > 0')}) AS g, count({sql_when('n_r > 0')}) AS g_r
                        FROM rc GROUP BY ALL),
                 xx AS (SELECT step, split, condition, task_key, sum(cx.x) AS x
                        FROM (SELECT DISTINCT cell, step, split, condition, task_key FROM risk
                              SEMI JOIN cx USING (cell)) r
                        JOIN cx USING (cell) GROUP BY ALL)
            SELECT {k} AS term_id, nn.step, nn.split, nn.condition, nn.task_key, n, n_r, coalesce(x, 0) AS x, xx, xn,
                   xn_r, nn, nn_r, g, g_r
            FROM nn LEFT JOIN xx ON xx.step = nn.step AND xx.split IS NOT DISTINCT FROM nn.split
                 AND xx.condition = nn.condition AND xx.task_key = nn.task_key""").to_arrow_table().cast(SCHEMA))
    con.execute("DROP TABLE IF EXISTS _gs_x")
    return pa.concat_tables(pieces) if pieces else SCHEMA.empty_table()


def _cache_dir(cell_parts: TermCells) -> Path | None:
    """Where the cache lives (beside the parts' cell tables), or None for tables kept in memory."""
    entries = [p["cells"] for _, p in cell_parts.parts]
    if not entries or any(isinstance(e, pa.Table) for e in entries):
        return None
    return Path(entries[0]).parent / "gen_steps"


def _read(d: Path, parts: set[str]) -> tuple[list[pa.Table], list[str], list[int], list[chunks.Chunk]]:
    """The cache's rows per chunk (memory-mapped), parts, terms and chunks; nothing when it is missing,
    unreadable or holds a part that is no longer among `parts`."""
    listed, tables, info = chunks.load_tables(d, _KEY, parts, SCHEMA)
    if "terms" not in info:
        return [], [], [], []
    return tables, [p for c in listed for p in c.parts], list(info["terms"]), listed


def _write(d: Path, listed: list[chunks.Chunk], held: list[pa.Table], parts: list[str], rows: pa.Table,
           terms: list[int]) -> None:
    """Add a chunk of `rows` (those of the parts `parts`) after the chunks `listed` (whose rows are `held`):
    `chunks.append_table` (`listed` empty: the cache is this chunk alone)."""
    chunks.append_table(d, _KEY, listed, held, parts, rows, SCHEMA, {"terms": terms})
