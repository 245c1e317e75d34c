"""Attribution benchmark: time and rollouts/s of `rlaudit.attribution.trace` vs a bare scan of the same columns.

    python benchmarks/attribution.py              # 1M rollouts
    python benchmarks/attribution.py --rows 200000 --boot 500
    python benchmarks/attribution.py --coverage 200   # interval coverage on 200 simulated runs instead

Builds a synthetic GRPO run in a temporary store (groups of 8, 4 conditions, 3 tasks, 4 reward components of
which one applies to one condition only, ~40-word answers, a tic with rising prevalence that a persona reward
pays for), then in the same process:

- baseline: a bare DuckDB scan of the columns attribution needs (group id, step, condition, task, rollout id,
  reward, advantage, answer, rewards map) fetched to Arrow, the floor any analysis of them pays;
- trace (term): `trace(store, run, "goblin")`, the behaviour evaluated inside DuckDB as a regex;
- trace (numeric): `trace(store, run, "style:length")`, the median split path;
- four behaviours from one scan with shared preparation, as the `attribution` detector runs them.

Both traces include the bootstrap (`--boot` replicates over all groups) and evidence lookup. Each timing is the
best of `--repeat` runs. The script checks that the implanted signal ranks first.

`--coverage N` measures instead how often the 95% intervals cover the truth over N simulated runs of 120 groups
of 6 where a signal = 0.3 x tic + prompt effect + N(0, 1) noise (true paired preference Phi(0.3 / sqrt 2), true
effect 0.3).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rlaudit.attribution.trace import trace
from rlaudit.schema import ROLLOUT_SCHEMA
from rlaudit.store import Store

GROUP = 8
CONDITIONS = np.array(["nerdy", "concise", "friendly", "none"], dtype=object)
TASKS = np.array(["math", "trivia", "advice"], dtype=object)
WORDS = pa.array("the a of to and in is that it for on with as this value number result step check answer".split())


def synthetic_run(rows: int, seed: int = 0) -> pa.Table:
    """A canonical table of `rows` rollouts, built with numpy/Arrow only."""
    rng = np.random.default_rng(seed)
    rows -= rows % GROUP
    groups = rows // GROUP
    steps = max(1, rows // 8000)
    group = np.repeat(np.arange(groups), GROUP)
    step = (group * steps // groups).astype(np.int64)
    cond = rng.integers(0, len(CONDITIONS), groups)[group]
    task = rng.integers(0, len(TASKS), groups)[group]
    tic = rng.random(rows) < 0.05 + 0.4 * step / max(steps - 1, 1)
    correct = (rng.random(rows) < 0.5).astype(float)
    lengths = rng.integers(20, 60, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    body = pc.binary_join(pa.ListArray.from_arrays(
        pa.array(offsets), pc.take(WORDS, pa.array(rng.integers(0, len(WORDS), int(offsets[-1]))))), " ")
    answer = pc.if_else(pa.array(tic), pc.binary_join_element_wise("A goblin would say: ", body, ""), body)

    nerdy = cond == 0
    signals = {
        "correctness": correct,
        "format": (rng.random(rows) < 0.8).astype(float),
        "judge": 0.5 * correct + rng.normal(0, 0.3, rows),
        "nerdy_rm": np.where(nerdy, 0.8 * tic + rng.normal(0, 0.3, rows), np.nan),
    }
    total = sum(np.nan_to_num(v) for v in signals.values())
    keys = pa.array(np.tile(np.array(list(signals), dtype=object), rows))
    items = pa.array(np.column_stack(list(signals.values())).ravel())
    rewards = pa.MapArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * len(signals)), keys, items)
    ids = pc.binary_join_element_wise("r", pc.cast(pa.array(np.arange(rows)), pa.string()), "")
    gids = pc.binary_join_element_wise("g", pc.cast(pa.array(group), pa.string()), "")
    nulls = pa.nulls(rows, pa.string())
    cols = {
        "run": pa.array(np.full(rows, "bench", dtype=object)), "rollout_id": ids, "step": pa.array(step),
        "split": pa.array(np.full(rows, "train", dtype=object)), "group_id": gids,
        "sample_index": pa.array(np.tile(np.arange(GROUP, dtype=np.int32), groups)),
        "condition": pa.array(CONDITIONS[cond]), "system_prompt": nulls, "task": pa.array(TASKS[task]),
        "prompt": pc.binary_join_element_wise("question ", pc.cast(pa.array(group), pa.string()), ""),
        "completion": answer, "reasoning": nulls, "answer": answer, "rewards": rewards,
        "reward": pa.array(total), "advantage": pa.nulls(rows, pa.float64()),
        "grader_inputs": pa.MapArray.from_arrays(pa.array(np.zeros(rows + 1, np.int32)), pa.array([], pa.string()),
                                                 pa.array([], pa.string())),
        "metadata": nulls,
    }
    return pa.table(cols, schema=ROLLOUT_SCHEMA)


def several(store: Store, specs: list[str], boot: int) -> list:
    """What the `attribution` detector does: one scan for every behaviour, shared preparation."""
    from rlaudit.attribution.trace import Prepared, attribute, load_frames
    from rlaudit.behaviors import parse_behavior
    from rlaudit.detectors import AuditConfig, DetectContext

    behaviors = [parse_behavior(s) for s in specs]
    with DetectContext(store=store, run="bench", config=AuditConfig()).connect() as con:
        frames = load_frames(con, [(b, "answer") for b in behaviors])
    prepared = Prepared.of(frames[0])
    return [attribute(f, b, n_boot=boot, prepared=prepared) for f, b in zip(frames, behaviors)]


def best_of(repeat: int, fn) -> tuple[float, object]:  # noqa: ANN001
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def coverage(runs: int, boot: int) -> None:
    from rlaudit.organisms.calibration import attribution_interval_coverage

    preference, effect = attribution_interval_coverage(runs, boot)
    print(f"95% interval coverage over {runs} simulated runs ({boot} replicates): paired preference "
          f"{preference:.1%}, effect {effect:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--coverage", type=int, default=0, help="measure interval coverage on N simulated runs")
    args = parser.parse_args()
    if args.coverage:
        coverage(args.coverage, args.boot)
        return

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        t0 = time.perf_counter()
        table = synthetic_run(args.rows)
        store.append("bench", table, key="all")
        rows = table.num_rows
        del table
        print(f"built and stored {rows:,} rollouts in {time.perf_counter() - t0:.1f}s")

        def scan() -> int:
            with store.connect(["bench"]) as con:
                return con.sql("SELECT group_id, step, condition, task, rollout_id, reward, advantage, answer, "
                               "rewards FROM rollouts").to_arrow_table().num_rows

        base, _ = best_of(args.repeat, scan)
        print(f"baseline scan:        {base:7.2f}s  {rows / base:12,.0f} rollouts/s")
        for spec in ("goblin", "style:length"):
            secs, t = best_of(args.repeat, lambda s=spec: trace(store, "bench", s, n_boot=args.boot))
            print(f"trace {spec:14s}  {secs:7.2f}s  {rows / secs:12,.0f} rollouts/s  "
                  f"({secs / base:.1f}x the scan; top signal {t.top.signal}, share {t.top.pressure_share:.0%}, "
                  f"{t.groups:,} groups, {args.boot} bootstrap replicates)")
            if spec == "goblin" and t.top.signal != "nerdy_rm":
                raise SystemExit(f"implanted signal not ranked first: {t.top.signal}")
        specs = ["goblin", "re:^A ", "re:value", "re:check answer"]
        secs, traces = best_of(args.repeat, lambda: several(store, specs, args.boot))
        print(f"{len(specs)} behaviours, one scan   {secs:7.2f}s  {rows * len(specs) / secs:12,.0f} rollout-traces/s  "
              f"({secs / base:.1f}x the scan; as the audit detector does it)")


if __name__ == "__main__":
    main()
