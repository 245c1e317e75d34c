"""Where the audit's memory goes, stage by stage: peak RSS, peak Python/NumPy heap (tracemalloc), peak Arrow
pool, the allocation sites holding the most at each stage's Python peak, and what stays resident after each
stage by kind of mapping (glibc's heap and thread arenas, other anonymous memory, mapped files).

    python benchmarks/audit_memory.py --rollouts 200000                 # generate, trace, print
    python benchmarks/audit_memory.py --rollouts 1000000 --keep DIR     # reuse DIR's generated run next time
    python benchmarks/audit_memory.py --rollouts 200000 --no-trace      # RSS only (tracemalloc slows Python)

The run is `benchmarks/audit.py`'s TRL layout (same generator, same sizes). One measuring child process ingests
it into an empty store, then runs every detector, with the opt-in `monitorability` detector configured (label:
the generated tic "by my beard" in answers, rule-based monitor) so that it is measured too, then writes the
findings JSON and the HTML report. A stage whose peak grows with the run size materialises the run; compare two
sizes. Peak RSS includes DuckDB's buffers (bounded by its memory limit, `rlaudit.store.bound_memory`), which
tracemalloc does not see; the Arrow figure is pyarrow's default pool.

Measured 2026-12-01 (2-core machine, load average 17-20), `--rollouts 1000000 --no-trace`: process peak RSS
1,618 MB, in emerging; monitorability 852 MB (whole table in `benchmarks/profiles/audit-memory.txt`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audit as bench  # noqa: E402  (benchmarks/audit.py: the generator and the RSS reader)

TOP = 6


class Peaks(threading.Thread):
    """Peak RSS, Arrow pool bytes and traced heap of the current stage, sampled every 20 ms; a tracemalloc
    snapshot is taken whenever the traced heap passes its stage peak by 32 MB, so the last one shows what was
    live near the peak."""

    def __init__(self, trace: bool) -> None:
        super().__init__(daemon=True)
        self.trace, self.stop = trace, False
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        import pyarrow as pa

        with self.lock:
            self.rss = bench._rss()
            self.arrow = pa.total_allocated_bytes()
            self.snap_at = 0
            self.snapshot = None
            if self.trace:
                tracemalloc.reset_peak()

    def run(self) -> None:
        import pyarrow as pa

        while not self.stop:
            with self.lock:
                self.rss = max(self.rss, bench._rss())
                self.arrow = max(self.arrow, pa.total_allocated_bytes())
                if self.trace:
                    cur = tracemalloc.get_traced_memory()[0]
                    if cur > self.snap_at + (32 << 20):
                        self.snap_at = cur
                        self.snapshot = tracemalloc.take_snapshot()
            time.sleep(0.02)


ARENA = 64 << 20


def resident() -> dict[str, int]:
    """Resident bytes now, by kind of mapping (/proc/self/smaps): `heap` (glibc's main arena), `arenas` (glibc
    thread arenas: a 64 MB-aligned read-write mapping that, with the inaccessible rest of its reservation after
    it, spans 64 MB), `anon` (other anonymous memory: mmapped arrays, mimalloc and jemalloc segments, Python
    objects) and `file` (mapped files: mostly the libraries' code). What a stage leaves resident is what the
    next one starts from."""
    maps: list[dict] = []
    with open("/proc/self/smaps") as fh:
        for line in fh:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                maps.append({"lo": lo, "hi": hi, "perms": parts[1], "path": parts[5] if len(parts) > 5 else "",
                             "rss": 0})
            elif parts[0] == "Rss:":
                maps[-1]["rss"] = int(parts[1]) * 1024
    out = {"heap": 0, "arenas": 0, "anon": 0, "file": 0}
    for i, m in enumerate(maps):
        if m["path"] == "[heap]":
            kind = "heap"
        elif m["path"].startswith("/"):
            kind = "file"
        elif m["path"] == "":
            nxt = maps[i + 1] if i + 1 < len(maps) else None
            span = m["hi"] - m["lo"] + (nxt["hi"] - nxt["lo"] if nxt and nxt["lo"] == m["hi"]
                                        and nxt["perms"].startswith("---") else 0)
            kind = "arenas" if m["lo"] % ARENA == 0 and span == ARENA and m["perms"].startswith("rw") else "anon"
        else:  # stacks, vdso, ...
            continue
        out[kind] += m["rss"]
    return out


def _sites(snapshot) -> list[str]:
    if snapshot is None:
        return []
    root = str(Path(__file__).resolve().parents[1]) + "/"
    stats = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]).statistics("traceback")
    out = []
    for st in stats[:TOP]:
        frames = [f for f in st.traceback if "/rlaudit/" in f.filename] or list(st.traceback)
        f = frames[-1]
        out.append(f"{st.size / 2**20:8.1f} MB  {f.filename.replace(root, '')}:{f.lineno}")
    return out


def measure(root: Path, trace: bool) -> dict:
    from rlaudit.audit import AuditResult
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.findings import rank
    from rlaudit.memory import prepare
    from rlaudit.report import write_report
    from rlaudit.store import Store

    prepare()  # as the CLI (and benchmarks/audit.py) does first: the malloc arena cap, before any thread starts
    if trace:
        tracemalloc.start(12)
    peaks = Peaks(trace)
    peaks.start()
    rows: list[dict] = []
    state: dict = {}

    def start(name: str) -> None:
        end()
        peaks.reset()
        state["open"] = (name, time.perf_counter(), bench._cpu())

    def end() -> None:
        if not state.get("open"):
            return
        name, t0, c0 = state.pop("open")
        time.sleep(0.05)  # one more sample
        with peaks.lock:
            py = tracemalloc.get_traced_memory()[1] if trace else 0
            rows.append({"stage": name, "wall": time.perf_counter() - t0, "cpu": bench._cpu() - c0,
                         "rss": peaks.rss, "arrow": peaks.arrow, "python": py, "sites": _sites(peaks.snapshot),
                         "after": resident()})

    store = Store(root / "store")
    start("ingest")
    report = store.ingest(root / "run", run="bench")
    start("summary")
    summary = store.summary("bench")

    def progress(name: str, done: int, total: int) -> None:
        if name:
            start(f"detector {name}")
        else:
            end()

    config = AuditConfig(options={"monitorability": {"label": "by my beard", "n_boot": 200}})
    findings = run_detectors(store, "bench", config, progress=progress)
    result = AuditResult(runs=[summary], findings=rank(findings), ingests=[report])
    start("findings JSON")
    result.write_json(root / "findings.json")
    start("report")
    write_report(store, result, root / "audit.html")
    end()
    peaks.stop = True
    return {"rows": summary.rows, "stages": rows,
            "peak_rss_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "findings": [{"kind": f.kind, "severity": f.severity, "title": f.title} for f in result.findings]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rollouts", type=int, default=200_000)
    ap.add_argument("--keep", help="generate into (and keep) this directory instead of a temporary one")
    ap.add_argument("--no-trace", action="store_true", help="RSS and Arrow only (no tracemalloc)")
    ap.add_argument("--_measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        print(json.dumps(measure(Path(args._measure), not args.no_trace)))
        return
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rlaudit-audit-memory-"))
    try:
        if not (tmp / "run").is_dir():
            tmp.mkdir(parents=True, exist_ok=True)
            gen = bench.generate(tmp, args.rollouts)
            print(f"generated {gen['rollouts']:,} rollouts ({gen['steps']} steps)")
        shutil.rmtree(tmp / "store", ignore_errors=True)
        last = next((tmp / "last").glob("*.parquet"))
        shutil.copy(last, tmp / "run" / "completions" / last.name)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        cmd = [sys.executable, __file__, "--_measure", str(tmp)] + (["--no-trace"] if args.no_trace else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit("measuring child failed")
        _print(json.loads(proc.stdout.strip().splitlines()[-1]), not args.no_trace)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _print(res: dict, trace: bool) -> None:
    mb = 1 / 2**20
    print(f"rows audited: {res['rows']:,}")
    print(f"{'stage':<28} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12} {'Arrow MB':>9} {'Python MB':>10}   "
          "resident after, MB: heap / glibc arenas / other anon / files")
    for r in res["stages"]:
        after = " / ".join(f"{r['after'][k] * mb:,.0f}" for k in ("heap", "arenas", "anon", "file"))
        print(f"{r['stage']:<28} {r['wall']:8.1f} {r['cpu']:8.1f} {r['rss'] * mb:12,.0f} {r['arrow'] * mb:9,.0f} "
              f"{(r['python'] * mb if trace else float('nan')):10,.0f}   {after}")
        for s in r["sites"]:
            print(f"{'':<30}{s}")
    print(f"process peak RSS (ru_maxrss): {res['peak_rss_process'] * mb:,.0f} MB")
    for f in res["findings"]:
        if f["severity"] in ("high", "medium") or f["kind"] in ("monitorability", "audit_error"):
            print(f"  [{f['severity']}] {f['kind']}: {f['title'][:140]}")


if __name__ == "__main__":
    main()
