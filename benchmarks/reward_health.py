"""Speed of the reward_health detector on a large run, against a floor measured in the same process.

    .venv/bin/python benchmarks/reward_health.py              # 1,000,000 rollouts x 6 reward signals
    .venv/bin/python benchmarks/reward_health.py --rows 200000

The floor is one pass of DuckDB over the same `rewards_long` view (count and min/max per signal): the least any
per-signal check must read. The run has every problem the detector looks for, so no check is skipped. The
detector runs twice: cold (it computes and caches the run's per-part statistics, `reward_stats`) and warm (it
reads them); wall and process CPU seconds of each.
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


def synthetic(rows: int, per_step: int = 1024, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    step = np.arange(rows) // per_step + 1
    cond = rng.choice(np.array(["none", "nerdy", "pirate"]), rows)
    judge = rng.uniform(0, 1, rows)
    judge[rng.random(rows) < 0.002] *= 100
    flaky = rng.uniform(0, 1, rows)
    flaky[rng.random(rows) < 0.03] = np.nan
    dead = rng.uniform(0, 1, rows)
    dead[step > step.max() * 0.7] = 0.0
    persona = np.where(cond == "nerdy", rng.uniform(0, 1, rows), np.nan)
    signals = {"correctness": (rng.random(rows) < 0.6).astype(float), "judge": judge, "flaky": flaky,
               "dead": dead, "persona": persona, "constant": np.zeros(rows)}
    keys = pa.array(np.tile(np.arange(len(signals), dtype=np.int32), rows))
    keys = pa.DictionaryArray.from_arrays(keys, pa.array(list(signals))).cast(pa.string())
    values = pa.array(np.column_stack(list(signals.values())).ravel())
    offsets = pa.array(np.arange(0, rows * len(signals) + 1, len(signals), dtype=np.int32))
    n = rows
    cols = {
        "run": pa.array(["big"] * n), "rollout_id": pa.array([f"f:{i}" for i in range(n)]),
        "step": pa.array(step), "split": pa.array(["train"] * n),
        "group_id": pa.array([f"{s}-{i // 8}" for s, i in zip(step.tolist(), range(n))]),
        "sample_index": pa.array((np.arange(n) % 8).astype(np.int32)), "condition": pa.array(cond),
        "system_prompt": pa.nulls(n, pa.string()), "task": pa.array(["t"] * n), "prompt": pa.array(["p"] * n),
        "completion": pa.array(["c"] * n), "reasoning": pa.nulls(n, pa.string()), "answer": pa.array(["a"] * n),
        "rewards": pa.MapArray.from_arrays(offsets, keys, values), "reward": pa.array(np.zeros(n)),
        "advantage": pa.array(np.zeros(n)),
        "grader_inputs": pa.MapArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()),
                                                 pa.array([], pa.string())),
        "metadata": pa.nulls(n, pa.string()),
    }
    for field in ROLLOUT_SCHEMA:  # columns added to the schema since (tool calls): absent here
        cols.setdefault(field.name, pa.nulls(n, field.type))
    return pa.Table.from_pydict(cols, schema=ROLLOUT_SCHEMA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        store.append("big", synthetic(args.rows), key="all")
        started = time.perf_counter()
        con = DetectContext(store=store, run="big", config=AuditConfig()).connect()
        con.execute("SELECT signal, count(*), min(value), max(value) FROM rewards_long GROUP BY signal").fetchall()
        floor = time.perf_counter() - started
        timings = []
        for _ in ("cold", "warm"):
            started, cpu = time.perf_counter(), time.process_time()
            found = run_detectors(store, "big", AuditConfig(detectors=["reward_health"]))
            timings.append((time.perf_counter() - started, time.process_time() - cpu))
    (cold, cold_cpu), (warm, warm_cpu) = timings
    print(f"{args.rows:,} rollouts x 6 signals: floor (one DuckDB pass) {floor:.2f}s, reward_health cold "
          f"{cold:.2f}s wall / {cold_cpu:.2f} CPU s ({cold / floor:.1f}x floor), warm {warm:.2f}s / {warm_cpu:.2f} CPU s")
    for f in found:
        print(f"  {f.severity:6s} {f.title}")


if __name__ == "__main__":
    main()
