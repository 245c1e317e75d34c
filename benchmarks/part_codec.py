"""What the stored parts' codec costs: writing a part and reading its completion back, with the parts' codec
(`store._codec`: LZ4, the completion uncompressed) against every column in LZ4, timed in one process on the same
parts.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/part_codec.py DIR [--parts 10] [--rounds 5]

DIR is a directory `benchmarks/audit.py --keep DIR` generated (its `store/`, read only). Each part is read into
memory once; per codec, the parts are written to memory buffers (the writer's arguments as `Store._write_part`
gives them), then read back: the completion and its span columns with Arrow from the buffers (as the term sets
and the CoT scan read a part) and `length(completion)` with DuckDB on one thread from files written from them (as
the per-part statistics read it). Figures are the best of `--rounds`, in process CPU ms per part, and the
bytes per part.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from partstats import best  # noqa: E402  (benchmarks/partstats.py: the least process CPU ms of `rounds` calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--parts", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import duckdb

    from rlaudit import store

    paths = sorted((args.dir / "store" / "runs" / "bench" / "parts").glob("*.parquet"))[:args.parts]
    if not paths:
        raise SystemExit(f"{args.dir}/store/runs/bench/parts: no stored parts (run benchmarks/audit.py --keep DIR)")
    tables = [pq.read_table(p) for p in paths]
    con = duckdb.connect()
    con.execute("SET threads = 1")
    spans = [c for c in ("completion", "_reasoning_start", "_reasoning_end", "_answer_start", "_answer_end")
             if c in tables[0].schema.names]
    rows = sum(t.num_rows for t in tables)
    print(f"{len(tables)} parts, {rows:,} rollouts; process CPU ms a part, best of {args.rounds}")
    print(f"{'codec':<34} {'write':>8} {'Arrow read':>11} {'DuckDB length':>14} {'KB a part':>10}")
    results = {}
    tmp = tempfile.mkdtemp(prefix="rlaudit-part-codec-")
    for name, codec in (("all LZ4", lambda schema: {"compression": "lz4"}),
                        ("the parts' (store._codec)", store._codec)):
        buffers: list[bytes] = []

        def write() -> None:
            buffers.clear()
            for t in tables:
                sink = io.BytesIO()
                pq.write_table(t, sink, use_dictionary=store._dictionary(t.schema),
                               write_statistics=[c for c in store._STATISTICS_COLUMNS if c in t.schema.names],
                               **codec(t.schema))
                buffers.append(sink.getvalue())

        def read_arrow() -> None:
            for b in buffers:
                pq.read_table(pa.BufferReader(b), columns=spans, use_threads=False)

        def read_duckdb() -> None:
            for f in files:
                con.execute("SELECT sum(length(completion)) FROM read_parquet(?)", [str(f)]).fetchall()

        w = best(write, args.rounds)
        r = best(read_arrow, args.rounds)
        files = []
        for i, b in enumerate(buffers):  # DuckDB reads files (the page cache's copy, as a stored part's)
            files.append(Path(tmp) / f"{len(results)}-{i}.parquet")
            files[-1].write_bytes(b)
        size = sum(len(b) for b in buffers) / len(buffers)
        results[name] = (w, r, size)
        print(f"{name:<34} {w / len(tables):8.1f} {r / len(tables):11.1f} "
              f"{best(read_duckdb, args.rounds) / len(tables):14.1f} {size / 1e3:10,.0f}")
    shutil.rmtree(tmp, ignore_errors=True)
    (w0, r0, s0), (w1, r1, s1) = results.values()
    print(f"the parts' codec against all LZ4: write {w1 / w0:.2f}x, Arrow read {r1 / r0:.2f}x, size {s1 / s0:.2f}x")
    if s1 < s0:  # the completion left uncompressed cannot make a part smaller
        sys.exit(1)


if __name__ == "__main__":
    main()
