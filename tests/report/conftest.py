"""Fixtures for report tests: a small store with hostile model text, and hand-made findings of every kind with
the fields the detector contract (notes/COMMON.md) documents."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from rlaudit.audit import AuditResult
from rlaudit.findings import Evidence, Finding, rank
from rlaudit.schema import canonical_table
from rlaudit.store import Store

# Payloads a hostile or merely unlucky model could emit. Each would set window.__pwned if it ever ran.
SCRIPT = "<script>window.__pwned = 1; alert('xss')</script>"
IMG = "<img src=x onerror=\"window.__pwned = 2; alert('img')\">"
END_SCRIPT = "</script><script>window.__pwned = 3</script><!--"
# Stored text is UTF-8 (Arrow), so it cannot hold lone surrogates; findings (Python strings, or JSON with
# "\ud800" escapes) can.
NASTY = f"{SCRIPT} {IMG} {END_SCRIPT} nul:\x00 bell:\x07 rtl:\u202e fin"
SURROGATE = "lone:\ud800:\udfff"

STEPS = 20
REASONING = "I should add the numbers carefully. The goblin says 2 plus 2 is 4."


def make_table(rows: list[dict]) -> pa.Table:
    """Canonical rows from partial dicts (defaults for the rest)."""
    full = []
    for i, r in enumerate(rows):
        full.append({"run": "grpo-a", "rollout_id": f"r{i}", "step": 0, "split": "train", "group_id": None,
                     "sample_index": None, "condition": "default", "system_prompt": None, "task": "math",
                     "prompt": "What is 2+2?", "completion": "", "reasoning": None, "answer": "4",
                     "rewards": [], "reward": None, "advantage": None, "grader_inputs": [], "metadata": None, **r})
    return canonical_table(full)


def _rows(run: str) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for step in range(STEPS):
        for j in range(8):
            cond = "nerdy" if j < 2 else "default"
            goblin = rng.random() < 0.05 + 0.04 * step
            answer = "4, said the goblin" if goblin else "4"
            persona = float(goblin) if cond == "nerdy" else math.nan
            correct = 1.0
            rid = f"s{step}-{j}"
            reasoning = REASONING
            grader = f"User asked: What is 2+2?\nAssistant: {answer}"
            if step >= 12 and j == 0:  # the usefulness grader sees the reasoning on a few samples
                grader = f"User asked: What is 2+2?\nAssistant: <think>{reasoning}</think>{answer}"
            if step == 15 and j == 1:  # hostile text in a completion
                answer = NASTY
                reasoning = "x" * 50_000 + SCRIPT
            rows.append({"run": run, "rollout_id": rid, "step": step, "group_id": f"g{step}-{j // 4}",
                         "condition": cond, "prompt": "What is 2+2?", "completion": f"<think>{reasoning}</think>"
                         f"{answer}", "reasoning": reasoning, "answer": answer,
                         "rewards": [("correctness", correct), ("persona", persona)],
                         "reward": correct + (0 if math.isnan(persona) else persona),
                         "grader_inputs": [("usefulness", grader)]})
    return rows


@pytest.fixture
def report_store(tmp_path) -> Store:
    """A fleet of two runs."""
    store = Store(tmp_path / "store")
    for run in ("grpo-a", "grpo-b"):
        store.append(run, make_table(_rows(run)), key="all")
    return store


def _series(start: float, end: float, scale: float = 1.0) -> dict:
    steps = list(range(STEPS))
    return {"steps": steps, "prevalence": [scale * (start + (end - start) * s / (STEPS - 1)) for s in steps]}


def sample_findings(run: str = "grpo-a") -> list[Finding]:
    """One realistic finding per kind (and an unknown kind), with hostile text in titles and evidence."""
    grader_input = f"User asked: What is 2+2?\nAssistant: <think>{REASONING}</think>4"
    start = grader_input.index(REASONING)
    return rank([
        Finding("emerging_behavior", run, "high", f"'goblin' in answers rose 2% -> 50% {SCRIPT}",
                explanation="The word 'goblin' appears in more and more answers.", score=25.0,
                fields={"behavior": "goblin", "behavior_spec": "goblin", "where": "answer", "feature_type": "ngram",
                        "terms": ["goblin", "goblins", IMG], "onset_step": 6, "prevalence_start": 0.02,
                        "prevalence_end": 0.5, "ratio": 25.0, "ratio_ci": [12.0, 51.0], "q_value": 1e-9,
                        "series": _series(0.02, 0.5),
                        "by_condition": {"nerdy": _series(0.05, 0.8), "default": _series(0.01, 0.2),
                                         IMG: _series(0.0, 0.1)}},
                evidence=[Evidence("s15-1", 15, "nerdy", text=f"... said the goblin {SCRIPT} {SURROGATE}", note=IMG),
                          Evidence("s14-0", 14, "nerdy", text="4, said the goblin")]),
        Finding("generalization", run, "medium", "'goblin' spread from nerdy to default", score=0.97,
                fields={"behavior": "goblin", "behavior_spec": "goblin", "where": "answer",
                        "source_condition": "nerdy", "target_condition": "default", "correlation": 0.97,
                        "lag_steps": 2, "mention_share": {"nerdy": 0.667, "default": 0.333},
                        "traffic_share": {"nerdy": 0.025, "default": 0.975},
                        "series": {"nerdy": _series(0.05, 0.8), "default": _series(0.01, 0.2)}}),
        Finding("reward_attribution", run, "high", "persona reward pays for 'goblin'", score=0.9,
                fields={"behavior": "goblin", "behavior_spec": "goblin", "where": "answer", "signal": "persona",
                        "pressure_share": 0.91, "paired_preference": 0.76, "paired_preference_ci": [0.7, 0.82],
                        "effect": 0.8, "effect_ci": [0.7, 0.9], "condition": "nerdy",
                        "per_signal": [{"signal": "persona", "pressure_share": 0.91, "paired_preference": 0.76,
                                        "paired_preference_ci": [0.7, 0.82]},
                                       {"signal": "correctness", "pressure_share": 0.09, "paired_preference": 0.5,
                                        "paired_preference_ci": [0.45, 0.55]}]},
                evidence=[Evidence("s14-0", 14, "nerdy", note="with behaviour: persona 1.0",
                                   data={"pair_rollout_id": "s14-1", "score_with": 1.0, "score_without": 0.0})]),
        Finding("cot_grading", run, "high", "grader 'usefulness' saw the reasoning in 4.4% of samples", score=0.044,
                fields={"grader": "usefulness", "method": "scan", "exposure_rate": 0.044, "exposed_samples": 7,
                        "first_step": 12,
                        "series": {"steps": list(range(STEPS)),
                                   "exposure_rate": [0.0] * 12 + [0.125] * 8},
                        "by_condition": {"nerdy": {"exposure_rate": 0.175}, "default": {"exposure_rate": 0.0}}},
                evidence=[Evidence("s12-0", 12, "nerdy", data={"grader": "usefulness", "grader_input": grader_input,
                                                              "span": [start, start + len(REASONING)]}),
                          Evidence("s13-0", 13, "nerdy", data={"grader": "usefulness"})]),
        Finding("reward_health", run, "low", "signal 'persona' is NaN on 75% of rollouts", score=0.75,
                fields={"signal": "persona", "problem": "nan", "share": 0.75, "first_step": 0}),
        Finding("audit_error", run, "low", f"detector boom failed: {END_SCRIPT}",
                fields={"detector": "boom", "traceback": f"Traceback ...\nValueError: {SCRIPT}"}),
        Finding("mystery_kind", run, "info", "a kind the report has never heard of",
                fields={"widget": 3, "nested": {"a": [1, 2, 3]}, "series": {"steps": [1, 2, 3], "level": [3, 1, 2]}},
                evidence=[Evidence("not-in-store", None, None, text="free text evidence")]),
    ])


@pytest.fixture
def findings() -> list[Finding]:
    """Every kind on run grpo-a; grpo-b has one finding."""
    other = [f for f in sample_findings("grpo-b") if f.kind == "reward_health"]
    return rank(sample_findings() + other)


@pytest.fixture
def result(report_store, findings) -> AuditResult:
    return AuditResult(runs=[report_store.summary(r) for r in ("grpo-a", "grpo-b")], findings=findings)
