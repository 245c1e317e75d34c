"""What the per-part statistics cost per batch of parts: reading a batch into `src` and each kind's query, and the
aggregate form the kinds use (`store.sql_when`) against the FILTER form, timed in one process on one batch;
and the whole batch by the kinds' queries against their compiled form (`partstats.CompiledKind`).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/partstats.py DIR [--parts 16] [--rounds 5] [--sizes 2,4,8,16]

DIR is a directory `benchmarks/audit.py --keep DIR` generated (its `store/`, read only). The batch is the first
`--parts` stored parts (16 of the 1M benchmark's 20,000-rollout parts: 320,000 rollouts, `partstats.BATCH_ROWS`),
read as their layouts are (the store's manifest), on one DuckDB thread as the audit's workers run them; each
figure is the best of `--rounds`, in process CPU ms. The comparison runs the reward cells' per-signal aggregates
(`reward_stats.part_sql`, grouped by part, split, step, condition and task) written both ways over the same `src`
and checks that their rows are equal. Then, per batch of the first N parts for each N of `--sizes`, the whole
batch (`partstats._compute`: the read and the four kinds) and its cost per part: what `BATCH_ROWS` weighs (each
batch pays DuckDB's planning and set-up once), by the queries and, where numba is installed, compiled (its
kernels loaded before anything is timed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import duckdb


def best(run, rounds: int) -> float:
    """The least process CPU ms of `rounds` calls of `run`."""
    out = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        run()
        out = min(out, time.process_time() - t)
    return out * 1000


def cells_sql(n_signals: int, filtered: bool) -> str:
    """The reward cells' aggregates of `n_signals` signals, with FILTER clauses or `sql_when` (the same rows)."""
    from rlaudit.store import sql_when

    def agg(fn: str, value: str, cond: str) -> str:
        if filtered:
            return f"{fn}({'*' if value == '1' else value}) FILTER (WHERE {cond})"
        return f"{fn}({sql_when(cond, value)})"

    items = []
    for i in range(n_signals):
        nan, fin = f"_h{i} AND (_r{i} IS NULL OR isnan(_r{i}))", f"isfinite(_r{i})"
        items += [f"{agg('count', '1', f'_h{i}')} AS n{i}", f"{agg('count', '1', nan)} AS nan{i}",
                  f"{agg('count', '1', f'isinf(_r{i})')} AS inf{i}", f"{agg('count', '1', fin)} AS finite{i}",
                  f"{agg('min', f'_r{i}', fin)} AS lo{i}", f"{agg('max', f'_r{i}', fin)} AS hi{i}"]
    return (f"SELECT _part, split, step, coalesce(condition, '') AS condition, _task AS task, {', '.join(items)} "
            f"FROM src GROUP BY ALL")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--parts", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="2,4,8,16", help="batch sizes in parts for the per-part cost (comma list)")
    args = ap.parse_args()
    from rlaudit.derived import partstats
    from rlaudit.store import Store

    names = ("run_stats", "reward_health", "training_health", "attribution_meta")
    kinds = [partstats.kind(k) for k in names]
    all_parts = sorted((args.dir / "store" / "runs" / "bench" / "parts").glob("*.parquet"))
    parts = all_parts[:args.parts]
    if not parts:
        raise SystemExit(f"{args.dir}/store/runs/bench/parts: no stored parts (run benchmarks/audit.py --keep DIR)")
    layouts = Store(args.dir / "store").part_formats("bench")
    con = duckdb.connect()
    con.execute("SET threads = 1")
    timings: dict[str, float] = {}

    class Timed:
        """`con` as `partstats._compute` uses it: the batch's table kept, each kind's query timed."""

        def execute(self, sql: str, *a):
            if sql.startswith("DROP"):
                return None
            t = time.process_time()
            out = con.execute(sql, *a)
            if sql.startswith("CREATE"):
                timings["read the batch into src"] = (time.process_time() - t) * 1000
            return out

        def sql(self, sql: str):
            return con.sql(sql)

        def __getattr__(self, name: str):
            return getattr(con, name)

    compiled = partstats._use_compiled()
    if compiled:
        from rlaudit.kernels import preload

        preload()
    partstats._use_compiled = lambda: False  # the queries' own timings need `src`
    partstats._compute(parts, layouts, kinds, args.dir, Timed())
    signals = partstats._first_signals(con, parts[0], layouts)
    rows = con.execute("SELECT count(*) FROM src").fetchall()[0][0]
    print(f"batch: {len(parts)} parts, {rows:,} rollouts, {len(signals)} signals; process CPU ms, best of "
          f"{args.rounds}")
    print(f"  {'read the batch into src':34s} {timings['read the batch into src']:8.1f}  (once)")
    for k in kinds:
        q = k.query(signals or ("",))
        print(f"  {'query ' + k.name:34s} {best(lambda: con.sql(q).to_arrow_table(), args.rounds):8.1f}")
    filtered, case = cells_sql(len(signals), True), cells_sql(len(signals), False)
    same = (con.sql(filtered + " ORDER BY ALL").to_arrow_table()
            .equals(con.sql(case + " ORDER BY ALL").to_arrow_table()))
    f_ms = best(lambda: con.sql(filtered).to_arrow_table(), args.rounds)
    c_ms = best(lambda: con.sql(case).to_arrow_table(), args.rounds)
    print(f"reward cells' aggregates: FILTER {f_ms:.1f} ms, CASE (sql_when) {c_ms:.1f} ms, ratio {f_ms / c_ms:.2f}x; "
          f"rows equal: {same}")
    batch_con = duckdb.connect()
    batch_con.execute("SET threads = 1")
    forms = (("queries", False), ("compiled", True)) if compiled else (("queries", False),)
    for n in (int(x) for x in args.sizes.split(",") if x.strip()):
        batch = all_parts[:n]
        for label, form in forms:
            partstats._use_compiled = lambda form=form: form
            ms = best(lambda: partstats._compute(batch, layouts, kinds, args.dir, batch_con), args.rounds)
            print(f"a batch of {len(batch):3d} parts, the four kinds ({label}): {ms:8.1f} ms, "
                  f"{ms / len(batch):6.1f} ms a part")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
