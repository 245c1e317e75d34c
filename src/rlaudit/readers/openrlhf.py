"""OpenRLHF rollouts captured by `rlaudit.cot.capture.wrap_openrlhf_reward`: `<log_dir>/openrlhf/<grader>.<host>-<pid>.jsonl`.

OpenRLHF 0.11.2 writes no rollout files (its only sample log is one decoded sample per logging step in a W&B
table, readers/wandb.py). The reward function is the one place every rollout passes through:
`SingleTurnAgentExecutor.execute` (openrlhf/utils/agent.py) calls `reward_func(queries, prompts, labels)` once per
sample with `queries = [decode(prompt_tokens + response_tokens, skip_special_tokens=False)]`, `prompts = [prompt
text]`, and reads back `{"rewards", "scores", "extra_logs"}`. The capture wrapper records each call as
`{"grader", "step", "index", "time", "pid", "prompt", "query", "label", "reward", "score", "extra_logs"}`.

Mapping decisions:
- `prompt` is the recorded prompt; `completion` is the query after the prompt (OpenRLHF tokenizes the prompt with
  `add_special_tokens=False` and decodes prompt and response together, so the query starts with the prompt; when
  it does not, the whole query is the completion and a note says so).
- The grader saw the query: `grader_inputs = {grader: query}` (reasoning included: the scan reports it).
- `rewards = {grader: reward, **numeric extra_logs}`; `reward` = the reward (what OpenRLHF turns into the
  advantage); `score` (dynamic filtering), `label`, `pid` and `index` go to metadata.
- Groups: the `n_samples_per_prompt` samples of a prompt are sent to one vLLM engine together
  (`SamplesGenerator._dispatch_prompts_to_vllm`), so rows of one file with the same step and prompt are a group;
  `--group-size` splits larger sets.
- Steps: the record's `step` (from the wrapper's `step()` or `samples_per_step`). Records without one get steps
  from call order: synchronous OpenRLHF scores a whole rollout batch, then trains, so a pause between calls much
  longer than the usual spacing (> max(2 s, 20 x the median gap)) starts the next step (numbered from 1). A note
  says so; asynchronous training (`ppo_trainer_async`) has no such pauses, so pass a step there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import register
from .base import PrefetchingReader, ReadContext, SourceFile
from .groups import KeyedGroups
from .jsonl import first_record_keys, iter_json_records
from .wandb import _walk

_KEYS = {"grader", "prompt", "query"}


def _capture_files(source: Path) -> list[Path]:
    return [p for p in _walk(source, "*.jsonl") if p.parent.name == "openrlhf" or source.name == "openrlhf"
            or source.is_file()] if source.exists() else []


def _is_capture(path: Path) -> bool:
    return _KEYS <= first_record_keys(path)


def steps_from_pauses(times: np.ndarray) -> np.ndarray:
    """Step (from 1) of each call, in time order: a pause > max(2 s, 20 x the median gap) starts a new step."""
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(times, kind="stable")
    gaps = np.diff(times[order])
    threshold = max(2.0, 20 * float(np.median(gaps))) if len(gaps) else np.inf
    steps_sorted = 1 + np.concatenate([[0], np.cumsum(gaps > threshold)])
    out = np.empty(len(times), dtype=np.int64)
    out[order] = steps_sorted
    return out


@register
class OpenRlhfReader(PrefetchingReader):
    name = "openrlhf"
    description = "OpenRLHF rollouts captured by rlaudit.cot.capture.wrap_openrlhf_reward: <log_dir>/openrlhf/*.jsonl"

    @classmethod
    def detect(cls, source: Path) -> bool:
        return any(_is_capture(p) for p in _capture_files(source))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        return [SourceFile(p, str(p.relative_to(root))) for p in _capture_files(source) if _is_capture(p)]

    def _read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        recs: list[tuple[int, dict]] = []
        for lineno, rec in iter_json_records(file, ctx):
            problem = _problem(rec)
            if problem:
                ctx.bad(file, lineno, problem, json.dumps(rec, default=str)[:2000])
                continue
            recs.append((lineno, rec))
        if not recs:
            return
        steps = np.array([-1 if r.get("step") is None else int(r["step"]) for _, r in recs], dtype=np.int64)
        missing = steps < 0
        if missing.any():
            times = np.array([float(r.get("time") or 0.0) for _, r in recs])
            steps[missing] = steps_from_pauses(times[missing])
            ctx.note(f"{file.relpath}: OpenRLHF passes no step to the reward function and the capture was not "
                       f"given one; steps are numbered from the pauses between generation rounds (synchronous "
                       f"training only)")
        prompts, completions, inputs, metadata, rewards, totals = [], [], [], [], [], []
        unprefixed = 0
        for _, r in recs:
            prompt, query = r["prompt"], r["query"]
            if prompt and query.startswith(prompt):
                completion = query[len(prompt):]
            else:
                completion = query
                unprefixed += 1
            prompts.append(prompt)
            completions.append(completion)
            inputs.append([(r["grader"], query)])
            signals = {r["grader"]: _num(r.get("reward"))}
            for k, v in (r.get("extra_logs") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in signals:
                    signals[k] = float(v)
            rewards.append(list(signals.items()))
            totals.append(_num(r.get("reward")))
            meta = {k: r[k] for k in ("label", "score", "pid", "index") if r.get(k) is not None}
            metadata.append(json.dumps(meta, ensure_ascii=False) if meta else None)
        if unprefixed:
            ctx.note(f"{file.relpath}: {unprefixed} captured queries do not start with their prompt; their whole "
                       f"query (prompt included) is the completion")
        step_arr = pa.array(steps, pa.int64())
        keys = pa.array([f"{s}\x00{p}" for s, p in zip(steps.tolist(), prompts)], pa.string())
        group_id, sample_index = KeyedGroups(ctx.options.group_size, use_key_in_id=False).assign(keys, step_arr)
        yield pa.table({
            "step": step_arr,
            "prompt": pa.array(prompts, pa.string()),
            "completion": pa.array(completions, pa.string()),
            "rewards": pa.array(rewards, pa.map_(pa.string(), pa.float64())),
            "reward": pa.array(totals, pa.float64()),
            "grader_inputs": pa.array(inputs, pa.map_(pa.string(), pa.string())),
            "metadata": pa.array(metadata, pa.string()),
            "group_id": group_id,
            "sample_index": sample_index,
            "line": pa.array([lineno for lineno, _ in recs], pa.int64()),
        })


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _problem(rec: dict) -> str | None:
    for name in ("grader", "prompt", "query"):
        if not isinstance(rec.get(name), str):
            return f"field {name!r}: expected text, got {json.dumps(rec.get(name), default=str)[:80]}"
    step = rec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        return f"field 'step': expected an integer or null, got {step!r}"
    for name in ("reward", "score", "time"):
        v = rec.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"field {name!r}: expected a number or null, got {json.dumps(v, default=str)[:80]}"
    if rec.get("extra_logs") is not None and not isinstance(rec["extra_logs"], dict):
        return "field 'extra_logs': expected an object of name -> number"
    return None
