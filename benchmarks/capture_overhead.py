"""Overhead of rlaudit.cot.capture wrappers: wrapped vs unwrapped reward-function calls, in one process.

    python benchmarks/capture_overhead.py

The reward functions are deliberately cheap (a regex answer check, and a word-overlap score), so the ratio is a
worst case: real graders (a reward model forward pass, an LLM judge call) cost milliseconds to seconds per
completion, next to which the wrapper's per-completion cost (printed in microseconds) vanishes.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time

import numpy as np

from rlaudit.cot.capture import flush_all, wrap_trl_reward, wrap_verl_compute_score

_BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def accuracy(prompts, completions, completion_ids=None, solution=None, **kwargs):
    out = []
    for c, s in zip(completions, solution):
        answer = c.split("</think>", 1)[-1]
        m = _BOXED.search(answer)
        out.append(1.0 if m and m.group(1) == s else 0.0)
    return out


def overlap(prompts, completions, completion_ids=None, **kwargs):
    return [len(set(c.split()) & set(p.split())) / 50 for p, c in zip(prompts, completions)]


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    m = _BOXED.search(solution_str.split("</think>", 1)[-1])
    return 1.0 if m and m.group(1) == ground_truth else 0.0


def best_of(fn, repeats: int) -> float:
    """Best CPU time of `repeats` runs (CPU time, not wall time: the figure should not depend on what else the
    machine runs)."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--chars", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    words = np.array("the of to and a in is it you that he was for on are with as his they be at one have".split())
    batches = []
    for _ in range(args.batches):
        comps, prompts, sols = [], [], []
        for _ in range(args.batch_size):
            body = " ".join(rng.choice(words, args.chars // 4))
            sol = str(rng.integers(100))
            comps.append(f"<think>{body}</think>The answer is \\boxed{{{sol}}}.")
            prompts.append(" ".join(rng.choice(words, 40)))
            sols.append(sol)
        batches.append((prompts, comps, sols))
    n = args.batches * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("accuracy (regex)", accuracy), ("overlap (set)", overlap)):
            wrapped = wrap_trl_reward(fn, log_dir=tmp)
            extra_cols: dict[str, list[str]] = {}

            def run(f, log_extra=None):
                for p, c, s in batches:
                    f(p, c, None, solution=s, trainer_state=None, log_extra=log_extra)
                flush_all()

            base = best_of(lambda: run(fn), args.repeats)
            wrap = best_of(lambda: run(wrapped, lambda col, v: extra_cols.__setitem__(col, v)), args.repeats)
            print(f"TRL {name}: unwrapped {base / n * 1e6:.1f} us/completion, wrapped {wrap / n * 1e6:.1f} "
                  f"us/completion: overhead {(wrap - base) / n * 1e6:.1f} us/completion, ratio {wrap / base:.2f}x")
        wrapped = wrap_verl_compute_score(compute_score, log_dir=tmp)
        flat = [(c, s) for _, comps, sols in batches for c, s in zip(comps, sols)]

        def run_verl(f):
            for c, s in flat:
                f("gsm8k", c, s, None)
            flush_all()

        base = best_of(lambda: run_verl(compute_score), args.repeats)
        wrap = best_of(lambda: run_verl(wrapped), args.repeats)
        print(f"verl compute_score: unwrapped {base / n * 1e6:.1f} us/call, wrapped {wrap / n * 1e6:.1f} us/call: "
              f"overhead {(wrap - base) / n * 1e6:.1f} us/call, ratio {wrap / base:.2f}x")
        print(f"({n:,} completions of ~{args.chars:,} characters, CPU time, best of {args.repeats}; includes "
              "writing the JSONL)")


if __name__ == "__main__":
    main()
