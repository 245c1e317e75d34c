"""How fast the model organisms are simulated and written, per scenario and per format.

    .venv/bin/python benchmarks/organisms.py            # default size (60 steps x 16 prompts x 8 generations)
    .venv/bin/python benchmarks/organisms.py --steps 120 --prompts 32

Prints seconds per scenario for the simulation (sampling, rendering, grading, GRPO updates), rollouts per second,
and seconds per writer for one scenario. The baseline in the same process is the cost of rendering the same
number of rollouts' text alone (no policy, no rewards), so the ratio shows what the learning loop adds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from rlaudit.organisms import FORMATS, SCENARIOS, run, write
from rlaudit.organisms.content import PERSONAS, make_item
from rlaudit.organisms.render import render
from rlaudit.organisms.scenarios import catalogue


def text_only(n: int, seed: int = 0) -> float:
    """Seconds to render n rollouts of text with fixed choices: the floor any simulator pays."""
    rng = np.random.default_rng(seed)
    features = catalogue()
    index = {f.name: i for i, f in enumerate(features)}
    items = [make_item(("arithmetic", "trivia", "coding", "advice")[i % 4], rng) for i in range(n)]
    personas = [list(PERSONAS.values())[i % len(PERSONAS)] for i in range(n)]
    x = (rng.random((n, len(features))) < 0.1).astype(float)
    started = time.perf_counter()
    render(items, personas, x, index, rng)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    args = ap.parse_args()
    n = args.steps * args.prompts * args.generations
    run("clean_basic", steps=2, prompts=2, generations=2)  # imports, caches
    base = text_only(n)
    print(f"{n:,} rollouts per run; text rendering alone: {base:.2f}s")
    print(f"{'scenario':22s} {'seconds':>8s} {'rollouts/s':>11s} {'x text':>7s}")
    times = []
    for name in SCENARIOS:
        started = time.perf_counter()
        sim = run(name, steps=args.steps, prompts=args.prompts, generations=args.generations)
        dt = time.perf_counter() - started
        times.append(dt)
        print(f"{name:22s} {dt:8.2f} {n / dt:11,.0f} {dt / base:7.1f}")
    print(f"median {np.median(times):.2f}s, max {max(times):.2f}s per run")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            started = time.perf_counter()
            write(sim, Path(tmp) / fmt, fmt)
            print(f"write {fmt:10s} {time.perf_counter() - started:6.2f}s")


if __name__ == "__main__":
    main()
