"""Where the audit's resident memory is, stage by stage (issue 14 memory).

usage: PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/audit_resident.py ROOT [--no-floor] [--cold-only] [--objects]

ROOT is a benchmarks/audit.py --keep directory (run/, last/). Runs the same stages as benchmarks/audit.py
(floor, cold audit, warm re-audit) in this process, into ROOT/store-membase (deleted first), and after every
stage prints: the stage's CPU s and peak RSS (20 ms sampler), then what stays resident:
  rss    - RSS now; anon / file from smaps_rollup
  heap   - the [heap] mapping (glibc main arena)
  arenas - anon mappings in 64 MB-aligned 64 MB reservations (glibc thread arenas)
  big    - other anon mappings >= 32 MB (mimalloc / jemalloc segments, numpy/large malloc via mmap)
  small  - other anon mappings < 32 MB
  glibc  - mallinfo2: in use / free-but-kept bytes over all arenas, mmapped chunks
  arrow  - pyarrow pool bytes allocated
  py     - sys.getallocatedblocks, number of gc objects
  memos  - size of every *_memo on the Store, module caches (tokens._MATCHERS, _EMPTY, lru_caches)
  thr    - threads of the process (a DuckDB database left open keeps its worker threads)
  je     - DuckDB's bundled jemalloc (duckdb_je_mallctl): allocated / resident / retained
and, at each stage's peak RSS, what jemalloc / Arrow / glibc held and where the main thread was (rlaudit frames).
DUMP_AT=stage1,stage2 also lists every anonymous mapping >= 4 MB resident and file-backed RSS per file.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

MB = 1 << 20
ARENA = 64 << 20


class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = Mallinfo2


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def smaps() -> dict:
    """Resident bytes per category of mapping."""
    out = {"heap": 0, "arenas": 0, "n_arenas": 0, "big": 0, "small": 0, "file": 0, "stack": 0}
    maps = []
    cur = None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur = {"lo": lo, "hi": hi, "perms": parts[1], "path": parts[5] if len(parts) > 5 else "", "rss": 0,
                       "anon": 0}
                maps.append(cur)
            elif parts[0] == "Rss:":
                cur["rss"] = int(parts[1]) * 1024
            elif parts[0] == "Anonymous:":
                cur["anon"] = int(parts[1]) * 1024
    for i, m in enumerate(maps):
        size = m["hi"] - m["lo"]
        if m["path"] == "[heap]":
            out["heap"] += m["rss"]
        elif m["path"].startswith("[stack"):
            out["stack"] += m["rss"]
        elif m["path"] and not m["path"].startswith("["):
            out["file"] += m["rss"]
        elif m["path"] == "":
            # a glibc thread arena: its first mapping starts 64 MB-aligned and, with the PROT_NONE rest of the
            # reservation after it, spans exactly 64 MB
            span = size
            if i + 1 < len(maps) and maps[i + 1]["lo"] == m["hi"] and maps[i + 1]["perms"].startswith("---"):
                span += maps[i + 1]["hi"] - maps[i + 1]["lo"]
            if m["lo"] % ARENA == 0 and span == ARENA and m["perms"].startswith("rw"):
                out["arenas"] += m["rss"]
                out["n_arenas"] += 1
            elif size >= 32 * MB:
                out["big"] += m["rss"]
            else:
                out["small"] += m["rss"]
    return out


def dump_maps() -> None:
    """Print every mapping with >= 4 MB resident, and file-backed RSS by file."""
    files = {}
    cur = None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur = [lo, hi, parts[1], parts[5] if len(parts) > 5 else ""]
            elif parts[0] == "Rss:":
                r = int(parts[1]) * 1024
                if cur[3].startswith("/"):
                    files[cur[3]] = files.get(cur[3], 0) + r
                elif r >= 4 * MB:
                    print(f"      {cur[0]:x} size {(cur[1] - cur[0]) / MB:8.1f} MB rss {r / MB:7.1f} {cur[2]} {cur[3]}")
    for f, r in sorted(files.items(), key=lambda x: -x[1])[:12]:
        print(f"      file {r / MB:7.1f} MB {f}")


def rollup() -> dict:
    out = {}
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            p = line.split()
            if p[0] in ("Rss:", "Anonymous:", "LazyFree:"):
                out[p[0][:-1]] = int(p[1]) * 1024
    return out


def deep_bytes(obj, seen=None) -> int:
    """Bytes held by a memo: Arrow tables/arrays by their buffers, numpy by nbytes, containers walked."""
    import numpy as np
    import pyarrow as pa

    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, (pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray)):
        return obj.get_total_buffer_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + sum(deep_bytes(k, seen) + deep_bytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sys.getsizeof(obj) + sum(deep_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type) and type(obj).__module__.startswith("rlaudit"):
        return sys.getsizeof(obj) + deep_bytes(vars(obj), seen)
    if hasattr(obj, "__slots__") and type(obj).__module__.startswith("rlaudit"):
        return sys.getsizeof(obj) + sum(deep_bytes(getattr(obj, s, None), seen) for s in obj.__slots__)
    return sys.getsizeof(obj)


def memos(store) -> dict:
    out = {}
    for k, v in store.__dict__.items():
        if k.endswith("_memo") or k.startswith("_") and isinstance(v, dict) and v:
            out["store." + k] = deep_bytes(v)
    from rlaudit import tokens

    for name in ("_MATCHERS", "_EMPTY"):
        if hasattr(tokens, name):
            out["tokens." + name] = deep_bytes(getattr(tokens, name))
    for mod_name, mod in list(sys.modules.items()):
        if not mod_name.startswith("rlaudit") or mod is None:
            continue
        for attr, val in list(vars(mod).items()):
            if isinstance(val, dict) and attr.isupper() is False and attr.startswith("_") and len(val) > 0 \
                    and f"{mod_name}.{attr}" not in out:
                b = deep_bytes(val)
                if b > 1 * MB:
                    out[f"{mod_name}.{attr}"] = b
    for o in gc.get_objects():
        if type(o).__name__ == "_lru_cache_wrapper":
            try:
                n = o.cache_info().currsize
            except Exception:  # noqa: BLE001
                continue
            if n:
                out[f"lru {getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', '?')}"] = n  # entries
    return out


_je = None


def jemalloc() -> dict:
    """DuckDB's bundled jemalloc: allocated / active / resident / retained bytes (duckdb_je_mallctl)."""
    global _je
    import duckdb

    if _je is None:
        so = next(Path(duckdb.__file__).parent.parent.glob("_duckdb*.so"))
        _je = ctypes.CDLL(str(so)).duckdb_je_mallctl
    e = ctypes.c_uint64(1)
    _je(b"epoch", None, None, ctypes.byref(e), ctypes.c_size_t(8))
    out = {}
    for k in ("allocated", "active", "resident", "mapped", "retained", "metadata"):
        v, n = ctypes.c_size_t(0), ctypes.c_size_t(8)
        _je(f"stats.{k}".encode(), ctypes.byref(v), ctypes.byref(n), None, ctypes.c_size_t(0))
        out["je_" + k] = v.value
    return out


def duckdb_objects() -> int:
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "DuckDBPyConnection")


class Sampler(threading.Thread):
    """Peak RSS every 20 ms; at a new peak (10 MB above the last breakdown) also what each allocator holds."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = False
        self.at_peak = {}
        self._noted = 0

    def reset(self):
        self.peak = rss()
        self.at_peak = {}
        self._noted = 0

    def run(self):
        import pyarrow as pa

        while not self.stop:
            r = rss()
            if r > self.peak:
                self.peak = r
                if r > self._noted + 10 * MB:
                    self._noted = r
                    mi = _libc.mallinfo2()
                    frame = sys._current_frames().get(threading.main_thread().ident)
                    where = []
                    while frame is not None:
                        if "rlaudit" in frame.f_code.co_filename:
                            where.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
                        frame = frame.f_back
                    self.at_peak = {"rss": r, "glibc_used": mi.uordblks, "glibc_mmap": mi.hblkhd,
                                    "arrow": pa.total_allocated_bytes(), **jemalloc(), "where": where[:6]}
            time.sleep(0.02)


class Report:
    def __init__(self, store_ref, objects: bool):
        self.sampler = Sampler()
        self.sampler.start()
        self.open = None
        self.rows = []
        self.store_ref = store_ref
        self.objects = objects

    def start(self, name):
        self.end()
        self.sampler.reset()
        self.open = (name, cpu(), time.perf_counter())

    def end(self):
        if self.open is None:
            return
        name, c0, t0 = self.open
        c, w, peak = cpu() - c0, time.perf_counter() - t0, self.sampler.peak
        self.open = None
        self.snapshot(name, c, w, peak)

    def snapshot(self, name, c=0.0, w=0.0, peak=0):
        import pyarrow as pa

        s, r, mi = smaps(), rollup(), _libc.mallinfo2()
        row = {"stage": name, "cpu": c, "wall": w, "peak": peak, "rss": r["Rss"], "anon": r["Anonymous"],
               **s, "glibc_used": mi.uordblks, "glibc_free": mi.fordblks, "glibc_mmap": mi.hblkhd,
               "glibc_arena": mi.arena, "arrow": pa.total_allocated_bytes(),
               "threads": len(os.listdir("/proc/self/task")), "blocks": sys.getallocatedblocks(), **jemalloc()}
        if self.objects:
            store = self.store_ref()
            row["memos"] = memos(store) if store is not None else {}
            row["gc_objects"] = len(gc.get_objects())
            row["duckdb_cons"] = duckdb_objects()
        self.rows.append(row)
        m = lambda k: f"{row[k] / MB:6.0f}"  # noqa: E731
        print(f"{name:<34} cpu {c:7.2f} peak {peak / MB:6.0f} | rss {m('rss')} anon {m('anon')} file {m('file')} "
              f"heap {m('heap')} arenas {m('arenas')}({row['n_arenas']}) big {m('big')} small {m('small')} | "
              f"glibc used {m('glibc_used')} free {m('glibc_free')} mmap {m('glibc_mmap')} | arrow {m('arrow')} "
              f"lazy {r.get('LazyFree', 0) / MB:4.0f} | je alloc {m('je_allocated')} res {m('je_resident')} retained {m('je_retained')} | thr {row['threads']}",
              flush=True)
        ap = self.sampler.at_peak if c or w else {}
        if ap:
            print(f"    at peak {ap['rss'] / MB:.0f}: je allocated {ap['je_allocated'] / MB:.0f} resident "
                  f"{ap['je_resident'] / MB:.0f} | arrow {ap['arrow'] / MB:.0f} | glibc used {ap['glibc_used'] / MB:.0f}"
                  f" mmap {ap['glibc_mmap'] / MB:.0f} | {' < '.join(ap['where'])}", flush=True)
        if any(d and d in name for d in os.environ.get("DUMP_AT", "").split(",")):
            dump_maps()
        if self.objects:
            big = {k: v for k, v in row["memos"].items() if not k.startswith("lru") and v > MB}
            lru = {k: v for k, v in row["memos"].items() if k.startswith("lru")}
            print(f"    gc objects {row['gc_objects']:,} duckdb cons {row['duckdb_cons']} memos(MB) "
                  f"{ {k: round(v / MB) for k, v in big.items()} } lru entries {lru}", flush=True)


def main():
    root = Path(sys.argv[1])
    objects = "--objects" in sys.argv

    import duckdb

    from rlaudit.audit import AuditResult
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.findings import rank
    from rlaudit.report import write_report
    from rlaudit.store import Store

    from rlaudit.memory import prepare

    prepare()  # as the CLI and benchmarks/audit.py do (on main: only acts under a memory budget)
    holder = {}
    rep = Report(lambda: holder.get("store"), objects)
    rep.snapshot("after imports")
    if "--no-floor" not in sys.argv:
        rep.start("floor")
        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false")
        files = f"{root}/run/completions/*.parquet"
        con.execute(f"""SELECT count(*) FROM (SELECT step, w, count(*) FROM (
            SELECT step, unnest(string_split(lower(completion), ' ')) w FROM read_parquet('{files}')) GROUP BY ALL)
            """).fetchall()
        con.close()
        rep.end()

    def audit_once(label, store, source):
        rep.start(f"{label}: ingest")
        report = store.ingest(source, run="bench")
        rep.start(f"{label}: summary")
        summary = store.summary("bench")

        def progress(name, done, total):
            if name:
                rep.start(f"{label}: {name}")
            else:
                rep.end()

        findings = run_detectors(store, "bench", AuditConfig(), progress=progress)
        result = AuditResult(runs=[summary], findings=rank(findings), ingests=[report])
        rep.start(f"{label}: findings JSON")
        result.write_json(root / f"findings-{label}-membase.json")
        rep.start(f"{label}: report")
        write_report(store, result, root / f"audit-{label}-membase.html")
        rep.end()
        return result

    sdir = root / "store-membase"
    shutil.rmtree(sdir, ignore_errors=True)
    last = next((root / "last").glob("*.parquet"))
    (root / "run" / "completions" / last.name).unlink(missing_ok=True)
    store = Store(sdir)
    holder["store"] = store
    t0 = cpu()
    cold = audit_once("cold", store, root / "run")
    c_cold = cpu() - t0
    if "--cold-only" not in sys.argv:
        shutil.copy(last, root / "run" / "completions")
        t0 = cpu()
        audit_once("warm", store, root / "run")
        print(f"warm audit CPU {cpu() - t0:.1f}")
        (root / "run" / "completions" / last.name).unlink(missing_ok=True)
    rep.sampler.stop = True
    print(f"cold audit CPU {c_cold:.1f}; ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MB; "
          f"cold findings {len(cold.findings)}")
    out = Path(os.environ.get("STAGES_JSON", root / "stages-membase.json"))
    out.write_text(json.dumps(rep.rows, default=str))


if __name__ == "__main__":
    main()
