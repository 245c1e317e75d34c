"""Term sets with the compiled kernels (numba) against the numpy path, back to back, on an existing store.

    python benchmarks/kernels.py --store STORE --run RUN --rollouts 100000 [--repeats 2]

Each measurement is a fresh child process with `RLAUDIT_KERNEL` set (numba, numpy, numba, numpy, ...): it reads
the run's vocabulary (`tokens.term_sets(..., only=set())`: cached, or chosen once), loads or compiles the
kernels (timed apart: `compile_cpu`), then runs `tokens._compute_parts` on the run's first parts holding
`--rollouts` rows, `--batch-parts` parts per call as `tokens.term_sets` batches 5,000-row parts, and prints the
CPU seconds of the process (all threads) and the wall seconds of those calls, and a digest of the term-set and
count tables. The parent checks that every digest is the same. `_compute_parts` writes nothing: the store is
only read (unless its vocabulary has to be chosen first, which writes the vocabulary cache).
`NUMBA_CACHE_DIR=$(mktemp -d)` measures the first-call compile cost instead of a cache load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time


def child(store_dir: str, run: str, rollouts: int, batch_parts: int) -> dict:
    import pyarrow as pa

    from rlaudit import kernels
    from rlaudit.derived import kernels as term_kernels
    from rlaudit.derived import tokens
    from rlaudit.store import Store

    store = Store(store_dir)
    vocab = tokens.term_sets(store, run, only=set()).vocab
    tokens._matcher(vocab)
    layouts = store.part_layouts(run)
    rows_of = {e["part"]: int(e.get("rows") or 0) for e in store.manifest(run)["files"].values() if e.get("part")}
    parts, n = [], 0
    for p in store.parts(run):
        if n >= rollouts:
            break
        parts.append(p)
        n += rows_of.get(p.name, 0)
    c0, w0 = time.process_time(), time.perf_counter()
    backend = kernels.backend()
    if backend == "numba":
        term_kernels.compiled()
    compile_cpu = time.process_time() - c0
    digest = hashlib.sha1()
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(0, len(parts), batch_parts):
        batch = parts[i:i + batch_parts]
        for terms, counts, _ in tokens._compute_parts(batch, layouts.get(batch[0].name, 1), vocab,
                                                      tokens.VocabOptions()):
            for t in (terms, counts):
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, t.schema) as w:
                    w.write_table(t)
                digest.update(sink.getvalue().to_pybytes())
    return {"kernel": backend, "rollouts": n, "parts": len(parts), "compile_cpu": round(compile_cpu, 3),
            "cpu": round(time.process_time() - c0, 3), "wall": round(time.perf_counter() - w0, 3),
            "digest": digest.hexdigest()[:16], "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--rollouts", type=int, default=100_000)
    ap.add_argument("--batch-parts", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--kernels", default="numba,numpy")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        print(json.dumps(child(a.store, a.run, a.rollouts, a.batch_parts)))
        return
    results = []
    for _ in range(a.repeats):
        for k in a.kernels.split(","):
            out = subprocess.run([sys.executable, __file__, "--store", a.store, "--run", a.run, "--rollouts",
                                  str(a.rollouts), "--batch-parts", str(a.batch_parts), "--_child"],
                                 env={**os.environ, "RLAUDIT_KERNEL": k}, check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{r['kernel']:6} {r['rollouts']:>9,} rollouts in {r['parts']} parts: {r['cpu']:7.2f} CPU s "
                  f"{r['wall']:7.2f} s wall (kernel load/compile {r['compile_cpu']:.2f} CPU s; load average "
                  f"{r['load']:.1f}) digest {r['digest']}", flush=True)
    digests = {r["digest"] for r in results}
    print("identical term sets and counts" if len(digests) == 1 else f"DIFFERENT results: {sorted(digests)}")
    sys.exit(0 if len(digests) == 1 else 1)


if __name__ == "__main__":
    main()
