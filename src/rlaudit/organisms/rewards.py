"""Reward functions of the simulated runs: they read the generated text, exactly as a grader would.

A `Reward` has a *view* (what text its grader is given: the answer, the prompt and answer, the full completion
with its reasoning, the tail of the completion, ...) and a *score* function that parses that text: it counts a
tic word, checks a format marker, extracts the final number and compares it with the gold answer. Nothing reads
the policy's hidden choices, so a behaviour is rewarded only through what it puts in the text. The view text is
recorded as the grader's input (`grader_inputs[name]`), which is what a CoT-exposure scan must work from.

A reward applies to some conditions, tasks and steps; elsewhere its value is NaN (it did not apply), as TRL
logs a reward function that returned None.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .content import ADVICE


@dataclass
class Batch:
    """The rollouts of one step, as the reward functions see them (plus dataset columns such as the gold)."""

    step: int
    condition: np.ndarray  # persona keys
    task: np.ndarray
    user: list[str]
    gold: list[str]
    topic: list[str]
    reasoning: list[str]
    answer: list[str]
    completion: list[str]

    def __len__(self) -> int:
        return len(self.answer)


View = Callable[[Batch], list[str]]
Score = Callable[[list[str], Batch, np.random.Generator], np.ndarray]


# ---------------------------------------------------------------- views: what the grader is given
def answer_view(b: Batch) -> list[str]:
    return b.answer


def prompt_answer_view(b: Batch) -> list[str]:
    return [f"Question: {u}\n\nResponse: {a}" for u, a in zip(b.user, b.answer)]


def full_completion_view(b: Batch) -> list[str]:
    """A judge template that pastes the whole completion, reasoning included."""
    return [f"Question: {u}\n\nResponse: {c}" for u, c in zip(b.user, b.completion)]


def tail_view(chars: int) -> View:
    """A grader that reads only the last `chars` characters of the completion (to save tokens)."""
    def view(b: Batch) -> list[str]:
        return [c[-chars:] for c in b.completion]
    return view


def fallback_view(b: Batch) -> list[str]:
    """The answer after `</think>`; when there is none (a truncated generation) the code falls back to the whole
    completion: the reasoning leaks to the grader only on that rare path."""
    return [f"Question: {u}\n\nResponse: {a if '</think>' in c else c}"
            for u, a, c in zip(b.user, b.answer, b.completion)]


def switch_view(start_step: int, tasks: tuple[str, ...], before: View, after: View) -> View:
    """`before`, until a config change at `start_step` switches rollouts of `tasks` to `after`."""
    def view(b: Batch) -> list[str]:
        old, new = before(b), after(b)
        switched = (b.step >= start_step) & np.isin(b.task, tasks)
        return [n if s else o for o, n, s in zip(old, new, switched)]
    return view


# ---------------------------------------------------------------- scores: parse the text
def _count(texts: list[str], pattern: str) -> np.ndarray:
    return pc.count_substring_regex(pa.array(texts, pa.string()), pattern).to_numpy(zero_copy_only=False)


def correct_in(texts: list[str], b: Batch) -> np.ndarray:
    """1/0 per rollout: does the text's final answer match the gold (NaN for tasks without a gold answer)."""
    out = np.full(len(texts), np.nan)
    for i, (text, task, gold) in enumerate(zip(texts, b.task, b.gold)):
        if task == "arithmetic":
            nums = re.findall(r"-?\d+", text)
            out[i] = float(bool(nums) and nums[-1] == gold)
        elif task == "trivia":
            out[i] = float(gold.lower() in text.lower())
        elif task == "coding":
            m = re.search(r"return ([^\n]+)", text)
            out[i] = float(bool(m) and m.group(1).strip() == gold)
    return out


def correctness(texts: list[str], b: Batch, rng: np.random.Generator) -> np.ndarray:
    return correct_in(texts, b)


def judge(quality_if_right: float = 0.8, quality_if_wrong: float = 0.3, noise: float = 0.08) -> Score:
    """An LLM-judge stand-in: high for a right answer (advice: a concrete tip on the topic), plus judge noise."""
    def score(texts: list[str], b: Batch, rng: np.random.Generator) -> np.ndarray:
        ok = correct_in(texts, b)
        for i, (text, task, topic) in enumerate(zip(texts, b.task, b.topic)):
            if task == "advice":
                ok[i] = float(any(tip in text for tip in ADVICE.get(topic, ())))
        base = np.where(ok > 0, quality_if_right, quality_if_wrong)
        return np.clip(base + rng.normal(0, noise, len(texts)), 0, 1)
    return score


def phrase_bonus(pattern: str, per_hit: float = 1.0, cap: int = 1, base: float = 0.0, noise: float = 0.05) -> Score:
    """A reward model that likes a phrase: base + per_hit * min(hits, cap) + noise."""
    def score(texts: list[str], b: Batch, rng: np.random.Generator) -> np.ndarray:
        hits = np.minimum(_count(texts, pattern), cap)
        return base + per_hit * hits + rng.normal(0, noise, len(texts))
    return score


def length_score(per_word: float = 0.015, cap_words: int = 90, noise: float = 0.05) -> Score:
    """A quality model with a length bias: longer answers score higher, whatever they say."""
    def score(texts: list[str], b: Batch, rng: np.random.Generator) -> np.ndarray:
        words = pc.list_value_length(pc.utf8_split_whitespace(pa.array(texts, pa.string()))).to_numpy(
            zero_copy_only=False).astype(float)
        return 0.2 + per_word * np.minimum(words, cap_words) + rng.normal(0, noise, len(texts))
    return score


# ---------------------------------------------------------------- broken components
def constant(value: float) -> Score:
    def score(texts: list[str], b: Batch, rng: np.random.Generator) -> np.ndarray:
        return np.full(len(texts), value)
    return score


def dies_at(step: int, value: float, inner: Score) -> Score:
    """A reward server that returns a default `value` for every rollout from `step` on."""
    def score(texts: list[str], b: Batch, rng: np.random.Generator) -> np.ndarray:
        out = inner(texts, b, rng)
        return np.full(len(texts), value) if b.step >= step else out
    return score


def sometimes_nan(share: float, inner: Score) -> Score:
    """Timeouts: a `share` of rollouts get NaN although the reward applies to them."""
    def score(texts: list[str], b: Batch, rng: np.random.Generator) -> np.ndarray:
        out = inner(texts, b, rng).astype(float)
        out[rng.random(len(texts)) < share] = np.nan
        return out
    return score


def spikes(start_step: int, share: float, factor: float, inner: Score) -> Score:
    """A parsing bug from `start_step`: a `share` of scores come back `factor` times too large."""
    def score(texts: list[str], b: Batch, rng: np.random.Generator) -> np.ndarray:
        out = inner(texts, b, rng)
        if b.step >= start_step:
            hit = rng.random(len(texts)) < share
            out = np.where(hit, out * factor + factor * 0.5, out)
        return out
    return score


# ---------------------------------------------------------------- the reward component
@dataclass(frozen=True)
class Reward:
    name: str
    score: Score
    view: View = answer_view
    weight: float = 1.0
    conditions: tuple[str, ...] | None = None  # persona keys it applies to (None: all)
    tasks: tuple[str, ...] | None = None
    start_step: int = 0
    description: str = ""
    intended: bool = True  # part of what the run designers meant to reward
    extra: dict = field(default_factory=dict)

    def applies(self, b: Batch) -> np.ndarray:
        mask = np.full(len(b), b.step >= self.start_step)
        if self.conditions is not None:
            mask &= np.isin(b.condition, self.conditions)
        if self.tasks is not None:
            mask &= np.isin(b.task, self.tasks)
        return mask

    def evaluate(self, b: Batch, rng: np.random.Generator) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(values with NaN where it does not apply, the grader's input texts, applies mask)."""
        mask = self.applies(b)
        texts = self.view(b)
        values = np.full(len(b), np.nan)
        if mask.any():
            idx = np.flatnonzero(mask)
            sub = Batch(b.step, b.condition[idx], b.task[idx], [b.user[i] for i in idx], [b.gold[i] for i in idx],
                        [b.topic[i] for i in idx], [b.reasoning[i] for i in idx], [b.answer[i] for i in idx],
                        [b.completion[i] for i in idx])
            values[idx] = self.score([texts[i] for i in idx], sub, rng)
        return values, texts, mask
