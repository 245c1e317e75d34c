"""Throughput of the CoT-grading scan at scale, vs a bare DuckDB scan of the same text columns.

    python benchmarks/cot_scan.py --rollouts 1000000

Builds a synthetic run (vectorised: sentences drawn from a pool with Arrow joins) in a temporary store: reasoning
of ~6 sentences, an answer that restates one of them, a prompt per group of 8, one grader whose input is
template + prompt + answer + reference, and for 1% of rollouts the full completion (exposure). Then times, in one
process: (a) DuckDB reading and measuring every text column the scan reads (the baseline), (b) the scan itself
(`scan_run`: tokenise, shingle, compare, per-rollout decision), (c) the whole `cot_grading` detector via
`audit_store` (scan, aggregation, evidence; screen off). Prints rollouts/s, the ratio to the baseline, recall of
the planted exposure, false positives, and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rlaudit.audit import audit_store
from rlaudit.detectors import AuditConfig
from rlaudit.cot.scan import ScanParams, scan_run
from rlaudit.schema import canonical_table
from rlaudit.store import Store

WORDS = np.array(("the a of to and is in that we it for as with this so be by on are value number sum total "
                  "answer check step first then next compute find equal result because since therefore thus "
                  "apple river stone cloud engine garden mirror candle forest bridge signal market planet window "
                  "question problem method count times plus minus divide twice half square root factor prime even "
                  "odd red blue green small large quick slow early late north south east west inside outside above "
                  "below wait consider assume suppose hence clearly note recall given need want try again").split())


def sentence_pool(rng: np.random.Generator, n: int) -> pa.Array:
    lengths = rng.integers(6, 14, n)
    words = pa.array(WORDS[rng.integers(0, len(WORDS), lengths.sum())])
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    lists = pa.ListArray.from_arrays(offsets, words)
    return pc.binary_join_element_wise(pc.binary_join(lists, " "), pa.scalar("."), "")


def join(*cols: pa.Array, sep: str = " ") -> pa.Array:
    return pc.binary_join_element_wise(*cols, sep)


def make_chunk(rng: np.random.Generator, pool: pa.Array, start: int, n: int, steps: int) -> tuple[pa.Table, int]:
    pick = lambda: pool.take(pa.array(rng.integers(0, len(pool), n)))  # noqa: E731
    idx = np.arange(start, start + n)
    group = idx // 8
    prompts = join(pa.array(np.char.add("user: question ", (group % 50_000).astype(str))), pick(), pick())
    reasoning = join(pick(), pick(), pick(), pick(), pick(), pick())
    closing = pick()
    reasoning = join(reasoning, closing)
    answer = join(pick(), closing)
    completion = join(pa.array(["<think>"] * n), reasoning, pa.array(["</think>"] * n), answer, sep="")
    exposed = rng.random(n) < 0.01
    body = pc.if_else(pa.array(exposed), completion, answer)
    seen = join(pa.array(["You are a strict grader.\nQuestion:"] * n), prompts, pa.array(["\nResponse:"] * n), body,
                pa.array(["\nReference:"] * n), pick(), sep="\n")
    keys = pa.array([["judge"]] * n, pa.list_(pa.string()))
    offsets = pa.array(np.arange(n + 1, dtype=np.int32))
    grader_inputs = pa.MapArray.from_arrays(offsets, keys.flatten(), seen)
    table = pa.table({
        "run": pa.array(["bench"] * n), "rollout_id": pa.array(np.char.add("r:", idx.astype(str))),
        "step": pa.array((idx * steps // max(1, TOTAL)).astype(np.int64)), "split": pa.array(["train"] * n),
        "group_id": pa.array(group.astype(str)), "sample_index": pa.array((idx % 8).astype(np.int32)),
        "condition": pa.array(["none"] * n), "system_prompt": pa.nulls(n, pa.string()),
        "task": pa.array(np.where(group % 2 == 0, "math", "chat")), "prompt": prompts, "completion": completion,
        "reasoning": reasoning, "answer": answer,
        "rewards": pa.MapArray.from_arrays(offsets, keys.flatten(), pa.array(rng.random(n))),
        "reward": pa.array(rng.random(n)), "advantage": pa.nulls(n, pa.float64()), "grader_inputs": grader_inputs,
        "metadata": pa.nulls(n, pa.string()),
    })
    return canonical_table(table), int(exposed.sum())  # the columns it lacks (tool calls) null


TOTAL = 0


def main() -> None:
    global TOTAL
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollouts", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=500)
    args = ap.parse_args()
    TOTAL = args.rollouts
    rng = np.random.default_rng(0)
    pool = sentence_pool(rng, 50_000)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        t0 = time.perf_counter()
        planted = 0
        for i, start in enumerate(range(0, args.rollouts, args.chunk)):
            table, k = make_chunk(rng, pool, start, min(args.chunk, args.rollouts - start), args.steps)
            planted += k
            store.append("bench", table, f"part-{i:04d}")
        print(f"built {args.rollouts:,} rollouts in {time.perf_counter() - t0:.1f}s ({planted:,} exposed)")
        text_bytes = store.query("SELECT sum(strlen(prompt) + strlen(answer) + strlen(reasoning) + "
                                 "strlen(grader_inputs['judge'])) FROM rollouts", runs=["bench"]).column(0)[0].as_py()
        print(f"text the scan reads: {float(text_bytes) / 1e9:.2f} GB")

        con = store.connect(["bench"])
        t0, c0 = time.perf_counter(), time.process_time()
        con.execute("SELECT count(*), sum(strlen(prompt)), sum(strlen(answer)), sum(strlen(reasoning)), "
                    "sum(strlen(grader_inputs['judge'])), sum(strlen(group_id)) FROM rollouts").fetchall()
        base, base_cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"baseline DuckDB scan of the text columns: {base:.2f}s = {args.rollouts / base:,.0f} rollouts/s "
              f"(CPU {base_cpu:.2f}s, all DuckDB threads)")

        params = ScanParams()
        t0, c0 = time.perf_counter(), time.process_time()
        results = scan_run(con, params, source="rollouts")
        scan, scan_cpu = time.perf_counter() - t0, time.process_time() - c0
        real = pc.invert(results.column("chance"))
        found = int(pc.sum(pc.and_(results.column("exposed"), real)).as_py())
        chance = results.filter(results.column("chance"))
        print(f"cot scan (tokenise + shingle + compare): {scan:.1f}s = {args.rollouts / scan:,.0f} rollouts/s "
              f"({scan / base:.1f}x the baseline scan); CPU {scan_cpu:.1f}s = {args.rollouts / scan_cpu:,.0f} "
              f"rollouts per CPU-second ({scan_cpu / base_cpu:.1f}x the baseline's CPU)")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"exposed found: {found:,} of {planted:,} planted; chance pairings: "
              f"{int(pc.sum(chance.column('exposed')).as_py()):,} exposed of {chance.num_rows:,}")

        t0 = time.perf_counter()
        result = audit_store(store, ["bench"], AuditConfig(detectors=["cot_grading"],
                                                           options={"cot_grading": {"screen": False}}))
        full = time.perf_counter() - t0
        (f,) = result.of_kind("cot_grading")
        print(f"cot_grading detector end to end (scan + cache + aggregation + evidence): {full:.1f}s = "
              f"{args.rollouts / full:,.0f} rollouts/s; exposure_rate {f['exposure_rate']:.4%}")
        t0 = time.perf_counter()
        audit_store(store, ["bench"], AuditConfig(detectors=["cot_grading"], max_step=args.steps // 2,
                                                  options={"cot_grading": {"screen": False}}))
        print(f"re-audit at max_step={args.steps // 2} (cached scan): {time.perf_counter() - t0:.1f}s")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
