"""Per-part counts of a run for its summary and the report's curves (cached per part by `partstats`).

`Store.summary` (rows, steps, conditions, reward signals, graders) and the report's reward curves and condition
counts used to scan every rollout on every audit. Their inputs are sums and distinct values, so each stored part
contributes a small table, computed once, with three kinds of rows:

- kind 0: per split, step and condition, the rows `n`;
- kind 1: per split, step and reward signal (`total` marks the total `reward`), the rows carrying the signal `n`,
  those with a value that is neither NULL nor NaN `nv`, and the sum of those values `sv`;
- kind 2: the grader names of `grader_inputs` (one row each).

A warm audit after a new step computes that part's table and merges the rest, so these stages cost O(parts),
not O(rollouts). Means are sums / counts in double precision (the curves are plotted, not tested against).
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import grouped
from .partstats import CompiledKind, define, each_signal, part_stats
from ..store import Store, sql_when

VERSION = 1

def part_sql(signals: tuple[str, ...]) -> str:
    """The kinds of the module doc over a batch whose signals are `signals` (`partstats.SIGNAL_COLUMNS`: kind 1
    sums each signal's column per step, and a signal has a row where a rollout has it)."""
    def valued(x: str) -> str:
        return sql_when(f"NOT isnan({x})", x)

    slots = ", ".join(f"count({sql_when(f'_h{i}')}) AS n{i}, count({valued(f'_r{i}')}) AS nv{i}, "
                      f"sum({valued(f'_r{i}')}) AS sv{i}" for i in range(len(signals)))
    per_signal = each_signal(signals, lambda i, name: (
        f"SELECT _part, 1::TINYINT, split, step, NULL, {name}, FALSE, n{i}, nv{i}, sv{i} FROM steps WHERE n{i} > 0"))
    return f"""
WITH steps AS (SELECT _part, split, step, count(*) AS n, count({valued('reward')}) AS nv,
                      sum({valued('reward')}) AS sv, {slots}
               FROM src GROUP BY _part, split, step)
SELECT _part, 0::TINYINT AS kind, split, step, condition, NULL::VARCHAR AS signal, NULL::BOOLEAN AS total,
       count(*) AS n, NULL::BIGINT AS nv, NULL::DOUBLE AS sv
FROM src GROUP BY _part, split, step, condition
UNION ALL
SELECT _part, 1::TINYINT, split, step, NULL, NULL, TRUE, n, nv, sv FROM steps
UNION ALL
{per_signal}
UNION ALL
SELECT DISTINCT _part, 2::TINYINT, NULL, NULL, NULL, unnest(_graders), NULL, NULL, NULL, NULL
FROM src
"""


def part_arrow(keys: Any, signals: tuple[str, ...], schema: pa.Schema) -> pa.Table:
    """`part_sql`'s rows from the batch's columns (`partstats.CompiledKind`; `grouped.Keys` of its rows)."""
    t, pieces = keys.table, []
    ids, first = keys.groups(*grouped.STEP, "condition")
    pieces.append((len(first), {**grouped.keyed(keys, (*grouped.STEP, "condition"), first), "kind": 0,
                                "n": grouped.count(ids, len(first))}))
    ids, first = keys.groups(*grouped.STEP)
    g, step = len(first), grouped.keyed(keys, grouped.STEP, first)
    reward, _ = keys.floats("reward")
    valued = ~np.isnan(reward)  # NOT isnan(x): a NULL (NaN here) is not valued either
    pieces.append((g, {**step, "kind": 1, "total": True, "n": grouped.count(ids, g),
                       "nv": grouped.count(ids, g, valued), "sv": grouped.total(ids, g, reward, valued)}))
    for i, name in enumerate(signals):
        r, _ = keys.floats(f"_r{i}")
        h, _ = keys.bools(f"_h{i}")
        valued = ~np.isnan(r)
        n = grouped.count(ids, g, h)
        piece = {**step, "kind": 1, "signal": name, "total": False, "n": n, "nv": grouped.count(ids, g, valued),
                 "sv": grouped.total(ids, g, r, valued)}
        pieces.append((int((n > 0).sum()), grouped.pick(piece, n > 0)))
    graders = t.column("_graders").combine_chunks()
    names = pc.list_flatten(graders)
    if len(names):
        part = t.column("_part").take(pc.list_parent_indices(graders))
        pairs = grouped.Keys(pa.table({"_part": part, "signal": names}))
        _, first = pairs.groups("_part", "signal")
        pieces.append((len(first), {**grouped.keyed(pairs, ("_part", "signal"), first), "kind": 2}))
    return grouped.table(schema, pieces)


# the graders' names, not their inputs (`partstats` reads a batch into a table: the inputs are long)
KIND = define("run_stats", VERSION, part_sql, ("split", "step", "condition", "rewards", "reward",
                                               "map_keys(grader_inputs) AS _graders"),
              CompiledKind(tuple((c, c) for c in ("_part", "split", "step", "condition", "reward", "_graders")),
                           part_arrow))


def register_run_stats(con: duckdb.DuckDBPyConnection, store: Store, run: str, name: str = "run_stats",
                       also: tuple[str, ...] = ()) -> None:
    """Create the view `name` over the run's per-part tables (see the module doc). `also`: the other kinds the
    audit will read (`DetectContext.part_kinds`), computed in the same read of each part where missing (a detector
    that asks for these counts before the others' statistics exist would otherwise read every part for them
    alone, and the next one read every part again for the rest)."""
    part_stats(store, run, KIND.name, also=also).register(con, name)


def connect_run_stats(store: Store, run: str, name: str = "run_stats") -> duckdb.DuckDBPyConnection:
    """A fresh DuckDB connection holding only the view `name` of `register_run_stats`."""
    from .. import duck

    con = duck.connect(store.root)
    register_run_stats(con, store, run, name)
    return con
