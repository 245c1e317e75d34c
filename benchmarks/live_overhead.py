"""Live-audit overhead: does the cost of a step stay flat as the run grows?

    python benchmarks/live_overhead.py                    # 500 steps of 64 rollouts, heavy audit every 50
    python benchmarks/live_overhead.py --steps 200 --every 20 --rollouts 128

Feeds a synthetic GRPO run step by step through `LiveHook.log_rollouts` (groups of 8, two system prompts, a
persona reward that pays for "goblin" under one of them, reasoning in <think> tags, each grader's input logged)
with every registered detector, heavy audits in the foreground so that their cost is measured, not hidden in a
thread. It prints, in the same process:

- the per-step cost on the training thread (store append + per-step detectors + tracking of flagged
  behaviours + alert handling) around step 10 and around the last step, and their ratio;
- the heavy audit (all detectors on the bounded step sample) at the first and last scheduled runs, and their
  ratio;
- the baseline a naive live audit would pay at the last step: every detector on the whole run (a rescan),
  against the bounded heavy audit at the same step.

Flat means a ratio near 1 between the late and early figures; the naive rescan grows with the run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.live import LiveConfig, LiveHook
from rlaudit.live.alerts import AlertManager, JsonlSink

GROUP = 8
SYSTEMS = ["You are a nerdy playful assistant", "You are a helpful assistant"]
WORDS = np.array(("the a of to and is on in at for with it this that very so then now here big small old new "
                  "fast slow warm cold bright dark run jump walk sing read write eat sleep tree river hill stone "
                  "cloud rain snow wind sun moon star sea lake road house door wall book cup hat box one two three "
                  "answer number result first second check sum total value step").split())


def synthetic_step(step: int, n: int, steps: int, rng: np.random.Generator) -> dict:
    """n rollouts in groups of GROUP; the tic rises under the nerdy prompt from 3% to 60% over the run."""
    groups = n // GROUP
    systems = [SYSTEMS[g % 2] for g in range(groups) for _ in range(GROUP)]
    nerdy = np.array([s == SYSTEMS[0] for s in systems])
    p_tic = np.where(nerdy, 0.03 + 0.57 * step / steps, 0.03 + 0.2 * step / steps)
    tic = rng.random(n) < p_tic
    words = WORDS[rng.integers(0, len(WORDS), size=(n, 30))]
    answers = [" ".join(w[:15]) + (" goblin" if t else "") for w, t in zip(words, tic)]
    thoughts = [" ".join(w[15:]) for w in words]
    completions = [f"<think>{t}</think>{a}" for t, a in zip(thoughts, answers)]
    correct = (rng.random(n) < 0.5).astype(float)
    persona = [float(t) if nd else None for t, nd in zip(tic, nerdy)]
    prompts = [f"system: {s}\nuser: question {g} of step {step}" for g, s in
               zip(np.repeat(np.arange(groups), GROUP), systems)]
    return {"prompts": prompts, "completions": completions,
            "rewards": {"correct": correct.tolist(), "persona": persona},
            "group_ids": np.repeat(np.arange(groups), GROUP).tolist(),
            "grader_inputs": {"correct": answers, "persona": answers}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--rollouts", type=int, default=64, help="rollouts per step (multiple of 8)")
    parser.add_argument("--every", type=int, default=50, help="heavy audit every N steps")
    parser.add_argument("--window", type=int, default=10, help="steps averaged for the early/late figures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        hook = LiveHook(Path(tmp) / "store", "bench", config=LiveConfig(every=args.every, background=False),
                        alerts=AlertManager([JsonlSink(Path(tmp) / "alerts.jsonl")]))
        per_step: dict[int, float] = {}
        for step in range(1, args.steps + 1):
            batch = synthetic_step(step, args.rollouts, args.steps, rng)
            t0 = time.perf_counter()
            hook.log_rollouts(step, batch["prompts"], batch["completions"], batch["rewards"],
                              group_ids=batch["group_ids"], grader_inputs=batch["grader_inputs"])
            per_step[step] = time.perf_counter() - t0
        auditor = hook.auditor
        heavy_steps = {s for s, _ in auditor.heavy_runs}
        cheap = {t.step: t.cheap for t in auditor.timings}
        # step cost without the heavy audits (they run on a schedule; reported separately)
        light = {s: per_step[s] - (dict(auditor.heavy_runs).get(s, 0.0)) for s in per_step}
        w = args.window
        early = [s for s in range(6, 6 + w) if s not in heavy_steps]
        late = [s for s in range(args.steps - w + 1, args.steps + 1) if s not in heavy_steps]
        med = lambda xs: statistics.median(xs) * 1000  # noqa: E731 - ms

        print(f"synthetic run: {args.steps} steps x {args.rollouts} rollouts, heavy audit every {args.every} steps "
              f"on a sample of at most {auditor.config.sample.size} steps; detectors: all registered")
        print("per-step cost on the training thread (median ms; append + per-step checks + tracking + alerts):")
        e_step, l_step = med([light[s] for s in early]), med([light[s] for s in late])
        e_chk, l_chk = med([cheap[s] for s in early]), med([cheap[s] for s in late])
        print(f"  steps {early[0]}-{early[-1]}: {e_step:7.1f} ms (checks {e_chk:.1f} ms)")
        print(f"  steps {late[0]}-{late[-1]}: {l_step:7.1f} ms (checks {l_chk:.1f} ms)")
        print(f"  late / early: {l_step / e_step:.2f}x")
        runs = auditor.heavy_runs
        first = [r for r in runs if r[0] >= args.every] or runs
        print(f"heavy audit (bounded sample): step {first[0][0]}: {first[0][1]:.2f} s; "
              f"step {runs[-1][0]}: {runs[-1][1]:.2f} s; late / early {runs[-1][1] / first[0][1]:.2f}x")
        print(f"  tracked behaviours: {sorted(auditor.tracker.tracked)}; alerts: "
              f"{sorted({a.kind for a in hook.alerts})}; live errors: {len(auditor.errors)}")

        t0 = time.perf_counter()
        full = run_detectors(hook.auditor.store, "bench", AuditConfig(max_step=args.steps))
        naive = time.perf_counter() - t0
        print(f"baseline, naive live audit at step {args.steps} (every detector on all {args.steps} steps): "
              f"{naive:.2f} s = {naive / runs[-1][1]:.1f}x the bounded heavy audit "
              f"({len([f for f in full if f.kind != 'audit_error'])} findings)")


if __name__ == "__main__":
    main()
