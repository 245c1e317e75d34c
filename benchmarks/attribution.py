"""Attribution benchmark: time and rollouts/s of `rlaudit.attribution.trace` vs a bare scan of the same columns.

    python benchmarks/attribution.py              # 1M rollouts
    python benchmarks/attribution.py --rows 200000 --boot 500
    python benchmarks/attribution.py --coverage 200   # interval coverage on 200 simulated runs instead
    python benchmarks/attribution.py --memory         # resident memory of a trace per rollout (WORKING_SET)

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

`--memory` measures what `rlaudit.attribution.trace.WORKING_SET` assumes: in a fresh child process per case, the
peak resident memory the detector's path (one scan, shared preparation, bootstrap) adds over the RSS before it,
once traced whole and once on a forced sample of half the groups, divided by the bytes of the frame columns
(8 per rollout and column plus 64 of id), the estimate the group sample is sized by.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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
    for name in ROLLOUT_SCHEMA.names:  # columns this benchmark does not fill (tool calls and outputs): nulls
        cols.setdefault(name, pa.nulls(rows, ROLLOUT_SCHEMA.field(name).type))
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


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def _measure_memory(store_dir: str, share: float, boot: int) -> None:
    """Child process: trace "goblin" as the detector does, print rollouts traced, frame-column bytes, and the peak
    RSS added over the RSS before the trace (sampled every 10 ms)."""
    import rlaudit.attribution.trace as tr

    store = Store(store_dir)
    with store.connect(["bench"]) as con:
        n = con.execute("SELECT count(*) FROM rollouts").fetchall()[0][0]
    columns = 4 + 1 + 6  # signals + behaviours + fixed columns (load_frames' count)
    whole = int(n * (8 * columns + 64) * tr.WORKING_SET)
    tr.FRAME_BYTES = whole + (1 << 20) if share >= 1 else int(whole * share)
    before, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    [t] = several(store, ["goblin"], boot)
    done.set()
    traced = t.groups * GROUP
    print(f"{traced} {traced * (8 * columns + 64)} {max(peak[0], _rss()) - before}")


def memory(rows: int, boot: int) -> None:
    """Peak RSS of tracing per byte of frame columns, whole and on half the groups (see module doc)."""
    import rlaudit.attribution.trace as tr

    with tempfile.TemporaryDirectory() as tmp:
        Store(tmp).append("bench", synthetic_run(rows), key="all")
        for share in (1.0, 0.5):
            out = subprocess.run([sys.executable, __file__, "--_memory", tmp, str(share), "--boot", str(boot)],
                                 check=True, capture_output=True, text=True).stdout.split()
            traced, col_bytes, added = (int(x) for x in out[-3:])
            print(f"traced {traced:,} rollouts ({'whole' if share >= 1 else 'half the groups'}): +{added / 2**20:,.0f} "
                  f"MB RSS = {added / traced:,.0f} bytes per rollout = {added / col_bytes:.2f}x the frame columns "
                  f"(WORKING_SET assumes {tr.WORKING_SET})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--coverage", type=int, default=0, help="measure interval coverage on N simulated runs")
    parser.add_argument("--memory", action="store_true", help="resident memory of a trace per rollout")
    parser.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows < GROUP:
        parser.error(f"--rows must be at least one group ({GROUP} rollouts), got {args.rows}")
    if args._memory:
        _measure_memory(args._memory[0], float(args._memory[1]), args.boot)
        return
    if args.memory:
        memory(args.rows, args.boot)
        return
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
