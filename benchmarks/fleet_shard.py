"""Sharded audit of one run: `rlaudit.audit` (ingest excluded) against `fleet.sharded_audit` with N shards.

    OMP_NUM_THREADS=1 python benchmarks/fleet_shard.py RUN_DIR --shards 1 2 --engine local --workers 2

The run is ingested once into a base store; each configuration audits a copy of it without derived data (cold),
so every configuration does the same work. Prints wall and CPU seconds (driver + shard workers), the speed-up
over the unsharded audit and whether the findings are the same (floats to 1e-9 relative).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rlaudit.audit import audit_store  # noqa: E402
from rlaudit.fleet import make_engine  # noqa: E402
from rlaudit.fleet.shard import sharded_audit  # noqa: E402
from rlaudit.store import Store  # noqa: E402


def _same(a, b, rel=1e-9) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and (
            a == b or abs(a - b) <= rel * max(abs(a), abs(b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b))
    return a == b


def _fresh(base: Path, dst: Path) -> Store:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(base, dst, ignore=shutil.ignore_patterns("derived", "leases", ".tmp"))
    return Store(dst)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--shards", type=int, nargs="+", default=[2])
    ap.add_argument("--engine", default="local")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--address", default=None)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rlaudit-shard-bench")
    args = ap.parse_args()
    base = args.work / "base"
    shutil.rmtree(base, ignore_errors=True)
    run = Store(base).ingest(args.run_dir).run
    rows = Store(base).summary(run).rows
    store = _fresh(base, args.work / "unsharded")
    t, c = time.perf_counter(), time.process_time()
    ref = audit_store(store, [run])
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    expected = [f.to_json() for f in ref.findings]
    print(json.dumps({"config": "unsharded audit_store", "rows": rows, "wall": round(wall, 2), "cpu": round(cpu, 2),
                      "findings": len(expected)}))
    engine = make_engine(args.engine, args.workers, args.address)
    try:
        for n in args.shards:
            store = _fresh(base, args.work / f"shards{n}")
            t, c = time.perf_counter(), time.process_time()
            got = sharded_audit(store, run, engine, n)
            w, dc = time.perf_counter() - t, time.process_time() - c
            total_cpu = dc + got.seconds["cpu_shards"]
            same = _same([f.to_json() for f in got.result.findings], expected)
            print(json.dumps({"config": f"{n} shard(s) on {engine.describe()}", "wall": round(w, 2),
                              "cpu_driver": round(dc, 2), "cpu_shards": round(got.seconds["cpu_shards"], 2),
                              "cpu_total": round(total_cpu, 2), "shards_wall": round(got.seconds["shards"], 2),
                              "detectors_wall": round(got.seconds["detectors"], 2),
                              "speedup_wall": round(wall / w, 2), "cpu_ratio": round(total_cpu / cpu, 2),
                              "same_findings": same}))
    finally:
        engine.close()


if __name__ == "__main__":
    main()
