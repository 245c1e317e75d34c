"""Hand-written graders for the probe tests (imported by MODULE:FUNCTION like a user's reward module)."""

from __future__ import annotations

import random
import re


def _score(text: str) -> float:
    words = text.lower().split()
    return len(set(words)) / 10 + (1.0 if "definitely" in words else 0.0) + text.count("e") / 100


def answer_only(prompts, completions, completion_ids=None, **kwargs):
    """Strips the reasoning; an unclosed completion has no answer."""
    out = []
    for c in completions:
        answer = c.split("</think>", 1)[1] if "</think>" in c else ""
        out.append(_score(answer))
    return out


def full_completion(prompts, completions, **kwargs):
    return [_score(c) for c in completions]


def tail_only(prompts, completions, **kwargs):
    """A judge whose context keeps only the last 300 characters."""
    return [_score(c[-300:]) for c in completions]


def unclosed_only(prompts, completions, **kwargs):
    """Strips reasoning, but falls back to the whole text when the closing tag is missing."""
    return [_score(c.split("</think>", 1)[1] if "</think>" in c else c) for c in completions]


_rng = random.Random(0)


def stochastic_answer_only(prompts, completions, **kwargs):
    return [s + _rng.gauss(0, 0.5) for s in answer_only(prompts, completions)]


def coin_flip_answer_only(prompts, completions, **kwargs):
    """Discrete noise: a bonus point one time in three, whatever the reasoning."""
    return [s + (1.0 if _rng.random() < 1 / 3 else 0.0) for s in answer_only(prompts, completions)]


def conversational_answer_only(prompts, completions, **kwargs):
    """Expects TRL message lists."""
    return answer_only(prompts, [c[0]["content"] for c in completions])


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl signature, answer only, with a ground-truth check."""
    answer = re.split(r"</think>", solution_str, maxsplit=1)[-1] if "</think>" in solution_str else ""
    return {"score": _score(answer) + (1.0 if ground_truth and str(ground_truth)[:10] in answer else 0.0)}


def verl_full(data_source, solution_str, ground_truth, extra_info=None):
    return _score(solution_str)
