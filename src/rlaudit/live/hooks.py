"""The plain Python hook API: live auditing from any training loop (verl, prime-rl, a custom loop).

    from rlaudit.live import LiveHook

    hook = LiveHook(store=".rlaudit", run="my-run", alerts_path="alerts.jsonl", webhook=None)
    for step in range(steps):
        ...generate, score...
        hook.log_rollouts(step, prompts, completions, rewards={"correct": r1, "style": r2},
                          group_ids=group_ids, advantages=adv)
    hook.close()

Or, without touching the loop, wrap the reward functions (TRL-style `f(prompts, completions, **kwargs)`): the
wrappers pass every call through unchanged, record what each function saw and returned, and log the batch once
every wrapped function has scored it:

    reward_funcs = hook.wrap_rewards([correctness, persona_reward])

Recording what a reward function was given is also how grader inputs are captured for the CoT-exposure scan
(`grader_inputs[name]` = the completion text the function received, reasoning included).

Every method swallows and logs its own errors (see `auditor.guarded`): a broken audit never stops training.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..conditions import ConditionRule
from ..readers.base import (RAW_COLUMNS, ReadContext, ReadOptions, SourceFile, content_text, finalize,
                            is_message_list, render_message_list)
from ..store import Store
from ..text import ThinkTags
from .alerts import Alert, AlertManager, make_alerts
from .auditor import LiveAuditor, LiveConfig, guarded

log = logging.getLogger("rlaudit.live")

Texts = Sequence[Any]  # strings or chat message lists


class LiveHook:
    """Receives each step's rollouts, stores them and audits the run as it grows."""

    def __init__(self, store: Store | str | Path = ".rlaudit", run: str = "live", *,
                 alerts_path: str | Path | None = None, webhook: str | None = None, min_severity: str = "medium",
                 config: LiveConfig | None = None, alerts: AlertManager | None = None,
                 think_tags: ThinkTags | None = None, conditions: list[ConditionRule] | None = None):
        alerts = alerts or make_alerts(alerts_path, webhook, min_severity)
        self.auditor = LiveAuditor(store if isinstance(store, Store) else Store(store), run, config, alerts)
        self.auditor.labeler.rules = list(conditions or [])
        self.options = ReadOptions(think_tags=think_tags or ThinkTags())
        self.errors = self.auditor.errors
        self._logged_errors = self.auditor._logged_errors

    @property
    def run(self) -> str:
        return self.auditor.run

    @property
    def findings(self):  # noqa: ANN201 - list[Finding]
        return self.auditor.findings

    @property
    def alerts(self) -> list[Alert]:
        return self.auditor.alerts.history

    @guarded(default=list)
    def log_rollouts(
        self,
        step: int,
        prompts: Texts,
        completions: Texts,
        rewards: Mapping[str, Sequence[float | None]] | None = None,
        *,
        reward: Sequence[float | None] | None = None,
        advantages: Sequence[float | None] | None = None,
        group_ids: Sequence[Any] | None = None,
        system_prompts: Sequence[str | None] | None = None,
        grader_inputs: Mapping[str, Sequence[str | None]] | None = None,
        tasks: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        split: str = "train",
        audit: bool = True,
    ) -> list[Alert]:
        """Store one step's rollouts and audit; returns the alerts this step raised.

        `rewards` maps each reward signal to one value per rollout (None or NaN where it did not apply);
        `reward` is the total the trainer used (default: the sum of the signals that applied).
        """
        table = self.rollout_table(step, prompts, completions, rewards, reward=reward, advantages=advantages,
                                   group_ids=group_ids, system_prompts=system_prompts,
                                   grader_inputs=grader_inputs, tasks=tasks, metadata=metadata, split=split)
        self.auditor.append(step, table, key=f"live/{split}/step-{int(step):08d}")
        return self.auditor.update(step) if audit else []

    def rollout_table(self, step: int, prompts: Texts, completions: Texts,
                      rewards: Mapping[str, Sequence[float | None]] | None = None, **columns: Any) -> pa.Table:
        """Canonical rows for one step (the same last mile as the file readers: ids, reasoning, conditions)."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"log_rollouts: {len(prompts)} prompts but {n} completions")
        raw: dict[str, pa.Array] = {"step": pa.array([int(step)] * n, pa.int64())}
        raw["prompt"] = pa.array([_text(p) for p in prompts], pa.string())
        answers, reasonings = zip(*(_completion(c) for c in completions)) if n else ((), ())
        raw["completion"] = pa.array(list(answers), pa.string())
        if any(r is not None for r in reasonings):  # message lists with reasoning_content
            raw["reasoning"] = pa.array(list(reasonings), pa.string())
        signals = {name: [_float(v) for v in _check(values, n, f"rewards[{name!r}]")]
                   for name, values in (rewards or {}).items()}
        raw["rewards"] = pa.array([[(k, v[i]) for k, v in signals.items()] for i in range(n)],
                                  RAW_COLUMNS["rewards"])
        total = columns.get("reward")
        if total is not None:
            raw["reward"] = pa.array([_float(v) for v in _check(total, n, "reward")], pa.float64())
        elif signals:
            raw["reward"] = pa.array([_nansum([v[i] for v in signals.values()]) for i in range(n)], pa.float64())
        if columns.get("advantages") is not None:
            raw["advantage"] = pa.array([_float(v) for v in _check(columns["advantages"], n, "advantages")],
                                        pa.float64())
        if columns.get("group_ids") is not None:
            groups = [None if g is None else str(g) for g in _check(columns["group_ids"], n, "group_ids")]
            raw["group_id"] = pa.array([None if g is None else f"{int(step)}:{g}" for g in groups], pa.string())
            raw["sample_index"] = pa.array(_sample_index(groups), pa.int32())
        if columns.get("system_prompts") is not None:
            raw["system_prompt"] = pa.array(list(_check(columns["system_prompts"], n, "system_prompts")),
                                            pa.string())
        if columns.get("tasks") is not None:
            raw["task"] = pa.array([None if t is None else str(t) for t in _check(columns["tasks"], n, "tasks")],
                                   pa.string())
        graders = columns.get("grader_inputs") or {}
        if graders:
            checked = {g: [None if t is None else _text(t) for t in _check(v, n, f"grader_inputs[{g!r}]")]
                       for g, v in graders.items()}
            raw["grader_inputs"] = pa.array(
                [[(g, v[i]) for g, v in checked.items() if v[i] is not None] for i in range(n)],
                RAW_COLUMNS["grader_inputs"])
        if columns.get("metadata") is not None:
            raw["metadata"] = pa.array(
                [json.dumps(m, default=str) if m else None for m in _check(columns["metadata"], n, "metadata")],
                pa.string())
        split = columns.get("split", "train")
        key = f"live/{split}/step-{int(step):08d}"
        file = SourceFile(Path(key), key, split=split, step=int(step))
        ctx = ReadContext(run=self.run, options=self.options, labeler=self.auditor.labeler)
        return finalize(pa.table(raw), file, ctx)

    def wrap_rewards(self, funcs: Sequence[Callable[..., Sequence[float | None]]], capture_inputs: bool = True,
                     step_offset: int = 1) -> list[Callable[..., Sequence[float | None]]]:
        """Wrap TRL-style reward functions so that each scored batch is logged (see module doc).

        The step comes from the `trainer_state` keyword TRL passes (its `global_step` + `step_offset`, which
        matches the step TRL writes in its completion logs) or, without one, from a counter of batches.
        """
        return RewardRecorder(self, funcs, capture_inputs, step_offset).wrapped

    @guarded(default=list)
    def close(self) -> list[Alert]:
        """Final heavy audit and alert flush; call once training ends."""
        return self.auditor.close()


class RewardRecorder:
    """Collects the outputs of several reward functions on one batch, then logs the batch once."""

    def __init__(self, hook: LiveHook, funcs: Sequence[Callable[..., Any]], capture_inputs: bool,
                 step_offset: int):
        self.hook, self.capture_inputs, self.step_offset = hook, capture_inputs, step_offset
        self.names = [getattr(f, "__name__", f"reward_{i}") for i, f in enumerate(funcs)]
        self.batches = 0
        self._pending: dict[int, dict[str, Any]] = {}
        self.max_pending = 4  # batches waiting for their other functions' scores
        self.wrapped = [self._wrap(f, name) for f, name in zip(funcs, self.names)]
        self.errors = hook.errors
        self._logged_errors = hook._logged_errors

    def _wrap(self, func: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(prompts: Texts, completions: Texts, *args: Any, **kwargs: Any) -> Any:
            try:
                out = func(prompts, completions, *args, **kwargs)
            except BaseException:  # the user's errors are theirs: re-raised, after the batch is accounted for
                self._record(name, prompts, completions, None, kwargs)
                raise
            self._record(name, prompts, completions, out, kwargs)
            return out

        return wrapper

    @guarded()
    def _record(self, name: str, prompts: Texts, completions: Texts, out: Sequence[Any],
                kwargs: dict[str, Any]) -> None:
        batch = self._pending.setdefault(id(completions), {"prompts": prompts, "completions": completions,
                                                           "rewards": {}, "kwargs": kwargs})
        # a function that raised scores nothing: its signal is n/a (NaN) for this batch, which is still logged
        batch["rewards"][name] = [None] * len(completions) if out is None else list(out)
        while len(self._pending) > self.max_pending:  # batches some function never scored: not kept forever
            dropped = self._pending.pop(next(iter(self._pending)))
            log.warning("rlaudit: a reward batch of %d rollouts was never scored by %s; not logged",
                        len(dropped["completions"]), ", ".join(n for n in self.names if n not in dropped["rewards"]))
        if id(completions) not in self._pending or len(batch["rewards"]) < len(self.names):
            return
        del self._pending[id(completions)]
        self.batches += 1
        state = kwargs.get("trainer_state")
        step = int(state.global_step) + self.step_offset if state is not None else self.batches
        graders = None
        if self.capture_inputs:
            seen = [_text(c) for c in completions]
            graders = {n: seen for n in self.names}
        self.hook.log_rollouts(step, prompts, completions, {n: batch["rewards"][n] for n in self.names},
                               grader_inputs=graders)


def _check(values: Sequence[Any], n: int, what: str) -> Sequence[Any]:
    if len(values) != n:
        raise ValueError(f"log_rollouts: {what} has {len(values)} values for {n} rollouts")
    return values


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if is_message_list(value):
        return render_message_list(value)
    return str(value)


def _completion(value: Any) -> tuple[str, str | None]:
    """(completion text, reasoning or None) of a string or a message-list completion."""
    if isinstance(value, str) or value is None:
        return value or "", None
    if is_message_list(value):
        if len(value) == 1:
            reasoning = value[0].get("reasoning_content")
            answer = content_text(value[0].get("content"))
            return (f"<think>{reasoning}</think>{answer}" if reasoning else answer), reasoning or None
        return render_message_list(value), None
    return str(value), None


def _float(value: Any) -> float:
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"reward value {value!r} is not a number") from None


def _nansum(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return float(sum(finite)) if finite else float("nan")


def _sample_index(groups: list[str | None]) -> list[int | None]:
    seen: dict[str, int] = {}
    out: list[int | None] = []
    for g in groups:
        if g is None:
            out.append(None)
        else:
            out.append(seen.get(g, 0))
            seen[g] = seen.get(g, 0) + 1
    return out
