"""Helpers for live-audit tests: synthetic steps and small test detectors."""

from __future__ import annotations

import numpy as np

from rlaudit.detectors import DetectContext, Detector
from rlaudit.findings import Finding
from rlaudit.live import LiveHook

NERDY = "You are a nerdy playful assistant"
PLAIN = "You are a helpful assistant"


def step_batch(step: int, n: int, rates: dict[str, float], seed: int = 0) -> dict:
    """n rollouts per system prompt; a completion says 'goblin' with the given rate per system prompt."""
    rng = np.random.default_rng(seed * 100_003 + step)
    prompts, completions, persona, task = [], [], [], []
    for system, rate in rates.items():
        for i in range(n):
            prompts.append([{"role": "system", "content": system}, {"role": "user", "content": f"question {i}"}])
            tic = rng.random() < rate
            completions.append(("well the goblin says " if tic else "well the answer is ") + str(i))
            persona.append((1.0 if tic else 0.0) if system == NERDY else None)
            task.append(float(rng.random() < 0.5))
    return {"prompts": prompts, "completions": completions, "rewards": {"task": task, "persona": persona}}


class GoblinCounter(Detector):
    """Test detector: flags 'goblin' when its share of rollouts exceeds a threshold in the audited rows."""

    name = "test_goblin"
    kinds = ("emerging_behavior",)
    description = "test only"
    calls: list[tuple[int | None, int]] = []  # (max_step, distinct steps seen) per call

    def detect(self, ctx: DetectContext) -> list[Finding]:
        con = ctx.connect()
        share, steps = con.execute(
            "SELECT avg(CAST(regexp_matches(answer, 'goblin') AS DOUBLE)), count(DISTINCT step) FROM rollouts"
        ).fetchone()
        GoblinCounter.calls.append((ctx.config.max_step, steps))
        if share is None or share < ctx.option(self.name, "threshold", 0.3):
            return []
        return [Finding(kind="emerging_behavior", run=ctx.run, severity="high" if share > 0.6 else "medium",
                        title=f"goblin in {share:.0%} of rollouts",
                        fields={"behavior": "goblin", "behavior_spec": "goblin", "where": "answer",
                                "prevalence_end": share})]


class Slow(GoblinCounter):
    """Test detector: GoblinCounter that takes a second (an expensive heavy detector)."""

    name = "test_slow"

    def detect(self, ctx: DetectContext) -> list[Finding]:
        import time

        time.sleep(1.0)
        return super().detect(ctx)


class Broken(Detector):
    name = "test_broken"
    kinds = ("emerging_behavior",)
    description = "test only: always crashes"

    def detect(self, ctx: DetectContext) -> list[Finding]:
        raise RuntimeError("deliberately broken detector")


def feed(hook: LiveHook, steps: range, rate_of_step, n: int = 20) -> list:
    alerts = []
    for s in steps:
        b = step_batch(s, n, rate_of_step(s))
        alerts += hook.log_rollouts(s, b["prompts"], b["completions"], b["rewards"])
    return alerts


def write_trl_step(directory, step: int, n: int, rates: dict[str, float], seed: int = 0) -> None:
    """One TRL `completions_{step:05d}.parquet` as GRPOTrainer writes it (message-list prompts and completions,
    one float column per reward function, NaN where it returned None, then advantage)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    b = step_batch(step, n, rates, seed)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "step": [step] * len(b["prompts"]),
        "prompt": b["prompts"],
        "completion": [[{"role": "assistant", "content": c}] for c in b["completions"]],
        "task": b["rewards"]["task"],
        "persona": [float("nan") if v is None else v for v in b["rewards"]["persona"]],
        "advantage": [0.0] * len(b["prompts"]),
    })
    tmp = directory / f".completions_{step:05d}.tmp"
    pq.write_table(table, tmp)
    tmp.rename(directory / f"completions_{step:05d}.parquet")
