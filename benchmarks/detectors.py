"""Time some detectors on a stored run, cold or warm: CPU seconds, wall seconds and peak RSS per detector.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/detectors.py STORE RUN emerging,generalization
    ... --keep-derived          # warm: keep the run's derived data (term sets, cell tables, per-part statistics)
    ... --dump=findings.json    # the findings, sorted, to compare two versions of the code

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audit as bench  # noqa: E402  (benchmarks/audit.py: its RSS sampler and CPU reader)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 3:
        raise SystemExit(__doc__)
    store_dir, run, dets = args[0], args[1], args[2].split(",")
    dump = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--dump=")), None)
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.store import Store

    derived = Path(store_dir) / "runs" / run / "derived"
    if "--keep-derived" not in sys.argv and derived.exists():
        shutil.rmtree(derived)
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


if __name__ == "__main__":
    main()
