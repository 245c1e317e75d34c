"""Where a full audit's time goes, per rlaudit function and over time: the two views `benchmarks/audit.py
--profile` (cProfile, main thread only) cannot give.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/audit_profile.py DIR              # both views
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/audit_profile.py DIR --functions  # only per function
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/audit_profile.py DIR --timeline   # only over time

DIR is a directory `benchmarks/audit.py --keep DIR` generated (its `run/` and `last/`); its `store/` is replaced.
The script runs `audit.measure` (floor, cold audit, warm audit) and prints its table, then:

- per function (`--functions`): the CPU seconds of the calling thread (`time.thread_time`) inside every
  module-level function and method of rlaudit, inclusive of what it calls, summed over all threads, per cold
  stage (the 25 largest; `--top N`). Worker threads count (cProfile sees the main thread only); DuckDB's own
  threads do not (their work shows as wall time of the calling thread, not its CPU). A recursive call counts once.
- over time (`--timeline`): every 100 ms of the cold audit, the process's CPU rate (cores busy, from getrusage)
  and the innermost rlaudit frame of every thread; then, per stage, its wall seconds and the core-seconds left
  idle (2 cores assumed: `--cores N`), and the stretches below 1.3 cores (`--low`), which are where work runs on one thread.

The wrappers cost ~1 us a call: rlaudit calls per part, not per rollout, so the totals move by a few percent.
numba's kernels are compiled before wrapping (a wrapped function cannot be compiled).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import pkgutil
import shutil
import sys
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audit as bench  # noqa: E402  (benchmarks/audit.py)

#: packages the audit does not run (importing some needs extras), and the CLI's entry module (it runs the app)
SKIP = (".mcp", ".llm", ".evals", ".fleet", ".live", ".organisms", "__main__")
_stage = ["?"]


def _modules() -> list:
    import rlaudit

    out = []
    for info in pkgutil.walk_packages(rlaudit.__path__, "rlaudit."):
        if not any(s in info.name for s in SKIP):
            out.append(importlib.import_module(info.name))
    return out


class FunctionTimes:
    """Inclusive thread CPU per (stage, function), from wrappers put on every rlaudit function and method."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
        self._inside = threading.local()

    def wrap(self, f, name: str):
        @functools.wraps(f)
        def timed(*args, **kwargs):
            inside = self._inside.__dict__.setdefault("names", set())
            if name in inside:  # a recursive call: the outer one counts it
                return f(*args, **kwargs)
            inside.add(name)
            t0 = time.thread_time()
            try:
                return f(*args, **kwargs)
            finally:
                inside.discard(name)
                row = self.totals[(_stage[0], name)]
                row[0] += time.thread_time() - t0
                row[1] += 1
        return timed

    def install(self, modules: list) -> None:
        wrapped = {}
        for m in modules:
            short = m.__name__.removeprefix("rlaudit.")
            for key, value in list(vars(m).items()):
                if inspect.isfunction(value) and value.__module__ == m.__name__:
                    wrapped[value] = self.wrap(value, f"{short}.{key}")
                elif inspect.isclass(value) and value.__module__ == m.__name__:
                    for attr, member in list(vars(value).items()):
                        if inspect.isfunction(member) and not attr.startswith("__"):
                            setattr(value, attr, self.wrap(member, f"{short}.{key}.{attr}"))
        for m in modules:  # the names other modules imported (`from .x import f`) too
            for key, value in list(vars(m).items()):
                if inspect.isfunction(value) and value in wrapped:
                    setattr(m, key, wrapped[value])

    def print(self, prefix: str = "cold", top: int = 25) -> None:
        stages: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
        for (stage, name), (seconds, calls) in self.totals.items():
            if stage.startswith(prefix):
                stages[stage].append((seconds, calls, name))
        for stage, rows in stages.items():
            print(f"\n== {stage}: thread CPU s, calls, function (inclusive)")
            for seconds, calls, name in sorted(rows, reverse=True)[:top]:
                if seconds >= 0.05:
                    print(f"{seconds:8.2f} {calls:7d}  {name}")


class Timeline(threading.Thread):
    """The process's CPU rate and every thread's innermost rlaudit frame, every `period` seconds."""

    def __init__(self, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.rows: list[tuple[float, str, float, list[str]]] = []

    @staticmethod
    def _frame(frame) -> str | None:
        for f, line in traceback.walk_stack(frame):
            path = f.f_code.co_filename
            if "/rlaudit/" in path:
                return f"{path.split('/rlaudit/')[1]}:{f.f_code.co_name}:{line}"
        return None

    def run(self) -> None:
        me, last = threading.get_ident(), None
        while True:
            now, cpu = time.perf_counter(), bench._cpu()
            if last is not None:
                frames = sorted(w for tid, fr in sys._current_frames().items() if tid != me and (w := self._frame(fr)))
                self.rows.append((now, _stage[0], (cpu - last[1]) / (now - last[0]), frames))
            last = (now, cpu)
            time.sleep(self.period)

    def print(self, cores: int, prefix: str = "cold", low: float = 1.3) -> None:
        rows = [r for r in self.rows if r[1].startswith(prefix)]
        if not rows:
            return
        wall: dict[str, float] = defaultdict(float)
        idle: dict[str, float] = defaultdict(float)
        for _, stage, rate, _ in rows:
            wall[stage] += self.period
            idle[stage] += self.period * max(0.0, cores - rate)
        print(f"\n== over time: per stage, wall s and core-seconds idle ({cores} cores)")
        for stage in wall:
            print(f"{stage:<40} {wall[stage]:6.1f} {idle[stage]:6.2f}")
        print(f"\n== stretches below {low} cores (s from the first cold sample, cores busy, frames)")
        t0 = rows[0][0]
        for t, stage, rate, frames in rows:
            if rate < low:
                print(f"{t - t0:7.1f} {stage[6:26]:<20} {rate:4.2f}  {' | '.join(frames)}"[:240])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="a directory benchmarks/audit.py --keep DIR generated")
    ap.add_argument("--functions", action="store_true", help="only the per-function view")
    ap.add_argument("--timeline", action="store_true", help="only the view over time")
    ap.add_argument("--cores", type=int, default=2, help="cores the idle time is counted against (2)")
    ap.add_argument("--top", type=int, default=25, help="functions listed per stage (25)")
    ap.add_argument("--low", type=float, default=1.3, help="cores busy below which a sample is listed (1.3)")
    args = ap.parse_args()
    if not (args.dir / "run").is_dir() or not any((args.dir / "last").glob("*.parquet")):
        raise SystemExit(f"{args.dir}: not a directory of benchmarks/audit.py --keep (run/ and last/*.parquet)")
    both = not (args.functions or args.timeline)
    from rlaudit import kernels

    kernels.preload()  # before wrapping: numba cannot compile a wrapped function
    times = FunctionTimes() if both or args.functions else None
    if times is not None:
        times.install(_modules())
    start = bench.Stages.start

    def named_start(self, name: str) -> None:
        start(self, name)
        _stage[0] = name

    bench.Stages.start = named_start
    timeline = Timeline() if both or args.timeline else None
    if timeline is not None:
        timeline.start()
    shutil.rmtree(args.dir / "store", ignore_errors=True)  # as audit.py: a cold audit, the warm step aside
    last = next((args.dir / "last").glob("*.parquet"))
    (args.dir / "run" / "completions" / last.name).unlink(missing_ok=True)
    result = bench.measure(args.dir, None)
    bench._print(result)
    if times is not None:
        times.print(top=args.top)
    if timeline is not None:
        timeline.print(args.cores, low=args.low)


if __name__ == "__main__":
    main()
