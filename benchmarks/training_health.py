"""Speed of the training_health detector on a large run, against a floor measured in the same process.

    .venv/bin/python benchmarks/training_health.py              # 1,000,000 rollouts, 200 steps, groups of 8
    .venv/bin/python benchmarks/training_health.py --rows 200000

The run has completions of ~300-900 characters with think tags (some truncated), a binary reward whose groups
go all-correct late, growing lengths and eval rows, so every rollout check runs. The floor is one DuckDB pass
over the columns the checks read (per-step count, mean reward and mean completion length).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pyarrow as pa

from rlaudit.detectors import AuditConfig, DetectContext, run_detectors
from rlaudit.schema import ROLLOUT_SCHEMA
from rlaudit.store import Store


def synthetic(rows: int, steps: int = 200, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    per_step = rows // steps
    n = per_step * steps
    step = np.arange(n) // per_step + 1
    frac = step / steps
    group = np.arange(n) // 8
    p_right = 0.5 + 0.45 * frac[::8]  # per group: late groups mostly all-correct
    right = (rng.random(n) < np.repeat(p_right, 8)).astype(float)
    length = (300 + 600 * frac * rng.random(n)).astype(int)
    truncated = rng.random(n) < 0.02 + 0.1 * frac
    body = "x" * 1000
    completion = [f"<think>\n{body[:k]}" if t else f"<think>\n{body[:k // 2]}\n</think>\n\n{body[:k // 2]}"
                  for k, t in zip(length.tolist(), truncated.tolist())]
    split = np.where(np.arange(n) % per_step < per_step // 10, "eval", "train")
    cols = {
        "run": pa.array(["big"] * n), "rollout_id": pa.array([f"f:{i}" for i in range(n)]),
        "step": pa.array(step), "split": pa.array(split),
        "group_id": pa.array([f"g{g}" for g in group.tolist()]),
        "sample_index": pa.array((np.arange(n) % 8).astype(np.int32)),
        "condition": pa.array(rng.choice(np.array(["none", "nerdy", "pirate"]), n)),
        "system_prompt": pa.nulls(n, pa.string()), "task": pa.array(["t"] * n), "prompt": pa.array(["p"] * n),
        "completion": pa.array(completion), "reasoning": pa.array(["r"] * n),
        "answer": pa.array(np.where(truncated, "", "a")),
        "rewards": pa.MapArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)),
                                           pa.array(["correctness"] * n), pa.array(right)),
        "reward": pa.array(right), "advantage": pa.nulls(n, pa.float64()),
        "grader_inputs": pa.MapArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)),
                                                 pa.array([], pa.string()), pa.array([], pa.string())),
        "tool_calls": pa.nulls(n, ROLLOUT_SCHEMA.field("tool_calls").type),
        "tool_outputs": pa.nulls(n, ROLLOUT_SCHEMA.field("tool_outputs").type),
        "metadata": pa.nulls(n, pa.string()),
    }
    return pa.table({name: cols[name] for name in ROLLOUT_SCHEMA.names}, schema=ROLLOUT_SCHEMA)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        t0 = time.perf_counter()
        table = synthetic(args.rows)
        store.append("big", table, key="all")
        print(f"built and stored {table.num_rows:,} rollouts in {time.perf_counter() - t0:.1f} s")
        con = DetectContext(store=store, run="big", config=AuditConfig()).connect()
        t0, c0 = time.perf_counter(), time.process_time()
        con.execute("SELECT step, count(*), avg(reward), avg(length(completion)) FROM rollouts GROUP BY step"
                    ).fetchall()
        floor, floor_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        found = run_detectors(store, "big", AuditConfig(detectors=["training_health"]))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"floor (one DuckDB pass): {floor:.2f} s wall, {floor_cpu:.2f} CPU s")
        print(f"training_health: {wall:.2f} s wall, {cpu:.2f} CPU s ({wall / max(floor, 1e-9):.1f}x the floor)")
        for f in found:
            print(f"  {f.severity:6s} {f.get('check') or f.kind}: {f.title}")


if __name__ == "__main__":
    main()
