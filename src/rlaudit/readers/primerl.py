"""prime-rl / verifiers rollout traces: `{output_dir}/rollouts/step_{N}/{train|eval}/.../traces.jsonl`.

Checked against PrimeIntellect-ai/prime-rl at 559b4477 (2026-08-21; `src/prime_rl/monitors/file.py`
`FileMonitor.log_episodes`, `skills/training/monitor-run/SKILL.md`) and PrimeIntellect-ai/verifiers at a60a606e
(`verifiers/v1/episode.py`, `trace.py`, `graph.py`, `types.py`). What the files hold:

- `rollouts/step_N/{train,eval}/all/traces.jsonl` gets every finished episode as it arrives (failures and
  never-batched work included); `.../effective/traces.jsonl` the episodes that went into the trained batch.
  Both describe the same episodes, so this reader reads `effective` where a step/kind has it and `all` only
  where it does not (a step still in progress, or a run that crashed before finalising it). `effective` is
  preferred because only it carries the advantages (assigned when the batch is finalised). When a step's
  `effective` file appears after its `all` file was ingested (live ingest), the `effective` rows replace the
  stored `all` rows (`SourceFile.replaces`), so no episode is counted twice.
- One line is `Episode.to_record()`: {id, env {id, name}, task, group {id}, run {type, work {type, step}}, ok,
  errors, traces [...]}. Each trace: {id, task, agent {name, trainable}, nodes [{parent, message, sampled,
  advantages, ...}], rewards {name: {score, weight} | null}, metrics {name: value}, info {...}, stop_condition}.
  A trace's messages are its final branch: walk `parent` links from the last leaf node. Messages are
  system/user/assistant/tool; assistant messages keep `reasoning_content` separate from `content`.
- Older prime-rl (before 2026-07) wrote `rollouts/step_N/{train,eval}_rollouts.jsonl` of verifiers'
  `RolloutOutput`: {prompt: messages, completion: messages, reward, metrics, answer, info, example_id, task}.

Mapping (one row per trace; an episode without traces is a failure record, not a rollout, and is skipped):
- prompt: the messages before the first sampled (model-generated) message, rendered 'role: content';
  completion: the generated turns (one assistant message: its content; several: rendered turns), with the
  `reasoning_content` as `reasoning` and the `content` as `answer`.
- rewards: {name: score} (unweighted; None -> NaN); reward: sum(score * weight) (verifiers' `Trace.reward`),
  or the record's own `reward` when present. Legacy records have no `rewards`: their `metrics` (one per reward
  function) are the signals. In v1 records `metrics` are unweighted diagnostics and go to metadata.
- advantage: `info.advantage` when present (convention for flat traces), else the mean non-zero per-token
  advantage of the sampled nodes (prime-rl's `scalar_advantage`).
- grader inputs: `info.grader_inputs` {grader: text} (rlaudit's convention: verifiers logs no grader inputs; a
  rubric that records what its judge saw puts it there).
- group: the episode's `group.id` (else `example_id`, `group_id`, or the task key/hash), as "<step>:<id>";
  sample_index is the order within the group in the file. step: `run.work.step`, else `step`, else the
  directory name. split: the directory (`train`/`eval`). task: `env.id`, else the record's `task`.

The records are deeply nested and vary by version, so this reader parses line by line (`json`); its rows are
then assembled into Arrow columns per batch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..text import ThinkTags
from . import register
from .base import ReadContext, Reader, SourceFile, map_array
from .messages import content_text, is_message_list, render_message_list
from .jsonl import iter_json_records

_STEP_DIR = re.compile(r"^step_(\d+)$")
_LEGACY = re.compile(r"^(train|eval)_rollouts.*\.jsonl$")
BATCH_ROWS = 4096


def _rollouts_dir(source: Path) -> Path | None:
    if source.is_dir() and (source / "rollouts").is_dir():
        return source / "rollouts"
    if source.is_dir() and any(_STEP_DIR.match(p.name) for p in source.iterdir() if p.is_dir()):
        return source
    return None


def _trace_files(source: Path) -> list[tuple[Path, int, str, list[Path]]]:
    """(file, step, split, files it replaces) of every trace file to read (see the module doc for `effective`
    vs `all`)."""
    root = _rollouts_dir(source)
    if root is None:
        return []
    found = []
    for step_dir in root.iterdir():
        m = _STEP_DIR.match(step_dir.name)
        if not m or not step_dir.is_dir():
            continue
        step = int(m.group(1))
        for legacy in step_dir.glob("*.jsonl"):
            lm = _LEGACY.match(legacy.name)
            if lm:
                found.append((legacy, step, lm.group(1), []))
        for kind in ("train", "eval"):
            kind_dir = step_dir / kind
            if not kind_dir.is_dir():
                continue
            traces = sorted(kind_dir.rglob("traces.jsonl"))
            effective = [p for p in traces if "effective" in p.relative_to(kind_dir).parts]
            chosen = effective or [p for p in traces if "all" not in p.relative_to(kind_dir).parts] or traces
            passed_over = [p for p in traces if p not in chosen]
            found += [(p, step, kind, passed_over) for p in chosen]
    return found


@register
class PrimeRlReader(Reader):
    name = "prime-rl"
    description = "prime-rl / verifiers traces: output_dir/rollouts/step_N/{train,eval}/.../traces.jsonl"

    @classmethod
    def detect(cls, source: Path) -> bool:
        return bool(_trace_files(source))

    def files(self, source: Path) -> list[SourceFile]:
        root = source
        out = [SourceFile(p, str(p.relative_to(root)), split=split, step=step,
                          replaces=tuple(str(r.relative_to(root)) for r in replaced))
               for p, step, split, replaced in _trace_files(source)]
        return sorted(out, key=lambda f: (f.split != "train", f.step, f.relpath))

    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        rows: list[dict[str, Any]] = []
        group_counts: dict[str, int] = {}
        for lineno, record in iter_json_records(file, ctx):
            try:
                new = list(_rows(record, file))
            except _Bad as exc:
                ctx.bad(file, lineno, str(exc), json.dumps(record, ensure_ascii=False, default=str)[:2000])
                continue
            for i, row in enumerate(new):
                row["line"] = lineno
                row["sub"] = i if len(new) > 1 else None  # an episode line may hold several traces
                gid = row["group_id"]
                row["sample_index"] = group_counts.get(gid, 0)
                group_counts[gid] = row["sample_index"] + 1
                rows.append(row)
            if len(rows) >= BATCH_ROWS:
                yield _table(rows, ctx.options.think_tags)
                rows = []
        if rows:
            yield _table(rows, ctx.options.think_tags)


class _Bad(Exception):
    """A record that cannot be a rollout; the message names the field and what was expected."""


def _rows(record: dict[str, Any], file: SourceFile) -> Iterator[dict[str, Any]]:
    if "traces" in record:
        traces = record["traces"]
        if not isinstance(traces, list):
            raise _Bad(f"field 'traces': expected a list of traces, got {type(traces).__name__}")
        for i, trace in enumerate(traces):
            if not isinstance(trace, dict):
                raise _Bad(f"field 'traces[{i}]': expected an object, got {type(trace).__name__}")
            yield _row(trace, record, file)
    else:
        yield _row(record, {}, file)


def _row(trace: dict[str, Any], episode: dict[str, Any], file: SourceFile) -> dict[str, Any]:
    prompt_msgs, completion_msgs = _messages(trace)
    info = _dict(trace.get("info"), "info")
    legacy = "rewards" not in trace and "metrics" in trace
    rewards, weights = _rewards(trace.get("rewards"), "rewards") if not legacy else (
        _scores(trace.get("metrics"), "metrics"), {})
    total = trace.get("reward")
    if total is not None and not _number(total):
        raise _Bad(f"field 'reward': expected a number, got {total!r:.80}")
    if total is None and rewards:
        values = [s * weights.get(k, 1.0) for k, s in rewards.items() if not math.isnan(s)]
        total = sum(values) if values else None
    advantage = info.get("advantage", trace.get("advantage"))
    if advantage is not None and not _number(advantage):
        raise _Bad(f"field 'info.advantage': expected a number, got {advantage!r:.80}")
    if advantage is None:
        advantage = _node_advantage(trace.get("nodes"))
    graders = info.get("grader_inputs") or {}
    if not isinstance(graders, dict):
        raise _Bad(f"field 'info.grader_inputs': expected an object of grader -> text, got {type(graders).__name__}")
    run = episode.get("run") or trace.get("run") or {}
    work = run.get("work") if isinstance(run, dict) else None
    step = (work or {}).get("step", trace.get("step", episode.get("step")))
    if step is not None and not (_number(step) and float(step).is_integer()):
        raise _Bad(f"field 'step': expected an integer, got {step!r:.80}")
    step = int(step) if step is not None else file.step
    answer, reasoning = _completion(completion_msgs)
    system = next((content_text(m.get("content")) for m in prompt_msgs if m.get("role") == "system"), None)
    group = _group_key(episode, trace)
    meta = {k: v for k, v in {
        "episode_id": episode.get("id"), "trace_id": trace.get("id"),
        "agent": (trace.get("agent") or {}).get("name") if isinstance(trace.get("agent"), dict) else None,
        "metrics": trace.get("metrics") if not legacy else None, "reward_weights": weights or None,
        "stop_condition": trace.get("stop_condition"), "ok": trace.get("ok"),
        "gold": trace.get("answer") or None,
        "info": {k: v for k, v in info.items() if k not in ("advantage", "grader_inputs")} or None,
    }.items() if v is not None}
    return {
        "step": step,
        "split": (work or {}).get("type") if (work or {}).get("type") in ("train", "eval") else file.split,
        "group_id": f"{step}:{group}" if group is not None else None,
        "system_prompt": system,
        "task": _task(episode, trace),
        "prompt": render_message_list(prompt_msgs) if isinstance(prompt_msgs, list) else str(prompt_msgs),
        "answer": answer,
        "reasoning": reasoning,
        "rewards": rewards,
        "reward": None if total is None else float(total),
        "advantage": None if advantage is None else float(advantage),
        "grader_inputs": {str(k): content_text(v) if not isinstance(v, str) else v
                          for k, v in graders.items() if v is not None},
        "metadata": meta,
    }


def _messages(trace: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt messages, generated messages) of a trace, from nodes, messages or prompt/completion."""
    if "nodes" in trace:
        nodes = trace["nodes"]
        if not isinstance(nodes, list) or not all(isinstance(n, dict) and isinstance(n.get("message"), dict)
                                                  for n in nodes):
            raise _Bad("field 'nodes': expected a list of {message, parent, sampled} objects")
        path = _final_branch(nodes)
        first = next((i for i, n in enumerate(path) if n.get("sampled")), None)
        if first is None:
            first = next((i for i, n in enumerate(path) if n["message"].get("role") == "assistant"), len(path))
        msgs = [n["message"] for n in path]
        return msgs[:first], msgs[first:]
    if "messages" in trace:
        msgs = trace["messages"]
        if not is_message_list(msgs):
            raise _Bad("field 'messages': expected a list of {role, content} messages")
        first = next((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), len(msgs))
        return msgs[:first], msgs[first:]
    if "prompt" in trace and "completion" in trace:
        prompt, completion = trace["prompt"], trace["completion"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        completion = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
        for name, value in (("prompt", prompt), ("completion", completion)):
            if not (isinstance(value, list) and all(isinstance(m, dict) for m in value)):
                raise _Bad(f"field {name!r}: expected text or a list of chat messages")
        return prompt, completion
    raise _Bad("no messages: expected 'nodes' (verifiers v1), 'messages', or 'prompt' and 'completion'")


def _final_branch(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The root-to-leaf path ending at the last leaf (verifiers' `Trace.messages`)."""
    parents = {n.get("parent") for n in nodes if n.get("parent") is not None}
    leaves = [i for i in range(len(nodes)) if i not in parents]
    if not leaves:
        return []
    path, seen, i = [], set(), leaves[-1]
    while i is not None and isinstance(i, int) and 0 <= i < len(nodes) and i not in seen:
        seen.add(i)
        path.append(nodes[i])
        i = nodes[i].get("parent")
    return path[::-1]


def _completion(messages: list[dict[str, Any]]) -> tuple[str, str | None]:
    if not messages:
        return "", None
    if len(messages) == 1:
        answer = content_text(messages[0].get("content"))
    else:
        answer = render_message_list(messages)
    reasonings = [str(m["reasoning_content"]) for m in messages if m.get("reasoning_content")]
    return answer, ("\n".join(reasonings) if reasonings else None)


def _rewards(value: Any, name: str) -> tuple[dict[str, float], dict[str, float]]:
    """({signal: score}, {signal: weight}) from {name: {score, weight} | number | null}."""
    scores, weights = {}, {}
    for key, item in _dict(value, name).items():
        if item is None:
            scores[str(key)] = math.nan
        elif isinstance(item, dict):
            score, weight = item.get("score"), item.get("weight", 1.0)
            if score is not None and not _number(score):
                raise _Bad(f"field '{name}.{key}.score': expected a number, got {score!r:.80}")
            if weight is not None and not _number(weight):
                raise _Bad(f"field '{name}.{key}.weight': expected a number, got {weight!r:.80}")
            scores[str(key)] = math.nan if score is None else float(score)
            weights[str(key)] = 1.0 if weight is None else float(weight)
        elif _number(item):
            scores[str(key)] = float(item)
        else:
            raise _Bad(f"field '{name}.{key}': expected {{score, weight}} or a number, got {item!r:.80}")
    return scores, weights


def _scores(value: Any, name: str) -> dict[str, float]:
    out = {}
    for key, item in _dict(value, name).items():
        if item is not None and not _number(item):
            raise _Bad(f"field '{name}.{key}': expected a number, got {item!r:.80}")
        out[str(key)] = math.nan if item is None else float(item)
    return out


def _node_advantage(nodes: Any) -> float | None:
    if not isinstance(nodes, list):
        return None
    values = [v for n in nodes if isinstance(n, dict) for v in (n.get("advantages") or []) if _number(v)]
    if not values:
        return None
    nonzero = [v for v in values if v != 0.0]
    return sum(nonzero) / len(nonzero) if nonzero else 0.0


def _group_key(episode: dict[str, Any], trace: dict[str, Any]) -> str | None:
    group = episode.get("group") or trace.get("group")
    if isinstance(group, dict) and group.get("id") is not None:
        return str(group["id"])
    for key in ("example_id", "group_id"):
        if trace.get(key) is not None:
            return str(trace[key])
    task = trace.get("task") if isinstance(trace.get("task"), dict) else episode.get("task")
    if isinstance(task, dict):
        for key in ("key", "hash"):
            if task.get(key) is not None:
                return str(task[key])
    return None


def _task(episode: dict[str, Any], trace: dict[str, Any]) -> str | None:
    env = episode.get("env")
    if isinstance(env, dict) and env.get("id"):
        return str(env["id"])
    task = trace.get("task")
    if isinstance(task, str):
        return task
    if isinstance(task, dict) and task.get("type"):
        return str(task["type"])
    return None


def _dict(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad(f"field {name!r}: expected an object, got {type(value).__name__}")
    return value


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _table(rows: list[dict[str, Any]], tags: ThinkTags) -> pa.Table:
    def column(name: str, typ: pa.DataType) -> pa.Array:
        return pa.array([r[name] for r in rows], typ)

    return pa.table({
        "line": column("line", pa.int64()),
        "sub": column("sub", pa.int32()),
        "step": column("step", pa.int64()),
        "split": column("split", pa.string()),
        "group_id": column("group_id", pa.string()),
        "sample_index": column("sample_index", pa.int32()),
        "system_prompt": column("system_prompt", pa.string()),
        "task": column("task", pa.string()),
        "prompt": column("prompt", pa.string()),
        "completion": pa.array([r["answer"] if r["reasoning"] is None else f"{tags.open}{r['reasoning']}{tags.close}"
                                f"{r['answer']}" for r in rows], pa.string()),
        "reasoning": column("reasoning", pa.string()),
        # without reasoning_content, leave the split to finalize (the content may carry <think> tags)
        "answer": pa.array([r["answer"] if r["reasoning"] is not None else None for r in rows], pa.string()),
        "rewards": map_array([r["rewards"] for r in rows], pa.float64()),
        "reward": column("reward", pa.float64()),
        "advantage": column("advantage", pa.float64()),
        "grader_inputs": map_array([r["grader_inputs"] for r in rows], pa.string()),
        "metadata": pa.array([json.dumps(r["metadata"], ensure_ascii=False, default=str) if r["metadata"] else None
                              for r in rows], pa.string()),
    })
