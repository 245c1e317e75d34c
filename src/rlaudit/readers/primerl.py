"""prime-rl / verifiers rollout traces: `{output_dir}/rollouts/step_{N}/{train|eval}/.../traces.jsonl`.

Checked against verifiers 0.4.0 (PyPI wheel; `verifiers/v1/episode.py`, `trace.py`, `graph.py`, `judge.py`,
`types.py`, `utils/trace_store.py`) and PrimeIntellect-ai/prime-rl at 559b4477 (2026-08-21, which pins verifiers
from main: `src/prime_rl/monitors/file.py` `FileMonitor.log_episodes`, `orchestrator/dispatcher.py` `_emit`,
`orchestrator/algo/base.py` `iter_trainable_traces`, `algo/grpo.py`, `algo/routing.py`, `orchestrator/utils.py`
`episode_staleness`). The conformance suite (`conformance/verifiers/generate.py`) writes these files with
verifiers' own classes. What the files hold:

- `rollouts/step_N/{train,eval}/all/traces.jsonl` gets every finished episode as it arrives (failures and
  never-batched work included); `.../effective/traces.jsonl` the episodes that went into the trained batch
  (`FileMonitor.log_episodes`). Both describe the same episodes, so this reader reads `effective` where a
  step/kind has it and `all` only where it does not (a step still in progress, or a run that crashed before
  finalising it). `effective` is preferred because only it carries the advantages (assigned when the batch is
  finalised). When a step's `effective` file appears after its `all` file was ingested (live ingest), the
  `effective` rows replace the stored `all` rows (`SourceFile.replaces`), so no episode is counted twice.
- One line is `orjson.dumps(Episode.to_record())` (`Episode.to_record`: `model_dump(mode="json",
  exclude_none=True)`): {id, env {id, name}, task {type, data, key, hash}, group {id}, run {type, id, name, work
  {type, step, policy {start, end}}}, ok, errors, traces [...]}. Each trace (`Trace`): {id, verifiers {version},
  task, agent {name, trainable, config}, tools, nodes [{parent, message, sampled, token_ids, mask, logprobs,
  advantages, ...}], calls, rewards {name: {score, weight} | null}, metrics {name: value}, info {...},
  stop_condition, ok, errors, ...}. Messages are system/user/assistant/tool (`types.py`); an assistant message
  keeps `reasoning_content` apart from `content`, and its `tool_calls` are flat {id, type, name, namespace,
  arguments} (`ToolCall`). `sampled` is true exactly for the model's own turns (`MessageNode.sampled`).
- Older prime-rl (before 2026-07) wrote `rollouts/step_N/{train,eval}_rollouts.jsonl` of verifiers'
  `RolloutOutput`: {prompt: messages, completion: messages, reward, metrics, answer, info, example_id, task}.

Mapping (one row per trace of the policy; an episode without traces is a failure record, not a rollout):
- **Which traces are the policy's.** An episode holds every agent's trace (`Episode.traces`). A trace whose
  `agent.trainable` is false (a user simulator `envs/user_sim`, an agentic judge `envs/agentic_judge`: "its tokens
  are never training data") is not a rollout of the trained policy: prime-rl drops it from GRPO groups and the
  batch (`iter_trainable_traces`). Such traces are left out of the rollout table (a run note says so), so the
  policy's groups hold only the policy. When such an agent's name is a reward key of the policy's traces in the
  same episode (agentic-judge: agent `judge` records reward `judge` on the solver), it graded the policy, and
  everything it was shown (its non-generated messages: prompt, tool results) becomes that grader's input;
  otherwise its name is listed in metadata `other_agents`. An episode with no trainable trace at all keeps
  every trace (verifiers' eval dashboard does the same, `cli/dashboard/eval.py`: trainable traces, else all).
- **Branches.** A trace is a message graph; every root-to-leaf path is a branch (`Trace.branches`: a context
  compaction or a sub-agent restarts from a new root) and each branch becomes one training sample, but reward
  and advantage belong to the trace (GRPO scores traces; `assign_advantages` puts one value on every sampled
  token of every branch, and a sampled node shared by branches trains once, `iter_trainable_branches`). So one
  trace is one row, and it holds the turns of ALL its branches: every sampled node once, in node order (node
  order is commit order; verifiers' `Trace.assistant_messages` is the same branch-independent view). Metadata
  `branches` counts them when there are several.
- **rollout_id**: `<file>:<line>`, or `<file>:<line>.<i>` for `traces[i]` when the episode line holds several
  traces (other agents included), so evidence points at the exact trace in the trainer's file.
- **prompt**: the first branch's messages before its first sampled node, rendered 'role: content'.
  **completion / reasoning / answer / tool_calls / tool_outputs**: the multi-turn rule
  (`messages.assistant_turns`) over the nodes after the prompt: sampled assistant turns are the policy's
  (`reasoning_content` is each turn's reasoning, tool calls go to `tool_calls`, not the answer); tool results and
  any other input given between turns (a compaction summary, a new branch's system message, fabricated
  assistant context with `sampled = false`) are `tool_outputs`.
- **rewards**: {name: score} (unweighted; null -> NaN); **reward**: sum(score * weight) (`Trace.reward`), or the
  record's own `reward` when present. Legacy records have no `rewards`: their `metrics` are the signals. In v1
  records `metrics` are unweighted diagnostics and go to metadata.
- **truncation**: metadata `finish_reason` (the trace's last model call without an error, `calls[].finish_reason`:
  stop / length / tool_calls) and `is_truncated`, as verifiers' `Trace.is_truncated` decides it (a framework limit
  in `stop_condition`, or that call finished at the length limit): the reasoning is a field of its own, so a cut
  turn has no unclosed think tag to show it.
- **advantage**: `info.advantage` when present (convention for flat traces), else the mean non-zero per-token
  advantage of the sampled nodes (prime-rl's `routing.scalar_advantage`).
- **grader inputs**: `info.judge_calls` (`Trace.record_judge_call`, written by every `Judge.complete(trace=...)`:
  [{name, request {model, messages}, response}]): grader `name` (the judge's `reward_name`, the reward key it
  scores) saw its request messages, rendered 'role: content' per line (several calls of one judge are joined
  with a blank line; what each judge answered is metadata `judge_replies`). `info.grader_inputs` {grader: text}
  (rlaudit's simulator convention) is read too, and `--grader-input GRADER=PATH` names any other field: a dotted
  path into the trace (`info.judge_prompt`), then the episode; a text or a message list. A file where no trace
  has PATH is an error.
- **group**: the episode's `group.id` (stamped by prime-rl's dispatcher), else `example_id`, `group_id`, or the
  task key/hash, as "<step>:<id>"; sample_index is the order within the group in the file. **step**:
  `run.work.step`, else `step`, else the directory name. **split**: `run.work.type`, else the directory
  (`train`/`eval`). **task**: `env.id`, else the record's `task`.
- **off-policy work**: `run.work.policy` {start, end} (the live policy versions spanned while generating; null
  for frozen-policy work) is kept as metadata `policy`, and `off_policy` = max(0, (step - 1) - policy.start) for
  train work: how many versions the generating policy is behind the one the batch trains on (prime-rl's
  `episode_staleness` total).

The records are deeply nested and vary by version, so this reader parses line by line (`json`); its rows are
then assembled into Arrow columns per batch.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import RlauditError
from . import register
from .base import ReadContext, Reader, SourceFile, map_array, metadata_json
from .jsonl import FlatArrays, iter_json_lines, shown
from .messages import TOOL_CALLS, assistant_turns, content_text, is_message_list, render_message_list

_STEP_DIR = re.compile(r"^step_(\d+)$")
_LEGACY = re.compile(r"^(train|eval)_rollouts.*\.jsonl$")
BATCH_ROWS = 4096
#: A message node's per-token arrays (verifiers `MessageNode`): ~40-80% of an episode's bytes, none of them read
#: (`advantages` is). Emptied before the line is parsed, wherever these keys are (an `info` holding one as well
#: keeps it empty in the metadata).
UNREAD = FlatArrays(("token_ids", "logprobs", "mask", "is_content"))


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
    parse_in_processes = True  # a trace at a time in Python (see the module doc)

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
        wanted = dict(ctx.options.grader_inputs)  # --grader-input GRADER=PATH
        found: set[str] = set()
        for lineno, raw, record in iter_json_lines(file, ctx, UNREAD):
            try:
                new = list(_rows(record, file, ctx, wanted, found))
            except _Bad as exc:
                ctx.bad(file, lineno, str(exc), shown(raw))
                continue
            several = isinstance(record.get("traces"), list) and len(record["traces"]) > 1
            for i, row in new:
                row["line"] = lineno
                row["sub"] = i if several else None  # "<file>:<line>.<i>": traces[i] of an episode line
                gid = row["group_id"]
                row["sample_index"] = group_counts.get(gid, 0)
                group_counts[gid] = row["sample_index"] + 1
                rows.append(row)
            if len(rows) >= BATCH_ROWS:
                yield _table(rows)
                rows = []
        missing = sorted(p for p in wanted.values() if p not in found)
        if missing and (rows or group_counts):
            raise RlauditError(f"{file.relpath}: --grader-input field(s) {missing} not found in any trace; "
                               "give a dotted path into a trace record (e.g. info.judge_prompt) or the episode")
        if rows:
            yield _table(rows)


class _Bad(Exception):
    """A record that cannot be a rollout; the message names the field and what was expected."""


def _rows(record: dict[str, Any], file: SourceFile, ctx: ReadContext, wanted: dict[str, str],
          found: set[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index in the episode's `traces`, row) of every trace of the policy on one line."""
    if "traces" not in record:  # legacy RolloutOutput or a flat trace
        yield 0, _row(record, {}, file, ctx, {}, [], wanted, found)
        return
    traces = record["traces"]
    if not isinstance(traces, list):
        raise _Bad(f"field 'traces': expected a list of traces, got {type(traces).__name__}")
    for i, trace in enumerate(traces):
        if not isinstance(trace, dict):
            raise _Bad(f"field 'traces[{i}]': expected an object, got {type(trace).__name__}")
    trainable = [t for t in traces if _trainable(t)]
    if not trainable:  # nobody trains on this episode (an eval of frozen agents): every trace is kept
        trainable, others = traces, []
    else:
        others = [t for t in traces if not _trainable(t)]
    for other in others:
        ctx.note(f"traces of non-trainable agent {_agent(other)!r} (verifiers agent.trainable = false) are not "
                 "rollouts of the policy and are left out of the rollout table; prime-rl does not train on them")
    policy = {id(t) for t in trainable}
    for i, trace in enumerate(traces):
        if id(trace) not in policy:
            continue
        rewards = trace.get("rewards") if isinstance(trace.get("rewards"), dict) else {}
        graders = {_agent(o): _seen_text(o) for o in others if _agent(o) in rewards}
        listed = [_agent(o) for o in others if _agent(o) not in rewards]
        yield i, _row(trace, record, file, ctx, graders, listed, wanted, found)


def _trainable(trace: dict[str, Any]) -> bool:
    agent = trace.get("agent")
    return not (isinstance(agent, dict) and agent.get("trainable") is False)


def _agent(trace: dict[str, Any]) -> str:
    agent = trace.get("agent")
    return str(agent.get("name") or "agent") if isinstance(agent, dict) else "agent"


def _seen_text(trace: dict[str, Any]) -> str:
    """What an agent was shown: its messages that the model did not generate (prompt, tool results)."""
    nodes = trace.get("nodes")
    if isinstance(nodes, list):
        msgs = [n["message"] for n in nodes if isinstance(n, dict) and isinstance(n.get("message"), dict)
                and not n.get("sampled")]
    else:
        msgs = [m for m in trace.get("messages") or [] if isinstance(m, dict) and m.get("role") != "assistant"]
    return render_message_list(msgs)


#: `Trace.stop_condition`s that verifiers 0.4 counts as truncation (`Trace.is_truncated`): the framework's limits
TRUNCATING_STOPS = frozenset({"max_turns", "max_input_tokens", "max_output_tokens", "max_total_tokens",
                              "compaction_failed"})


def _truncation(trace: dict[str, Any]) -> dict[str, Any]:
    """Metadata `finish_reason` (of the trace's last model call without an error: "stop", "length" or
    "tool_calls") and `is_truncated`, as verifiers 0.4's `Trace.is_truncated` decides it: a framework limit ended
    the trace (TRUNCATING_STOPS), or that last call finished at the length limit. What training_health's
    truncation check reads (an answer cut mid-sentence has no other mark: the reasoning is a field of its own, not
    an unclosed think tag). Nothing for a record without `calls` (flat traces, older prime-rl)."""
    calls = trace.get("calls")
    if not isinstance(calls, list):
        return {}
    last = next((c for c in reversed(calls) if isinstance(c, dict) and c.get("error") is None), None)
    finish = last.get("finish_reason") if last is not None else None
    finish = finish if isinstance(finish, str) else None
    return {"finish_reason": finish, "is_truncated": trace.get("stop_condition") in TRUNCATING_STOPS
            or finish == "length"}


def _row(trace: dict[str, Any], episode: dict[str, Any], file: SourceFile, ctx: ReadContext,
         agent_graders: dict[str, str], other_agents: list[str], wanted: dict[str, str],
         found: set[str]) -> dict[str, Any]:
    prompt_msgs, completion_msgs, branches = _messages(trace)
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
    graders = _grader_inputs(info, trace, episode, agent_graders, wanted, found)
    run = episode.get("run") or trace.get("run") or {}
    work = run.get("work") if isinstance(run, dict) else None
    work = work if isinstance(work, dict) else {}
    step = work.get("step", trace.get("step", episode.get("step")))
    if step is not None and not (_number(step) and float(step).is_integer()):
        raise _Bad(f"field 'step': expected an integer, got {step!r:.80}")
    step = int(step) if step is not None else file.step
    turns = assistant_turns(completion_msgs, ctx.options.think_tags)
    system = next((content_text(m.get("content")) for m in prompt_msgs if m.get("role") == "system"), None)
    group = _group_key(episode, trace)
    policy = work.get("policy") if isinstance(work.get("policy"), dict) else None
    start = (policy or {}).get("start")
    off_policy = None
    if _number(start) and step is not None and work.get("type", "train") == "train":
        off_policy = max(0, (step - 1) - int(start))  # prime-rl orchestrator/utils.py episode_staleness
    agent = trace.get("agent") if isinstance(trace.get("agent"), dict) else {}
    errors = trace.get("errors") if isinstance(trace.get("errors"), list) else []
    version = trace.get("verifiers") if isinstance(trace.get("verifiers"), dict) else {}
    meta = {k: v for k, v in {
        "episode_id": episode.get("id"), "trace_id": trace.get("id"),
        "agent": agent.get("name"), "trainable": False if agent.get("trainable") is False else None,
        "other_agents": other_agents or None,
        "policy": policy, "off_policy": off_policy,
        "branches": branches if branches > 1 else None,
        "metrics": trace.get("metrics") if not legacy else None, "reward_weights": weights or None,
        "stop_condition": trace.get("stop_condition"), "ok": trace.get("ok"), **_truncation(trace),
        "errors": [e.get("type") for e in errors if isinstance(e, dict)] or None,
        "gold": trace.get("answer") or None,
        "verifiers": version.get("version"),
        "judge_replies": _judge_replies(info) or None,
        "info": {k: v for k, v in info.items() if k not in ("advantage", "grader_inputs", "judge_calls")} or None,
    }.items() if v is not None}
    return {
        "step": step,
        "split": work.get("type") if work.get("type") in ("train", "eval") else file.split,
        "group_id": f"{step}:{group}" if group is not None else None,
        "system_prompt": system,
        "task": _task(episode, trace),
        "prompt": render_message_list(prompt_msgs) if isinstance(prompt_msgs, list) else str(prompt_msgs),
        "completion": turns.completion,
        "answer": turns.answer,
        "reasoning": turns.reasoning,
        "tool_calls": turns.tool_calls or None,
        "tool_outputs": turns.tool_outputs or None,
        "rewards": rewards,
        "reward": None if total is None else float(total),
        "advantage": None if advantage is None else float(advantage),
        "grader_inputs": graders,
        "metadata": meta,
    }


def _grader_inputs(info: dict[str, Any], trace: dict[str, Any], episode: dict[str, Any],
                   agent_graders: dict[str, str], wanted: dict[str, str], found: set[str]) -> dict[str, str]:
    """grader -> the text it saw (see the module doc: judge calls, info.grader_inputs, agents, --grader-input)."""
    out: dict[str, str] = {}
    calls = info.get("judge_calls") or []
    if not isinstance(calls, list):
        raise _Bad(f"field 'info.judge_calls': expected a list of judge calls, got {type(calls).__name__}")
    for i, call in enumerate(calls):
        request = call.get("request") if isinstance(call, dict) else None
        messages = request.get("messages") if isinstance(request, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(messages, list):
            raise _Bad(f"field 'info.judge_calls[{i}]': expected {{name, request {{model, messages}}, response}}")
        text = render_message_list([m for m in messages if isinstance(m, dict)])
        name = call["name"]
        out[name] = f"{out[name]}\n\n{text}" if name in out else text
    given = info.get("grader_inputs") or {}
    if not isinstance(given, dict):
        raise _Bad(f"field 'info.grader_inputs': expected an object of grader -> text, got {type(given).__name__}")
    for name, value in given.items():
        if value is not None:
            out[str(name)] = value if isinstance(value, str) else _text(value)
    for name, text in agent_graders.items():
        out.setdefault(name, text)
    for name, path in wanted.items():
        value = _path(trace, path)
        if value is None:
            value = _path(episode, path)
        if value is not None:
            found.add(path)
            out[name] = value if isinstance(value, str) else _text(value)
    return out


def _judge_replies(info: dict[str, Any]) -> dict[str, str]:
    """{judge name: what it answered} (the verdict text of each `info.judge_calls` entry; the last call wins)."""
    out = {}
    for call in info.get("judge_calls") or []:
        message = ((call.get("response") or {}).get("message") or {}) if isinstance(call, dict) else {}
        if isinstance(message, dict) and message.get("content") is not None:
            out[str(call.get("name"))] = content_text(message["content"])
    return out


def _path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
    return obj


def _text(value: Any) -> str:
    if is_message_list(value):
        return render_message_list(value)
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        return content_text(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _messages(trace: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(prompt messages, messages after the prompt, number of branches) of a trace, from nodes, messages or
    prompt/completion. Messages after the prompt that the model did not generate are handed on as role
    `environment` unless they are tool results, so that `assistant_turns` counts only generated turns as the
    policy's and everything else as input between turns."""
    if "nodes" in trace:
        nodes = trace["nodes"]
        if not isinstance(nodes, list) or not all(isinstance(n, dict) and isinstance(n.get("message"), dict)
                                                  for n in nodes):
            raise _Bad("field 'nodes': expected a list of {message, parent, sampled} objects")
        paths = _branches(nodes)
        first_path = paths[0] if paths else []
        sampled = [i for i in first_path if nodes[i].get("sampled")]
        if not any(n.get("sampled") for n in nodes):  # records without provenance: assistant turns are sampled
            nodes = [{**n, "sampled": True} if n["message"].get("role") == "assistant" else n for n in nodes]
            sampled = [i for i in first_path if nodes[i].get("sampled")]
        cut = first_path.index(sampled[0]) if sampled else len(first_path)
        prompt_ids = set(first_path[:cut])
        prompt = [nodes[i]["message"] for i in first_path[:cut]]
        rest = []
        for i, node in enumerate(nodes):
            if i in prompt_ids:
                continue
            msg = node["message"]
            if not node.get("sampled") and msg.get("role") != "tool":
                msg = {"role": "environment", "content": content_text(msg.get("content"))}
            elif isinstance(msg.get("tool_calls"), list) and any(isinstance(c, dict) and c.get("namespace")
                                                                 for c in msg["tool_calls"]):
                # a provider namespace qualifies the tool name, as `Trace.transcript` prints it
                msg = {**msg, "tool_calls": [{**c, "name": f"{c['namespace']}.{c.get('name')}"}
                                             if isinstance(c, dict) and c.get("namespace") else c
                                             for c in msg["tool_calls"]]}
            rest.append(msg)
        return prompt, rest, len(paths)
    if "messages" in trace:
        msgs = trace["messages"]
        if not is_message_list(msgs):
            raise _Bad("field 'messages': expected a list of {role, content} messages")
        first = next((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), len(msgs))
        return msgs[:first], msgs[first:], 1
    if "prompt" in trace and "completion" in trace:
        prompt, completion = trace["prompt"], trace["completion"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        completion = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
        for name, value in (("prompt", prompt), ("completion", completion)):
            if not (isinstance(value, list) and all(isinstance(m, dict) for m in value)):
                raise _Bad(f"field {name!r}: expected text or a list of chat messages")
        return prompt, completion, 1
    raise _Bad("no messages: expected 'nodes' (verifiers v1), 'messages', or 'prompt' and 'completion'")


def _branches(nodes: list[dict[str, Any]]) -> list[list[int]]:
    """Root-to-leaf node paths, one per leaf in node order (verifiers `graph.leaves`, `Trace.branches`)."""
    for i, n in enumerate(nodes):
        p = n.get("parent")
        if p is not None and not (isinstance(p, int) and not isinstance(p, bool) and 0 <= p < len(nodes) and p != i):
            raise _Bad(f"field 'nodes[{i}].parent': expected the index of another node, got {p!r:.40}")
    parents = {n.get("parent") for n in nodes if n.get("parent") is not None}
    out = []
    for leaf in (i for i in range(len(nodes)) if i not in parents):
        path, seen, i = [], set(), leaf
        while i is not None and i not in seen:
            seen.add(i)
            path.append(i)
            i = nodes[i].get("parent")
        out.append(path[::-1])
    return out


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
    """The mean of the non-zero per-token advantages of the nodes (None without any; 0.0 when all are zero).
    A node's `advantages` is a list of numbers; entries that are not numbers are passed over. Summed in one
    `sum` over the tokens in node order (an episode holds thousands: no Python per token)."""
    if not isinstance(nodes, list):
        return None
    lists = []
    for i, node in enumerate(nodes):
        values = node.get("advantages") if isinstance(node, dict) else None
        if values is None:
            continue
        if not isinstance(values, list):
            raise _Bad(f"field 'nodes[{i}].advantages': expected a list of numbers, got {values!r:.80}")
        lists.append(values)
    flat = list(itertools.chain.from_iterable(lists))
    if not set(map(type, flat)) <= {float, int}:  # bools, nulls, text: only the numbers count
        flat = [v for v in flat if _number(v)]
    if not flat:
        return None
    nonzero = len(flat) - flat.count(0)  # -0.0 and 0 included; NaN is non-zero, as `v != 0.0` says
    return sum(flat) / nonzero if nonzero else 0.0


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


def _table(rows: list[dict[str, Any]]) -> pa.Table:
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
        "completion": column("completion", pa.string()),
        "reasoning": column("reasoning", pa.string()),
        "answer": column("answer", pa.string()),
        "tool_calls": column("tool_calls", TOOL_CALLS),
        "tool_outputs": column("tool_outputs", pa.list_(pa.string())),
        "rewards": map_array([r["rewards"] for r in rows], pa.float64()),
        "reward": column("reward", pa.float64()),
        "advantage": column("advantage", pa.float64()),
        "grader_inputs": map_array([r["grader_inputs"] for r in rows], pa.string()),
        "metadata": metadata_json([r["metadata"] for r in rows]),
    })
