"""What the report reads from the store: per-run aggregates and the rollouts that findings cite.

Everything here is a DuckDB query whose result size does not grow with the number of rollouts: reward curves are
aggregated per step (and bucketed into at most `max_points` step ranges), condition counts are one row per
condition, and rollouts are fetched only by the ids that evidence cites, with long texts cut in SQL.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import duckdb

from ..store import Store

TOTAL = "reward (total)"
_TEXT_COLUMNS = ("prompt", "reasoning", "answer", "completion")


def _runs_in_store(store: Store | None, runs: Sequence[str]) -> list[str]:
    if store is None:
        return []
    present = set(store.runs())
    return [r for r in runs if r in present]


class RunStats:
    """The cached run statistics (`derived.runstats`, as the view `rs`) of a report's runs: one DuckDB connection
    per run, opened when first asked for and shared by the report's queries of them (the reward curves and the
    condition counts). Opening a database costs ~25 CPU ms with DuckDB 2.0 (it builds its catalog of built-in
    functions each time), which each of those queries paid per run before: a report of a fleet's hundreds of runs
    spent seconds on it. Use as a context manager: leaving it closes the connections."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._open: dict[str, duckdb.DuckDBPyConnection] = {}

    def connection(self, run: str) -> duckdb.DuckDBPyConnection:
        """The connection holding `run`'s statistics as `rs`."""
        if run not in self._open:
            from ..derived.runstats import connect_run_stats

            self._open[run] = connect_run_stats(self.store, run, "rs")
        return self._open[run]

    def close(self) -> None:
        for con in self._open.values():
            con.close()
        self._open.clear()

    def __enter__(self) -> RunStats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_stats(store: Store, stats: RunStats | None) -> contextlib.AbstractContextManager[RunStats]:
    """`stats`, or run statistics of this call's own (closed after it)."""
    return contextlib.nullcontext(stats) if stats is not None else RunStats(store)


def reward_curves(store: Store | None, runs: Sequence[str], max_points: int = 500, stats: RunStats | None = None
                  ) -> dict[str, dict[str, tuple[list[float], list[float | None]]]]:
    """Mean of each reward signal (and of the total reward) per step, per run, train split only when the run
    has one. Steps are grouped into at most `max_points` equal-width buckets per run (x = mean step). `stats`:
    the runs' connections to share with other queries (else opened and closed here)."""
    runs = _runs_in_store(store, runs)
    if not runs:
        return {}
    assert store is not None
    import pyarrow as pa

    # from per-part sums cached beside each run (`runstats`): a run that grew by a step reads only its new part
    sql = """
    WITH scoped AS (
        SELECT * FROM rs WHERE split = 'train' OR NOT EXISTS (SELECT 1 FROM rs WHERE kind = 0 AND split = 'train')
    ),
    bounds AS (
        SELECT min(step) AS lo, greatest(1, ceil((max(step) - min(step) + 1) / ?))::BIGINT AS width
        FROM scoped WHERE kind = 0
    )
    SELECT ? AS run, CASE WHEN total THEN ? ELSE signal END AS signal, (step - b.lo) // b.width AS bucket,
           sum(step * n) / sum(n) AS x, sum(sv) / nullif(sum(nv), 0) AS y
    FROM scoped, bounds b WHERE kind = 1
    GROUP BY ALL ORDER BY 2, 3
    """
    with _run_stats(store, stats) as held:
        tables = [held.connection(run).sql(sql, params=[int(max_points), run, TOTAL]).to_arrow_table()
                  for run in runs]
    table = pa.concat_tables(tables)
    out: dict[str, dict[str, tuple[list[float], list[float | None]]]] = {}
    cols = table.to_pydict()
    for run, signal, x, y in zip(cols["run"], cols["signal"], cols["x"], cols["y"]):
        xs, ys = out.setdefault(run, {}).setdefault(signal, ([], []))
        xs.append(float(x))
        ys.append(None if y is None or not math.isfinite(y) else float(y))
    for run, curves in out.items():  # a signal with no finite value anywhere is noise in the plot
        ordered = sorted(curves.items(), key=lambda kv: kv[0] == TOTAL)  # the total last
        out[run] = {s: c for s, c in ordered if any(v is not None for v in c[1])}
    return out


def condition_counts(store: Store | None, runs: Sequence[str], stats: RunStats | None = None
                     ) -> dict[str, dict[str, int]]:
    """Rollouts per condition per run (traffic shares for the runs table); `stats` as `reward_curves`."""
    runs = _runs_in_store(store, runs)
    if not runs:
        return {}
    assert store is not None
    out: dict[str, dict[str, int]] = {}
    with _run_stats(store, stats) as held:
        for run in runs:  # from the per-part counts cached beside the run (`runstats`)
            rows = held.connection(run).execute(
                "SELECT coalesce(condition, '(none)') AS c, sum(n) AS n FROM rs WHERE kind = 0 "
                "GROUP BY c ORDER BY n DESC, c").fetchall()
            out[run] = {cond: int(n) for cond, n in rows}
    return out


def fetch_rollouts(store: Store | None, run: str, rollout_ids: Sequence[str], text_cap: int,
                   steps: Sequence[int] | None = None) -> dict[str, dict[str, Any]]:
    """The cited rollouts of one run by id: texts cut to `text_cap` characters in SQL (with their full length
    under `<column>_len`), rewards and grader inputs. Missing runs or ids yield nothing.

    `steps`, when every cited rollout's step is known, opens only the parts that may hold those steps and
    lets DuckDB skip the Parquet row groups of other steps.
    """
    ids = sorted({i for i in rollout_ids if i})
    if not ids or run not in _runs_in_store(store, [run]):
        return {}
    assert store is not None
    texts = ", ".join(f"left({c}, {int(text_cap)}) AS {c}, length({c}) AS {c}_len" for c in _TEXT_COLUMNS)
    where = "rollout_id IN (SELECT unnest(?::VARCHAR[]))"
    params: list[Any] = [ids]
    cited = sorted({int(s) for s in steps}) if steps else None
    if cited:
        where = f"step IN (SELECT unnest(?::BIGINT[])) AND {where}"
        params.insert(0, cited)
    sql = (f"SELECT rollout_id, step, condition, task, group_id, {texts}, rewards, reward, advantage, "
           f"grader_inputs FROM rollouts WHERE {where}")
    rows = store.query(sql, params, runs=[run], steps=cited).to_pylist()
    out = {}
    for row in rows:
        for key in ("rewards", "grader_inputs"):  # Arrow maps arrive as lists of (key, value) pairs
            value = row.get(key)
            row[key] = dict(value) if value else {}
        out[row["rollout_id"]] = row
    return out
