"""Synthetic runs with known behaviours, built as canonical tables (no simulator needed).

Each rollout's answer is filler text drawn from a fixed word list (Zipf-like frequencies, so common words are
common), plus whatever a scenario plants: a tic phrase whose prevalence follows a logistic curve over steps,
task answers that get more often right, words copied from prompts, and so on. Everything is vectorised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from rlaudit.schema import canonical_table
from rlaudit.store import Store

FILLER = ("the a of to and in is that it for on with as this be are by at or from which we can an so "
          "value number result step first then check because therefore note given since each total case "
          "consider compute simple thus both equal order means part sum way need find answer problem").split()
TOPICS = [f"topic{i}" for i in range(40)]


def curve(steps: np.ndarray, start: float, end: float, onset: float, width: float = 2.0) -> np.ndarray:
    """Prevalence per step: `start` until `onset`, then a logistic rise (or fall) to `end`."""
    x = (steps - onset) / width
    return start + (end - start) / (1 + np.exp(-(x - 2.5)))


@dataclass
class Tic:
    phrase: str
    start: float
    end: float
    onset: float
    where: str = "answer"
    conditions: dict[str, float] | None = None  # condition -> multiplier of the rise (default: all 1)
    onsets: dict[str, float] = field(default_factory=dict)  # per-condition onset override


@dataclass
class Scenario:
    steps: int = 30
    groups: int = 25
    group_size: int = 8
    conditions: dict[str, float] = field(default_factory=lambda: {"none": 1.0})
    tics: list[Tic] = field(default_factory=list)
    length: int = 25
    reasoning: bool = False
    reasoning_growth: float = 1.0  # reasoning length multiplier at the last step
    recurring_prompts: int | None = None  # prompt pool size (prompts recur across steps)
    accuracy: tuple[float, float] | None = None  # (first, last): prompt-specific answer words get learnt
    tasks: dict[str, tuple[float, float]] | None = None  # task -> (share first, share last)
    task_words: dict[str, str] = field(default_factory=dict)  # task -> word its answers always contain
    copy_word: tuple[str, float, float] | None = None  # (word, prompt share first, last): prompts ask for it
    exclamation: tuple[float, float] | None = None
    reward_signal: str | None = None  # condition-specific signal rewarding the first tic
    paid_tics: tuple[int, ...] = (0,)  # the tics `reward_signal` pays for
    signals: dict[str, tuple[int, ...]] = field(default_factory=dict)  # more signals (every condition) -> tics paid
    seed: int = 0


def build(sc: Scenario, run: str = "synthetic") -> pa.Table:
    rng = np.random.default_rng(sc.seed)
    n_step = sc.groups * sc.group_size
    n = sc.steps * n_step
    step = np.repeat(np.arange(sc.steps), n_step)
    group = np.repeat(np.arange(sc.steps * sc.groups), sc.group_size)
    frac = step / max(1, sc.steps - 1)
    conds = list(sc.conditions)
    weights = np.array(list(sc.conditions.values()), float)
    g_cond = rng.choice(len(conds), size=sc.steps * sc.groups, p=weights / weights.sum())
    cond = np.array(conds)[g_cond][group]
    # prompts: a pool that recurs, or fresh per group
    pool = sc.recurring_prompts or sc.steps * sc.groups
    g_prompt = rng.integers(0, pool, sc.steps * sc.groups) if sc.recurring_prompts else np.arange(pool)
    prompt_id = g_prompt[group]
    task = np.full(n, None, dtype=object)
    if sc.tasks:
        names = list(sc.tasks)
        g_frac = np.repeat(np.arange(sc.steps), sc.groups) / max(1, sc.steps - 1)
        shares = np.array([[a + (b - a) * f for a, b in sc.tasks.values()] for f in g_frac])
        u = rng.random(len(g_frac))
        g_task = (u[:, None] > np.cumsum(shares / shares.sum(1, keepdims=True), 1)).sum(1)
        task = np.array(names, dtype=object)[g_task][group]
    filler = np.array(FILLER)
    zipf = 1 / np.arange(1, len(FILLER) + 1)
    words = filler[rng.choice(len(FILLER), size=(n, sc.length), p=zipf / zipf.sum())]
    answers = np.array([" ".join(w) for w in words], dtype=object)
    topic = np.array(TOPICS)[prompt_id % len(TOPICS)]
    prompts = np.array([f"Question {p} about {t}: what is the result?" for p, t in zip(prompt_id, topic)],
                       dtype=object)
    reasoning = np.full(n, None, dtype=object)
    if sc.reasoning:
        lengths = np.round(sc.length * (1 + (sc.reasoning_growth - 1) * frac)).astype(int)
        rwords = filler[rng.choice(len(FILLER), size=(n, int(lengths.max())), p=zipf / zipf.sum())]
        reasoning = np.array([" ".join(w[:k]) for w, k in zip(rwords, lengths)], dtype=object)
    rewards_extra = np.full(n, np.nan)
    if sc.accuracy:
        answer_words = np.array([f"ans{i}" for i in range(pool)])
        acc = sc.accuracy[0] + (sc.accuracy[1] - sc.accuracy[0]) * frac
        right = rng.random(n) < acc
        wrong_word = answer_words[rng.integers(0, pool, n)]
        final = np.where(right, answer_words[prompt_id], wrong_word)
        answers = answers + " so the answer is " + final
    if sc.tasks and sc.task_words:
        for t, w in sc.task_words.items():
            answers = np.where(task == t, answers + f" using {w}", answers)
    if sc.copy_word:
        word, a, b = sc.copy_word
        g_asks = rng.random(sc.steps * sc.groups) < (a + (b - a) * np.repeat(np.arange(sc.steps), sc.groups)
                                                       / max(1, sc.steps - 1))
        asks = g_asks[group]
        prompts = np.where(asks, prompts + f" Mention {word} in the reply.", prompts)
        answers = np.where(asks & (rng.random(n) < 0.9), answers + f" {word}", answers)
    masks: list[np.ndarray] = []
    for k, tic in enumerate(sc.tics):
        mult = np.array([1.0 if tic.conditions is None else tic.conditions.get(c, 0.0) for c in cond])
        onset = np.array([tic.onsets.get(c, tic.onset) for c in cond])
        p = np.clip(tic.start + (curve(step, tic.start, tic.end, onset) - tic.start) * mult, 0, 1)
        has = rng.random(n) < p
        masks.append(has)
        pos = rng.integers(0, sc.length, n)
        target = answers if tic.where == "answer" else reasoning
        out = []
        for text, h, q in zip(target, has, pos):
            if not h or text is None:
                out.append(text)
                continue
            w = text.split(" ")
            q = min(q, len(w))
            out.append(" ".join(w[:q] + [tic.phrase] + w[q:]))
        if tic.where == "answer":
            answers = np.array(out, dtype=object)
        else:
            reasoning = np.array(out, dtype=object)
    if sc.exclamation:
        a, b = sc.exclamation
        ex = rng.random(n) < a + (b - a) * frac ** 2
        answers = np.where(ex, answers + "!", answers)
    completion = np.array([a if r is None else f"<think>{r}</think>{a}" for r, a in zip(reasoning, answers)],
                          dtype=object)
    paid = np.zeros(n, bool)
    for k in sc.paid_tics:
        if k < len(masks):
            paid |= masks[k]
    extra = {name: np.any([masks[k] for k in ks if k < len(masks)] or [np.zeros(n, bool)], axis=0)
             for name, ks in sc.signals.items()}
    base = rng.normal(0, 1, n)
    rewards = []
    for i in range(n):
        r = {"correct": float(base[i])}
        if sc.reward_signal:
            r[sc.reward_signal] = float(paid[i] + rng.normal(0, 0.5)) if cond[i] == conds[0] else float("nan")
        for name, pays in extra.items():
            r[name] = float(pays[i] + rng.normal(0, 0.5))
        rewards.append(list(r.items()))
    table = pa.table({
        "run": pa.array([run] * n),
        "rollout_id": pa.array([f"r{i:07d}" for i in range(n)]),
        "step": pa.array(step, pa.int64()),
        "split": pa.array(["train"] * n),
        "group_id": pa.array([f"g{g}" for g in group]),
        "sample_index": pa.array(np.tile(np.arange(sc.group_size), sc.steps * sc.groups), pa.int32()),
        "condition": pa.array(cond.tolist()),
        "system_prompt": pa.array([None if c == "none" else f"You are {c}." for c in cond], pa.string()),
        "task": pa.array(task.tolist(), pa.string()),
        "prompt": pa.array(prompts.tolist()),
        "completion": pa.array(completion.tolist()),
        "reasoning": pa.array(reasoning.tolist(), pa.string()),
        "answer": pa.array(answers.tolist()),
        "rewards": pa.array(rewards, pa.map_(pa.string(), pa.float64())),
        "reward": pa.array(base),
        "advantage": pa.array(np.zeros(n)),
        "grader_inputs": pa.array([[]] * n, pa.map_(pa.string(), pa.string())),
        "metadata": pa.array([json.dumps({})] * n),
    })
    return canonical_table(table)


def make_run(store: Store, sc: Scenario, run: str = "synthetic") -> str:
    store.append(run, build(sc, run), key="synthetic")
    return run
