"""Where a cold audit's CPU goes by stage and by library, from Linux `perf`: the one view that counts DuckDB's own
threads, numba's compiled kernels and the kernel's work (page faults, zeroing fresh pages, waking threads, file
I/O), which `benchmarks/audit_profile.py` (Python functions, thread CPU) and cProfile cannot see.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/audit_perf.py DIR            # DIR from audit.py --keep DIR
    ... --freq 499 --top 8                                                           # sampling rate, symbols shown

DIR is a directory `benchmarks/audit.py --keep DIR` generated. A child process runs that script's measuring
process on it (the floor, the cold audit, the floor again, the warm audit after one new step; DIR/store replaced,
as there) under `perf record -k CLOCK_MONOTONIC`; the samples are split at the stages' starts (CLOCK_MONOTONIC,
as the script records them) and summed per library (`LIBRARIES`). Needs `perf` on PATH and `kernel.perf_event_paranoid` <= 2 (or root).
Symbols of stripped libraries show as `[unknown]`; numba's compiled code as `[JIT]`. CPU seconds are samples /
frequency, so they include what every thread of the process ran: imports and numba's kernels loading (`start`) and
the interpreter's shutdown (`exit`) are rows of their own. DIR keeps perf.data and perf-stages.tsv.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

#: (column, test of a sample's library file name), first match wins
LIBRARIES = (("duckdb", lambda d: d.startswith("_duckdb")),
             ("numba", lambda d: "JIT" in d or d.startswith("perf-")),
             ("kernel", lambda d: "kernel" in d),
             ("python", lambda d: d.startswith("libpython")),
             ("libc", lambda d: d.startswith("libc.")),
             ("arrow", lambda d: "arrow" in d or "parquet" in d),
             ("numpy", lambda d: "multiarray" in d or "numpy" in d))
_SAMPLE = re.compile(r"\s*([\d.]+):\s+[0-9a-f]+\s+(.*?)\s*\((.*)\)\s*$")


def _audit(root: Path, stamps: Path) -> None:
    """The child: `benchmarks/audit.py`'s measuring process (floor, cold audit, floor, warm audit) on root, with
    each stage's CLOCK_MONOTONIC start written to `stamps`, and "exit" where its last stage ended."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import audit as bench  # benchmarks/audit.py

    bench._reset(root)
    stages = bench.measure(root, None)["stages"]
    last = stages[-1]
    marks = [(r["stage"], r["at"]) for r in stages] + [("exit", last["at"] + last["wall"])]
    stamps.write_text("".join(f"{name}\t{t}\n" for name, t in marks))


def _library(dso: str) -> str:
    name = dso.rsplit("/", 1)[-1]
    return next((col for col, test in LIBRARIES if test(name)), "other")


def _table(script: str, stamps: list[tuple[str, float]], freq: float, top: int) -> None:
    times = [t for _, t in stamps]
    by_lib: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_sym: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in script.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        i = bisect.bisect_right(times, float(m.group(1))) - 1
        stage = stamps[i][0] if i >= 0 else "start"
        lib = _library(m.group(3))
        by_lib[stage][lib] += 1
        by_sym[stage][(lib, m.group(2)[:70])] += 1
    cols = [c for c, _ in LIBRARIES] + ["other"]
    print(f"CPU s by stage and library ({freq:g} samples a second)")
    print(f"{'stage':32s} {'total':>7s} " + " ".join(f"{c:>7s}" for c in cols))
    order = ["start"] + [name for name, _ in stamps]
    for stage in dict.fromkeys(order):
        if stage in by_lib:
            row = by_lib[stage]
            print(f"{stage:32s} {sum(row.values()) / freq:7.2f} " + " ".join(f"{row[c] / freq:7.2f}" for c in cols))
    for stage in dict.fromkeys(order):
        if stage in by_sym:
            print(f"\n== {stage}: the {top} largest symbols (CPU s)")
            for (lib, sym), n in by_sym[stage].most_common(top):
                print(f"{n / freq:8.2f}  {lib:7s} {sym}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="a directory benchmarks/audit.py --keep DIR generated")
    ap.add_argument("--freq", type=float, default=499.0, help="perf samples a second (default 499)")
    ap.add_argument("--top", type=int, default=8, help="symbols shown per stage (default 8)")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = args.dir.resolve()
    stamps = root / "perf-stages.tsv"
    if args._child:
        _audit(root, stamps)
        return
    if not (root / "run" / "completions").is_dir() or not any((root / "last").glob("*.parquet")):
        sys.exit(f"{root}: no run/completions; generate it first: python benchmarks/audit.py --keep {root}")
    if shutil.which("perf") is None:
        sys.exit("perf is not installed (Debian: apt-get install linux-perf)")
    data = root / "perf.data"
    record = ["perf", "record", "-k", "CLOCK_MONOTONIC", "-F", f"{args.freq:g}", "-o", str(data), "--",
              sys.executable, __file__, str(root), "--_child"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(record, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"perf record failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "time,ip,sym,dso"], capture_output=True,
                            text=True, check=True).stdout
    marks = [(name, float(t)) for name, t in (line.split("\t") for line in stamps.read_text().splitlines())]
    _table(script, marks, args.freq, args.top)


if __name__ == "__main__":
    main()
