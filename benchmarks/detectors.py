"""Time some detectors on a stored run, cold or warm: CPU seconds, wall seconds and peak RSS per detector.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/detectors.py STORE RUN emerging,generalization
    ... --keep-derived          # warm: keep the run's derived data (term sets, cell tables, per-part statistics)
    ... --dump=findings.json    # the findings, sorted, to compare two versions of the code
    ... --new-step=DIR          # warm after one new step: first add a step to the kept benchmark directory DIR
                                # (DIR/store is STORE) and ingest it, as `benchmarks/audit.py`'s warm audit does

Without --keep-derived the run's derived data (`runs/RUN/derived`) is DELETED first, so that the detectors
start cold: point it at a copy of a store (e.g. of the store `benchmarks/audit.py --keep DIR` leaves in
DIR/store). Detectors required by the named ones run too (attribution runs emerging first). Used to compare two
versions of a detector back to back on the same data: run it from each version's checkout on its own copy.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audit as bench  # noqa: E402  (benchmarks/audit.py: its RSS sampler and CPU reader)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 3:
        raise SystemExit(__doc__)
    store_dir, run, dets = args[0], args[1], args[2].split(",")
    dump = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--dump=")), None)
    from rlaudit import kernels
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.store import Store

    kernels.preload()  # compiled once per checkout (as benchmarks/audit.py): not part of a detector's cost

    derived = Path(store_dir) / "runs" / run / "derived"
    if "--keep-derived" not in sys.argv and derived.exists():
        shutil.rmtree(derived)
    new_step = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--new-step=")), None)
    if new_step:
        t0, c0 = time.perf_counter(), bench._cpu()
        step = add_step(Path(new_step), Store(store_dir), run)
        print(f"{'ingest step ' + str(step):<18} wall {time.perf_counter() - t0:7.2f} s  CPU {bench._cpu() - c0:7.2f} s")
    sampler = bench.Sampler()
    sampler.start()
    open_: list = []

    def progress(name: str, done: int, total: int) -> None:
        now = (time.perf_counter(), bench._cpu())
        if open_:
            n, t0, c0 = open_.pop()
            print(f"{n:<18} wall {now[0] - t0:7.2f} s  CPU {now[1] - c0:7.2f} s  peak RSS {sampler.peak >> 20:6,} MB",
                  flush=True)
        sampler.reset()
        if name:
            open_.append((name, *now))

    findings = run_detectors(Store(store_dir), run, AuditConfig(detectors=dets), progress=progress)
    if dump:
        rows = sorted((f.to_json() for f in findings), key=lambda d: json.dumps(d, sort_keys=True, default=str))
        Path(dump).write_text(json.dumps(rows, sort_keys=True, default=str, indent=1))
    print(f"{len(findings)} findings: {sorted((f.kind, f.severity) for f in findings)}")
    print(f"process peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10:,} MB")


def add_step(bench_dir: Path, store, run: str) -> int:
    """Write one more step into the kept benchmark run `bench_dir/run` (its last step's file, renumbered: the same
    size and mix of rollouts) and ingest it into `store`; returns the new step. Each call grows the run by one
    step, so repeated warm measurements stay comparable (2,000 steps or 2,005 cost the same).

    `bench_dir` may be a copy of a kept directory (`cp -al A B`: hard links, instant; the store writes every file
    anew, never in place): the copy's run manifest, which names A's files, is first repointed at B's (a new
    file, so A's manifest is untouched)."""
    manifest = Path(store.root) / "runs" / run / "run.json"
    old = json.loads(manifest.read_text())["source"]
    new = str((bench_dir / "run").resolve())
    if old != new:
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(manifest.read_text().replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))
        tmp.replace(manifest)
    files = sorted((bench_dir / "run" / "completions").glob("completions_*.parquet"))
    last = pq.read_table(files[-1])
    step = int(pc.max(last["step"]).as_py()) + 1
    i = last.schema.get_field_index("step")
    last = last.set_column(i, "step", pa.array([step] * len(last), pa.int64()))
    pq.write_table(last, files[-1].parent / f"completions_{step:05d}.parquet")
    store.ingest(bench_dir / "run", run=run)
    return step


if __name__ == "__main__":
    main()
