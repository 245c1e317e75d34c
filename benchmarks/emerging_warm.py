"""Emerging + generalization alone, warm: the audit after one new step is ingested.

    python benchmarks/audit.py --_generate ROOT 200000      # data: ROOT/run (all steps but the last), ROOT/last
    python -c "from rlaudit.store import Store; Store('ROOT/store').ingest('ROOT/run', run='bench')"
    python benchmarks/emerging_warm.py ROOT COPY

COPY receives a copy of ROOT/store; the two detectors run once (filling the caches), then the last step is
ingested and they run again (the measured warm audit), then once more with nothing new. Prints wall and CPU
seconds (all threads of the process) per stage and the findings. Run it with each code version in turn (e.g.
`PYTHONPATH=<tree>/src`) on the same ROOT to compare them.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.store import Store

CONFIG = AuditConfig(detectors=["emerging", "generalization"])


def timed(label: str, f: Callable[[], Any]) -> Any:
    cpu, wall = time.process_time(), time.perf_counter()
    out = f()
    print(f"{label}: {time.perf_counter() - wall:.2f} s wall, {time.process_time() - cpu:.2f} s CPU")
    return out


def main(root: Path, work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(root / "store", work / "store")
    store = Store(work / "store")
    timed("before (caches filled)", lambda: run_detectors(store, "bench", CONFIG))
    last = next((root / "last").glob("*.parquet"))
    shutil.copy(last, root / "run" / "completions")
    try:
        timed("ingest new step", lambda: store.ingest(root / "run", run="bench"))
    finally:
        (root / "run" / "completions" / last.name).unlink()
    found = timed("warm emerging+generalization", lambda: run_detectors(Store(work / "store"), "bench", CONFIG))
    timed("again (nothing new)", lambda: run_detectors(Store(work / "store"), "bench", CONFIG))
    print(json.dumps([(f.kind, f.severity, f.title, f.fields.get("q_value")) for f in found]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
