"""A bounded, stratified sample of rollouts drawn inside DuckDB, for the analyses that need rows in NumPy.

Why: an analysis that evaluates every rollout in Python (a rule-based monitor over three text views, an LLM judge's
sample frame) would otherwise fetch the whole run, and its memory would grow with the run until the process is
killed. Here DuckDB counts the rows per cell (e.g. step x condition x label), and when the run has more than
`max_rows` rows, each cell is thinned by a hash of the rollout id to at most about `cap` rows, the largest cap
whose total fits `max_rows` (small cells, e.g. rare positives, are kept whole). Each kept row carries
`weight` = cell rows / kept rows of its cell, so weighted sums estimate the run's totals without bias and a
bootstrap over the sample carries the sampling error. Runs within `max_rows` are read whole, with weight 1: the
result is the exact analysis, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

#: resolution of the hash threshold (a prime: the hash's low digits are uniform)
_MOD = 1_000_003


@dataclass
class SampleInfo:
    """What was read: `rows` of `total` in scope (equal when the run fit), and why it was thinned."""

    rows: int
    total: int
    cap: int | None  # rows per cell kept at most (None: everything read)
    max_rows: int
    reason: str | None = None

    @property
    def sampled(self) -> bool:
        return self.cap is not None

    def to_json(self) -> dict:
        return {"rows": self.rows, "of": self.total, "per_cell_cap": self.cap, "max_rows": self.max_rows,
                "reason": self.reason}


def cell_cap(sizes: np.ndarray, max_rows: int) -> int | None:
    """The largest cap with sum(min(size, cap)) <= max_rows (None: every row fits)."""
    sizes = np.sort(np.asarray(sizes, dtype=np.int64))
    if sizes.sum() <= max_rows:
        return None
    lo, hi = 0, int(sizes[-1])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(sizes, mid).sum() <= max_rows:
            lo = mid
        else:
            hi = mid - 1
    return max(lo, 1)


def stratified_rows(con: duckdb.DuckDBPyConnection, source: str, columns: str, cells: list[str], max_rows: int,
                    seed: int = 0, order: str = "step, rollout_id", reason: str | None = None
                    ) -> tuple[pa.Table, SampleInfo]:
    """`columns` of `source` (a view of `con` with `rollout_id`), plus `weight`: every row when there are at most
    `max_rows`, else a stratified sample by the `cells` expressions (see the module doc)."""
    keys = ", ".join(f"{c} AS _c{i}" for i, c in enumerate(cells))
    names = [f"_c{i}" for i in range(len(cells))]
    counts = con.sql(f"SELECT {', '.join(names)}, count(*) AS n FROM (SELECT {keys} FROM {source}) "
                         "GROUP BY ALL").to_arrow_table()
    total = int(pa.compute.sum(counts["n"]).as_py() or 0)
    cap = cell_cap(counts["n"].to_numpy(), max_rows) if counts.num_rows else None
    if cap is None:
        table = con.sql(f"SELECT {columns}, 1.0::DOUBLE AS weight FROM {source} ORDER BY {order}").to_arrow_table()
        return table, SampleInfo(table.num_rows, total, None, max_rows, reason)
    n = counts["n"].to_numpy().astype(np.float64)
    threshold = np.minimum(_MOD, np.ceil(np.minimum(1.0, cap / n) * _MOD)).astype(np.int64)
    con.register("_sample_cells", counts.append_column("_t", pa.array(threshold)))
    on = " AND ".join(f"s.{c} IS NOT DISTINCT FROM c.{c}" for c in names)
    table = con.sql(f"""
        SELECT * EXCLUDE (_n, {', '.join(names)}), _n / count(*) OVER (PARTITION BY {', '.join(names)}) AS weight
        FROM (SELECT s.*, c.n::DOUBLE AS _n FROM (SELECT {columns}, {keys} FROM {source}) s
              JOIN _sample_cells c ON {on}
              WHERE hash(s.rollout_id, {int(seed)}::BIGINT) % {_MOD} < c._t)
        ORDER BY {order}""").to_arrow_table()
    con.unregister("_sample_cells")
    return table, SampleInfo(table.num_rows, total, cap, max_rows, reason)
