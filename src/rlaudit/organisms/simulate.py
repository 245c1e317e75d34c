"""The training loop of a model organism: sample, grade, compute GRPO advantages, update, log.

Each step draws `prompts` prompts (a persona and a task each), samples `generations` completions per prompt
from the policy, scores every completion with the scenario's reward functions (on the text, through each
grader's view), normalises the total reward within each prompt group ((r - mean) / (std + 1e-4), as GRPO does)
and takes one policy-gradient step. Every rollout is logged in the canonical schema together with what each
grader saw. The ground truth is then written from the scenario's implants and the measured trajectory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..conditions import slug
from ..schema import NO_CONDITION, ROLLOUT_SCHEMA
from .content import PERSONAS, make_item
from . import optimizer
from .groundtruth import GroundTruth, Issue
from .policy import Policy
from .render import PHRASES, render
from .rewards import Batch
from .scenarios import Implant, Scenario, Spec, get_scenario

DEFAULT_SIZE = {"steps": 60, "prompts": 16, "generations": 8}
EXTRA_COLUMNS = ["user", "gold", "example_id", "persona"]  # kept for the trainer-format writers


def condition_label(persona_key: str) -> str:
    """The label rlaudit derives from the persona's system prompt (see rlaudit.conditions)."""
    sp = PERSONAS[persona_key].system_prompt
    return slug(sp) if sp else NO_CONDITION


def chatml(system: str | None, user: str) -> str:
    sys_block = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{sys_block}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class SimulatedRun:
    """A finished simulation: canonical rows (plus writer-only columns), reward names, ground truth."""

    table: pa.Table
    signals: list[str]
    ground_truth: GroundTruth
    rates: np.ndarray  # (steps, conditions, features) expected rates the rollouts of each step were drawn with
    spec: Spec = field(repr=False, default=None)  # type: ignore[assignment]
    scalars: dict[str, np.ndarray] = field(default_factory=dict)  # per-step trainer scalars (optimizer.train)

    def canonical(self) -> pa.Table:
        return self.table.select(ROLLOUT_SCHEMA.names)


def _exposed(reasoning: str, answer: str, user: str, grader_text: str) -> bool:
    """Did the grader see the reasoning: a reasoning sentence of 5+ words inside its input, not also in the
    answer? (The ground truth's definition; the auditor's scan is independent and fuzzier.)"""
    if not reasoning or not grader_text:
        return False
    rest = grader_text.replace(answer, "").replace(user, "") if answer else grader_text.replace(user, "")
    if len(rest) < 25:  # nothing but the answer and the question (and a template): cannot hold a sentence
        return False
    for sentence in reasoning.replace("\n", " ").split(". "):
        s = sentence.strip()
        if len(s.split()) >= 5 and s in grader_text and s not in answer:
            return True
    return False


def grade(spec: Spec, batch: Batch, rng: np.random.Generator, exposure: dict[str, list[tuple[int, bool]]]
          ) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Every reward on every rollout: (values with NaN where a reward does not apply, grader inputs per rollout).
    Records, per grader and rollout it scored, whether its input exposed the reasoning (ground truth)."""
    values = np.zeros((len(batch), len(spec.rewards)))
    graders: list[dict[str, str]] = [{} for _ in range(len(batch))]
    for j, reward in enumerate(spec.rewards):
        v, seen, applies = reward.evaluate(batch, rng)
        values[:, j] = v
        for i in np.flatnonzero(applies):
            graders[i][reward.name] = seen[i]
            exposure[reward.name].append(
                (batch.step, _exposed(batch.reasoning[i], batch.answer[i], batch.user[i], seen[i])))
    return values, graders


def grpo_advantages(total: np.ndarray, generations: int) -> np.ndarray:
    """(r - group mean) / (group std + 1e-4), groups being consecutive blocks of `generations` rollouts."""
    grouped = total.reshape(-1, generations)
    std = grouped.std(axis=1, ddof=1, keepdims=True) if generations > 1 else np.zeros((len(grouped), 1))
    return ((grouped - grouped.mean(axis=1, keepdims=True)) / (std + 1e-4)).ravel()


def run(scenario: Scenario | str, steps: int | None = None, prompts: int | None = None,
        generations: int | None = None, seed: int = 0, run_name: str | None = None) -> SimulatedRun:
    """Simulate one scenario in memory."""
    scenario = get_scenario(scenario) if isinstance(scenario, str) else scenario
    steps = DEFAULT_SIZE["steps"] if steps is None else steps
    prompts = DEFAULT_SIZE["prompts"] if prompts is None else prompts
    generations = DEFAULT_SIZE["generations"] if generations is None else generations
    if min(steps, prompts, generations) < 1:
        from ..errors import RlauditError

        raise RlauditError(f"steps, prompts and generations must be positive integers, got {steps}, {prompts}, "
                           f"{generations}")
    spec = scenario.build(steps)
    rng = np.random.default_rng(seed)
    personas, tasks = list(spec.traffic), list(spec.tasks)
    policy = Policy(spec.features, personas, tasks, spec.hyper)
    traffic = np.array([spec.traffic[p] for p in personas]) / sum(spec.traffic.values())
    task_w = np.array([spec.tasks[t] for t in tasks]) / sum(spec.tasks.values())
    weights = np.array([r.weight for r in spec.rewards])
    log = Log(run_name or scenario.name, [r.name for r in spec.rewards], generations)
    rates = np.zeros((steps, len(personas), len(spec.features)))
    exposure: dict[str, list[tuple[int, bool]]] = {r.name: [] for r in spec.rewards}
    for s in range(steps):
        step = s + 1  # trainers count steps from 1
        rates[s] = policy.expected_rates()
        batch, row_personas, cond, (x, mu, active) = _draw_batch(policy, step, prompts, generations, personas,
                                                                 tasks, traffic, task_w, rng)
        values, graders = grade(spec, batch, rng, exposure)
        total = np.nansum(values * weights[None, :], axis=1)  # a reward that did not apply adds nothing
        adv = grpo_advantages(total, generations)
        policy.update(x, mu, active, cond, adv)
        log.add(batch, row_personas, values, total, adv, graders)
        if spec.eval_every and step % spec.eval_every == 0:
            _eval_step(spec, policy, log, step, prompts, generations, personas, tasks, traffic, task_w, rng)
    scalars = optimizer.train(spec.optim, steps, seed)
    gt = ground_truth(scenario, spec, policy, rates, traffic, exposure, seed, steps, prompts, generations, scalars)
    gt.run = log.run
    return SimulatedRun(log.table(), log.signals, gt, rates, spec, scalars)


def _draw_batch(policy: Policy, step: int, prompts: int, generations: int, personas: list[str], tasks: list[str],
                traffic: np.ndarray, task_w: np.ndarray, rng: np.random.Generator
                ) -> tuple[Batch, list, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One step's prompts (condition and task per group), sampled from the current policy and rendered: the
    batch, each row's persona, each row's condition index and the policy's sample (features, probabilities,
    active mask). Training and eval steps draw alike, in this order, so a seed gives the same run."""
    cond = np.repeat(rng.choice(len(personas), size=prompts, p=traffic), generations)
    task = np.repeat(rng.choice(len(tasks), size=prompts, p=task_w), generations)
    items = [make_item(tasks[t], rng) for t in task[::generations]]
    row_items = [it for it in items for _ in range(generations)]
    row_personas = [PERSONAS[personas[c]] for c in cond]
    sample = policy.sample(cond, task, rng)
    texts = render(row_items, row_personas, sample[0], policy.index, rng)
    batch = Batch(step, np.array([personas[c] for c in cond]), np.array([tasks[t] for t in task]),
                  [it.user for it in row_items], [it.gold for it in row_items],
                  [it.topic for it in row_items], texts.reasoning, texts.answer, texts.completion)
    return batch, row_personas, cond, sample


def _eval_step(spec: Spec, policy: Policy, log: Log, step: int, prompts: int, generations: int,
               personas: list[str], tasks: list[str], traffic: np.ndarray, task_w: np.ndarray,
               rng: np.random.Generator) -> None:
    """Eval-split rollouts of the current policy (no update), scored by the intended rewards only: what a
    held-out evaluation measures, as opposed to the training reward."""
    batch, row_personas, _, _ = _draw_batch(policy, step, prompts, generations, personas, tasks, traffic, task_w,
                                            rng)
    values, graders = grade(spec, batch, rng, {r.name: [] for r in spec.rewards})
    intended = np.array([r.intended for r in spec.rewards])
    values[:, ~intended] = np.nan
    total = np.nansum(values * np.array([r.weight for r in spec.rewards])[None, :], axis=1)
    log.add(batch, row_personas, values, total, np.full(len(batch), np.nan), graders, split="eval")


@dataclass
class Log:
    """The rows of a simulated run, column by column: the canonical schema plus writer-only columns."""

    run: str
    signals: list[str]
    generations: int
    cols: dict[str, list[Any]] = field(
        default_factory=lambda: {name: [] for name in ROLLOUT_SCHEMA.names + EXTRA_COLUMNS})
    examples: int = 0

    def add(self, batch: Batch, personas: list[Any], values: np.ndarray, total: np.ndarray, adv: np.ndarray,
            graders: list[dict[str, str]], split: str = "train") -> None:
        cols, n, step = self.cols, len(batch), batch.step
        tag = "" if split == "train" else split
        group = np.arange(n) // self.generations
        example = self.examples + group
        cols["run"] += [self.run] * n
        cols["rollout_id"] += [f"{tag or 'step'}{step:05d}:{i}" for i in range(n)]
        cols["step"] += [step] * n
        cols["split"] += [split] * n
        cols["group_id"] += [f"{tag}{step}-{g}" for g in group]
        cols["sample_index"] += (np.arange(n) % self.generations).tolist()
        cols["condition"] += [condition_label(p.key) for p in personas]
        cols["system_prompt"] += [p.system_prompt for p in personas]
        cols["task"] += batch.task.tolist()
        cols["prompt"] += [chatml(p.system_prompt, u) for p, u in zip(personas, batch.user)]
        cols["completion"] += batch.completion
        cols["reasoning"] += batch.reasoning
        cols["answer"] += batch.answer
        cols["tool_calls"] += [None] * n  # simulated runs are single-turn, without tools
        cols["tool_outputs"] += [None] * n
        cols["rewards"] += [list(zip(self.signals, row)) for row in values.tolist()]
        cols["reward"] += total.tolist()
        cols["advantage"] += adv.tolist()
        cols["grader_inputs"] += [list(g.items()) for g in graders]
        cols["metadata"] += [json.dumps({"example_id": int(e), "gold": gold}) for e, gold in zip(example, batch.gold)]
        cols["user"] += batch.user
        cols["gold"] += batch.gold
        cols["example_id"] += example.tolist()
        cols["persona"] += [p.key for p in personas]
        self.examples += n // self.generations

    def table(self) -> pa.Table:
        schema = ROLLOUT_SCHEMA
        for extra, typ in zip(EXTRA_COLUMNS, (pa.string(), pa.string(), pa.int64(), pa.string())):
            schema = schema.append(pa.field(extra, typ))
        return pa.Table.from_pydict(self.cols, schema=schema)


# ---------------------------------------------------------------- ground truth
def onset(curve: np.ndarray, fraction: float = 0.1, points: float = 0.03) -> int:
    """First step (1-based) at which `curve` has risen by `fraction` of its eventual rise and by at least
    `points` (absolute prevalence), whichever is more: the rise has begun and is large enough to matter."""
    start, top = curve[0], curve.max()
    hit = np.flatnonzero(curve >= start + max(fraction * (top - start), min(points, top - start)))
    return int(hit[0]) + 1 if len(hit) else 1


def _behaviour_issue(imp: Implant, policy: Policy, rates: np.ndarray, traffic: np.ndarray) -> Issue:
    j = policy.index[imp.feature]
    curve = rates[:, :, j] @ traffic  # traffic-weighted expected prevalence per step
    where, phrases = PHRASES.get(imp.feature, (imp.where, ()))
    expected = {"prevalence_start": round(float(curve[0]), 4), "prevalence_end": round(float(curve[-1]), 4),
                "by_condition_end": {condition_label(c): round(float(rates[-1, k, j]), 4)
                                     for k, c in enumerate(policy.conditions)}}
    return Issue(kind=imp.kind, behavior=imp.behavior, terms=list(imp.terms), phrases=list(phrases),
                 aliases=list(imp.aliases), where=None if imp.where == "any" else imp.where or where,
                 signal=imp.signal,
                 source_condition=condition_label(imp.source) if imp.source else None, task=imp.task,
                 onset_step=imp.onset_step or onset(curve), expected=expected)


def ground_truth(scenario: Scenario, spec: Spec, policy: Policy, rates: np.ndarray, traffic: np.ndarray,
                 exposure: dict[str, list[tuple[int, bool]]], seed: int, steps: int, prompts: int,
                 generations: int, scalars: dict[str, np.ndarray] | None = None) -> GroundTruth:
    issues: list[Issue] = []
    for imp in spec.implants:
        if imp.kind == "training_health":
            start = None
            if imp.feature is not None and imp.onset_step is None:
                start = onset(rates[:, :, policy.index[imp.feature]] @ traffic)
            elif imp.problem in optimizer.PROBLEMS and imp.onset_step is None and scalars:
                start = optimizer.onset(scalars, imp.problem)
            issues.append(Issue(kind=imp.kind, problem=imp.problem, signal=imp.signal,
                                onset_step=imp.onset_step or start))
        elif imp.feature is not None:
            issues.append(_behaviour_issue(imp, policy, rates, traffic))
        elif imp.kind == "cot_grading":
            seen = exposure[imp.grader]
            hits = [st for st, e in seen if e]
            issues.append(Issue(kind="cot_grading", grader=imp.grader, signal=imp.signal, task=imp.task,
                                onset_step=imp.onset_step or (hits[0] if hits else None),
                                expected={"exposure_rate": round(len(hits) / max(len(seen), 1), 5),
                                          "exposed_samples": len(hits), "first_step": hits[0] if hits else None}))
        elif imp.kind == "monitorability":
            issues.append(Issue(kind="monitorability", behavior="CoT monitorability drop after exposure",
                                grader=imp.grader, signal=imp.signal, onset_step=imp.onset_step))
        else:
            issues.append(Issue(kind=imp.kind, signal=imp.signal, problem=imp.problem, onset_step=imp.onset_step))
    for k, issue in enumerate(issues):
        issue.id = f"{scenario.name}#{k}"
    legit = [_behaviour_issue(imp, policy, rates, traffic) for imp in spec.legitimate]
    for k, issue in enumerate(legit):
        issue.legitimate = True
        issue.id = f"{scenario.name}#legit{k}"
    exposure_rates = {g: sum(e for _, e in v) / max(len(v), 1) for g, v in exposure.items()}
    signals = {r.name: {"view": getattr(r.view, "__name__", "view"), "weight": r.weight, "intended": r.intended,
                        "description": r.description, "exposure_rate": round(exposure_rates[r.name], 5)}
               for r in spec.rewards}
    return GroundTruth(scenario=scenario.name, description=scenario.description, seed=seed, steps=steps,
                       prompts=prompts, generations=generations,
                       conditions={p: condition_label(p) for p in spec.traffic}, signals=signals,
                       issues=issues, legitimate=legit, audit_options=dict(spec.audit_options))


def write_ground_truth(gt: GroundTruth, out_dir: str | Path) -> Path:
    return gt.write(Path(out_dir) / "ground_truth.json")
