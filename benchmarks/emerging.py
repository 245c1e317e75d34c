"""Benchmark: emerging-behaviour discovery (and generalisation) on a large synthetic run.

    python benchmarks/emerging.py                     # 1,000,000 rollouts (200 steps x 5,000)
    python benchmarks/emerging.py --rollouts 200000   # quicker

The run is written once with `Store.append` (canonical rows, one part per 20 steps) by a child process, so the
measuring process's peak memory covers only the audit. Each answer and reasoning is ~30 Zipf-distributed words
from a 3,000-word vocabulary; three personas (80% / 17.5% / 2.5% of traffic), four tasks, prompt groups of 8.
A tic ("by my beard") rises from 1% to 40% of answers from 40% of the run in the small persona and, from half-way,
in the others (to 25%).

Printed: the same-process baselines (a bare DuckDB scan of the answer column, and DuckDB tokenising every answer
and reasoning with the discovery regex), the cold audit (derived token sets computed and cached, then
discovery), the warm audit (cached token sets), per-step audits with `max_step` (what live monitoring and the
benchmark's latency measurement do), rollouts/s, peak RSS, and whether the tic was found. Wall and CPU time
(all threads of this process) are both printed: on a shared machine the CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RUN = "bench-emerging"
STEPS_PER_PART = 20


def _words(rng: np.random.Generator, vocab: pa.Array, rows: int, length: int, zipf: np.ndarray) -> list[pa.Array]:
    idx = rng.choice(len(vocab), size=(length, rows), p=zipf)
    return [pc.take(vocab, pa.array(idx[j])) for j in range(length)]


def generate(root: str, rollouts: int, per_step: int, seed: int = 0) -> None:
    """Write the synthetic run into the store at `root` (vectorised: Arrow string kernels, no per-row Python)."""
    from rlaudit.schema import canonical_table
    from rlaudit.store import Store

    store = Store(root)
    rng = np.random.default_rng(seed)
    steps = rollouts // per_step
    vocab = pa.array([f"w{i}" for i in range(3000)] + "the a of to and is in it that we".split())
    zipf = 1 / np.arange(1, len(vocab) + 1) ** 1.1
    zipf /= zipf.sum()
    conds = np.array(["default", "helper", "nerdy"])
    tasks = np.array(["math", "code", "trivia", "advice"])
    for lo in range(0, steps, STEPS_PER_PART):
        hi = min(steps, lo + STEPS_PER_PART)
        n = (hi - lo) * per_step
        step = np.repeat(np.arange(lo, hi), per_step)
        group = np.arange(n) // 8
        g_cond = rng.choice(3, size=n // 8 + 1, p=[0.8, 0.175, 0.025])[group]
        cond = conds[g_cond]
        task = tasks[rng.integers(0, 4, n // 8 + 1)[group]]
        onset = np.where(cond == "nerdy", 0.4 * steps, 0.5 * steps)
        top = np.where(cond == "nerdy", 0.4, 0.25)
        p = 0.01 + (top - 0.01) / (1 + np.exp(-(step - onset - 10) / 4))
        tic = rng.random(n) < p
        answer_cols = _words(rng, vocab, n, 30, zipf)
        answer_cols[5] = pc.if_else(pa.array(tic), pa.scalar("by my beard"), answer_cols[5])
        answer = pc.binary_join_element_wise(*answer_cols, " ")
        reasoning = pc.binary_join_element_wise(*_words(rng, vocab, n, 30, zipf), " ")
        prompt = pc.binary_join_element_wise(pa.array(np.char.add("Question ", (group + lo * per_step // 8)
                                                                    .astype(str))), pa.array(task), " about ")
        rid = pc.binary_join_element_wise(pa.array(np.char.add("s", step.astype(str))),
                                          pa.array(np.arange(n).astype(str)), ":")
        completion = pc.binary_join_element_wise(pa.scalar("<think>"), reasoning, pa.scalar("</think>"), answer, "")
        table = canonical_table({
            "run": pa.array([RUN] * n), "rollout_id": rid, "step": pa.array(step, pa.int64()),
            "split": pa.array(["train"] * n), "group_id": pa.array((group + lo * per_step // 8).astype(str)),
            "sample_index": pa.array(np.arange(n) % 8, pa.int32()), "condition": pa.array(cond),
            "system_prompt": pa.array([None] * n, pa.string()), "task": pa.array(task), "prompt": prompt,
            "completion": completion, "reasoning": reasoning, "answer": answer,
            "rewards": pa.array([[("correct", 1.0)]] * n, pa.map_(pa.string(), pa.float64())),
            "reward": pa.array(np.ones(n)), "advantage": pa.array(np.zeros(n)),
            "grader_inputs": pa.array([[]] * n, pa.map_(pa.string(), pa.string())),
            "metadata": pa.array([None] * n, pa.string()),
        })  # the columns added since (tool calls) are null
        store.append(RUN, table, key=f"steps-{lo:05d}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=1_000_000)
    ap.add_argument("--per-step", type=int, default=5_000)
    ap.add_argument("--store", type=str, default=None, help="Keep the store here (reused if it exists).")
    args = ap.parse_args()

    from rlaudit.behaviors import TOKEN_PATTERN
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.store import Store

    tmp = None
    root = args.store or (tmp := tempfile.mkdtemp(prefix="rlaudit-bench-"))
    store = Store(root)
    if not store.has_run(RUN):
        t = time.perf_counter()
        child = mp.get_context("spawn").Process(target=generate, args=(root, args.rollouts, args.per_step))
        child.start()
        child.join()
        if child.exitcode:
            sys.exit(f"generation failed (exit code {child.exitcode})")
        print(f"generated {args.rollouts:,} rollouts in {time.perf_counter() - t:.1f}s (child process)")
    n = store.query("SELECT count(*) AS n FROM rollouts", runs=[RUN]).column(0)[0].as_py()
    steps = store.summary(RUN).steps
    print(f"run: {n:,} rollouts, steps {steps[0]}..{steps[1]}, store {root}")

    # derived data from an earlier invocation would make the cold run warm
    shutil.rmtree(store.run_dir(RUN) / "derived", ignore_errors=True)
    con = store.connect([RUN])
    t, c = time.perf_counter(), time.process_time()
    con.execute("SELECT sum(length(answer)) FROM rollouts").fetchall()
    scan, scan_cpu = time.perf_counter() - t, time.process_time() - c
    token = TOKEN_PATTERN.replace("'", "''")
    t, c = time.perf_counter(), time.process_time()
    con.execute(f"SELECT sum(len(regexp_extract_all(lower(answer), '{token}'))) + "
                f"sum(len(regexp_extract_all(lower(reasoning), '{token}'))) FROM rollouts").fetchall()
    tokenise, tokenise_cpu = time.perf_counter() - t, time.process_time() - c
    con.close()
    print(f"baseline: DuckDB scan of answers {scan:.2f}s wall, {scan_cpu:.2f}s CPU ({n / scan:,.0f} rollouts/s); "
          f"DuckDB tokenising answers + reasoning {tokenise:.2f}s wall, {tokenise_cpu:.2f}s CPU "
          f"({n / tokenise:,.0f} rollouts/s)")

    from rlaudit.derived import tokens

    config = AuditConfig(detectors=["emerging", "generalization"])
    t, c = time.perf_counter(), time.process_time()
    tokens.vocabulary(store, RUN)
    t_vocab = time.perf_counter() - t
    tokens.rollout_terms(store, RUN)
    t_terms = time.perf_counter() - t - t_vocab
    found = run_detectors(store, RUN, config)
    cold, cold_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"  of which: vocabulary {t_vocab:.1f}s, per-rollout term sets {t_terms:.1f}s, "
          f"discovery + generalisation {cold - t_vocab - t_terms:.1f}s")
    errors = [f for f in found if f.kind == "audit_error"]
    if errors:
        print(errors[0].fields["traceback"])
    t, c = time.perf_counter(), time.process_time()
    run_detectors(store, RUN, config)
    warm, warm_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"cold audit (token sets computed + discovery + generalisation): {cold:.1f}s wall, {cold_cpu:.1f}s CPU, "
          f"{n / cold:,.0f} rollouts/s, {cold / tokenise:.1f}x the tokenising baseline "
          f"({cold_cpu / tokenise_cpu:.1f}x in CPU time)")
    print(f"warm audit (token sets cached): {warm:.1f}s wall, {warm_cpu:.1f}s CPU, {n / warm:,.0f} rollouts/s")
    per_step = []
    for max_step in (steps[1] // 4, steps[1] // 2, 3 * steps[1] // 4):
        t, c = time.perf_counter(), time.process_time()
        run_detectors(store, RUN, AuditConfig(detectors=["emerging"], max_step=max_step))
        per_step.append((max_step, time.perf_counter() - t, time.process_time() - c))
    print("audits with max_step (cached token sets): "
          + ", ".join(f"step {s}: {d:.1f}s wall / {cpu:.1f}s CPU" for s, d, cpu in per_step))
    print(f"peak RSS of this process: {peak_rss_mb():,.0f} MB")

    beard = [f for f in found if f.kind == "emerging_behavior" and "beard" in f.get("behavior", "")]
    gen = [f for f in found if f.kind == "generalization" and "beard" in f.get("behavior", "")]
    if beard:
        f = beard[0]
        print(f"planted tic: {f.severity} {f.title} (terms {f['terms'][:4]})")
    else:
        print("planted tic: NOT FOUND")
    for g in gen:
        print(f"generalization: {g.severity} {g.title} (source {g['source_condition']}, r={g['correlation']:.2f})")
    others = [f for f in found if f.kind == "emerging_behavior" and f not in beard and f.severity in ("medium", "high")]
    print(f"other medium/high emerging findings: {len(others)}" + "".join(f"\n  {f.title}" for f in others[:5]))
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
